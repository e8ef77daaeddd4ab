"""The frame-once replay buffer against a naive reference that stores full stacks."""

from __future__ import annotations

import copy
import io
import itertools
import json

import chex
import hypothesis.strategies as st
import jax
import numpy as np
import pytest
from hypothesis import given, settings

from td3_jax.core.types import unpack
from td3_jax.envs.spaces import FrameStack
from td3_jax.replay import ReplayBuffer, ReplayMemoryError

FRAME_SHAPE = (2, 3)  # six bytes: room for a unique little-endian id per frame
VECTOR_DIM = 3
ACTION_DIM = 2


def stamped_frame(frame_id: int) -> np.ndarray:
    """A (2, 3) uint8 frame whose bytes spell `frame_id`, so every frame is distinct."""
    return np.frombuffer(frame_id.to_bytes(6, "little"), np.uint8).reshape(FRAME_SHAPE).copy()


class StampedEnv:
    """One env stream following a plan of episodes (length, end, start_repeats).

    `end` is "terminated", "truncated" or "failed" (the last step is no real
    transition, as after a simulator failure).

    A reset stacks the first frame `start_repeats` times and then new frames, so
    start_repeats == stack is the usual first-frame-repeated stack. Frames and
    observations carry unique ids (observation id in vector[0]).
    """

    def __init__(self, env_id: int, stack: int, episodes: list[tuple[int, bool, int]], ids):
        self.env_id, self.stack, self.episodes, self.ids = env_id, stack, episodes, ids
        self.frame_stack = FrameStack(stack, FRAME_SHAPE)
        self.episode = -1
        self.new_episode()

    def new_episode(self) -> None:
        self.episode += 1
        self.length, self.end, self.start_repeats = self.episodes[self.episode % len(self.episodes)]
        self.t = 0
        self.image = self.frame_stack.reset(stamped_frame(next(self.ids)))
        for _ in range(self.stack - self.start_repeats):
            self.image = self.frame_stack.push(stamped_frame(next(self.ids)))
        self.vector = self.make_vector()

    def make_vector(self) -> np.ndarray:
        return np.array([next(self.ids), self.env_id, 0.25], np.float32)

    def step(self) -> tuple[np.ndarray, np.ndarray, bool, bool, bool]:
        self.t += 1
        done = self.t == self.length
        return (
            self.frame_stack.push(stamped_frame(next(self.ids))),
            self.make_vector(),
            done and self.end == "terminated",
            done and self.end == "truncated",
            done and self.end == "failed",
        )


class ReferenceBuffer:
    """Stores every transition's full stacks, keyed by transition id.

    Liveness follows the documented capacity contract, counted independently
    of the buffer's layout: per stream, an episode start writes
    ``stack - start_repeats + 1`` frames and a transition one; a transition
    lives while every frame its window uses is among the stream's last
    `slots_per_env` frames.
    """

    def __init__(self, n_envs: int, stack: int, slots_per_env: int):
        self.stack, self.slots_per_env = stack, slots_per_env
        self.frames_written = [0] * n_envs
        self.episode_first = [0] * n_envs
        self.transitions = {}
        self.successor = {}  # transition id -> the next transition of its episode, once stored

    def start_episode(self, env: int, start_repeats: int) -> None:
        self.episode_first[env] = self.frames_written[env]
        self.frames_written[env] += self.stack - start_repeats + 1

    def add(self, env: int, transition_id: int, transition: dict) -> None:
        next_frame = self.frames_written[env]
        self.frames_written[env] += 1
        oldest = max(next_frame - self.stack, self.episode_first[env])
        self.transitions[transition_id] = dict(transition, env=env, oldest=oldest)

    def n_step(self, transition_id: int, n_step: int, discount: float) -> dict:
        """The n-step transition starting at `transition_id`, built by following the episode."""
        chain = [self.transitions[transition_id]]
        ids = [transition_id]
        while len(chain) < n_step and ids[-1] in self.successor:
            ids.append(self.successor[ids[-1]])
            chain.append(self.transitions[ids[-1]])
        last = chain[-1]
        return dict(
            image=chain[0]["image"], vector=chain[0]["vector"], action=chain[0]["action"],
            reward=sum(discount**i * np.float64(step["reward"]) for i, step in enumerate(chain)),
            next_image=last["next_image"], next_vector=last["next_vector"],
            terminated=last["terminated"], discount=discount ** len(chain),
        )

    def live(self) -> dict[int, dict]:
        return {
            tid: tr for tid, tr in self.transitions.items()
            if tr["oldest"] >= self.frames_written[tr["env"]] - self.slots_per_env
        }


