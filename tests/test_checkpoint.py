"""Checkpoints: exact round trips, keep-last-N, atomic commits, clear errors on bad checkpoints.

Train states are random fills of `jax.eval_shape(init_state)` (every leaf
non-trivial, no compile), with IEEE special values in one leaf so that a
round trip that is equal but not bit-identical (-0.0, NaN payloads) fails.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TINY_VECTOR_DIM, random_batch, tiny_config

import td3_jax
from td3_jax import cli
from td3_jax.checkpoint import integrity as checkpoint_integrity
from td3_jax.checkpoint.integrity import MANIFEST
from td3_jax.checkpoint.store import COMMIT_MARKER, CheckpointError, Checkpointer, load_config
from td3_jax.core.hparams import EncoderConfig, NetworkConfig
from td3_jax.envs import make_env
from td3_jax.errors import UserError
from td3_jax.replay.buffer import ReplayBuffer
from td3_jax.training import config as config_lib

SPECIALS = np.array([np.nan, -0.0, np.inf, -np.inf, 1e-45, np.finfo(np.float32).max], np.float32)
FRAME_SHAPE = (6, 6)


def abstract_state(config=None) -> td3_jax.TD3State:
    config = tiny_config() if config is None else config
    init = lambda key: td3_jax.init_state(config, key, vector_dim=TINY_VECTOR_DIM)  # noqa: E731
    return jax.eval_shape(init, jax.random.key(0))


def random_state(abstract: td3_jax.TD3State, seed: int = 0) -> td3_jax.TD3State:
    rng = np.random.default_rng(seed)

    def fill(leaf):
        dtype = np.dtype(leaf.dtype)
        if np.issubdtype(dtype, np.floating):
            value = rng.standard_normal(leaf.shape).astype(dtype)
            if value.size >= SPECIALS.size:
                value.reshape(-1)[: SPECIALS.size] = SPECIALS
            return jnp.asarray(value)
        info = np.iinfo(dtype)
        return jnp.asarray(rng.integers(info.min, info.max, leaf.shape, dtype=dtype, endpoint=True))

    return jax.tree.map(fill, abstract)


def assert_bit_identical(restored, expected) -> None:
    """Same tree (NamedTuple types and static config included), dtypes and bytes of every leaf."""
    assert jax.tree.structure(restored) == jax.tree.structure(expected)
    chex.assert_trees_all_equal(restored, expected)
    for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(expected), strict=True):
        assert isinstance(got, type(want)) or (isinstance(got, jax.Array) and isinstance(want, jax.Array))
        assert got.dtype == want.dtype and got.shape == want.shape
        assert np.asarray(got).tobytes() == np.asarray(want).tobytes()


def small_replay(seed: int = 0, steps: int = 9, vector_dim: int = 3) -> ReplayBuffer:
    """A 2-frame-stack buffer with an episode boundary, its sampling RNG advanced."""
    rng = np.random.default_rng(seed)
    buffer = ReplayBuffer(16, stack=2, frame_shape=FRAME_SHAPE, vector_dim=vector_dim, seed=seed)
    frames = [rng.integers(0, 256, FRAME_SHAPE, dtype=np.uint8)] * 2
    vector = rng.normal(size=(1, vector_dim)).astype(np.float32)
    for step in range(steps):
        new = rng.integers(0, 256, FRAME_SHAPE, dtype=np.uint8)
        next_vector = rng.normal(size=(1, vector_dim)).astype(np.float32)
        image, next_image = np.stack(frames, -1), np.stack([frames[-1], new], -1)
        done = step == 4
        buffer.add(
            image[None], vector, rng.uniform(-1, 1, (1, 2)), rng.normal(size=1), next_image[None], next_vector,
            np.array([done]), np.array([False]),
        )
        frames = [new, new] if done else [frames[-1], new]
        vector = next_vector
    buffer.sample(3)
    return buffer


def host_state(step: int) -> dict:
    noise_rng = np.random.default_rng(7)
    noise_rng.normal(size=5)
    return {
        "env_step": step,
        "episode": 3,
        "noise_scale": 0.15,
        "numpy_rng": {"noise": noise_rng.bit_generator.state, "env": np.random.default_rng(8).bit_generator.state},
        "returns": [1.5, -2.0, None],
        "eval": {"best": float("inf"), "passed": True},
    }


CONFIG = {"env": {"name": "lanesim", "seed": 3}, "td3": {"discount": 0.99, "actor_hidden": [8]}, "steps": 1000}


@pytest.fixture(scope="module")
def abstract():
    return abstract_state()


@pytest.fixture(scope="module")
def state(abstract):
    return random_state(abstract)


def save(directory, step, state, *, replay=None, **options) -> None:
    with Checkpointer(directory, **options) as checkpointer:
        checkpointer.save(step, train_state=state, host_state=host_state(step), config=CONFIG, replay_state=replay)


def test_round_trip_is_bit_identical_for_every_part(tmp_path, abstract, state):
    buffer = small_replay()
    save(tmp_path, 10, state, replay=buffer.state_dict())
    with Checkpointer(tmp_path, read_only=True) as checkpointer:
        restored = checkpointer.restore(abstract_train_state=abstract)
    assert restored.step == 10
    assert_bit_identical(restored.train_state, state)
    assert type(restored.train_state.actor_opt_state[3]) is type(state.actor_opt_state[3])  # optax PartitionState
    assert restored.train_state.config == state.config
    assert restored.host_state == host_state(10)
    assert restored.config == CONFIG

    expected = buffer.state_dict()
    assert restored.replay_state.keys() == expected.keys()
    for name, value in expected.items():
        got = restored.replay_state[name]
        assert type(got) is type(value), name
        if isinstance(value, np.ndarray):
            assert got.dtype == value.dtype and got.tobytes() == value.tobytes(), name
            assert got.flags.writeable and got.flags.c_contiguous, name  # adopted without a copy


def test_restored_key_and_numpy_generators_continue_the_same_streams(tmp_path, abstract, state):
    save(tmp_path, 1, state)
    with Checkpointer(tmp_path) as checkpointer:
        restored = checkpointer.restore(abstract_train_state=abstract)
    key, restored_key = (jax.random.wrap_key_data(s.key) for s in (state, restored.train_state))
    np.testing.assert_array_equal(jax.random.normal(restored_key, (4,)), jax.random.normal(key, (4,)))
    resumed = np.random.default_rng()
    resumed.bit_generator.state = restored.host_state["numpy_rng"]["noise"]
    original = np.random.default_rng()
    original.bit_generator.state = host_state(1)["numpy_rng"]["noise"]
    np.testing.assert_array_equal(resumed.normal(size=8), original.normal(size=8))


def test_restored_replay_buffer_samples_like_the_original(tmp_path, abstract, state):
    buffer = small_replay()
    save(tmp_path, 1, state, replay=buffer.state_dict())
    with Checkpointer(tmp_path) as checkpointer:
        replay_state = checkpointer.restore(abstract_train_state=abstract).replay_state
    fresh = ReplayBuffer(16, stack=2, frame_shape=FRAME_SHAPE, vector_dim=3, seed=99)
    fresh.load_state_dict(replay_state)
    assert len(fresh) == len(buffer)
    for _ in range(3):
        chex.assert_trees_all_equal(fresh.sample(5), buffer.sample(5))


def test_restore_without_replay(tmp_path, abstract, state):
    replay = small_replay().state_dict()
    save(tmp_path / "with", 1, state, replay=replay)
    with Checkpointer(tmp_path / "with") as checkpointer:
        assert checkpointer.restore(abstract_train_state=abstract, with_replay=False).replay_state is None
    save(tmp_path / "off", 1, state, replay=replay, save_replay=False)
    assert not (tmp_path / "off" / "1" / "replay").exists()
    with Checkpointer(tmp_path / "off") as checkpointer:
        restored = checkpointer.restore(abstract_train_state=abstract)
    assert restored.replay_state is None
    assert_bit_identical(restored.train_state, state)


def test_keeps_the_last_n_committed_checkpoints(tmp_path, state):
    with Checkpointer(tmp_path, max_to_keep=2) as checkpointer:
        for step in (100, 200, 300, 400):
            checkpointer.save(step, train_state=state, host_state={"step": step}, config=CONFIG, replay_state=None)
        assert checkpointer.committed_steps() == [300, 400]
        assert checkpointer.latest_step() == 400
    assert sorted(p.name for p in tmp_path.iterdir()) == ["300", "400"]


@pytest.mark.parametrize("cut", [50, 200, 250, 300, 301])
def test_delete_from_removes_exactly_the_steps_at_or_after_it(tmp_path, state, cut):
    with Checkpointer(tmp_path, max_to_keep=3) as checkpointer:
        for step in (100, 200, 300):
            checkpointer.save(step, train_state=state, host_state={"step": step}, config=CONFIG, replay_state=None)
        assert checkpointer.delete_from(cut) == [s for s in (100, 200, 300) if s >= cut]
        assert checkpointer.committed_steps() == [s for s in (100, 200, 300) if s < cut]
    with Checkpointer(tmp_path, read_only=True) as reopened:  # gone from disk, not only from the manager's list
        assert reopened.committed_steps() == [s for s in (100, 200, 300) if s < cut]


def test_save_refuses_a_step_not_after_the_latest(tmp_path, state):
    save(tmp_path, 5, state)
    with Checkpointer(tmp_path) as checkpointer, pytest.raises(CheckpointError, match="already holds committed step 5"):
        checkpointer.save(5, train_state=state, host_state={}, config={}, replay_state=None)


@pytest.mark.parametrize(
    ("host", "problem"),
    [
        ({"shape": (84, 84)}, "tuple"),
        ({"reward": np.float64(1.0)}, "float64"),
        ({"step": np.int64(3)}, "not JSON-serializable"),
        ({"per_env": {0: 1}}, "non-string keys"),
        ({"array": np.zeros(2)}, "not JSON-serializable"),
    ],
)
def test_save_refuses_host_state_that_json_would_change(tmp_path, state, host, problem):
    with Checkpointer(tmp_path) as checkpointer:
        with pytest.raises(TypeError, match=problem):
            checkpointer.save(1, train_state=state, host_state=host, config=CONFIG, replay_state=None)
        assert checkpointer.latest_step() is None


def test_save_refuses_a_typed_prng_key(tmp_path, state):
    typed = state.replace(key=jax.random.wrap_key_data(state.key))
    with Checkpointer(tmp_path) as checkpointer, pytest.raises(TypeError, match="train_state.key is a typed PRNG key"):
        checkpointer.save(1, train_state=typed, host_state={}, config={}, replay_state=None)


def test_nan_in_host_state_round_trips(tmp_path, abstract, state):
    with Checkpointer(tmp_path) as checkpointer:
        checkpointer.save(1, train_state=state, host_state={"last_return": float("nan")}, config={}, replay_state=None)
        assert np.isnan(checkpointer.restore(abstract_train_state=abstract).host_state["last_return"])


@pytest.mark.parametrize("wrapped", [False, True], ids=["os_error", "wrapped_in_a_bare_exception"])
def test_interrupted_saves_are_ignored_and_the_previous_checkpoint_loads(tmp_path, abstract, state, monkeypatch, wrapped):
    save(tmp_path, 1, state)
    # A save that dies before its commit (here: the fsync before the rename fails), raised as it is
    # or the way orbax wraps a failed array transfer.
    def disk_full(root):
        full = OSError(28, "No space left on device")
        if not wrapped:
            raise full
        raise Exception("Encountered error while writing an array") from full

    monkeypatch.setattr(checkpoint_integrity, "fsync_tree", disk_full)
    with Checkpointer(tmp_path) as checkpointer, pytest.raises(CheckpointError, match="could not write checkpoint 2 .*No space left on device.*free disk space"):
        checkpointer.save(2, train_state=random_state(abstract, 1), host_state={}, config={}, replay_state=None)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["1"]  # a save that raised cleans up after itself
    # What a save killed with its process leaves behind.
    shutil.copytree(tmp_path / "1", tmp_path / "2.orbax-checkpoint-tmp")
    # A step directory without its commit marker (e.g. copied by hand, or cut short by a power loss).
    shutil.copytree(tmp_path / "1", tmp_path / "3")
    (tmp_path / "3" / COMMIT_MARKER).unlink()

    with Checkpointer(tmp_path, read_only=True) as checkpointer:
        assert checkpointer.committed_steps() == [1]
        restored = checkpointer.restore(abstract_train_state=abstract)
        assert restored.step == 1
        assert_bit_identical(restored.train_state, state)
        with pytest.raises(CheckpointError, match=r"no committed checkpoint for step 3 .*committed: \[1\]"):
            checkpointer.restore(3, abstract_train_state=abstract)

    # Opening for training removes the unfinished save; saving step 3 again replaces the unmarked one.
    later = random_state(abstract, 2)
    with Checkpointer(tmp_path) as checkpointer:
        assert not any(".orbax-checkpoint-tmp" in p.name for p in tmp_path.iterdir())
        for step in (2, 3):
            checkpointer.save(step, train_state=later, host_state={}, config={}, replay_state=None)
        assert checkpointer.committed_steps() == [1, 2, 3]
        assert_bit_identical(checkpointer.restore(abstract_train_state=abstract).train_state, later)


def _state_with_empty_leaves(state):
    """`state` plus zero-size leaves of several dtypes (a zero-width input layer, say)."""
    empty = {"kernel": jnp.zeros((0, 8), jnp.bfloat16), "mask": jnp.zeros((3, 0), jnp.bool_)}
    return state.replace(actor_params={**state.actor_params, "empty": empty}, step=state.step)


def test_zero_size_arrays_round_trip_with_shape_and_dtype(tmp_path, abstract, state):
    buffer = small_replay(vector_dim=0)  # an env without a vector part: zero-width vector arrays
    expected_replay = buffer.state_dict()
    assert any(isinstance(v, np.ndarray) and v.size == 0 for v in expected_replay.values())
    with_empty, abstract_with_empty = _state_with_empty_leaves(state), _state_with_empty_leaves(abstract)
    save(tmp_path, 200, with_empty, replay=expected_replay)
    with Checkpointer(tmp_path, read_only=True) as checkpointer:
        assert checkpointer.committed_steps() == [200]
        restored = checkpointer.restore(abstract_train_state=jax.eval_shape(lambda: abstract_with_empty))
    assert_bit_identical(restored.train_state, with_empty)
    assert restored.replay_state.keys() == expected_replay.keys()
    for name, value in expected_replay.items():
        got = restored.replay_state[name]
        if isinstance(value, np.ndarray):
            assert (got.shape, got.dtype, got.tobytes()) == (value.shape, value.dtype, value.tobytes()), name
            assert got.flags.writeable and got.flags.c_contiguous, name
        else:
            assert got == value, name
    fresh = ReplayBuffer(16, stack=2, frame_shape=FRAME_SHAPE, vector_dim=0, seed=5)
    fresh.load_state_dict(restored.replay_state)
    assert len(fresh) == len(buffer)
    chex.assert_trees_all_equal(fresh.sample(4), buffer.sample(4))
    with Checkpointer(tmp_path) as checkpointer, pytest.raises(CheckpointError, match=r"empty.kernel is \(0, 8\) bfloat16"):
        wrong = state.replace(actor_params={**state.actor_params, "empty": {
            "kernel": jnp.zeros((0, 9), jnp.bfloat16), "mask": jnp.zeros((3, 0), jnp.bool_)}})
        checkpointer.restore(abstract_train_state=wrong)


def test_failed_save_raises_its_cause_and_leaves_nothing_behind(tmp_path, abstract, state):
    """orbax writes the items concurrently; one item failing must not leave the others writing."""
    frames = np.random.default_rng(0).integers(0, 256, (64, 32, 32), dtype=np.uint8)
    unstorable = {"frames": frames, "names": np.array(["a", "b"]), "format": 1}  # orbax has no str dtype
    threads_before = set(threading.enumerate())
    with Checkpointer(tmp_path) as checkpointer:
        checkpointer.save(1, train_state=state, host_state={}, config=CONFIG)
        with pytest.raises(CheckpointError, match="Unsupported data type"):
            checkpointer.save(2, train_state=state, host_state={}, config=CONFIG, replay_state=unstorable)
        # orbax's executor threads may still be exiting on a loaded machine: give them a moment, no more.
        for thread in set(threading.enumerate()) - threads_before:
            thread.join(timeout=5.0)
        assert [t.name for t in set(threading.enumerate()) - threads_before if t.is_alive()] == []
        assert sorted(p.name for p in tmp_path.iterdir()) == ["1"]
        # The same step saves cleanly in the same process.
        later = random_state(abstract, 3)
        checkpointer.save(2, train_state=later, host_state={}, config=CONFIG, replay_state={"frames": frames})
        assert checkpointer.committed_steps() == [1, 2]
        restored = checkpointer.restore(abstract_train_state=abstract)
    assert_bit_identical(restored.train_state, later)
    assert restored.replay_state["frames"].tobytes() == frames.tobytes()


def _other_architecture():
    network = lambda features, actor_hidden: NetworkConfig(  # noqa: E731
        encoder=EncoderConfig(features=features), actor_hidden=actor_hidden, critic_hidden=(8,)
    )
    wider, deeper = tiny_config(network=network(32, (8,))), tiny_config(network=network(16, (8, 8)))
    return {
        "wider encoder": (
            lambda: abstract_state(wider),
            r"encoder.Dense_0.bias is \(16,\) float32 in the checkpoint vs \(32,\) float32 in the config \(and \d+ more",
        ),
        "deeper actor": (lambda: abstract_state(deeper), r"not in the checkpoint \(first: actor_"),
        "float16 step counter": (
            lambda: abstract_state().replace(step=jax.ShapeDtypeStruct((), jnp.float16)),
            r"step is \(\) int32 in the checkpoint vs \(\) float16",
        ),
    }


@pytest.mark.parametrize("case", sorted(_other_architecture()))
def test_other_architecture_is_a_clear_error(tmp_path, state, case):
    make_target, message = _other_architecture()[case]
    save(tmp_path, 2000, state)
    with Checkpointer(tmp_path) as checkpointer, pytest.raises(CheckpointError, match=message) as raised:
        checkpointer.restore(abstract_train_state=make_target())
    assert f"{tmp_path / '2000'} does not match the config" in str(raised.value)
    assert "\n" not in str(raised.value)


def _largest_file(directory: Path) -> Path:
    return max((p for p in directory.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


REPLAY = {"frames": np.random.default_rng(0).integers(0, 256, (64, 32, 32), dtype=np.uint8), "format": 1}


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def _largest_data_file(step_directory: Path) -> str:
    """The largest array chunk file of the train state, relative to the step directory."""
    return _largest_file(step_directory / "train_state" / "ocdbt.process_0" / "d").relative_to(step_directory).as_posix()


CORRUPTIONS = {
    "truncated train state": (lambda d: _truncate(_largest_file(d / "train_state")), "could not be read"),
    "truncated replay": (lambda d: _truncate(_largest_file(d / "replay")), "could not be read"),
    "missing train state": (lambda d: shutil.rmtree(d / "train_state"), "'train_state' item is missing"),
    "missing replay": (lambda d: shutil.rmtree(d / "replay"), "'replay' item is missing"),
    "train state metadata gone": (lambda d: (d / "train_state" / "_METADATA").unlink(), "no train_state metadata"),
    "garbled host json": (lambda d: (d / "host" / "metadata").write_text('{"env_step": '), "JSONDecodeError"),
    "other format": (lambda d: (d / "meta" / "metadata").write_text('{"format": 99}'), "has format 99"),
}


@pytest.mark.parametrize("case", sorted(CORRUPTIONS))
def test_corrupt_checkpoint_without_checksums_is_a_clear_one_line_error(tmp_path, abstract, state, case):
    """Checkpoints saved before checksums existed: orbax's own failures still become one-line errors."""
    corrupt, message = CORRUPTIONS[case]
    save(tmp_path, 7, state, replay=REPLAY)
    (tmp_path / "7" / MANIFEST).unlink()
    corrupt(tmp_path / "7")
    with Checkpointer(tmp_path, read_only=True) as checkpointer, pytest.raises(CheckpointError) as raised:
        checkpointer.restore(abstract_train_state=abstract)
    text = str(raised.value)
    assert message in text and str(tmp_path / "7") in text and "\n" not in text
    assert isinstance(raised.value, UserError)


