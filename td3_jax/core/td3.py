"""The TD3 update as one pure, jit-compiled function.

TD3: Fujimoto, van Hoof, Meger, "Addressing Function Approximation Error in
Actor-Critic Methods", ICML 2018 (arXiv 1802.09477): twin critics with a
min-target, target-policy smoothing, a delayed actor, Polyak targets.

    update(state, batch) -> (state, metrics)

1. Target: y = r + gamma * (1 - terminated) * min(Q1', Q2')(s', a'), where
   a' = clip(mu'(s') + clip(N(0, policy_noise), +-noise_clip), -1, 1). The
   target networks include their encoders (the original had no target CNNs).
2. Critic: one encoder pass on s, twin MSE (or Huber) to y, one optax step (global clip,
   Adam per group).
3. Every `policy_freq` steps (decided inside the jit from `state.step`):
   actor loss = -mean Q1(stop_gradient(critic_features(s)), v, mu(s)), a
   gradient w.r.t. the actor's parameters only. The critic sees its own
   features; the actor moves Q only through its action. (The original fed the
   actor CNN's features into the critic's state input and its actor loss
   exploded.) Then Polyak-average every target parameter with tau, as in
   Fujimoto's code: targets move on actor steps.

Options, all off by default (plain TD3):
- `actor_warmup_updates`: the first N updates train only the critic (its
  target still moves every `policy_freq` steps), so the actor does not chase
  a critic that has not yet seen what staying on the road is worth;
- `image_shift_px`: s and s' are randomly shifted first (DrQ, `augment`);
- `network.shared_encoder` (DrQ-v2): the actor owns no encoder; its head reads
  the critic's detached features, the target actor the target critic's, and
  the one encoder is trained by the critic loss and Polyak-averaged once;
- `actor_reuses_critic_features` (DrQ-v2): the actor step reads the critic
  features computed before the critic step instead of a fresh pass.
- `actor_smoothness` (CAPS, Mysore et al., ICRA 2021): the actor loss also
  penalises the change of mu between s and s', scaled by mean |Q1|.
- `network.critic_reward_components` C > 0 (a reward-decomposed critic, van Seijen et al.,
  "Hybrid Reward Architecture", NeurIPS 2017): `batch.reward` holds the reward's C components,
  each Q head outputs one Q per component, each regressed on its own component's target, and
  the actor maximises their sum. The min of the twins picks, per transition, the twin whose
  summed Q' is smaller and takes all its components, so the summed target is TD3's.
- `critic_huber_delta` > 0: the critics regress with a Huber loss (squared error within
  delta of the target, linear beyond), so the batch's largest TD errors stop setting the
  direction of every (clipped) critic step.
- `policy_average_tau`: a slow Polyak average of the policy's parameters,
  moved with the targets and read only to act (`policy_params(state,
  policy="average")`); nothing in the update reads it.

Metric keys are the TensorBoard tags (docs/metrics.md). Every key is present
on every step; actor metrics are NaN on steps without an actor update and
`debug/actor_updated` says which steps had one.

Deliberate choices: by default the actor loss uses the critic *after* this
step's update (as Fujimoto's code does), which costs one forward pass of the
critic encoder on actor steps; the state is not donated, so callers may keep it.
"""

from __future__ import annotations

import functools

import flax.struct
import jax
import jax.numpy as jnp
import optax

from td3_jax.core import augment

from td3_jax.core import networks

from td3_jax.core import optim
from td3_jax.core.hparams import POLICIES, NetworkConfig, TD3Config
from td3_jax.core.types import Batch, Metrics, PackedBatch, Params, unpack

SATURATION_THRESHOLD = 0.99  # |action| above this counts as saturated


class TD3State(flax.struct.PyTreeNode):
    """Everything that changes during training, as one pytree.

    `config` is static (part of the tree structure), so the jitted update
    compiles once per config and never for a new step or key.
    """

    actor_params: Params
    critic_params: Params
    actor_target_params: Params
    critic_target_params: Params
    actor_opt_state: optax.OptState
    critic_opt_state: optax.OptState
    step: jax.Array  # int32 scalar: number of updates done so far
    key: jax.Array  # uint32 raw key data (checkpointable), see jax.random.key_data
    # The slow average of `policy_params(state)` (config.policy_average_tau); None when it is 0.
    policy_average_params: Params | None = None
    config: TD3Config = flax.struct.field(pytree_node=False, default=TD3Config())


def _optimizers(config: TD3Config) -> tuple[optax.GradientTransformation, optax.GradientTransformation]:
    return (
        optim.make_optimizer(config.actor_optimizer, networks.param_labels),
        optim.make_optimizer(config.critic_optimizer, networks.param_labels),
    )


