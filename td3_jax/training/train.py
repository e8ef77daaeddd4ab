"""`td3-jax train`: builds the run's config and directory and hands them to the `Trainer`."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from td3_jax.errors import UserError, ensure_writable_dir
from td3_jax.training import config as config_lib
from td3_jax.training import parallel
from td3_jax.training.trainer import Trainer


def default_run_dir(run: config_lib.RunConfig, root: str | Path = "runs") -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    backend = run.env.backend.replace(":", "-").replace("/", "-")
    return Path(root) / f"TD3_{backend}_scenario_{run.env.lanesim.scenario}_{stamp}"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=None, help="YAML config (see configs/); default: built-in defaults")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set algorithm.batch_size=64 (repeatable)")
    parser.add_argument("--run-dir", default=None, help="run directory (default: runs/TD3_<backend>_<time>)")
    parser.add_argument("--resume", default=None, metavar="RUN_DIR", help="continue the run in RUN_DIR exactly")
    parser.add_argument("--seed", type=int, default=None, help="sets training.seed and env.seed")
    parser.add_argument("--scenario", type=int, default=None, help="traffic scenario 0/1/2 (lanesim and carla)")


def overrides_from_args(args: argparse.Namespace) -> list[str]:
    """The `--set` assignments implied by the convenience flags, then the explicit ones."""
    sets = []
    if args.seed is not None:
        sets += [f"training.seed={args.seed}", f"env.seed={args.seed}"]
    if args.scenario is not None:
        sets += [f"env.lanesim.scenario={args.scenario}", f"env.carla.scenario={args.scenario}"]
    return sets + list(args.set)


def run(args: argparse.Namespace, *, checkpoint_dir: Path | None = None) -> int:
    if args.resume:
        run_dir = Path(args.resume)
        if not (run_dir / "config.yaml").is_file():
            raise UserError(f"{run_dir} is not a td3_jax run directory (no config.yaml); pass the directory of a run")
        if args.config:
            raise UserError("--resume takes the run's own config.yaml; drop --config (use --set to extend the run)")
        run_config, _ = config_lib.load(run_dir / "config.yaml", overrides_from_args(args))
    else:
        run_config, _ = config_lib.load(args.config, overrides_from_args(args))
        run_dir = Path(args.run_dir) if args.run_dir else default_run_dir(run_config)
        if (run_dir / "config.yaml").exists():
            raise UserError(f"{run_dir} already holds a run; continue it with --resume {run_dir} or pick another --run-dir")
    ensure_writable_dir(run_dir, "--resume" if args.resume else "--run-dir")
    if run_config.env.backend == "carla":
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    if run_config.training.distributed:
        parallel.initialize_distributed()
    return Trainer(run_config, run_dir, checkpoint_dir=checkpoint_dir).train(resume=bool(args.resume))
