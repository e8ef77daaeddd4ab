"""`td3-jax bench`: update, act, replay and simulator speed in one run. Host-side.

Measures, in one process: TD3 update throughput (single `update` and fused
`update_many`) at batch 256 and 32 with the default architecture, and the same
update in PyTorch (same architecture and maths) and Stable-Baselines3's TD3
CnnPolicy train step, timed in interleaved rounds so that their ratio survives
a noisy shared machine; achieved GFLOP/s against the measured fp32 matmul
peak; `act` latency; replay sampling; simulator steps/s; the training loop's
host time per env step and per update (in line and prefetched); machine facts.
Prints a table and optionally writes every figure with its unit as JSON.

    td3-jax bench [--json OUT] [--quick]
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import platform
import resource
import statistics
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from td3_jax.core import conv

from td3_jax.core import td3
from td3_jax.core.hparams import EncoderConfig, NetworkConfig, TD3Config
from td3_jax.core.networks import CONV_LAYERS
from td3_jax.core.types import PackedBatch
from td3_jax.errors import check_output_file
from td3_jax.training.run_log import LoopClock

IMAGE_SIZE = 84
STACK = 4
VECTOR_DIM = 53
IMAGE_SHAPE = (IMAGE_SIZE, IMAGE_SIZE, STACK)


@dataclasses.dataclass(frozen=True)
class Plan:
    """How much to measure."""

    batch_sizes: tuple[int, ...]
    """Update batch sizes; the first is the headline."""
    rounds: int
    """Interleaved timing rounds per batch size (median reported)."""
    updates_per_round: int
    """Updates per timed round (an even number: critic-only and actor steps alternate)."""
    fused: int
    """K of `update_many` (updates per call)."""
    matmul_size: int
    """Side of the square matmul that measures the fp32 peak."""
    act_calls: int
    """Timed `act` calls."""
    replay_capacity: int
    """Frame slots of the replay buffer filled for the sampling timing."""
    env_steps: int
    """Timed simulator steps (single env; the vectorised env steps this many times in total)."""
    vec_envs: int
    """Envs of the vectorised simulator."""
    loop_calls: tuple[int, int]
    """Update calls in the training loop's timed interval, one env / vectorised (after an untimed interval of
    warm-up and compile): each is 2 env steps per env, so the vectorised loop's few long calls need more of them."""
    loop_network: tuple[str, ...]
    """Config overrides of the loop's networks (the smoke run shrinks them; the host time, updates awaited, does not depend on them)."""
    cheaper_updates: tuple[str, ...] | None
    """Which work-saving update variants to time (names of `_cheaper_updates`); None: all."""
    loop_runs: tuple[tuple[str, str], ...] | None
    """(loop shape, feed) pairs to run, e.g. ("vec", "prefetch"); None: every shape with every feed."""


FULL = Plan((256, 32), rounds=3, updates_per_round=4, fused=8, matmul_size=2048, act_calls=200,
            replay_capacity=20_000, env_steps=1000, vec_envs=16, loop_calls=(32, 8), loop_network=(),
            cheaper_updates=None, loop_runs=None)
QUICK = Plan((8,), rounds=1, updates_per_round=2, fused=2, matmul_size=256, act_calls=5,
             replay_capacity=200, env_steps=20, vec_envs=2, loop_calls=(4, 2),
             loop_network=("networks.cnn.features=8", "networks.actor.hidden_sizes=[8]", "networks.critic.hidden_sizes=[8]"),
             cheaper_updates=("jax_shared_encoder_reused_features",),  # both options in one compile
             loop_runs=(("single", "inline"), ("vec", "prefetch")))  # each shape and each feed once


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", metavar="OUT", help="write every figure (with units) to this JSON file")
    parser.add_argument("--quick", action="store_true", help="seconds-long smoke run (tiny sizes, one round)")
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch and Stable-Baselines3 comparison")
    parser.add_argument("--conv-impl", choices=conv.IMPLS, default="auto",
                        help="convolution path of the timed td3_jax updates (default: auto, the backend's choice)")
    parser.add_argument("--only", metavar="SECTIONS", type=_sections,
                        help=f"measure only these comma-separated sections of {', '.join(SECTIONS)}")


SECTIONS = ("update", "act", "replay", "env", "loop")


def _sections(text: str) -> tuple[str, ...]:
    chosen = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = [name for name in chosen if name not in SECTIONS]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(f"unknown section(s) {unknown or text!r}; choose from {', '.join(SECTIONS)}")
    return chosen


