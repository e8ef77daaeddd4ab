"""Memory, insert rate and sample latency of the replay buffer against a naive stacked one.

Fills `td3_jax.replay.buffer.ReplayBuffer` and a naive buffer that stores the
observation and next observation as full uint8 stacks (SB3's layout without
`optimize_memory_usage`), measures the resident-memory growth of each fill
(every page written, so the figure is committed memory, not arithmetic), the
time of each `add`, and the latency of `sample(batch)`. Prints a table and
optionally writes JSON. Host-side; Linux (reads /proc/self/statm).

    python scripts/bench_replay.py --json replay_bench.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np

from td3_jax.envs.spaces import FrameStack
from td3_jax.replay.buffer import ReplayBuffer


class NaiveStackedBuffer:
    """Stores obs and next_obs stacks per transition: 2 × S frames each. Host-side."""

    def __init__(self, capacity: int, stack: int, frame_shape: tuple[int, int], vector_dim: int, action_dim: int):
        self.images = np.zeros((capacity, *frame_shape, stack), np.uint8)
        self.next_images = np.zeros_like(self.images)
        self.vectors = np.zeros((capacity, vector_dim), np.float32)
        self.next_vectors = np.zeros_like(self.vectors)
        self.actions = np.zeros((capacity, action_dim), np.float32)
        self.rewards = np.zeros((capacity,), np.float32)
        self.terminated = np.zeros((capacity,), np.float32)
        self.capacity, self.size, self.pos = capacity, 0, 0
        self.rng = np.random.default_rng(0)

    def add(self, image, vector, action, reward, next_image, next_vector, terminated, truncated):
        del truncated
        i = self.pos
        self.images[i], self.vectors[i], self.actions[i], self.rewards[i] = image[0], vector[0], action[0], reward[0]
        self.next_images[i], self.next_vectors[i], self.terminated[i] = next_image[0], next_vector[0], terminated[0]
        self.pos = (self.pos + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def sample(self, batch_size: int) -> tuple[np.ndarray, ...]:
        i = self.rng.integers(0, self.size, batch_size)
        return (self.images[i], self.vectors[i], self.actions[i], self.rewards[i],
                self.next_images[i], self.next_vectors[i], self.terminated[i])


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def fill(buffer, n_steps: int, episode_length: int, stack: int, vector_dim: int, seed: int) -> list[float]:
    """Adds `n_steps` env steps of synthetic episodes; returns the seconds of each `add`."""
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 256, (64, 84, 84), dtype=np.uint8)
    vectors = rng.standard_normal((64, 1, vector_dim), dtype=np.float32)
    frame_stack = FrameStack(stack)
    times = []
    for t in range(n_steps):
        step_in_episode = t % episode_length
        if step_in_episode == 0:
            image = frame_stack.reset(frames[t % 64])[None]
            vector = vectors[t % 64]
        next_image = frame_stack.push(frames[(t + 1) % 64])[None]
        next_vector = vectors[(t + 1) % 64]
        done = step_in_episode == episode_length - 1
        # Every other episode ends by termination, the rest by the time limit.
        terminated = np.array([done and (t // episode_length) % 2 == 0])
        truncated = np.array([done]) & ~terminated
        start = time.perf_counter()
        buffer.add(image, vector, np.zeros((1, 2), np.float32), np.ones(1, np.float32),
                   next_image, next_vector, terminated, truncated)
        times.append(time.perf_counter() - start)
        image, vector = next_image, next_vector
    return times


def measure(name: str, make, n_steps: int, args) -> dict:
    before = rss_bytes()
    buffer = make()
    add_times = fill(buffer, n_steps, args.episode_length, args.stack, args.vector_dim, args.seed)
    grown = rss_bytes() - before
    transitions = len(buffer) if isinstance(buffer, ReplayBuffer) else buffer.size
    sample_ms = []
    for _ in range(args.sample_repeats):
        start = time.perf_counter()
        buffer.sample(args.batch)
        sample_ms.append((time.perf_counter() - start) * 1e3)
    frames_per_sample = args.stack + 1 if isinstance(buffer, ReplayBuffer) else 2 * args.stack
    result = {
        "buffer": name,
        "capacity": n_steps,
        "stored_transitions": transitions,
        "rss_growth_bytes": grown,
        "bytes_per_transition": grown / transitions,
        "projected_gb_per_1m_transitions": grown / transitions * 1e6 / 1e9,
        "inserts_per_s": len(add_times) / sum(add_times),
        "add_us_median": float(np.median(add_times) * 1e6),
        "sample_ms_median": float(np.median(sample_ms)),
        "sample_ms_p90": float(np.percentile(sample_ms, 90)),
        "image_bytes_per_sample": frames_per_sample * 84 * 84,
    }
    del buffer
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--capacity", type=int, default=100_000, help="frame slots of the frame-once buffer")
    parser.add_argument("--naive-capacity", type=int, default=20_000, help="transitions of the naive buffer")
    parser.add_argument("--episode-length", type=int, default=500, help="env steps per synthetic episode")
    parser.add_argument("--stack", type=int, default=4, help="frames per observation")
    parser.add_argument("--vector-dim", type=int, default=53, help="size of the vector state")
    parser.add_argument("--batch", type=int, default=256, help="sample batch size")
    parser.add_argument("--sample-repeats", type=int, default=200, help="timed sample calls per buffer")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic frames")
    parser.add_argument("--json", metavar="OUT", help="also write the results as JSON to OUT")
    args = parser.parse_args()

    frame_once = measure(
        "frame-once (td3_jax.replay.buffer)",
        lambda: ReplayBuffer(args.capacity, stack=args.stack, vector_dim=args.vector_dim, seed=args.seed),
        args.capacity, args,
    )
    naive = measure(
        "naive stacked obs+next_obs",
        lambda: NaiveStackedBuffer(args.naive_capacity, args.stack, (84, 84), args.vector_dim, 2),
        args.naive_capacity, args,
    )
    rows = [frame_once, naive]
    columns = [
        ("buffer", "{}", 28), ("stored_transitions", "{:,}", 12), ("bytes_per_transition", "{:,.0f}", 12),
        ("projected_gb_per_1m_transitions", "{:.2f}", 10), ("inserts_per_s", "{:,.0f}", 8), ("add_us_median", "{:.1f}", 10),
        ("sample_ms_median", "{:.2f}", 9), ("sample_ms_p90", "{:.2f}", 9), ("image_bytes_per_sample", "{:,}", 9),
    ]
    headers = ["buffer", "stored", "B/transition", "GB per 1M", "adds/s", "add us med", "sample ms", "p90 ms", "img B/sample"]
    print("  ".join(f"{header:>{width}}" for header, (_, _, width) in zip(headers, columns)))
    for row in rows:
        print("  ".join(f"{fmt.format(row[key]):>{width}}" for key, fmt, width in columns))
    if args.json:
        with open(args.json, "w") as out:
            json.dump({
                "command": "python scripts/bench_replay.py " + " ".join(
                    f"--{key.replace('_', '-')} {value}" for key, value in vars(args).items() if key != "json"
                ),
                "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine()},
                "numpy": np.__version__,
                "results": rows,
            }, out, indent=2)


if __name__ == "__main__":
    main()
