"""Host-side NumPy replay buffer that stores each frame once.

A naive image buffer stores the observation and the next observation as full
frame stacks: 2 × S frames per transition (56 KB for 84×84×4 uint8). Within an
episode consecutive stacks share S-1 frames, so this buffer keeps one ring of
single frames per env stream and rebuilds stacks by index arithmetic at sample
time (the design of jaxrl2's memory-efficient buffer and Dopamine's
"valid stacked elements"), about 7.3 KB per transition.

Layout. Every env stream owns a ring of ``capacity // n_envs`` frame slots. A
slot holds one frame and the vector state of the observation whose newest
frame it is. A slot that holds the *next* observation of a transition also
holds that transition (action, reward, terminated, truncated) and its `depth`:
how many slots back the transition's window may reach before it meets the
first stored frame of its episode (at most S). Episode starts store the frames
of the reset observation with its leading repeats collapsed: the usual
first-frame-repeated stack (`envs.spaces.FrameStack`) costs one slot, an
arbitrary stack up to S. Windows never reach past an episode's first frame;
they repeat it instead, exactly as the env's stacker does at reset.

Capacity therefore counts frame slots: each transition uses one, and each
episode start one more (up to S for a start stack that is not
first-frame-repeated). `len()` is the exact number of sampleable transitions.

A sample is a `types.PackedBatch` whose frames are rows of the ring, gathered
frames-first: one window of S+1 frames per one-step transition, ``frames[:, :S]``
the observation and ``frames[:, 1:]`` the next observation (5 frames move
instead of 8), which the device splits and moves to NHWC.
"""

from __future__ import annotations

import json
import math

import numpy as np

from td3_jax.core.types import PackedBatch
from td3_jax.replay.memory import ReplayMemoryError, available_memory_bytes

STATE_FORMAT = 1
"""Version of the `state_dict` layout; bumped when it changes."""
_ARRAY_KEYS = (
    "frames", "vectors", "actions", "rewards", "terminated", "truncated", "depth",
    "write_pos", "count", "run", "needs_start",
)
_SCALAR_KEYS = ("format", "stack", "rng_state")
# XLA's CPU client takes a host array without copying it when the array is C-contiguous and its
# data 64-byte aligned; NumPy aligns large arrays to 16 bytes only, and each copy of a 9 MB batch
# cost more than the draw itself (docs/benchmarks.md).
_DEVICE_ALIGNMENT = 64