def init_state(
    config: TD3Config,
    key: jax.Array,
    *,
    image_shape: tuple[int, int, int] = (84, 84, 4),
    vector_dim: int = 53,
) -> TD3State:
    """A fresh training state.

    Args:
      config: network, optimizer and TD3 hyperparameters.
      key: a PRNG key (typed `jax.random.key` or legacy uint32 `PRNGKey`).
      image_shape: (H, W, S) of one observation's frame stack.
      vector_dim: length of the observation's vector state.
    """
    if not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.wrap_key_data(key)
    init_key, state_key = jax.random.split(key)
    actor_params, critic_params = networks.init_params(config.network, init_key, image_shape, vector_dim)
    actor_tx, critic_tx = _optimizers(config)
    copy = lambda tree: jax.tree.map(jnp.copy, tree)  # real copies: targets never alias online params
    average = copy(_policy_tree(config, actor_params, critic_params)) if config.policy_average_tau else None
    return TD3State(
        actor_params=actor_params,
        critic_params=critic_params,
        actor_target_params=copy(actor_params),
        critic_target_params=copy(critic_params),
        actor_opt_state=actor_tx.init(actor_params),
        critic_opt_state=critic_tx.init(critic_params),
        step=jnp.zeros((), jnp.int32),
        key=jax.random.key_data(state_key),
        policy_average_params=average,
        config=config,
    )


def td_target(
    config: TD3Config, actor: networks.Actor, critic: networks.Critic, state: TD3State, batch: Batch, key: jax.Array
) -> jax.Array:
    """y = r + gamma (1 - terminated) min(Q1', Q2')(s', a') with a smoothed target action.

    For k-step transitions (`batch.discount` set) r is the discounted k-step reward sum, s' the
    state k steps later, and gamma^k comes per transition from the batch. With per-component
    heads y is (B, C): each component's target from that reward component and the components
    of the twin whose summed Q' is smaller.
    """
    target_params = {"params": state.critic_target_params}
    if config.network.shared_encoder:
        # One target encoder pass serves the target actor and the target critic.
        next_features = critic.apply(target_params, batch.next_image, method=critic.features)
        next_action = jnp.tanh(
            actor.apply(
                {"params": state.actor_target_params}, next_features, batch.next_vector,
                method=actor.head_preactivation,
            )
        )
    else:
        next_action = actor.apply({"params": state.actor_target_params}, batch.next_image, batch.next_vector)
    noise = jnp.clip(
        config.policy_noise * jax.random.normal(key, next_action.shape), -config.noise_clip, config.noise_clip
    )
    next_action = jnp.clip(next_action + noise, -1.0, 1.0)
    if not config.network.shared_encoder:
        next_features = critic.apply(target_params, batch.next_image, method=critic.features)
    next_q1, next_q2 = critic.apply(
        target_params, next_features, batch.next_vector, next_action, method=critic.q_components
    )
    discount = config.discount if batch.discount is None else batch.discount
    bootstrap = discount * (1.0 - batch.terminated)
    if next_q1.ndim == 1:
        return batch.reward + bootstrap * jnp.minimum(next_q1, next_q2)
    lower = (networks.q_total(next_q1) <= networks.q_total(next_q2))[:, None]
    return batch.reward + bootstrap[:, None] * jnp.where(lower, next_q1, next_q2)


def critic_loss(
    critic_params: Params, critic: networks.Critic, batch: Batch, target: jax.Array, huber_delta: float = 0.0
):
    """Twin MSE (or Huber) to the (constant) TD target; returns (loss, (q1, q2, features)) with q1, q2 the whole Q.

    With per-component heads each component is regressed on its own target and the squared
    errors are summed over the components (each is a regression of its own). `huber_delta` > 0
    replaces each squared error e^2 by its Huber continuation: e^2 for |e| <= delta, 2 delta |e| -
    delta^2 beyond, so that a few transitions with large errors (crashes, departures) no longer set
    the direction of a critic step that the global-norm clip has made direction-only.
    """
    params = {"params": critic_params}
    features = critic.apply(params, batch.image, method=critic.features)
    q1, q2 = critic.apply(params, features, batch.vector, batch.action, method=critic.q_components)
    target = jax.lax.stop_gradient(target)
    loss = _regression_loss(q1, target, huber_delta) + _regression_loss(q2, target, huber_delta)
    return loss, (networks.q_total(q1), networks.q_total(q2), features)


