"""Env workers: same data as in-process blocks, autoreset, and crashed workers restarted or dropped.

Worker processes start with "spawn"; each test keeps to a few workers and a
few dozen steps. `ScriptedEnv` is a tiny env whose observations encode
(env, episode, step), so a transition that crosses an episode boundary or
mixes envs is visible, and which crashes on purpose when a marker file exists.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import time
from pathlib import Path
from types import SimpleNamespace

import gymnasium
import numpy as np
import pytest
from gymnasium.vector import AutoresetMode, SyncVectorEnv

from td3_jax.envs import make_vec_env
from td3_jax.envs.config import EnvConfig, LaneSimConfig
from td3_jax.envs.lanesim.sim import LaneSimVec
from td3_jax.envs.spaces import FrameStack
from td3_jax.envs.workers import (
    VecBlockEnv,
    WorkerFailureError,
    WorkersConfig,
    WorkerSpec,
    WorkerVecEnv,
    evaluation_env_config,
    make_worker_vec_env,
    merge_infos,
    parse_server,
    worker_specs,
)
from td3_jax.replay.buffer import ReplayBuffer

FRAME = (4, 4)
STACK = 2
EPISODE_STEPS = 4


class ScriptedEnv(gymnasium.Env):
    """Frames and vector encode (env, episode, step); episodes last 4 steps (even envs terminate, odd truncate).

    When ``crash_dir/crash-<env>`` exists at step 2 the env fails as the file
    says ("raise", "exit" or "hang") and, unless the file says "always",
    removes it first so the restarted worker runs normally.
    """

    def __init__(self, env_index: int, crash_dir: str):
        self.env_index, self.crash_dir = env_index, Path(crash_dir)
        self.observation_space = gymnasium.spaces.Dict({
            "image": gymnasium.spaces.Box(0, 255, (*FRAME, STACK), np.uint8),
            "vector": gymnasium.spaces.Box(-np.inf, np.inf, (3,), np.float32),
        })
        self.action_space = gymnasium.spaces.Box(-1.0, 1.0, (2,), np.float32)
        self._stack = FrameStack(STACK, FRAME)
        self.episode = -1
        self.t = 0

    def _frame(self) -> np.ndarray:
        return np.full(FRAME, (self.env_index * 50 + self.episode * 7 + self.t) % 256, np.uint8)

    def _obs(self, image) -> dict:
        return {"image": image, "vector": np.array([self.env_index, self.episode, self.t], np.float32)}

    def reset(self, *, seed=None, options=None):
        # A reseed (worker restart) starts a new range of episode numbers.
        self.episode = 1000 * (seed % 7) if seed is not None else self.episode + 1
        self.t = 0
        return self._obs(self._stack.reset(self._frame())), {}

    def step(self, action):
        marker = self.crash_dir / f"crash-{self.env_index}"
        if self.t == 2 and marker.exists():
            mode = marker.read_text()
            if not mode.endswith("always"):
                marker.unlink()
            if mode.startswith("exit"):
                os._exit(3)
            if mode.startswith("hang"):
                time.sleep(60)
            raise RuntimeError(f"scripted crash of env {self.env_index}\nsecond line")
        self.t += 1
        done = self.t == EPISODE_STEPS
        info = {"t": self.t, "label": "x" * (self.env_index + 1)}
        return (self._obs(self._stack.push(self._frame())), float(self.t), done and self.env_index % 2 == 0,
                done and self.env_index % 2 == 1, info)


def scripted_block(spec: WorkerSpec, crash_dir: str) -> VecBlockEnv:
    envs = [functools.partial(ScriptedEnv, spec.first + j, crash_dir) for j in range(spec.num_envs)]
    return VecBlockEnv(SyncVectorEnv(envs, autoreset_mode=AutoresetMode.SAME_STEP))


def scripted_vec(tmp_path, sizes=(1, 2), **kwargs) -> WorkerVecEnv:
    firsts = np.cumsum((0,) + tuple(sizes[:-1]))
    specs = [WorkerSpec(EnvConfig(), k, 0, int(first)) for k, first in zip(sizes, firsts)]
    return WorkerVecEnv(specs, env_factory=functools.partial(scripted_block, crash_dir=str(tmp_path)), **kwargs)


def record(buffer: ReplayBuffer, obs, action, reward, next_obs, terminated, truncated, info) -> None:
    """The training loop's `_record_step`: true last observation at episode ends, failures skipped."""
    real_next = {key: value.copy() for key, value in next_obs.items()}
    for i in np.flatnonzero(info.get("_final_obs", np.zeros(len(reward), bool))):
        for key in real_next:
            real_next[key][i] = info["final_obs"][i][key]
    buffer.add(obs["image"], obs["vector"], action, reward, real_next["image"], real_next["vector"],
               terminated, truncated, skip=info["worker_failure"])


