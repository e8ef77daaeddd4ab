"""Training on every backend but the embedded simulator, through checkpoints, a resume and `td3-jax eval`.

Each test takes the path a user takes: `Trainer(run, run_dir).train(resume=False)`
with checkpoints, `Trainer(...).train(resume=True)` to a larger
`max_timesteps`, then `td3_jax.cli.main(["eval", ...])` on the run.

Exactness across a resume. Only the embedded simulator is saved mid-episode
(tests/test_train.py). A gym or CARLA env restarts at a resume: `restore()`
ends the replay's episodes and resets the env with ``env.seed + env_step``.
What holds, and is asserted here:
- a resume at an episode boundary of a deterministic env whose reset does not
  depend on its seed gives the uninterrupted run bit for bit (train state,
  replay, every loop counter and RNG);
- a resume mid-episode keeps the replay as saved, starts a new episode in it
  (no stored window reaches across the break), drops the cut episode from the
  episode count, and continues env_step and the update count where they were.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import chex
import gymnasium
import numpy as np
import pytest
from gymnasium import spaces
from test_train import TINY

from td3_jax.checkpoint.store import Checkpointer
from td3_jax.cli import main
from td3_jax.envs.reward import COMPONENTS
from td3_jax.training import config as config_lib
from td3_jax.training.trainer import Trainer

TINY_GYM_ID = "td3_jax_test/TinyImage-v0"
EPISODE_STEPS = 10
LEARNING_STARTS = 20
TRAIN_FREQ = 5
CHECKPOINT_FREQ = 40


class TinyImageEnv(gymnasium.Env):
    """A 16x16 RGB image of a dot the action moves; no vector part.

    The action is 3-D like CarRacing's (steer, gas, brake), so both build
    networks of the same shapes and share their compiled code.

    Every episode starts alike (the reset ignores its seed) and the time limit
    it is registered with ends it after `EPISODE_STEPS`, so the env is
    deterministic and its episode boundaries are known.
    """

    observation_space = spaces.Box(0, 255, (16, 16, 3), np.uint8)
    action_space = spaces.Box(np.array([-1, 0, 0], np.float32), np.array([1, 1, 1], np.float32))

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self._position = np.array([8, 8])
        return self._image(), {}

    def step(self, action):
        steer, gas, brake = np.asarray(action, np.float64)
        move = np.rint([2.0 * (gas - brake), 2.0 * steer]).astype(int)
        self._position = np.clip(self._position + move, 0, 15)
        reward = 1.0 - float(np.abs(self._position - 8).sum()) / 8.0
        return self._image(), reward, False, False, {}

    def _image(self) -> np.ndarray:
        image = np.full((16, 16, 3), 40, np.uint8)
        image[self._position[0], :, 0] = 200
        image[:, self._position[1], 1] = 200
        return image


gymnasium.register(TINY_GYM_ID, entry_point=TinyImageEnv, max_episode_steps=EPISODE_STEPS)


def _config(backend: str, max_timesteps: int, *extra: str) -> config_lib.RunConfig:
    settings = [
        f"env.backend={backend}",
        f"training.max_timesteps={max_timesteps}",
        f"training.checkpoint_freq={CHECKPOINT_FREQ}",
        f"algorithm.learning_starts={LEARNING_STARTS}",
        f"algorithm.train_freq={TRAIN_FREQ}",
    ]
    return config_lib.load(None, TINY + settings + list(extra))[0]


def _train(run: config_lib.RunConfig, run_dir: Path, *, resume: bool = False) -> Trainer:
    trainer = Trainer(run, run_dir)
    assert trainer.train(resume=resume) == 0
    return trainer


def _restore(trainer: Trainer, step: int | None = None):
    """(committed steps, the restored checkpoint) of the run of `trainer`."""
    with Checkpointer(trainer.run_dir / "checkpoints", read_only=True) as checkpointer:
        return checkpointer.committed_steps(), checkpointer.restore(step, abstract_train_state=trainer.state)


def _updates_until(env_step: int) -> int:
    """TINY's 2 gradient steps at every multiple of TRAIN_FREQ from LEARNING_STARTS on."""
    return 2 * sum(1 for step in range(LEARNING_STARTS, env_step + 1) if step % TRAIN_FREQ == 0)