def test_not_a_checkpoint_directory(tmp_path, abstract, state):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_config(tmp_path / "missing")
    assert not (tmp_path / "missing").exists()
    with (
        Checkpointer(tmp_path, read_only=True) as checkpointer,
        pytest.raises(CheckpointError, match=f"no committed checkpoint in {tmp_path}; pass the checkpoints"),
    ):
        checkpointer.restore(abstract_train_state=abstract)
    save(tmp_path / "checkpoints", 5, state)
    with pytest.raises(CheckpointError, match="did you mean .*checkpoints"):
        load_config(tmp_path)
    with pytest.raises(CheckpointError, match="that is one checkpoint; pass its parent"):
        load_config(tmp_path / "checkpoints" / "5")


def test_load_config_reads_no_arrays(tmp_path, state):
    save(tmp_path, 1, state)
    save(tmp_path, 2, state)
    (tmp_path / "2" / MANIFEST).unlink()  # unverifiable, so only what orbax reads counts
    (tmp_path / "2" / "meta" / "metadata").write_text(json.dumps({"format": 1}))
    shutil.rmtree(tmp_path / "2" / "train_state")
    assert load_config(tmp_path) == CONFIG
    assert load_config(tmp_path, step=1) == CONFIG


def test_training_continues_identically_from_a_restored_state(tmp_path, rng):
    config = tiny_config()
    state = td3_jax.init_state(config, jax.random.key(3), vector_dim=TINY_VECTOR_DIM)
    batches = [random_batch(rng) for _ in range(2)]
    state, _ = td3_jax.update(state, batches[0])
    save(tmp_path, 1, state)
    with Checkpointer(tmp_path) as checkpointer:
        restored = checkpointer.restore(abstract_train_state=abstract_state(config)).train_state
    continued, metrics = td3_jax.update(restored, batches[1])
    expected, expected_metrics = td3_jax.update(state, batches[1])
    assert_bit_identical(continued, expected)
    chex.assert_trees_all_equal(metrics, expected_metrics)


