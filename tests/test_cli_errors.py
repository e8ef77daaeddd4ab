"""Bad input to the CLI is one stderr line and exit code 2, found before any long work (issue 19, items 5 and 6)."""

from __future__ import annotations

import gc
import logging
import os
import shutil
import sys
import time
from pathlib import Path

import jax
import pytest

from td3_jax import cli, errors
from td3_jax.checkpoint.store import Checkpointer
from td3_jax.core.td3 import init_state
from td3_jax.envs import make_env
from td3_jax.training import config as config_lib

SMALL = [
    "algorithm.learning_starts=40",
    "algorithm.batch_size=4",
    "algorithm.buffer_size=400",
    "networks.cnn.features=8",
    "networks.actor.hidden_sizes=[8]",
    "networks.critic.hidden_sizes=[8]",
    "env.lanesim.max_episode_steps=30",
    "env.lanesim.route_length_m=60",
    "training.max_timesteps=2",
    "training.num_eval_episodes=1",
    "training.checkpoint_freq=0",
    "training.progress=off",
]
"""Settings of a run that ends in seconds, should a refused input be accepted after all."""


def train_args(*args: str) -> list[str]:
    return ["train", *(f"--set={s}" for s in SMALL), *args]


def assert_one_line_error(code: int, capsys, *fragments: str) -> str:
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert code == 2, captured
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in err
    return err


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A run directory holding one checkpoint of a small network (no training: init only)."""
    run = config_lib.load(None, SMALL)[0]
    env = make_env(run.env)
    state = init_state(
        config_lib.td3_config(run, env.action_space.shape[0]),
        jax.random.key(0),
        image_shape=env.observation_space["image"].shape,
        vector_dim=env.observation_space["vector"].shape[0],
    )
    env.close()
    directory = tmp_path_factory.mktemp("run")
    with Checkpointer(directory / "checkpoints") as checkpointer:
        checkpointer.save(1, train_state=state, host_state={"env_step": 1}, config=config_lib.to_dict(run))
    return directory


# ------------------------------------------------------------ config files and --set (a-d)


def test_malformed_yaml_in_set_is_one_line(tmp_path, capsys):
    code = cli.main(train_args("--set", "algorithm.batch_size=[1,", "--run-dir", str(tmp_path / "run")))
    assert_one_line_error(code, capsys, "--set 'algorithm.batch_size=[1,'", "not valid YAML")


def test_config_file_that_is_not_utf8_is_one_line(tmp_path, capsys):
    config = tmp_path / "latin1.yaml"
    config.write_bytes("training:\n  # réglage\n  seed: 3\n".encode("latin-1"))
    code = cli.main(train_args("--config", str(config), "--run-dir", str(tmp_path / "run")))
    assert_one_line_error(code, capsys, "not UTF-8", "line 2")


def test_duplicate_config_key_names_the_key_and_both_lines(tmp_path, capsys):
    config = tmp_path / "twice.yaml"
    config.write_text("training:\n  seed: 1\n  log_freq: 10\n  seed: 2\n")
    code = cli.main(train_args("--config", str(config), "--run-dir", str(tmp_path / "run")))
    assert_one_line_error(code, capsys, "duplicate key 'seed'", "line 4", "first at line 2")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("text", ["", "# nothing but a comment\n"])
def test_empty_config_file_is_refused(tmp_path, capsys, text):
    config = tmp_path / "empty.yaml"
    config.write_text(text)
    code = cli.main(train_args("--config", str(config), "--run-dir", str(tmp_path / "run")))
    assert_one_line_error(code, capsys, "is empty", "omit --config")
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------ output paths, checked first (e)


def test_eval_json_into_a_missing_folder_is_refused_before_evaluating(run_dir, tmp_path, capsys):
    code = cli.main(["eval", "--checkpoint", str(run_dir), "--json", str(tmp_path / "missing_dir" / "x.json")])
    assert_one_line_error(code, capsys, "--json", "does not exist")
    assert not (tmp_path / "missing_dir").exists()


def test_eval_json_that_is_a_directory_is_refused(run_dir, tmp_path, capsys):
    code = cli.main(["eval", "--checkpoint", str(run_dir), "--json", str(tmp_path)])
    assert_one_line_error(code, capsys, "is a directory")


def test_eval_policy_with_the_baseline_is_refused(run_dir, capsys):
    code = cli.main(["eval", "--checkpoint", str(run_dir), "--baseline", "--policy", "target"])
    assert_one_line_error(code, capsys, "--policy", "--baseline")


def test_eval_of_an_average_the_run_does_not_keep_is_refused(run_dir, capsys):
    code = cli.main(["eval", "--checkpoint", str(run_dir), "--policy", "average"])
    assert_one_line_error(code, capsys, "keeps no policy average", "--policy online")


def test_an_evaluated_average_without_its_rate_is_refused(tmp_path, capsys):
    code = cli.main(train_args("--set", "training.eval_policy=average", "--run-dir", str(tmp_path / "run")))
    assert_one_line_error(code, capsys, "training.eval_policy=average", "algorithm.policy_average_tau > 0")
    assert not (tmp_path / "run").exists()


def test_bench_json_into_a_missing_folder_is_refused_before_measuring(tmp_path, capsys):
    code = cli.main(["bench", "--quick", "--no-torch", "--json", str(tmp_path / "missing_dir" / "b.json")])
    assert_one_line_error(code, capsys, "--json", "does not exist")


def test_env_preview_out_under_a_file_is_refused(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    code = cli.main(["env-preview", "--out", str(tmp_path / "file" / "preview")])
    assert_one_line_error(code, capsys, "--out", "a part of it is a file")


# ------------------------------------------------------------ seeds (f)


@pytest.mark.parametrize("command", [["eval", "--checkpoint", "RUN"], ["env-preview", "--out", "OUT"]])
def test_negative_seed_is_one_line(run_dir, tmp_path, capsys, command):
    command = [str(run_dir) if a == "RUN" else str(tmp_path / "out") if a == "OUT" else a for a in command]
    code = cli.main([*command, "--seed", "-1"])
    assert_one_line_error(code, capsys, "--seed must be in [0, 2**32), got -1")


# ------------------------------------------------------------ corrupt checkpoint (g)


def test_corrupt_checkpoint_is_one_line_without_event_loop_echoes(run_dir, tmp_path, capsys, caplog, monkeypatch):
    """orbax's abandoned concurrent reads used to add 'Event loop is closed' tracebacks after the error."""
    corrupt = tmp_path / "corrupt"
    shutil.copytree(run_dir, corrupt)
    (corrupt / "checkpoints" / "1" / "train_state" / "manifest.ocdbt").write_bytes(b"garbage{")
    echoes = []
    monkeypatch.setattr(sys, "unraisablehook", echoes.append)
    caplog.set_level(logging.ERROR, logger="asyncio")
    for _ in range(6):  # the echoes race the error, and a cold first read rarely shows them
        code = cli.main(["eval", "--checkpoint", str(corrupt)])
        assert_one_line_error(code, capsys, "checkpoint", "move that step directory away")
        gc.collect()
        time.sleep(0.2)  # the abandoned reads finish on tensorstore's threads
    gc.collect()
    assert not echoes, [str(e.exc_value) for e in echoes]
    assert not [r for r in caplog.records if r.name == "asyncio"]