def _assert_replays_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name, value in a.items():
        if isinstance(value, np.ndarray):
            assert (value.shape, value.dtype) == (b[name].shape, b[name].dtype), name
            np.testing.assert_array_equal(value, b[name], err_msg=name)
        else:
            assert value == b[name], name


def _assert_resumed_mid_episode(saved, resumed, env_steps: int) -> None:
    """The replay up to the break is as saved, the break starts an episode, and no step is lost or doubled."""
    written = int(saved.replay_state["write_pos"][0])  # one env stream; the buffer never wrapped
    assert not (saved.replay_state["terminated"][written - 1] or saved.replay_state["truncated"][written - 1])
    for name in ("frames", "vectors", "actions", "rewards", "terminated", "truncated", "depth"):
        np.testing.assert_array_equal(
            resumed.replay_state[name][:written], saved.replay_state[name][:written], err_msg=name
        )
    # The slot after the break holds the new episode's first frame, not a transition reaching back.
    assert resumed.replay_state["depth"][written] == 0
    assert np.count_nonzero(resumed.replay_state["depth"]) == env_steps
    host = resumed.host_state
    assert host["env_step"] == env_steps
    assert host["updates"] == int(resumed.train_state.step) == _updates_until(env_steps)


def _evaluate(run_dir: Path, tmp_path: Path, *extra: str) -> dict:
    out = tmp_path / f"eval_{run_dir.name}.json"
    assert main(["eval", "--checkpoint", str(run_dir), "--episodes", "2", "--json", str(out), *extra]) == 0
    return json.loads(out.read_text())


@pytest.mark.slow
def test_gym_env_trains_checkpoints_resumes_and_evaluates(tmp_path):
    backend = f"gym:{TINY_GYM_ID}"
    # The lanesim resume test covers the in-line feed; the Huber critic loss trains on every backend.
    settings = ("training.prefetch_batches=true", "algorithm.critic_huber_delta=1.0")
    straight = _train(_config(backend, 65, *settings), tmp_path / "straight")
    split = tmp_path / "split"
    _train(_config(backend, 40, *settings), split)
    trainer = _train(_config(backend, 65, *settings), split, resume=True)

    # Step 40 ends an episode: from there the resumed run is the uninterrupted one, bit for bit.
    steps, saved = _restore(trainer)
    assert steps == [40, 65] and saved.step == 65
    chex.assert_trees_all_equal(saved.train_state, straight.state)
    _assert_replays_equal(saved.replay_state, straight.buffer.state_dict())
    assert saved.host_state == straight.host_state()
    assert saved.host_state["episodes"] == 60 // EPISODE_STEPS
    assert saved.replay_state["vectors"].shape[1] == 0  # the env has no vector part

    # Step 65 is mid-episode: the resume starts a new episode and keeps everything saved.
    steps, resumed = _restore(_train(_config(backend, 80, *settings), split, resume=True))
    assert steps == [40, 65, 80] and resumed.step == 80
    _assert_resumed_mid_episode(saved, resumed, 80)
    # Episodes ended at 10, 20, ..., 60 and, after the resume at 65, at 75; the cut one is not counted.
    assert resumed.host_state["episodes"] == 7 and len(resumed.host_state["results"]["training_rewards"]) == 7

    report = _evaluate(split, tmp_path)
    assert report["checkpoint_step"] == 80 and len(report["episodes"]) == 2
    assert [e["length"] for e in report["episodes"]] == [EPISODE_STEPS] * 2
    assert {"eval/mean_reward", "eval/avg_episode_length"} <= report["metrics"].keys()
    assert "eval/success_rate" not in report["metrics"]  # the env reports no driving info: absent, not 0