def _regression_loss(q: jax.Array, target: jax.Array, huber_delta: float) -> jax.Array:
    """Mean over the batch of the squared (or Huber) error, summed over the components when there are any."""
    if huber_delta:
        # optax's Huber is 0.5 e^2 inside delta: twice it is the squared error there.
        error = 2.0 * optax.losses.huber_loss(q, target, delta=huber_delta)
    else:
        error = jnp.square(q - target)
    return jnp.mean(error if q.ndim == 1 else jnp.sum(error, axis=-1))


def actor_loss(
    actor_params: Params,
    critic_params: Params,
    actor: networks.Actor,
    critic: networks.Critic,
    batch: Batch,
    preactivation_l2: float = 0.0,
    critic_features: jax.Array | None = None,
    smoothness: float = 0.0,
):
    """-mean Q1(stop_gradient(critic features), v, mu(s)) + l2 mean(u^2) [+ smoothness]; returns (loss, (q1, action, u, change)).

    Differentiate with respect to `actor_params` only: the critic's features
    and parameters are constants here, so the actor reaches Q only through
    the action it outputs. With a shared encoder the actor's head reads the same
    detached features, so the actor loss never trains the encoder.
    `critic_features` given (features of `batch.image` computed earlier, e.g.
    before this update's critic step) saves the critic encoder's pass. u is the actor's pre-tanh output: once tanh
    saturates, dQ/du vanishes and only the penalty can pull the policy back
    (a saturated corner policy is how the original system's runs ended).
    `smoothness` > 0 adds smoothness * mean|Q1| * change (CAPS' temporal term), where change =
    mean ||mu(s) - mu(s')||^2 over the batch (returned as 0 when off) and mean|Q1| is held constant;
    it costs one more encoder pass, on s'.
    """
    critic_vars = {"params": critic_params}
    if critic_features is None:
        critic_features = critic.apply(critic_vars, batch.image, method=critic.features)
    features = jax.lax.stop_gradient(critic_features)
    if actor.config.shared_encoder:
        preactivation = actor.apply({"params": actor_params}, features, batch.vector, method=actor.head_preactivation)
    else:
        preactivation = actor.apply({"params": actor_params}, batch.image, batch.vector, method=actor.preactivation)
    action = jnp.tanh(preactivation)
    q1 = critic.apply(critic_vars, features, batch.vector, action, method=critic.q1_value)
    loss = -jnp.mean(q1) + preactivation_l2 * jnp.mean(jnp.square(preactivation))
    change = jnp.zeros((), loss.dtype)
    if smoothness:
        if actor.config.shared_encoder:
            next_features = jax.lax.stop_gradient(critic.apply(critic_vars, batch.next_image, method=critic.features))
            next_preactivation = actor.apply(
                {"params": actor_params}, next_features, batch.next_vector, method=actor.head_preactivation
            )
        else:
            next_preactivation = actor.apply(
                {"params": actor_params}, batch.next_image, batch.next_vector, method=actor.preactivation
            )
        change = jnp.mean(jnp.sum(jnp.square(action - jnp.tanh(next_preactivation)), axis=-1))
        loss = loss + smoothness * jax.lax.stop_gradient(jnp.mean(jnp.abs(q1))) * change
    return loss, (q1, action, preactivation, change)


def _gradient_metrics(prefix: str, opt_state, params, new_params, max_norm: float) -> dict[str, jax.Array]:
    """Norms of the gradient before and after the chain's clip, and of the applied update."""
    before, after = optim.clip_norms(opt_state)
    labels = networks.param_labels(params)
    update_norm = optim.group_norms(jax.tree.map(jnp.subtract, new_params, params), labels)["total"]
    metrics = {
        f"debug/{prefix}_grad_norm_BEFORE_clip": before["total"],
        f"debug/{prefix}_grad_norm_AFTER_clip": after["total"],
        f"debug/{prefix}_grad_clip_ratio": jnp.minimum(1.0, max_norm / before["total"]),
        f"agent/{prefix}_update_norm": update_norm,
    }
    for group in optim.GROUPS:
        metrics[f"debug/{prefix}_{group}_grad_norm_BEFORE_clip"] = before[group]
        metrics[f"debug/{prefix}_{group}_grad_norm_AFTER_clip"] = after[group]
    return metrics


def _parameter_metrics(prefix: str, params, opt_state) -> dict[str, jax.Array]:
    """Current parameter norms and applied learning rates per group (valid every step)."""
    labels = networks.param_labels(params)
    param_norms = optim.group_norms(params, labels)
    lrs = optim.learning_rates(opt_state)
    present = set(jax.tree.leaves(labels))
    metrics = {}
    for group in optim.GROUPS:
        metrics[f"agent/{prefix}_{group}_param_norm"] = param_norms[group]
        # A group without parameters (the actor's encoder when it is shared) trains at rate 0.
        metrics[f"agent/{prefix}_{group}_lr"] = lrs[group] if group in present else jnp.zeros_like(lrs[group])
    return metrics


