"""Envs stepped in worker processes, one gymnasium `AsyncVectorEnv` per worker, surviving crashes. Host-side.

`make_worker_vec_env` splits `num_envs` envs over `workers` processes. Each
worker runs a block of k envs as one vector env of the backend
(`make_vec_env`: a `LaneSimVec` of k cars for the embedded simulator, a
`SyncVectorEnv` otherwise), and is driven through its own single-process
gymnasium `AsyncVectorEnv` (shared-memory observations, pipes, error
forwarding and timeouts are gymnasium's). A CARLA run with a list of servers
gets one worker per server, so every env ticks its own server concurrently.

CARLA envs run supervised (`effective_workers`): without an explicit
`workers` count every CARLA env gets its own worker, and steps and resets
get finite deadlines, because a stuck Traffic Manager blocks `world.tick()`
forever (carla#2809) and a dying server aborts its client process
(carla#4577). Before the workers start, and before a failed worker is
restarted, its server must listen (`td3_jax.envs.carla.server`); a server
this process started is restarted with its worker, and a restarted worker
gets a fresh Traffic Manager port, so that it never meets one left over from
a dead connection (carla#2789).

`WorkerVecEnv` keeps gymnasium's SAME_STEP autoreset contract of
`make_vec_env`: an ended episode's true last observation is in
``info["final_obs"][i]`` and ``obs[i]`` already starts the next one.

A worker that raises, dies or exceeds `step_timeout_s` does not stop the
others. Its envs report ``truncated=True``, reward 0,
``info["worker_failure"][i] = True``, the last valid observation as
``final_obs``, and one log line names the worker, its envs and the error.
That step is no real transition: the training loop must skip it in the
replay buffer (``buffer.add(..., skip=info["worker_failure"])``), the same
contract as ``info["carla_failure"]`` (docs/carla.md). The worker is killed
(SIGTERM, then SIGKILL) and restarted in a new process with a fresh seed (its
envs start new episodes; its reset has the reset deadline too),
or, after `max_restarts` or with ``on_failure="drop"``, dropped: its envs
keep reporting ``worker_failure`` (and ``worker_dropped``) and never produce
data again. When every worker is dropped, `WorkerFailureError` is raised.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import multiprocessing
import time
import warnings
from typing import Any, Literal, NamedTuple, Sequence

import gymnasium
import numpy as np
from gymnasium.vector import AsyncVectorEnv, AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from td3_jax.envs.carla.config import CarlaConfig
from td3_jax.envs.carla.server import LOOPBACK, LaunchedServers, RemoteServers
from td3_jax.envs.config import EnvConfig, WorkersConfig, parse_server
from td3_jax.envs.factory import make_vec_env

logger = logging.getLogger(__name__)

# A fresh worker process imports td3_jax and carla and may load a map before its first reset.
_WORKER_START_S = 60.0
# A killed worker gets this long to exit on SIGTERM before SIGKILL.
_KILL_GRACE_S = 5.0


class WorkerFailureError(RuntimeError):
    """Every env worker failed and was dropped; training cannot continue."""


class WorkerSpec(NamedTuple):
    """One worker's block of envs: envs ``first .. first + num_envs - 1`` of the whole vector."""

    config: EnvConfig
    num_envs: int
    seed: int
    first: int


def carla_step_deadline_s(carla: CarlaConfig) -> float:
    """A step is `action_repeat` ticks, each a tick and its camera frame bounded by `tick_timeout_s`, plus
    the wait for late events; 10 s of slack also cover the next episode's reset (same-step autoreset) when healthy."""
    return carla.action_repeat * (2 * carla.tick_timeout_s + carla.event_wait_s) + 10.0


def carla_reset_deadline_s(carla: CarlaConfig) -> float:
    """A reset may reconnect with backoff (docs/carla.md): per attempt a connection and two slow ticks, the
    backoff waits, and a fresh worker's start with a map load."""
    attempt_s = carla.connect_timeout_s + 2 * carla.tick_timeout_s
    backoff_s = carla.reconnect_backoff_s * (2**carla.reconnect_attempts - 1)
    return _WORKER_START_S + (carla.reconnect_attempts + 1) * attempt_s + backoff_s


