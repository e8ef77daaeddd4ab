"""CARLA supervision: training survives envs that hang or abort, servers are waited for, restarted and stopped.

Stand-ins (tests/fake_carla_server.py): a server *process* listening on a
loopback port, which can be told to hang or abort, and `FlakyCarlaEnv`, run
by spawn-started workers, which hangs forever or calls `os.abort()` at
scripted steps and logs every step it returns. Every wait is bounded.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from fake_carla_server import EPISODE_STEPS, FAIL_AT_STEP, flaky_block, frame_code, send
from test_train import TINY

from td3_jax.envs import workers as workers_module
from td3_jax.envs.carla.config import CarlaConfig
from td3_jax.envs.carla.server import CarlaServerUnavailableError, LaunchedServers, wait_until_listening
from td3_jax.envs.config import EnvConfig, WorkersConfig
from td3_jax.training import config as config_lib
from td3_jax.training.trainer import Trainer

FAKE_SERVER = Path(__file__).with_name("fake_carla_server.py")
SERVER_COMMAND = f"{sys.executable} {FAKE_SERVER} --port {{port}}"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


def live_group_members(group: int) -> list[int]:
    """Pids of processes (zombies excepted) in process group `group`."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == group and fields[0] != "Z":
            members.append(int(entry.name))
    return members


def stored_transitions(buffer):
    """Every transition the replay buffer can return (the buffer has not wrapped in these tests)."""
    slots = np.concatenate([buffer._flat(np.full(count, env), np.arange(count)) for env, count in enumerate(buffer._count)])
    return buffer.gather(slots[buffer._is_sampleable(slots)])


# ---------------------------------------------------------------- training


@pytest.mark.slow  # about half of it is the Trainer's first JAX compilation in this process
def test_training_reaches_max_timesteps_through_hangs_and_aborts_storing_only_real_steps(tmp_path, monkeypatch, caplog):
    script = tmp_path / "script"
    script.mkdir()
    failures = {0: ["hang", "abort"], 1: ["abort", "hang"]}
    for env, modes in failures.items():
        for n, mode in enumerate(modes):
            (script / f"fail-{env}-{n}").write_text(mode)
    monkeypatch.setattr(workers_module, "make_worker_vec_env", functools.partial(
        workers_module.make_worker_vec_env, env_factory=functools.partial(flaky_block, script_dir=str(script)),
    ))
    base = free_port()
    run = config_lib.load(None, TINY + [
        "env.backend=carla", "env.num_envs=2", f"env.carla.port={base}", "training.max_timesteps=80",
        "algorithm.learning_starts=100",  # no updates: their compilation would dominate the test time
        "env.workers.step_timeout_s=1.0", "env.workers.reset_timeout_s=30", "env.workers.max_restarts=4",
        "env.workers.carla_server_ready_timeout_s=10",
    ])[0]
    run = dataclasses.replace(run, env=dataclasses.replace(
        run.env, workers=dataclasses.replace(run.env.workers, carla_server_command=SERVER_COMMAND)
    ))
    trainer = Trainer(run, tmp_path / "run")
    with caplog.at_level(logging.WARNING, logger="td3_jax.envs.workers"):
        assert trainer.train(resume=False) == 0
    assert trainer.env_step == 80

    # Each scripted hang and abort was one failure, and each worker (and its server) was restarted.
    lines = [r.getMessage() for r in caplog.records if r.name == "td3_jax.envs.workers"]
    assert len(lines) == 4 and all("restarted" in line for line in lines), lines
    assert sum("no answer within step_timeout_s" in line for line in lines) == 2
    assert sum("process died" in line for line in lines) == 2
    assert not list(script.glob("fail-*"))
    # Every worker process of an env had a Traffic Manager port of its own: the first, then one per restart.
    ports = {tuple(map(int, line.split())) for line in (script / "tm-ports.log").read_text().splitlines()}
    tm_port = run.env.carla.tm_port
    assert ports == {(env, tm_port + env + 2 * restart) for env in (0, 1) for restart in range(3)}

    # The buffer holds exactly the steps the envs returned, each once and unchanged.
    batch = stored_transitions(trainer.buffer)
    env, episode, t = batch.vector.T.astype(int)
    next_env, next_episode, next_t = batch.next_vector.T.astype(int)
    np.testing.assert_array_equal(next_env, env)  # no transition spans two envs
    np.testing.assert_array_equal(next_episode, episode)  # nor a break (a failure ends the episode)
    np.testing.assert_array_equal(next_t, t + 1)  # a broken step would be stored as t -> t
    np.testing.assert_array_equal(batch.frames[:, -1, 0, 0], frame_code(env, episode, next_t))
    np.testing.assert_array_equal(batch.frames[:, -2, 0, 0], frame_code(env, episode, t))
    returned = {}
    for index in (0, 1):
        lines = (script / f"steps-{index}.log").read_text().splitlines()
        # 40 vector steps per env; a failed step never returned and is not a transition.
        assert len(lines) == 40 - len(failures[index])
        for line in lines:
            ep, step, a0, a1, reward = line.split()
            returned[(index, int(ep), int(step))] = (float(a0), float(a1), float(reward))
    stored = {
        (e, ep, step): (float(a[0]), float(a[1]), float(r))
        for e, ep, step, a, r in zip(env, episode, next_t, batch.action, batch.reward)
    }
    assert stored == returned
    assert all(step <= EPISODE_STEPS for _, _, step in stored)
    broken = {(e, ep) for e, ep, step in stored if step == FAIL_AT_STEP and (e, ep, step + 1) not in stored}
    assert len(broken) >= 4  # the failed episodes end at their last real step

    # The servers training started are gone.
    for port in (base + 10, base + 20):
        assert not listening(port)