class ReplayBuffer:
    """Ring buffer of single frames for n_envs parallel env streams. Host-side.

    Args:
      capacity: total frame slots, split evenly over the streams (each gets
        ``capacity // n_envs``, at least ``stack + 1``). One slot per
        transition plus one per episode start (see the module docstring).
      n_envs: number of parallel env streams; `add` takes one row per stream.
      stack: frames per observation stack, S.
      frame_shape: (H, W) of one grayscale frame.
      vector_dim: size V of the vector state.
      action_dim: size A of the action.
      reward_components: 0 stores one reward per transition; C > 0 stores its C
        components (`add` takes (n_envs, C), samples hold (B, C)).
      seed: seed of the buffer's own `np.random.Generator` (sampling only).
      memory_limit_bytes: refuse to build a buffer whose arrays exceed this;
        None means the memory the machine has available now.

    Raises:
      ReplayMemoryError: the estimated bytes exceed the memory limit.
      ValueError: capacity too small for one window per stream, or bad sizes.
    """

    def __init__(
        self,
        capacity: int,
        *,
        n_envs: int = 1,
        stack: int = 4,
        frame_shape: tuple[int, int] = (84, 84),
        vector_dim: int = 53,
        action_dim: int = 2,
        reward_components: int = 0,
        seed: int = 0,
        memory_limit_bytes: int | None = None,
    ):
        if not 1 <= stack <= np.iinfo(np.uint8).max:
            raise ValueError(f"stack must be in [1, 255], got {stack}")
        if n_envs < 1:
            raise ValueError(f"n_envs must be >= 1, got {n_envs}")
        if reward_components < 0:
            raise ValueError(f"reward_components must be >= 0, got {reward_components}")
        if capacity // n_envs < stack + 1:
            raise ValueError(
                f"capacity {capacity} gives {capacity // n_envs} frame slots per env stream; "
                f"need at least stack + 1 = {stack + 1} per stream ({n_envs} streams)"
            )
        self.n_envs = n_envs
        self.stack = stack
        self.frame_shape = tuple(int(size) for size in frame_shape)
        self.vector_dim = vector_dim
        self.action_dim = action_dim
        self.reward_shape = (reward_components,) if reward_components else ()
        self.slots_per_env = capacity // n_envs
        self.estimated_bytes = self.estimate_bytes(
            capacity, n_envs=n_envs, stack=stack, frame_shape=frame_shape,
            vector_dim=vector_dim, action_dim=action_dim, reward_components=reward_components,
        )
        limit = available_memory_bytes() if memory_limit_bytes is None else memory_limit_bytes
        self.memory_limit_bytes = limit
        if limit is not None and self.estimated_bytes > limit:
            raise ReplayMemoryError(
                f"replay buffer of {capacity:,} frames needs {self.estimated_bytes / 2**30:.2f} GiB "
                f"but only {limit / 2**30:.2f} GiB is available; lower the replay capacity"
            )
        slots = n_envs * self.slots_per_env
        self._frames = np.zeros((slots, *self.frame_shape), np.uint8)
        self._vectors = np.zeros((slots, vector_dim), np.float32)
        self._actions = np.zeros((slots, action_dim), np.float32)
        self._rewards = np.zeros((slots, *self.reward_shape), np.float32)
        self._terminated = np.zeros((slots,), np.bool_)
        self._truncated = np.zeros((slots,), np.bool_)
        # 0: the slot ends no transition (an episode-start frame or never written).
        self._depth = np.zeros((slots,), np.uint8)
        self._write_pos = np.zeros((n_envs,), np.int64)
        self._count = np.zeros((n_envs,), np.int64)
        # Slots from the current episode's first stored frame to the newest one, capped at S.
        self._run = np.zeros((n_envs,), np.int64)
        self._needs_start = np.ones((n_envs,), np.bool_)
        self._rng = np.random.default_rng(seed)
        self._after_storage_change()
        # Window element j of a transition ending at slot p sits min(S - j, depth) slots back.
        self._window_backs = np.arange(stack, -1, -1)

    @staticmethod
    def estimate_bytes(
        capacity: int,
        *,
        n_envs: int = 1,
        stack: int = 4,
        frame_shape: tuple[int, int] = (84, 84),
        vector_dim: int = 53,
        action_dim: int = 2,
        reward_components: int = 0,
    ) -> int:
        """Bytes of the arrays a buffer with these settings allocates (all slots filled).

        Returns:
          Frame, vector, action, reward, flag and depth bytes per slot times the
          slots, plus the per-stream counters. `stack` does not change it.
        """
        del stack
        height, width = frame_shape
        per_slot = height * width + 4 * vector_dim + 4 * action_dim + 4 * max(1, reward_components) + 1 + 1 + 1
        return (capacity // n_envs) * n_envs * per_slot + n_envs * (3 * 8 + 1)

    @property
    def nbytes(self) -> int:
        """Bytes of all arrays the buffer holds."""
        return sum(array.nbytes for array in self._arrays().values())

    def summary(self) -> str:
        """One loggable line: capacity, streams and the memory estimate against the limit."""
        limit = "unknown" if self.memory_limit_bytes is None else f"{self.memory_limit_bytes / 2**30:.2f} GiB"
        per_slot = self.estimated_bytes / (self.n_envs * self.slots_per_env)
        return (
            f"replay buffer: {self.n_envs} x {self.slots_per_env:,} frame slots, stack {self.stack}, "
            f"{per_slot:,.0f} B per frame slot, {self.estimated_bytes / 2**30:.2f} GiB "
            f"(available: {limit})"
        )

    def __len__(self) -> int:
        """Number of transitions `sample` can return."""
        return self._n_transition_slots - self._n_broken_at_seams()

    def add(
        self,
        image: np.ndarray,
        vector: np.ndarray,
        action: np.ndarray,
        reward: np.ndarray,
        next_image: np.ndarray,
        next_vector: np.ndarray,
        terminated: np.ndarray,
        truncated: np.ndarray,
        skip: np.ndarray | None = None,
    ) -> None:
        """Stores one env step of every stream.

        A stream starts an episode on its first add and after an add whose
        `terminated` or `truncated` was set; then the frames of `image` are
        stored (leading repeats of its first frame collapsed, so any stack is
        reproduced exactly). Otherwise `image` must equal the previous add's
        next observation, and only the newest frame of `next_image` is stored.
        The inputs are checked before anything is written.

        Args:
          image: (n_envs, H, W, S) uint8, the observation stack.
          vector: (n_envs, V) float32, the observation's vector state.
          action: (n_envs, A) real, stored as float32.
          reward: (n_envs,) real, or (n_envs, C) with `reward_components` C; stored as float32.
          next_image: (n_envs, H, W, S) uint8, the true next observation (the
            final one when the episode ends, never the reset observation);
            within an episode ``next_image[..., :-1] == image[..., 1:]``.
          next_vector: (n_envs, V) float32.
          terminated: (n_envs,) bool, the episode ended in a terminal state.
          truncated: (n_envs,) bool, the episode was cut (time limit); the
            target still bootstraps from `next_image`.
          skip: optional (n_envs,) bool: streams whose step is not a real
            transition (a simulator failure). Nothing of theirs is stored or
            checked beyond shape and dtype, and their episode ends there, as
            with `end_episodes`.

        Raises:
          ValueError: a wrong shape or dtype, a `next_image` that is not
            `image` shifted by one frame, or an `image` that does not continue
            the stream (an episode end without terminated/truncated).
        """
        image = self._check_array("image", image, (*self.frame_shape, self.stack), np.uint8)
        next_image = self._check_array("next_image", next_image, (*self.frame_shape, self.stack), np.uint8)
        vector = self._check_array("vector", vector, (self.vector_dim,), np.float32)
        next_vector = self._check_array("next_vector", next_vector, (self.vector_dim,), np.float32)
        action = self._check_array("action", action, (self.action_dim,), None)
        reward = self._check_array("reward", reward, self.reward_shape, None)
        terminated = self._check_array("terminated", terminated, (), np.bool_)
        truncated = self._check_array("truncated", truncated, (), np.bool_)
        skip = np.zeros(self.n_envs, np.bool_) if skip is None else self._check_array("skip", skip, (), np.bool_)
        envs = np.flatnonzero(~skip)
        # Frame-major copies (n_envs, S, H, W): every comparison and write below is then contiguous.
        image = np.ascontiguousarray(np.moveaxis(image[envs], -1, 1))
        next_image = np.ascontiguousarray(np.moveaxis(next_image[envs], -1, 1))
        vector, next_vector = vector[envs], next_vector[envs]
        if not np.array_equal(next_image[:, :-1], image[:, 1:]):
            raise ValueError("next_image[..., :-1] must equal image[..., 1:] (the stack shifted by one frame)")
        self._check_continuity(envs, image, vector)

        for row in np.flatnonzero(self._needs_start[envs]):
            self._store_episode_start(envs[row], image[row], vector[row])
        slots = self._flat(envs, self._write_pos[envs])
        self._n_transition_slots += int(np.count_nonzero(self._depth[slots] == 0))
        self._run[envs] = np.minimum(self._run[envs] + 1, self.stack)
        self._frames[slots] = next_image[:, -1]
        self._vectors[slots] = next_vector
        self._actions[slots] = action[envs]
        self._rewards[slots] = reward[envs]
        self._terminated[slots] = terminated[envs]
        self._truncated[slots] = truncated[envs]
        self._depth[slots] = self._run[envs]
        self._advance(envs, 1)
        self._needs_start = terminated | truncated | skip

    def end_episodes(self, mask: np.ndarray) -> None:
        """Ends the current episode of the streams in `mask` without storing a transition.

        For a step whose transition is not real (a simulator failure, a resume
        that cannot restore the env): the stream's next `add` starts a new
        episode, and no window bridges the gap.

        Args:
          mask: (n_envs,) bool.
        """
        mask = np.asarray(mask, np.bool_)
        if mask.shape != (self.n_envs,):
            raise ValueError(f"mask must have shape ({self.n_envs},), got {mask.shape}")
        self._needs_start = self._needs_start | mask

    @property
    def sampler_state(self) -> dict:
        """A copy of the sampling RNG's state; setting it rewinds the draws (`batch_feed` cancels with it)."""
        return json.loads(json.dumps(self._rng.bit_generator.state))

    @sampler_state.setter
    def sampler_state(self, state: dict) -> None:
        self._rng.bit_generator.state = state

    def sample(
        self, batch_size: int, *, n_step: int = 1, discount: float = 1.0, out: PackedBatch | None = None
    ) -> PackedBatch:
        """Draws `batch_size` transitions uniformly, with replacement.

        Args:
          batch_size: transitions to draw.
          n_step: 1 gives one-step transitions; n > 1 gives n-step returns
            (`gather_n_step`) from the same uniformly drawn start transitions.
          discount: gamma of the n-step reward sum (unused when n_step == 1).
          out: a previous sample of the same size and kind whose arrays nothing
            reads any more; the draw is written into them (fresh memory costs a
            page fault per 4 KB on first touch: ~40% of a large draw).

        Returns:
          A `PackedBatch` of NumPy arrays: frames (B, S+1, H, W) uint8, vector
          and next_vector (B, V) float32, action (B, A) float32, reward (B,)
          float32 (or (B, C) with `reward_components`), terminated (B,) float32
          (1 only on termination; a truncation bootstraps). For n_step > 1 frames is (B, S, H, W), with next_frames
          (B, S, H, W) and discount (B,) set.

        Raises:
          ValueError: the buffer holds no sampleable transition, or n_step < 1.
        """
        if n_step < 1:
            raise ValueError(f"n_step must be >= 1, got {n_step}")
        slots = self.sample_indices(batch_size)
        return self.gather(slots, out) if n_step == 1 else self.gather_n_step(slots, n_step, discount, out)

    def sample_indices(self, batch_size: int) -> np.ndarray:
        """Slot indices of `batch_size` transitions drawn uniformly by the buffer's RNG.

        Draws uniformly over written slots and rejects those that end no
        transition (episode-start frames) or whose window reaches into frames
        the ring has overwritten; usually well under 1% are rejected.

        Returns:
          (B,) int64 flat slot indices for `gather`.
        """
        if len(self) == 0:
            raise ValueError("the replay buffer holds no sampleable transition yet; add steps first")
        offsets = np.concatenate([[0], np.cumsum(self._count)])
        chosen = []
        missing = batch_size
        while missing > 0:
            drawn = self._rng.integers(0, offsets[-1], size=missing + missing // 8 + 8)
            env = np.searchsorted(offsets, drawn, side="right") - 1
            slots = self._flat(env, drawn - offsets[env])
            slots = slots[self._is_sampleable(slots)][:missing]
            chosen.append(slots)
            missing -= slots.size
        return np.concatenate(chosen)

    def gather(self, slots: np.ndarray, out: PackedBatch | None = None) -> PackedBatch:
        """The one-step transitions ending at `slots` (from `sample_indices`) as a `PackedBatch`.

        `out`: as in `sample`.
        """
        window = self._window_slots(slots)
        into = _Into(out)
        return PackedBatch(
            frames=into.take("frames", self._frames, window),
            vector=into.take("vector", self._vectors, window[:, -2]),
            action=into.take("action", self._actions, slots),
            reward=into.take("reward", self._rewards, slots),
            next_vector=into.take("next_vector", self._vectors, slots),
            terminated=into.put("terminated", self._terminated[slots]),
        )

    def gather_n_step(
        self, slots: np.ndarray, n_step: int, discount: float, out: PackedBatch | None = None
    ) -> PackedBatch:
        """n-step transitions starting with the transitions at `slots` (from `sample_indices`).

        A transition starting at step t runs k = min(n_step, steps to its
        episode's end, steps stored so far) steps: reward is sum_{i<k}
        gamma^i r_{t+i} (per component with `reward_components`), the next
        observation is the one at t+k, terminated is that of step t+k-1, and
        discount is gamma^k. Every such k-step target is a valid Bellman
        target; as in DQN's Rainbow, DrQ-v2 and SB3, the off-policy bias of
        the intermediate actions is not corrected.
        `out`: as in `sample`.
        """
        env, slot = np.divmod(slots, self.slots_per_env)
        base = env * self.slots_per_env
        newer = (self._write_pos[env] - 1 - slot) % self.slots_per_env  # slots written after this one
        last = slots.copy()
        steps = np.ones(slots.shape, np.int64)
        reward = self._rewards[slots].astype(np.float64)
        running = np.ones(slots.shape, np.bool_)
        for offset in range(1, n_step):
            following = base + (slot + offset) % self.slots_per_env
            # The episode goes on in the next slot unless that is unwritten or an episode start
            # (depth 0), which follows every episode end: terminated, truncated or failed.
            running &= (newer >= offset) & (self._depth[following] > 0)
            reward += np.where(running.reshape(-1, *(1,) * len(self.reward_shape)),
                               discount**offset * self._rewards[following], 0.0)
            last = np.where(running, following, last)
            steps += running
        first, final = self._window_slots(slots), self._window_slots(last)
        into = _Into(out)
        return PackedBatch(
            frames=into.take("frames", self._frames, first[:, :-1]),
            vector=into.take("vector", self._vectors, first[:, -2]),
            action=into.take("action", self._actions, slots),
            reward=into.put("reward", reward),
            next_vector=into.take("next_vector", self._vectors, last),
            terminated=into.put("terminated", self._terminated[last]),
            next_frames=into.take("next_frames", self._frames, final[:, 1:]),
            discount=into.put("discount", discount ** steps.astype(np.float64)),
        )

    def state_dict(self) -> dict:
        """Everything needed to resume bit-exactly: arrays, write positions, RNG state.

        Returns:
          A flat dict of NumPy arrays (views of the live storage: save them
          before the next `add`) and JSON-able scalars (``format``, ``stack``,
          ``rng_state`` as a JSON string).
        """
        state = dict(self._arrays())
        state["format"] = STATE_FORMAT
        state["stack"] = self.stack
        state["rng_state"] = json.dumps(self._rng.bit_generator.state)
        return state

    def load_state_dict(self, state: dict) -> None:
        """Restores a `state_dict` taken from a buffer built with the same settings.

        Arrays that are writeable, C-contiguous and of the right dtype are
        adopted without a copy (so restoring a large buffer does not double
        its memory); pass copies if the source buffer stays in use.

        Raises:
          ValueError: missing or unexpected keys, another format or stack, or
            an array whose shape or dtype does not match this buffer.
        """
        expected = set(_ARRAY_KEYS) | set(_SCALAR_KEYS)
        if set(state) != expected:
            raise ValueError(
                f"replay state keys differ: missing {sorted(expected - set(state))}, "
                f"unexpected {sorted(set(state) - expected)}"
            )
        if int(state["format"]) != STATE_FORMAT or int(state["stack"]) != self.stack:
            raise ValueError(
                f"replay state has format {state['format']} and stack {state['stack']}; "
                f"this buffer reads format {STATE_FORMAT} with stack {self.stack}"
            )
        restored = {}
        for key, current in self._arrays().items():
            array = np.asarray(state[key])
            if array.shape != current.shape or array.dtype != current.dtype:
                raise ValueError(
                    f"replay state {key!r} is {array.shape} {array.dtype} but this buffer holds "
                    f"{current.shape} {current.dtype}: build it with the checkpoint's capacity, "
                    "n_envs, frame_shape, vector_dim, action_dim and reward_components"
                )
            if not (array.flags.writeable and array.flags.c_contiguous):
                array = array.copy()
            restored[key] = array
        for key, array in restored.items():
            setattr(self, f"_{key}", array)
        self._rng.bit_generator.state = json.loads(state["rng_state"])
        self._after_storage_change()

    def _arrays(self) -> dict[str, np.ndarray]:
        return {key: getattr(self, f"_{key}") for key in _ARRAY_KEYS}

    def _after_storage_change(self) -> None:
        self._n_transition_slots = int(np.count_nonzero(self._depth))

    def _window_slots(self, slots: np.ndarray) -> np.ndarray:
        """(B, S+1) flat slots of the frames of the transitions ending at `slots`, oldest first.

        Window element j sits min(S - j, depth) slots back in its env's ring: a
        window never reaches past its episode's first frame, it repeats it.
        """
        env, slot = np.divmod(slots, self.slots_per_env)
        backs = np.minimum(self._window_backs[None, :], self._depth[slots].astype(np.int64)[:, None])
        return (env * self.slots_per_env)[:, None] + (slot[:, None] - backs) % self.slots_per_env

    def _flat(self, env: np.ndarray, slot: np.ndarray) -> np.ndarray:
        return env * self.slots_per_env + slot

    def _advance(self, envs: np.ndarray, steps: int) -> None:
        self._write_pos[envs] = (self._write_pos[envs] + steps) % self.slots_per_env
        self._count[envs] = np.minimum(self._count[envs] + steps, self.slots_per_env)

    def _is_sampleable(self, slots: np.ndarray) -> np.ndarray:
        """Whether each slot ends a transition whose whole window is still stored."""
        env, slot = np.divmod(slots, self.slots_per_env)
        age = (self._write_pos[env] - 1 - slot) % self.slots_per_env
        depth = self._depth[slots]
        return (depth > 0) & (age + depth < self.slots_per_env)

    def _n_broken_at_seams(self) -> int:
        # Only the S oldest slots of a full ring can reach back into overwritten frames.
        full = np.flatnonzero(self._count == self.slots_per_env)
        if full.size == 0:
            return 0
        oldest = (self._write_pos[full, None] + np.arange(self.stack)) % self.slots_per_env
        slots = self._flat(full[:, None], oldest)
        return int(np.count_nonzero(~self._is_sampleable(slots) & (self._depth[slots] > 0)))

    def _store_episode_start(self, env: int, image: np.ndarray, vector: np.ndarray) -> None:
        """Writes the frames of a reset observation (S, H, W), leading repeats collapsed."""
        repeats = 1
        while repeats < self.stack and np.array_equal(image[repeats], image[0]):
            repeats += 1
        frames = image[repeats - 1 :]
        slots = self._flat(env, (self._write_pos[env] + np.arange(len(frames))) % self.slots_per_env)
        self._n_transition_slots -= int(np.count_nonzero(self._depth[slots]))
        self._frames[slots] = frames
        self._vectors[slots] = vector
        self._actions[slots] = 0.0
        self._rewards[slots] = 0.0
        self._terminated[slots] = False
        self._truncated[slots] = False
        self._depth[slots] = 0
        self._advance(np.array([env]), len(frames))
        self._run[env] = len(frames) - 1

    def _check_continuity(self, envs: np.ndarray, image: np.ndarray, vector: np.ndarray) -> None:
        """Raises unless every stream inside an episode continues from its last next observation.

        Args:
          envs: (N,) int, the streams of the rows of `image` and `vector`.
          image: (N, S, H, W) uint8, frame-major.
          vector: (N, V) float32.
        """
        for row in np.flatnonzero(~self._needs_start[envs]):
            env = envs[row]
            newest = (self._write_pos[env] - 1) % self.slots_per_env
            backs = np.minimum(np.arange(self.stack - 1, -1, -1), self._run[env])
            stack_slots = self._flat(env, (newest - backs) % self.slots_per_env)
            same_frames = np.array_equal(self._frames[stack_slots], image[row])
            same_vector = np.array_equal(self._vectors[self._flat(env, newest)], vector[row], equal_nan=True)
            if not (same_frames and same_vector):
                raise ValueError(
                    f"env {env}: the observation is not the previous step's next observation; "
                    "an episode that ended must be marked terminated or truncated"
                )

    def _check_array(self, name: str, value, row_shape: tuple, dtype) -> np.ndarray:
        """`value` as an (n_envs, *row_shape) array; dtype None accepts any real and casts to float32."""
        array = np.asarray(value)
        shape = (self.n_envs, *row_shape)
        ok = array.dtype.kind in "fiub" if dtype is None else array.dtype == dtype
        if array.shape != shape or not ok:
            target = "real numbers" if dtype is None else np.dtype(dtype).name
            raise ValueError(f"{name} must be {shape} {target}, got {array.shape} {array.dtype}")
        return array.astype(np.float32) if dtype is None else array


def _aligned_empty(shape: tuple[int, ...], dtype) -> np.ndarray:
    """A new C-contiguous array whose data is 64-byte aligned (a CPU device takes it without a copy)."""
    dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    raw = np.empty(nbytes + _DEVICE_ALIGNMENT, np.uint8)
    start = -raw.ctypes.data % _DEVICE_ALIGNMENT
    return raw[start : start + nbytes].view(dtype).reshape(shape)


class _Into:
    """Writes a sample's arrays into those of an earlier sample (`out`) where they fit, else into new aligned ones."""

    def __init__(self, out: PackedBatch | None):
        self.out = out

    def _target(self, field: str, shape: tuple[int, ...], dtype) -> np.ndarray:
        old = None if self.out is None else getattr(self.out, field)
        if old is not None and old.shape == shape and old.dtype == dtype and old.flags.c_contiguous:
            return old
        return _aligned_empty(shape, dtype)

    def take(self, field: str, array: np.ndarray, indices: np.ndarray) -> np.ndarray:
        """``array[indices]`` along axis 0."""
        target = self._target(field, (*indices.shape, *array.shape[1:]), array.dtype)
        # "clip" writes straight into `target` (the default "raise" goes through a buffer); every
        # index is a slot of the ring by construction.
        return np.take(array, indices, axis=0, out=target, mode="clip")

    def put(self, field: str, values: np.ndarray) -> np.ndarray:
        """`values` as float32."""
        target = self._target(field, values.shape, np.float32)
        target[...] = values
        return target