def effective_workers(config: EnvConfig, workers: WorkersConfig) -> WorkersConfig:
    """`workers` with its defaults resolved for the backend.

    CARLA (unless `carla_in_process`): one worker per env unless `workers` is
    set, and finite step and reset deadlines (`carla_step_deadline_s`,
    `carla_reset_deadline_s`) unless set. Other backends: as given.
    """
    if config.backend != "carla" or workers.carla_in_process:
        return workers
    return dataclasses.replace(
        workers,
        workers=workers.workers or config.num_envs,
        step_timeout_s=workers.step_timeout_s or carla_step_deadline_s(config.carla),
        reset_timeout_s=workers.reset_timeout_s or carla_reset_deadline_s(config.carla),
    )


def server_addresses(config: EnvConfig, workers: WorkersConfig, num_envs: int) -> list[tuple[str, int]]:
    """(host, RPC port) of env i's own server: the listed ones, or the ones training starts; [] for neither."""
    if workers.carla_servers:
        return [parse_server(server) for server in workers.carla_servers]
    if workers.carla_server_command is not None:
        # carla.port itself stays free for the evaluation env, which runs in the training process.
        stride = workers.carla_server_port_stride
        return [(LOOPBACK, config.carla.port + (i + 1) * stride) for i in range(num_envs)]
    return []


def worker_specs(
    config: EnvConfig, workers: WorkersConfig, num_envs: int | None = None, seed: int | None = None
) -> list[WorkerSpec]:
    """The block of envs of each worker.

    Envs are split as evenly as possible, first blocks larger. Block w is
    `make_vec_env(config, k_w, seed=seed + first_w)`: for gym and CARLA
    envs, env i has seed ``seed + i`` whatever the number of workers; the
    embedded simulator's block draws its episodes from
    ``episode_rng(seed + first_w, j)``.

    CARLA env i (in a block or alone) gets Traffic Manager port
    ``carla.tm_port + i``; with servers (listed or started) each env has its own worker.

    Raises:
      ValueError: more workers than envs, or a server list whose length is not `num_envs`.
    """
    num_envs = config.num_envs if num_envs is None else num_envs
    seed = config.seed if seed is None else seed
    workers = effective_workers(dataclasses.replace(config, num_envs=num_envs), workers)
    if (workers.carla_servers or workers.carla_server_command is not None) and config.backend != "carla":
        raise ValueError(f"env.workers sets CARLA servers but env.backend is {config.backend!r}, not carla")
    if workers.carla_servers:
        if len(workers.carla_servers) != num_envs:
            raise ValueError(
                f"env.workers.carla_servers lists {len(workers.carla_servers)} servers but env.num_envs is "
                f"{num_envs}; CARLA runs one env per server, so set env.num_envs={len(workers.carla_servers)}"
            )
    addresses = server_addresses(config, workers, num_envs)
    if addresses:
        specs = []
        for i, (host, port) in enumerate(addresses):
            carla = dataclasses.replace(config.carla, host=host, port=port, tm_port=config.carla.tm_port + i)
            specs.append(WorkerSpec(dataclasses.replace(config, carla=carla, num_envs=1), 1, seed + i, i))
        return specs
    count = workers.workers
    if not 1 <= count <= num_envs:
        raise ValueError(f"env.workers.workers={count} must be between 1 and env.num_envs={num_envs}")
    sizes = [len(block) for block in np.array_split(np.arange(num_envs), count)]
    firsts = np.cumsum([0] + sizes[:-1])
    return [
        WorkerSpec(_with_tm_port(dataclasses.replace(config, num_envs=k), int(first)), k, seed + int(first), int(first))
        for k, first in zip(sizes, firsts)
    ]


def evaluation_env_config(config: EnvConfig, workers: WorkersConfig) -> EnvConfig:
    """`config` for a CARLA evaluation env beside training: a Traffic Manager port that no training env of the
    run uses, restarts included (`carla.tm_port + (max_restarts + 1) x num_envs`).

    A Traffic Manager lives in the process that opened it until that process exits, and a client that asks
    for a port whose Traffic Manager is alive becomes its remote client: on a shared port, the training
    workers started after an evaluation would have their traffic driven from the training process.
    """
    return _with_tm_port(config, (workers.max_restarts + 1) * config.num_envs)