def run_steps(buffer, reference, envs, n_steps, ids, on_step=None):
    """Steps every env in lockstep, adding each step to `buffer` and `reference`."""
    previous = {}  # env id -> its last stored transition, while that episode goes on
    for _ in range(n_steps):
        rows = []
        for env in envs:
            starting = env.t == 0
            next_image, next_vector, terminated, truncated, failed = env.step()
            tid = next(ids)
            if failed:  # what a failed simulator step may hand over: nothing consistent
                next_image = np.full_like(next_image, 255)
            rows.append(dict(
                image=env.image, vector=env.vector, action=np.array([tid, env.env_id], np.float32),
                reward=np.float32(0.5 * tid), next_image=next_image, next_vector=next_vector,
                terminated=terminated, truncated=truncated, skip=failed,
            ))
            if reference is not None and not failed:
                if starting:  # a skipped first step stores no frames either
                    reference.start_episode(env.env_id, env.start_repeats)
                reference.add(env.env_id, tid, rows[-1])
                if env.env_id in previous:
                    reference.successor[previous[env.env_id]] = tid
                previous[env.env_id] = tid
            if terminated or truncated or failed:
                previous.pop(env.env_id, None)
                env.new_episode()
            else:
                env.image, env.vector = next_image, next_vector
        buffer.add(**{key: np.stack([np.asarray(row[key]) for row in rows]) for key in rows[0]})
        if on_step is not None:
            on_step()


def assert_matches_reference(buffer: ReplayBuffer, reference: ReferenceBuffer) -> None:
    """Every sampled transition equals the reference's; all live ones get sampled."""
    live = reference.live()
    assert len(buffer) == len(live)
    if not live:
        return
    draws = 64 * len(live)
    batch = buffer.sample(draws)
    stack = buffer.stack
    chex.assert_shape(batch.frames, (draws, stack + 1, *FRAME_SHAPE))
    chex.assert_type([batch.frames, batch.vector, batch.terminated], [np.uint8, np.float32, np.float32])
    assert batch.next_frames is None and batch.discount is None
    live_ids = np.array(sorted(live))
    sampled = batch.action[:, 0].astype(np.int64)
    assert np.isin(sampled, live_ids).all(), "sampled an overwritten or unknown transition"
    # 64 draws per transition: missing one has probability about len(live) * exp(-64).
    np.testing.assert_array_equal(np.unique(sampled), live_ids)
    rows = [live[tid] for tid in sampled]
    expected = {key: np.stack([np.asarray(row[key]) for row in rows]) for key in rows[0]}
    unpacked = unpack(batch)
    np.testing.assert_array_equal(unpacked.image, expected["image"])
    np.testing.assert_array_equal(unpacked.next_image, expected["next_image"])
    np.testing.assert_array_equal(batch.vector, expected["vector"])
    np.testing.assert_array_equal(batch.next_vector, expected["next_vector"])
    np.testing.assert_array_equal(batch.action, expected["action"])
    np.testing.assert_array_equal(batch.reward, expected["reward"])
    np.testing.assert_array_equal(batch.terminated, expected["terminated"].astype(np.float32))


@st.composite
def scenarios(draw):
    n_envs = draw(st.integers(1, 3))
    stack = draw(st.integers(1, 4))
    slots_per_env = draw(st.integers(stack + 1, stack + 12))
    end = st.sampled_from(["terminated", "truncated", "failed"])
    episode = st.tuples(st.integers(1, 9), end, st.integers(1, stack))
    plans = [draw(st.lists(episode, min_size=1, max_size=6)) for _ in range(n_envs)]
    n_steps = draw(st.integers(1, 40))
    seed = draw(st.integers(0, 2**16))
    return n_envs, stack, slots_per_env, plans, n_steps, seed


