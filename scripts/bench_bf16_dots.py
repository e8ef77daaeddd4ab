"""Which bfloat16 matrix products does XLA:CPU run faster than float32 ones? An A/B inside one process.

The bfloat16 encoders (`networks.cnn.compute_dtype: bfloat16`) make every product of the encoders a
bfloat16 one, forward and backward, and `td3-jax bench` finds the whole update slower than float32.
This times the encoder's four products at batch 256 (the "matmul" convolution path's products of
layers 1-3 and the dense layer, td3_jax/core/conv.py), each in the operand layouts the forward and
backward passes use (A B forward; A^T C for the kernel's gradient; C B^T for the input's gradient),
as float32, as bfloat16 with a bfloat16 result (what `a @ b` gives) and as bfloat16 with a float32
result (`preferred_element_type`). The variants run interleaved in rounds; each reports its median
per-round speed-up against float32 of the same product and layout. Prints a table and writes JSON.

Usage:
  python scripts/bench_bf16_dots.py [--rounds 5] [--json bf16_dots.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import jax
import jax.numpy as jnp

LAYOUTS = {
    "A B (forward)": lambda a, b, c, **kw: jnp.dot(a, b, **kw),
    "A^T C (kernel gradient)": lambda a, b, c, **kw: jnp.dot(a.T, c, **kw),
    "C B^T (input gradient)": lambda a, b, c, **kw: jnp.dot(c, b.T, **kw),
}
SHAPES = {  # (M, K, N) of A (M x K) @ B (K x N) at batch 256, 84 x 84 x 4 frames, the Nature CNN
    "conv 1 (8x8/4, shift)": (256 * 21 * 21, 4 * 4 * 4, 2 * 2 * 32),
    "conv 2 (4x4/2, shift)": (256 * 10 * 10, 2 * 2 * 32, 2 * 2 * 64),
    "conv 3 (3x3/1, im2col)": (256 * 7 * 7, 3 * 3 * 64, 64),
    "dense": (256, 7 * 7 * 64, 512),
}
PRECISIONS = {
    "float32": (jnp.float32, {}),
    "bfloat16 -> bfloat16": (jnp.bfloat16, {}),
    "bfloat16 -> float32": (jnp.bfloat16, {"preferred_element_type": jnp.float32}),
}


def _seconds(fn, *args) -> float:
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    compiled = {}
    for shape_name, (m, k, n) in SHAPES.items():
        keys = jax.random.split(jax.random.key(0), 3)
        base = [jax.random.normal(key, shape) for key, shape in zip(keys, ((m, k), (k, n), (m, n)))]
        for layout, product in LAYOUTS.items():
            for precision, (dtype, kwargs) in PRECISIONS.items():
                operands = [x.astype(dtype) for x in base]
                fn = jax.jit(lambda a, b, c, product=product, kwargs=kwargs: product(a, b, c, **kwargs))
                _seconds(fn, *operands)  # compile and warm up
                compiled[shape_name, layout, precision] = (fn, operands, 2 * m * k * n)
    times = {name: [] for name in compiled}
    for _ in range(args.rounds):
        for name, (fn, operands, _) in compiled.items():
            times[name].append(_seconds(fn, *operands))
    rows = []
    for (shape_name, layout, precision), seconds in times.items():
        reference = times[shape_name, layout, "float32"]
        rows.append({
            "product": shape_name, "shape": SHAPES[shape_name], "layout": layout, "precision": precision,
            "gflops": compiled[shape_name, layout, precision][2] / statistics.median(seconds) / 1e9,
            "speedup_vs_float32": statistics.median(r / s for r, s in zip(reference, seconds)),
        })
    print(f"{platform.processor() or platform.machine()}, jax {jax.__version__}, "
          f"median of {args.rounds} interleaved rounds")
    print("| product | layout | operands -> result | GFLOP/s | speed-up vs float32 |\n|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['product']} | {row['layout']} | {row['precision']} | {row['gflops']:.0f} "
              f"| {row['speedup_vs_float32']:.2f}x |")
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"rounds": args.rounds, "jax": jax.__version__, "rows": rows}, out, indent=2)


if __name__ == "__main__":
    main()