def _with_tm_port(config: EnvConfig, offset: int) -> EnvConfig:
    if config.backend != "carla":
        return config
    return dataclasses.replace(config, carla=dataclasses.replace(config.carla, tm_port=config.carla.tm_port + offset))


def make_worker_vec_env(
    config: EnvConfig,
    workers: WorkersConfig = WorkersConfig(),
    num_envs: int | None = None,
    *,
    seed: int | None = None,
    env_factory=None,
) -> VectorEnv:
    """The training env vector: in-process `make_vec_env`, or `WorkerVecEnv` over worker processes.

    Args:
      config: the `env:` section.
      workers: processes, CARLA servers, failure handling, resolved by
        `effective_workers`. With zero workers and no servers (the default for
        lanesim and gym, and `carla_in_process`) this is exactly `make_vec_env(config, num_envs, seed=seed)`.
      num_envs: default `config.num_envs`.
      seed: default `config.seed`.
      env_factory: builds a worker's env from its `WorkerSpec` (default `make_block_env`).

    Raises:
      CarlaServerUnavailableError: a CARLA server did not listen within
        `carla_server_ready_timeout_s` (one line naming host and port).
    """
    num_envs = config.num_envs if num_envs is None else num_envs
    workers = effective_workers(dataclasses.replace(config, num_envs=num_envs), workers)
    if workers.workers == 0 and not server_addresses(config, workers, num_envs):
        return make_vec_env(config, num_envs, seed=seed)
    specs = worker_specs(config, workers, num_envs, seed)
    servers = None
    if config.backend == "carla":
        if workers.carla_server_command is not None:
            servers = LaunchedServers(
                workers.carla_server_command,
                [spec.config.carla.port for spec in specs],
                workers.carla_server_gpus,
                workers.carla_server_ready_timeout_s,
            )
        else:
            addresses = [(spec.config.carla.host, spec.config.carla.port) for spec in specs]
            servers = RemoteServers(addresses, workers.carla_server_ready_timeout_s)
    return WorkerVecEnv(
        specs,
        on_failure=workers.on_failure,
        max_restarts=workers.max_restarts,
        step_timeout_s=workers.step_timeout_s,
        reset_timeout_s=workers.reset_timeout_s,
        start_method=workers.start_method,
        servers=servers,
        env_factory=env_factory or make_block_env,
    )


# ---------------------------------------------------------------- inside a worker


class _Opaque:
    """Carries a whole info dict through AsyncVectorEnv without it being re-batched."""

    def __init__(self, value: Any):
        self.value = value


class VecBlockEnv(gymnasium.Env):
    """A vector env of k envs seen as one env with batched spaces (runs inside a worker).

    Its autoreset is the inner vector env's own (SAME_STEP); the outer
    `AsyncVectorEnv` must use `AutoresetMode.DISABLED`. The inner info
    travels whole in ``info["block"]``.
    """

    metadata = {"autoreset_mode": AutoresetMode.DISABLED}

    def __init__(self, vec: VectorEnv):
        self.vec = vec
        self.observation_space = vec.observation_space
        self.action_space = vec.action_space
        self.single_observation_space = vec.single_observation_space
        self.single_action_space = vec.single_action_space

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        obs, info = self.vec.reset(seed=seed, options=options)
        return obs, {"block": _Opaque(info)}

    def step(self, action):
        obs, reward, terminated, truncated, info = self.vec.step(action)
        return obs, reward, terminated, truncated, {"block": _Opaque(info)}

    def close(self):
        self.vec.close()


def make_block_env(spec: WorkerSpec) -> VecBlockEnv:
    """The env a worker process runs: `make_vec_env` of its block, as one `VecBlockEnv`."""
    return VecBlockEnv(make_vec_env(spec.config, spec.num_envs, seed=spec.seed))


# ---------------------------------------------------------------- the vector


