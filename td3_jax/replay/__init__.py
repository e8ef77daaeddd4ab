"""The host-side replay buffer (each frame stored once) and the feed that moves its batches to the device."""

from td3_jax.replay.buffer import ReplayBuffer
from td3_jax.replay.memory import ReplayMemoryError

__all__ = ["ReplayBuffer", "ReplayMemoryError"]
