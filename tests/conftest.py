"""Shared fixtures: a tiny TD3 configuration and random batches.

The encoder's geometry is fixed by 84x84 frames, so tests shrink everything
else (feature width, heads, batch) to keep compile and run times small.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

# One XLA compilation cache for the whole test run, set before jax is imported: the xdist workers
# and the subprocesses that tests start (the CLI, worker envs, multi-process runs) inherit it, so
# an update compiled once is loaded, not compiled again, by every other process of the run.
_OWN_CACHE = "JAX_COMPILATION_CACHE_DIR" not in os.environ
if _OWN_CACHE:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="td3_jax_test_xla_cache_")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from td3_jax.core.hparams import EncoderConfig, NetworkConfig, OptimizerConfig, TD3Config  # noqa: E402
from td3_jax.core.types import Batch  # noqa: E402

TINY_VECTOR_DIM = 5
SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def load_script(name: str):
    """scripts/<name>.py as a module (the scripts are not a package)."""
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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


def pytest_unconfigure(config):
    if _OWN_CACHE:  # the process that made the cache (the xdist controller) removes it
        shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