def run(args: argparse.Namespace) -> int:
    if args.json:
        check_output_file(args.json, "--json")  # before the minutes of measuring, not after
    plan = QUICK if args.quick else FULL
    sections = getattr(args, "only", None) or SECTIONS
    results: dict[str, dict] = {"machine": machine_facts()}
    notes: list[str] = []
    if "update" in sections:
        results["matmul_peak"] = {"value": matmul_peak_gflops(plan.matmul_size), "unit": "GFLOP/s"}
        torch_available = not args.no_torch and _torch_importable()
        if not torch_available:
            notes.append("PyTorch / Stable-Baselines3 skipped: " + (
                "--no-torch" if args.no_torch else "install the bench extra: pip install 'td3-jax[bench]'"))
        for batch_size in plan.batch_sizes:
            peak = results["matmul_peak"]["value"]
            results[f"update_b{batch_size}"] = bench_update(
                batch_size, plan, torch_available, peak, conv_impl=getattr(args, "conv_impl", "auto"))
    if "act" in sections:
        results["act"] = bench_act(plan)
    for name, bench, what in (("replay", bench_replay, "replay buffer"), ("env", bench_env, "simulator"),
                              ("loop", bench_loop, "training loop")):
        if name in sections:
            results[name] = _optional(bench, plan, notes, what)
    results["notes"] = notes
    print(format_table(results))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)
        print(f"wrote {args.json}")
    return 0


def _torch_importable() -> bool:
    return all(importlib.util.find_spec(name) is not None for name in ("torch", "stable_baselines3"))


def _optional(bench: Callable[[Plan], dict], plan: Plan, notes: list[str], what: str) -> dict | None:
    try:
        return bench(plan)
    except ImportError as error:
        notes.append(f"{what} skipped: {error}")
        return None


def machine_facts() -> dict:
    """CPU model, cores, library versions, backend and the allocator/XLA settings in effect."""
    import jaxlib

    model = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as handle:
            model = next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "cpu": model,
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "load_average_1min": os.getloadavg()[0],
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "backend": jax.default_backend(),
        "devices": [str(device) for device in jax.devices()],
        "conv_impl_auto": conv.resolve_impl("auto"),
        "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""),
        "GLIBC_TUNABLES": os.environ.get("GLIBC_TUNABLES", ""),
    }


def matmul_peak_gflops(size: int, repeats: int = 5) -> float:
    """Best-of-`repeats` fp32 GFLOP/s of a jitted (size x size) @ (size x size)."""
    a = jnp.asarray(np.random.default_rng(0).standard_normal((size, size), np.float32))
    product = jax.jit(lambda a: a @ a)
    product(a).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        product(a).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def update_flops(config: TD3Config, batch_size: int) -> float:
    """Multiply-add FLOPs (2 per MAC) of one `td3.update`, averaged over policy_freq steps.

    Counts the convolutions, dense layers and their gradients from the
    architecture (a backward pass costs 2x its forward pass: input and weight
    gradients; the first conv needs no input gradient). Elementwise work
    (LayerNorm, activations, Adam) is left out.
    """
    network = config.network
    size, channels, conv_flops = IMAGE_SIZE, STACK, []
    for features, kernel, stride in CONV_LAYERS:
        size = (size - kernel) // stride + 1
        conv_flops.append(2 * size * size * features * kernel * kernel * channels)
        channels = features
    dense = 2 * size * size * channels * network.encoder.features
    encoder = sum(conv_flops) + dense
    encoder_backward = 2 * encoder - conv_flops[0]

    def mlp(inputs: int, hidden: tuple[int, ...], out: int) -> int:
        widths = (inputs, *hidden, out)
        return sum(2 * a * b for a, b in zip(widths[:-1], widths[1:]))

    actor_head = mlp(network.encoder.features + VECTOR_DIM, network.actor_hidden, network.action_dim)
    q_head = mlp(network.encoder.features + VECTOR_DIM + network.action_dim, network.critic_hidden, 1)
    target = (encoder + actor_head) + (encoder + 2 * q_head)
    critic = (encoder + 2 * q_head) + (encoder_backward + 2 * 2 * q_head)
    # Actor: its forward, the updated critic's encoder and Q1, Q1's input gradient, the actor's gradient.
    actor = (encoder + actor_head) + encoder + q_head + q_head + (encoder_backward + 2 * actor_head)
    return batch_size * (target + critic + actor / config.policy_freq)


