"""The jitted TD3 update: maths, delays, determinism, fusion, and the encoder-ownership fix."""

from __future__ import annotations

import ast
import dataclasses
import functools
import pathlib

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import TINY_VECTOR_DIM, random_batch, tiny_config

from td3_jax.core import networks

from td3_jax.core import td3
from td3_jax.core.hparams import NetworkConfig, OptimizerConfig
from td3_jax.core.types import Batch, PackedBatch


def _state(config=None, seed=0):
    return td3.init_state(config or tiny_config(), jax.random.key(seed), vector_dim=TINY_VECTOR_DIM)


def _tree_changed(a, b) -> bool:
    return any(not np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_default_architecture_matches_the_original_parameter_counts():
    shapes = jax.eval_shape(
        lambda key: networks.init_params(NetworkConfig(), key, (84, 84, 4), 53), jax.random.key(0)
    )
    count = lambda tree: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))
    actor, critic = shapes
    assert count(actor["encoder"]) == 1_727_392  # Nature CNN + per-element LayerNorm, as the original
    assert count(actor["head"]) == 211_202
    assert count(critic["encoder"]) == 1_727_392
    assert count(critic["q1"]) + count(critic["q2"]) == 422_914


def test_targets_are_copies_not_aliases():
    state = _state()
    for online, target in [
        (state.actor_params, state.actor_target_params),
        (state.critic_params, state.critic_target_params),
    ]:
        chex.assert_trees_all_equal(online, target)
        for x, y in zip(jax.tree.leaves(online), jax.tree.leaves(target)):
            assert x.unsafe_buffer_pointer() != y.unsafe_buffer_pointer()


def test_td_target_on_a_hand_checkable_case(rng):
    """Constant target Q heads (Q1'=5, Q2'=3): y = r + gamma (1 - d) min(5, 3)."""
    config = tiny_config(discount=0.9)
    state = _state(config)

    def constant_head(head, value):
        last = sorted(head)[-1]
        head = dict(head)
        head[last] = {"kernel": jnp.zeros_like(head[last]["kernel"]), "bias": jnp.full_like(head[last]["bias"], value)}
        return head

    target = dict(state.critic_target_params)
    target["q1"] = constant_head(target["q1"], 5.0)
    target["q2"] = constant_head(target["q2"], 3.0)
    state = state.replace(critic_target_params=target)
    batch = random_batch(rng, batch_size=2)._replace(
        reward=np.array([1.0, 2.0], np.float32), terminated=np.array([0.0, 1.0], np.float32)
    )
    actor, critic = networks.make_networks(config.network)
    y = td3.td_target(config, actor, critic, state, batch, jax.random.key(1))
    np.testing.assert_allclose(np.asarray(y), [1.0 + 0.9 * 3.0, 2.0], rtol=1e-6)
    # A k-step batch carries gamma^k per transition, which replaces the config's discount.
    n_step_batch = batch._replace(discount=np.array([0.5, 0.25], np.float32))
    y = td3.td_target(config, actor, critic, state, n_step_batch, jax.random.key(1))
    np.testing.assert_allclose(np.asarray(y), [1.0 + 0.5 * 3.0, 2.0], rtol=1e-6)


def _smoothed_target_actions(config, policy_action, batch_size=4, seed=1):
    """a' as td_target forms it, read off y for a target actor that outputs `policy_action` everywhere.

    The target Q1' head returns one action component exactly (relu(a_i) - relu(-a_i)), Q2' a huge
    constant so the min picks Q1', and r = 0, gamma = 1, not terminated, so y = a'_i. Both reads
    use the same key, so they see the same noise draw.
    """
    state = _state(config)
    action_dim = config.network.action_dim
    actor_target = dict(state.actor_target_params)
    head = actor_target["head"]
    actor_target["head"] = dict(head, Dense_1={
        "kernel": jnp.zeros_like(head["Dense_1"]["kernel"]), "bias": jnp.arctanh(jnp.asarray(policy_action)),
    })
    batch = random_batch(np.random.default_rng(seed), batch_size=batch_size)._replace(
        reward=np.zeros(batch_size, np.float32),
        terminated=np.zeros(batch_size, np.float32),
        discount=np.ones(batch_size, np.float32),
    )
    actor, critic = networks.make_networks(config.network)
    target = jax.jit(functools.partial(td3.td_target, config, actor, critic))
    components = []
    for i in range(action_dim):
        critic_target = dict(state.critic_target_params)
        q1, q2 = critic_target["q1"], critic_target["q2"]
        read_action = jnp.zeros_like(q1["Dense_0"]["kernel"])
        read_action = read_action.at[i - action_dim, 0].set(1.0).at[i - action_dim, 1].set(-1.0)
        output = jnp.zeros_like(q1["Dense_1"]["kernel"]).at[0, 0].set(1.0).at[1, 0].set(-1.0)
        critic_target["q1"] = {
            "Dense_0": {"kernel": read_action, "bias": jnp.zeros_like(q1["Dense_0"]["bias"])},
            "Dense_1": {"kernel": output, "bias": jnp.zeros_like(q1["Dense_1"]["bias"])},
        }
        critic_target["q2"] = dict(q2, Dense_1={
            "kernel": jnp.zeros_like(q2["Dense_1"]["kernel"]), "bias": jnp.full_like(q2["Dense_1"]["bias"], 1e6),
        })
        target_state = state.replace(actor_target_params=actor_target, critic_target_params=critic_target)
        components.append(target(target_state, batch, jax.random.key(seed)))
    return np.stack([np.asarray(c) for c in components], axis=-1)


def test_zero_noise_clip_gives_the_noise_free_target_action():
    policy_action = np.array([0.3, -0.6], np.float32)
    next_action = _smoothed_target_actions(tiny_config(policy_noise=0.5, noise_clip=0.0), policy_action)
    np.testing.assert_allclose(next_action, np.broadcast_to(policy_action, next_action.shape), atol=1e-6)


