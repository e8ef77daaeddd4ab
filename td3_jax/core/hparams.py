"""Hyperparameters of the networks and of the TD3 update.

Frozen, hashable dataclasses: they are static arguments of the jitted update,
so changing one recompiles, while everything that moves during a run (step,
key, learning rates inside the optimizer state) is traced. YAML loading and
validation of user input live in `td3_jax.training.config`; this module only defines
the structures and their defaults.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

POLICIES = ("online", "target", "average")
"""The policies a train state can act with (`td3.policy_params`): the actor trained, its target, the slow average."""


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
    """The Nature-DQN image encoder shared in shape by actor and critic."""

    features: int = 512
    """Width of the encoder's output (dense layer after the three convs)."""
    layer_norm: bool = True
    """LayerNorm after every conv/dense layer (over C, H, W jointly, per-element affine)."""
    activation: Literal["relu", "leaky_relu"] = "leaky_relu"
    """Nonlinearity after each layer; leaky_relu uses slope 0.01."""
    conv_impl: Literal["auto", "xla", "matmul"] = "auto"
    """Convolution path (td3_jax.core.conv): xla = lax.conv; matmul = space-to-depth + matmul; auto = matmul on CPU."""
    compute_dtype: Literal["float32", "bfloat16"] = "float32"
    """Dtype of the encoder's convolutions and dense layer. bfloat16: parameters, gradients and optimizer
    state stay float32, LayerNorm statistics are computed in float32, and the features leave as float32."""


@dataclasses.dataclass(frozen=True)
class NetworkConfig:
    """Actor and critic architecture."""

    encoder: EncoderConfig = EncoderConfig()
    actor_hidden: tuple[int, ...] = (256, 256)
    """Hidden widths of the actor MLP head."""
    critic_hidden: tuple[int, ...] = (256, 256)
    """Hidden widths of each of the two Q heads."""
    actor_trunk: int = 0
    """Width of the actor's trunk (Dense + LayerNorm + tanh over [features, vector]); 0: none (the original)."""
    critic_trunk: int = 0
    """Width of the critic's trunk, shared by both Q heads, before the action joins; 0: none (the original)."""
    actor_vector_after_trunk: bool = False
    """The observation vector skips the actor's trunk and joins its output; False: it goes through it."""
    critic_vector_after_trunk: bool = False
    """The observation vector skips the critic's trunk and joins its output with the action; False: it goes
    through it."""
    critic_dueling: bool = False
    """Each Q head is V(h) + A(h, a) - A(h, 0), a value and an advantage MLP (`networks.DuelingQ`); False: one MLP
    over [h, a] (the original)."""
    critic_reward_components: int = 0
    """C > 0: each Q head outputs one Q per reward component and learns it from that component alone
    (`Batch.reward` is then (B, C)); Q is their sum. 0: one Q of the whole reward (plain TD3)."""
    action_dim: int = 2
    """Action size: (steer, throttle_brake)."""
    shared_encoder: bool = False
    """One image encoder, the critic's, trained by the critic loss only; the actor reads its features
    under stop_gradient and the target actor the target critic's (DrQ-v2). False: each network has its
    own encoder (the original)."""


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """One network's optimizer: global-norm clip, then Adam per parameter group."""

    max_grad_norm: float = 1.0
    """Global L2 norm the whole network's gradient is clipped to."""
    cnn_lr: float = 1e-4
    """Adam learning rate of the encoder ('cnn' group)."""
    mlp_lr: float = 3e-4
    """Adam learning rate of everything else ('mlp' group)."""
    weight_decay: float = 0.0
    """Coupled L2 (torch Adam style), added to the clipped gradient of both groups."""
    adam_eps: float = 1e-8
    """Adam's epsilon: gradients much smaller than it take proportionally smaller steps."""


@dataclasses.dataclass(frozen=True)
class TD3Config:
    """Everything the jitted update needs to know at compile time."""

    network: NetworkConfig = NetworkConfig()
    actor_optimizer: OptimizerConfig = OptimizerConfig(max_grad_norm=1.0)
    critic_optimizer: OptimizerConfig = OptimizerConfig(max_grad_norm=10.0)
    discount: float = 0.99
    """Discount factor gamma."""
    tau: float = 0.005
    """Polyak rate of all target parameters (encoders included)."""
    policy_noise: float = 0.2
    """Std of the target-policy smoothing noise (action units, max_action = 1)."""
    noise_clip: float = 0.5
    """Target-policy smoothing noise is clipped to [-noise_clip, noise_clip]."""
    policy_freq: int = 2
    """Actor and targets update when step % policy_freq == 0."""
    critic_huber_delta: float = 0.0
    """> 0: each critic regresses with a Huber loss, the squared error within delta of its target and linear
    beyond (its gradient 2 * error capped at +-2 delta), per reward component when there are any; 0: the
    squared error (plain TD3)."""
    actor_preactivation_l2: float = 0.0
    """Weight of mean(u^2) on the actor's pre-tanh outputs u in its loss; 0 is plain TD3."""
    actor_smoothness: float = 0.0
    """Weight of a temporal smoothness penalty in the actor's loss (CAPS, Mysore et al. 2021):
    actor_smoothness * mean|Q1| * mean ||mu(s) - mu(s')||^2 over the batch's transitions, s' the next
    observation (k steps later with k-step returns); mean|Q1| is a constant of the step, so the weight
    does not depend on the scale of the returns. 0 is plain TD3."""
    actor_warmup_updates: int = 0
    """Critic-only updates before the first actor update (the critic target still tracks); 0 is plain TD3."""
    image_shift_px: int = 0
    """Random-shift augmentation (DrQ) of s and s' by up to this many pixels per axis; 0 is plain TD3."""
    actor_reuses_critic_features: bool = False
    """The actor step reads the critic features of this update's critic step (computed before it,
    DrQ-v2) instead of recomputing them with the updated encoder: one encoder pass fewer per actor step.
    False is Fujimoto's order (the actor loss sees the critic after this step's update)."""
    policy_average_tau: float = 0.0
    """Polyak rate of a slow average of the policy's parameters (the actor's, with the critic's encoder
    when it is shared), updated on the targets' schedule and read only to act (`policy_params(state,
    policy="average")`): it never feeds back into learning. 0 keeps no average (plain TD3)."""