def random_batch(batch_size: int, seed: int = 0, leading: tuple[int, ...] = ()) -> PackedBatch:
    """A PackedBatch of random NumPy arrays (uint8 frames), optionally with leading axes."""
    rng = np.random.default_rng(seed)
    shape = (*leading, batch_size)
    return PackedBatch(
        frames=rng.integers(0, 256, (*shape, STACK + 1, IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8),
        vector=rng.standard_normal((*shape, VECTOR_DIM), dtype=np.float32),
        action=rng.uniform(-1, 1, (*shape, 2)).astype(np.float32),
        reward=rng.standard_normal(shape).astype(np.float32),
        next_vector=rng.standard_normal((*shape, VECTOR_DIM), dtype=np.float32),
        terminated=(rng.uniform(size=shape) < 0.05).astype(np.float32),
    )


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _timed(step: Callable[[], None], calls: int) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) per call of `step`."""
    wall, cpu = time.perf_counter(), _cpu_seconds()
    for _ in range(calls):
        step()
    return (time.perf_counter() - wall) / calls, (_cpu_seconds() - cpu) / calls


def bench_update(batch_size: int, plan: Plan, with_torch: bool, peak_gflops: float, *, conv_impl: str = "auto") -> dict:
    """Updates/s of td3.update, td3.update_many and (optionally) torch / SB3, interleaved."""
    config = TD3Config(network=NetworkConfig(encoder=EncoderConfig(conv_impl=conv_impl)))
    state = td3.init_state(config, jax.random.key(0), image_shape=IMAGE_SHAPE, vector_dim=VECTOR_DIM)
    batch = jax.device_put(random_batch(batch_size))
    fused = plan.fused
    batches = jax.device_put(random_batch(batch_size, leading=(fused,)))

    start = time.perf_counter()
    single = td3.update.lower(state, batch).compile()
    compile_single = time.perf_counter() - start
    start = time.perf_counter()
    many = td3.update_many.lower(state, batches).compile()
    compile_fused = time.perf_counter() - start
    holder = {"state": state}

    def jax_single():
        for _ in range(plan.updates_per_round):
            holder["state"], _ = single(holder["state"], batch)
        jax.block_until_ready(holder["state"])

    def jax_fused():
        for _ in range(max(1, plan.updates_per_round // fused)):
            holder["state"], _ = many(holder["state"], batches)
        jax.block_until_ready(holder["state"])

    contenders = {
        "jax": (jax_single, plan.updates_per_round),
        "jax_fused": (jax_fused, max(1, plan.updates_per_round // fused) * fused),
    }
    cheaper = {name: variant for name, variant in _cheaper_updates(config).items()
               if plan.cheaper_updates is None or name in plan.cheaper_updates}
    for name, variant in cheaper.items():
        contenders[name] = (_single_update_rounds(variant, batch, plan.updates_per_round), plan.updates_per_round)
    if with_torch:
        contenders |= _torch_contenders(batch_size, plan.updates_per_round)
    for step, _ in contenders.values():  # warm-up: caches, allocator, first-call costs
        step()
    seconds: dict[str, list[float]] = {name: [] for name in contenders}
    cpu: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(plan.rounds):
        for name, (step, updates) in contenders.items():
            wall, used = _timed(step, 1)
            seconds[name].append(wall / updates)
            cpu[name].append(used / updates)

    dispatch = []  # host time until `update` returns, the device still computing: the loop's cost per call
    for _ in range(plan.updates_per_round + 1):
        jax.block_until_ready(holder["state"])
        start = time.perf_counter()
        holder["state"], _ = single(holder["state"], batch)
        dispatch.append(time.perf_counter() - start)
    jax.block_until_ready(holder["state"])

    flops = update_flops(config, batch_size)
    result: dict = {
        "batch_size": {"value": batch_size, "unit": "transitions"},
        "conv_impl": {"value": conv.resolve_impl(conv_impl), "unit": "convolution path"},
        "update_dispatch_median": {"value": statistics.median(dispatch) * 1e3, "unit": "ms of host time per call"},
        "compile_update": {"value": compile_single, "unit": "s"},
        "compile_update_many": {"value": compile_fused, "unit": "s", "fused_k": fused},
        "flops_per_update": {"value": flops, "unit": "FLOP"},
    }
    for name in contenders:
        median = statistics.median(seconds[name])
        result[f"{name}_updates_per_s"] = {"value": 1.0 / median, "unit": "updates/s"}
        result[f"{name}_cpu_s_per_update"] = {"value": statistics.median(cpu[name]), "unit": "CPU s/update"}
    best_jax = min(statistics.median(seconds["jax"]), statistics.median(seconds["jax_fused"]))
    result["jax_gflops"] = {"value": flops / best_jax / 1e9, "unit": "GFLOP/s"}
    result["jax_fraction_of_matmul_peak"] = {"value": flops / best_jax / 1e9 / peak_gflops, "unit": "ratio"}
    for other in ("torch", "sb3"):
        if other in seconds:
            # Per-round ratios against their faster thread setting: each compares timings taken seconds apart.
            theirs = [min(pair) for pair in zip(seconds[other], seconds[f"{other}_1thread"])]
            unit = "ratio (their s / our s; theirs at its faster thread setting)"
            for ours_name, suffix in (("jax", ""), *((name, name.removeprefix("jax")) for name in cheaper)):
                ratios = [their / ours for ours, their in zip(seconds[ours_name], theirs)]
                result[f"speedup{suffix}_vs_{other}"] = {"value": statistics.median(ratios), "unit": unit}
    return result


def _cheaper_updates(config: TD3Config) -> dict[str, TD3Config]:
    """The update's options that may make it cheaper: one shared encoder (DrQ-v2), that plus reused critic
    features, and bfloat16 encoders (mixed precision)."""
    network = config.network
    shared = dataclasses.replace(config, network=dataclasses.replace(network, shared_encoder=True))
    bfloat16 = dataclasses.replace(network.encoder, compute_dtype="bfloat16")
    return {
        "jax_shared_encoder": shared,
        "jax_shared_encoder_reused_features": dataclasses.replace(shared, actor_reuses_critic_features=True),
        "jax_bfloat16_encoder": dataclasses.replace(config, network=dataclasses.replace(network, encoder=bfloat16)),
    }


def _single_update_rounds(config: TD3Config, batch: PackedBatch, updates: int) -> Callable[[], None]:
    """A timing round of `updates` single `td3.update` calls under `config` (compiled here, not in the round)."""
    state = td3.init_state(config, jax.random.key(0), image_shape=IMAGE_SHAPE, vector_dim=VECTOR_DIM)
    compiled = td3.update.lower(state, batch).compile()
    holder = {"state": state}

    def run_round():
        for _ in range(updates):
            holder["state"], _ = compiled(holder["state"], batch)
        jax.block_until_ready(holder["state"])

    return run_round


def _torch_contenders(batch_size: int, updates: int) -> dict[str, tuple[Callable[[], None], int]]:
    """torch / sb3 rounds with all cores, and `*_1thread` rounds with one thread.

    On a shared machine torch's intra-op threads can lose more to waiting for
    each other than they gain, so both settings are timed and the comparison
    uses the faster one per round.
    """
    import torch

    from td3_jax.bench import torch_reference as bench_torch
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    reference = bench_torch.TorchTD3(TD3Config(), STACK, VECTOR_DIM)
    if reference.parameter_counts() != _jax_parameter_counts():
        raise AssertionError("the PyTorch reference's architecture differs from td3_jax's")
    torch_batch = bench_torch.torch_batch(random_batch(batch_size))
    sb3_step = bench_torch.sb3_train_step(batch_size, STACK)

    def rounds(step: Callable[[], None], threads: int) -> Callable[[], None]:
        def run_round():
            torch.set_num_threads(threads)
            for _ in range(updates):
                step()

        return run_round

    torch_step = lambda: reference.update(*torch_batch)
    contenders = {}
    for suffix, threads in (("", cores), ("_1thread", 1)):
        contenders[f"torch{suffix}"] = (rounds(torch_step, threads), updates)
        contenders[f"sb3{suffix}"] = (rounds(sb3_step, threads), updates)
    return contenders


def _jax_parameter_counts() -> dict[str, int]:
    from td3_jax.core import networks
    shapes = jax.eval_shape(
        lambda key: networks.init_params(NetworkConfig(), key, IMAGE_SHAPE, VECTOR_DIM),
        jax.random.key(0),
    )
    count = lambda tree: sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))
    actor, critic = shapes
    return {
        "actor_encoder": count(actor["encoder"]),
        "actor_head": count(actor["head"]),
        "critic_heads": count(critic["q1"]) + count(critic["q2"]),
    }


def bench_act(plan: Plan) -> dict:
    """Latency of one `act` call for one observation, host NumPy in, host NumPy out."""
    config = TD3Config()
    state = td3.init_state(config, jax.random.key(0), image_shape=IMAGE_SHAPE, vector_dim=VECTOR_DIM)
    batch = random_batch(1)
    image, vector = np.moveaxis(batch.frames[:, :STACK], 1, -1), batch.vector
    key = jax.random.key(1)

    def act():
        return np.asarray(td3.act(td3.policy_params(state), image, vector, key, 0.1, network=config.network))

    start = time.perf_counter()
    act()
    compile_seconds = time.perf_counter() - start
    latencies = []
    for _ in range(plan.act_calls):
        start = time.perf_counter()
        act()
        latencies.append(time.perf_counter() - start)
    return {
        "latency_median": {"value": statistics.median(latencies) * 1e3, "unit": "ms"},
        "latency_p90": {"value": float(np.percentile(latencies, 90)) * 1e3, "unit": "ms"},
        "compile": {"value": compile_seconds, "unit": "s"},
    }


def bench_replay(plan: Plan) -> dict:
    """Median `sample(256)` latency and bytes per transition of `td3_jax.replay.buffer.ReplayBuffer`."""
    from td3_jax.replay.buffer import ReplayBuffer

    capacity = plan.replay_capacity
    buffer = ReplayBuffer(capacity, stack=STACK, vector_dim=VECTOR_DIM)
    rng = np.random.default_rng(0)
    stack = np.repeat(rng.integers(0, 256, (1, IMAGE_SIZE, IMAGE_SIZE, 1), dtype=np.uint8), STACK, axis=-1)
    vector = rng.standard_normal((1, VECTOR_DIM), dtype=np.float32)
    no = np.zeros(1, np.bool_)
    for step in range(capacity):
        frame = rng.integers(0, 256, (1, IMAGE_SIZE, IMAGE_SIZE, 1), dtype=np.uint8)
        next_stack = np.concatenate([stack[..., 1:], frame], axis=-1)
        next_vector = rng.standard_normal((1, VECTOR_DIM), dtype=np.float32)
        truncated = np.array([step % 500 == 499])
        buffer.add(stack, vector, rng.uniform(-1, 1, (1, 2)).astype(np.float32), np.zeros(1, np.float32),
                   next_stack, next_vector, no, truncated)
        stack, vector = next_stack, next_vector
        if truncated[0]:
            stack = np.repeat(frame, STACK, axis=-1)
    batch_size = 256
    latencies = []
    for _ in range(max(5, plan.act_calls // 2)):
        start = time.perf_counter()
        buffer.sample(batch_size)
        latencies.append(time.perf_counter() - start)
    return {
        "sample_256_median": {"value": statistics.median(latencies) * 1e3, "unit": "ms"},
        "bytes_per_transition": {"value": buffer.nbytes / capacity, "unit": "B (all arrays / frame slots)"},
        "transitions_stored": {"value": len(buffer), "unit": "transitions"},
    }


def bench_env(plan: Plan) -> dict:
    """Steps/s of the embedded simulator (rendering included), single and vectorised."""
    from td3_jax.envs.config import EnvConfig
    from td3_jax.envs.factory import make_env, make_vec_env

    rng = np.random.default_rng(0)
    result = {}
    for name, num_envs in (("single", None), (f"vec{plan.vec_envs}", plan.vec_envs)):
        env = make_env(EnvConfig()) if num_envs is None else make_vec_env(EnvConfig(), plan.vec_envs)
        env.reset(seed=0)
        calls = plan.env_steps if num_envs is None else max(1, plan.env_steps // plan.vec_envs)
        shape = (2,) if num_envs is None else (num_envs, 2)
        actions = np.stack([rng.normal(0, 0.15, (calls, *shape[:-1])), rng.uniform(-0.2, 1, (calls, *shape[:-1]))], -1)
        wall, cpu = _timed(lambda it=iter(actions.astype(np.float32)): env.step(next(it)), calls)
        env.close()
        steps = num_envs or 1
        result[f"{name}_steps_per_s"] = {"value": steps / wall, "unit": "env steps/s"}
        result[f"{name}_steps_per_cpu_s"] = {"value": steps / cpu, "unit": "env steps/CPU s"}
    return result


LOOP_FIGURES = {
    "host_ms_per_env_step": "progress/host_ms_per_env_step",
    "host_ms_per_update": "progress/host_ms_per_update",
    "device_wait_ms_per_update": "progress/device_wait_ms_per_update",
}
LOOP_PHASE_FIGURES = {  # the parts of the two host totals above
    f"{total}_{LoopClock.PHASE_TAGS[phase]}": f"progress/{total}/{LoopClock.PHASE_TAGS[phase]}"
    for total, phases in (("host_ms_per_env_step", LoopClock.STEP_PHASES), ("host_ms_per_update", LoopClock.UPDATE_PHASES))
    for phase in phases
}


def bench_loop(plan: Plan) -> dict:
    """The real training loop's host time (`Trainer`, embedded simulator), in line and prefetched.

    Two loop shapes, both at one update per 2 env steps and the headline batch
    size: one env with one update per call (the CPU recipe's loop), and
    `vec_envs` envs stepped together with one batched `act` and one call of
    `vec_envs` fused updates every second vector step (a loop shaped for an
    accelerator).
    Each run trains from scratch and logs twice: the second interval of
    `loop_calls` update calls, after the first updates and the compile, is the
    figure (the `progress/host_*` and `progress/device_wait_*` metrics,
    docs/metrics.md). Every update is awaited as it is dispatched
    (`Trainer(await_updates=True)`): on a CPU the update otherwise runs on the
    cores the host's work needs, and the host figures would measure that
    contention, which an accelerator does not have. "per_env_step_and_update"
    is the host time of one env step plus one update: a device doing 500
    updates/s at one update per env step leaves 2 ms for it.
    """
    import contextlib
    import io
    import tempfile
    from pathlib import Path

    from td3_jax.diagnose.diagnose import read_scalars
    from td3_jax.training import config as config_lib
    from td3_jax.training.trainer import Trainer

    result = {}
    shapes = {"single": ("1env", 1, plan.loop_calls[0]), "vec": (f"{plan.vec_envs}envs", plan.vec_envs, plan.loop_calls[1])}
    runs = plan.loop_runs or [(shape, feed) for shape in shapes for feed in ("inline", "prefetch")]
    for kind, feed in runs:
        shape, envs, calls = shapes[kind]
        steps = 2 * envs * calls
        overrides = [
            f"env.num_envs={envs}", "env.lanesim.action_repeat=4",
            f"algorithm.batch_size={plan.batch_sizes[0]}", f"algorithm.buffer_size={4 * steps * envs}",
            f"algorithm.train_freq={2 * envs}", f"algorithm.gradient_steps={envs}",
            f"algorithm.learning_starts={steps - envs}",  # one update call in the untimed interval
            f"training.max_timesteps={2 * steps}", f"training.log_freq={steps}", "training.eval_freq=0",
            "training.num_eval_episodes=0", "training.checkpoint_freq=0", "training.save_replay_buffer=false",
            "training.compare_baseline=false", "training.progress=off",
            f"training.prefetch_batches={feed == 'prefetch'}", *plan.loop_network,
        ]
        run = config_lib.load(None, overrides)[0]
        with tempfile.TemporaryDirectory() as run_dir, contextlib.redirect_stdout(io.StringIO()):
            if Trainer(run, Path(run_dir), await_updates=True).train(resume=False) != 0:
                raise RuntimeError(f"the {shape} {feed} training loop did not finish")
            scalars = read_scalars(run_dir)
        figures = {name: float(scalars[tag].values[-1]) for name, tag in {**LOOP_FIGURES, **LOOP_PHASE_FIGURES}.items()}
        figures["host_ms_per_env_step_and_update"] = (
            figures["host_ms_per_env_step"] + figures["host_ms_per_update"])
        result.update({f"{shape}_{feed}_{name}": {"value": value, "unit": "ms"} for name, value in figures.items()})
    return result


def format_table(results: dict) -> str:
    """The human-readable table of a results dict."""
    lines = ["| figure | value | unit |", "|---|---|---|"]
    for section, figures in results.items():
        if section in ("machine", "notes") or figures is None:
            continue
        if "value" in figures:
            figures = {"": figures}
        for name, figure in figures.items():
            value = figure["value"]
            if isinstance(value, str):
                text = value
            else:
                text = f"{value:,.3g}" if isinstance(value, float) and abs(value) < 1000 else f"{value:,.0f}"
            lines.append(f"| {section}{'.' + name if name else ''} | {text} | {figure['unit']} |")
    machine = results["machine"]
    header = (f"{machine['cpu']}, {machine['cores_usable']} cores, jax {machine['jax']} / jaxlib {machine['jaxlib']}, "
              f"backend {machine['backend']}, conv auto -> {machine['conv_impl_auto']}, "
              f"load {machine['load_average_1min']:.1f}")
    notes = [f"note: {note}" for note in results.get("notes", [])]
    return "\n".join([header, *lines, *notes])
