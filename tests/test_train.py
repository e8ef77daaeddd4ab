"""The training loop end to end on the embedded simulator, with a tiny network.

The headline property: N steps + resume + N steps gives the same train state,
replay buffer and loop state, bit for bit, as 2N uninterrupted steps.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import chex
import numpy as np
import pytest

from td3_jax.checkpoint.store import Checkpointer
from td3_jax.training import config as config_lib
from td3_jax.training.resume import unpack_snapshot
from td3_jax.training.schedule import exploration_std
from td3_jax.training.trainer import Trainer

TINY = [
    "algorithm.learning_starts=40",
    "algorithm.batch_size=4",
    "algorithm.buffer_size=400",
    "algorithm.train_freq=2",
    "algorithm.gradient_steps=2",
    "networks.cnn.features=8",
    "networks.actor.hidden_sizes=[8]",
    "networks.critic.hidden_sizes=[8]",
    "env.lanesim.max_episode_steps=30",
    "env.lanesim.route_length_m=60",
    "training.num_eval_episodes=0",
    "training.checkpoint_freq=0",
    "training.log_freq=10",
    "training.progress=off",
]


def _config(*extra: str) -> config_lib.RunConfig:
    return config_lib.load(None, TINY + list(extra))[0]


def _final(run_dir: Path, run: config_lib.RunConfig):
    trainer = Trainer(run, run_dir)
    with Checkpointer(run_dir / "checkpoints", read_only=True) as ckpt:
        return ckpt.restore(abstract_train_state=trainer.state)


@pytest.mark.slow
@pytest.mark.parametrize(
    "variant",
    [
        # both sampling paths, both network layouts (separate encoders, one shared encoder), and
        # both batch feeds (in line, prefetched on a thread)
        ("algorithm.n_step=1", "networks.cnn.shared=true", "training.prefetch_batches=false",
         "networks.critic.reward_components=true", "algorithm.critic_huber_delta=5.0"),
        ("algorithm.n_step=3", "networks.cnn.shared=false", "training.prefetch_batches=true",
         "env.observation.deviation_scale_m=0.25", "env.observation.heading_scale_rad=0.05",
         "env.observation.previous_action=true", "env.reward.steering_change_penalty=-1.0",
         "networks.actor.trunk_features=4", "networks.critic.trunk_features=4",
         "networks.actor.vector_after_trunk=true", "networks.critic.vector_after_trunk=true",
         "networks.critic.dueling=true"),
    ],
    ids=["n1-shared-inline", "n3-separate-prefetch"],
)
def test_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path, variant, capsys):
    straight = tmp_path / "straight"
    assert Trainer(_config("training.max_timesteps=120", *variant), straight).train(resume=False) == 0

    split = tmp_path / "split"
    assert Trainer(_config("training.max_timesteps=70", *variant), split).train(resume=False) == 0
    resumed = Trainer(_config("training.max_timesteps=120", *variant), split)
    assert resumed.train(resume=True) == 0

    a = _final(straight, _config("training.max_timesteps=120", *variant))
    b = _final(split, _config("training.max_timesteps=120", *variant))
    assert a.step == b.step == 120
    chex.assert_trees_all_equal(a.train_state, b.train_state)
    assert set(a.replay_state) == set(b.replay_state)
    for key, value in a.replay_state.items():
        np.testing.assert_array_equal(np.asarray(value), np.asarray(b.replay_state[key]), err_msg=key)
    for key in ("env_step", "episodes", "updates", "explore_rng", "act_key", "recent_rewards"):
        assert a.host_state[key] == b.host_state[key], key
    assert int(a.train_state.step) == a.host_state["updates"] > 0
    if "networks.critic.reward_components=true" in variant:  # the replay holds each step's five components
        assert a.replay_state["rewards"].shape[1:] == (5,) and np.abs(a.replay_state["rewards"]).sum() > 0
    # The saved simulators continue identically (their pickles may differ in byte layout).
    (env_a, obs_a, _), (env_b, obs_b, _) = (unpack_snapshot(r.host_state["env_snapshot"], r.step) for r in (a, b))
    assert env_a.core.observation_cfg == env_b.core.observation_cfg == resumed.run.env.observation
    chex.assert_trees_all_equal(obs_a, obs_b)
    actions = np.random.default_rng(0).uniform(-1, 1, (25, env_a.num_envs, 2)).astype(np.float32)
    for action in actions:
        out_a, out_b = env_a.step(action), env_b.step(action)
        chex.assert_trees_all_equal(out_a[:4], out_b[:4])

    # The resumed run's policy evaluates from its checkpoint (the shared layout lends the critic's encoder).
    from td3_jax.cli import main

    assert main(["eval", "--checkpoint", str(split), "--episodes", "1"]) == 0
    assert "eval/mean_reward" in capsys.readouterr().out


@pytest.mark.slow
def test_the_best_evaluation_s_policy_is_kept_through_a_lost_checkpoint_and_a_resume(tmp_path):
    """best/ holds the policy of the run's best evaluation (here the lowest mean return); a run that loses its last checkpoint and
    resumes from the one before ends with the uninterrupted run's best/, bit for bit, and `td3-jax eval --checkpoint
    RUN/best` drives that policy on the evaluation's episodes to the recorded metrics."""
    from td3_jax.cli import main

    # min: the tiny run's returns fall as it trains, so bests come after the checkpoint at 40 and the resume from it
    # must drop them (a save at a step best/ already holds would fail).
    evaluations = ("training.num_eval_episodes=1", "training.eval_freq=20", "training.checkpoint_freq=40",
                   "training.compare_baseline=false", "training.best_checkpoint_mode=min")
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert Trainer(_config("training.max_timesteps=120", *evaluations), straight).train(resume=False) == 0
    assert Trainer(_config("training.max_timesteps=60", *evaluations), split).train(resume=False) == 0
    with Checkpointer(split / "checkpoints") as checkpointer:  # as if the checkpoint at 60 had been lost
        assert checkpointer.committed_steps() == [40, 60]
        checkpointer.delete(60)
    assert Trainer(_config("training.max_timesteps=120", *evaluations), split).train(resume=True) == 0

    results = json.loads((straight / "results.json").read_text())
    returns = [e["eval/mean_reward"] for e in results["evaluations"]]
    assert [e["env_step"] for e in results["evaluations"]] == [20, 40, 60, 80, 100, 120]
    best_index = returns.index(min(returns))  # the first of equal values: only an improvement replaces the best
    best_step = results["evaluations"][best_index]["env_step"]
    assert results["best_checkpoint"] == {"env_step": best_step, "metric": "eval/mean_reward", "value": returns[best_index]}
    assert json.loads((split / "results.json").read_text())["best_checkpoint"] == results["best_checkpoint"]
    kept, steps = {}, {}
    for run_dir in (straight, split):
        with Checkpointer(run_dir / "best", read_only=True) as best:
            steps[run_dir] = best.committed_steps()
            kept[run_dir] = best.restore(abstract_train_state=Trainer(_config(), tmp_path / "abstract").state)
    # Every improvement was saved; those older than the best up to the oldest checkpoint kept (40 of 40, 80, 120)
    # went, so that a resume from any kept checkpoint finds its best.
    improved = [e["env_step"] for i, e in enumerate(results["evaluations"]) if all(
        e["eval/mean_reward"] < earlier["eval/mean_reward"] for earlier in results["evaluations"][:i])]
    anchor = max((s for s in improved if s <= 40), default=0)
    assert steps[straight] == steps[split] == [s for s in improved if s >= anchor]
    assert steps[straight][-1] == best_step
    chex.assert_trees_all_equal(kept[straight].train_state, kept[split].train_state)
    assert kept[straight].host_state == kept[split].host_state

    out = tmp_path / "best.json"
    assert main(["eval", "--checkpoint", str(split / "best"), "--episodes", "1", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["checkpoint_step"] == best_step
    assert report["metrics"] == {k: v for k, v in results["evaluations"][best_index].items() if k != "env_step"}


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> tuple[Path, config_lib.RunConfig]:
    run_dir = tmp_path_factory.mktemp("trained") / "run"
    # With the smoothness term on, so that every documented tag is written (and the option trains end to end).
    run = _config("training.max_timesteps=100", "training.num_eval_episodes=2", "training.eval_freq=50",
                  "algorithm.actor_smoothness=0.5")
    assert Trainer(run, run_dir).train(resume=False) == 0
    return run_dir, run


@pytest.mark.slow
def test_training_writes_results_config_and_diagnosis(trained_run):
    run_dir, run = trained_run
    results = json.loads((run_dir / "results.json").read_text())
    assert results["total_timesteps"] == 100
    # train_freq 2, gradient_steps 2, learning from step 40: updates at steps 40, 42, ..., 100
    assert results["total_updates"] == 2 * len(range(40, 101, 2))
    assert len(results["eval_rewards"]) == 2
    # The baseline ran on the final evaluation's episodes; the policy column is that evaluation.
    comparison = results["final_comparison"]
    assert comparison["episodes"] == 2 and comparison["first_seed"] == run.training.eval_seed
    assert comparison["policy"] == {k: v for k, v in results["evaluations"][-1].items() if k != "env_step"}
    assert comparison["baseline"]["eval/lateral_rmse_m"] < 0.05  # pure pursuit follows the lane centre
    assert (run_dir / "diagnosis.json").is_file()
    reloaded, _ = config_lib.load(run_dir / "config.yaml")
    assert reloaded == run


def _documented_tags() -> dict[str, str]:
    """tag -> varies, from the tables of docs/metrics.md ({a,b} expanded; {reason} kept as a wildcard)."""
    tags = {}
    for line in (Path(__file__).resolve().parents[1] / "docs" / "metrics.md").read_text().splitlines():
        match = re.match(r"\| `([^`]+)` \|.*\| (yes|no|may) \|$", line)
        if not match:
            continue
        pattern, varies = match.groups()
        expansions = [pattern]
        while any("{" in p and "," in p.split("{", 1)[1].split("}", 1)[0] for p in expansions):
            expanded = []
            for p in expansions:
                head, rest = p.split("{", 1)
                options, tail = rest.split("}", 1)
                expanded += [head + option + tail for option in options.split(",")] if "," in options else [p]
            expansions = expanded
        tags.update(dict.fromkeys(expansions, varies))
    return tags


@pytest.mark.slow
def test_every_written_tag_is_documented_and_none_is_frozen(trained_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir, _ = trained_run
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    written = set(events.Tags()["scalars"])
    documented = _documented_tags()
    wildcards = [tag.split("{")[0] for tag in documented if "{" in tag]
    undocumented = [t for t in written if t not in documented and not any(t.startswith(w) for w in wildcards)]
    assert not undocumented, f"tags written but not in docs/metrics.md: {sorted(undocumented)}"
    expected = {t for t in documented if "{" not in t and not t.startswith("alerts/")}
    missing = expected - written
    assert not missing, f"documented tags never written: {sorted(missing)}"
    frozen = []
    for tag, varies in documented.items():
        if varies != "yes" or tag not in written or tag.startswith("eval/"):  # 2 evals only
            continue
        values = {round(e.value, 12) for e in events.Scalars(tag)}
        if len(values) < 2:
            frozen.append(tag)
    assert not frozen, f"tags that never changed: {frozen}"
    for tag in ("train/actor_loss", "debug/actor_q_mean"):
        assert all(np.isfinite(e.value) for e in events.Scalars(tag)), tag


def test_exploration_schedules():
    schedule = config_lib.ExplorationNoiseConfig(schedule="linear", initial=0.3, final=0.1, decay_steps=100)
    assert exploration_std(schedule, 0) == pytest.approx(0.3)
    assert exploration_std(schedule, 50) == pytest.approx(0.2)
    assert exploration_std(schedule, 1000) == pytest.approx(0.1)
    schedule = config_lib.ExplorationNoiseConfig(schedule="exponential", initial=0.3, final=0.1, decay_steps=20000)
    assert exploration_std(schedule, 0) == pytest.approx(0.3)
    assert exploration_std(schedule, 20000) == pytest.approx(0.1 + 0.2 * np.exp(-5))
    schedule = config_lib.ExplorationNoiseConfig(schedule="constant", initial=0.25)
    assert exploration_std(schedule, 12345) == 0.25


@pytest.mark.slow
def test_eval_cli_runs_the_checkpointed_policy(trained_run, tmp_path, capsys):
    from td3_jax.cli import main

    run_dir, _ = trained_run
    out = tmp_path / "eval.json"
    assert main(["eval", "--checkpoint", str(run_dir), "--episodes", "2", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["checkpoint_step"] == 100
    assert len(report["episodes"]) == 2
    assert "eval/lateral_rmse_m" in report["metrics"]
    assert "eval/mean_reward" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.parametrize("configured", ["target", "average"])
def test_the_configured_policy_is_what_training_and_eval_evaluate(tmp_path, configured):
    """training.eval_policy=target or average: the run's final evaluation drives that policy (on the target
    critic's encoder, or the averaged one: shared here), `td3-jax eval` follows the run's choice and `--policy`
    picks any of the run's policies."""
    from td3_jax.cli import main
    from td3_jax.core.td3 import policy_params
    from td3_jax.envs import make_env
    from td3_jax.training.evaluate import episode_step_limit, evaluate, td3_policy

    run_dir = tmp_path / "run"
    run = _config("training.max_timesteps=100", "training.num_eval_episodes=2", "training.eval_freq=0",
                  f"training.eval_policy={configured}", "algorithm.policy_average_tau=0.2",
                  "training.compare_baseline=false", "networks.cnn.shared=true")
    assert Trainer(run, run_dir).train(resume=False) == 0
    final = json.loads((run_dir / "results.json").read_text())["evaluations"][-1]
    final.pop("env_step")

    reports = {}
    for which in (None, "target", "average", "online"):
        out = tmp_path / f"eval_{which}.json"
        flags = ["--policy", which] if which else []
        assert main(["eval", "--checkpoint", str(run_dir), "--json", str(out), *flags]) == 0
        reports[which] = json.loads(out.read_text())
    assert reports[None]["policy"] == configured and reports[None]["metrics"] == final
    assert reports[configured]["metrics"] == final
    others = {"target", "average", "online"} - {configured}
    assert all(reports[which]["policy"] == which and reports[which]["metrics"] != final for which in others)

    state = _final(run_dir, run).train_state
    env = make_env(run.env)
    try:
        for which in ("target", "average", "online"):
            policy = td3_policy(policy_params(state, policy=which), state.config.network)
            summary, _ = evaluate(env, policy, 2, run.training.eval_seed, max_steps=episode_step_limit(run.env, env))
            assert summary == reports[which]["metrics"]
    finally:
        env.close()


def test_bad_resume_and_existing_run_dir_are_one_line_errors(trained_run, tmp_path, capsys):
    from td3_jax.cli import main

    run_dir, _ = trained_run
    assert main(["train", "--resume", str(tmp_path)]) == 2
    assert main(["train", "--run-dir", str(run_dir)]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 2 and "not a td3_jax run directory" in errors[0] and "--resume" in errors[1]


@pytest.mark.slow
def test_sigint_saves_a_checkpoint_that_resumes(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    run_dir = tmp_path / "interrupted"
    command = [sys.executable, "-m", "td3_jax.cli", "train", "--run-dir", str(run_dir)]
    for assignment in TINY + ["training.max_timesteps=100000", "training.log_freq=10"]:
        command += ["--set", assignment]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not list(run_dir.glob("events.out.tfevents*")):
        time.sleep(0.5)
    time.sleep(3.0)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGINT, err
    assert f"--resume {run_dir}" in out
    with Checkpointer(run_dir / "checkpoints", read_only=True) as ckpt:
        step = ckpt.latest_step()
    assert step is not None and 0 < step < 100000


def test_eval_cli_scores_the_baseline_on_the_same_episodes(tmp_path, capsys):
    from td3_jax.cli import main

    config = tmp_path / "c.yaml"
    config.write_text("env: {lanesim: {route_length_m: 60}}\n")
    out = tmp_path / "baseline.json"
    assert main(["eval", "--baseline", "--config", str(config), "--episodes", "2", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["metrics"]["eval/success_rate"] == 1.0  # the baseline drives a short route reliably
    assert [e["termination_reason"] for e in report["episodes"]] == ["route_completed"] * 2


@pytest.mark.slow
def test_a_healthy_td3_jax_run_is_diagnosed_healthy(trained_run):
    run_dir, _ = trained_run
    diagnosis = json.loads((run_dir / "diagnosis.json").read_text())
    assert diagnosis["verdict"] == "healthy", diagnosis["summary"]
    assert diagnosis["exit_code"] == 0
    assert not diagnosis["missing_signals"], diagnosis["missing_signals"]


def test_comparison_table_puts_each_policy_in_a_column():
    from td3_jax.training.evaluate import comparison_table

    table = comparison_table({
        "TD3": {"eval/success_rate": 0.9, "eval/lateral_rmse_m": 0.4},
        "baseline": {"eval/success_rate": 1.0, "eval/lateral_rmse_m": 0.017},
    }).splitlines()
    assert table[0].split() == ["TD3", "baseline"]
    assert table[1].split()[-2:] == ["0.90", "1.00"]
    assert [line for line in table if line.startswith("lateral RMSE")][0].split()[-2:] == ["0.400", "0.017"]
    assert [line for line in table if line.startswith("mean return")][0].split()[-2:] == ["-", "-"]


@pytest.mark.parametrize("prefetch", [False, True])
def test_awaiting_each_update_changes_the_timing_only(tmp_path, prefetch):
    """The bench's loop figure awaits every update (`await_updates`); the run it times is the same run."""
    run = _config("training.max_timesteps=60", f"training.prefetch_batches={prefetch}")
    trainers = {}
    for awaited in (False, True):
        trainers[awaited] = Trainer(run, tmp_path / str(awaited), await_updates=awaited)
        assert trainers[awaited].train(resume=False) == 0
    chex.assert_trees_all_equal(trainers[True].state, trainers[False].state)
    assert trainers[True].updates == trainers[False].updates > 0
    # Both reused the host arrays of finished updates' batches (the unawaited run only once they were done).
    calls = trainers[False].updates // 2
    assert all(trainer.feed.host_batches_allocated <= 3 < calls for trainer in trainers.values())
    host = {awaited: {k: v for k, v in trainer.host_state().items() if k != "env_snapshot"}  # pickles vary in layout
            for awaited, trainer in trainers.items()}
    assert host[True] == host[False]
    chex.assert_trees_all_equal(trainers[True].obs, trainers[False].obs)


class _ScriptedEnv:
    """Two-step episodes whose step infos carry exactly `info`."""

    def __init__(self, info: dict):
        self.info, self.steps = info, 0

    def reset(self, seed=None):
        self.steps = 0
        return {"image": np.zeros((4, 4, 1), np.uint8)}, {}

    def step(self, action):
        self.steps += 1
        return {"image": np.zeros((4, 4, 1), np.uint8)}, 1.0, False, self.steps == 2, dict(self.info)


def test_driving_metrics_are_left_out_when_the_env_does_not_report_them():
    from td3_jax.training.evaluate import DRIVING_METRICS, evaluate

    def policy(obs, info):
        return np.zeros((1, 1), np.float32)

    driving_info = {"success": True, "collision": False, "lane_invasion": True, "lateral_deviation_m": 0.3,
                    "speed_mps": 5.0, "distance_travelled_m": 12.0}
    full, _ = evaluate(_ScriptedEnv(driving_info), policy, 2, seed=0)
    assert set(DRIVING_METRICS) <= full.keys()
    assert (full["eval/success_rate"], full["eval/avg_lane_invasions"], full["eval/avg_distance_m"]) == (1.0, 2.0, 12.0)
    assert full["eval/lateral_rmse_m"] == pytest.approx(0.3) and full["eval/mean_speed_kmh"] == pytest.approx(18.0)
    assert full["eval/lateral_mean_m"] == pytest.approx(0.3)

    bare, _ = evaluate(_ScriptedEnv({"crashed": False}), policy, 2, seed=0)  # highway-env's own keys
    assert not set(DRIVING_METRICS) & bare.keys()  # absent, not 0
    assert (bare["eval/mean_reward"], bare["eval/avg_episode_length"], bare["eval/termination_time_limit"]) == (
        2.0, 2.0, 1.0)

    speed_only, _ = evaluate(_ScriptedEnv({"speed_mps": 5.0}), policy, 2, seed=0)
    assert set(DRIVING_METRICS) & speed_only.keys() == {"eval/mean_speed_kmh"}


def test_progress_lines_show_elapsed_time_and_an_eta(tmp_path, capsys, monkeypatch):
    from td3_jax.training import run_log
    clock = [100.0]
    monkeypatch.setattr(run_log.time, "perf_counter", lambda: clock[0])
    log = run_log.RunLog(tmp_path, total_steps=1000, start_step=200, progress="lines")
    clock[0] = 160.0  # one progress line 60 s later
    log.progress(400, sps=3.3)
    log.close()
    line = capsys.readouterr().out.strip()
    # 200 steps in 60 s, 600 left: 3 minutes
    assert line == "step 400/1000 sps=3.3 elapsed=1m00s eta=3m00s"


@pytest.mark.slow
def test_steering_probe_reads_a_trained_run(trained_run, capsys):
    from conftest import load_script

    steering_probe = load_script("steering_probe")
    run_dir, _ = trained_run
    assert steering_probe.main([str(run_dir), "--episodes", "1"]) == 0
    out = capsys.readouterr().out
    assert f"{run_dir}/100, online actor" in out
    assert "steering per m of deviation" in out and "nan" not in out
    assert steering_probe.main([str(run_dir), "--episodes", "1", "--policy", "target"]) == 0
    target_out = capsys.readouterr().out
    assert f"{run_dir}/100, target actor" in target_out
    actor_row = lambda text: [line for line in text.splitlines() if "per m of deviation" in line]
    assert actor_row(target_out) != actor_row(out)  # another actor, other gains
    assert steering_probe.main([str(run_dir), "--episodes", "1", "--policy", "average"]) == 2
    error = capsys.readouterr().err.strip()
    assert "keeps no policy average" in error and "--policy online" in error and "\n" not in error
    assert steering_probe.main([str(run_dir), "--episodes", "1", "--added-gains", "0.5, 1"]) == 0
    rows = capsys.readouterr().out.split("added to the actor's steering")[1].splitlines()[2:]
    assert [float(row.split()[0]) for row in rows] == [0.0, 0.5, 1.0] and "nan" not in "".join(rows)
    assert steering_probe.main([str(run_dir), "--episodes", "1", "--branch-every", "4", "--horizon", "3"]) == 0
    table = capsys.readouterr().out.split("the critic against Monte Carlo returns on ")[1].splitlines()
    assert int(table[0].split()[0]) > 0 and "nan" not in "\n".join(table)
    assert [row.split()[:2] for row in table[2:4]] == [["return", "change"], ["min(Q1,", "Q2)"]]
    assert steering_probe.main([str(run_dir.parent / "missing")]) == 2
    assert "has no config.yaml" in capsys.readouterr().err
    assert steering_probe.main([str(run_dir), "--branch-every", "-1"]) == 2
    assert "--branch-every >= 0" in capsys.readouterr().err
    assert steering_probe.main([str(run_dir), "--added-gains", "half"]) == 2
    assert "--added-gains takes comma-separated numbers" in capsys.readouterr().err