# ------------------------------------------------------------ checksums


def _checksum_corruptions() -> dict:
    """case: (which file, relative to the step directory, or None for the largest array chunk; damage)."""
    return {
        "flipped array chunk": (None, _flip_byte),
        "truncated array chunk": (None, _truncate),
        "flipped host json": ("host/metadata", _flip_byte),
        "flipped config json": ("config/metadata", _flip_byte),
        "flipped ocdbt manifest": ("train_state/ocdbt.process_0/manifest.ocdbt", _flip_byte),
        "flipped step metadata": ("_CHECKPOINT_METADATA", _flip_byte),
        "flipped commit marker": (COMMIT_MARKER, _flip_byte),
        "flipped replay chunk": ("replay", _flip_byte),
        "flipped checksum manifest": (MANIFEST, _flip_byte),
        "deleted ocdbt manifest": ("train_state/manifest.ocdbt", Path.unlink),
    }


@pytest.mark.parametrize("case", sorted(_checksum_corruptions()))
def test_any_damaged_file_is_a_one_line_error_naming_it(tmp_path, abstract, state, case, caplog):
    relative, damage = _checksum_corruptions()[case]
    save(tmp_path, 7, state, replay=REPLAY)
    step_directory = tmp_path / "7"
    if relative is None:
        relative = _largest_data_file(step_directory)
    elif relative == "replay":
        relative = _largest_file(step_directory / "replay").relative_to(step_directory).as_posix()
    damage(step_directory / relative)
    with Checkpointer(tmp_path, read_only=True) as checkpointer, pytest.raises(CheckpointError) as raised:
        checkpointer.restore(abstract_train_state=abstract)
    text = str(raised.value)
    assert f"checkpoint {step_directory} is corrupt: {relative}: " in text, text
    assert "move that step directory away" in text and "\n" not in text
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_load_config_checks_json_files_and_sizes_but_hashes_no_array(tmp_path, state):
    save(tmp_path, 1, state)
    _flip_byte(tmp_path / "1" / _largest_data_file(tmp_path / "1"))
    assert load_config(tmp_path) == CONFIG  # restore finds it; eval reads the config twice
    for relative, damage in [("config/metadata", _flip_byte), (None, _truncate)]:
        save(tmp_path, 2, state)
        relative = relative or _largest_data_file(tmp_path / "2")
        damage(tmp_path / "2" / relative)
        with pytest.raises(CheckpointError, match=f"2 is corrupt: {relative}: "):
            load_config(tmp_path)
        shutil.rmtree(tmp_path / "2")


