#!/usr/bin/env python3
"""Plots the evaluation curves of one or more runs to one PNG, and prints each run's eval table.

    python scripts/plot_run.py RUN_DIR [RUN_DIR ...] --out docs/figures/runs.png [--baseline baseline.json]

Reads each RUN_DIR's eval/* tags from its event files (a resumed run's files
are merged). `--baseline` adds the baseline controller's success rate and
lateral RMSE as horizontal lines (the JSON of `td3-jax eval --baseline --json`).

Each table ends with the first of three consecutive evaluations at >= 90%
success, in env steps and in minutes since the run's first event. The minutes
count wall-clock time between the events, so for a run that was stopped and
resumed they include the pause.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

PANELS = (
    ("eval/mean_reward", "eval return (deterministic)"),
    ("eval/success_rate", "eval success rate"),
    ("eval/lateral_rmse_m", "eval lateral RMSE (m)"),
    ("eval/avg_distance_m", "eval distance per episode (m)"),
)


def read_evaluations(run_dir: Path) -> list[dict]:
    """One dict per evaluation: env_step, minutes since the run's first event, and every eval/* value."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = sorted(run_dir.glob("events.out.tfevents.*"))
    if not files:
        raise SystemExit(f"{run_dir}: no event files")
    by_step: dict[int, dict] = {}
    start = None
    for file in files:
        events = EventAccumulator(str(file), size_guidance={"scalars": 0})
        events.Reload()
        for tag in events.Tags()["scalars"]:
            for event in events.Scalars(tag):
                start = event.wall_time if start is None else min(start, event.wall_time)
                if tag.startswith("eval/"):
                    row = by_step.setdefault(event.step, {"env_step": event.step})
                    row[tag] = event.value
                    row["wall_time"] = event.wall_time
    rows = [by_step[step] for step in sorted(by_step)]
    for row in rows:
        row["minutes"] = (row.pop("wall_time") - start) / 60.0
    return rows


def first_sustained(evaluations: list[dict], threshold: float = 0.9, run: int = 3) -> dict | None:
    """The first evaluation that starts `run` consecutive ones at >= `threshold` success."""
    rates = [e["eval/success_rate"] for e in evaluations]
    for i in range(len(rates) - run + 1):
        if all(rate >= threshold - 1e-6 for rate in rates[i:i + run]):  # event files hold float32: 0.9 reads 0.8999...
            return evaluations[i]
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    parser.add_argument("--out", required=True)
    parser.add_argument("--baseline", default=None, help="JSON of td3-jax eval --baseline --json")
    args = parser.parse_args(argv)
    runs = {Path(d).name: read_evaluations(Path(d)) for d in args.run_dirs}
    empty = [name for name, evaluations in runs.items() if not evaluations]
    if empty:
        print(f"no evaluations in {', '.join(empty)}", file=sys.stderr)
        return 2

    fig, axes = plt.subplots(1, len(PANELS), figsize=(17, 3.8))
    for name, evaluations in runs.items():
        steps = np.array([e["env_step"] for e in evaluations])
        for ax, (tag, _) in zip(axes, PANELS):
            ax.plot(steps, [e.get(tag, np.nan) for e in evaluations], marker="o", ms=3, label=name)
    if args.baseline:
        baseline = json.loads(Path(args.baseline).read_text())
        metrics = baseline.get("metrics", baseline)
        for ax, (tag, _) in zip(axes, PANELS):
            if tag in ("eval/success_rate", "eval/lateral_rmse_m"):
                ax.axhline(metrics[tag], color="gray", ls="--", label="baseline")
    for ax, (_, title) in zip(axes, PANELS):
        ax.set_title(title)
        ax.set_xlabel("env step")
        ax.grid(alpha=0.3)
    axes[1].set_ylim(-0.05, 1.05)
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)

    for name, evaluations in runs.items():
        print(f"\n{name}\n")
        print("| env step | minutes | return | success | lateral RMSE (m) | distance (m) | episode length |")
        print("|---|---|---|---|---|---|---|")
        for e in evaluations:
            print(
                f"| {e['env_step']} | {e['minutes']:.0f} | {e['eval/mean_reward']:.1f} | {e['eval/success_rate']:.2f} | "
                f"{e['eval/lateral_rmse_m']:.3f} | {e['eval/avg_distance_m']:.1f} | {e['eval/avg_episode_length']:.0f} |"
            )
        sustained = first_sustained(evaluations)
        print("\nfirst of three consecutive evaluations at >= 90% success: " + (
            f"env step {sustained['env_step']}, {sustained['minutes']:.0f} min" if sustained else "none"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
