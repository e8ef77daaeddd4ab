"""Shared fixtures: a tiny TD3 configuration and random batches.

The encoder's geometry is fixed by 84x84 frames, so tests shrink everything
else (feature width, heads, batch) to keep compile and run times small.
"""

from __future__ import annotations

import numpy as np
import pytest

from td3_jax.core.hparams import EncoderConfig, NetworkConfig, OptimizerConfig, TD3Config
from td3_jax.core.types import Batch

TINY_VECTOR_DIM = 5


def tiny_config(**overrides) -> TD3Config:
    network = NetworkConfig(
        encoder=EncoderConfig(features=16, layer_norm=True),
        actor_hidden=(8,),
        critic_hidden=(8,),
    )
    fields = dict(
        network=network,
        actor_optimizer=OptimizerConfig(max_grad_norm=1.0, cnn_lr=1e-3, mlp_lr=1e-3),
        critic_optimizer=OptimizerConfig(max_grad_norm=10.0, cnn_lr=1e-3, mlp_lr=1e-3),
    )
    fields.update(overrides)
    return TD3Config(**fields)


def random_batch(rng: np.random.Generator, batch_size: int = 4, vector_dim: int = TINY_VECTOR_DIM) -> Batch:
    return Batch(
        image=rng.integers(0, 256, (batch_size, 84, 84, 4), dtype=np.uint8),
        vector=rng.normal(size=(batch_size, vector_dim)).astype(np.float32),
        action=rng.uniform(-1, 1, (batch_size, 2)).astype(np.float32),
        reward=rng.normal(size=batch_size).astype(np.float32),
        next_image=rng.integers(0, 256, (batch_size, 84, 84, 4), dtype=np.uint8),
        next_vector=rng.normal(size=(batch_size, vector_dim)).astype(np.float32),
        terminated=(rng.uniform(size=batch_size) < 0.3).astype(np.float32),
    )


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)
