"""Driving environments: the embedded simulator (default), CARLA and gymnasium adapters.

Importing this package is light; backends load when `make_env` picks them.
"""

from td3_jax.envs.config import EnvConfig, LaneSimConfig
from td3_jax.envs.factory import make_env, make_vec_env
from td3_jax.envs.reward import RewardConfig

__all__ = ["EnvConfig", "LaneSimConfig", "RewardConfig", "make_env", "make_vec_env"]
