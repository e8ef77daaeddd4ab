"""Times `Checkpointer` save and restore of a default-size train state plus a replay buffer of incompressible frames.

    python scripts/bench_checkpoint.py --replay-mb 100 --json checkpoint_bench.json
    python scripts/bench_checkpoint.py --replay-mb 100 --without-checksums   # the cost of checksums, by difference

Prints a table, optionally writes JSON. Host-side I/O. Results: docs/checkpoints.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from unittest import mock

import jax
import numpy as np
import orbax.checkpoint as ocp

from td3_jax.checkpoint import integrity as checkpoint_integrity
from td3_jax.checkpoint.store import Checkpointer
from td3_jax.core.hparams import TD3Config
from td3_jax.core.td3 import init_state
from td3_jax.replay.buffer import ReplayBuffer


def main(argv: list[str] | None = None) -> dict:
    """Runs the benchmark; returns the results it prints."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replay-mb", type=float, default=100.0, help="replay buffer size in MB")
    parser.add_argument("--repeats", type=int, default=3, help="timed save/restore pairs (median reported)")
    parser.add_argument("--dir", default=None, help="where to write (default: a temporary directory)")
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--without-checksums", action="store_true",
                        help="skip writing and verifying the checksum manifest (to measure what it costs)")
    args = parser.parse_args(argv)
    if args.without_checksums:
        with (mock.patch.object(checkpoint_integrity, "write_manifest"),
              mock.patch.object(checkpoint_integrity, "verify", return_value=True)):
            return _run(args)
    return _run(args)


def _run(args: argparse.Namespace) -> dict:
    """Saves and restores `args.repeats` times; returns the timings and sizes."""
    capacity = int(args.replay_mb * 1e6 / ReplayBuffer.estimate_bytes(1, vector_dim=53))
    buffer = ReplayBuffer(capacity, vector_dim=53)
    rng = np.random.default_rng(0)
    replay_state = buffer.state_dict()
    for value in replay_state.values():
        if isinstance(value, np.ndarray) and value.size > 1000:
            high = 2 if value.dtype == np.bool_ else 256  # stored bools must be 0 or 1
            value.view(np.uint8)[...] = rng.integers(0, high, value.view(np.uint8).shape, dtype=np.uint8)
    abstract = jax.eval_shape(lambda key: init_state(TD3Config(), key), jax.random.key(0))
    state = jax.tree.map(lambda leaf: jax.numpy.ones(leaf.shape, leaf.dtype), abstract)

    def nbytes(tree) -> int:
        return sum(np.asarray(leaf).nbytes for leaf in jax.tree.leaves(tree) if hasattr(leaf, "nbytes"))

    timings: dict[str, list[float]] = {"save": [], "restore": [], "restore_without_replay": []}
    with tempfile.TemporaryDirectory(dir=args.dir) as root, Checkpointer(root, max_to_keep=1) as checkpointer:
        for step in range(args.repeats):
            start = time.perf_counter()
            checkpointer.save(step, train_state=state, host_state={}, config={}, replay_state=replay_state)
            timings["save"].append(time.perf_counter() - start)
            for name, with_replay in (("restore", True), ("restore_without_replay", False)):
                start = time.perf_counter()
                restored = checkpointer.restore(abstract_train_state=abstract, with_replay=with_replay)
                jax.block_until_ready(restored.train_state)
                timings[name].append(time.perf_counter() - start)
    results = {
        "train_state_mb": nbytes(state) / 1e6,
        "replay_mb": nbytes(replay_state) / 1e6,
        "seconds_median": {name: float(np.median(values)) for name, values in timings.items()},
        "seconds_all": timings,
        "checksums": not args.without_checksums,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "orbax": ocp.__version__},
    }
    print(f"train state {results['train_state_mb']:.1f} MB, replay {results['replay_mb']:.1f} MB, "
          f"{args.repeats} repeats, checksums {'off' if args.without_checksums else 'on'}, median seconds:")
    print(f"{'operation':<24}{'seconds':>9}{'MB/s':>9}")
    for name, seconds in results["seconds_median"].items():
        with_replay = name != "restore_without_replay"
        megabytes = results["train_state_mb"] + (results["replay_mb"] if with_replay else 0)
        print(f"{name:<24}{seconds:>9.2f}{megabytes / seconds:>9.0f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