# ------------------------------------------------------------ gym: backends (i)


@pytest.mark.parametrize(
    "env_id, fragments",
    [
        ("NoSuchEnv-v0", ("gym:NoSuchEnv-v0", "doesn't exist", "registered gymnasium id")),
        ("Pendulum-v1", ("gym:Pendulum-v1", "not an image", "pick an env")),
    ],
)
def test_bad_gym_env_is_one_line_through_train(tmp_path, capsys, env_id, fragments):
    code = cli.main(train_args("--set", f"env.backend=gym:{env_id}", "--run-dir", str(tmp_path / "run")))
    assert_one_line_error(code, capsys, *fragments)


# ------------------------------------------------------------ directories that cannot be created (j)


def test_ensure_writable_dir_creates_and_checks(tmp_path):
    made = errors.ensure_writable_dir(tmp_path / "a" / "b", "--run-dir")
    assert made.is_dir() and not list(made.iterdir())  # the write probe leaves nothing behind


def test_ensure_writable_dir_under_a_file_is_a_user_error(tmp_path):
    (tmp_path / "file").write_text("keep me")
    with pytest.raises(errors.UserError, match=r"--run-dir .*file/run cannot be created .*a part of it is a file"):
        errors.ensure_writable_dir(tmp_path / "file" / "run", "--run-dir")
    assert (tmp_path / "file").read_text() == "keep me"


def test_ensure_writable_dir_in_a_read_only_folder_is_a_user_error(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root ignores permissions; the path-under-a-file test covers root")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(errors.UserError, match="cannot be created"):
            errors.ensure_writable_dir(locked / "run", "--run-dir")
    finally:
        locked.chmod(0o700)