def make_case(n_envs, stack, slots_per_env, plans, seed):
    ids = itertools.count(1)
    buffer = ReplayBuffer(
        n_envs * slots_per_env, n_envs=n_envs, stack=stack, frame_shape=FRAME_SHAPE,
        vector_dim=VECTOR_DIM, action_dim=ACTION_DIM, seed=seed,
    )
    reference = ReferenceBuffer(n_envs, stack, slots_per_env)
    envs = [StampedEnv(env, stack, plans[env], ids) for env in range(n_envs)]
    return buffer, reference, envs, ids


@settings(max_examples=150, deadline=None)
@given(scenarios())
def test_samples_match_naive_reference(scenario):
    n_envs, stack, slots_per_env, plans, n_steps, seed = scenario
    buffer, reference, envs, ids = make_case(n_envs, stack, slots_per_env, plans, seed)
    run_steps(buffer, reference, envs, n_steps, ids, on_step=lambda: assert_matches_reference(buffer, reference))


def assert_n_step_matches_reference(buffer, reference, n_step: int, discount: float) -> None:
    """Every sampled n-step transition equals the one built by following the reference's episodes."""
    live = reference.live()
    if not live:
        return
    draws = 64 * len(live)
    packed = buffer.gather_n_step(buffer.sample_indices(draws), n_step, discount)
    chex.assert_shape([packed.frames, packed.next_frames], (draws, buffer.stack, *FRAME_SHAPE))
    chex.assert_type([packed.reward, packed.terminated, packed.discount], np.float32)
    batch = unpack(packed)
    sampled = batch.action[:, 0].astype(np.int64)
    np.testing.assert_array_equal(np.unique(sampled), np.array(sorted(live)))
    rows = [reference.n_step(tid, n_step, discount) for tid in sampled]
    expected = {key: np.stack([np.asarray(row[key]) for row in rows]) for key in rows[0]}
    for key in ("image", "next_image", "vector", "next_vector", "action"):
        np.testing.assert_array_equal(getattr(batch, key), expected[key], err_msg=key)
    np.testing.assert_array_equal(batch.terminated, expected["terminated"].astype(np.float32))
    np.testing.assert_allclose(batch.reward, expected["reward"], rtol=1e-6)
    np.testing.assert_allclose(batch.discount, expected["discount"], rtol=1e-6)


@settings(max_examples=100, deadline=None)
@given(scenarios(), st.integers(1, 5), st.sampled_from([1.0, 0.9, 0.5]))
def test_n_step_samples_match_the_reference_episodes(scenario, n_step, discount):
    n_envs, stack, slots_per_env, plans, n_steps, seed = scenario
    buffer, reference, envs, ids = make_case(n_envs, stack, slots_per_env, plans, seed)
    run_steps(
        buffer, reference, envs, n_steps, ids,
        on_step=lambda: assert_n_step_matches_reference(buffer, reference, n_step, discount),
    )


@settings(max_examples=40, deadline=None)
@given(scenarios(), st.integers(1, 4), st.sampled_from([1.0, 0.9]))
def test_reward_components_are_stored_and_summed_over_n_steps_each_like_the_reward(scenario, n_step, discount):
    """A buffer of reward components (r, -2r) draws what a buffer of r draws, with each component's
    n-step sum in its own column (the reward buffer is checked against the reference above)."""
    n_envs, stack, slots_per_env, plans, n_steps, seed = scenario
    rewards, _, envs, ids = make_case(n_envs, stack, slots_per_env, plans, seed)
    components = ReplayBuffer(
        n_envs * slots_per_env, n_envs=n_envs, stack=stack, frame_shape=FRAME_SHAPE,
        vector_dim=VECTOR_DIM, action_dim=ACTION_DIM, reward_components=2, seed=seed,
    )

    class Both:
        def add(self, reward, **rest):
            rewards.add(reward=reward, **rest)
            components.add(reward=np.stack([reward, -2.0 * reward], axis=-1), **rest)

    def check():
        if len(rewards):
            a = rewards.sample(32, n_step=n_step, discount=discount)
            b = components.sample(32, n_step=n_step, discount=discount)
            np.testing.assert_array_equal(a.action, b.action)  # the same draws
            chex.assert_shape(b.reward, (32, 2))
            np.testing.assert_allclose(b.reward, np.stack([a.reward, -2.0 * a.reward], axis=-1), rtol=1e-6)

    run_steps(Both(), None, envs, n_steps, ids, on_step=check)
    with pytest.raises(ValueError, match=r"reward must be \(\d+, 2\)"):
        components.add(**{**_one_step(components), "reward": np.zeros(n_envs)})