def _update(state: TD3State, batch: Batch | PackedBatch) -> tuple[TD3State, Metrics]:
    config = state.config
    batch = unpack(batch)
    actor, critic = networks.make_networks(config.network)
    actor_tx, critic_tx = _optimizers(config)
    key, noise_key = jax.random.split(jax.random.wrap_key_data(state.key))
    if config.image_shift_px:
        # Every network of this update sees the same shifted stacks (DrQ).
        key, shift_key = jax.random.split(key)
        batch = augment.shift_batch(shift_key, batch, config.image_shift_px)

    # Critic step, every update.
    target = td_target(config, actor, critic, state, batch, noise_key)
    (loss, (q1, q2, critic_features)), critic_grads = jax.value_and_grad(critic_loss, has_aux=True)(
        state.critic_params, critic, batch, target, config.critic_huber_delta
    )
    updates, critic_opt_state = critic_tx.update(critic_grads, state.critic_opt_state, state.critic_params)
    critic_params = optax.apply_updates(state.critic_params, updates)
    target = networks.q_total(target)  # the whole reward's target, for the metrics
    td_error = jnp.abs(q1 - target)
    metrics = {
        "train/critic_loss": loss,
        "train/q1_value": jnp.mean(q1),
        "train/q2_value": jnp.mean(q2),
        "debug/q1_min": jnp.min(q1),
        "debug/q1_max": jnp.max(q1),
        "debug/q2_min": jnp.min(q2),
        "debug/q2_max": jnp.max(q2),
        "debug/target_q_mean": jnp.mean(target),
        "debug/target_q_max": jnp.max(target),
        "debug/td_error_q1": jnp.mean(td_error),
        "debug/reward_mean": jnp.mean(networks.q_total(batch.reward)),
        "debug/done_ratio": jnp.mean(batch.terminated),
    }
    metrics |= _gradient_metrics(
        "critic", critic_opt_state, state.critic_params, critic_params, config.critic_optimizer.max_grad_norm
    )

    # Delayed actor step and Polyak targets, every `policy_freq` updates (after any warm-up).
    is_policy_step = state.step % config.policy_freq == 0
    is_actor_step = is_policy_step & (state.step >= config.actor_warmup_updates)

    def actor_step(_):
        (loss, (policy_q1, action, preactivation, change)), actor_grads = jax.value_and_grad(actor_loss, has_aux=True)(
            state.actor_params, critic_params, actor, critic, batch, config.actor_preactivation_l2,
            critic_features if config.actor_reuses_critic_features else None, config.actor_smoothness,
        )
        updates, actor_opt_state = actor_tx.update(actor_grads, state.actor_opt_state, state.actor_params)
        actor_params = optax.apply_updates(state.actor_params, updates)
        actor_metrics = {
            "train/actor_loss": loss,
            "debug/actor_q_mean": jnp.mean(policy_q1),
            "debug/actor_q_max": jnp.max(policy_q1),
            "debug/action_saturation": jnp.mean(jnp.abs(action) > SATURATION_THRESHOLD).astype(jnp.float32),
            "debug/actor_preactivation_rms": jnp.sqrt(jnp.mean(jnp.square(preactivation))),
        }
        if config.actor_smoothness:
            actor_metrics["debug/actor_action_change"] = change
        actor_metrics |= _gradient_metrics(
            "actor", actor_opt_state, state.actor_params, actor_params, config.actor_optimizer.max_grad_norm
        )
        actor_target_params = optax.incremental_update(actor_params, state.actor_target_params, config.tau)
        return actor_params, actor_opt_state, actor_target_params, actor_metrics

    def no_actor_step(_):
        shapes = jax.eval_shape(actor_step, None)[3]
        nan_metrics = jax.tree.map(lambda s: jnp.full(s.shape, jnp.nan, s.dtype), shapes)
        return state.actor_params, state.actor_opt_state, state.actor_target_params, nan_metrics

    actor_params, actor_opt_state, actor_target_params, actor_metrics = jax.lax.cond(
        is_actor_step, actor_step, no_actor_step, None
    )
    # The critic target keeps its schedule during an actor warm-up, so the critic is not
    # regressing onto its initial weights.
    critic_target_params = jax.lax.cond(
        is_policy_step,
        lambda: optax.incremental_update(critic_params, state.critic_target_params, config.tau),
        lambda: state.critic_target_params,
    )
    policy_average_params = state.policy_average_params
    if config.policy_average_tau:
        policy_average_params = jax.lax.cond(
            is_policy_step,
            lambda: optax.incremental_update(
                _policy_tree(config, actor_params, critic_params), state.policy_average_params,
                config.policy_average_tau,
            ),
            lambda: state.policy_average_params,
        )
    metrics |= actor_metrics
    metrics |= _parameter_metrics("critic", critic_params, critic_opt_state)
    metrics |= _parameter_metrics("actor", actor_params, actor_opt_state)
    metrics["debug/actor_updated"] = is_actor_step.astype(jnp.float32)

    new_state = state.replace(
        actor_params=actor_params,
        critic_params=critic_params,
        actor_target_params=actor_target_params,
        critic_target_params=critic_target_params,
        actor_opt_state=actor_opt_state,
        critic_opt_state=critic_opt_state,
        step=state.step + 1,
        key=jax.random.key_data(key),
        policy_average_params=policy_average_params,
    )
    # Finite losses, gradient norms and parameter norms imply finite parameters.
    all_finite = lambda values: jnp.all(jnp.isfinite(jnp.stack(jax.tree.leaves(values))))
    critic_finite = all_finite({k: v for k, v in metrics.items() if k not in actor_metrics})
    actor_finite = jnp.logical_or(~is_actor_step, all_finite(actor_metrics))
    metrics["debug/all_finite"] = (critic_finite & actor_finite).astype(jnp.float32)
    return new_state, metrics


