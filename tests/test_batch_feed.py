"""The batch feed: in-line draws, prefetched draws one env step ahead, and the update schedule."""

from __future__ import annotations

import copy

import chex
import numpy as np
import pytest

from td3_jax.envs.spaces import FrameStack
from td3_jax.replay.batch_feed import BatchFeed
from td3_jax.replay.buffer import ReplayBuffer
from td3_jax.training.schedule import update_calls

STACK, SHAPE = 3, (4, 5)


class Stream:
    """One env stream of random frames and 20-step episodes, feeding `buffer.add`."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        self.stack = FrameStack(STACK, SHAPE)
        self.t = 0
        self.obs = self.stack.reset(self._frame())

    def _frame(self):
        return self.rng.integers(0, 256, SHAPE, dtype=np.uint8)

    def step(self, buffer: ReplayBuffer) -> None:
        self.t += 1
        next_obs = self.stack.push(self._frame())
        done = self.t % 20 == 0
        buffer.add(
            self.obs[None], np.zeros((1, 2), np.float32), self.rng.uniform(-1, 1, (1, 2)).astype(np.float32),
            np.array([self.t], np.float32), next_obs[None], np.zeros((1, 2), np.float32),
            np.array([done]), np.array([False]),
        )
        self.obs = self.stack.reset(self._frame()) if done else next_obs


def _filled(steps: int, seed: int = 3) -> tuple[ReplayBuffer, Stream]:
    buffer = ReplayBuffer(200, stack=STACK, frame_shape=SHAPE, vector_dim=2, action_dim=2, seed=seed)
    stream = Stream(seed)
    for _ in range(steps):
        stream.step(buffer)
    return buffer, stream


def _feed(buffer, *, prefetch: bool, n_step: int = 1, place=lambda batch: batch) -> BatchFeed:
    return BatchFeed(buffer, place, batch_size=8, gradient_steps=2, n_step=n_step, discount=0.9, prefetch=prefetch)


@pytest.mark.parametrize("n_step", [1, 3])
def test_prefetched_batches_are_the_in_line_draws_from_the_buffer_before_the_step(n_step):
    buffer, stream = _filled(50)
    before = copy.deepcopy(buffer)  # what an in-line feed would see one env step earlier
    feed = _feed(buffer, prefetch=True, n_step=n_step)
    feed.prepare(2)
    feed.settle()
    stream.step(buffer)  # the env step that triggers the two calls
    in_line = _feed(before, prefetch=False, n_step=n_step)
    for _ in range(2):
        chex.assert_trees_all_equal(feed.take(), in_line.take())
    # and the sampler continues where the in-line one does
    chex.assert_trees_all_equal(buffer.sampler_state, before.sampler_state)
    feed.close()


def test_prefetched_batches_are_stacked_k_by_b():
    buffer, _ = _filled(30)
    feed = _feed(buffer, prefetch=True)
    feed.prepare(1)
    batch = feed.take()
    assert batch.frames.shape == (2, 8, STACK + 1, *SHAPE) and batch.frames.dtype == np.uint8
    assert batch.action.shape == (2, 8, 2)
    feed.close()


def test_cancel_rewinds_the_sampler_so_that_the_step_can_be_redone():
    buffer, _ = _filled(30)
    reference = copy.deepcopy(buffer)
    feed = _feed(buffer, prefetch=True)
    feed.prepare(3)
    feed.cancel()
    assert buffer.sampler_state == reference.sampler_state
    feed.prepare(1)  # a cancelled feed prepares again
    chex.assert_trees_all_equal(feed.take(), _feed(reference, prefetch=False).take())
    # A step abandoned after some of its batches were taken rewinds to before all of them.
    feed.prepare(2)
    rewind_to = buffer.sampler_state
    feed.take()
    feed.cancel()
    assert buffer.sampler_state == rewind_to
    feed.close()


def test_without_prefetch_the_draw_happens_at_take_from_the_buffer_as_it_is():
    buffer, stream = _filled(30)
    feed = _feed(buffer, prefetch=False)
    feed.prepare(1)
    assert buffer.sampler_state == copy.deepcopy(buffer).sampler_state
    stream.step(buffer)
    reference = copy.deepcopy(buffer)
    chex.assert_trees_all_equal(feed.take(), _feed(reference, prefetch=False).take())


def test_an_empty_buffer_is_drawn_in_line_after_the_step():
    buffer, stream = _filled(0)
    feed = _feed(buffer, prefetch=True)
    feed.prepare(1)  # nothing to draw from yet
    stream.step(buffer)
    assert feed.take().frames.shape[:2] == (2, 8)
    feed.close()


def test_a_worker_error_surfaces_in_the_loop_and_a_second_prepare_is_refused():
    buffer, _ = _filled(30)

    def broken_place(batch):
        raise RuntimeError("device lost")

    feed = _feed(buffer, prefetch=True, place=broken_place)
    feed.prepare(1)
    with pytest.raises(RuntimeError, match="device lost"):
        feed.settle()
    feed.cancel()
    good = _feed(buffer, prefetch=True)
    good.prepare(1)
    with pytest.raises(RuntimeError, match="before the previous step's batches were taken"):
        good.prepare(1)
    good.close()


class _Update:
    """The output of a dispatched update that finishes when told (`jax.Array.is_ready`)."""

    def __init__(self):
        self.done = False

    def is_ready(self) -> bool:
        return self.done


@pytest.mark.parametrize("prefetch", [False, True])
@pytest.mark.parametrize("n_step", [1, 3])
def test_a_draw_reuses_host_arrays_only_once_their_update_finished(prefetch, n_step):
    buffer, _ = _filled(50)
    reference = _feed(copy.deepcopy(buffer), prefetch=False, n_step=n_step)
    feed = _feed(buffer, prefetch=prefetch, n_step=n_step)

    def call(update):
        feed.prepare(1)
        batch = feed.take()
        expected = reference.take()
        chex.assert_trees_all_equal(batch, expected)  # reuse never changes what is drawn
        feed.release(update)
        return batch

    first_update = _Update()
    first = call(first_update)
    second = call(_Update())  # the first update is still running: fresh memory
    assert not np.shares_memory(second.frames, first.frames)
    first_snapshot = copy.deepcopy(first)
    first_update.done = True
    third = call(_Update())  # now the first draw's arrays are free
    assert np.shares_memory(third.frames, first.frames)
    if n_step > 1:
        assert np.shares_memory(third.next_frames, first.next_frames)
    assert feed.host_batches_allocated == 2
    assert not np.array_equal(first_snapshot.frames, third.frames)  # it was overwritten, as intended
    feed.close()


def test_cancelled_draws_are_reused_at_once():
    buffer, _ = _filled(50)
    feed = _feed(buffer, prefetch=True)
    feed.prepare(1)
    feed.settle()
    feed.cancel()
    feed.prepare(1)
    feed.take()
    assert feed.host_batches_allocated == 1
    feed.release(_Update())
    with pytest.raises(RuntimeError, match="without a taken batch"):
        feed.release(_Update())
    feed.close()


@pytest.mark.parametrize("n_envs", [1, 3])
@pytest.mark.parametrize("train_freq", [1, 2, 5])
@pytest.mark.parametrize("learning_starts", [1, 7, 12])  # the config requires >= 1
def test_update_calls_come_once_per_train_freq_from_learning_starts(n_envs, train_freq, learning_starts):
    steps = range(0, 60, n_envs)
    made_at = []
    for before in steps:
        made_at += [before + n_envs] * update_calls(before, before + n_envs, learning_starts, train_freq)
    # One call per multiple of train_freq in [learning_starts, last step], at the vector step that reaches it.
    last = steps[-1] + n_envs
    multiples = [m for m in range(learning_starts, last + 1) if m % train_freq == 0]
    assert made_at == [-(-m // n_envs) * n_envs for m in multiples]
