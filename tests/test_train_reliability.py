"""What the training program does when things go wrong: resume with changes, stops, failures, divergence.

Every test drives the real `Trainer` (or the CLI) with the tiny settings of test_train.py.
"""

from __future__ import annotations

import base64
import errno
import os
import pickle
import signal
import zlib

import gymnasium
import jax
import numpy as np
import pytest
from gymnasium import spaces

from td3_jax.checkpoint.store import Checkpointer
from td3_jax.cli import main
from td3_jax.core import optim
from td3_jax.envs.config import LaneSimConfig
from td3_jax.envs.lanesim.sim import LaneSimEnv
from td3_jax.errors import UserError
from td3_jax.training import config as config_lib
from td3_jax.training.evaluate import STEP_LIMIT_REASON
from td3_jax.training.resume import pack_snapshot, unpack_snapshot
from td3_jax.training.run_log import EpisodeStats
from td3_jax.training.trainer import Trainer, random_streams
from test_train import TINY

NEVER_ENDING_ID = "td3test/NeverEnding-v0"
HANG_GUARD_STEPS = 5000  # an episode this long means the step limit did not work: fail instead of hanging


class NeverEndingEnv(gymnasium.Env):
    """A small image env whose episodes never end (registered without a time limit), like many third-party envs."""

    observation_space = spaces.Box(0, 255, (12, 12, 3), np.uint8)
    action_space = spaces.Box(-1.0, 1.0, (2,), np.float32)

    def __init__(self):
        self.steps = 0
        self.on_step = None  # test hook: called with the step count

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.steps = 0
        return np.full(self.observation_space.shape, self.np_random.integers(0, 255), np.uint8), {}

    def step(self, action):
        self.steps += 1
        if self.steps > HANG_GUARD_STEPS:
            raise RuntimeError("episode ran past the hang guard: nothing cut it")
        if self.on_step is not None:
            self.on_step(self.steps)
        obs = np.full(self.observation_space.shape, self.steps % 255, np.uint8)
        return obs, float(-np.sum(np.square(action))), False, False, {}


if NEVER_ENDING_ID not in gymnasium.registry:
    gymnasium.register(NEVER_ENDING_ID, entry_point=NeverEndingEnv, max_episode_steps=None)


def _config(*extra: str) -> config_lib.RunConfig:
    return config_lib.load(None, TINY + list(extra))[0]


def _gym_config(*extra: str) -> config_lib.RunConfig:
    return _config(f"env.backend=gym:{NEVER_ENDING_ID}", "training.max_timesteps=50", *extra)


# ---------------------------------------------------------------- evaluation: step limit and stops


def test_an_env_without_a_time_limit_needs_an_evaluation_step_limit(tmp_path):
    with pytest.raises(UserError, match="training.eval_max_episode_steps"):
        Trainer(_gym_config("training.num_eval_episodes=1"), tmp_path / "run")


@pytest.mark.slow
def test_evaluation_episodes_are_cut_at_the_configured_step_limit(tmp_path):
    run = _gym_config("training.num_eval_episodes=2", "training.eval_freq=25", "training.eval_max_episode_steps=7")
    trainer = Trainer(run, tmp_path / "run")
    assert trainer.train(resume=False) == 0
    evaluations = trainer.results["evaluations"]
    assert [e["env_step"] for e in evaluations] == [25, 50]
    for evaluation in evaluations:
        assert evaluation["eval/avg_episode_length"] == 7
        assert evaluation[f"eval/termination_{STEP_LIMIT_REASON}"] == 1.0


def test_the_evaluation_limit_defaults_to_the_env_time_limit(tmp_path):
    trainer = Trainer(_config("training.num_eval_episodes=1", "env.lanesim.action_repeat=3",
                              "env.lanesim.max_episode_steps=30"), tmp_path / "run")
    assert trainer.eval_max_steps == 10  # simulator steps / action repeat