def run(env, buffer: ReplayBuffer | None, steps: int):
    obs, _ = env.reset(seed=0)
    history = []
    for _ in range(steps):
        action = np.zeros((env.num_envs, 2), np.float32)
        step = env.step(action)
        if buffer is not None:
            next_obs, reward, terminated, truncated, info = step
            record(buffer, obs, action, reward, next_obs, terminated, truncated, info)
        history.append(step)
        obs = step[0]
    return history


def assert_transitions_stay_in_their_episode(buffer: ReplayBuffer) -> None:
    batch = buffer.sample(256)
    env, episode, t = batch.vector.T
    next_env, next_episode, next_t = batch.next_vector.T
    np.testing.assert_array_equal(next_env, env)
    np.testing.assert_array_equal(next_episode, episode)
    np.testing.assert_array_equal(next_t, t + 1)
    # Stored frames rebuild the env's own stacks: the newest frame encodes (env, episode, step).
    np.testing.assert_array_equal(batch.frames[:, -1, 0, 0], (env * 50 + episode * 7 + t + 1) % 256)


# ---------------------------------------------------------------- layout


def test_worker_specs_split_envs_evenly_and_keep_env_seeds():
    specs = worker_specs(EnvConfig(num_envs=7, seed=10), WorkersConfig(workers=3))
    assert [(s.num_envs, s.first, s.seed) for s in specs] == [(3, 0, 10), (2, 3, 13), (2, 5, 15)]
    assert all(s.config.num_envs == s.num_envs for s in specs)
    with pytest.raises(ValueError, match="between 1 and env.num_envs=2"):
        worker_specs(EnvConfig(num_envs=2), WorkersConfig(workers=3))


@pytest.mark.parametrize("num_envs, workers, servers", [(1, 1, False), (3, 3, False), (5, 2, False), (2, 0, True)])
@pytest.mark.parametrize("max_restarts", [0, 3])
def test_the_evaluation_env_s_traffic_manager_port_is_none_a_training_worker_uses(num_envs, workers, servers, max_restarts):
    """Every port of every worker and each of its restarts (as the vector restarts them) differs from the
    evaluation env's, whatever the blocks."""
    carla_servers = tuple(f"localhost:{2000 + 2 * i}" for i in range(num_envs)) if servers else ()
    config = EnvConfig(backend="carla", num_envs=num_envs)
    workers_config = WorkersConfig(workers=workers, carla_servers=carla_servers, max_restarts=max_restarts)
    specs = worker_specs(config, workers_config)
    vector = SimpleNamespace(_slices=[slice(s.first, s.first + s.num_envs) for s in specs])
    training = {WorkerVecEnv._restarted_spec(vector, spec, attempt).config.carla.tm_port
                for spec in specs for attempt in range(max_restarts + 1)}
    assert len(training) == len(specs) * (max_restarts + 1)  # no two processes of a run share one either
    assert evaluation_env_config(config, workers_config).carla.tm_port not in training
    assert evaluation_env_config(config, workers_config).carla.tm_port > max(training)


def test_carla_servers_get_one_env_and_their_own_traffic_manager_port_each():
    servers = ("localhost:2000", "10.0.0.5:3000")
    specs = worker_specs(EnvConfig(backend="carla", num_envs=2), WorkersConfig(carla_servers=servers))
    carla = [(s.config.carla.host, s.config.carla.port, s.config.carla.tm_port, s.num_envs) for s in specs]
    assert carla == [("localhost", 2000, 8000, 1), ("10.0.0.5", 3000, 8001, 1)]
    with pytest.raises(ValueError, match="set env.num_envs=2"):
        worker_specs(EnvConfig(backend="carla", num_envs=3), WorkersConfig(carla_servers=servers))
    with pytest.raises(ValueError, match="not carla"):
        worker_specs(EnvConfig(num_envs=2), WorkersConfig(carla_servers=servers))


@pytest.mark.parametrize("server", ["localhost", "host:", ":2000", "host:port", "host:70000"])
def test_bad_server_strings_are_rejected(server):
    with pytest.raises(ValueError, match="host:port"):
        parse_server(server)
    with pytest.raises(ValueError, match="host:port"):
        WorkersConfig(carla_servers=(server,))


def test_no_workers_is_the_in_process_vector():
    env = make_worker_vec_env(EnvConfig(num_envs=2))
    assert isinstance(env, LaneSimVec) and env.num_envs == 2


def test_merge_infos_fills_missing_keys_and_masks():
    parts = [
        (slice(0, 1), {"a": np.array([1.5]), "s": np.array(["x"]), "nested": {"b": np.array([2])}}),
        (slice(1, 3), {"a": np.array([3.0, 4.0]), "s": np.array(["yyy", "z"]), "_c": np.array([True, False])}),
    ]
    info = merge_infos(parts, 3)
    np.testing.assert_array_equal(info["a"], [1.5, 3.0, 4.0])
    assert list(info["s"]) == ["x", "yyy", "z"]
    np.testing.assert_array_equal(info["nested"]["b"], [2, 0, 0])
    np.testing.assert_array_equal(info["_c"], [False, True, False])


