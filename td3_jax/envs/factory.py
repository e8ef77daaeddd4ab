"""`make_env` / `make_vec_env`: one entry point for every driving backend. Host-side code.

Backends are imported only when chosen, so the embedded simulator needs
neither `carla` nor the optional gymnasium extras.
"""

from __future__ import annotations

import dataclasses

import gymnasium
from gymnasium.vector import AutoresetMode, SyncVectorEnv, VectorEnv

from td3_jax.envs.config import EnvConfig


def make_env(config: EnvConfig = EnvConfig(), *, seed: int | None = None) -> gymnasium.Env:
    """One env of the configured backend.

    Args:
      config: backend name, frame stack, seed and the backend's settings.
      seed: overrides `config.seed` (e.g. a separate evaluation stream).

    Returns:
      A gymnasium Env with observation ``{"image": (84, 84, stack) uint8,
      "vector": (V,) float32}`` and action Box([-1, -1], [1, 1]).
    """
    seed = config.seed if seed is None else seed
    if config.backend == "lanesim":
        from td3_jax.envs.lanesim.sim import LaneSimEnv

        return LaneSimEnv(
            config.lanesim, config.reward, stack=config.stack, seed=seed, observation_cfg=config.observation
        )
    if config.backend == "carla":
        from td3_jax.envs.carla.env import make_carla_env

        return make_carla_env(dataclasses.replace(config, seed=seed))
    from td3_jax.envs.gym_adapter import make_gym_env

    gym = config.gym
    return make_gym_env(
        config.backend.removeprefix("gym:"),
        stack=config.stack,
        seed=seed,
        layout=gym.layout,
        value_range=gym.value_range,
        image_key=gym.image_key,
        vector_keys=gym.vector_keys,
        **gym.gymnasium_make_kwargs(),
    )


def make_vec_env(config: EnvConfig = EnvConfig(), num_envs: int | None = None, *, seed: int | None = None) -> VectorEnv:
    """`num_envs` (default `config.num_envs`) envs stepped together, with same-step autoreset.

    The embedded simulator steps all cars in one NumPy pass (`LaneSimVec`);
    other backends run as a gymnasium `SyncVectorEnv` of `make_env` copies
    seeded seed, seed + 1, .... Either way an ended episode's last observation
    is in ``info["final_obs"]`` (gymnasium's SAME_STEP convention).
    """
    num_envs = config.num_envs if num_envs is None else num_envs
    seed = config.seed if seed is None else seed
    if config.backend == "lanesim":
        from td3_jax.envs.lanesim.sim import LaneSimVec

        return LaneSimVec(
            num_envs, config.lanesim, config.reward, stack=config.stack, seed=seed,
            observation_cfg=config.observation,
        )
    return SyncVectorEnv(
        [lambda i=i: make_env(config, seed=seed + i) for i in range(num_envs)],
        autoreset_mode=AutoresetMode.SAME_STEP,
    )

