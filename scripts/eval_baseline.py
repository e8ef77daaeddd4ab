"""Metrics of the pure-pursuit + PID baseline on the embedded simulator.

Drives `--episodes` episodes per scenario (episode seeds 0, 1, ...) through the
ordinary env interface and reports success rate (route completed without
collision), collisions, lane invasions, lateral RMSE, mean speed, return and
episode length. Prints a table and writes JSON.

Usage:
  python scripts/eval_baseline.py [--episodes 100] [--scenarios 0 1 2] [--out baseline_eval.json]
"""

from __future__ import annotations

import argparse
import collections
import json

import numpy as np

from td3_jax.envs.config import LaneSimConfig
from td3_jax.envs.lanesim.baseline import BaselineController, for_lanesim, run_episode
from td3_jax.envs.lanesim.sim import LaneSimEnv

METRICS = ("success", "collision", "lane_invasions", "lateral_rmse_m", "mean_speed_mps", "return", "length")


def evaluate(scenario: int, episodes: int) -> dict:
    cfg = LaneSimConfig(scenario=scenario)
    env = LaneSimEnv(cfg)
    controller = BaselineController(for_lanesim(cfg))
    results = [run_episode(env, controller, seed=seed) for seed in range(episodes)]
    summary = {name: float(np.mean([r[name] for r in results])) for name in METRICS}
    summary["return_std"] = float(np.std([r["return"] for r in results]))
    summary["termination_reasons"] = dict(collections.Counter(r["termination_reason"] for r in results))
    return {"scenario": scenario, "episodes": episodes, "npcs": env.core.num_npcs, "summary": summary,
            "per_episode": results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--scenarios", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default="baseline_eval.json", help="JSON file written with the results")
    args = parser.parse_args()
    rows = [evaluate(scenario, args.episodes) for scenario in args.scenarios]
    print(f"{'scenario':>8}{'npcs':>6}{'success':>9}{'collis.':>9}{'invas.':>8}{'lat RMSE':>10}"
          f"{'speed':>8}{'return':>9}{'length':>8}  reasons")
    for row in rows:
        s = row["summary"]
        print(f"{row['scenario']:>8}{row['npcs']:>6}{s['success']:>9.2f}{s['collision']:>9.2f}"
              f"{s['lane_invasions']:>8.2f}{s['lateral_rmse_m']:>10.3f}{s['mean_speed_mps']:>8.2f}"
              f"{s['return']:>9.0f}{s['length']:>8.0f}  {s['termination_reasons']}")
    with open(args.out, "w") as f:
        json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