def test_smoothing_noise_is_clipped_to_noise_clip_before_the_action_clip():
    """With a huge policy_noise every draw is clipped: a' sits exactly noise_clip from mu'(s')."""
    policy_action = np.array([0.2, -0.4], np.float32)  # |mu'| + noise_clip < 1: the action clip stays idle
    next_action = _smoothed_target_actions(tiny_config(policy_noise=1e3, noise_clip=0.3), policy_action)
    np.testing.assert_allclose(np.abs(next_action - policy_action), 0.3, atol=1e-5)
    assert (next_action > policy_action).any() and (next_action < policy_action).any()


def test_smoothed_target_action_is_clipped_to_the_action_box():
    policy_action = np.array([1.0, -1.0], np.float32)  # a saturated target actor
    next_action = _smoothed_target_actions(tiny_config(policy_noise=1.0, noise_clip=0.5), policy_action, 16)
    assert np.all(np.abs(next_action) <= 1.0)
    # Noise pointing out of the box is cut to the bound; noise pointing in moves a' inside.
    assert (np.abs(next_action) == 1.0).any() and (np.abs(next_action) < 1.0).any()


def test_smoothing_noise_has_std_policy_noise():
    """With noise_clip out of reach and mu'(s') = 0, a' is the raw N(0, policy_noise) draw."""
    policy_noise = 0.1
    next_action = _smoothed_target_actions(
        tiny_config(policy_noise=policy_noise, noise_clip=1e3), np.zeros(2, np.float32), batch_size=128
    )
    assert abs(np.std(next_action) / policy_noise - 1.0) < 0.15  # 256 draws: the std is within ~4%
    assert abs(np.mean(next_action)) < 4 * policy_noise / np.sqrt(next_action.size)
    assert len(np.unique(next_action)) == next_action.size  # independent per transition and component


def test_actor_step_changes_no_critic_parameter(rng):
    """The same state at an actor step and at a non-actor step yields the same critic."""
    state = _state()
    batch = random_batch(rng)
    with_actor, metrics_a = td3.update(state, batch)  # step 0: actor step
    without_actor, metrics_b = td3.update(state.replace(step=jnp.int32(1)), batch)
    assert float(metrics_a["debug/actor_updated"]) == 1.0 and float(metrics_b["debug/actor_updated"]) == 0.0
    chex.assert_trees_all_equal(with_actor.critic_params, without_actor.critic_params)
    chex.assert_trees_all_equal(with_actor.critic_opt_state, without_actor.critic_opt_state)
    assert _tree_changed(with_actor.actor_params, state.actor_params)
    chex.assert_trees_all_equal(without_actor.actor_params, state.actor_params)


def test_critic_features_enter_the_actor_loss_only_through_stop_gradient(rng):
    state = _state()
    config = state.config
    actor, critic = networks.make_networks(config.network)
    batch = random_batch(rng)
    critic_grads = jax.grad(td3.actor_loss, argnums=1, has_aux=True)(
        state.actor_params, state.critic_params, actor, critic, batch
    )[0]
    assert all(float(jnp.max(jnp.abs(g))) == 0.0 for g in jax.tree.leaves(critic_grads["encoder"]))


def test_actor_gradient_is_zero_when_q_ignores_the_action(rng):
    """The actor reaches Q only through its action: the original's bug fails this."""
    state = _state()
    actor, critic = networks.make_networks(state.config.network)
    critic_params = dict(state.critic_params)
    first = sorted(critic_params["q1"])[0]
    kernel = critic_params["q1"][first]["kernel"]
    action_dim = state.config.network.action_dim
    critic_params["q1"] = dict(critic_params["q1"])
    critic_params["q1"][first] = dict(critic_params["q1"][first], kernel=kernel.at[-action_dim:].set(0.0))
    grads = jax.grad(td3.actor_loss, has_aux=True)(
        state.actor_params, critic_params, actor, critic, random_batch(rng)
    )[0]
    assert all(float(jnp.max(jnp.abs(g))) == 0.0 for g in jax.tree.leaves(grads))


def test_actor_and_targets_change_only_on_policy_freq_steps(rng):
    state = _state(tiny_config(policy_freq=3))
    for step in range(7):
        new_state, metrics = td3.update(state, random_batch(rng))
        actor_step = step % 3 == 0
        assert float(metrics["debug/actor_updated"]) == float(actor_step)
        assert _tree_changed(new_state.actor_params, state.actor_params) == actor_step
        assert _tree_changed(new_state.actor_target_params, state.actor_target_params) == actor_step
        assert _tree_changed(new_state.critic_target_params, state.critic_target_params) == actor_step
        assert _tree_changed(new_state.critic_params, state.critic_params)
        assert np.isnan(float(metrics["train/actor_loss"])) != actor_step
        state = new_state
    assert int(state.step) == 7


@pytest.mark.parametrize("shared_encoder", [False, True], ids=["separate", "shared"])
def test_targets_move_by_polyak_averaging_on_an_actor_step(rng, shared_encoder):
    """target <- tau online + (1 - tau) target, from the online parameters after this step.

    With a shared encoder the one encoder lives in the critic's trees only, so it is averaged once.
    """
    state = _shared_state() if shared_encoder else _state()
    tau = state.config.tau
    nudge = lambda tree: jax.tree.map(lambda x: x + 0.1, tree)  # targets apart from the online nets
    state = state.replace(
        actor_target_params=nudge(state.actor_target_params), critic_target_params=nudge(state.critic_target_params)
    )
    new_state, metrics = td3.update(state, random_batch(rng))
    assert float(metrics["debug/actor_updated"]) == 1.0
    for online, old_target, new_target in [
        (new_state.actor_params, state.actor_target_params, new_state.actor_target_params),
        (new_state.critic_params, state.critic_target_params, new_state.critic_target_params),
    ]:
        expected = jax.tree.map(lambda o, t: tau * o + (1 - tau) * t, online, old_target)
        chex.assert_trees_all_close(new_target, expected, rtol=1e-6, atol=1e-6)


