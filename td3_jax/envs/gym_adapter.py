"""`gym:<id>`: any gymnasium env with an image observation and a Box action.

`make_gym_env` wraps the env so that it speaks the layout of every td3_jax
backend (`td3_jax.envs.spaces`): observations ``{"image": (84, 84, stack)
uint8, oldest frame first, "vector": (V,) float32}`` and actions in
``[-1, 1]^A``. Host-side code (NumPy only, no OpenCV or PIL).

Per step the image goes through one float64 pipeline with a single rounding:
values to [0, 255] → RGB to BT.601 luma → area resize to 84×84 → round to
nearest (ties to even, `np.rint`) → uint8 → `FrameStack`. See
``docs/gym_envs.md`` for how the image layout is detected.
"""

from __future__ import annotations

import importlib
import math
import re
from collections.abc import Sequence
from typing import Any

import gymnasium
import numpy as np
from gymnasium import spaces as gym_spaces

from td3_jax.envs import spaces
from td3_jax.envs.config import split_gym_id
from td3_jax.errors import UserError

LUMA_BT601 = np.array([0.299, 0.587, 0.114])
"""ITU-R BT.601 luma weights of (R, G, B)."""
_PREFERRED_IMAGE_KEYS = ("image", "pixels", "rgb", "camera", "observation")
_SIGNATURE_MISMATCH = re.compile(r"unexpected keyword argument|missing \d+ required")
"""What Python's TypeError says when a call's arguments do not fit the function."""


class GymAdapterError(UserError, ValueError):
    """The env cannot be adapted (bad id, no image, no Box action); one line, which the CLI prints as is."""


# ---------------------------------------------------------------- layouts


def parse_layout(layout: str) -> tuple[str, ...]:
    """Splits a layout string into one token per observation axis.

    Letters: ``h``, ``w`` (required), ``c`` (colour channels of one frame:
    1 gray, 3 RGB, 4 RGBA whose alpha is dropped), ``s`` (stacked frames,
    oldest first) and ``(sc)`` (stacked RGB frames concatenated on one axis,
    frame-major, as SB3's VecFrameStack does). Spaces are ignored.

    Args:
      layout: e.g. ``"hwc"``, ``"chw"``, ``"shwc"``, ``"hws"``, ``"hw(sc)"``.

    Returns:
      Tokens such as ``("h", "w", "sc")``.
    """
    text = layout.replace(" ", "").lower()
    tokens: list[str] = []
    i = 0
    while i < len(text):
        if text.startswith("(sc)", i):
            tokens.append("sc")
            i += 4
        elif text[i] in "hwcs":
            tokens.append(text[i])
            i += 1
        else:
            raise GymAdapterError(f"bad layout {layout!r}: use the letters h, w, c, s and '(sc)'")
    axes = [axis for token in tokens for axis in token]
    if len(axes) != len(set(axes)) or "h" not in axes or "w" not in axes:
        raise GymAdapterError(f"bad layout {layout!r}: needs h and w, and each letter at most once")
    return tuple(tokens)


def infer_layout(shape: Sequence[int]) -> str:
    """Guesses the layout of an image observation from its shape.

    The channel/stack axis is the one smaller than both image axes, at either
    end. Its size decides its meaning: 1 or 3 → colour channels (gray, RGB);
    a larger multiple of 3 → stacked RGB frames ``(sc)``; anything else
    (4 included: a stack of 4 gray frames is commoner in RL than RGBA) →
    stacked gray frames ``s``. 4-D shapes are stacks ``shwc`` or ``schw``.

    Args:
      shape: the observation Box's shape.

    Returns:
      A layout string for `parse_layout`.

    Raises:
      GymAdapterError: for shapes that are not images or are ambiguous.
    """
    shape = tuple(int(n) for n in shape)

    def small_axis_kind(n: int) -> str:
        if n in (1, 3):
            return "c"
        return "(sc)" if n % 3 == 0 else "s"

    if len(shape) == 2 and min(shape) > 1:
        return "hw"
    if len(shape) == 3:
        first, middle, last = shape
        if last < min(first, middle):
            return "hw" + small_axis_kind(last)
        if first < min(middle, last):
            return small_axis_kind(first) + "hw"
    if len(shape) == 4:
        _, a, b, c = shape
        if c < min(a, b) and c in (1, 3, 4):
            return "shwc"
        if a < min(b, c) and a in (1, 3, 4):
            return "schw"
    raise GymAdapterError(
        f"cannot tell the image layout of shape {shape}; pass layout= (e.g. 'hwc', 'chw', 'shw', 'shwc')"
    )


