"""TensorBoard logging and console progress of a training run. Host-side I/O.

Update metrics arrive as device arrays from every fused update call and are
fetched from the device once per logging interval (one `jax.device_get`), then
aggregated: tags ending in `_max` take the interval's maximum, `_min` its
minimum, every other tag its mean. Actor metrics are NaN on steps without an
actor update, so they aggregate over the actor steps only, and a tag with no
valid value in the interval is not written (no stale or fake points).
Every tag is defined in docs/metrics.md.

Events are written in the training thread (`EventFile`), not by a background
writer: a write that fails (a full disk) raises `RunLogError` at once instead
of killing a writer thread and blocking the loop on its queue forever.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Mapping

import jax
import numpy as np
from tensorboardX.event_file_writer import EventsWriter
from tensorboardX.proto import event_pb2
from tensorboardX.summary import scalar, text

from td3_jax.errors import UserError


class RunLogError(UserError):
    """The run's event file cannot be written (full disk, lost permissions)."""


class EventFile:
    """One TensorBoard event file, written synchronously and flushed every `flush_secs`."""

    def __init__(self, directory: Path, *, flush_secs: float = 30.0):
        self.directory = directory
        self._flush_secs = flush_secs
        self._last_flush = time.monotonic()
        self._writer = None
        self._writer = self._guarded(lambda: EventsWriter(os.path.join(directory, "events")))

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        self._write(event_pb2.Event(wall_time=time.time(), step=step, summary=scalar(tag, value)))

    def add_text(self, tag: str, body: str, step: int) -> None:
        self._write(event_pb2.Event(wall_time=time.time(), step=step, summary=text(tag, body)))

    def flush(self) -> None:
        self._guarded(self._writer.flush)
        self._last_flush = time.monotonic()

    def close(self) -> None:
        if self._writer is not None:
            writer, self._writer = self._writer, None
            self._guarded(writer.close)

    def _write(self, event) -> None:
        self._guarded(lambda: self._writer.write_event(event))
        if time.monotonic() - self._last_flush >= self._flush_secs:
            self.flush()

    def _guarded(self, operation):
        try:
            return operation()
        except OSError as error:
            raise RunLogError(
                f"cannot write TensorBoard events in {self.directory} ({error.strerror or error}); "
                "free disk space or fix permissions"
            ) from None


def aggregate(chunks: list[Mapping[str, np.ndarray]]) -> dict[str, float]:
    """Reduces per-update metric arrays to one float per tag (see module docstring)."""
    if not chunks:
        return {}
    out = {}
    for tag in chunks[0]:
        values = np.concatenate([np.atleast_1d(np.asarray(chunk[tag], np.float64)) for chunk in chunks])
        if tag == "debug/all_finite":
            out[tag] = float(np.min(values))
            continue
        valid = values[~np.isnan(values)]
        if valid.size == 0:
            continue
        if tag.endswith("_max"):
            out[tag] = float(np.max(valid))
        elif tag.endswith("_min"):
            out[tag] = float(np.min(valid))
        else:
            out[tag] = float(np.mean(valid))
    return out


def _progress_mode(requested: str) -> str:
    if requested != "auto":
        return requested
    if os.environ.get("CI", "").lower() in ("1", "true") or not sys.stderr.isatty():
        return "lines"
    return "bar"