def test_untouched_checkpoint_lists_every_file_and_restores_bit_identically(tmp_path, abstract, state, caplog):
    save(tmp_path, 3, state, replay=REPLAY)
    step_directory = tmp_path / "3"
    listed = json.loads((step_directory / MANIFEST).read_text())["files"]
    on_disk = {p.relative_to(step_directory).as_posix() for p in step_directory.rglob("*") if p.is_file()}
    assert set(listed) == on_disk - {MANIFEST}
    assert {COMMIT_MARKER, "_CHECKPOINT_METADATA", "host/metadata"} <= set(listed)
    for _ in range(2):  # restoring rewrites nothing that is listed
        with Checkpointer(tmp_path, read_only=True) as checkpointer:
            restored = checkpointer.restore(abstract_train_state=abstract)
        assert_bit_identical(restored.train_state, state)
        assert restored.replay_state["frames"].tobytes() == REPLAY["frames"].tobytes()
    save(tmp_path, 5, state)  # nor does saving a later step
    assert checkpoint_integrity.verify(step_directory)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_checkpoint_without_checksums_loads_with_one_warning(tmp_path, abstract, state, caplog):
    save(tmp_path, 4, state)
    (tmp_path / "4" / MANIFEST).unlink()  # as saved before checksums existed
    caplog.set_level(logging.WARNING, logger="td3_jax.checkpoint.store")
    assert load_config(tmp_path) == CONFIG
    with Checkpointer(tmp_path, read_only=True) as checkpointer:
        assert_bit_identical(checkpointer.restore(abstract_train_state=abstract).train_state, state)
    warnings = [r.getMessage() for r in caplog.records if r.name == "td3_jax.checkpoint.store"]
    assert len(warnings) == 1 and "cannot be verified" in warnings[0] and str(tmp_path / "4") in warnings[0]