class WorkerVecEnv(VectorEnv):
    """Envs in worker processes with same-step autoreset and per-worker crash recovery. Host-side.

    Observations ``{"image": (N, 84, 84, S) uint8, "vector": (N, V) float32}``;
    `step` takes (N, A) actions and returns rewards (N,) float64, terminated and
    truncated (N,) bool, and an info dict of (N, ...) arrays with gymnasium's
    ``_key`` masks, plus ``worker_failure`` and ``worker_dropped`` (N,) bool on
    every step. See the module docstring for the failure contract.

    Args:
      specs: the workers' blocks, contiguous and in order (`worker_specs`).
      on_failure, max_restarts, step_timeout_s, reset_timeout_s, start_method: as `WorkersConfig`.
      servers: worker i's CARLA server is ``servers``' server i (`RemoteServers` or
        `LaunchedServers`): started (or waited for) first, recovered before a restart
        of worker i, closed with the vector. None: no servers.
      env_factory: builds a worker's env from its spec in the worker process
        (must be picklable: a module-level function or a functools.partial).
    """

    metadata = {"autoreset_mode": AutoresetMode.SAME_STEP}

    def __init__(
        self,
        specs: Sequence[WorkerSpec],
        *,
        on_failure: Literal["restart", "drop"] = "restart",
        max_restarts: int = 3,
        step_timeout_s: float | None = None,
        reset_timeout_s: float | None = None,
        start_method: str = "spawn",
        servers: RemoteServers | LaunchedServers | None = None,
        env_factory=make_block_env,
    ):
        firsts = np.cumsum([0] + [spec.num_envs for spec in specs[:-1]])
        if not specs or any(spec.first != first for spec, first in zip(specs, firsts)):
            raise ValueError("specs must be non-empty contiguous blocks in order (see worker_specs)")
        self._specs = list(specs)
        self._slices = [slice(spec.first, spec.first + spec.num_envs) for spec in specs]
        self._on_failure, self._max_restarts = on_failure, max_restarts
        self._timeout, self._reset_timeout = step_timeout_s, reset_timeout_s
        self._start_method, self._env_factory, self._servers = start_method, env_factory, servers
        self._restarts = [0] * len(specs)
        self._workers: list[AsyncVectorEnv | None] = [None] * len(specs)
        try:
            if servers is not None:
                servers.start()
            for index in range(len(specs)):
                self._workers[index] = self._launch(self._specs[index])
        except BaseException:
            self._close_all(terminate=True)
            raise
        self.num_envs = sum(spec.num_envs for spec in specs)
        self.single_observation_space = self._workers[0].get_attr("single_observation_space")[0]
        self.single_action_space = self._workers[0].get_attr("single_action_space")[0]
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self._last_obs: dict[str, np.ndarray] | None = None

    @property
    def num_workers(self) -> int:
        """Worker processes, dropped ones included."""
        return len(self._specs)

    @property
    def dropped(self) -> np.ndarray:
        """(N,) bool: envs whose worker was dropped."""
        mask = np.zeros(self.num_envs, bool)
        for index, worker in enumerate(self._workers):
            mask[self._slices[index]] = worker is None
        return mask

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        """Resets every live worker; env i's seed is ``seed + i`` (block seed ``seed + first``)."""
        obs = self._empty_obs()
        parts = []
        started = []
        for index, worker in enumerate(self._workers):
            if worker is None:
                continue
            block_seed = None if seed is None else seed + self._specs[index].first
            try:
                worker.reset_async(seed=block_seed, options=options)
                started.append(index)
            except Exception as error:  # noqa: BLE001 - any worker error is handled the same way
                self._recover(index, error, obs, parts, during="reset")
        for index in started:
            try:
                with _worker_traceback_to_debug_log():
                    block_obs, info = self._workers[index].reset_wait(timeout=self._reset_timeout)
            except Exception as error:  # noqa: BLE001
                self._recover(index, error, obs, parts, during="reset")
                continue
            self._put(obs, index, block_obs)
            parts.append((self._slices[index], info["block"][0].value))
        info = merge_infos(parts, self.num_envs)
        self._last_obs = obs
        return _copy_obs(obs), info

    def step(self, actions):
        if self._last_obs is None:
            raise RuntimeError("call reset() before step()")
        actions = np.asarray(actions).reshape(self.num_envs, *self.single_action_space.shape)
        pending, failed = [], {}
        for index, worker in enumerate(self._workers):
            if worker is None:
                continue
            try:
                worker.step_async(actions[self._slices[index]][None])
                pending.append(index)
            except Exception as error:  # noqa: BLE001
                failed[index] = error
        results = {}
        for index in pending:
            try:
                with _worker_traceback_to_debug_log():
                    results[index] = self._workers[index].step_wait(timeout=self._timeout)
            except Exception as error:  # noqa: BLE001
                failed[index] = error

        n = self.num_envs
        obs = _copy_obs(self._last_obs)
        reward = np.zeros(n, np.float64)
        terminated, truncated = np.zeros(n, bool), np.zeros(n, bool)
        parts = []
        for index, (block_obs, block_reward, block_terminated, block_truncated, info) in results.items():
            where = self._slices[index]
            self._put(obs, index, block_obs)
            reward[where], terminated[where] = block_reward[0], block_terminated[0]
            truncated[where] = block_truncated[0]
            parts.append((where, info["block"][0].value))
        failure = np.zeros(n, bool)
        for index, worker in enumerate(self._workers):
            if worker is None and index not in failed:
                failure[self._slices[index]] = True  # dropped earlier
        restart_parts = []
        for index, error in failed.items():
            failure[self._slices[index]] = True
            self._recover(index, error, obs, restart_parts, during="step")
        truncated |= failure
        info = merge_infos(parts, n)
        self._mark_failures(info, failure)
        self._last_obs = obs
        return _copy_obs(obs), reward, terminated, truncated, info

    def close_extras(self, **kwargs):
        self._close_all(terminate=False)

    # ------------------------------------------------------------ internals

    def _launch(self, spec: WorkerSpec) -> AsyncVectorEnv:
        return AsyncVectorEnv(
            [functools.partial(self._env_factory, spec)],
            context=self._start_method,
            autoreset_mode=AutoresetMode.DISABLED,
            copy=False,
        )

    def _recover(self, index: int, error: BaseException, obs: dict, parts: list, *, during: str) -> None:
        """Kills a worker whose `during` ("step" or "reset") failed, then restarts it (its new first
        observations go into `obs`) or drops it."""
        spec = self._specs[index]
        where = f"env worker {index} (envs {spec.first}-{spec.first + spec.num_envs - 1})"
        self._terminate(index)
        reason = _describe(error, during)
        while self._on_failure == "restart" and self._restarts[index] < self._max_restarts:
            self._restarts[index] += 1
            attempt = self._restarts[index]
            worker = None
            try:
                if self._servers is not None:
                    self._servers.recover(index)
                worker = self._launch(self._restarted_spec(spec, attempt))
                seed = int(np.random.SeedSequence([spec.seed, attempt]).generate_state(1)[0])
                with _worker_traceback_to_debug_log():
                    worker.reset_async(seed=seed)
                    block_obs, info = worker.reset_wait(timeout=self._reset_timeout)
            except Exception as restart_error:  # noqa: BLE001
                if worker is not None:
                    _kill(worker)
                reason = f"{reason}; restart {attempt} failed: {_describe(restart_error, 'reset')}"
                continue
            self._workers[index] = worker
            self._put(obs, index, block_obs)
            parts.append((self._slices[index], info["block"][0].value))
            logger.warning("%s failed (%s); restarted, restart %d of %d", where, reason, attempt, self._max_restarts)
            return
        alive = sum(w is not None for w in self._workers)
        logger.warning("%s failed (%s); dropped, %d of %d workers remain", where, reason, alive, len(self._workers))
        if alive == 0:
            raise WorkerFailureError(f"every env worker failed; the last was {where}: {reason}") from error

    def _restarted_spec(self, spec: WorkerSpec, attempt: int) -> WorkerSpec:
        """A CARLA worker's restart `attempt` gets Traffic Manager ports no earlier process of this run used."""
        if spec.config.backend != "carla":
            return spec
        shift = attempt * self._slices[-1].stop
        return spec._replace(config=_with_tm_port(spec.config, shift))

    def _mark_failures(self, info: dict, failure: np.ndarray) -> None:
        """worker_failure / worker_dropped masks; a failed env's last valid observation becomes its final_obs."""
        info["worker_failure"], info["_worker_failure"] = failure, np.ones(self.num_envs, bool)
        info["worker_dropped"], info["_worker_dropped"] = self.dropped, np.ones(self.num_envs, bool)
        if failure.any():
            final = info.get("final_obs")
            if final is None:
                final = np.full(self.num_envs, None, dtype=object)
            mask = np.asarray(info.get("_final_obs", np.zeros(self.num_envs, bool)), bool) | failure
            for i in np.flatnonzero(failure):
                final[i] = {key: value[i].copy() for key, value in self._last_obs.items()}
            info["final_obs"], info["_final_obs"] = final, mask

    def _put(self, obs: dict, index: int, block_obs: dict) -> None:
        for key, value in block_obs.items():
            obs[key][self._slices[index]] = value[0]

    def _empty_obs(self) -> dict[str, np.ndarray]:
        if self._last_obs is not None:
            return _copy_obs(self._last_obs)
        return {
            key: np.zeros((self.num_envs, *space.shape), space.dtype)
            for key, space in self.single_observation_space.spaces.items()
        }

    def _terminate(self, index: int) -> None:
        worker, self._workers[index] = self._workers[index], None
        if worker is not None:
            _kill(worker)

    def _close_all(self, *, terminate: bool) -> None:
        try:
            for index, worker in enumerate(self._workers):
                if worker is not None:
                    self._workers[index] = None
                    if terminate:
                        _kill(worker)
                    else:
                        _close_worker(worker, self._timeout)
        finally:
            if self._servers is not None:
                self._servers.close()