def test_critic_loss_is_twin_mse_to_the_td_target_at_the_pre_update_critic(rng):
    state = _state()
    # Target Q heads blind to the action: y does not depend on the update's smoothing noise.
    critic_target = dict(state.critic_target_params)
    action_dim = state.config.network.action_dim
    for head in ("q1", "q2"):
        first = dict(critic_target[head]["Dense_0"])
        first["kernel"] = first["kernel"].at[-action_dim:].set(0.0)
        critic_target[head] = dict(critic_target[head], Dense_0=first)
    state = state.replace(critic_target_params=critic_target)
    batch = random_batch(rng)
    actor, critic = networks.make_networks(state.config.network)
    target = td3.td_target(state.config, actor, critic, state, batch, jax.random.key(0))
    q1, q2 = critic.apply({"params": state.critic_params}, batch.image, batch.vector, batch.action)
    _, metrics = td3.update(state, batch)
    expected = jnp.mean(jnp.square(q1 - target)) + jnp.mean(jnp.square(q2 - target))
    np.testing.assert_allclose(float(metrics["train/critic_loss"]), float(expected), rtol=1e-5)
    np.testing.assert_allclose(float(metrics["debug/target_q_mean"]), float(jnp.mean(target)), rtol=1e-5)


def test_actor_loss_is_minus_q1_at_the_updated_critic_plus_the_preactivation_penalty(rng):
    """The actor ascends Q1 of the critic this step produced (as Fujimoto's code does)."""
    preactivation_l2 = 0.1
    state = _state(tiny_config(actor_preactivation_l2=preactivation_l2))
    batch = random_batch(rng)
    new_state, metrics = td3.update(state, batch)
    actor, critic = networks.make_networks(state.config.network)
    action = actor.apply({"params": state.actor_params}, batch.image, batch.vector)
    q1, _ = critic.apply({"params": new_state.critic_params}, batch.image, batch.vector, action)
    np.testing.assert_allclose(float(metrics["debug/actor_q_mean"]), float(jnp.mean(q1)), rtol=1e-5)
    penalty = preactivation_l2 * float(metrics["debug/actor_preactivation_rms"]) ** 2
    np.testing.assert_allclose(
        float(metrics["train/actor_loss"]), -float(metrics["debug/actor_q_mean"]) + penalty, rtol=1e-5
    )


def test_reused_critic_features_are_the_pre_update_encoders_under_the_updated_heads(rng):
    """actor_reuses_critic_features (DrQ-v2): the encoder pass of the critic step serves the actor step."""
    state = _state(tiny_config(actor_reuses_critic_features=True))
    batch = random_batch(rng)
    new_state, metrics = td3.update(state, batch)
    actor, critic = networks.make_networks(state.config.network)
    action = actor.apply({"params": state.actor_params}, batch.image, batch.vector)
    features = {
        when: critic.apply({"params": params}, batch.image, method=critic.features)
        for when, params in (("before", state.critic_params), ("after", new_state.critic_params))
    }
    q1 = {
        when: critic.apply({"params": new_state.critic_params}, f, batch.vector, action, method=critic.q1_value)
        for when, f in features.items()
    }
    logged = float(metrics["debug/actor_q_mean"])
    error = {when: abs(logged - float(jnp.mean(q))) for when, q in q1.items()}
    assert error["before"] < 1e-6 and error["before"] < error["after"] / 100, error


def test_every_update_advances_the_key_so_smoothing_noise_is_fresh(rng):
    state = _state()
    keys = [np.asarray(state.key)]
    for _ in range(2):
        state, _ = td3.update(state, random_batch(rng))
        keys.append(np.asarray(state.key))
    assert len({key.tobytes() for key in keys}) == 3


def test_trunks_are_mlp_group_parameters_that_train(rng):
    network = tiny_config().network
    state = _state(tiny_config(network=dataclasses.replace(network, actor_trunk=5, critic_trunk=6)))
    chex.assert_shape(state.actor_params["trunk"]["Dense_0"]["kernel"], (16 + TINY_VECTOR_DIM, 5))
    chex.assert_shape(state.critic_params["q1"]["Dense_0"]["kernel"], (6 + 2, 8))  # the action joins after
    assert set(jax.tree.leaves(networks.param_labels(state.critic_params)["trunk"])) == {"mlp"}
    new_state, metrics = td3.update(state, random_batch(rng))
    assert _tree_changed(new_state.actor_params["trunk"], state.actor_params["trunk"])
    assert _tree_changed(new_state.critic_params["trunk"], state.critic_params["trunk"])
    assert float(metrics["debug/all_finite"]) == 1.0


def test_vector_after_trunk_reaches_the_heads_unsqueezed(rng):
    """With vector_after_trunk the trunks read the image features only and the heads read the vector itself:
    zeroing a trunk leaves the vector's whole effect on the action and on Q."""
    network = dataclasses.replace(
        tiny_config().network, actor_trunk=5, critic_trunk=6, actor_vector_after_trunk=True,
        critic_vector_after_trunk=True,
    )
    state = _state(tiny_config(network=network))
    chex.assert_shape(state.actor_params["trunk"]["Dense_0"]["kernel"], (16, 5))
    chex.assert_shape(state.actor_params["head"]["Dense_0"]["kernel"], (5 + TINY_VECTOR_DIM, 8))
    chex.assert_shape(state.critic_params["q1"]["Dense_0"]["kernel"], (6 + TINY_VECTOR_DIM + 2, 8))
    batch = random_batch(rng)
    other = batch.vector + 1.0
    for layout, after in ((network, True), (dataclasses.replace(network, actor_vector_after_trunk=False,
                                                                 critic_vector_after_trunk=False), False)):
        actor, critic = networks.make_networks(layout)
        layout_state = _state(tiny_config(network=layout))
        no_trunk = lambda p: {**p, "trunk": jax.tree.map(jnp.zeros_like, p["trunk"])}  # noqa: E731
        a = [actor.apply({"params": no_trunk(layout_state.actor_params)}, batch.image, v)
             for v in (batch.vector, other)]
        q = [critic.apply({"params": no_trunk(layout_state.critic_params)}, batch.image, v, batch.action)[0]
             for v in (batch.vector, other)]
        assert (float(jnp.abs(a[0] - a[1]).max()) > 1e-4) == after
        assert (float(jnp.abs(q[0] - q[1]).max()) > 1e-4) == after
    new_state, metrics = td3.update(state, batch)
    assert _tree_changed(new_state.actor_params["trunk"], state.actor_params["trunk"])
    assert float(metrics["debug/all_finite"]) == 1.0


