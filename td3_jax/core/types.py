"""Shared types of td3_jax: batches, params, metrics.

Images are uint8 NHWC frame stacks, oldest frame first along the last axis:
``(B, 84, 84, stack)``. They stay uint8 until they reach the device; the
networks scale them.
"""

from __future__ import annotations

from typing import Any, Mapping, NamedTuple

import jax

Params = Any  # A Flax parameter pytree (nested dicts of arrays).
Metrics = Mapping[str, jax.Array]
PRNGKey = jax.Array


class Batch(NamedTuple):
    """One minibatch of transitions, as the losses consume it.

    Attributes:
      image: (B, H, W, S) uint8 frame stack of the observation.
      vector: (B, V) float32 vector state of the observation.
      action: (B, A) float32 action taken, in [-1, 1].
      reward: (B,) float32 reward.
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
    """A batch of one-step transitions whose two frame stacks travel as one window of S+1 frames.

    Within an episode the next observation's stack is the observation's stack
    shifted by one frame, so ``frames[..., :S]`` is the observation and
    ``frames[..., 1:]`` the next observation. The replay buffer sends this form:
    5 frames per sample instead of 8. ``unpack`` splits it on the device.

    Attributes:
      frames: (B, H, W, S+1) uint8.
      vector, action, reward, next_vector, terminated: as in `Batch`.
    """

    frames: jax.Array
    vector: jax.Array
    action: jax.Array
    reward: jax.Array
    next_vector: jax.Array
    terminated: jax.Array


def unpack(batch: Batch | PackedBatch) -> Batch:
    """Returns a `Batch`; splits a `PackedBatch` window into its two stacks."""
    if isinstance(batch, Batch):
        return batch
    return Batch(
        image=batch.frames[..., :-1],
        vector=batch.vector,
        action=batch.action,
        reward=batch.reward,
        next_image=batch.frames[..., 1:],
        next_vector=batch.next_vector,
        terminated=batch.terminated,
    )