update = jax.jit(_update)
update.__doc__ = """One TD3 update: (state, batch) -> (new_state, metrics). Jitted, pure.

Args:
  state: a `TD3State` (not consumed; it stays valid).
  batch: a `Batch` or `PackedBatch` of device or NumPy arrays.

Returns:
  The new state and a dict of float32 scalars keyed by TensorBoard tag.
"""


@jax.jit
def update_many(state: TD3State, batches: Batch | PackedBatch) -> tuple[TD3State, Metrics]:
    """K updates in one call: `batches` has a leading axis K.

    Equals K `update` calls to float32 rounding (XLA fuses the scanned body
    differently). Returns the final state and metrics stacked along a leading K axis.
    """
    return jax.lax.scan(_update, state, batches)


def _policy_tree(config: TD3Config, actor_params: Params, critic_params: Params) -> Params:
    """What `act` takes: the actor's parameters, plus the critic's encoder when the encoder is shared."""
    if config.network.shared_encoder:
        return {**actor_params, "encoder": critic_params["encoder"]}
    return actor_params


def policy_params(state: TD3State, *, policy: str = "online") -> Params:
    """The parameters `act` takes for one of the state's policies.

    online: the actor being trained (with the critic's encoder when the encoder is shared). target:
    the target actor (the Polyak average of the actor's recent parameters), with the target critic's
    encoder when shared, the pair the TD target acts with. average: the slow Polyak average of the
    online policy (`config.policy_average_tau`, which must be > 0).
    """
    if policy == "online":
        return _policy_tree(state.config, state.actor_params, state.critic_params)
    if policy == "target":
        return _policy_tree(state.config, state.actor_target_params, state.critic_target_params)
    if policy == "average":
        if state.policy_average_params is None:
            raise ValueError("this state keeps no policy average (its policy_average_tau is 0)")
        return state.policy_average_params
    raise ValueError(f"policy must be one of {', '.join(POLICIES)}, got {policy!r}")


@functools.partial(jax.jit, static_argnames="network")
def act(
    actor_params: Params,
    image: jax.Array,
    vector: jax.Array,
    key: jax.Array,
    noise_scale: float | jax.Array = 0.0,
    *,
    network: NetworkConfig = NetworkConfig(),
) -> jax.Array:
    """Policy action with Gaussian exploration noise, clipped to [-1, 1].

    Args:
      actor_params: `policy_params(state)` (`state.actor_params` unless the encoder is shared).
      image: (B, H, W, S) uint8 frame stacks.
      vector: (B, V) float32 vector states.
      key: PRNG key for the noise.
      noise_scale: std of the Gaussian noise (traced: changing it never recompiles);
        0 gives the deterministic policy.
      network: the architecture (`state.config.network`).

    Returns:
      (B, action_dim) float32 actions.
    """
    actor = networks.Actor(network)
    action = actor.apply({"params": actor_params}, image, vector)
    noise = noise_scale * jax.random.normal(key, action.shape)
    return jnp.clip(action + noise, -1.0, 1.0)