def test_dueling_q_heads_split_the_value_from_how_q_varies_with_the_action(rng):
    """Q = V(h) + A(h, a) - A(h, 0): without the advantage stream Q ignores the action, without the value
    stream Q is zero at the zero action in every state; the update trains both streams."""
    network = dataclasses.replace(tiny_config().network, critic_trunk=6, critic_vector_after_trunk=True,
                                  critic_dueling=True)
    state = _state(tiny_config(network=network))
    head = state.critic_params["q1"]
    chex.assert_shape(head["value"]["Dense_0"]["kernel"], (6 + TINY_VECTOR_DIM, 8))
    chex.assert_shape(head["advantage"]["Dense_0"]["kernel"], (6 + TINY_VECTOR_DIM + 2, 8))
    _, critic = networks.make_networks(network)
    batch = random_batch(rng)
    zero = jnp.zeros_like(batch.action)

    def without(stream):
        return {**state.critic_params, **{q: {**state.critic_params[q], stream: jax.tree.map(
            jnp.zeros_like, state.critic_params[q][stream])} for q in ("q1", "q2")}}

    q = lambda params, action: critic.apply({"params": params}, batch.image, batch.vector, action)  # noqa: E731
    for twin in range(2):
        assert float(jnp.abs(q(state.critic_params, batch.action)[twin] - q(state.critic_params, zero)[twin]).max()) > 1e-4
        chex.assert_trees_all_close(q(without("advantage"), batch.action)[twin], q(without("advantage"), zero)[twin])
        chex.assert_trees_all_close(q(without("value"), zero)[twin], jnp.zeros(batch.action.shape[0]), atol=1e-6)
        assert float(jnp.abs(q(without("value"), batch.action)[twin]).max()) > 1e-4
    new_state = state
    for _ in range(2):
        new_state, metrics = td3.update(new_state, random_batch(rng))
    for stream in ("value", "advantage"):
        assert _tree_changed(new_state.critic_params["q1"][stream], head[stream])
    assert float(metrics["debug/all_finite"]) == 1.0


def test_reward_components_get_a_q_each_whose_sum_is_td3_s(rng):
    """Per-component heads (HRA): each component's target is its own reward plus the components of the twin
    whose summed Q' is smaller (so the summed target is TD3's min target, not a sum of per-component minima);
    the critic regresses each component on its own target; the actor and every metric read the summed Q."""
    components = 3
    network = dataclasses.replace(tiny_config().network, critic_reward_components=components)
    config = tiny_config(network=network, discount=0.9)
    state = _state(config)
    chex.assert_shape(state.critic_params["q1"]["Dense_1"]["bias"], (components,))

    def constant_head(head, values):
        return {**head, "Dense_1": {"kernel": jnp.zeros_like(head["Dense_1"]["kernel"]),
                                    "bias": jnp.asarray(values, jnp.float32)}}

    target = dict(state.critic_target_params)
    target["q1"] = constant_head(target["q1"], [1.0, 2.0, 3.0])  # sum 6
    target["q2"] = constant_head(target["q2"], [5.0, 0.0, -1.0])  # sum 4: the min twin
    state = state.replace(critic_target_params=target)
    batch = random_batch(rng, batch_size=2)._replace(
        reward=np.array([[1.0, 0.0, -1.0], [2.0, 2.0, 2.0]], np.float32), terminated=np.array([0.0, 1.0], np.float32)
    )
    actor, critic = networks.make_networks(network)
    y = td3.td_target(config, actor, critic, state, batch, jax.random.key(1))
    np.testing.assert_allclose(np.asarray(y), [[1.0 + 0.9 * 5.0, 0.0, -1.0 - 0.9], [2.0, 2.0, 2.0]], rtol=1e-6)

    # The loss is the squared error of each component, summed over the components.
    loss, (q1, q2, _) = td3.critic_loss(state.critic_params, critic, batch, y)
    features = critic.apply({"params": state.critic_params}, batch.image, method=critic.features)
    c1, c2 = critic.apply({"params": state.critic_params}, features, batch.vector, batch.action,
                          method=critic.q_components)
    chex.assert_shape([c1, c2], (2, components))
    expected = sum(float(jnp.mean(jnp.sum(jnp.square(c - y), axis=-1))) for c in (c1, c2))
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
    chex.assert_trees_all_close((q1, q2), (c1.sum(-1), c2.sum(-1)), rtol=1e-6)
    # What the steering probe and any caller of the critic read: the summed Q.
    whole = critic.apply({"params": state.critic_params}, batch.image, batch.vector, batch.action)
    chex.assert_trees_all_close(whole, (c1.sum(-1), c2.sum(-1)), rtol=1e-6)
    # Each component's gradient comes from its own target only: moving one component's target moves
    # only that component's output weights.
    shifted = y.at[:, 1].add(10.0)
    grads = [jax.grad(lambda p, t: td3.critic_loss(p, critic, batch, t)[0])(state.critic_params, t) for t in (y, shifted)]
    moved = np.abs(np.asarray(grads[0]["q1"]["Dense_1"]["kernel"] - grads[1]["q1"]["Dense_1"]["kernel"])).max(axis=0)
    assert moved[1] > 1e-3 and moved[0] == moved[2] == 0.0

    loss, (policy_q1, *_) = td3.actor_loss(state.actor_params, state.critic_params, actor, critic, batch)
    chex.assert_shape(policy_q1, (2,))
    np.testing.assert_allclose(float(loss), -float(jnp.mean(policy_q1)), rtol=1e-6)
    new_state, metrics = td3.update(state, random_batch(rng)._replace(
        reward=rng.normal(size=(4, components)).astype(np.float32)))
    assert float(metrics["debug/all_finite"]) == 1.0
    assert _tree_changed(new_state.critic_params["q1"], state.critic_params["q1"])


