"""Actor and critic networks (Flax linen), each with its own image encoder.

Geometry follows the Nature-DQN encoder of the original system: conv 8x8/4 -> 32,
4x4/2 -> 64, 3x3/1 -> 64 (VALID padding: 84 -> 20 -> 9 -> 7), dense -> 512. Each
layer is optionally followed by LayerNorm over (H, W, C) jointly with a
per-element scale and bias, as the original's latest version, then the
activation. Frames enter as uint8 NHWC and are scaled inside the network to
[-1, 1], so only uint8 crosses the host-device boundary.

Each network computes its own features from the observation, unless
`NetworkConfig.shared_encoder`: then the actor has no encoder of its own and reads
the critic's features (DrQ-v2; `td3.policy_params` assembles what `act` needs). The critic's
`q1_value` takes features the caller computed with the *critic's* encoder; the
actor loss puts them under `stop_gradient` (see td3.py). Parameter trees:
  actor:  {"encoder": ..., "trunk": ..., "head": ...}  (no "encoder" when shared)
  critic: {"encoder": ..., "trunk": ..., "q1": ..., "q2": ...}  (each q: {"value": ..., "advantage": ...}
          with `NetworkConfig.critic_dueling`)
The "encoder" subtree is the optimizer's "cnn" group, the rest is "mlp".

Deliberate deviations from the original: biases start at zero; the dense
layers' weights use torch's default U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from td3_jax.core import conv
from td3_jax.core.hparams import EncoderConfig, NetworkConfig

# (features, kernel, stride) of the three Nature-DQN convolutions.
CONV_LAYERS: tuple[tuple[int, int, int], ...] = ((32, 8, 4), (64, 4, 2), (64, 3, 1))
LEAKY_RELU_SLOPE = 0.01
LAYER_NORM_EPSILON = 1e-5  # torch's LayerNorm default, as in the original

_conv_kernel_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")  # Kaiming, fan_out
_dense_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")  # torch default


def _activation(name: str):
    if name == "relu":
        return nn.relu
    if name == "leaky_relu":
        return lambda x: nn.leaky_relu(x, LEAKY_RELU_SLOPE)
    raise ValueError(f"unknown activation {name!r}; use 'relu' or 'leaky_relu'")


class Conv2D(nn.Module):
    """VALID, strided 2-D convolution whose implementation is chosen by `impl`.

    The parameters (HWIO kernel, bias) are the same for every implementation,
    so a checkpoint moves freely between CPU and GPU paths.
    """

    features: int
    kernel_size: int
    stride: int
    impl: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Computes in `x`'s dtype; the parameters are float32 and cast to it."""
        in_features = x.shape[-1]
        kernel = self.param(
            "kernel", _conv_kernel_init, (self.kernel_size, self.kernel_size, in_features, self.features)
        )
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,))
        return conv.conv2d(x, kernel.astype(x.dtype), self.stride, self.impl) + bias.astype(x.dtype)


class Encoder(nn.Module):
    """uint8 frames (B, H, W, S) -> features (B, config.features) float32.

    With `compute_dtype` bfloat16 the layers compute in bfloat16 from float32
    parameters (mixed precision); flax's LayerNorm takes its statistics in float32.
    """

    config: EncoderConfig

    @nn.compact
    def __call__(self, image: jax.Array) -> jax.Array:
        activation = _activation(self.config.activation)
        dtype = jnp.dtype(self.config.compute_dtype)
        x = image.astype(dtype) / 127.5 - 1.0  # ((x / 255) - 0.5) / 0.5; 0..255 are exact in bfloat16
        for features, kernel, stride in CONV_LAYERS:
            x = Conv2D(features, kernel, stride, self.config.conv_impl)(x)
            if self.config.layer_norm:
                x = nn.LayerNorm(
                    epsilon=LAYER_NORM_EPSILON, reduction_axes=(-3, -2, -1), feature_axes=(-3, -2, -1), dtype=dtype
                )(x)
            x = activation(x)
        x = x.reshape(x.shape[0], -1)
        x = nn.Dense(self.config.features, kernel_init=_dense_kernel_init, dtype=dtype)(x)
        if self.config.layer_norm:
            x = nn.LayerNorm(epsilon=LAYER_NORM_EPSILON, dtype=dtype)(x)
        return activation(x).astype(jnp.float32)