@pytest.mark.slow
def test_car_racing_saves_and_resumes_its_replay(tmp_path):
    """The reported failure: CarRacing has no vector part, and its first checkpoint could not be saved."""
    pytest.importorskip("Box2D")
    no_training = "algorithm.learning_starts=1000"  # the env and the checkpoint are under test, not the networks
    steps, saved = _restore(_train(_config("gym:CarRacing-v3", 20, no_training), tmp_path))
    assert steps == [20] and saved.replay_state["vectors"].shape[1] == 0
    assert np.count_nonzero(saved.replay_state["depth"]) == 20
    steps, resumed = _restore(_train(_config("gym:CarRacing-v3", 25, no_training), tmp_path, resume=True))
    assert steps == [20, 25]
    written = int(saved.replay_state["write_pos"][0])
    for name in ("frames", "actions", "rewards", "depth"):
        np.testing.assert_array_equal(resumed.replay_state[name][:written], saved.replay_state[name][:written])
    assert resumed.replay_state["depth"][written] == 0 and np.count_nonzero(resumed.replay_state["depth"]) == 25
    assert resumed.host_state["env_step"] == 25 and resumed.host_state["updates"] == 0


def _serve_carla_from(server, monkeypatch) -> None:
    """Every CARLA env this process builds talks to the stand-in `server` (workers patch their own)."""
    from carla_fakes import CarlaWithFakeCommands

    from td3_jax.envs.carla import env as carla_env
    monkeypatch.setattr(carla_env, "make_carla_env", functools.partial(
        carla_env.make_carla_env, carla_module=CarlaWithFakeCommands(), client_factory=server.client,
        sleep=lambda seconds: None,
    ))


CARLA_SETTINGS = [
    "env.carla.npc_counts=[2, 3, 4]",
    "env.carla.route_length_m=100.0",
    "env.carla.camera_width=8",
    "env.carla.camera_height=6",
    f"env.carla.max_episode_steps={EPISODE_STEPS}",
    "env.workers.carla_in_process=true",  # the stand-in server is patched into this process only
    "training.prefetch_batches=true",  # batches drawn on a thread while the server ticks
    "env.observation.previous_action=true",  # a longer vector through replay, checkpoint and evaluation
    "env.reward.steering_change_penalty=-1.0",
]


@pytest.mark.slow
def test_carla_env_against_a_stand_in_server_trains_resumes_and_evaluates(tmp_path, monkeypatch):
    pytest.importorskip("carla")
    from carla_fakes import FakeServer

    server = FakeServer()
    _serve_carla_from(server, monkeypatch)
    settings = [*CARLA_SETTINGS, "networks.critic.reward_components=true"]  # CARLA reports the components
    _, saved = _restore(_train(_config("carla", 45, *settings), tmp_path))
    assert saved.step == 45 and saved.host_state["env_snapshot"] is None
    assert saved.replay_state["rewards"].shape[1:] == (5,)
    steps, resumed = _restore(_train(_config("carla", 60, *settings), tmp_path, resume=True))
    assert steps == [40, 45, 60]
    _assert_resumed_mid_episode(saved, resumed, 60)
    assert resumed.host_state["episodes"] >= saved.host_state["episodes"] + 1  # the ego is on a 20-step limit
    assert server.settings.synchronous_mode is False  # every env closed and gave the world back

    report = _evaluate(tmp_path, tmp_path)
    assert report["checkpoint_step"] == 60 and len(report["episodes"]) == 2
    assert all(1 <= e["length"] <= EPISODE_STEPS for e in report["episodes"])
    assert {"eval/mean_reward", "eval/lateral_rmse_m", "eval/mean_speed_kmh"} <= report["metrics"].keys()


