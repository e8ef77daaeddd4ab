#!/usr/bin/env python3
"""The original system's command line, on top of `td3-jax train`.

    python scripts/train_td3.py --scenario 0 --max-timesteps 5000 --eval-freq 2500

Flags keep the original's names and meaning (scripts/train_td3.py of the PyTorch
system); each maps to a config key, and `--set` reaches any other key. The
default config trains on the embedded simulator; pass
`--config configs/td3_carla.yaml` for CARLA.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "configs" / "td3_lanesim.yaml"), help="YAML run config")
    parser.add_argument("--scenario", type=int, default=None, choices=(0, 1, 2), help="traffic: 0 light, 1 medium, 2 heavy")
    parser.add_argument("--seed", type=int, default=None, help="training and env seed")
    parser.add_argument("--max-timesteps", type=int, default=None, help="training.max_timesteps")
    parser.add_argument("--eval-freq", type=int, default=None, help="training.eval_freq")
    parser.add_argument("--checkpoint-freq", type=int, default=None, help="training.checkpoint_freq")
    parser.add_argument("--num-eval-episodes", type=int, default=None, help="training.num_eval_episodes")
    parser.add_argument("--log-dir", default="runs", help="parent of the run directory (TensorBoard, results)")
    parser.add_argument("--checkpoint-dir", default=None, help="parent of the run's checkpoint directory")
    parser.add_argument("--device", choices=("cpu", "cuda", "auto"), default="auto", help="where JAX runs")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any other config key")
    args = parser.parse_args(argv)

    if args.device != "auto":  # must be set before JAX initialises its backends
        os.environ["JAX_PLATFORMS"] = args.device
    from td3_jax.errors import UserError
    from td3_jax.training import config as config_lib
    from td3_jax.training import train

    sets = list(args.set)
    for flag, key in (
        ("max_timesteps", "training.max_timesteps"),
        ("eval_freq", "training.eval_freq"),
        ("checkpoint_freq", "training.checkpoint_freq"),
        ("num_eval_episodes", "training.num_eval_episodes"),
    ):
        if getattr(args, flag) is not None:
            sets.append(f"{key}={getattr(args, flag)}")
    train_args = argparse.Namespace(
        config=args.config, set=sets, run_dir=None, resume=None, seed=args.seed, scenario=args.scenario
    )
    try:
        run_config, _ = config_lib.load(args.config, train.overrides_from_args(train_args))
        run_dir = train.default_run_dir(run_config, args.log_dir)
        train_args.run_dir = str(run_dir)
        checkpoint_dir = Path(args.checkpoint_dir) / run_dir.name if args.checkpoint_dir else None
        return train.run(train_args, checkpoint_dir=checkpoint_dir)
    except UserError as error:
        print(f"train_td3.py: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    from td3_jax.cli import relaunch_with_huge_pages

    relaunch_with_huge_pages()  # as `td3-jax` does (docs/benchmarks.md)
    sys.exit(main())