def _close_worker(worker: AsyncVectorEnv, timeout_s: float | None) -> None:
    """Asks a worker to close its envs and exit within `timeout_s` (None: no limit), then kills what is left.

    gymnasium's own close waits for the answer and the exit without a limit,
    and a CARLA env closing against a hung server may never answer.
    """
    deadline = None if timeout_s is None else time.monotonic() + timeout_s

    def remaining() -> float | None:
        return None if deadline is None else max(0.0, deadline - time.monotonic())

    try:
        pipes = [pipe for pipe in worker.parent_pipes if pipe is not None]
        for pipe in pipes:
            pipe.send(("close", None))
        for pipe in pipes:
            if pipe.poll(remaining()):
                pipe.recv()
        for process in worker.processes:
            process.join(remaining())
    except (OSError, EOFError):
        pass  # a dead worker: nothing left to ask
    _kill(worker)


def _kill(worker: AsyncVectorEnv) -> None:
    """Ends a worker's processes (SIGTERM, SIGKILL after a grace period) and closes its pipes."""
    for process in worker.processes:
        if process.is_alive():
            process.terminate()
    for process in worker.processes:
        process.join(timeout=_KILL_GRACE_S)
        if process.is_alive():
            process.kill()
            process.join()
    for pipe in worker.parent_pipes:
        if pipe is not None:  # gymnasium drops the pipe of a worker that reported an error
            pipe.close()
    worker.closed = True  # nothing left for AsyncVectorEnv.__del__ to close


