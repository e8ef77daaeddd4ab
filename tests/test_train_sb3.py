"""scripts/train_sb3.py: SB3's TD3 on a td3_jax config's env, evaluated and logged as td3-jax train logs."""

from __future__ import annotations

import json

import pytest
from conftest import SCRIPTS, load_script


@pytest.mark.slow
def test_sb3_trains_on_the_configs_env_and_writes_the_same_eval_tags(tmp_path, capsys):
    pytest.importorskip("stable_baselines3")
    pytest.importorskip("Box2D")
    config = tmp_path / "car_racing.yaml"
    config.write_text("env:\n  backend: gym:CarRacing-v3\n  gym:\n    make_kwargs: {continuous: true}\n")
    settings = ["training.max_timesteps=40", "training.eval_freq=20", "training.num_eval_episodes=2",
                "training.eval_max_episode_steps=5", "algorithm.learning_starts=20", "algorithm.batch_size=8",
                "algorithm.buffer_size=200"]
    run_dir = tmp_path / "sb3"
    argv = ["--config", str(config), "--seed", "3", "--run-dir", str(run_dir)]
    assert load_script("train_sb3").main([*argv, *(f"--set={s}" for s in settings)]) == 0

    results = json.loads((run_dir / "results.json").read_text())
    assert [e["env_step"] for e in results["evaluations"]] == [20, 40]
    assert all(e["eval/avg_episode_length"] == 5 for e in results["evaluations"])  # the config's step limit
    # plot_run.py reads the run like a td3-jax run: the same tags, minutes counted from its first event.
    evaluations = load_script("plot_run").read_evaluations(run_dir)
    assert [e["env_step"] for e in evaluations] == [20, 40]
    assert evaluations[0]["eval/mean_reward"] == pytest.approx(results["evaluations"][0]["eval/mean_reward"])
    assert 0 <= evaluations[0]["minutes"] <= evaluations[1]["minutes"]
    assert "eval/success_rate" not in evaluations[0]  # CarRacing reports no driving info
    # plot_run.py draws the panels the runs have and tabulates their columns only.
    capsys.readouterr()
    assert load_script("plot_run").main([str(run_dir), "--out", str(tmp_path / "curves.png"),
                                     "--panels", "eval/mean_reward,eval/success_rate,eval/avg_episode_length"]) == 0
    table = capsys.readouterr().out
    assert "| env step | minutes | return | episode length |" in table and "success" not in table
    assert (tmp_path / "curves.png").stat().st_size > 0


def test_an_env_with_a_vector_part_is_refused_in_one_line(tmp_path, capsys):
    pytest.importorskip("stable_baselines3")
    config = SCRIPTS.parent / "configs" / "td3_lanesim_5k.yaml"
    assert load_script("train_sb3").main(["--config", str(config), "--seed", "1",
                                      "--run-dir", str(tmp_path / "sb3")]) == 2
    assert "has a vector observation" in capsys.readouterr().err