def test_a_restarted_worker_whose_reset_hangs_is_killed_at_the_reset_deadline_and_restarted_again(tmp_path, caplog):
    (tmp_path / "fail-0-0").write_text("abort")
    config = EnvConfig(backend="carla", num_envs=1)
    specs = workers_module.worker_specs(config, WorkersConfig())
    env = workers_module.WorkerVecEnv(
        specs, step_timeout_s=5.0, reset_timeout_s=1.0, env_factory=functools.partial(flaky_block, script_dir=str(tmp_path))
    )
    with caplog.at_level(logging.WARNING, logger="td3_jax.envs.workers"):
        try:
            env.reset(seed=0)
            (tmp_path / "reset-0-0").write_text("hang")  # the first restart's reset
            history = [env.step(np.zeros((1, 2), np.float32)) for _ in range(FAIL_AT_STEP + 2)]
        finally:
            env.close()
    assert [bool(step[4]["worker_failure"][0]) for step in history] == [False, False, True, False]
    assert history[-1][0]["vector"][0, 2] == 1  # the third worker process steps a new episode
    (line,) = [r.getMessage() for r in caplog.records if r.name == "td3_jax.envs.workers"]
    assert "process died" in line and "restart 1 failed: no answer within reset_timeout_s" in line
    assert line.endswith("restarted, restart 2 of 3")


# ---------------------------------------------------------------- readiness


def test_readiness_polling_waits_for_a_booting_server_and_gives_up_in_one_line_naming_host_and_port():
    port = free_port()
    booting = subprocess.Popen([sys.executable, str(FAKE_SERVER), "--port", str(port), "--delay", "1.5"])
    try:
        waited = wait_until_listening("127.0.0.1", port, timeout_s=15.0)
        assert 1.5 <= waited < 15.0
        send(port, "ping")
    finally:
        booting.kill()
        booting.wait(timeout=5)

    silent = free_port()
    start = time.monotonic()
    with pytest.raises(CarlaServerUnavailableError) as error:
        wait_until_listening("127.0.0.1", silent, timeout_s=1.0)
    assert time.monotonic() - start < 2.5
    message = str(error.value)
    assert "\n" not in message and f"no CARLA server at 127.0.0.1:{silent}" in message

    # A CARLA training without a server fails the same way, before any worker starts.
    config = EnvConfig(backend="carla", carla=CarlaConfig(host="127.0.0.1", port=silent))
    start = time.monotonic()
    with pytest.raises(CarlaServerUnavailableError, match=f"no CARLA server at 127.0.0.1:{silent} "):
        workers_module.make_worker_vec_env(config, WorkersConfig(carla_server_ready_timeout_s=1.0))
    assert time.monotonic() - start < 2.5


def test_carla_is_supervised_by_default_and_lanesim_stays_in_process():
    carla = workers_module.effective_workers(EnvConfig(backend="carla", num_envs=3), WorkersConfig())
    assert carla.workers == 3 and 20.0 < carla.step_timeout_s < 40.0 and 60.0 < carla.reset_timeout_s < 600.0
    repeated = workers_module.effective_workers(EnvConfig(backend="carla", carla=CarlaConfig(action_repeat=4)), WorkersConfig())
    assert repeated.step_timeout_s > 4 * 20.0
    specs = workers_module.worker_specs(EnvConfig(backend="carla", num_envs=3), WorkersConfig())
    assert [(s.num_envs, s.config.carla.tm_port) for s in specs] == [(1, 8000), (1, 8001), (1, 8002)]
    lanesim = workers_module.effective_workers(EnvConfig(num_envs=3), WorkersConfig())
    assert lanesim == WorkersConfig()
    in_process = WorkersConfig(carla_in_process=True)
    assert workers_module.effective_workers(EnvConfig(backend="carla", num_envs=3), in_process) == in_process
    started = workers_module.worker_specs(
        EnvConfig(backend="carla", num_envs=2, carla=CarlaConfig(port=3000)),
        WorkersConfig(carla_server_command="CarlaUE4.sh -carla-rpc-port={port}"),
    )
    assert [(s.config.carla.host, s.config.carla.port) for s in started] == [("127.0.0.1", 3010), ("127.0.0.1", 3020)]


# ---------------------------------------------------------------- the launcher


def test_the_launcher_restarts_crashed_and_hung_servers_and_leaves_no_process_behind():
    base = free_port()
    servers = LaunchedServers(f"{SERVER_COMMAND} --child", [base, base + 10], ready_timeout_s=10.0)
    groups = []
    try:
        servers.start()
        groups += [process.pid for process in servers.processes]
        send(base, "abort")
        assert servers.processes[0].wait(timeout=5) == -signal.SIGABRT
        servers.recover(0)
        send(base, "ping")
        send(base + 10, "hang")
        servers.recover(1)
        send(base + 10, "ping")
        groups += [process.pid for process in servers.processes]
        assert len(set(groups)) == 4
    finally:
        servers.close()
    for group in groups:
        assert live_group_members(group) == []
    assert not listening(base) and not listening(base + 10)


def test_sigterm_stops_the_servers_a_process_started(tmp_path):
    base = free_port()
    code = (
        "import sys, time\n"
        "from td3_jax.envs.carla.server import LaunchedServers\n"
        f"servers = LaunchedServers({SERVER_COMMAND + ' --child'!r}, [{base}], ready_timeout_s=10.0)\n"
        "servers.start()\n"
        "print(servers.processes[0].pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    trainer = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        group = int(trainer.stdout.readline())
        assert live_group_members(group)
        trainer.send_signal(signal.SIGTERM)
        assert trainer.wait(timeout=10) == -signal.SIGTERM
    finally:
        if trainer.poll() is None:
            trainer.kill()
    assert live_group_members(group) == []
    assert not listening(base)