# ---------------------------------------------------------------- pixels


def area_resize_matrix(size_in: int, size_out: int) -> np.ndarray:
    """(size_out, size_in) float64 weights of area resampling along one axis.

    Output pixel i covers input coordinates ``[i, i + 1) * size_in / size_out``;
    its weight on input pixel j is the overlap with ``[j, j + 1)`` divided by
    the covered length, so rows sum to 1. Shrinking averages areas (like
    OpenCV's INTER_AREA); enlarging is nearest-neighbour with blended edges.
    """
    edges = np.arange(size_out + 1) * (size_in / size_out)
    lo, hi = edges[:-1, None], edges[1:, None]
    j = np.arange(size_in)[None, :]
    overlap = np.clip(np.minimum(hi, j + 1) - np.maximum(lo, j), 0.0, None)
    return overlap / (size_in / size_out)


def _banded(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(out, in) resampling weights as (out, k) input indices and weights, k = most inputs per output."""
    width = int(np.max(np.count_nonzero(matrix, axis=1)))
    index = np.zeros((matrix.shape[0], width), np.intp)
    weight = np.zeros((matrix.shape[0], width))
    for row, values in enumerate(matrix):
        (columns,) = np.nonzero(values)
        index[row, : len(columns)] = columns
        weight[row, : len(columns)] = values[columns]
    return index, weight


class FrameConverter:
    """Turns one raw image observation into the newest (84, 84) uint8 frame.

    Attributes:
      layout: the resolved layout tokens, e.g. ``("h", "w", "c")``.
      value_range: (lo, hi) of the raw values, mapped affinely to [0, 255].
      channels: colour channels of one frame: 1 gray, 3 RGB, 4 RGBA.
    """

    def __init__(
        self,
        space: gym_spaces.Box,
        layout: str | None = None,
        value_range: tuple[float, float] | None = None,
    ):
        """Resolves the layout and value range of `space`.

        Args:
          space: the env's image Box.
          layout: overrides `infer_layout` (see `parse_layout`).
          value_range: overrides the value range read from the Box bounds.
        """
        self.layout = parse_layout(layout if layout is not None else infer_layout(space.shape))
        if len(self.layout) != len(space.shape):
            raise GymAdapterError(
                f"layout {''.join(self.layout)!r} has {len(self.layout)} axes, the image {space.shape} "
                f"has {len(space.shape)}"
            )
        sizes = dict(zip(self.layout, space.shape))
        if "sc" in sizes:
            if sizes["sc"] % 3:
                raise GymAdapterError(f"layout axis (sc) of size {sizes['sc']} is not whole RGB frames")
            self.channels = 3
        else:
            self.channels = sizes.get("c", 1)
        if self.channels not in (1, 3, 4):
            raise GymAdapterError(
                f"{self.channels} colour channels in {space.shape}; for stacked gray frames put 's' in layout="
            )
        self.value_range = _value_range(space, value_range)
        size = spaces.FRAME_SIZE
        self._rows = _banded(area_resize_matrix(sizes["h"], size))
        self._cols = _banded(area_resize_matrix(sizes["w"], size))

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        """Raw observation → (84, 84) uint8 gray frame (the newest if stacked)."""
        frame = self.newest_frame(np.asarray(obs))
        lo, hi = self.value_range
        scaled = (frame.astype(np.float64) - lo) * (255.0 / (hi - lo))
        gray = scaled[..., 0] if self.channels == 1 else scaled[..., :3] @ LUMA_BT601
        # Gathers and sums, not matrix products: on a busy machine BLAS threads made a frame ~100x slower.
        (row_index, row_weight), (col_index, col_weight) = self._rows, self._cols
        rows = np.einsum("ok,okw->ow", row_weight, gray[row_index])
        resized = np.einsum("pk,opk->op", col_weight, rows[:, col_index])
        return np.clip(np.rint(resized), 0, 255).astype(np.uint8)

    def newest_frame(self, obs: np.ndarray) -> np.ndarray:
        """(H, W, channels) view of the newest frame, in the raw dtype."""
        tokens = list(self.layout)
        if "sc" in tokens:
            axis = tokens.index("sc")
            obs = np.take(obs, np.arange(obs.shape[axis] - 3, obs.shape[axis]), axis=axis)
            tokens[axis] = "c"
        if "s" in tokens:
            obs = np.take(obs, -1, axis=tokens.index("s"))
            tokens.remove("s")
        if "c" not in tokens:
            obs, tokens = obs[..., None], [*tokens, "c"]
        return np.transpose(obs, [tokens.index(t) for t in "hwc"])


def _value_range(space: gym_spaces.Box, override: tuple[float, float] | None) -> tuple[float, float]:
    if override is not None:
        lo, hi = float(override[0]), float(override[1])
    elif space.dtype == np.uint8:
        lo, hi = 0.0, 255.0
    else:
        lo, hi = float(np.min(space.low)), float(np.max(space.high))
    if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
        raise GymAdapterError(f"image bounds [{lo}, {hi}] cannot map to uint8; pass value_range=(lo, hi)")
    return lo, hi


# ---------------------------------------------------------------- the wrapper


class GymImageAdapter(gymnasium.Wrapper):
    """Gives an image gymnasium env the td3_jax observation and action layout.

    Observations: ``{"image": (84, 84, stack) uint8 oldest frame first,
    "vector": (V,) float32}``; the vector concatenates the other Box entries of
    a Dict observation (flattened, in the Dict's key order), V = 0 without any.
    Actions: ``Box(-1, 1, (A,), float32)``, A = the env's action size, clipped
    to [-1, 1] and mapped affinely onto the env's bounds. `info`, rewards and
    the terminated/truncated flags pass through unchanged.

    Attributes:
      converter: the `FrameConverter` of the image.
      image_key: the Dict key of the image, None for a plain Box observation.
      vector_keys: the Dict keys forming the vector.
    """

    def __init__(
        self,
        env: gymnasium.Env,
        *,
        stack: int = spaces.DEFAULT_STACK,
        seed: int | None = None,
        layout: str | None = None,
        value_range: tuple[float, float] | None = None,
        image_key: str | None = None,
        vector_keys: Sequence[str] | None = None,
    ):
        """Wraps `env`; see `make_gym_env` for the arguments."""
        super().__init__(env)
        if stack < 1:
            raise GymAdapterError(f"stack must be at least 1 frame, got {stack}")
        name = f"gym:{env.spec.id}" if env.spec is not None else type(env.unwrapped).__name__
        image_space, self.image_key, self.vector_keys = _split_observation(
            env.observation_space, image_key, vector_keys, name
        )
        self.converter = FrameConverter(image_space, layout, value_range)
        vector_dim = sum(int(np.prod(env.observation_space[k].shape)) for k in self.vector_keys)
        self.observation_space = spaces.observation_space(stack, vector_dim)

        env_action = env.action_space
        if not isinstance(env_action, gym_spaces.Box):
            raise GymAdapterError(f"{name}: TD3 needs a Box (continuous) action space, not {env_action}")
        low, high = env_action.low.astype(np.float64), env_action.high.astype(np.float64)
        if not (np.all(np.isfinite(low)) and np.all(np.isfinite(high))):
            raise GymAdapterError(f"{name}: action bounds must be finite to rescale [-1, 1], got {env_action}")
        self._action_low, self._action_half_range = low, (high - low) / 2.0
        action_dim = int(np.prod(env_action.shape))
        self.action_space = gym_spaces.Box(-1.0, 1.0, (action_dim,), np.float32, seed=seed)

        self._frames = spaces.FrameStack(stack)
        self._first_seed = seed

    def env_action(self, action: np.ndarray) -> np.ndarray:
        """(A,) agent action in [-1, 1] (clipped) → the env's action, in its shape and dtype."""
        agent = np.clip(np.asarray(action, np.float64).reshape(self._action_low.shape), -1.0, 1.0)
        env_action = self._action_low + (agent + 1.0) * self._action_half_range
        return env_action.astype(self.env.action_space.dtype)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        """Resets the env; the first reset uses the constructor's seed unless given one."""
        if seed is None:
            seed = self._first_seed
        self._first_seed = None
        obs, info = self.env.reset(seed=seed, options=options)
        return self._observation(obs, reset=True), info

    def step(self, action: np.ndarray):
        """Steps the env with the rescaled `action`; returns the 5-tuple with our observation."""
        obs, reward, terminated, truncated, info = self.env.step(self.env_action(action))
        return self._observation(obs, reset=False), reward, terminated, truncated, info

    def _observation(self, obs: Any, *, reset: bool) -> dict[str, np.ndarray]:
        image = obs if self.image_key is None else obs[self.image_key]
        frame = self.converter(image)
        stacked = self._frames.reset(frame) if reset else self._frames.push(frame)
        parts = [np.asarray(obs[k], np.float32).reshape(-1) for k in self.vector_keys]
        vector = np.concatenate(parts) if parts else np.zeros(0, np.float32)
        return {"image": stacked, "vector": vector}


def _split_observation(
    space: gym_spaces.Space, image_key: str | None, vector_keys: Sequence[str] | None, name: str
) -> tuple[gym_spaces.Box, str | None, tuple[str, ...]]:
    """Finds the image Box and the vector keys of an observation space."""
    if isinstance(space, gym_spaces.Box):
        if len(space.shape) < 2:
            raise GymAdapterError(
                f"{name}: observation Box{space.shape} {space.dtype} is not an image; "
                "pick an env with image observations, e.g. gym:CarRacing-v3"
            )
        return space, None, ()
    if not isinstance(space, gym_spaces.Dict):
        raise GymAdapterError(
            f"{name}: observation space {type(space).__name__} is not an image Box nor a Dict holding one"
        )
    boxes = {k: s for k, s in space.spaces.items() if isinstance(s, gym_spaces.Box)}
    if image_key is None:
        images = [k for k, s in boxes.items() if len(s.shape) >= 2]
        preferred = [k for k in _PREFERRED_IMAGE_KEYS if k in images]
        if len(images) == 1 or preferred:
            image_key = preferred[0] if preferred else images[0]
        else:
            found = f"several ({', '.join(images)})" if images else "none"
            raise GymAdapterError(f"{name}: which Dict entry is the image? candidates {found}; pass image_key=")
    if image_key not in boxes or len(boxes[image_key].shape) < 2:
        raise GymAdapterError(
            f"{name}: observation key {image_key!r} is not an image Box (keys: {', '.join(space.spaces)})"
        )
    if vector_keys is None:
        others = [k for k in space.spaces if k != image_key]
        not_box = [k for k in others if k not in boxes]
        if not_box:
            raise GymAdapterError(
                f"{name}: observation entries {', '.join(not_box)} are not Boxes; pass vector_keys= to choose"
            )
        vector_keys = others
    for key in vector_keys:
        if key not in boxes or key == image_key:
            raise GymAdapterError(f"{name}: vector key {key!r} is not a non-image Box of the observation")
    return boxes[image_key], image_key, tuple(vector_keys)


def make_gym_env(
    env_id: str,
    *,
    stack: int = spaces.DEFAULT_STACK,
    seed: int | None = None,
    layout: str | None = None,
    value_range: tuple[float, float] | None = None,
    image_key: str | None = None,
    vector_keys: Sequence[str] | None = None,
    **make_kwargs: Any,
) -> gymnasium.Env:
    """`gymnasium.make(env_id, **make_kwargs)` wrapped in `GymImageAdapter`.

    Args:
      env_id: a registered gymnasium id, e.g. ``"CarRacing-v3"``, or
        ``"module:id"`` (e.g. ``"highway_env:racetrack-v0"``): the module is
        imported first, so that it registers the id.
      stack: frames per observation.
      seed: seed of the first reset (later resets continue its RNG) and of
        ``action_space.sample()``.
      layout: image layout override (see `parse_layout`), e.g. ``"chw"``.
      value_range: (lo, hi) of raw image values, mapped to [0, 255]; default:
        [0, 255] for uint8, the Box bounds otherwise.
      image_key: the image entry of a Dict observation (default: the only
        image Box, or the first of "image", "pixels", "rgb", "camera",
        "observation").
      vector_keys: Dict entries concatenated into the vector (default: all
        entries but the image, which must all be Boxes).
      **make_kwargs: passed to `gymnasium.make`.

    Returns:
      The wrapped env; its observations are ``{"image": (84, 84, stack)
      uint8, "vector": (V,) float32}``, its actions ``(A,)`` float32 in [-1, 1].

    Raises:
      GymAdapterError: unknown id, module that cannot be imported, missing
        optional dependency, a keyword the env does not take, no image
        observation or no Box action space.
    """
    module, _ = split_gym_id(env_id)
    if module is not None:
        _import_env_module(module, env_id)
    try:
        env = gymnasium.make(env_id, **make_kwargs)
    except gymnasium.error.DependencyNotInstalled as error:
        raise GymAdapterError(
            f"gym:{env_id} needs a missing dependency ({_first_line(error)}); "
            "for Box2D envs: pip install 'td3-jax[box2d]'"
        ) from error
    except gymnasium.error.Error as error:
        raise GymAdapterError(
            f"gym:{env_id}: {_first_line(error)}; use a registered gymnasium id, e.g. gym:CarRacing-v3, "
            "or gym:<module>:<id> with the module that registers it"
        ) from error
    except TypeError as error:
        if not _SIGNATURE_MISMATCH.search(str(error)):  # a fault inside the env, not in what it was given
            raise
        raise GymAdapterError(
            f"gym:{env_id} cannot be made with the keyword arguments given ({_first_line(error)}); "
            "set them in env.gym.make_kwargs"
        ) from error
    try:
        return GymImageAdapter(
            env,
            stack=stack,
            seed=seed,
            layout=layout,
            value_range=value_range,
            image_key=image_key,
            vector_keys=vector_keys,
        )
    except GymAdapterError:
        env.close()
        raise


def _import_env_module(module: str, env_id: str) -> None:
    """Imports the module of a "module:id" id, which registers the id; GymAdapterError if it cannot be."""
    try:
        importlib.import_module(module)
    except ImportError as error:
        missing = error.name  # the module not found; another name means the module's own imports failed
        if missing and (module == missing or module.startswith(missing + ".")):
            raise GymAdapterError(
                f"gym:{env_id}: module {module!r}, which registers the env, is not installed; "
                "pip install the package that provides it"
            ) from error
        raise GymAdapterError(
            f"gym:{env_id}: importing module {module!r}, which registers the env, failed: {_first_line(error)}"
        ) from error


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