def _one_step(buffer: ReplayBuffer) -> dict:
    """Arguments of a well-formed `add` of a new episode's first step (every stream)."""
    n, stack = buffer.n_envs, buffer.stack
    image = np.zeros((n, *FRAME_SHAPE, stack), np.uint8)
    return dict(image=image, vector=np.zeros((n, VECTOR_DIM), np.float32), action=np.zeros((n, ACTION_DIM)),
                reward=np.zeros((n, *buffer.reward_shape)), next_image=image,
                next_vector=np.zeros((n, VECTOR_DIM), np.float32), terminated=np.ones(n, bool),
                truncated=np.zeros(n, bool))


def test_n_step_one_is_the_one_step_batch():
    buffer, _, envs, ids = make_case(2, 3, 20, [[(6, "truncated", 3)], [(4, "terminated", 1)]], seed=4)
    run_steps(buffer, None, envs, 15, ids)
    twin = copy.deepcopy(buffer)
    one_step_batch = buffer.gather(buffer.sample_indices(16))
    n_step_batch = twin.gather_n_step(twin.sample_indices(16), 1, 0.9)
    chex.assert_trees_all_equal(unpack(one_step_batch)[:-1], unpack(n_step_batch)[:-1])
    np.testing.assert_allclose(n_step_batch.discount, 0.9)
    assert buffer.sample(4, n_step=3, discount=0.9).next_frames is not None
    with pytest.raises(ValueError, match="n_step must be >= 1"):
        buffer.sample(4, n_step=0)


@pytest.mark.parametrize("n_step", [1, 3])
def test_sampled_frames_reach_a_cpu_device_without_a_copy(n_step):
    """Frame arrays (nearly all of a sample's bytes) are C-contiguous and 64-byte aligned, so XLA's CPU client aliases them."""
    buffer, _, envs, ids = make_case(2, 3, 20, [[(6, "truncated", 3)], [(4, "terminated", 1)]], seed=4)
    run_steps(buffer, None, envs, 15, ids)
    batch = buffer.sample(32, n_step=n_step, discount=0.9)
    frames = [batch.frames] if n_step == 1 else [batch.frames, batch.next_frames]
    for array in [*frames, batch.vector, batch.next_vector, batch.action]:
        assert array.flags.c_contiguous and array.ctypes.data % 64 == 0
    if jax.default_backend() == "cpu":
        for array in frames:
            placed = jax.device_put(array)
            assert placed.unsafe_buffer_pointer() == array.ctypes.data, "the frames were copied to the device"
            np.testing.assert_array_equal(placed, array)


def checkpoint_round_trip(state: dict) -> dict:
    """What a checkpoint does: arrays through .npz bytes, scalars through JSON."""
    arrays = {key: value for key, value in state.items() if isinstance(value, np.ndarray)}
    scalars = {key: value for key, value in state.items() if key not in arrays}
    blob = io.BytesIO()
    np.savez(blob, **arrays)
    blob.seek(0)
    with np.load(blob) as loaded:
        restored = {key: loaded[key] for key in loaded.files}
    restored.update(json.loads(json.dumps(scalars)))
    restored["frames"].setflags(write=False)  # a restored array the buffer must copy, not adopt
    return restored


@pytest.mark.parametrize("n_step", [1, 3])
def test_a_sample_written_into_an_earlier_one_equals_a_fresh_sample(n_step):
    plans = [[(7, "terminated", 4), (3, "truncated", 4), (5, "failed", 2)], [(11, "truncated", 4)]]
    buffer, _, envs, ids = make_case(2, 4, 40, plans, seed=3)
    run_steps(buffer, None, envs, 25, ids)
    twin = copy.deepcopy(buffer)
    earlier = buffer.sample(16, n_step=n_step, discount=0.9)
    into = buffer.sample(16, n_step=n_step, discount=0.9, out=earlier)
    twin.sample(16, n_step=n_step, discount=0.9)  # the twin's sampler steps past the first draw too
    fresh = twin.sample(16, n_step=n_step, discount=0.9)
    chex.assert_trees_all_equal(into, fresh)
    for a, b in zip(into, earlier):
        assert a is b or (a is None and b is None)
    # An earlier sample of another size is not written to.
    other = buffer.sample(8, n_step=n_step, discount=0.9, out=into)
    assert not np.shares_memory(other.frames, into.frames)


