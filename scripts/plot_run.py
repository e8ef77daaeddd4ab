#!/usr/bin/env python3
"""Plots the evaluation curves of one or more runs to one PNG, and prints each run's eval table.

    python scripts/plot_run.py RUN_DIR [RUN_DIR ...] --out docs/figures/runs.png [--baseline baseline.json]

Reads each RUN_DIR's eval/* tags from its event files (a resumed run's files
are merged). `--baseline` adds the baseline controller's success rate,
collisions per route and lateral RMSE as horizontal lines (the JSON of
`td3-jax eval --baseline --json`).

`--panels` picks the curves (eval/* tags); a panel no run has is left out, as a
gymnasium env's runs have no success rate, lateral RMSE or distance. `--x minutes`
draws them against the minutes since each run's first event instead of env steps
(the wall time to learn, for runs that trained alone and were never paused).

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

TITLES = {
    "eval/mean_reward": "eval return (deterministic)",
    "eval/success_rate": "eval success rate",
    "eval/avg_collisions": "eval collisions per route",
    "eval/lateral_rmse_m": "eval lateral RMSE (m)",
    "eval/avg_distance_m": "eval distance per episode (m)",
    "eval/avg_episode_length": "eval episode length (env steps)",
}
BASELINE_LINES = ("eval/success_rate", "eval/avg_collisions", "eval/lateral_rmse_m")
"""The panels that show the baseline controller's value as a horizontal line."""
X_AXES = {"env_step": "env step", "minutes": "minutes since the start"}
DEFAULT_PANELS = ("eval/mean_reward", "eval/success_rate", "eval/lateral_rmse_m", "eval/avg_distance_m")
TABLE = (  # column, tag, format
    ("return", "eval/mean_reward", "{:.1f}"),
    ("success", "eval/success_rate", "{:.2f}"),
    ("collisions", "eval/avg_collisions", "{:.2f}"),
    ("lateral RMSE (m)", "eval/lateral_rmse_m", "{:.3f}"),
    ("distance (m)", "eval/avg_distance_m", "{:.1f}"),
    ("episode length", "eval/avg_episode_length", "{:.0f}"),
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
    parser.add_argument("--panels", default=",".join(DEFAULT_PANELS),
                        help=f"comma-separated eval/* tags to draw, of {', '.join(TITLES)}")
    parser.add_argument("--x", choices=X_AXES, default="env_step",
                        help="the curves' x axis: env steps, or minutes since each run's first event")
    args = parser.parse_args(argv)
    unknown = [tag for tag in args.panels.split(",") if tag not in TITLES]
    if unknown:
        print(f"--panels: unknown {', '.join(unknown)}; choose from {', '.join(TITLES)}", file=sys.stderr)
        return 2
    runs = {Path(d).name: read_evaluations(Path(d)) for d in args.run_dirs}
    empty = [name for name, evaluations in runs.items() if not evaluations]
    if empty:
        print(f"no evaluations in {', '.join(empty)}", file=sys.stderr)
        return 2
    panels = [tag for tag in args.panels.split(",") if any(tag in e for run in runs.values() for e in run)]

    fig, axes = plt.subplots(1, len(panels), figsize=(4.25 * len(panels), 3.8), squeeze=False)
    axes = dict(zip(panels, axes[0]))
    for name, evaluations in runs.items():
        xs = np.array([e[args.x] for e in evaluations])
        for tag, ax in axes.items():
            ax.plot(xs, [e.get(tag, np.nan) for e in evaluations], marker="o", ms=3, label=name)
    if args.baseline:
        baseline = json.loads(Path(args.baseline).read_text())
        metrics = baseline.get("metrics", baseline)
        for tag, ax in axes.items():
            if tag in BASELINE_LINES and tag in metrics:
                ax.axhline(metrics[tag], color="gray", ls="--", label="baseline")
    for tag, ax in axes.items():
        ax.set_title(TITLES[tag])
        ax.set_xlabel(X_AXES[args.x])
        ax.grid(alpha=0.3)
    if "eval/success_rate" in axes:
        axes["eval/success_rate"].set_ylim(-0.05, 1.05)
    next(iter(axes.values())).legend(fontsize=8)
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)

    for name, evaluations in runs.items():
        columns = [(label, tag, spec) for label, tag, spec in TABLE if any(tag in e for e in evaluations)]
        print(f"\n{name}\n")
        print("| env step | minutes | " + " | ".join(label for label, _, _ in columns) + " |")
        print("|---|---|" + "---|" * len(columns))
        for e in evaluations:
            cells = [spec.format(e[tag]) if tag in e else "-" for _, tag, spec in columns]
            print(f"| {e['env_step']} | {e['minutes']:.0f} | " + " | ".join(cells) + " |")
        if all("eval/success_rate" in e for e in evaluations):
            sustained = first_sustained(evaluations)
            print("\nfirst of three consecutive evaluations at >= 90% success: " + (
                f"env step {sustained['env_step']}, {sustained['minutes']:.0f} min" if sustained else "none"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