def test_failed_save_logs_no_orbax_thread_tracebacks(tmp_path, state, caplog):
    """The save raises its cause once; orbax's writer threads would each log it with a traceback too."""
    unstorable = {"frames": REPLAY["frames"], "names": np.array(["a", "b"]), "format": 1}  # orbax has no str dtype
    with Checkpointer(tmp_path) as checkpointer, pytest.raises(CheckpointError, match="Unsupported data type"):
        checkpointer.save(1, train_state=state, host_state={}, config=CONFIG, replay_state=unstorable)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert logging.getLogger("absl").filters == []  # only while saving


@pytest.fixture(scope="module")
def eval_run(tmp_path_factory) -> Path:
    """A run directory with one checkpoint of a small network that `td3-jax eval` can rebuild."""
    run = config_lib.load(None, ["networks.cnn.features=8", "networks.actor.hidden_sizes=[8]",
                                 "networks.critic.hidden_sizes=[8]"])[0]
    env = make_env(run.env)
    state = td3_jax.init_state(
        config_lib.td3_config(run, env.action_space.shape[0]), jax.random.key(0),
        image_shape=env.observation_space["image"].shape, vector_dim=env.observation_space["vector"].shape[0],
    )
    env.close()
    directory = tmp_path_factory.mktemp("run")
    with Checkpointer(directory / "checkpoints") as checkpointer:
        checkpointer.save(1, train_state=state, host_state={}, config=config_lib.to_dict(run))
    return directory


@pytest.mark.parametrize("relative", [None, "_CHECKPOINT_METADATA"])
def test_eval_of_a_corrupt_checkpoint_exits_2_with_one_line(eval_run, tmp_path, capsys, caplog, relative):
    run = tmp_path / "run"
    shutil.copytree(eval_run, run)
    step_directory = run / "checkpoints" / "1"
    relative = relative or _largest_data_file(step_directory)
    _flip_byte(step_directory / relative)
    code = cli.main(["eval", "--checkpoint", str(run), "--episodes", "1"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert f"{step_directory} is corrupt: {relative}: " in err
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
