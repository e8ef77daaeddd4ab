"""Replay batches for the training loop, drawn in line or one env step ahead on a thread. Host-side.

On a GPU an update at batch 256 takes a few milliseconds, about what drawing and
gathering its batch takes on the host, so a loop that samples in line leaves the
device idle while it samples and the host idle while the device updates.

With `prefetch` on, the loop announces before each env step how many update
calls that step will make (`prepare`). A worker thread then draws those calls'
batches from the buffer *as it is before the step's transitions are added*,
gathers them and places them on the device (uint8 frames; a CPU device takes
them without a copy), while the main thread waits for the previous update
inside `act` and steps the env. `settle` joins the thread before the buffer
changes; `take` hands out the batches in order.

The host arrays of a draw are written into those of an earlier draw once the
update that read them has finished (`release`): touching fresh memory costs a
page fault per 4 KB, about 40% of drawing 16 batches of 9 MB. A draw whose
update may still be running (on a CPU the device reads the host arrays
themselves; on a GPU the copy may still be in flight) is never written to.

Both modes are deterministic given the buffer's seed and resume exactly: a
prefetched draw always starts and ends within one loop iteration, and `cancel`
puts the sampler's RNG back where it was when an iteration is abandoned. They
differ in one thing: a prefetched batch cannot contain the transitions of the
env step that triggers its update (one in `len(buffer)` draws would have).
"""

from __future__ import annotations

import collections
import concurrent.futures
import threading
from typing import Any

from td3_jax.replay.buffer import ReplayBuffer


class BatchFeed:
    """Stacked ``(K, B, ...)`` batches for `DataParallel.update_many`, in the loop or prefetched.

    Args:
      buffer: the replay buffer; only the main thread adds to it, and never
        between `prepare` and `settle`.
      place: puts a NumPy batch tree on the device(s) (`DataParallel.place_batches`).
      batch_size: B, transitions per update.
      gradient_steps: K, updates per call.
      n_step, discount: as in `ReplayBuffer.sample`.
      prefetch: draw one env step ahead on a worker thread.

    The loop reports each update call's output with `release(done)` after
    dispatching it, in the order of `take`; the call's host arrays are reused
    once `done.is_ready()`.
    """

    MAX_KEPT = 8
    """Released host batches kept for reuse, in flight or finished; older ones are left to the garbage collector."""

    def __init__(
        self,
        buffer: ReplayBuffer,
        place,
        *,
        batch_size: int,
        gradient_steps: int,
        n_step: int,
        discount: float,
        prefetch: bool,
    ):
        self.buffer = buffer
        self.place = place
        self.batch_size, self.gradient_steps = batch_size, gradient_steps
        self.n_step, self.discount = n_step, discount
        self.prefetch = prefetch
        self._executor = concurrent.futures.ThreadPoolExecutor(1, "batch-feed") if prefetch else None
        self._pending: concurrent.futures.Future | None = None
        self._rng_before: dict | None = None
        self._ready: collections.deque = collections.deque()
        # Host arrays of each draw: handed out and not yet released, then waiting for their update.
        self._lock = threading.Lock()
        self._taken: collections.deque = collections.deque()
        self._released: collections.deque = collections.deque()  # (host batch, done)
        self.host_batches_allocated = 0
        """Draws written into fresh memory rather than into a released earlier draw."""

    def prepare(self, calls: int) -> None:
        """Before an env step that will make `calls` update calls: with prefetch, starts drawing their batches.

        An empty buffer has nothing to draw from yet; those calls are drawn in
        line after the step's transitions are added.
        """
        if not self.prefetch or calls <= 0 or len(self.buffer) == 0:
            return
        if self._pending is not None or self._ready:
            raise RuntimeError("prepare() called before the previous step's batches were taken")
        self._rng_before = self.buffer.sampler_state
        self._pending = self._executor.submit(lambda: [self._draw() for _ in range(calls)])

    def settle(self) -> None:
        """Waits for the worker: after it returns the buffer may change. Re-raises the worker's error."""
        if self._pending is None:
            return
        pending, self._pending = self._pending, None
        self._ready.extend(pending.result())

    def take(self) -> Any:
        """The next call's batches on the device: prefetched, or drawn now from the buffer as it is."""
        self.settle()
        if not self._ready:
            host, batches = self._draw()
        else:
            host, batches = self._ready.popleft()
            if not self._ready:
                self._rng_before = None  # every prefetched draw is delivered: nothing left to rewind
        with self._lock:
            self._taken.append(host)
        return batches

    def release(self, done: Any) -> None:
        """The oldest taken call's update is dispatched; `done` (any of its outputs) says when it finished."""
        with self._lock:
            if not self._taken:
                raise RuntimeError("release() without a taken batch")
            self._released.append((self._taken.popleft(), done))
            while len(self._released) > self.MAX_KEPT:
                self._released.popleft()

    def cancel(self) -> None:
        """Drops undelivered batches and rewinds the sampler's RNG to before their draw (an abandoned step)."""
        pending, self._pending = self._pending, None
        if pending is not None:
            try:
                pending.result()
            except Exception:  # the draw is being thrown away, and so is its error
                pass
        if self._rng_before is not None:
            self.buffer.sampler_state = self._rng_before
            self._rng_before = None
        with self._lock:  # never placed for an update: free at once
            self._released.extend((host, None) for host, _ in self._ready)
        self._ready.clear()

    def close(self) -> None:
        self.cancel()
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    def _reusable(self) -> Any:
        """Host arrays of a draw whose update has finished, or None."""
        with self._lock:
            for index, (host, done) in enumerate(self._released):
                if done is None or done.is_ready():
                    del self._released[index]
                    return host
        return None

    def _draw(self) -> tuple[Any, Any]:
        """(host arrays, placed batches) of one call."""
        k, b = self.gradient_steps, self.batch_size
        reuse = self._reusable()
        if reuse is None:
            self.host_batches_allocated += 1
        host = self.buffer.sample(k * b, n_step=self.n_step, discount=self.discount, out=reuse)
        stacked = (None if x is None else x.reshape(k, b, *x.shape[1:]) for x in host)  # one-step: no next_frames, discount
        return host, self.place(type(host)(*stacked))