@pytest.mark.slow
def test_sigterm_during_an_evaluation_stops_it_at_once_and_saves(tmp_path):
    run = _gym_config("training.num_eval_episodes=3", "training.eval_freq=25",
                      f"training.eval_max_episode_steps={HANG_GUARD_STEPS}")
    trainer = Trainer(run, tmp_path / "run")
    eval_env = trainer.eval_env.unwrapped
    eval_env.on_step = lambda steps: os.kill(os.getpid(), signal.SIGTERM) if steps == 20 else None

    assert trainer.train(resume=False) == 128 + signal.SIGTERM
    assert eval_env.steps == 20  # no step after the signal
    assert trainer.results["evaluations"] == []  # the abandoned evaluation is not reported
    with Checkpointer(tmp_path / "run" / "checkpoints", read_only=True) as checkpoints:
        assert checkpoints.latest_step() == 25


# ---------------------------------------------------------------- resume with a changed config


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("short") / "run"
    assert Trainer(_config("training.max_timesteps=50"), run_dir).train(resume=False) == 0
    return run_dir


def _copy(run_dir, tmp_path):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy, symlinks=True)
    return copy


@pytest.mark.slow
def test_resume_applies_changed_optimizer_settings_and_logs_them(short_run, tmp_path, capsys):
    run_dir = _copy(short_run, tmp_path)
    changes = ["networks.actor.learning_rate=0.01", "networks.cnn.critic_cnn_lr=0.002",
               "networks.critic.adam_eps=1e-5", "networks.actor.weight_decay=0.1",
               "training.max_timesteps=60", "training.progress=lines"]
    assert main(["train", "--resume", str(run_dir)] + [arg for c in changes for arg in ("--set", c)]) == 0

    run, _ = config_lib.load(run_dir / "config.yaml")
    trainer = Trainer(run, tmp_path / "probe")
    with Checkpointer(run_dir / "checkpoints", read_only=True) as checkpoints:
        state = checkpoints.restore(abstract_train_state=trainer.state).train_state
    actor, critic = optim.hyperparams(state.actor_opt_state), optim.hyperparams(state.critic_opt_state)
    # What the optimizer applies is what the config says, for every group and setting.
    for used, wanted in ((actor, state.config.actor_optimizer), (critic, state.config.critic_optimizer)):
        assert float(used["cnn"]["learning_rate"]) == np.float32(wanted.cnn_lr)
        assert float(used["mlp"]["learning_rate"]) == np.float32(wanted.mlp_lr)
        for group in optim.GROUPS:
            assert float(used[group]["eps"]) == np.float32(wanted.adam_eps)
            assert float(used[group]["weight_decay"]) == np.float32(wanted.weight_decay)
    assert float(actor["mlp"]["learning_rate"]) == np.float32(0.01)
    assert float(critic["cnn"]["learning_rate"]) == np.float32(0.002)
    out = capsys.readouterr().out
    assert "resume: networks.actor.learning_rate 0.0003 -> 0.01" in out
    assert "resume: training.max_timesteps 50 -> 60" in out


@pytest.mark.parametrize("change", [
    "algorithm.buffer_size=500", "algorithm.policy_average_tau=0.01", "training.seed=3", "networks.cnn.features=16", "env.lanesim.scenario=1",
])
def test_resume_refuses_a_change_it_cannot_apply_in_one_line(short_run, tmp_path, capsys, change):
    run_dir = _copy(short_run, tmp_path)
    config_before = (run_dir / "config.yaml").read_text()
    assert main(["train", "--resume", str(run_dir), "--set", change]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and f"cannot change {change.split('=')[0]}" in error
    assert (run_dir / "config.yaml").read_text() == config_before


@pytest.mark.parametrize(
    "key", ["env.observation.deviation_scale_m", "env.observation.heading_scale_rad", "env.observation.previous_action"]
)
def test_resume_refuses_new_observation_scales_without_a_simulator_snapshot(key):
    # A CARLA or gym run has no env snapshot to pin env.*, but its replay holds vectors on the old scale.
    from td3_jax.training import resume

    with pytest.raises(UserError, match=f"cannot change {key}"):
        resume.check_changes([(key, 1.0, 0.5)], env_snapshot=False, run_dir="runs/x")


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_a_snapshot_that_would_run_code_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match="not a td3_jax snapshot"):
        unpack_snapshot(pack_snapshot(_RunsCode()), "here")
    assert not (tmp_path / "pwned").exists()
    assert unpack_snapshot(pack_snapshot({"a": np.arange(3), "b": slice(1, 2)}), "here")["b"] == slice(1, 2)


