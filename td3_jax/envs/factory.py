"""`make_env` / `make_vec_env`: one entry point for every driving backend. Host-side code.

Backends are imported only when chosen, so the embedded simulator needs
neither `carla` nor the optional gymnasium extras.
"""

from __future__ import annotations

import dataclasses

import gymnasium
import numpy as np
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


def step_info(info: dict) -> dict:
    """Each env's info of the step just taken, from a vector env's step info.

    Under gymnasium's SAME_STEP autoreset (`SyncVectorEnv`, the worker envs) an env whose episode ended
    on this step reports its reset's info in `info` and the step's own in ``info["final_info"]`` (mask
    ``info["_final_info"]``): that step's collision, failure flag and reward components. This returns
    `info` with those envs' entries taken from ``final_info`` (nested dicts alike); the other envs' entries,
    and keys only the reset reports, stay as they are.
    """
    final = info.get("final_info")
    if not isinstance(final, dict) or all(info.get(key) is value for key, value in final.items()):
        return info  # nothing ended, or the info already is the step's (the embedded simulator's)
    ended = np.asarray(info.get("_final_info", False), bool)
    return _overlay(info, final, ended) if ended.any() else info


def _overlay(base: dict, final: dict, ended: np.ndarray) -> dict:
    out = dict(base)
    for key, value in final.items():
        current = base.get(key)
        if isinstance(value, dict):
            out[key] = _overlay(current if isinstance(current, dict) else {}, value, ended)
            continue
        value = np.asarray(value)
        if current is None or np.shape(current) != value.shape:
            merged = np.zeros_like(value)
        else:  # the wider dtype, so that a longer string or a float is not cut to the reset's
            merged = np.array(current, dtype=np.result_type(np.asarray(current), value))
        merged[ended] = value[ended]
        out[key] = merged
    return out