@pytest.mark.parametrize("components", [0, 3], ids=["whole", "components"])
def test_huber_critic_loss_is_the_squared_error_within_delta_and_linear_beyond(rng, components):
    """`critic_huber_delta`: each (component's) error e costs e^2 within delta and 2 delta |e| - delta^2 beyond
    (the squared error's gradient capped at +-2 delta), against a reference written from the definition; with a
    delta above every error it is the squared error exactly, loss and gradients."""
    network = dataclasses.replace(tiny_config().network, critic_reward_components=components)
    state = _state(tiny_config(network=network))
    actor, critic = networks.make_networks(network)
    shape = (8, components) if components else (8,)
    batch = random_batch(rng, batch_size=8)._replace(reward=rng.normal(scale=3.0, size=shape).astype(np.float32))
    y = td3.td_target(state.config, actor, critic, state, batch, jax.random.key(1))

    def reference(params, delta):
        features = critic.apply({"params": params}, batch.image, method=critic.features)
        total = 0.0
        for q in critic.apply({"params": params}, features, batch.vector, batch.action, method=critic.q_components):
            error = jnp.abs(q - y)
            cost = jnp.where(error <= delta, jnp.square(error), 2 * delta * error - delta**2)
            total += jnp.mean(cost if cost.ndim == 1 else jnp.sum(cost, axis=-1))
        return total

    features = critic.apply({"params": state.critic_params}, batch.image, method=critic.features)
    q1, _ = critic.apply({"params": state.critic_params}, features, batch.vector, batch.action, method=critic.q_components)
    errors = np.abs(np.asarray(q1 - y))
    delta = float(np.median(errors))  # both branches are exercised
    assert (errors < delta).any() and (errors > delta).any()

    def loss_fn(params, delta):
        return td3.critic_loss(params, critic, batch, y, delta)[0]

    loss, grads = jax.value_and_grad(loss_fn)(state.critic_params, delta)
    expected, expected_grads = jax.value_and_grad(reference)(state.critic_params, delta)
    np.testing.assert_allclose(float(loss), float(expected), rtol=1e-5)
    chex.assert_trees_all_close(grads, expected_grads, rtol=1e-4, atol=1e-6)
    squared = jax.value_and_grad(loss_fn)(state.critic_params, 0.0)
    assert float(loss) < float(squared[0])  # large errors cost less than squared

    wide = 10.0 * float(errors.max() + 1.0)
    chex.assert_trees_all_close(jax.value_and_grad(loss_fn)(state.critic_params, wide), squared, rtol=1e-4, atol=1e-5)


def test_huber_critic_loss_is_off_by_default_and_reaches_the_update_s_critic_step(rng):
    batch = random_batch(rng)._replace(reward=np.array([1.0, -1.0, 200.0, 0.5], np.float32))  # one large error
    plain_state, plain = td3.update(_state(), batch)
    off_state, _ = td3.update(_state(tiny_config(critic_huber_delta=0.0)), batch)
    chex.assert_trees_all_equal(off_state, plain_state)
    # The loss test shows a wide delta is the squared error; here the update reads the delta it is given.
    _, huber = td3.update(_state(tiny_config(critic_huber_delta=1.0)), batch)
    for key in ("train/critic_loss", "debug/critic_grad_norm_BEFORE_clip"):
        assert float(huber[key]) < float(plain[key]) / 10, key  # the large error's pull is capped
    assert float(huber["debug/all_finite"]) == 1.0


def test_actor_warmup_trains_only_the_critic_while_its_target_keeps_tracking(rng):
    state = _state(tiny_config(policy_freq=2, actor_warmup_updates=4))
    for step in range(7):
        new_state, metrics = td3.update(state, random_batch(rng))
        policy_step, actor_step = step % 2 == 0, step % 2 == 0 and step >= 4
        assert float(metrics["debug/actor_updated"]) == float(actor_step)
        assert _tree_changed(new_state.actor_params, state.actor_params) == actor_step
        assert _tree_changed(new_state.actor_target_params, state.actor_target_params) == actor_step
        assert _tree_changed(new_state.critic_target_params, state.critic_target_params) == policy_step
        if policy_step and not actor_step:  # the same Polyak step as after an actor update
            expected = optax.incremental_update(new_state.critic_params, state.critic_target_params, 0.005)
            chex.assert_trees_all_close(new_state.critic_target_params, expected, rtol=1e-6, atol=1e-7)
        state = new_state


def test_zero_learning_rate_freezes_exactly_that_group(rng):
    frozen = OptimizerConfig(max_grad_norm=1.0, cnn_lr=0.0, mlp_lr=1e-3)
    frozen_critic = OptimizerConfig(max_grad_norm=10.0, cnn_lr=0.0, mlp_lr=1e-3)
    state = _state(tiny_config(actor_optimizer=frozen, critic_optimizer=frozen_critic))
    new_state, metrics = td3.update(state, random_batch(rng))
    chex.assert_trees_all_equal(new_state.actor_params["encoder"], state.actor_params["encoder"])
    chex.assert_trees_all_equal(new_state.critic_params["encoder"], state.critic_params["encoder"])
    assert _tree_changed(new_state.actor_params["head"], state.actor_params["head"])
    assert _tree_changed(new_state.critic_params["q1"], state.critic_params["q1"])
    assert float(metrics["agent/actor_cnn_lr"]) == 0.0