def test_a_snapshot_saved_under_the_old_module_names_still_resumes():
    """Runs saved before the package was grouped by concern name `td3_jax.train` and `td3_jax.envs.lanesim`,
    their simulators have no `observation_cfg` (the vector's scales were constants then) and their roads hold
    the painted raster itself (roads are painted lazily now)."""
    env = LaneSimEnv(LaneSimConfig())
    env.reset(seed=3)
    stats = EpisodeStats(1)
    stats.add(np.array([1.5]), {})
    observation_cfg = env.core.__dict__.pop("observation_cfg")
    roads_now = list(env.core.roads)
    for i, road in enumerate(roads_now):
        old_road = object.__new__(type(road))
        old_road.__dict__.update({key: value for key, value in vars(road).items() if key != "surface"})
        old_road.__dict__.update(raster=road.raster.copy(), origin=road.origin, cell=road.cell)
        env.core.roads[i] = old_road
    data = pickle.dumps((env, stats), protocol=3)  # protocol 3 names classes as plain text lines
    env.core.observation_cfg = observation_cfg
    env.core.roads[:] = roads_now
    for new, old in (("td3_jax.training.run_log", "td3_jax.train"), ("td3_jax.envs.lanesim.sim", "td3_jax.envs.lanesim"),
                     ("td3_jax.envs.lanesim.roads", "td3_jax.envs.roads")):
        assert f"c{new}\n".encode() in data
        data = data.replace(f"c{new}\n".encode(), f"c{old}\n".encode())
    old_snapshot = base64.b64encode(zlib.compress(data)).decode("ascii")
    restored_env, restored_stats = unpack_snapshot(old_snapshot, "here")
    assert type(restored_env) is LaneSimEnv and restored_stats.reward[0] == 1.5
    np.testing.assert_array_equal(restored_env.step(np.zeros(2, np.float32))[0]["image"],
                                  env.step(np.zeros(2, np.float32))[0]["image"])


def test_a_garbled_snapshot_is_a_one_line_error():
    with pytest.raises(UserError, match="corrupt"):
        unpack_snapshot("not base64 at all!", "here")


# ---------------------------------------------------------------- failures inside the loop