# ---------------------------------------------------------------- stepping


def test_lanesim_workers_step_exactly_like_their_blocks_in_process():
    config = EnvConfig(num_envs=3, seed=5, lanesim=LaneSimConfig(max_episode_steps=6))
    workers = WorkersConfig(workers=2)
    specs = worker_specs(config, workers)
    blocks = [make_vec_env(spec.config, spec.num_envs, seed=spec.seed) for spec in specs]
    env = make_worker_vec_env(config, workers)
    try:
        assert env.single_observation_space == blocks[0].single_observation_space
        obs, _ = env.reset(seed=5)
        want = [block.reset(seed=spec.seed)[0] for block, spec in zip(blocks, specs)]
        for key in obs:
            np.testing.assert_array_equal(obs[key], np.concatenate([w[key] for w in want]))
        actions = np.random.default_rng(0).uniform(-0.3, 1.0, (14, 3, 2)).astype(np.float32)
        ends = 0
        for action in actions:
            obs, reward, terminated, truncated, info = env.step(action)
            parts = [block.step(action[spec.first:spec.first + spec.num_envs]) for block, spec in zip(blocks, specs)]
            for key in obs:
                np.testing.assert_array_equal(obs[key], np.concatenate([p[0][key] for p in parts]))
            np.testing.assert_array_equal(reward, np.concatenate([p[1] for p in parts]))
            np.testing.assert_array_equal(terminated | truncated, np.concatenate([p[2] | p[3] for p in parts]))
            assert not info["worker_failure"].any()
            for i in np.flatnonzero(terminated | truncated):
                block, spec = next((k, s) for k, s in enumerate(specs) if s.first <= i < s.first + s.num_envs)
                final = parts[block][4]["final_obs"][i - spec.first]
                np.testing.assert_array_equal(info["final_obs"][i]["image"], final["image"])
                ends += 1
        assert ends >= 3  # max_episode_steps=6 over 14 steps
    finally:
        env.close()


def test_autoreset_never_bridges_episodes_in_the_buffer(tmp_path):
    env = scripted_vec(tmp_path, sizes=(1, 2))
    buffer = ReplayBuffer(64, n_envs=3, stack=STACK, frame_shape=FRAME, vector_dim=3)
    try:
        run(env, buffer, 3 * EPISODE_STEPS + 1)
    finally:
        env.close()
    assert len(buffer) == 3 * 3 * EPISODE_STEPS + 3
    assert_transitions_stay_in_their_episode(buffer)


@pytest.mark.parametrize("mode", ["raise", "exit", "hang"])
def test_a_crashed_worker_is_restarted_and_the_others_continue(tmp_path, caplog, mode):
    reference_env = scripted_vec(tmp_path / "none", sizes=(1, 2))
    try:
        reference = run(reference_env, None, 6)
    finally:
        reference_env.close()
    (tmp_path / "crash-0").write_text(mode)
    env = scripted_vec(tmp_path, sizes=(1, 2), step_timeout_s=3.0 if mode == "hang" else None)
    buffer = ReplayBuffer(64, n_envs=3, stack=STACK, frame_shape=FRAME, vector_dim=3)
    with caplog.at_level(logging.WARNING, logger="td3_jax.envs.workers"):
        try:
            history = run(env, buffer, 6)
        finally:
            env.close()
    # Env 0 fails on its third step: that step is a truncation flagged as a failure.
    failures = np.array([step[4]["worker_failure"] for step in history])
    np.testing.assert_array_equal(failures[:, 0], [False, False, True, False, False, False])
    assert not failures[:, 1:].any()
    crash = history[2]
    assert crash[3][0] and not crash[2][0] and crash[1][0] == 0.0
    assert crash[4]["final_obs"][0]["vector"].tolist() == [0, 0, 2]  # the last valid observation
    assert crash[0]["vector"][0].tolist()[2] == 0  # a new episode has started
    # The other worker's envs are untouched by the crash.
    for got, want in zip(history, reference):
        np.testing.assert_array_equal(got[0]["image"][1:], want[0]["image"][1:])
        np.testing.assert_array_equal(got[1][1:], want[1][1:])
    lines = [r.getMessage() for r in caplog.records if r.name == "td3_jax.envs.workers"]
    assert len(lines) == 1 and "\n" not in lines[0]
    assert lines[0].startswith("env worker 0 (envs 0-0) failed") and "restarted, restart 1 of 3" in lines[0]
    assert_transitions_stay_in_their_episode(buffer)