def test_logged_after_clip_norms_respect_max_norm_under_huge_gradients(rng):
    state = _state()
    batch = random_batch(rng)._replace(reward=np.full(4, 1e8, np.float32))
    _, metrics = td3.update(state, batch)
    assert float(metrics["debug/critic_grad_norm_BEFORE_clip"]) > 1e3
    assert float(metrics["debug/critic_grad_norm_AFTER_clip"]) <= 10.0 * (1 + 1e-5)
    assert float(metrics["debug/actor_grad_norm_AFTER_clip"]) <= 1.0 * (1 + 1e-5)
    np.testing.assert_allclose(
        float(metrics["debug/critic_grad_clip_ratio"]),
        10.0 / float(metrics["debug/critic_grad_norm_BEFORE_clip"]),
        rtol=1e-5,
    )


def test_same_seed_is_bit_identical_and_different_seeds_differ(rng):
    batches = [random_batch(rng) for _ in range(3)]

    def run(seed):
        state = _state(seed=seed)
        for batch in batches:
            state, _ = td3.update(state, batch)
        return state

    chex.assert_trees_all_equal(run(0), run(0))
    assert _tree_changed(run(0).critic_params, run(1).critic_params)


def test_update_many_equals_sequential_updates_and_compiles_once(rng):
    state = _state()
    batches = [random_batch(rng) for _ in range(4)]
    sequential = state
    sequential_metrics = []
    for batch in batches:
        sequential, metrics = td3.update(sequential, batch)
        sequential_metrics.append(metrics)
    stacked = jax.tree.map(lambda *xs: np.stack(xs), *batches)
    fused, fused_metrics = td3.update_many(state, stacked)
    # XLA fuses the scanned body differently from the standalone update, so the
    # two agree to float32 rounding rather than bit for bit.
    chex.assert_trees_all_close(fused, sequential, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(fused.step), 4)
    np.testing.assert_array_equal(np.asarray(fused.key), np.asarray(sequential.key))
    np.testing.assert_allclose(
        np.asarray(fused_metrics["train/critic_loss"]),
        [float(m["train/critic_loss"]) for m in sequential_metrics],
        rtol=1e-5,
    )
    compiled_before = td3.update_many._cache_size()
    fused, _ = td3.update_many(fused, stacked)
    td3.update(fused, batches[0])
    assert td3.update_many._cache_size() == compiled_before  # a new step or key never recompiles


@pytest.mark.parametrize("n_step", [False, True])
def test_packed_batch_is_the_same_update_as_two_stacks(rng, n_step):
    """A frames-first PackedBatch (one window, or n-step's two stacks) updates as the NHWC Batch it unpacks to."""
    base = random_batch(rng)
    if n_step:
        frames = rng.integers(0, 256, (4, 4, 84, 84), dtype=np.uint8)
        next_frames = rng.integers(0, 256, (4, 4, 84, 84), dtype=np.uint8)
        discount = rng.choice([0.9, 0.81, 0.729], 4).astype(np.float32)
        image, next_image = frames, next_frames
    else:
        frames = rng.integers(0, 256, (4, 5, 84, 84), dtype=np.uint8)
        next_frames = discount = None
        image, next_image = frames[:, :4], frames[:, 1:]
    packed = PackedBatch(
        frames=frames,
        vector=base.vector,
        action=base.action,
        reward=base.reward,
        next_vector=base.next_vector,
        terminated=base.terminated,
        next_frames=next_frames,
        discount=discount,
    )
    unpacked = Batch(
        image=np.moveaxis(image, 1, -1),
        vector=base.vector,
        action=base.action,
        reward=base.reward,
        next_image=np.moveaxis(next_image, 1, -1),
        next_vector=base.next_vector,
        terminated=base.terminated,
        discount=discount,
    )
    state = _state()
    chex.assert_trees_all_equal(td3.update(state, packed), td3.update(state, unpacked))


def test_metrics_have_the_same_keys_every_step_and_are_finite_when_valid(rng):
    state = _state()
    keys = None
    for _ in range(3):
        state, metrics = td3.update(state, random_batch(rng))
        keys = keys or set(metrics)
        assert set(metrics) == keys
        assert float(metrics["debug/all_finite"]) == 1.0
        valid = {k: v for k, v in metrics.items() if float(metrics["debug/actor_updated"]) or not np.isnan(v)}
        assert all(np.isfinite(float(v)) for v in valid.values())


def test_all_finite_flag_drops_on_nan_input(rng):
    batch = random_batch(rng)._replace(reward=np.full(4, np.nan, np.float32))
    _, metrics = td3.update(_state(), batch)
    assert float(metrics["debug/all_finite"]) == 0.0


def test_act_is_bounded_deterministic_without_noise_and_noise_never_recompiles(rng):
    state = _state()
    network = state.config.network
    image = rng.integers(0, 256, (3, 84, 84, 4), dtype=np.uint8)
    vector = rng.normal(size=(3, TINY_VECTOR_DIM)).astype(np.float32)
    a = td3.act(state.actor_params, image, vector, jax.random.key(0), 0.0, network=network)
    b = td3.act(state.actor_params, image, vector, jax.random.key(9), 0.0, network=network)
    chex.assert_shape(a, (3, 2))
    chex.assert_trees_all_equal(a, b)
    compiled = td3.act._cache_size()
    noisy = td3.act(state.actor_params, image, vector, jax.random.key(0), 5.0, network=network)
    assert td3.act._cache_size() == compiled
    assert float(jnp.max(jnp.abs(noisy))) <= 1.0
    assert _tree_changed(noisy, a)


