"""scripts/plot_run.py's reading of a learning curve."""

from __future__ import annotations

import json

import matplotlib.axes
import numpy as np
from conftest import load_script
from tensorboardX import SummaryWriter


def test_first_of_three_consecutive_evaluations_at_90_percent_reads_float32_values():
    rates = [0.0, 0.9, 1.0, 0.8, 0.9, 1.0, 0.9, 0.7]
    evaluations = [{"env_step": 1000 * i, "eval/success_rate": float(np.float32(r))} for i, r in enumerate(rates)]
    plot_run = load_script("plot_run")
    assert plot_run.first_sustained(evaluations)["env_step"] == 4000  # 0.9 as float32 is 0.8999999761581421
    assert plot_run.first_sustained(evaluations[:6]) is None  # the run ends before a third one


def test_a_driving_run_is_drawn_and_tabulated_with_its_collisions(tmp_path, capsys, monkeypatch):
    run_dir = tmp_path / "traffic_s1"
    writer = SummaryWriter(str(run_dir))
    for step, success, collisions in [(2500, 0.0, 0.9), (5000, 0.9, 0.1), (7500, 1.0, 0.0), (10000, 0.9, 0.0)]:
        writer.add_scalar("eval/success_rate", success, step)
        writer.add_scalar("eval/avg_collisions", collisions, step)
        writer.add_scalar("eval/lateral_rmse_m", 0.5, step)
    writer.close()
    baseline = tmp_path / "baseline.json"
    baseline.write_text(json.dumps({"metrics": {"eval/success_rate": 1.0, "eval/avg_collisions": 0.0}}))

    baseline_lines = []
    draw_line = matplotlib.axes.Axes.axhline
    monkeypatch.setattr(matplotlib.axes.Axes, "axhline",
                        lambda ax, y, *a, **k: baseline_lines.append(y) or draw_line(ax, y, *a, **k))
    out = tmp_path / "curves.png"
    assert load_script("plot_run").main([str(run_dir), "--out", str(out), "--baseline", str(baseline), "--panels",
                                         "eval/success_rate,eval/avg_collisions,eval/lateral_rmse_m"]) == 0
    table = capsys.readouterr().out
    assert "| env step | minutes | success | collisions | lateral RMSE (m) |" in table
    assert "| 2500 |" in table and "| 0.00 | 0.90 |" in table  # success, then that evaluation's collisions
    assert out.stat().st_size > 0
    # a line at the baseline's value on each panel it has a value for (it reports no lateral RMSE here)
    assert sorted(baseline_lines) == [0.0, 1.0]


def test_curves_are_drawn_against_the_minutes_since_the_run_s_first_event(tmp_path, monkeypatch):
    run_dir = tmp_path / "alone_s9"
    writer = SummaryWriter(str(run_dir))
    start = 1_000_000.0
    writer.add_scalar("progress/buffer_size", 250, 250, walltime=start)
    for step, minutes in [(2500, 2.0), (5000, 4.5)]:
        writer.add_scalar("eval/success_rate", 0.5, step, walltime=start + 60 * minutes)
    writer.close()

    drawn = []
    plot = matplotlib.axes.Axes.plot
    monkeypatch.setattr(matplotlib.axes.Axes, "plot",
                        lambda ax, x, *a, **k: drawn.append(list(x)) or plot(ax, x, *a, **k))
    out = tmp_path / "curves.png"
    plot_run = load_script("plot_run")
    assert plot_run.main([str(run_dir), "--out", str(out), "--panels", "eval/success_rate", "--x", "minutes"]) == 0
    assert np.allclose(drawn, [[2.0, 4.5]])
    drawn.clear()
    assert plot_run.main([str(run_dir), "--out", str(out), "--panels", "eval/success_rate"]) == 0
    assert drawn == [[2500, 5000]]