def format_duration(seconds: float) -> str:
    """12s, 4m05s, 1h02m."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class LoopClock:
    """The training loop's main-thread wall time by phase, and the part of it spent waiting for the device.

    The loop names its phase with `enter`; `wait` blocks on a device result and
    books the time to the phase as device wait. What is left is host time: the
    work that a faster accelerator cannot shorten.
    """

    STEP_PHASES = ("acting", "env step", "recording", "logging")
    UPDATE_PHASES = ("sampling", "update")
    # The name of each phase's share in the metrics: the host part of "update" is its dispatch.
    PHASE_TAGS = {"acting": "acting", "env step": "env_step", "recording": "recording", "logging": "logging",
                  "sampling": "sampling", "update": "dispatch"}

    def __init__(self):
        self.phase = "setup"
        self._since = time.perf_counter()
        self._seconds: collections.Counter = collections.Counter()
        self._waits: collections.Counter = collections.Counter()

    def enter(self, phase: str) -> None:
        now = time.perf_counter()
        self._seconds[self.phase] += now - self._since
        self.phase, self._since = phase, now

    def wait(self, value):
        """`jax.block_until_ready(value)`, timed as device wait of the current phase."""
        start = time.perf_counter()
        value = jax.block_until_ready(value)
        self._waits[self.phase] += time.perf_counter() - start
        return value

    def interval(self, env_steps: int, updates: int) -> dict[str, float]:
        """This interval's host and device-wait figures (docs/metrics.md), then starts the next interval."""
        self.enter(self.phase)  # books the current phase up to now
        seconds, waits = self._seconds, self._waits
        loop_waits = sum(waits[p] for p in self.STEP_PHASES + self.UPDATE_PHASES)
        out = {}
        for total, phases, count in (("progress/host_ms_per_env_step", self.STEP_PHASES, env_steps),
                                     ("progress/host_ms_per_update", self.UPDATE_PHASES, updates)):
            if count > 0:
                out[total] = 1000.0 * sum(seconds[p] - waits[p] for p in phases) / count
                # Each phase's share of the total, so that a slow loop names its slow part.
                out.update({f"{total}/{self.PHASE_TAGS[p]}": 1000.0 * (seconds[p] - waits[p]) / count for p in phases})
        if updates > 0:
            out["progress/device_wait_ms_per_update"] = 1000.0 * loop_waits / updates
        self._seconds, self._waits = collections.Counter(), collections.Counter()
        return out


class RunLog:
    """One run's TensorBoard writer, metric aggregation and progress display."""

    LINE_INTERVAL_S = 30.0  # plain progress lines at most this often

    def __init__(self, run_dir: Path, *, total_steps: int, start_step: int, progress: str):
        self.writer = EventFile(run_dir, flush_secs=30)
        self._pending: list = []
        self._mode = _progress_mode(progress)
        self._bar = None
        if self._mode == "bar":
            from tqdm import tqdm

            self._bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True)
        self._total = total_steps
        self._last_line = 0.0
        self._last_step = start_step
        self._last_time = time.perf_counter()
        self._start = (start_step, self._last_time)
        self.status: dict[str, float] = {}

    def add_update_metrics(self, metrics: Mapping[str, jax.Array]) -> None:
        """Keeps one update call's metrics (device arrays, K updates each) until `flush_updates`."""
        self._pending.append(metrics)

    def flush_updates(self, step: int) -> dict[str, float]:
        """Fetches, aggregates and writes the pending update metrics; returns them."""
        if not self._pending:
            return {}
        values = aggregate(jax.device_get(self._pending))
        self._pending = []
        self.scalars(step, values)
        return values

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        for tag, value in values.items():
            if value is not None and not (isinstance(value, float) and math.isnan(value)):
                self.writer.add_scalar(tag, float(value), step)

    def text(self, tag: str, text: str, step: int) -> None:
        self.writer.add_text(tag, text, step)

    def progress(self, step: int, **status: float) -> None:
        """Advances the bar (or prints a plain line every LINE_INTERVAL_S) with `status` values."""
        self.status.update(status)
        if self._bar is not None:
            self._bar.update(step - self._last_step)
            self._bar.set_postfix({k: f"{v:.3g}" for k, v in self.status.items()}, refresh=False)
        elif self._mode == "lines":
            now = time.perf_counter()
            if now - self._last_line >= self.LINE_INTERVAL_S or step >= self._total:
                fields = " ".join(f"{k}={v:.4g}" for k, v in self.status.items())
                self.line(f"step {step}/{self._total} {fields} elapsed={format_duration(now - self._start[1])} "
                          f"eta={self.eta(step, now)}")
                self._last_line = now
        self._last_step = step

    def eta(self, step: int, now: float) -> str:
        """Time left at the mean pace since this process started (evaluations and checkpoints included)."""
        start_step, start_time = self._start
        if step <= start_step:
            return "?"
        return format_duration((now - start_time) / (step - start_step) * max(self._total - step, 0))

    def line(self, message: str) -> None:
        """Prints a line without breaking the progress bar."""
        if self._bar is not None:
            self._bar.write(message)
        elif self._mode != "off":
            print(message, flush=True)

    def close(self, *, quiet: bool = False) -> None:
        """Flushes and closes; `quiet` drops a write error (another error is already on its way)."""
        if self._bar is not None:
            self._bar.close()
        try:
            self.writer.close()
        except RunLogError:
            if not quiet:
                raise