def test_core_modules_do_no_io_and_import_nothing_outside_the_core():
    """The jitted core imports only numerical libraries and its own modules: no envs, loop, I/O or CLI."""
    forbidden = {"os", "sys", "time", "logging", "yaml", "tensorboardX", "orbax", "carla", "tqdm", "pathlib"}
    core = pathlib.Path(td3.__file__).parent
    modules = sorted(core.glob("*.py"))
    assert {"td3.py", "networks.py", "optim.py"} <= {path.name for path in modules}
    for path in modules:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            roots = {name.split(".")[0] for name in names}
            assert not roots & forbidden, f"{path.name} imports {roots & forbidden}"
            outside = [name for name in names if name.startswith("td3_jax") and not name.startswith("td3_jax.core")]
            assert not outside, f"{path.name} imports {outside} from outside the core"


@pytest.mark.parametrize("name", ["update", "update_many", "init_state", "act", "TD3Config", "make_networks"])
def test_public_api_is_importable_from_the_package(name):
    import td3_jax

    assert hasattr(td3_jax, name)


# --- shared encoder (DrQ-v2): one encoder, the critic's, trained by the critic loss only ---


def _shared_state(seed=0, **overrides):
    config = tiny_config(**overrides)
    config = dataclasses.replace(config, network=dataclasses.replace(config.network, shared_encoder=True))
    return _state(config, seed)


def test_shared_encoder_actor_owns_no_encoder_and_acts_with_the_critics(rng):
    state = _shared_state()
    assert "encoder" not in state.actor_params and "encoder" not in state.actor_target_params
    actor, critic = networks.make_networks(state.config.network)
    batch = random_batch(rng)
    features = critic.apply({"params": state.critic_params}, batch.image, method=critic.features)
    expected = jnp.tanh(
        actor.apply({"params": state.actor_params}, features, batch.vector, method=actor.head_preactivation)
    )
    acted = td3.act(td3.policy_params(state), batch.image, batch.vector, jax.random.key(0), network=state.config.network)
    np.testing.assert_allclose(np.asarray(acted), np.asarray(expected), rtol=1e-6, atol=1e-6)


def test_shared_encoder_actor_loss_gradients_never_reach_the_encoder(rng):
    state = _shared_state()
    actor, critic = networks.make_networks(state.config.network)
    batch = random_batch(rng)
    critic_grads = jax.grad(td3.actor_loss, argnums=1, has_aux=True)(
        state.actor_params, state.critic_params, actor, critic, batch
    )[0]
    assert all(float(jnp.max(jnp.abs(g))) == 0.0 for g in jax.tree.leaves(critic_grads["encoder"]))
    # The full update: an actor step leaves the encoder exactly where the critic step put it.
    with_actor, metrics_a = td3.update(state, batch)
    without_actor, metrics_b = td3.update(state.replace(step=jnp.int32(1)), batch)
    assert float(metrics_a["debug/actor_updated"]) == 1.0 and float(metrics_b["debug/actor_updated"]) == 0.0
    chex.assert_trees_all_equal(with_actor.critic_params, without_actor.critic_params)
    assert _tree_changed(with_actor.actor_params, state.actor_params)
    assert float(metrics_a["debug/actor_cnn_grad_norm_BEFORE_clip"]) == 0.0
    assert float(metrics_a["agent/actor_cnn_lr"]) == float(metrics_a["agent/actor_cnn_param_norm"]) == 0.0


def test_shared_encoder_actor_loss_is_minus_q1_on_the_critics_features(rng):
    state = _shared_state(actor_preactivation_l2=0.5)
    actor, critic = networks.make_networks(state.config.network)
    batch = random_batch(rng)
    loss, (q1, action, preactivation, _) = td3.actor_loss(
        state.actor_params, state.critic_params, actor, critic, batch, 0.5
    )
    features = critic.apply({"params": state.critic_params}, batch.image, method=critic.features)
    u = actor.apply({"params": state.actor_params}, features, batch.vector, method=actor.head_preactivation)
    reference_q1, _ = critic.apply({"params": state.critic_params}, batch.image, batch.vector, jnp.tanh(u))
    np.testing.assert_allclose(np.asarray(q1), np.asarray(reference_q1), rtol=1e-5, atol=1e-6)
    expected = -jnp.mean(reference_q1) + 0.5 * jnp.mean(jnp.square(u))
    np.testing.assert_allclose(float(loss), float(expected), rtol=1e-5, atol=1e-6)


def test_shared_encoder_target_actor_reads_the_target_critics_encoder(rng):
    """With zero smoothing noise the target action is the target head on the *target* encoder's features."""
    state = _shared_state(policy_noise=0.0)
    # Move the target encoder away from the online one: only the target's may enter y.
    state = state.replace(
        critic_target_params=dict(
            state.critic_target_params,
            encoder=jax.tree.map(lambda x: x * 1.5 + 0.01, state.critic_target_params["encoder"]),
        )
    )
    actor, critic = networks.make_networks(state.config.network)
    batch = random_batch(rng)
    y = td3.td_target(state.config, actor, critic, state, batch, jax.random.key(3))
    target_policy = {**state.actor_target_params, "encoder": state.critic_target_params["encoder"]}
    next_action = actor.apply({"params": target_policy}, batch.next_image, batch.next_vector)
    q1, q2 = critic.apply({"params": state.critic_target_params}, batch.next_image, batch.next_vector, next_action)
    expected = batch.reward + state.config.discount * (1.0 - batch.terminated) * jnp.minimum(q1, q2)
    np.testing.assert_allclose(np.asarray(y), np.asarray(expected), rtol=1e-5, atol=1e-5)


def test_shared_encoder_update_many_equals_sequential_updates(rng):
    state = _shared_state()
    batches = [random_batch(rng) for _ in range(3)]
    sequential = state
    for batch in batches:
        sequential, _ = td3.update(sequential, batch)
    fused, _ = td3.update_many(state, jax.tree.map(lambda *xs: np.stack(xs), *batches))
    chex.assert_trees_all_close(fused, sequential, rtol=1e-4, atol=1e-5)


# --- temporal smoothness (CAPS): the actor loss penalises mu(s) - mu(s') ---