class MLP(nn.Module):
    """Dense layers with ReLU between them; the last layer is linear."""

    hidden: Sequence[int]
    out: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for width in self.hidden:
            x = nn.relu(nn.Dense(width, kernel_init=_dense_kernel_init)(x))
        return nn.Dense(self.out, kernel_init=_dense_kernel_init)(x)


class DuelingQ(nn.Module):
    """Q(h, a) = V(h) + A(h, a) - A(h, 0) over x = [h, a]: a value and an advantage stream (Wang et al., 2016).

    The advantage is zero at the zero action (straight ahead, neither throttle nor brake) in every
    state, so V is the value of that action and the advantage stream holds only how Q varies with
    the action: a steering preference worth a few units is no longer a small part of one output
    that also carries the state's value (~500 in the driving recipe).
    """

    hidden: Sequence[int]
    action_dim: int
    out: int = 1

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        head_input = x[..., : -self.action_dim]
        advantage = MLP(self.hidden, self.out, name="advantage")
        at_zero = jnp.concatenate([head_input, jnp.zeros_like(x[..., -self.action_dim:])], axis=-1)
        return MLP(self.hidden, self.out, name="value")(head_input) + advantage(x) - advantage(at_zero)


class Trunk(nn.Module):
    """Dense + LayerNorm + tanh: squeezes the encoder features (and the vector) to a few bounded features (DrQ-v2).

    Without it the action is 2 of the Q head's 567 inputs, and the head stays close to linear in
    the action for thousands of updates; the actor then runs to a corner of the action box.
    With `width` 0 it is the identity on [features, vector] (the original architecture). With
    `vector_after` the vector skips the squeeze and joins its output unchanged: inside, the driving
    vector's 55 entries are a tenth of the Dense's inputs and reach the head only through the
    LayerNorm shared with the 512 image features.
    """

    width: int
    vector_after: bool = False

    @nn.compact
    def __call__(self, features: jax.Array, vector: jax.Array) -> jax.Array:
        if not self.width:
            return jnp.concatenate([features, vector], axis=-1)
        x = features if self.vector_after else jnp.concatenate([features, vector], axis=-1)
        x = nn.Dense(self.width, kernel_init=_dense_kernel_init)(x)
        x = jnp.tanh(nn.LayerNorm(epsilon=LAYER_NORM_EPSILON)(x))
        return jnp.concatenate([x, vector], axis=-1) if self.vector_after else x


class Actor(nn.Module):
    """Deterministic policy mu(image, vector) -> action in [-1, 1]^action_dim."""

    config: NetworkConfig

    def setup(self):
        self.encoder = Encoder(self.config.encoder)
        self.trunk = Trunk(self.config.actor_trunk, self.config.actor_vector_after_trunk)
        self.head = MLP(self.config.actor_hidden, self.config.action_dim)

    def __call__(self, image: jax.Array, vector: jax.Array) -> jax.Array:
        return jnp.tanh(self.preactivation(image, vector))

    def preactivation(self, image: jax.Array, vector: jax.Array) -> jax.Array:
        """The head's output before tanh (what a saturation penalty acts on)."""
        return self.head_preactivation(self.encoder(image), vector)

    def head_preactivation(self, features: jax.Array, vector: jax.Array) -> jax.Array:
        """`preactivation` from encoder features computed elsewhere (the critic's, when shared)."""
        return self.head(self.trunk(features, vector))


