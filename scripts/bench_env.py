"""Steps per second of the embedded simulator, rendering included.

Measures the single gymnasium env (`LaneSimEnv`) and the vectorised one
(`LaneSimVec`) at several sizes, with a fixed pseudo-random action sequence
that keeps the car moving (episodes end and autoreset as they would in
training; resets are part of the timing). Reports wall-clock steps/s and
steps per CPU-second of this process (the latter is less sensitive to other
processes sharing the cores), plus the load average. Prints a table and writes
JSON.

Usage:
  python scripts/bench_env.py [--steps 3000] [--num-envs 1 4 16 64] [--scenario 0] [--out bench_env.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np

from td3_jax.envs.config import LaneSimConfig
from td3_jax.envs.lanesim.sim import LaneSimEnv, LaneSimVec


def actions(rng: np.random.Generator, count: int, num_envs: int) -> np.ndarray:
    """Mild steering noise and mostly throttle: episodes last tens to hundreds of steps."""
    steer = rng.normal(0.0, 0.15, (count, num_envs))
    throttle = rng.uniform(-0.2, 1.0, (count, num_envs))
    return np.stack([steer, throttle], axis=-1).astype(np.float32)


def bench_single(cfg: LaneSimConfig, steps: int, seed: int) -> dict:
    env = LaneSimEnv(cfg, seed=seed)
    env.reset()
    plan = actions(np.random.default_rng(seed), steps, 1)[:, 0]
    episodes = 0
    start, cpu_start = time.perf_counter(), time.process_time()
    for action in plan:
        _, _, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            env.reset()
            episodes += 1
    return _row("LaneSimEnv", 1, steps, episodes, start, cpu_start)


def bench_vec(cfg: LaneSimConfig, num_envs: int, steps: int, seed: int) -> dict:
    env = LaneSimVec(num_envs, cfg, seed=seed)
    env.reset()
    calls = max(steps // num_envs, 1)
    plan = actions(np.random.default_rng(seed), calls, num_envs)
    episodes = 0
    start, cpu_start = time.perf_counter(), time.process_time()
    for action in plan:
        _, _, terminated, truncated, _ = env.step(action)
        episodes += int(np.sum(terminated | truncated))
    return _row("LaneSimVec", num_envs, calls * num_envs, episodes, start, cpu_start)


def _row(name: str, num_envs: int, steps: int, episodes: int, start: float, cpu_start: float) -> dict:
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    return {"env": name, "num_envs": num_envs, "steps": steps, "episodes": episodes, "wall_s": wall,
            "cpu_s": cpu, "steps_per_s": steps / wall, "steps_per_cpu_s": steps / cpu}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3000, help="env steps per measurement (all envs together)")
    parser.add_argument("--num-envs", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--scenario", type=int, default=0, choices=(0, 1, 2))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="bench_env.json", help="JSON file written with the results")
    args = parser.parse_args()
    cfg = LaneSimConfig(scenario=args.scenario)
    rows = [bench_single(cfg, args.steps, args.seed)]
    rows += [bench_vec(cfg, n, args.steps, args.seed) for n in args.num_envs]
    load = os.getloadavg()[0]
    print(f"scenario {args.scenario} ({cfg.num_npcs()} NPCs), {os.cpu_count()} CPUs "
          f"{platform.processor() or platform.machine()}, load average {load:.1f}")
    print(f"{'env':<12}{'num_envs':>9}{'steps':>8}{'episodes':>9}{'steps/s':>10}{'steps/cpu-s':>13}")
    for row in rows:
        print(f"{row['env']:<12}{row['num_envs']:>9}{row['steps']:>8}{row['episodes']:>9}"
              f"{row['steps_per_s']:>10.0f}{row['steps_per_cpu_s']:>13.0f}")
    with open(args.out, "w") as f:
        json.dump({"scenario": args.scenario, "num_npcs": cfg.num_npcs(), "cpus": os.cpu_count(),
                   "load_average": load, "results": rows}, f, indent=2)


if __name__ == "__main__":
    main()