@pytest.mark.parametrize("shared", [False, True])
def test_smoothness_adds_the_scaled_action_change_with_mean_abs_q_held_constant(rng, shared):
    state = _shared_state() if shared else _state()
    actor, critic = networks.make_networks(state.config.network)
    batch = random_batch(rng)

    def reference(actor_params, q_scale):
        params = {**actor_params, "encoder": state.critic_params["encoder"]} if shared else actor_params
        action = actor.apply({"params": params}, batch.image, batch.vector)
        next_action = actor.apply({"params": params}, batch.next_image, batch.next_vector)
        q1, _ = critic.apply({"params": state.critic_params}, batch.image, batch.vector, action)
        change = jnp.mean(jnp.sum(jnp.square(action - next_action), axis=-1))
        return -jnp.mean(q1) + 0.7 * q_scale * change, (q1, change)

    loss_fn = functools.partial(
        td3.actor_loss, critic_params=state.critic_params, actor=actor, critic=critic, batch=batch, smoothness=0.7
    )
    (loss, (q1, _, _, change)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.actor_params)
    q_scale = jnp.mean(jnp.abs(q1))
    (expected, (_, expected_change)), expected_grads = jax.value_and_grad(reference, has_aux=True)(
        state.actor_params, q_scale
    )
    assert float(change) > 0
    np.testing.assert_allclose(float(change), float(expected_change), rtol=1e-5)
    np.testing.assert_allclose(float(loss), float(expected), rtol=1e-5, atol=1e-6)
    # mean|Q1| is a constant of the step: the gradient is that of the reference with it fixed.
    chex.assert_trees_all_close(grads, expected_grads, rtol=1e-4, atol=1e-6)


def test_smoothness_off_is_plain_td3_and_on_reports_the_action_change(rng):
    batch = random_batch(rng)
    plain_state, plain_metrics = td3.update(_state(), batch)
    assert "debug/actor_action_change" not in plain_metrics
    off_state, _ = td3.update(_state(tiny_config(actor_smoothness=0.0)), batch)
    chex.assert_trees_all_equal(off_state.actor_params, plain_state.actor_params)
    on_state, on_metrics = td3.update(_state(tiny_config(actor_smoothness=5.0)), batch)
    assert float(on_metrics["debug/actor_action_change"]) > 0
    assert float(on_metrics["debug/all_finite"]) == 1.0
    chex.assert_trees_all_equal(on_state.critic_params, plain_state.critic_params)  # the critic step is untouched
    assert _tree_changed(on_state.actor_params, plain_state.actor_params)


@pytest.mark.parametrize("shared", [False, True], ids=["separate", "shared"])
def test_target_policy_params_act_as_the_td_targets_target_actor(rng, shared):
    """`policy_params(state, policy="target")` is the policy the TD target bootstraps with: the target actor,
    on the target critic's encoder when the encoder is shared; after updates it differs from the online one."""
    state = _shared_state() if shared else _state()
    for _ in range(4):
        state, _ = td3.update(state, random_batch(rng))
    actor, _ = networks.make_networks(state.config.network)
    batch = random_batch(rng)
    target_policy = dict(state.actor_target_params)
    if shared:
        target_policy["encoder"] = state.critic_target_params["encoder"]
    expected = actor.apply({"params": target_policy}, batch.next_image, batch.next_vector)
    act = functools.partial(td3.act, image=batch.next_image, vector=batch.next_vector, key=jax.random.key(0),
                            network=state.config.network)
    np.testing.assert_allclose(np.asarray(act(td3.policy_params(state, policy="target"))), np.asarray(expected),
                               rtol=1e-6, atol=1e-6)
    assert _tree_changed(td3.policy_params(state, policy="target"), td3.policy_params(state))


@pytest.mark.parametrize("shared", [False, True], ids=["separate", "shared"])
def test_the_policy_average_is_a_polyak_average_of_the_online_policy_on_the_targets_schedule(rng, shared):
    """A reference: after every update on the targets' schedule (step % policy_freq == 0) the average moves
    tau_avg of the way to the online policy (with the critic's encoder when shared), between them it stays;
    it starts as the initial policy and is none of the online, the target policy."""
    tau = 0.3
    overrides = dict(policy_average_tau=tau, actor_warmup_updates=2)
    state = _shared_state(**overrides) if shared else _state(tiny_config(**overrides))
    chex.assert_trees_all_equal(td3.policy_params(state, policy="average"), td3.policy_params(state))
    expected = td3.policy_params(state)
    for _ in range(6):
        moves = int(state.step) % state.config.policy_freq == 0
        state, _ = td3.update(state, random_batch(rng))
        if moves:
            expected = jax.tree.map(lambda avg, new: (1 - tau) * avg + tau * new, expected, td3.policy_params(state))
        chex.assert_trees_all_close(td3.policy_params(state, policy="average"), expected, rtol=1e-6, atol=1e-7)
    assert _tree_changed(td3.policy_params(state, policy="average"), td3.policy_params(state))
    assert _tree_changed(td3.policy_params(state, policy="average"), td3.policy_params(state, policy="target"))


def test_the_policy_average_never_feeds_back_into_learning(rng):
    """The same updates with and without the average: every other part of the state is bit for bit the same."""
    batches = [random_batch(rng) for _ in range(5)]
    plain, averaged = _state(), _state(tiny_config(policy_average_tau=0.1))
    for batch in batches:
        (plain, plain_metrics), (averaged, averaged_metrics) = td3.update(plain, batch), td3.update(averaged, batch)
        chex.assert_trees_all_equal(plain_metrics, averaged_metrics)
    assert plain.policy_average_params is None
    chex.assert_trees_all_equal(plain.replace(config=averaged.config, policy_average_params=None),
                                averaged.replace(policy_average_params=None))


def test_policy_params_names_a_missing_average_and_an_unknown_policy():
    with pytest.raises(ValueError, match="policy_average_tau is 0"):
        td3.policy_params(_state(), policy="average")
    with pytest.raises(ValueError, match="online, target, average"):
        td3.policy_params(_state(), policy="best")
