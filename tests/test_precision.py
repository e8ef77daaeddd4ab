"""Mixed precision (`EncoderConfig.compute_dtype = "bfloat16"`): bfloat16 matrix work, float32 everything kept."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from conftest import TINY_VECTOR_DIM, random_batch, tiny_config
from td3_jax.core import networks, td3


def _bfloat16(config):
    encoder = dataclasses.replace(config.network.encoder, compute_dtype="bfloat16")
    return dataclasses.replace(config, network=dataclasses.replace(config.network, encoder=encoder))


def _float_leaves(tree):
    return [leaf for leaf in jax.tree.leaves(tree) if jnp.issubdtype(leaf.dtype, jnp.floating)]


def test_bfloat16_encoder_multiplies_in_bfloat16_and_returns_float32_features_close_to_float32(rng):
    full = networks.Encoder(tiny_config().network.encoder)
    mixed = networks.Encoder(_bfloat16(tiny_config()).network.encoder)
    image = jnp.asarray(random_batch(rng, batch_size=8).image)
    params = full.init(jax.random.key(0), image)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(params))
    products = [
        equation for equation in jax.make_jaxpr(lambda p: mixed.apply(p, image))(params).jaxpr.eqns
        if equation.primitive.name in ("dot_general", "conv_general_dilated")
    ]
    assert products and all(eq.outvars[0].aval.dtype == jnp.bfloat16 for eq in products)
    want, got = full.apply(params, image), mixed.apply(params, image)
    assert got.dtype == jnp.float32
    # bfloat16 keeps 8 significant bits: a few percent of the features' spread.
    assert float(jnp.max(jnp.abs(got - want))) < 0.1 * float(jnp.std(want))


def test_bfloat16_training_stays_finite_float32_and_close_to_float32(rng):
    """Four fused updates from the same start (the shapes of test_td3's fused test, so float32 compiles once):
    the losses and the learnt policy follow the float32 run's."""
    batches = [random_batch(rng) for _ in range(4)]
    stacked = jax.tree.map(lambda *xs: np.stack(xs), *batches)
    start = td3.init_state(tiny_config(), jax.random.key(3), vector_dim=TINY_VECTOR_DIM)
    start_mixed = td3.init_state(_bfloat16(tiny_config()), jax.random.key(3), vector_dim=TINY_VECTOR_DIM)
    full, full_metrics = td3.update_many(start, stacked)
    mixed, mixed_metrics = td3.update_many(start_mixed, stacked)

    assert np.all(np.asarray(mixed_metrics["debug/all_finite"]) == 1)
    for tree in (mixed.actor_params, mixed.critic_params, mixed.critic_target_params,
                 mixed.actor_opt_state, mixed.critic_opt_state):
        assert all(leaf.dtype == jnp.float32 for leaf in _float_leaves(tree))
    np.testing.assert_allclose(np.asarray(mixed_metrics["train/critic_loss"]),
                               np.asarray(full_metrics["train/critic_loss"]), rtol=0.1)

    def actions(state):
        return td3.act(td3.policy_params(state), stacked.image[0], stacked.vector[0], jax.random.key(0), 0.0,
                       network=state.config.network)

    moved = float(jnp.max(jnp.abs(actions(full) - actions(start))))
    assert moved > 0.01  # the policy learnt something to compare
    assert float(jnp.max(jnp.abs(actions(mixed) - actions(full)))) < 0.1 * moved
