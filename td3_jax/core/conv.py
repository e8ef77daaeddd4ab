"""2-D convolution for the encoder, with a backend-chosen implementation.

All implementations take NHWC inputs and HWIO kernels with VALID padding and
compute the same function (equal to float32 rounding).

- "xla": `lax.conv_general_dilated` (cuDNN on GPU).
- "matmul": the convolution as space-to-depth + one matrix product + cheap
  slicing, for the CPU. XLA's CPU convolutions are slow in the forward pass,
  slower in the backward pass, and one to two orders of magnitude slower again
  inside `lax.cond` bodies (measured at batch 256: the gradient of the
  Nature-CNN's first layer took 0.3 s plainly and 4.6 s inside a `cond`);
  dense matrix products do not have this problem, and their gradients are
  matrix products again.
- "auto": "matmul" on the CPU, "xla" on every other backend.

The "matmul" path. With kernel size k and stride s, pad the kernel with zeros
to k' = s * ceil(k / s) (a no-op for the Nature CNN) and fold each s x s block
of pixels into the channels (space-to-depth). The strided k x k convolution
becomes a stride-1 convolution with a kb x kb kernel, kb = k' / s, over
s*s*C channels. That small convolution is then either
  - "shift": one product of every pixel with all kb*kb kernel taps at once,
    (N, D) @ (D, kb*kb*F), followed by a sum of kb*kb shifted slices; or
  - "im2col": the kb*kb shifted slices concatenated on the channel axis,
    then one (N, kb*kb*D) @ (kb*kb*D, F) product,
whichever has the smaller intermediate array (on the full TD3 update the two
were within 3% of each other for layers 1 and 2; see docs/benchmarks.md). For
the Nature CNN at 84x84: layers 1 (8x8/4) and 2 (4x4/2) use "shift", layer 3
(3x3/1) uses "im2col".

Batches larger than `BATCH_CHUNK` (and divisible by it) are convolved in
chunks of `BATCH_CHUNK` samples under `lax.map`. The result is the same up to
float32 summation order (the kernel gradient is summed per chunk). XLA then
holds the large intermediates (the "shift" product, its pad-and-add backward)
for one chunk at a time, and it allocates its temporary arena afresh, with
fresh pages to fault in, on every call. Measured on the TD3 update at batch
256: the arena fell from 301 to 233 MB, and the update ran 1.04x as fast
(median of 10 interleaved rounds on a loaded 2-core machine; see
docs/benchmarks.md).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

IMPLS = ("auto", "xla", "matmul")
BATCH_CHUNK = 32  # samples per lax.map step of the "matmul" path


def resolve_impl(impl: str, backend: str | None = None) -> str:
    """The concrete implementation ("xla" or "matmul") for `impl` on `backend`.

    Args:
      impl: one of `IMPLS`.
      backend: a JAX platform name; None means `jax.default_backend()`.
    """
    if impl not in IMPLS:
        raise ValueError(f"unknown conv_impl {impl!r}; use one of {', '.join(IMPLS)}")
    if impl != "auto":
        return impl
    backend = jax.default_backend() if backend is None else backend
    return "matmul" if backend == "cpu" else "xla"


def conv2d(x: jax.Array, kernel: jax.Array, stride: int, impl: str = "auto") -> jax.Array:
    """VALID convolution, no bias.

    Args:
      x: (B, H, W, C) float input.
      kernel: (k, k, C, F) HWIO kernel.
      stride: the stride along both spatial axes.
      impl: "auto", "xla" or "matmul" (see the module docstring).

    Returns:
      (B, (H - k) // stride + 1, (W - k) // stride + 1, F), x's dtype.
    """
    if resolve_impl(impl) == "xla":
        return lax.conv_general_dilated(
            x, kernel, (stride, stride), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
    batch = x.shape[0]
    if batch > BATCH_CHUNK and batch % BATCH_CHUNK == 0:
        chunks = x.reshape(batch // BATCH_CHUNK, BATCH_CHUNK, *x.shape[1:])
        out = lax.map(lambda chunk: _conv2d_matmul(chunk, kernel, stride), chunks)
        return out.reshape(batch, *out.shape[2:])
    return _conv2d_matmul(x, kernel, stride)


def _space_to_depth(x: jax.Array, block: int, height: int, width: int) -> jax.Array:
    """(B, H, W, C) -> (B, height, width, block*block*C), channels ordered (dy, dx, c).

    Crops (or zero-pads) x to (height*block, width*block) first.
    """
    batch, rows, cols, channels = x.shape
    x = x[:, : height * block, : width * block]
    pad_rows, pad_cols = height * block - x.shape[1], width * block - x.shape[2]
    if pad_rows or pad_cols:
        x = jnp.pad(x, ((0, 0), (0, pad_rows), (0, pad_cols), (0, 0)))
    if block == 1:
        return x
    x = x.reshape(batch, height, block, width, block, channels)
    return x.transpose(0, 1, 3, 2, 4, 5).reshape(batch, height, width, block * block * channels)


def _blocked_kernel(kernel: jax.Array, stride: int) -> jax.Array:
    """(k, k, C, F) -> (kb, kb, s*s*C, F), matching `_space_to_depth`'s channel order."""
    size, _, channels, features = kernel.shape
    blocks = -(-size // stride)
    padded = blocks * stride
    if padded != size:
        kernel = jnp.pad(kernel, ((0, padded - size), (0, padded - size), (0, 0), (0, 0)))
    kernel = kernel.reshape(blocks, stride, blocks, stride, channels, features)
    return kernel.transpose(0, 2, 1, 3, 4, 5).reshape(blocks, blocks, stride * stride * channels, features)


def _conv2d_matmul(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
    size = kernel.shape[0]
    out_h = (x.shape[1] - size) // stride + 1
    out_w = (x.shape[2] - size) // stride + 1
    taps = _blocked_kernel(kernel, stride)  # (kb, kb, D, F)
    blocks, _, depth, features = taps.shape
    xs = _space_to_depth(x, stride, out_h + blocks - 1, out_w + blocks - 1)  # (B, Hs, Ws, D)
    batch, rows, cols, _ = xs.shape
    offsets = [(i, j) for i in range(blocks) for j in range(blocks)]
    if rows * cols * features <= out_h * out_w * depth:  # "shift"
        all_taps = taps.reshape(blocks * blocks, depth, features).transpose(1, 0, 2)
        z = (xs.reshape(-1, depth) @ all_taps.reshape(depth, -1)).reshape(batch, rows, cols, blocks * blocks, features)
        out = z[:, :out_h, :out_w, 0]
        for tap, (i, j) in enumerate(offsets[1:], start=1):
            out = out + z[:, i : i + out_h, j : j + out_w, tap]
        return out
    patches = jnp.concatenate([xs[:, i : i + out_h, j : j + out_w] for i, j in offsets], axis=-1)
    out = patches.reshape(-1, blocks * blocks * depth) @ taps.reshape(-1, features)
    return out.reshape(batch, out_h, out_w, features)
