"""Env steps per second of the embedded simulator: in-process vector vs. worker processes.

Rows:
  in-process  `make_vec_env`: one `LaneSimVec` of N cars in the training process.
  workers     `make_worker_vec_env`: W worker processes (gymnasium AsyncVectorEnv
              each), every worker a `LaneSimVec` of k cars, N = W * k.

Each measurement resets once (not timed; worker start-up is reported apart),
then times `calls` vector steps with a fixed pseudo-random action sequence that
keeps the cars moving, autoresets included. Wall-clock env steps per second;
worker CPU is not in this process's CPU time, so only wall time is compared.
Prints a table and writes JSON.

Usage:
  python scripts/bench_envs.py [--workers 1 2 4] [--per-worker 1 8] [--in-process 1 4 8 32]
                               [--steps 2000] [--scenario 0] [--out bench_envs.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np

from td3_jax.envs.config import EnvConfig, LaneSimConfig
from td3_jax.envs.workers import WorkersConfig, make_worker_vec_env


def actions(rng: np.random.Generator, count: int, num_envs: int) -> np.ndarray:
    """Mild steering noise and mostly throttle: episodes last tens to hundreds of steps."""
    steer = rng.normal(0.0, 0.15, (count, num_envs))
    throttle = rng.uniform(-0.2, 1.0, (count, num_envs))
    return np.stack([steer, throttle], axis=-1).astype(np.float32)


def measure(config: EnvConfig, workers: int, num_envs: int, steps: int, seed: int) -> dict:
    start = time.perf_counter()
    env = make_worker_vec_env(config, WorkersConfig(workers=workers), num_envs, seed=seed)
    env.reset(seed=seed)
    startup = time.perf_counter() - start
    calls = max(steps // num_envs, 50)
    plan = actions(np.random.default_rng(seed), calls, num_envs)
    episodes = 0
    try:
        start = time.perf_counter()
        for action in plan:
            _, _, terminated, truncated, _ = env.step(action)
            episodes += int(np.sum(terminated | truncated))
        elapsed = time.perf_counter() - start
    finally:
        env.close()
    return {
        "mode": "workers" if workers else "in-process",
        "workers": workers,
        "envs_per_worker": num_envs // workers if workers else num_envs,
        "num_envs": num_envs,
        "steps": calls * num_envs,
        "episodes": episodes,
        "startup_s": startup,
        "seconds": elapsed,
        "steps_per_s": calls * num_envs / elapsed,
        "step_call_ms": 1000.0 * elapsed / calls,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4], help="worker process counts W")
    parser.add_argument("--per-worker", type=int, nargs="+", default=[1, 8], help="cars per worker k")
    parser.add_argument("--in-process", type=int, nargs="+", default=[1, 4, 8, 32], help="in-process sizes N")
    parser.add_argument("--steps", type=int, default=2000, help="env steps per measurement (all envs together)")
    parser.add_argument("--scenario", type=int, default=0, choices=(0, 1, 2))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="bench_envs.json", help="JSON file written with the results")
    args = parser.parse_args()
    config = EnvConfig(lanesim=LaneSimConfig(scenario=args.scenario))
    rows = [measure(config, 0, n, args.steps, args.seed) for n in args.in_process]
    rows += [measure(config, w, w * k, args.steps, args.seed) for k in args.per_worker for w in args.workers]
    load = os.getloadavg()[0]
    print(f"scenario {args.scenario} ({config.lanesim.num_npcs()} NPCs), {os.cpu_count()} CPUs "
          f"{platform.processor() or platform.machine()}, load average {load:.1f}")
    print(f"{'mode':<11}{'workers':>8}{'cars/worker':>12}{'envs':>6}{'steps':>7}{'start s':>9}"
          f"{'steps/s':>9}{'ms/step call':>13}")
    for row in rows:
        print(f"{row['mode']:<11}{row['workers']:>8}{row['envs_per_worker']:>12}{row['num_envs']:>6}"
              f"{row['steps']:>7}{row['startup_s']:>9.1f}{row['steps_per_s']:>9.0f}{row['step_call_ms']:>13.2f}")
    with open(args.out, "w") as f:
        json.dump({"scenario": args.scenario, "num_npcs": config.lanesim.num_npcs(), "cpus": os.cpu_count(),
                   "load_average": load, "results": rows}, f, indent=2)


if __name__ == "__main__":
    main()