def test_save_load_round_trip_continues_identically():
    plans = [
        [(7, "terminated", 4), (3, "truncated", 4), (5, "failed", 2)],
        [(11, "truncated", 4), (2, "terminated", 1)],
    ]
    first, _, envs, ids = make_case(2, 4, 12, plans, seed=3)
    run_steps(first, None, envs, 20, ids)
    second, *_ = make_case(2, 4, 12, plans, seed=99)
    second.load_state_dict(checkpoint_round_trip(first.state_dict()))
    chex.assert_trees_all_equal(second.state_dict(), first.state_dict())
    chex.assert_trees_all_equal(second.sample(32), first.sample(32))

    # Both buffers take the same next steps from copies of the envs.
    twin_envs, twin_ids = copy.deepcopy((envs, ids))
    for _ in range(3):
        run_steps(first, None, envs, 5, ids)
        run_steps(second, None, twin_envs, 5, twin_ids)
        chex.assert_trees_all_equal(second.sample(32), first.sample(32))
    chex.assert_trees_all_equal(second.state_dict(), first.state_dict())


def test_state_dict_is_flat_arrays_and_json_scalars():
    buffer, _, envs, ids = make_case(1, 4, 10, [[(4, "terminated", 4)]], seed=0)
    run_steps(buffer, None, envs, 6, ids)
    state = buffer.state_dict()
    scalars = {key: value for key, value in state.items() if not isinstance(value, np.ndarray)}
    assert json.loads(json.dumps(scalars)) == scalars
    assert set(scalars) == {"format", "stack", "rng_state"}


def test_load_rejects_state_of_other_settings():
    small, *_ = make_case(1, 4, 10, [[(4, "terminated", 4)]], seed=0)
    large, *_ = make_case(1, 4, 12, [[(4, "terminated", 4)]], seed=0)
    with pytest.raises(ValueError, match="capacity"):
        large.load_state_dict(small.state_dict())
    state = small.state_dict()
    del state["depth"]
    with pytest.raises(ValueError, match="missing"):
        small.load_state_dict(state)


def test_sampling_is_uniform_over_transitions_of_uneven_streams():
    # Stream 0 has short episodes (many start slots), stream 1 long ones: a sampler that picked
    # a stream first, or a slot without rejecting start frames, would be biased.
    buffer, reference, envs, ids = make_case(2, 4, 40, [[(2, "terminated", 4)], [(30, "truncated", 4)]], seed=5)
    run_steps(buffer, reference, envs, 25, ids)
    live = reference.live()
    draws = 2000 * len(live)
    tids = buffer.sample(draws).action[:, 0].astype(int)
    counts = np.array([np.count_nonzero(tids == tid) for tid in live])
    assert counts.sum() == draws
    # 5 binomial standard deviations around the expected 2000 per transition.
    assert np.all(np.abs(counts - 2000) < 5 * np.sqrt(2000))


def test_same_seed_same_samples_other_seed_others():
    batches = []
    for seed in (7, 7, 8):
        buffer, _, envs, ids = make_case(1, 3, 30, [[(6, "truncated", 3)]], seed=seed)
        run_steps(buffer, None, envs, 25, ids)
        batches.append(buffer.sample(16))
    chex.assert_trees_all_equal(batches[0], batches[1])
    assert not np.array_equal(batches[0].action, batches[2].action)


def one_step(buffer: ReplayBuffer, **overrides) -> dict:
    stack, height, width = buffer.stack, *buffer.frame_shape
    frames = np.arange(stack + 1, dtype=np.uint8)[None, None, None, :] * np.ones((1, height, width, 1), np.uint8)
    step = dict(
        image=frames[..., :stack], vector=np.zeros((1, buffer.vector_dim), np.float32),
        action=np.zeros((1, buffer.action_dim)), reward=np.zeros(1),
        next_image=frames[..., 1:], next_vector=np.ones((1, buffer.vector_dim), np.float32),
        terminated=np.zeros(1, bool), truncated=np.zeros(1, bool),
    )
    step.update(overrides)
    return step


