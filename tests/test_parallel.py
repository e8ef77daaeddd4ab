"""The data-parallel update: same result as one device, sharded as declared, checkpointable.

The 4-device tests need 4 XLA devices before JAX starts; the main pytest
process has 1, so `test_four_device_tests_in_a_subprocess` reruns this file's
`TestFourDevices` in a child process with
``XLA_FLAGS=--xla_force_host_platform_device_count=4``.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import sys
from pathlib import Path

import chex
import jax
import numpy as np
import pytest
from conftest import TINY_VECTOR_DIM, random_batch, tiny_config

import td3_jax
from td3_jax.checkpoint.store import Checkpointer
from td3_jax.training.parallel import DATA_AXIS, DataParallel, select_devices

K, GLOBAL_BATCH = 2, 8
# float32 sums in another order: per-shard partial sums, then an all-reduce.
RTOL = ATOL = 1e-5


def config() -> td3_jax.TD3Config:
    """tiny_config without LayerNorm, actor step on every update.

    A LayerNorm over (H, W, C) cancels the common part of the conv biases
    before it, so some of their gradients are of round-off size; Adam divides
    a gradient by its own magnitude, so another summation order moves such a
    parameter by a visible fraction of a step (seen: 3% of a step) and no
    float32 tolerance holds for it. Without the norm the gradients are not
    round-off sized.
    """
    tiny = tiny_config(policy_freq=1)
    network = dataclasses.replace(tiny.network, encoder=dataclasses.replace(tiny.network.encoder, layer_norm=False))
    return dataclasses.replace(tiny, network=network)


def stacked_batches(seed: int, k: int = K, batch_size: int = GLOBAL_BATCH) -> td3_jax.Batch:
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda *leaves: np.stack(leaves), *[random_batch(rng, batch_size) for _ in range(k)])


@pytest.fixture(scope="module")
def state() -> td3_jax.TD3State:
    return td3_jax.init_state(config(), jax.random.key(7), vector_dim=TINY_VECTOR_DIM)


def save_state(directory: Path, step: int, state) -> None:
    with Checkpointer(directory) as checkpointer:
        checkpointer.save(step, train_state=state, host_state={"env_step": step}, config={})


# ---------------------------------------------------------------- any device count


def test_select_devices_rejects_bad_specs():
    assert select_devices("auto") == jax.devices()
    assert select_devices(1) == jax.devices()[:1]
    for spec in ("all", "0", -1, len(jax.devices()) + 1):
        with pytest.raises(ValueError, match="devices"):
            select_devices(spec)


def test_one_device_mesh_equals_the_plain_update(state):
    batches = stacked_batches(0)
    parallel = DataParallel(1)
    got, got_metrics = parallel.update_many(parallel.place_state(state), batches)
    want, want_metrics = td3_jax.update_many(state, batches)
    chex.assert_trees_all_close(got, want, rtol=RTOL, atol=ATOL)
    chex.assert_trees_all_close(got_metrics, want_metrics, rtol=RTOL, atol=ATOL)
    assert got.config == state.config


def test_place_batches_rejects_unstacked_batches():
    parallel = DataParallel(1)
    with pytest.raises(ValueError, match=r"\(K, B\)"):
        parallel.place_batches(random_batch(np.random.default_rng(0), 4))


def test_local_params_are_single_device_and_equal(state):
    parallel = DataParallel("auto")
    local = parallel.local_params(parallel.place_state(state).actor_params)
    for leaf in jax.tree.leaves(local):
        assert len(leaf.devices()) == 1
    chex.assert_trees_all_equal(local, state.actor_params)


def test_four_device_tests_in_a_subprocess():
    if jax.device_count() >= 4:
        pytest.skip("this process already has 4 devices: TestFourDevices runs here directly")
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist", __file__,
         "-k", "TestFourDevices", "-rs"],
        env=env, cwd=Path(__file__).parent, capture_output=True, text=True, timeout=300,
    )
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "skipped" not in summary and "passed" in summary, summary


# One process of a two-process run (2 CPU devices each): process p feeds rows p*4:(p+1)*4
# of a global batch of 8; its replica must equal one device's update on all 8 rows.
TWO_PROCESS_SCRIPT = """
import os
import sys
import jax
jax.config.update("jax_cpu_collectives_implementation", "gloo")
from td3_jax.training.parallel import DataParallel, initialize_distributed
process, port = int(sys.argv[1]), sys.argv[2]
os.environ.update(JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(process))
assert initialize_distributed(coordinator_address="127.0.0.1:" + port) == (process, 2)
import chex, td3_jax
from test_parallel import ATOL, RTOL, TINY_VECTOR_DIM, config, stacked_batches
state = td3_jax.init_state(config(), jax.random.key(7), vector_dim=TINY_VECTOR_DIM)
batches = stacked_batches(8)
parallel = DataParallel("auto")
assert (parallel.num_devices, parallel.local_devices) == (4, 2)
local = jax.tree.map(lambda x: x[:, process * 4:(process + 1) * 4], batches)
got, _ = parallel.update_many(parallel.place_state(state), parallel.place_batches(local))
want, _ = td3_jax.update_many(state, batches)
chex.assert_trees_all_close(parallel.local_params(got), want, rtol=RTOL, atol=ATOL)
print("process", process, "matches")
"""


def test_two_process_run_equals_the_single_device_update():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = str(probe.getsockname()[1])
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    processes = [
        subprocess.Popen([sys.executable, "-c", TWO_PROCESS_SCRIPT, str(p), port], env=env, cwd=Path(__file__).parent,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for p in range(2)
    ]
    outputs = [process.communicate(timeout=300)[0] for process in processes]
    for p, (process, output) in enumerate(zip(processes, outputs)):
        assert process.returncode == 0 and f"process {p} matches" in output, output[-3000:]


# ---------------------------------------------------------------- 4 devices (subprocess)


@pytest.mark.skipif(jax.device_count() < 4, reason="needs 4 devices; run by test_four_device_tests_in_a_subprocess")
class TestFourDevices:
    def test_sharded_update_equals_single_device_update(self, state):
        batches = stacked_batches(1)
        parallel = DataParallel(4)
        placed = parallel.place_batches(batches)
        # Each device holds a quarter of every one of the K batches.
        assert placed.image.sharding.spec == jax.sharding.PartitionSpec(None, DATA_AXIS)
        for shard in placed.image.addressable_shards:
            assert shard.data.shape == (K, GLOBAL_BATCH // 4, 84, 84, 4)
        got, got_metrics = parallel.update_many(parallel.place_state(state), placed)
        want, want_metrics = td3_jax.update_many(state, batches)
        chex.assert_trees_all_close(got, want, rtol=RTOL, atol=ATOL)
        chex.assert_trees_all_close(got_metrics, want_metrics, rtol=RTOL, atol=ATOL)
        assert int(got.step) == K
        for leaf in jax.tree.leaves(got) + jax.tree.leaves(got_metrics):
            assert leaf.sharding.is_fully_replicated and len(leaf.sharding.device_set) == 4

    def test_batch_that_does_not_split_is_a_clear_error(self, state):
        parallel = DataParallel(4)
        with pytest.raises(ValueError, match="batch_size=6 does not split over 4 devices"):
            parallel.update_many(parallel.place_state(state), stacked_batches(2, batch_size=6))

    def test_sharded_state_checkpoints_and_resumes_identically(self, state, tmp_path):
        parallel = DataParallel(4)
        first, second = stacked_batches(3), stacked_batches(4)
        trained, _ = parallel.update_many(parallel.place_state(state), first)
        save_state(tmp_path, 1, trained)
        expected, expected_metrics = parallel.update_many(trained, second)

        # Restore against an unsharded abstract state, then re-place on the mesh.
        abstract = jax.eval_shape(lambda: state)
        with Checkpointer(tmp_path, read_only=True) as checkpointer:
            restored = checkpointer.restore(abstract_train_state=abstract).train_state
        chex.assert_trees_all_equal(restored, trained)
        continued, metrics = parallel.update_many(parallel.place_state(restored), second)
        chex.assert_trees_all_equal(continued, expected)
        chex.assert_trees_all_equal(metrics, expected_metrics)

        # Or restore straight onto the mesh.
        with Checkpointer(tmp_path, read_only=True) as checkpointer:
            on_mesh = checkpointer.restore(abstract_train_state=parallel.abstract_state(trained)).train_state
        for leaf in jax.tree.leaves(on_mesh):
            assert leaf.sharding.is_equivalent_to(parallel.replicated, leaf.ndim)
        continued, _ = parallel.update_many(on_mesh, second)
        chex.assert_trees_all_equal(continued, expected)

    def test_single_device_checkpoint_resumes_on_four_devices(self, state, tmp_path):
        first, second = stacked_batches(5), stacked_batches(6)
        trained, _ = td3_jax.update_many(state, first)
        save_state(tmp_path, 1, trained)
        parallel = DataParallel(4)
        with Checkpointer(tmp_path, read_only=True) as checkpointer:
            restored = checkpointer.restore(abstract_train_state=parallel.abstract_state(trained)).train_state
        got, _ = parallel.update_many(restored, second)
        want, _ = td3_jax.update_many(trained, second)
        chex.assert_trees_all_close(got, want, rtol=RTOL, atol=ATOL)