@dataclasses.dataclass
class EpisodeStats:
    """Running sums of the current episode of each env."""

    n: int

    def __post_init__(self):
        self.reward = np.zeros(self.n)
        self.length = np.zeros(self.n, np.int64)
        self.collisions = np.zeros(self.n, np.int64)
        self.lane_invasions = np.zeros(self.n, np.int64)
        self.components: dict[str, np.ndarray] = {}

    def add(self, reward, info) -> None:
        self.reward += reward
        self.length += 1
        if "collision" in info:
            self.collisions += np.asarray(info["collision"], bool)
        if "lane_invasion" in info:
            self.lane_invasions += np.asarray(info["lane_invasion"], bool)
        for name, values in info.get("reward_components", {}).items():
            self.components.setdefault(name, np.zeros(self.n))
            self.components[name] += np.asarray(values, np.float64)

    def finish(self, index: int) -> dict[str, float]:
        """The ended episode's TensorBoard values; resets that env's sums."""
        values = {
            "train/episode_reward": float(self.reward[index]),
            "train/episode_length": float(self.length[index]),
            "train/collisions_per_episode": float(self.collisions[index]),
            "train/lane_invasions_per_episode": float(self.lane_invasions[index]),
        }
        total = sum(abs(v[index]) for v in self.components.values())
        for name, sums in self.components.items():
            values[f"rewards/{name}_component"] = float(sums[index])
            if total > 0:
                values[f"rewards/{name}_percentage"] = 100.0 * abs(float(sums[index])) / total
            sums[index] = 0.0
        self.reward[index] = 0.0
        self.length[index] = 0
        self.collisions[index] = 0
        self.lane_invasions[index] = 0
        return values


def write_results(path: Path, run, *, env_step: int, updates: int, episodes: int, results: dict,
                  best: dict | None) -> None:
    """results.json: the run's counters, training returns and evaluations (the original's keys, null where the
    env reports no such info), the final comparison with the baseline and the best evaluation's checkpoint."""
    evaluations = results["evaluations"]
    last = evaluations[-5:]
    Path(path).write_text(json.dumps({
        "scenario": {"lanesim": run.env.lanesim.scenario, "carla": run.env.carla.scenario}.get(
            run.env.backend),  # a gymnasium env has none
        "backend": run.env.backend,
        "seed": run.training.seed,
        "total_timesteps": env_step,
        "total_updates": updates,
        "total_episodes": episodes,
        "training_rewards": results["training_rewards"],
        "eval_rewards": [e["eval/mean_reward"] for e in evaluations],
        "eval_success_rates": [e.get("eval/success_rate") for e in evaluations],
        "eval_collisions": [e.get("eval/avg_collisions") for e in evaluations],
        "eval_lane_invasions": [e.get("eval/avg_lane_invasions") for e in evaluations],
        "final_eval_mean_reward": float(np.mean([e["eval/mean_reward"] for e in last])) if last else None,
        "final_eval_success_rate": (float(np.mean([e["eval/success_rate"] for e in last]))
                                    if last and all("eval/success_rate" in e for e in last) else None),
        "evaluations": evaluations,
        "final_comparison": results.get("final_comparison"),
        "best_checkpoint": best,
    }, indent=2))
