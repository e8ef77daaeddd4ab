"""Shared types of td3_jax: batches, params, metrics.

Images are uint8 NHWC frame stacks, oldest frame first along the last axis:
``(B, 84, 84, stack)``. They stay uint8 until they reach the device; the
networks scale them.
"""

from __future__ import annotations

from typing import Any, Mapping, NamedTuple

import jax
import jax.numpy as jnp

Params = Any  # A Flax parameter pytree (nested dicts of arrays).
Metrics = Mapping[str, jax.Array]
PRNGKey = jax.Array


class Batch(NamedTuple):
    """One minibatch of transitions, as the losses consume it.

    Attributes:
      image: (B, H, W, S) uint8 frame stack of the observation.
      vector: (B, V) float32 vector state of the observation.
      action: (B, A) float32 action taken, in [-1, 1].
      reward: (B,) float32 reward, or (B, C) its C components for a critic with
        per-component heads (`NetworkConfig.critic_reward_components`).
      next_image: (B, H, W, S) uint8 frame stack of the next observation.
      next_vector: (B, V) float32 vector state of the next observation.
      terminated: (B,) float32, 1.0 where the episode terminated (no bootstrap).
        A time-limit truncation is 0.0 here: the target bootstraps through it.
      discount: None for one-step transitions (the target uses the config's
        discount), or (B,) float32 gamma^k for k-step transitions, whose
        `reward` is the discounted sum of k rewards and whose `next_*` is the
        observation k steps later (`ReplayBuffer.sample(..., n_step=n)`).
    """

    image: jax.Array
    vector: jax.Array
    action: jax.Array
    reward: jax.Array
    next_image: jax.Array
    next_vector: jax.Array
    terminated: jax.Array
    discount: jax.Array | None = None


class PackedBatch(NamedTuple):
    """A batch whose frames travel frames-first, as the replay ring stores them, and unpack on the device.

    The ring holds one (H, W) frame per slot, so a stack's frames are whole rows
    of it: gathered frames-first they are one contiguous (B, S+1, H, W) block
    that the host copies once (and XLA's CPU client takes without a copy, see
    `ReplayBuffer.gather`), where NHWC would need a transposing copy per batch.
    `unpack` moves the frame axis last on the device.

    One-step transitions share S of their two stacks' frames: `frames` is the
    window of S+1, ``frames[:, :S]`` the observation and ``frames[:, 1:]`` the
    next observation (5 frames move instead of 8), and `next_frames` is None.
    An n-step transition's next observation is k steps later: `frames` is the
    observation's S frames and `next_frames` the next observation's.

    Attributes:
      frames: (B, S+1, H, W) uint8, or (B, S, H, W) with `next_frames`; oldest frame first.
      vector, action, reward, next_vector, terminated, discount: as in `Batch`.
      next_frames: None, or (B, S, H, W) uint8 frames of the next observation.
    """

    frames: jax.Array
    vector: jax.Array
    action: jax.Array
    reward: jax.Array
    next_vector: jax.Array
    terminated: jax.Array
    next_frames: jax.Array | None = None
    discount: jax.Array | None = None


def unpack(batch: Batch | PackedBatch) -> Batch:
    """Returns a `Batch`: a `PackedBatch`'s frames split into the two stacks and moved to NHWC."""
    if isinstance(batch, Batch):
        return batch
    if batch.next_frames is None:
        image, next_image = batch.frames[:, :-1], batch.frames[:, 1:]
    else:
        image, next_image = batch.frames, batch.next_frames
    return Batch(
        image=jnp.moveaxis(image, 1, -1),
        vector=batch.vector,
        action=batch.action,
        reward=batch.reward,
        next_image=jnp.moveaxis(next_image, 1, -1),
        next_vector=batch.next_vector,
        terminated=batch.terminated,
        discount=batch.discount,
    )
