"""The optimizer chain: one global clip over the whole network, then per-group Adam."""

from __future__ import annotations

import chex
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings

from td3_jax.core import networks

from td3_jax.core import optim
from td3_jax.core.hparams import OptimizerConfig

PARAMS = {
    "encoder": {"conv": jnp.zeros((3, 3, 2, 4)), "bias": jnp.zeros((4,))},
    "head": {"kernel": jnp.zeros((5, 2)), "bias": jnp.zeros((2,))},
}


def _random_grads(seed: int, log_scale: float):
    keys = jax.random.split(jax.random.key(seed), 4)
    leaves, treedef = jax.tree.flatten(PARAMS)
    scaled = [jax.random.normal(k, x.shape) * (10.0**log_scale) for k, x in zip(keys, leaves)]
    return jax.tree.unflatten(treedef, scaled)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**16), log_scale=st.floats(-4, 12), max_norm=st.floats(0.01, 100.0))
def test_post_clip_norm_never_exceeds_max_norm(seed, log_scale, max_norm):
    tx = optim.make_optimizer(OptimizerConfig(max_grad_norm=max_norm), networks.param_labels)
    grads = _random_grads(seed, log_scale)
    _, state = tx.update(grads, tx.init(PARAMS), PARAMS)
    before, after = optim.clip_norms(state)
    assert float(after["total"]) <= max_norm * (1 + 1e-5)
    np.testing.assert_allclose(float(before["total"]), float(optax.tree.norm(grads)), rtol=1e-5)
    if float(before["total"]) <= max_norm:
        np.testing.assert_allclose(float(after["total"]), float(before["total"]), rtol=1e-6)
    else:
        np.testing.assert_allclose(float(after["total"]), max_norm, rtol=1e-5)


def test_clip_below_max_norm_passes_gradient_unchanged():
    tx = optim.make_optimizer(OptimizerConfig(max_grad_norm=1e6, weight_decay=0.0), networks.param_labels)
    grads = _random_grads(1, 0.0)
    clip = optax.clip_by_global_norm(1e6)
    clipped, _ = clip.update(grads, clip.init(PARAMS))
    chex.assert_trees_all_equal(clipped, grads)
    _, state = tx.update(grads, tx.init(PARAMS), PARAMS)
    before, after = optim.clip_norms(state)
    assert float(before["total"]) == float(after["total"])


def test_clip_is_global_across_groups_not_per_group():
    """A huge CNN gradient scales the MLP gradient down by the same factor."""
    grads = _random_grads(2, 0.0)
    grads["encoder"] = jax.tree.map(lambda g: g * 1e6, grads["encoder"])
    tx = optim.make_optimizer(OptimizerConfig(max_grad_norm=1.0), networks.param_labels)
    _, state = tx.update(grads, tx.init(PARAMS), PARAMS)
    before, after = optim.clip_norms(state)
    scale = float(after["total"] / before["total"])
    np.testing.assert_allclose(float(after["mlp"] / before["mlp"]), scale, rtol=1e-4)
    np.testing.assert_allclose(float(after["cnn"] / before["cnn"]), scale, rtol=1e-4)
    assert float(after["mlp"]) < 1e-3  # a per-group clip would have left the MLP gradient alone


def test_group_norms_are_global_l2_not_sums_of_tensor_norms():
    tree = {"encoder": {"a": jnp.full((4,), 1.0), "b": jnp.full((4,), 1.0)}, "head": {"c": jnp.zeros(1)}}
    norms = optim.group_norms(tree, networks.param_labels(tree))
    np.testing.assert_allclose(float(norms["cnn"]), np.sqrt(8.0))  # the original's sum would give 4.0


def test_each_group_uses_its_own_learning_rate_and_it_is_readable():
    config = OptimizerConfig(max_grad_norm=1e9, cnn_lr=0.0, mlp_lr=0.1)
    tx = optim.make_optimizer(config, networks.param_labels)
    state = tx.init(PARAMS)
    updates, state = tx.update(_random_grads(3, 0.0), state, PARAMS)
    assert all(float(jnp.max(jnp.abs(u))) == 0.0 for u in jax.tree.leaves(updates["encoder"]))
    assert all(float(jnp.max(jnp.abs(u))) > 0.0 for u in jax.tree.leaves(updates["head"]))
    lrs = optim.learning_rates(state)
    assert float(lrs["cnn"]) == 0.0
    np.testing.assert_allclose(float(lrs["mlp"]), 0.1)


def test_unlabelled_parameter_group_is_an_error():
    tx = optim.make_optimizer(OptimizerConfig(), lambda params: jax.tree.map(lambda _: "other", params))
    with pytest.raises(ValueError):
        tx.init(PARAMS)


def test_adam_eps_scales_down_steps_of_gradients_below_it():
    """With the default eps Adam's first step is lr * sign(g) even for a 1e-7 gradient."""
    grads = jax.tree.map(lambda x: jnp.full(x.shape, 1e-7), PARAMS)
    steps = {}
    for eps in (1e-8, 1e-3):
        tx = optim.make_optimizer(OptimizerConfig(max_grad_norm=1e9, cnn_lr=0.1, mlp_lr=0.1, adam_eps=eps),
                                  networks.param_labels)
        updates, _ = tx.update(grads, tx.init(PARAMS), PARAMS)
        steps[eps] = max(float(jnp.max(jnp.abs(u))) for u in jax.tree.leaves(updates))
    np.testing.assert_allclose(steps[1e-8], 0.1 * 1e-7 / (1e-7 + 1e-8), rtol=1e-4)
    np.testing.assert_allclose(steps[1e-3], 0.1 * 1e-7 / (1e-7 + 1e-3), rtol=1e-3)
