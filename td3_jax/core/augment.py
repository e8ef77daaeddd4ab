"""Random-shift image augmentation (DrQ), inside the jitted update.

Kostrikov, Yarats, Fergus, "Image Augmentation Is All You Need: Regularizing
Deep Reinforcement Learning from Pixels", ICLR 2021 (arXiv 2004.13649): pad
each frame stack by `pad` pixels, repeating its edge, and crop it back to its
size at an offset drawn uniformly from [0, 2 * pad] in each axis. A critic
trained on shifted copies cannot key its value on exact pixel positions,
which is what lets pixel-based actor-critics learn from a small replay buffer.
All frames of one stack share one shift; s and s' of a transition are shifted
independently, as in DrQ.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from td3_jax.core.types import Batch


def random_shift(key: jax.Array, images: jax.Array, pad: int) -> jax.Array:
    """Each (H, W, C) image of `images` (B, H, W, C) shifted by up to `pad` pixels per axis.

    Returns an array of the same shape and dtype; pad 0 returns `images`.
    """
    if pad == 0:
        return images
    batch, height, width, channels = images.shape
    padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="edge")
    offsets = jax.random.randint(key, (batch, 2), 0, 2 * pad + 1)

    def crop(image, offset):
        return jax.lax.dynamic_slice(image, (offset[0], offset[1], 0), (height, width, channels))

    return jax.vmap(crop)(padded, offsets)


def shift_batch(key: jax.Array, batch: Batch, pad: int) -> Batch:
    """`batch` with its observation and next-observation stacks shifted independently."""
    image_key, next_image_key = jax.random.split(key)
    return batch._replace(
        image=random_shift(image_key, batch.image, pad),
        next_image=random_shift(next_image_key, batch.next_image, pad),
    )
