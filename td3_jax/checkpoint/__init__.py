"""Durable, verified checkpoints of a run (orbax), and what a checkpoint must match to restore."""

from td3_jax.checkpoint.store import CheckpointError, Checkpointer, Restored, load_config

__all__ = ["CheckpointError", "Checkpointer", "Restored", "load_config"]