@pytest.mark.parametrize(
    "name, value, message",
    [
        ("image", np.zeros((1, 2, 3, 4), np.float32), r"image must be \(1, 2, 3, 4\) uint8"),
        ("image", np.zeros((1, 3, 2, 4), np.uint8), r"image must be \(1, 2, 3, 4\) uint8"),
        ("next_image", np.zeros((2, 3, 4), np.uint8), "next_image must be"),
        ("vector", np.zeros((1, VECTOR_DIM), np.float64), "vector must be .* float32"),
        ("action", np.zeros((1, 3)), "action must be"),
        ("terminated", np.zeros(1, np.int64), "terminated must be .* bool"),
    ],
)
def test_add_rejects_wrong_shape_or_dtype(name, value, message):
    buffer = ReplayBuffer(20, stack=4, frame_shape=FRAME_SHAPE, vector_dim=VECTOR_DIM)
    with pytest.raises(ValueError, match=message):
        buffer.add(**one_step(buffer, **{name: value}))
    assert len(buffer) == 0


def test_add_rejects_broken_streams_without_writing():
    buffer = ReplayBuffer(20, stack=2, frame_shape=FRAME_SHAPE, vector_dim=VECTOR_DIM)
    step = one_step(buffer)
    with pytest.raises(ValueError, match="shifted by one frame"):
        buffer.add(**dict(step, next_image=step["next_image"][..., ::-1].copy()))
    buffer.add(**step)
    before = {key: np.copy(value) for key, value in buffer.state_dict().items()}
    # The same observation again, although the last step did not end the episode.
    with pytest.raises(ValueError, match="env 0: the observation is not the previous step's next"):
        buffer.add(**step)
    chex.assert_trees_all_equal(buffer.state_dict(), before)
    buffer.add(**dict(step, image=step["next_image"], next_image=step["next_image"] + 1,
                      vector=step["next_vector"]))
    assert len(buffer) == 2


def test_end_episodes_starts_a_new_episode_without_bridging():
    buffer = ReplayBuffer(20, stack=2, frame_shape=FRAME_SHAPE, vector_dim=VECTOR_DIM)
    step = one_step(buffer)  # frames 0, 1 -> 1, 2; next_vector all ones
    buffer.add(**step)
    buffer.end_episodes(np.array([True]))
    # A new episode that does not continue the last one: no continuity error, and its
    # window holds only its own frames (7 repeated, then 8).
    window = np.full((1, *FRAME_SHAPE, 3), 7, np.uint8)
    window[..., 2] = 8
    buffer.add(**dict(step, image=window[..., :2], next_image=window[..., 1:],
                      next_vector=np.full((1, VECTOR_DIM), 2, np.float32)))
    assert len(buffer) == 2
    batch = buffer.sample(64)
    pixel_windows = batch.frames[:, :, 0, 0]
    np.testing.assert_array_equal(np.unique(pixel_windows[batch.next_vector[:, 0] == 1], axis=0), [[0, 1, 2]])
    np.testing.assert_array_equal(np.unique(pixel_windows[batch.next_vector[:, 0] == 2], axis=0), [[7, 7, 8]])


def test_sample_from_empty_buffer_is_a_clear_error():
    with pytest.raises(ValueError, match="no sampleable transition"):
        ReplayBuffer(20, frame_shape=FRAME_SHAPE).sample(4)


def test_refuses_more_memory_than_available():
    with pytest.raises(ReplayMemoryError, match="lower the replay capacity"):
        ReplayBuffer(10**12)  # about 7 PB, more than any machine has
    with pytest.raises(ValueError, match=r"needs .* GiB but only .* GiB"):
        ReplayBuffer(1000, memory_limit_bytes=10**6)


@pytest.mark.parametrize("n_envs, stack, reward_components", [(1, 4, 0), (3, 2, 5), (2, 1, 0)])
def test_estimate_matches_allocation(n_envs, stack, reward_components):
    kwargs = dict(n_envs=n_envs, stack=stack, frame_shape=(5, 7), vector_dim=4, action_dim=3,
                  reward_components=reward_components)
    buffer = ReplayBuffer(100, **kwargs)
    assert buffer.nbytes == ReplayBuffer.estimate_bytes(100, **kwargs)
    assert f"{n_envs} x {100 // n_envs}" in buffer.summary()


def test_one_million_default_transitions_fit_in_seven_and_a_half_gb():
    assert ReplayBuffer.estimate_bytes(1_000_000) <= 7.5e9