def test_a_worker_that_keeps_failing_is_dropped(tmp_path, caplog):
    (tmp_path / "crash-1").write_text("raise always")
    env = scripted_vec(tmp_path, sizes=(1, 2), max_restarts=1)
    buffer = ReplayBuffer(64, n_envs=3, stack=STACK, frame_shape=FRAME, vector_dim=3)
    with caplog.at_level(logging.WARNING, logger="td3_jax.envs.workers"):
        try:
            history = run(env, buffer, 10)
        finally:
            env.close()
    lines = [r.getMessage() for r in caplog.records if r.name == "td3_jax.envs.workers"]
    assert "restarted, restart 1 of 1" in lines[0]
    assert len(lines) == 2 and "dropped, 1 of 2 workers remain" in lines[1]
    last = history[-1][4]
    np.testing.assert_array_equal(last["worker_dropped"], [False, True, True])
    np.testing.assert_array_equal(last["worker_failure"], [False, True, True])
    assert history[-1][1][0] > 0  # env 0 keeps running
    assert_transitions_stay_in_their_episode(buffer)


def test_every_worker_dropped_is_an_error(tmp_path):
    (tmp_path / "crash-0").write_text("raise always")
    env = scripted_vec(tmp_path, sizes=(1,), on_failure="drop")
    try:
        env.reset(seed=0)
        env.step(np.zeros((1, 2), np.float32))
        env.step(np.zeros((1, 2), np.float32))
        with pytest.raises(WorkerFailureError, match="every env worker failed.*scripted crash of env 0"):
            env.step(np.zeros((1, 2), np.float32))
    finally:
        env.close()


def test_config_rejects_bad_values():
    for kwargs in (
        {"workers": -1}, {"max_restarts": -1}, {"step_timeout_s": 0.0}, {"reset_timeout_s": -1.0},
        {"carla_server_ready_timeout_s": 0.0}, {"carla_server_port_stride": 2},
        {"carla_server_command": "CarlaUE4.sh -RenderOffScreen"},
        {"carla_server_command": "CarlaUE4.sh -carla-rpc-port={port}", "carla_servers": ("localhost:2000",)},
        {"carla_in_process": True, "workers": 2},
    ):
        with pytest.raises(ValueError, match="env.workers"):
            dataclasses.replace(WorkersConfig(), **kwargs)
    with pytest.raises(ValueError, match="not carla"):
        worker_specs(EnvConfig(), WorkersConfig(carla_server_command="CarlaUE4.sh -carla-rpc-port={port}"))


class _Countdown(gymnasium.Env):
    """Episodes of `length` steps; every step's info names the env, the step and how it ended."""

    observation_space = gymnasium.spaces.Box(0, 1, (1,), np.float32)
    action_space = gymnasium.spaces.Box(-1, 1, (1,), np.float32)

    def __init__(self, index: int, length: int):
        self.index, self.length = index, length

    def reset(self, *, seed=None, options=None):
        self.t = 0
        return np.zeros(1, np.float32), {"npc_count": 7}

    def step(self, action):
        self.t += 1
        ended = self.t == self.length
        info = {"t": self.t, "reason": "route_completed" if ended else "",
                "reward_components": {"safety": -100.0 * ended, "progress": float(self.index)}}
        return np.zeros(1, np.float32), 1.0, ended, False, info


def test_step_info_reads_an_ended_episode_s_last_step_from_final_info():
    """gymnasium's SAME_STEP autoreset reports an ended env's reset in info and its last step in final_info;
    `step_info` gives every env its own step's info (strings not cut to the reset's width, nested dicts too)."""
    from td3_jax.envs.factory import step_info

    lengths = (2, 3, 5)
    env = SyncVectorEnv([functools.partial(_Countdown, i, n) for i, n in enumerate(lengths)],
                        autoreset_mode=AutoresetMode.SAME_STEP)
    env.reset(seed=0)
    for step in range(1, 7):
        info = step_info(env.step(np.zeros((3, 1), np.float32))[4])
        for i, length in enumerate(lengths):
            t = (step - 1) % length + 1
            ended = t == length
            assert info["t"][i] == t
            assert info["reason"][i] == ("route_completed" if ended else "")
            assert info["reward_components"]["safety"][i] == -100.0 * ended
            assert info["reward_components"]["progress"][i] == i
    lanesim = make_vec_env(EnvConfig(lanesim=LaneSimConfig(max_episode_steps=2)), 2)
    lanesim.reset(seed=0)
    lanesim.step(np.zeros((2, 2), np.float32))
    info = lanesim.step(np.zeros((2, 2), np.float32))[4]  # both end: their step's info is already in info
    merged = step_info(info)
    for key, value in info["final_info"].items():
        np.testing.assert_array_equal(merged[key] if not isinstance(value, dict) else merged[key]["safety"],
                                      value if not isinstance(value, dict) else value["safety"])
