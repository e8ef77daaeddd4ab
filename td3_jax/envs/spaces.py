"""The observation and action layout every backend produces.

Observation: ``{"image": (84, 84, stack) uint8, oldest frame first along the
last axis, "vector": (V,) float32}``. Action: ``Box([-1, -1], [1, 1])`` =
(steer, throttle_brake), a negative throttle_brake brakes. Host-side code.
"""

from __future__ import annotations

import numpy as np
from gymnasium import spaces

FRAME_SIZE = 84
"""Height and width of one grayscale frame."""
DEFAULT_STACK = 4
"""Frames per observation."""
ACTION_DIM = 2


def observation_space(stack: int = DEFAULT_STACK, vector_dim: int = 53) -> spaces.Dict:
    """The Dict space of an observation with `stack` frames and a `vector_dim` vector."""
    return spaces.Dict(
        {
            "image": spaces.Box(0, 255, (FRAME_SIZE, FRAME_SIZE, stack), np.uint8),
            "vector": spaces.Box(-np.inf, np.inf, (vector_dim,), np.float32),
        }
    )


def action_space() -> spaces.Box:
    """(steer, throttle_brake), each in [-1, 1]."""
    return spaces.Box(-1.0, 1.0, (ACTION_DIM,), np.float32)


class FrameStack:
    """Keeps the last `stack` frames; at reset the first frame fills the stack.

    Repeating the first frame (rather than zero-filling, as the original did)
    means every stack shows only frames of its own episode, which is what the
    replay buffer reproduces when it rebuilds stacks.
    """

    def __init__(self, stack: int = DEFAULT_STACK, frame_shape: tuple[int, int] = (FRAME_SIZE, FRAME_SIZE)):
        self.stack = stack
        self._frames = np.zeros((*frame_shape, stack), np.uint8)

    def reset(self, frame: np.ndarray) -> np.ndarray:
        """Fills the stack with `frame` (H, W) uint8 and returns a copy (H, W, stack)."""
        self._frames[...] = self._check(frame)[..., None]
        return self._frames.copy()

    def push(self, frame: np.ndarray) -> np.ndarray:
        """Drops the oldest frame, appends `frame` and returns a copy (H, W, stack)."""
        self._frames[..., :-1] = self._frames[..., 1:]
        self._frames[..., -1] = self._check(frame)
        return self._frames.copy()

    def _check(self, frame: np.ndarray) -> np.ndarray:
        if frame.shape != self._frames.shape[:2] or frame.dtype != np.uint8:
            raise ValueError(
                f"frame must be {self._frames.shape[:2]} uint8, got {frame.shape} {frame.dtype}"
            )
        return frame
