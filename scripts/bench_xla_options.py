"""Does an XLA:CPU compiler option make the TD3 update faster? An A/B inside one process.

Compiles `td3.update` once per set of compiler options (`Lowered.compile(compiler_options=...)`, the
same options `XLA_FLAGS` sets, here per compile), checks that each compiled update gives the same
losses as the default on the same state and batch, then times the variants interleaved in rounds
and reports each one's median per-round speed-up against the default, as `td3-jax bench` does. For
each it also says whether the optimised HLO differs from the default's at all, and counts its
library fusions (YNNPACK, XNNPACK, oneDNN). Prints a table and writes JSON.

Usage:
  python scripts/bench_xla_options.py [--batch 256] [--rounds 6] [--shared] [--json xla_options.json]
"""

from __future__ import annotations

import argparse
import collections
import json
import platform
import re
import statistics
import time

import jax
import numpy as np

from td3_jax.bench.bench import IMAGE_SHAPE, VECTOR_DIM, random_batch
from td3_jax.core import td3
from td3_jax.core.hparams import NetworkConfig, TD3Config

VARIANTS: dict[str, dict[str, object]] = {
    "default": {},
    "onednn": {"xla_cpu_use_onednn": True},
    "onednn_dot_fusion": {"xla_cpu_experimental_onednn_fusion_type": "LIBRARY_FUSION_TYPE_DOT"},
    "xnnpack_dot_fusion": {"xla_cpu_experimental_xnn_fusion_type": "LIBRARY_FUSION_TYPE_DOT"},
    "ynnpack_dot_fusion_only": {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_DOT"},
    "xnnpack_graph_greedy": {"xla_cpu_experimental_xnn_graph_fusion_mode": "XNN_GRAPH_FUSION_MODE_GREEDY"},
}
"""Name -> XLA:CPU debug options; "default" is what `td3-jax` compiles."""


def library_fusions(hlo_text: str) -> dict[str, int]:
    """How many custom fusions of each kind (`__ynn_fusion`, ...) a compiled program holds."""
    return dict(collections.Counter(re.findall(r'"kind":"(__\w+_fusion)"', hlo_text)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=6, help="timing rounds; each times 3 updates per variant")
    parser.add_argument("--shared", action="store_true", help="the shared encoder (networks.cnn.shared) instead of two")
    parser.add_argument("--json", default="xla_options.json")
    args = parser.parse_args()

    config = TD3Config(network=NetworkConfig(shared_encoder=args.shared))
    initial = td3.init_state(config, jax.random.key(0), image_shape=IMAGE_SHAPE, vector_dim=VECTOR_DIM)
    batch = jax.device_put(random_batch(args.batch))
    lowered = td3.update.lower(initial, batch)
    compiled, states, fusions, programs, refused = {}, {}, {}, {}, {}
    reference = None
    for name, options in VARIANTS.items():
        try:
            compiled[name] = lowered.compile(compiler_options=options)
        except Exception as error:  # an option this jaxlib does not know: say so, time the rest
            refused[name] = str(error).splitlines()[0]
            continue
        text = compiled[name].as_text()
        fusions[name] = library_fusions(text)
        programs[name] = text
        state, first = compiled[name](initial, batch)
        state, second = compiled[name](state, batch)  # its loss depends on what the first update changed
        losses = np.array([float(first["train/critic_loss"]), float(second["train/critic_loss"]),
                           float(first["train/actor_loss"])])
        if reference is None:
            reference = losses
        elif not np.allclose(losses, reference, rtol=1e-3, atol=1e-5):
            raise SystemExit(f"{name}: losses {losses} differ from the default's {reference}")
        states[name] = jax.block_until_ready(state)
    seconds: dict[str, list[float]] = {name: [] for name in compiled}
    for _ in range(args.rounds):
        for name, update in compiled.items():
            start = time.perf_counter()
            for _ in range(3):
                states[name], _ = update(states[name], batch)
            jax.block_until_ready(states[name])
            seconds[name].append((time.perf_counter() - start) / 3)

    results = {}
    print(f"batch {args.batch}, {'shared encoder' if args.shared else 'separate encoders'}, {args.rounds} rounds")
    print(f"{'variant':26s} {'ms / update':>11s} {'speed-up':>9s} {'range':>13s}  {'HLO':9s}  library fusions")
    for name, times in seconds.items():
        ratios = [base / mine for base, mine in zip(seconds["default"], times)]
        results[name] = {"options": {k: str(v) for k, v in VARIANTS[name].items()},
                         "ms_per_update": statistics.median(times) * 1e3,
                         "speedup_vs_default": statistics.median(ratios),
                         "speedup_range": [min(ratios), max(ratios)], "library_fusions": fusions[name],
                         "same_program_as_default": programs[name] == programs["default"]}
        same = "same" if results[name]["same_program_as_default"] else "changed"
        print(f"{name:26s} {results[name]['ms_per_update']:11.1f} {statistics.median(ratios):9.3f} "
              f"{min(ratios):6.3f}-{max(ratios):.3f}  {same:9s}  {fusions[name]}")
    for name, why in refused.items():
        print(f"{name:26s} refused by this jaxlib: {why}")
    with open(args.json, "w") as out:
        json.dump({"batch_size": args.batch, "shared_encoder": args.shared, "rounds": args.rounds,
                   "jax": jax.__version__, "machine": platform.processor() or platform.machine(),
                   "variants": results, "refused": refused}, out, indent=2)


if __name__ == "__main__":
    main()