@pytest.mark.slow
def test_a_failing_final_evaluation_leaves_the_final_checkpoint(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    trainer = Trainer(_config("training.max_timesteps=60", "training.num_eval_episodes=1", "training.eval_freq=0"),
                      run_dir)

    def fail(_log):
        raise RuntimeError("evaluation failed")

    monkeypatch.setattr(trainer, "_evaluate", fail)
    with pytest.raises(RuntimeError, match="evaluation failed") as raised:
        trainer.train(resume=False)
    assert any("checkpoint saved at step 60" in note for note in raised.value.__notes__)
    with Checkpointer(run_dir / "checkpoints", read_only=True) as checkpoints:
        assert checkpoints.latest_step() == 60


@pytest.mark.slow
def test_an_exception_mid_run_saves_the_consistent_state_and_the_run_resumes(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    trainer = Trainer(_config("training.max_timesteps=80"), run_dir)
    real_step = type(trainer.env).step

    def step(env, actions):
        if trainer.env_step == 50:
            raise ConnectionError("simulator lost")
        return real_step(env, actions)

    monkeypatch.setattr(type(trainer.env), "step", step)  # on the class: the env itself is pickled into checkpoints
    with pytest.raises(ConnectionError) as raised:
        trainer.train(resume=False)
    assert any("checkpoint saved at step 50" in note for note in raised.value.__notes__)
    monkeypatch.undo()  # the simulator is back
    resumed = Trainer(_config("training.max_timesteps=80"), run_dir)
    assert resumed.train(resume=True) == 0 and resumed.env_step == 80


@pytest.mark.slow
def test_a_full_disk_for_the_event_file_is_one_line_and_never_hangs(tmp_path, monkeypatch, capsys):
    from tensorboardX.event_file_writer import EventsWriter

    calls = {"n": 0}
    real_write = EventsWriter.write_event

    def write_event(self, event):
        calls["n"] += 1
        if calls["n"] > 40:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(self, event)

    monkeypatch.setattr(EventsWriter, "write_event", write_event)
    run_dir = tmp_path / "run"
    args = ["train", "--run-dir", str(run_dir)]
    for assignment in TINY + ["training.max_timesteps=200"]:
        args += ["--set", assignment]
    assert main(args) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1
    assert "No space left on device" in error and "checkpoint saved at step" in error


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["warn", "stop"])
def test_divergence_stops_before_non_finite_actions_reach_the_env_and_last_good_is_finite(tmp_path, capsys, mode):
    huge = [f"{key}=1e30" for key in ("networks.actor.learning_rate", "networks.critic.learning_rate",
                                       "networks.cnn.actor_cnn_lr", "networks.cnn.critic_cnn_lr")]
    run_dir = tmp_path / "run"
    trainer = Trainer(_config("training.max_timesteps=300", "training.checkpoint_freq=40", f"guard.mode={mode}", *huge),
                      run_dir)  # learning starts at 40: the first update's state is never checkpointed
    real_step = trainer.env.step

    def step(actions):
        assert np.isfinite(actions).all()
        return real_step(actions)

    trainer.env.step = step
    assert trainer.train(resume=False) == 1
    out = capsys.readouterr().out
    assert "the networks diverged" in out or "stop" in out
    with Checkpointer(run_dir / "checkpoints", read_only=True) as checkpoints:
        assert checkpoints.latest_step() is None
    if (run_dir / "last_good").exists():  # whatever it holds is finite
        with Checkpointer(run_dir / "last_good", read_only=True) as last_good:
            state = last_good.restore(abstract_train_state=trainer.state, with_replay=False).train_state
        assert all(np.isfinite(np.asarray(leaf)).all() for leaf in jax.tree.leaves(state.actor_params))


@pytest.mark.parametrize("failure", ["disk full", "last_good is a file", "stale last_good"])
def test_a_divergence_stop_reports_the_divergence_whatever_happens_to_last_good(tmp_path, monkeypatch, capsys, failure):
    """last_good/ cannot be written (a full disk, a file in its place) or holds an earlier divergence's state at a
    later step: the stop still prints the divergence and its diagnosis, and never checkpoints the run."""
    from td3_jax.checkpoint import integrity
    from td3_jax.checkpoint.store import save_alone
    from td3_jax.training.run_log import RunLog

    run_dir = tmp_path / "run"
    trainer = Trainer(_config("training.max_timesteps=100"), run_dir)
    trainer._last_good_state = (40, trainer.state)
    if failure == "disk full":
        def disk_full(root):
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(integrity, "fsync_tree", disk_full)
    elif failure == "last_good is a file":
        (run_dir / "last_good").write_text("")
    else:
        save_alone(run_dir / "last_good", 90, train_state=trainer.state, config={})
    log = RunLog(run_dir, total_steps=100, start_step=0, progress="lines")
    log.scalars(0, {"train/critic_loss": 1.0})  # written, not yet flushed: the stop's diagnosis must see it
    try:
        assert trainer._divergence_stop(log, "the networks diverged") == 1
    finally:
        log.close()
        trainer.env.close()
    out = capsys.readouterr().out.strip().splitlines()
    assert any("critic_loss=train/critic_loss" in line for line in out)  # the diagnosis read the flushed metric
    if failure == "stale last_good":
        assert out[-1].startswith("the networks diverged; last good state (step 40) saved in")
        with Checkpointer(run_dir / "last_good", read_only=True) as last_good:
            assert last_good.committed_steps() == [40]
    else:
        assert out[-1].startswith("the networks diverged; the last good state (step 40) was not saved: ")
        if failure == "disk full":
            assert "could not write" in out[-1] and "No space left on device" in out[-1] and "free disk space" in out[-1]
    assert (run_dir / "results.json").exists()
    # Had anything failed after the divergence, the run's failure path would not checkpoint the diverged state.
    assert "the networks diverged, so no checkpoint was saved" in trainer._save_after_failure()
    assert not (run_dir / "checkpoints").exists() or not any((run_dir / "checkpoints").iterdir())


# ---------------------------------------------------------------- multi-host random streams


def test_each_process_explores_with_its_own_streams_and_process_0_keeps_the_single_process_ones():
    init0, act0, explore0, replay0 = random_streams(7, 0)
    init1, act1, explore1, replay1 = random_streams(7, 1)
    single_init, single_act = jax.random.split(jax.random.key(7))
    assert np.array_equal(jax.random.key_data(init0), jax.random.key_data(single_init))
    assert np.array_equal(jax.random.key_data(act0), jax.random.key_data(single_act))
    assert np.array_equal(jax.random.key_data(init1), jax.random.key_data(init0))  # same networks everywhere
    assert not np.array_equal(jax.random.key_data(act1), jax.random.key_data(act0))
    draw = lambda seed: np.random.default_rng(seed).random(4)  # noqa: E731
    assert np.array_equal(draw(explore0), draw(np.random.SeedSequence([7, 1])))
    assert not np.array_equal(draw(explore1), draw(explore0))
    assert replay0 == 7 and not np.array_equal(draw(replay1), draw(replay0))


def test_resuming_a_run_that_never_saved_says_so_in_one_line(tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    config_lib.dump(_config("training.max_timesteps=50"), run_dir / "config.yaml")  # killed before its first save
    assert main(["train", "--resume", str(run_dir)]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "stopped before its first checkpoint" in error


@pytest.mark.slow
def test_a_full_disk_at_a_checkpoint_is_one_line_naming_the_last_checkpoint(tmp_path, monkeypatch, capsys):
    import orbax.checkpoint as ocp

    real_save = ocp.CheckpointManager.save

    def save(self, step, *args, **kwargs):
        if step > 50:
            raise ValueError("RESOURCE_EXHAUSTED: Failed to write 4096 bytes to file 8: No space left on device "
                             "[os_error_code='28']")  # what tensorstore raises
        return real_save(self, step, *args, **kwargs)

    monkeypatch.setattr(ocp.CheckpointManager, "save", save)
    args = ["train", "--run-dir", str(tmp_path / "run")]
    for assignment in TINY + ["training.max_timesteps=200", "training.checkpoint_freq=50"]:
        args += ["--set", assignment]
    assert main(args) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1
    assert "could not write checkpoint 100" in error and "No space left on device" in error
    assert "the last checkpoint is step 50" in error


def test_a_run_dir_that_cannot_be_created_is_one_line(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    assert main(["train", "--run-dir", str(blocker / "run")]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "--run-dir" in error and "a part of it is a file" in error


def test_a_replay_buffer_too_large_for_memory_fails_before_the_slow_setup(tmp_path, monkeypatch):
    import td3_jax.training.trainer as trainer_module

    def never(*args, **kwargs):
        raise AssertionError("built the networks or the evaluation env before checking the buffer")

    monkeypatch.setattr(trainer_module, "init_state", never)
    monkeypatch.setattr("td3_jax.envs.make_env", never)
    with pytest.raises(UserError, match="algorithm.buffer_size"):
        Trainer(_config("algorithm.buffer_size=10000000000", "training.num_eval_episodes=1"), tmp_path / "run")


@pytest.mark.slow
def test_sigterm_during_a_checkpoint_save_lets_the_save_commit_then_stops(tmp_path, monkeypatch):
    real_save = Checkpointer.save

    def save(self, step, **items):
        os.kill(os.getpid(), signal.SIGTERM)  # arrives while the save runs
        return real_save(self, step, **items)

    monkeypatch.setattr(Checkpointer, "save", save)
    run_dir = tmp_path / "run"
    trainer = Trainer(_config("training.max_timesteps=200", "training.checkpoint_freq=30"), run_dir)
    assert trainer.train(resume=False) == 128 + signal.SIGTERM
    monkeypatch.undo()
    with Checkpointer(run_dir / "checkpoints", read_only=True) as checkpoints:
        assert checkpoints.committed_steps() == [30]
    assert Trainer(_config("training.max_timesteps=40"), run_dir).train(resume=True) == 0
