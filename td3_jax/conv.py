"""2-D convolution for the encoder, with a backend-chosen implementation.

"xla" is `lax.conv_general_dilated` (cuDNN on GPU). "auto" picks per backend.
All implementations take NHWC inputs and HWIO kernels with VALID padding.
"""

from __future__ import annotations

import jax
from jax import lax


def resolve_impl(impl: str) -> str:
    """The concrete implementation for `impl` on the current default backend."""
    if impl == "auto":
        return "xla"
    if impl not in ("xla",):
        raise ValueError(f"unknown conv_impl {impl!r}; use 'auto' or 'xla'")
    return impl


def conv2d(x: jax.Array, kernel: jax.Array, stride: int, impl: str = "auto") -> jax.Array:
    """VALID convolution of x (B, H, W, C) with kernel (k, k, C, F) at `stride`."""
    resolve_impl(impl)
    return lax.conv_general_dilated(
        x, kernel, (stride, stride), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
