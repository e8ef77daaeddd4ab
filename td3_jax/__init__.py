"""td3_jax: TD3 with separate actor and critic CNNs for visual lane keeping, in JAX.

    from td3_jax import TD3Config, init_state, update, update_many, act

See docs/api.md.
"""

from td3_jax.core.hparams import EncoderConfig, NetworkConfig, OptimizerConfig, TD3Config
from td3_jax.core.networks import Actor, Critic, Encoder, init_params, make_networks, param_labels
from td3_jax.core.optim import make_optimizer
from td3_jax.core.td3 import (
    TD3State,
    act,
    actor_loss,
    critic_loss,
    init_state,
    policy_params,
    td_target,
    update,
    update_many,
)
from td3_jax.core.types import Batch, PackedBatch, unpack

__all__ = [
    "Actor",
    "Batch",
    "Critic",
    "Encoder",
    "EncoderConfig",
    "NetworkConfig",
    "OptimizerConfig",
    "PackedBatch",
    "TD3Config",
    "TD3State",
    "act",
    "actor_loss",
    "critic_loss",
    "init_params",
    "init_state",
    "make_networks",
    "make_optimizer",
    "param_labels",
    "policy_params",
    "td_target",
    "unpack",
    "update",
    "update_many",
]
