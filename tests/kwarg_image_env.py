"""A gymnasium image env that only YAML settings make usable; importing this module registers it.

Configs name it `gym:kwarg_image_env:td3_jax_test/KwargImage-v0`, so gymnasium
imports this module (tests/ is on sys.path under pytest) in every process
that makes it. It needs each part of an `env.gym` section:

- `make_kwargs`: a required, nested `config` argument shaped like
  highway-env's; without it the env cannot be made, and its
  `observation.frame_shape` must arrive as a tuple, as highway-env's
  `observation_shape` must;
- `layout`: the frames are a (stack, H, W) cube of equal sides, which no
  guess can read;
- `value_range`: they are unbounded float32;
- `image_key`: the Dict holds a second image;
- `vector_keys`: the Dict holds a non-Box entry.

Its action is 3-D like CarRacing's, and the section below leaves the vector
empty, so that its networks have the shapes of tests/test_backends_e2e.py's
and share their compiled code.
"""

from __future__ import annotations

import gymnasium
import numpy as np
from gymnasium import spaces

ENV_ID = "td3_jax_test/KwargImage-v0"
BACKEND = f"gym:kwarg_image_env:{ENV_ID}"
EPISODE_STEPS = 10

YAML_SECTION = """\
env:
  backend: "gym:kwarg_image_env:td3_jax_test/KwargImage-v0"
  gym:
    make_kwargs:
      config:
        observation: {frame_shape: [6, 6], stack_size: 6}
        brightness: 0.75
    layout: shw
    value_range: [0.0, 1.0]
    image_key: frames
    vector_keys: []
"""
"""The `env:` section of a config that makes this env."""


class KwargImageEnv(gymnasium.Env):
    """A bright column on a dark frame that the action (steer, gas, brake) moves sideways; gas and brake do nothing.

    Every episode starts alike (the reset ignores its seed); the time limit it is
    registered with ends it after `EPISODE_STEPS`.
    """

    action_space = spaces.Box(np.array([-1, 0, 0], np.float32), np.array([1, 1, 1], np.float32))

    def __init__(self, config: dict):  # no default: gymnasium.make without make_kwargs fails
        observation = config["observation"]
        self.frame_shape = observation["frame_shape"]
        self.brightness = float(config["brightness"])
        self.observation_space = spaces.Dict({
            "frames": spaces.Box(-np.inf, np.inf, (observation["stack_size"],) + self.frame_shape, np.float32),
            "minimap": spaces.Box(0, 255, (8, 8), np.uint8),
            "speed": spaces.Box(-1.0, 1.0, (1,), np.float32),
            "gear": spaces.Discrete(3),
        })

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self._column = self.frame_shape[1] // 2
        self._frames = np.zeros(self.observation_space["frames"].shape, np.float32)
        return self._observation(), {}

    def step(self, action):
        self._column = int(np.clip(self._column + np.rint(2.0 * float(action[0])), 0, self.frame_shape[1] - 1))
        reward = 1.0 - abs(self._column - self.frame_shape[1] // 2) / self.frame_shape[1]
        return self._observation(), reward, False, False, {}

    def _observation(self) -> dict:
        frame = np.zeros(self.frame_shape, np.float32)
        frame[:, self._column] = self.brightness
        self._frames = np.concatenate([self._frames[1:], frame[None]])
        return {
            "frames": self._frames.copy(),
            "minimap": np.zeros((8, 8), np.uint8),
            "speed": np.array([self._column / self.frame_shape[1]], np.float32),
            "gear": 1,
        }


gymnasium.register(ENV_ID, entry_point=KwargImageEnv, max_episode_steps=EPISODE_STEPS)