@contextlib.contextmanager
def _worker_traceback_to_debug_log():
    """Moves gymnasium's multi-line worker error report (emitted as warnings) to this module's DEBUG log.

    The failure itself is reported in one WARNING line by `WorkerVecEnv`.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield
        finally:
            for warning in caught:
                logger.debug("worker report: %s", warning.message)


def _describe(error: BaseException, during: str) -> str:
    if isinstance(error, multiprocessing.TimeoutError):
        return f"no answer within {during}_timeout_s"
    if isinstance(error, (EOFError, BrokenPipeError, ConnectionResetError)):
        return f"process died ({type(error).__name__})"
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


def _copy_obs(obs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {key: value.copy() for key, value in obs.items()}


def merge_infos(parts: list[tuple[slice, dict]], num_envs: int) -> dict:
    """One vector info of `num_envs` envs from the infos of blocks (each a slice of the envs).

    A key missing from a block is zero (None for objects) there, and its
    ``_key`` mask False; nested dicts (reward components, final_info) merge
    the same way; ``final_obs`` stays an object array of observation dicts.
    """
    merged: dict = {}
    keys = list(dict.fromkeys(key for _, info in parts for key in info))
    for key in keys:
        present = [(where, info[key]) for where, info in parts if key in info]
        if all(isinstance(value, dict) for _, value in present):
            merged[key] = merge_infos(present, num_envs)
            continue
        first = np.asarray(present[0][1])
        if first.dtype.kind in "OUS":  # objects, and strings whose width may differ between blocks
            array = np.full((num_envs, *first.shape[1:]), None, dtype=object)
        else:
            array = np.zeros((num_envs, *first.shape[1:]), first.dtype)
        for where, value in present:
            array[where] = value
        merged[key] = array
    return merged