@pytest.mark.slow
def test_a_carla_time_out_mid_run_is_not_stored_and_an_episode_s_last_step_is(tmp_path, monkeypatch):
    """Under same-step autoreset an ended episode's last step reports in info["final_info"]: the trainer
    must read it there, or a time-out's non-transition reaches the replay (and breaks its frame check) and
    the collision that ends an episode, with its penalty, is lost to the metrics and the per-component critic."""
    pytest.importorskip("carla")
    from carla_fakes import FakeServer

    class TimingOutServer(FakeServer):
        def tick(self, seconds):
            if sum(call[0] == "tick" for call in self.calls) == 23:
                self.hang_ticks = 1
            return super().tick(seconds)

    server = TimingOutServer()
    server.collide_at = {112}
    _serve_carla_from(server, monkeypatch)
    run = _config("carla", 30, *CARLA_SETTINGS, "networks.critic.reward_components=true",
                  "training.num_eval_episodes=0")
    trainer = Trainer(run, tmp_path / "run")
    finished = []
    finish = trainer.episode_stats.finish
    monkeypatch.setattr(trainer.episode_stats, "finish", lambda index: finished.append(finish(index)) or finished[-1])
    assert trainer.train(resume=False) == 0 and trainer.env_step == 30
    replay = trainer.buffer.state_dict()
    stored = replay["depth"] > 0
    assert np.count_nonzero(stored) == 29  # every step but the time-out's
    collided = [values for values in finished if values["train/collisions_per_episode"] == 1]
    assert len(collided) == 1
    terminal = np.flatnonzero(stored & replay["terminated"])
    assert len(terminal) == 1  # the collision; time limits and the time-out truncate
    # That episode's transitions (one stream that never wrapped: back to its start frame, depth 0) hold the
    # components its metrics summed, the collision's penalty included, and they sum to its return.
    start = max(slot for slot in range(terminal[0]) if not stored[slot]) + 1
    episode = replay["rewards"][start : terminal[0] + 1]
    assert episode.shape[1] == len(COMPONENTS)
    for index, name in enumerate(COMPONENTS):
        assert episode[:, index].sum() == pytest.approx(collided[0][f"rewards/{name}_component"], rel=1e-5, abs=1e-5)
    assert episode.sum() == pytest.approx(collided[0]["train/episode_reward"], rel=1e-5)
    assert episode[-1, COMPONENTS.index("safety")] < -1.0  # the collision's penalty


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["gym", "carla"])
def test_the_best_evaluation_s_policy_is_kept_through_a_resume_and_evaluates(tmp_path, monkeypatch, backend):
    """Evaluations during training on the backend (CARLA's on the training env's server), best/ across a
    resume from an earlier checkpoint than the last, and `td3-jax eval --checkpoint RUN/best`."""
    settings = ["training.num_eval_episodes=1", "training.eval_freq=10", "training.compare_baseline=false"]
    if backend == "carla":
        pytest.importorskip("carla")
        from carla_fakes import FakeServer

        server = FakeServer()
        _serve_carla_from(server, monkeypatch)
        settings += CARLA_SETTINGS
        vehicles_per_tick = []  # (egos, NPCs) in the world at each tick, training and evaluation alike
        server_tick = server.tick

        def tick(seconds):
            roles = [a.attributes.get("role_name", "") for a in server.actors.values() if a.type_id.startswith("vehicle.")]
            vehicles_per_tick.append((sum("_ego@" in r for r in roles), sum("_npc@" in r for r in roles)))
            return server_tick(seconds)
        monkeypatch.setattr(server, "tick", tick)
    else:
        backend = f"gym:{TINY_GYM_ID}"
    _train(_config(backend, 60, *settings), tmp_path)
    with Checkpointer(tmp_path / "checkpoints") as checkpointer:  # as if the checkpoint at 60 had been lost
        assert checkpointer.committed_steps() == [40, 60]
        checkpointer.delete(60)
    _train(_config(backend, 80, *settings), tmp_path, resume=True)

    results = json.loads((tmp_path / "results.json").read_text())
    evaluations = results["evaluations"]
    assert [e["env_step"] for e in evaluations] == list(range(10, 90, 10))  # 50 and 60 from the resumed run
    returns = [e["eval/mean_reward"] for e in evaluations]
    best = evaluations[returns.index(max(returns))]
    assert results["best_checkpoint"] == {"env_step": best["env_step"], "metric": "eval/mean_reward",
                                          "value": best["eval/mean_reward"]}
    with Checkpointer(tmp_path / "best", read_only=True) as kept:
        assert kept.latest_step() == best["env_step"]

    out = tmp_path / "best.json"
    assert main(["eval", "--checkpoint", str(tmp_path / "best"), "--episodes", "1", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["checkpoint_step"] == best["env_step"]
    if backend == "carla":  # its camera shows the server's frame count, which differs from the run's
        assert server.settings.synchronous_mode is False  # the training and evaluation envs gave the world back
        # One ego at a time: an evaluation never meets the training ego or its traffic (scenario 0: 2 NPCs).
        assert {egos for egos, _ in vehicles_per_tick} == {1}
        assert max(npcs for _, npcs in vehicles_per_tick) <= 2
    else:  # the same policy on the same episode of a deterministic env
        assert report["metrics"]["eval/mean_reward"] == best["eval/mean_reward"]


@pytest.mark.slow
def test_carla_workers_leave_the_world_to_each_evaluation_and_come_back(tmp_path, monkeypatch):
    """The default CARLA path: the training env in a worker process, evaluations in the trainer's process, one
    world (a server process's port for readiness, a `SharedWorldServer` for the world). The worker closes
    before each evaluation (its ego and traffic destroyed) and a new one drives after it."""
    pytest.importorskip("carla")
    import os
    import subprocess
    import sys

    from carla_fakes import SharedWorldServer, shared_world_block
    from test_carla_supervision import FAKE_SERVER, free_port

    from td3_jax.envs import workers as workers_module
    world = tmp_path / "world"
    world.mkdir()
    server = SharedWorldServer(world)  # the trainer's client of the world: the evaluation env
    _serve_carla_from(server, monkeypatch)
    monkeypatch.setattr(workers_module, "make_worker_vec_env", functools.partial(
        workers_module.make_worker_vec_env, env_factory=functools.partial(shared_world_block, world_dir=str(world), trainer_pid=os.getpid()),
    ))
    port = free_port()
    listener = subprocess.Popen([sys.executable, str(FAKE_SERVER), "--port", str(port)])
    try:
        settings = [s for s in CARLA_SETTINGS if not s.startswith("env.workers.carla_in_process")] + [
            f"env.carla.port={port}", "env.workers.carla_server_ready_timeout_s=30",
            "training.num_eval_episodes=1", "training.eval_freq=15", "training.compare_baseline=false",
        ]
        run = _config("carla", 45, *settings)
        assert run.env.evaluation_shares_training_world()
        trainer = _train(run, tmp_path / "run")
    finally:
        listener.kill()
        listener.wait()
    assert trainer.env_step == 45
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert [e["env_step"] for e in results["evaluations"]] == [15, 30, 45]
    # One worker at the start and one after each evaluation but the last (training ends there).
    builds = (world / "worker-builds.log").read_text().splitlines()
    assert len(builds) == 3 and len({line.split()[0] for line in builds}) == 3
    # Every tick of every process saw one ego in the world: evaluations never met the training ego.
    counts = [line.split() for line in (world / "egos-per-tick.log").read_text().splitlines()]
    assert {int(egos) for _, egos in counts} == {1}
    assert len({pid for pid, _ in counts}) == 4  # the three workers and the trainer's evaluations
    assert not list(world.glob("vehicle-*"))  # every vehicle destroyed at the end
    # No worker's traffic was driven by the Traffic Manager that an evaluation opened in the trainer's process.
    assert not (world / "tm-remote.log").exists()