class Critic(nn.Module):
    """Twin Q heads over the critic's own encoder features.

    `__call__` runs the encoder; `features` and `q_values`/`q1_value` let the update
    compute the encoder pass once and reuse it. With `config.critic_reward_components` C > 0
    each head outputs one Q per reward component (`q_components`, (B, C)), and Q is their
    sum; `__call__`, `q_values` and `q1_value` return that sum.
    """

    config: NetworkConfig

    def setup(self):
        self.encoder = Encoder(self.config.encoder)
        self.trunk = Trunk(self.config.critic_trunk, self.config.critic_vector_after_trunk)
        outputs = max(1, self.config.critic_reward_components)

        def q_head():
            if self.config.critic_dueling:
                return DuelingQ(self.config.critic_hidden, self.config.action_dim, outputs)
            return MLP(self.config.critic_hidden, outputs)

        self.q1, self.q2 = q_head(), q_head()

    def __call__(self, image: jax.Array, vector: jax.Array, action: jax.Array) -> tuple[jax.Array, jax.Array]:
        return self.q_values(self.encoder(image), vector, action)

    def features(self, image: jax.Array) -> jax.Array:
        return self.encoder(image)

    def q_values(self, features: jax.Array, vector: jax.Array, action: jax.Array) -> tuple[jax.Array, jax.Array]:
        q1, q2 = self.q_components(features, vector, action)
        return q_total(q1), q_total(q2)

    def q1_value(self, features: jax.Array, vector: jax.Array, action: jax.Array) -> jax.Array:
        return q_total(self._components(self.q1(self._head_input(features, vector, action))))

    def q_components(self, features: jax.Array, vector: jax.Array, action: jax.Array) -> tuple[jax.Array, jax.Array]:
        """The twin heads' outputs: (B, C) per reward component, or (B,) with one Q of the whole reward."""
        x = self._head_input(features, vector, action)
        return self._components(self.q1(x)), self._components(self.q2(x))

    def _components(self, head_output: jax.Array) -> jax.Array:
        return head_output if self.config.critic_reward_components else head_output[..., 0]

    def _head_input(self, features: jax.Array, vector: jax.Array, action: jax.Array) -> jax.Array:
        return jnp.concatenate([self.trunk(features, vector), action], axis=-1)


def q_total(q: jax.Array) -> jax.Array:
    """Q (or a target, or a reward) of the whole reward: (B,) as it is, (B, C) per component summed."""
    return q if q.ndim == 1 else jnp.sum(q, axis=-1)


def make_networks(config: NetworkConfig) -> tuple[Actor, Critic]:
    """The actor and critic modules for `config`."""
    return Actor(config), Critic(config)


def param_labels(params) -> dict:
    """Labels each leaf 'cnn' (under the top-level "encoder" key) or 'mlp'.

    Used by the optimizer partition and by the per-group metrics.
    """
    return {
        name: jax.tree.map(lambda _: "cnn" if name == "encoder" else "mlp", subtree)
        for name, subtree in params.items()
    }


def init_params(config: NetworkConfig, key: jax.Array, image_shape: tuple[int, ...], vector_dim: int):
    """Initial (actor_params, critic_params) for observations of these shapes.

    Args:
      config: the architecture.
      key: PRNG key.
      image_shape: (H, W, S) of one observation's frame stack.
      vector_dim: length of the vector state.
    """
    actor, critic = make_networks(config)
    image = jnp.zeros((1, *image_shape), jnp.uint8)
    vector = jnp.zeros((1, vector_dim), jnp.float32)
    action = jnp.zeros((1, config.action_dim), jnp.float32)
    actor_key, critic_key = jax.random.split(key)
    if config.shared_encoder:
        # The actor owns no encoder: `td3.policy_params` lends it the critic's to act.
        features = jnp.zeros((1, config.encoder.features), jnp.float32)
        actor_params = actor.init(actor_key, features, vector, method=actor.head_preactivation)["params"]
    else:
        actor_params = actor.init(actor_key, image, vector)["params"]
    critic_params = critic.init(critic_key, image, vector, action)["params"]
    return actor_params, critic_params
