#!/usr/bin/env python3
"""Plots a run's evaluation curve and training returns to a PNG, and prints the eval table.

    python scripts/plot_run.py RUN_DIR --out docs/figures/run.png [--baseline baseline.json]

Reads RUN_DIR/results.json, which `td3-jax train` writes when a run finishes,
or the eval/* tags of the run's event files when it has not finished. `--baseline` adds the baseline controller's success rate and
lateral RMSE as horizontal lines (the JSON of scripts/eval_baseline.py).
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


def read_evaluations(run_dir: Path) -> list[dict]:
    """Evaluations from results.json, or from the event files of a run that did not finish."""
    if (run_dir / "results.json").is_file():
        return json.loads((run_dir / "results.json").read_text())["evaluations"]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    by_step: dict[int, dict] = {}
    for tag in events.Tags()["scalars"]:
        if tag.startswith("eval/"):
            for event in events.Scalars(tag):
                by_step.setdefault(event.step, {"env_step": event.step})[tag] = event.value
    return [by_step[step] for step in sorted(by_step)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--out", required=True)
    parser.add_argument("--baseline", default=None, help="JSON of scripts/eval_baseline.py")
    args = parser.parse_args(argv)
    evaluations = read_evaluations(Path(args.run_dir))
    if not evaluations:
        print(f"{args.run_dir}: no evaluations in results.json", file=sys.stderr)
        return 2
    steps = np.array([e["env_step"] for e in evaluations])
    baseline = None
    if args.baseline:
        baseline = json.loads(Path(args.baseline).read_text())

    fig, axes = plt.subplots(1, 4, figsize=(17, 3.6))
    axes[0].plot(steps, [e["eval/mean_reward"] for e in evaluations], marker="o")
    axes[0].set_title("eval return (deterministic)")
    axes[1].plot(steps, [e["eval/success_rate"] for e in evaluations], marker="o", label="TD3")
    axes[1].set_ylim(-0.05, 1.05)
    axes[1].set_title("eval success rate")
    axes[2].plot(steps, [e["eval/lateral_rmse_m"] for e in evaluations], marker="o", label="TD3")
    axes[2].set_title("eval lateral RMSE (m)")
    axes[3].plot(steps, [e["eval/avg_distance_m"] for e in evaluations], marker="o")
    axes[3].set_title("eval distance per episode (m)")
    if baseline is not None:
        metrics = baseline.get("metrics", baseline)
        axes[1].axhline(metrics["eval/success_rate"], color="gray", ls="--", label="baseline")
        axes[2].axhline(metrics["eval/lateral_rmse_m"], color="gray", ls="--", label="baseline")
        axes[1].legend()
        axes[2].legend()
    for ax in axes:
        ax.set_xlabel("env step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print("| env step | return | success | lateral RMSE (m) | distance (m) | episode length |")
    print("|---|---|---|---|---|---|")
    for e in evaluations:
        print(
            f"| {e['env_step']} | {e['eval/mean_reward']:.1f} | {e['eval/success_rate']:.2f} | "
            f"{e['eval/lateral_rmse_m']:.3f} | {e['eval/avg_distance_m']:.1f} | {e['eval/avg_episode_length']:.0f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
