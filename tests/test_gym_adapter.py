"""The gym:<id> adapter against straightforward reference computations."""

from __future__ import annotations

import math

import gymnasium
import numpy as np
import pytest
from gymnasium import spaces as gym_spaces
from hypothesis import given, settings
from hypothesis import strategies as st

from td3_jax.envs import spaces
from td3_jax.envs.gym_adapter import (
    FrameConverter,
    GymAdapterError,
    GymImageAdapter,
    area_resize_matrix,
    infer_layout,
    make_gym_env,
)

SIZE = spaces.FRAME_SIZE


# ------------------------------------------------------------ references


def reference_area_resize_axis(image: np.ndarray, axis: int, size_out: int) -> np.ndarray:
    """Exact area averaging along one axis by splitting pixels into lcm sub-pixels."""
    size_in = image.shape[axis]
    fine = math.lcm(size_in, size_out)
    upsampled = np.repeat(image, fine // size_in, axis=axis)
    shape = list(upsampled.shape)
    shape[axis : axis + 1] = [size_out, fine // size_out]
    return upsampled.reshape(shape).mean(axis=axis + 1)


def reference_frame(frame_hwc: np.ndarray, lo: float = 0.0, hi: float = 255.0) -> np.ndarray:
    """Unrounded float (84, 84) of one raw (H, W, C) frame: scale, BT.601 luma, area resize."""
    x = (frame_hwc.astype(np.float64) - lo) / (hi - lo) * 255.0
    if x.shape[-1] == 1:
        gray = x[..., 0]
    else:
        gray = 0.299 * x[..., 0] + 0.587 * x[..., 1] + 0.114 * x[..., 2]
    return reference_area_resize_axis(reference_area_resize_axis(gray, 0, SIZE), 1, SIZE)


def assert_rounds_to(frame: np.ndarray, reference: np.ndarray) -> None:
    """`frame` is uint8 (84, 84) and the nearest integer to the clipped reference."""
    assert frame.shape == (SIZE, SIZE) and frame.dtype == np.uint8
    np.testing.assert_array_less(np.abs(frame - np.clip(reference, 0, 255)), 0.5 + 1e-9)


# (S, H, W, C) frames, oldest first -> the raw observation in each layout.
ARRANGE = {
    "hw": lambda f: f[-1, :, :, 0],
    "hwc": lambda f: f[-1],
    "chw": lambda f: f[-1].transpose(2, 0, 1),
    "shw": lambda f: f[..., 0],
    "hws": lambda f: f[..., 0].transpose(1, 2, 0),
    "shwc": lambda f: f,
    "schw": lambda f: f.transpose(0, 3, 1, 2),
    "hw(sc)": lambda f: f.transpose(1, 2, 0, 3).reshape(*f.shape[1:3], -1),
    "(sc)hw": lambda f: f.transpose(0, 3, 1, 2).reshape(-1, *f.shape[1:3]),
}
CHANNELS = {"hw": (1,), "shw": (1,), "hws": (1,), "hw(sc)": (3,), "(sc)hw": (3,)}


# ------------------------------------------------------------ a tiny env


class ImageEnv(gymnasium.Env):
    """Random observations from `observation_space`; records every action it receives."""

    def __init__(self, observation_space, action_space=None, frame_fn=None):
        self.observation_space = observation_space
        self.action_space = action_space or gym_spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.frame_fn = frame_fn
        self.actions: list[np.ndarray] = []
        self.last_obs = None

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self._obs(), {"t": 0}

    def step(self, action):
        self.actions.append(np.array(action, copy=True))
        self.t += 1
        return self._obs(), 0.5 * self.t, False, self.t >= 20, {"t": self.t}

    def _obs(self):
        if self.frame_fn is not None:
            self.last_obs = self.frame_fn(self.t)
        else:
            self.observation_space.seed(int(self.np_random.integers(2**31)))
            self.last_obs = self.observation_space.sample()
        return self.last_obs


# ------------------------------------------------------------ pixels


@settings(max_examples=40, deadline=None)
@given(size_in=st.integers(1, 200))
def test_area_resize_matrix_matches_subpixel_reference(size_in):
    weights = area_resize_matrix(size_in, SIZE)
    assert weights.shape == (SIZE, size_in)
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, atol=1e-12)
    signal = np.random.default_rng(size_in).uniform(0, 255, size_in)
    np.testing.assert_allclose(weights @ signal, reference_area_resize_axis(signal, 0, SIZE), atol=1e-9)


@settings(max_examples=40, deadline=None)
@given(
    layout=st.sampled_from(sorted(ARRANGE)),
    height=st.integers(1, 120),
    width=st.integers(1, 120),
    stack=st.integers(1, 4),
    channel_choice=st.integers(0, 2),
    seed=st.integers(0, 2**31),
)
def test_frame_converter_matches_reference(layout, height, width, stack, channel_choice, seed):
    allowed = CHANNELS.get(layout, (1, 3, 4))
    channels = allowed[channel_choice % len(allowed)]
    frames = np.random.default_rng(seed).integers(0, 256, (stack, height, width, channels), dtype=np.uint8)
    raw = ARRANGE[layout](frames)
    converter = FrameConverter(gym_spaces.Box(0, 255, raw.shape, np.uint8), layout=layout)
    assert_rounds_to(converter(raw), reference_frame(frames[-1]))


@pytest.mark.parametrize(
    ("shape", "layout"),
    [
        ((96, 96, 3), "hwc"),
        ((84, 84, 1), "hwc"),
        ((3, 64, 48), "chw"),
        ((64, 48), "hw"),
        ((4, 84, 84), "shw"),
        ((84, 84, 4), "hws"),
        ((84, 84, 12), "hw(sc)"),
        ((12, 84, 84), "(sc)hw"),
        ((4, 84, 84, 3), "shwc"),
        ((4, 3, 84, 84), "schw"),
    ],
)
def test_infer_layout_documented_table(shape, layout):
    assert infer_layout(shape) == layout


@pytest.mark.parametrize("shape", [(5, 5, 5), (10,), (84, 1), (2, 84, 84, 84)])
def test_infer_layout_refuses_ambiguous_shapes(shape):
    with pytest.raises(GymAdapterError, match="layout="):
        infer_layout(shape)


@pytest.mark.parametrize("bad", ["hwx", "hhw", "hw(sc)s", "cw"])
def test_bad_layout_strings_are_refused(bad):
    with pytest.raises(GymAdapterError, match="layout"):
        FrameConverter(gym_spaces.Box(0, 255, (8, 8, 3), np.uint8), layout=bad)


@pytest.mark.parametrize(("low", "high"), [(0.0, 1.0), (-1.0, 1.0)])
@pytest.mark.parametrize("layout", ["hwc", "chw"])
def test_float_images_map_their_bounds_to_uint8(low, high, layout):
    frame = np.random.default_rng(0).uniform(low, high, (20, 30, 3)).astype(np.float32)
    frame[0, 0] = low  # the bounds themselves must land on 0 and 255
    frame[1, 1] = high
    raw = ARRANGE[layout](frame[None])
    converter = FrameConverter(gym_spaces.Box(low, high, raw.shape, np.float32))
    assert converter.value_range == (low, high)
    assert_rounds_to(converter(raw), reference_frame(frame, low, high))
    single = FrameConverter(gym_spaces.Box(low, high, (SIZE, SIZE), np.float32))
    ends = np.full((SIZE, SIZE), low, np.float32)
    ends[:, SIZE // 2 :] = high
    np.testing.assert_array_equal(np.unique(single(ends)), [0, 255])


def test_unbounded_float_images_need_value_range():
    space = gym_spaces.Box(-np.inf, np.inf, (16, 16, 3), np.float32)
    with pytest.raises(GymAdapterError, match="value_range"):
        FrameConverter(space)
    frame = np.random.default_rng(1).normal(0.5, 0.5, (16, 16, 3)).astype(np.float32)
    assert_rounds_to(FrameConverter(space, value_range=(0, 1))(frame), reference_frame(frame, 0, 1))


# ------------------------------------------------------------ the wrapper


@pytest.mark.parametrize(
    ("shape", "dtype", "low", "high"),
    [
        ((3, 40, 50), np.uint8, 0, 255),  # channel-first RGB
        ((96, 72, 1), np.uint8, 0, 255),  # channel-last gray
        ((3, 40, 40), np.float32, 0.0, 1.0),  # float, channel-first
        ((4, 30, 30), np.uint8, 0, 255),  # env stacks gray frames itself
    ],
)
def test_observations_are_the_converted_newest_frames_in_the_declared_space(shape, dtype, low, high):
    env = ImageEnv(gym_spaces.Box(low, high, shape, dtype))
    adapter = GymImageAdapter(env, stack=3, seed=0)
    assert adapter.observation_space == spaces.observation_space(3, 0)
    layout = "".join(adapter.converter.layout)
    obs, info = adapter.reset()
    assert info == {"t": 0}
    for t in range(4):
        assert adapter.observation_space.contains(obs)
        newest = adapter.converter.newest_frame(env.last_obs)
        assert_rounds_to(obs["image"][..., -1], reference_frame(newest, low, high))
        if layout == "shw":  # the env's own newest frame is its last one
            np.testing.assert_array_equal(newest[..., 0], env.last_obs[-1])
        obs, reward, terminated, truncated, info = adapter.step(adapter.action_space.sample())
        assert (reward, terminated, truncated, info) == (0.5 * (t + 1), False, False, {"t": t + 1})


def test_stack_repeats_the_first_frame_at_reset_and_shifts_on_step():
    # Frame t is the constant image 10 * t, so each stacked frame names its step.
    env = ImageEnv(
        gym_spaces.Box(0, 255, (3, 16, 16), np.uint8),
        frame_fn=lambda t: np.full((3, 16, 16), 10 * t, np.uint8),
    )
    adapter = GymImageAdapter(env, stack=4)
    obs, _ = adapter.reset()
    for t in range(7):
        expected = [10 * max(0, t - k) for k in (3, 2, 1, 0)]  # oldest first
        for k, value in enumerate(expected):
            assert np.all(obs["image"][..., k] == value), (t, k)
        obs, *_ = adapter.step(np.zeros(2, np.float32))
    obs, _ = adapter.reset()
    assert np.all(obs["image"] == 0)


def test_dict_observation_gives_the_image_and_the_concatenated_vector():
    space = gym_spaces.Dict(
        {
            "pixels": gym_spaces.Box(0, 255, (3, 24, 24), np.uint8),
            "speed": gym_spaces.Box(0.0, 30.0, (1,), np.float64),
            "pose": gym_spaces.Box(-1.0, 1.0, (2, 3), np.float32),
        }
    )
    env = ImageEnv(space)
    adapter = GymImageAdapter(env, seed=0)
    assert adapter.image_key == "pixels"
    keys = list(adapter.vector_keys)
    assert sorted(keys) == ["pose", "speed"]
    assert adapter.observation_space["vector"].shape == (7,)
    obs, _ = adapter.reset()
    for _ in range(2):
        assert adapter.observation_space.contains(obs)
        expected = np.concatenate([np.ravel(env.last_obs[k]) for k in keys]).astype(np.float32)
        np.testing.assert_array_equal(obs["vector"], expected)
        assert_rounds_to(obs["image"][..., -1], reference_frame(env.last_obs["pixels"].transpose(1, 2, 0)))
        obs, *_ = adapter.step(adapter.action_space.sample())


def test_dict_observation_errors_name_the_fix():
    two_images = gym_spaces.Dict(
        {"left": gym_spaces.Box(0, 255, (8, 8), np.uint8), "right": gym_spaces.Box(0, 255, (8, 8), np.uint8)}
    )
    with pytest.raises(GymAdapterError, match="image_key="):
        GymImageAdapter(ImageEnv(two_images))
    assert GymImageAdapter(ImageEnv(two_images), image_key="right").vector_keys == ("left",)
    with_discrete = gym_spaces.Dict(
        {"image": gym_spaces.Box(0, 255, (8, 8), np.uint8), "gear": gym_spaces.Discrete(3)}
    )
    with pytest.raises(GymAdapterError, match="vector_keys="):
        GymImageAdapter(ImageEnv(with_discrete))
    assert GymImageAdapter(ImageEnv(with_discrete), vector_keys=[]).observation_space["vector"].shape == (0,)


ODD_BOUNDS = [
    (np.array([-3.0, 0.0, 10.0], np.float64), np.array([5.0, 0.5, 10.25], np.float64)),
    (np.array([[0.1, -7.0], [2.0, -1e-3]], np.float32), np.array([[0.7, 7.0], [3.0, 0.0]], np.float32)),
]


@pytest.mark.parametrize(("low", "high"), ODD_BOUNDS)
@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_actions_are_rescaled_affinely_onto_the_env_bounds(low, high, data):
    env = ImageEnv(gym_spaces.Box(0, 255, (8, 8), np.uint8), gym_spaces.Box(low, high, dtype=low.dtype))
    adapter = GymImageAdapter(env)
    assert adapter.action_space == gym_spaces.Box(-1.0, 1.0, (low.size,), np.float32)
    adapter.reset(seed=0)
    unit = st.floats(-1.0, 1.0, width=32)
    action = np.array(data.draw(st.lists(unit, min_size=low.size, max_size=low.size)), np.float32)
    adapter.step(action)
    sent = env.actions[-1]
    assert sent.shape == low.shape and sent.dtype == low.dtype
    expected = low + (action.reshape(low.shape).astype(np.float64) + 1.0) / 2.0 * (high - low)
    np.testing.assert_allclose(sent, expected.astype(low.dtype), rtol=1e-6, atol=1e-6)
    assert env.action_space.contains(sent)
    # The ends of [-1, 1] reach the bounds exactly; beyond them actions are clipped.
    for agent_value, bound in ((-1.0, low), (1.0, high), (-3.0, low), (1.5, high)):
        adapter.step(np.full(low.size, agent_value, np.float32))
        np.testing.assert_array_equal(env.actions[-1], bound)


def test_discrete_actions_are_refused_in_one_line():
    env = ImageEnv(gym_spaces.Box(0, 255, (8, 8), np.uint8), gym_spaces.Discrete(4))
    with pytest.raises(GymAdapterError, match="TD3 needs a Box") as error:
        GymImageAdapter(env)
    assert "\n" not in str(error.value)


def test_stack_must_hold_a_frame():
    with pytest.raises(GymAdapterError, match="stack"):
        GymImageAdapter(ImageEnv(gym_spaces.Box(0, 255, (8, 8), np.uint8)), stack=0)


def test_non_image_observations_are_refused_in_one_line():
    env = ImageEnv(gym_spaces.Box(-1.0, 1.0, (6,), np.float32))
    with pytest.raises(GymAdapterError, match="not an image") as error:
        GymImageAdapter(env)
    assert "\n" not in str(error.value)


# ------------------------------------------------------------ make_gym_env


def _make_registered_image_env(shape=(3, 20, 20)):
    return ImageEnv(gym_spaces.Box(0, 255, shape, np.uint8))


gymnasium.register("td3_jax_test/Image-v0", entry_point=_make_registered_image_env, max_episode_steps=50)


def test_make_gym_env_passes_make_kwargs_and_honours_seeds():
    env = make_gym_env("td3_jax_test/Image-v0", stack=2, seed=3, shape=(24, 20, 3))
    assert env.unwrapped.observation_space.shape == (24, 20, 3)
    assert env.converter.layout == ("h", "w", "c")

    def first_image(seed):
        fresh = make_gym_env("td3_jax_test/Image-v0", stack=2, shape=(24, 20, 3))
        return fresh.reset(seed=seed)[0]["image"]

    first, _ = env.reset()  # uses the constructor's seed
    np.testing.assert_array_equal(first["image"], first_image(3))
    second, _ = env.reset()  # continues the seeded RNG
    assert not np.array_equal(second["image"], first["image"])
    explicit, _ = env.reset(seed=5)
    np.testing.assert_array_equal(explicit["image"], first_image(5))
    env.close()


@pytest.mark.parametrize(
    ("env_id", "message"),
    [("NoSuchEnv-v0", "doesn't exist"), ("CartPole-v1", "not an image"), ("Pendulum-v1", "not an image")],
)
def test_make_gym_env_errors_are_one_line(env_id, message):
    with pytest.raises(GymAdapterError, match=message) as error:
        make_gym_env(env_id)
    assert "\n" not in str(error.value)


def test_car_racing_runs_with_the_shared_layout():
    pytest.importorskip("Box2D")
    env = make_gym_env("CarRacing-v3", seed=0)
    assert env.action_space == gym_spaces.Box(-1.0, 1.0, (3,), np.float32)
    # (steer, gas, brake) pass through rescaled: -1 means no gas and no brake.
    np.testing.assert_array_equal(env.env_action(np.array([0.0, -1.0, -1.0])), [0.0, 0.0, 0.0])
    np.testing.assert_array_equal(env.env_action(np.array([-1.0, 1.0, 0.0])), [-1.0, 1.0, 0.5])
    obs, _ = env.reset()
    assert obs["image"].shape == (SIZE, SIZE, 4) and obs["image"].dtype == np.uint8
    assert obs["vector"].shape == (0,) and obs["vector"].dtype == np.float32
    for _ in range(3):
        previous = obs["image"]
        obs, reward, terminated, truncated, _ = env.step(env.action_space.sample())
        assert env.observation_space.contains(obs)
        np.testing.assert_array_equal(obs["image"][..., :-1], previous[..., 1:])
        assert isinstance(reward, float) and not terminated and not truncated
    env.close()
