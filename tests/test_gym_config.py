"""The env.gym section: a gymnasium env configured from YAML alone, and every way that section can be wrong.

The env of tests/kwarg_image_env.py cannot be made, or its observation not
read, without each key of its `env.gym` section; the end-to-end test takes it
from a YAML file through `td3-jax train`, a checkpoint, `td3-jax train
--resume` and `td3-jax eval --checkpoint`.
"""

from __future__ import annotations

import json
import pickle

import pytest
import yaml
from kwarg_image_env import BACKEND, EPISODE_STEPS, YAML_SECTION
from test_train import TINY

from td3_jax.checkpoint import store as checkpoint
from td3_jax.checkpoint.store import Checkpointer
from td3_jax.cli import main
from td3_jax.envs import EnvConfig, make_env, make_vec_env
from td3_jax.envs.gym_adapter import GymAdapterError
from td3_jax.training import config as config_lib
from td3_jax.training.config import ConfigError, RunConfig
from td3_jax.training.resume import config_changes


def _raw() -> dict:
    return yaml.safe_load(YAML_SECTION)


def _build(raw: dict) -> RunConfig:
    return config_lib.build(RunConfig, raw)


def test_the_yaml_section_reaches_gymnasium_make_and_the_adapter():
    run = _build(_raw())
    env = make_env(run.env, seed=3)
    assert env.converter.layout == ("s", "h", "w") and env.converter.value_range == (0.0, 1.0)
    assert env.image_key == "frames" and env.vector_keys == ()
    # The nested make kwargs arrive as given, the YAML list as the tuple the env adds to its stack size.
    assert env.unwrapped.frame_shape == (6, 6) and env.unwrapped.brightness == 0.75
    obs, _ = env.reset()
    assert obs["image"].shape == (84, 84, 4) and obs["image"].max() == round(0.75 * 255)
    assert obs["vector"].shape == (0,)
    env.close()

    raw = _raw()
    raw["env"]["gym"]["vector_keys"] = ["speed"]
    vec = make_vec_env(_build(raw).env, 2)  # every copy makes its env from its own copy of the kwargs
    assert vec.reset(seed=0)[0]["vector"].tolist() == [[0.5], [0.5]]
    vec.close()


@pytest.mark.parametrize(
    ("option", "hint"),
    [("layout", "pass layout="), ("value_range", "pass value_range="), ("image_key", "pass image_key="),
     ("vector_keys", "pass vector_keys=")],
)
def test_without_each_adapter_option_the_env_is_refused_in_one_line(option, hint):
    raw = _raw()
    del raw["env"]["gym"][option]
    with pytest.raises(GymAdapterError, match=hint) as error:
        make_env(_build(raw).env)
    assert "\n" not in str(error.value)


def test_without_make_kwargs_the_env_is_refused_in_one_line():
    with pytest.raises(GymAdapterError, match="missing 1 required positional argument: 'config'") as error:
        make_env(EnvConfig(backend=BACKEND))
    assert "env.gym.make_kwargs" in str(error.value) and "\n" not in str(error.value)


def test_a_module_that_cannot_be_imported_is_one_line(tmp_path, monkeypatch):
    with pytest.raises(GymAdapterError) as error:
        make_env(EnvConfig(backend="gym:td3_jax_no_such_module:Thing-v0"))
    message = str(error.value)
    assert "module 'td3_jax_no_such_module'" in message and "pip install" in message and "\n" not in message

    (tmp_path / "td3_jax_broken_envs.py").write_text("import td3_jax_no_such_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(GymAdapterError) as error:
        make_env(EnvConfig(backend="gym:td3_jax_broken_envs:Thing-v0"))
    message = str(error.value)
    assert "importing module 'td3_jax_broken_envs'" in message and "td3_jax_no_such_dependency" in message
    assert "\n" not in message


def test_the_cli_reports_an_unimportable_module_in_one_line(tmp_path, capsys):
    args = ["train", "--run-dir", str(tmp_path / "run"), "--set", "env.backend=gym:td3_jax_no_such_module:Thing-v0"]
    assert main(args) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 1 and "td3_jax_no_such_module" in errors[0] and "pip install" in errors[0]


@pytest.mark.parametrize(
    ("env_section", "fragment"),
    [
        ("{backend: 'gym:X-v0', gym: {make_kwargs: [1]}}", "env.gym.make_kwargs must be a mapping"),
        ("{backend: 'gym:X-v0', gym: {make_kwargs: {1: a}}}", "env.gym.make_kwargs must have string keys"),
        ("{backend: 'gym:X-v0', gym: {make_kwargs: {config: {start: 2024-01-01}}}}",
         "env.gym.make_kwargs.config.start must be a string, number, boolean, null, list or mapping"),
        ("{backend: 'gym:X-v0', gym: {make_kwargs: {seed: 1}}}", "cannot hold 'seed': the adapter takes it from env.seed"),
        ("{backend: 'gym:X-v0', gym: {layout: 3}}", "env.gym.layout has the wrong type"),
        ("{backend: 'gym:X-v0', gym: {layout: hxw}}", "env.gym.layout: bad layout 'hxw'"),
        ("{backend: 'gym:X-v0', gym: {value_range: [1, 0]}}", "env.gym.value_range must be [low, high]"),
        ("{backend: 'gym:X-v0', gym: {value_range: [0]}}", "env.gym.value_range has the wrong type"),
        ("{backend: 'gym:X-v0', gym: {vector_keys: speed}}", "env.gym.vector_keys has the wrong type"),
        ("{backend: 'gym:X-v0', gym: {vector_keys: [a, a]}}", "env.gym.vector_keys names an entry twice"),
        ("{backend: 'gym:X-v0', gym: {image_key: a, vector_keys: [a]}}", "holds the image_key 'a'"),
        ("{backend: 'gym:X-v0', gym: {fov: 90}}", "unknown config key 'fov' in env.gym; allowed: make_kwargs, layout"),
        ("{backend: lanesim, gym: {layout: hwc}}", "env.gym configures a gym:<id> backend"),
        ("{backend: 'gym:a:b:Name-v0'}", "env.backend must be"),
        ("{backend: 'gym:my-envs:Name-v0'}", "env.backend must be"),
        ("{backend: 'gym:'}", "env.backend must be"),
    ],
)
def test_bad_gym_sections_fail_with_one_clear_line(env_section, fragment):
    with pytest.raises(ConfigError) as error:
        _build(yaml.safe_load(f"env: {env_section}"))
    assert fragment in str(error.value) and "\n" not in str(error.value)


def test_module_ids_are_accepted():
    for backend in ("gym:highway_env:racetrack-v0", "gym:pkg.mod:ns/Name-v1", "gym:CarRacing-v3"):
        assert _build({"env": {"backend": backend}}).env.backend == backend


def test_the_section_round_trips_through_what_runs_and_checkpoints_store(tmp_path):
    run = _build(_raw())
    assert config_lib.build(RunConfig, json.loads(json.dumps(config_lib.to_dict(run)))) == run  # checkpoint meta
    config_lib.dump(run, tmp_path / "config.yaml")
    assert config_lib.load(tmp_path / "config.yaml")[0] == run  # RUN_DIR/config.yaml
    assert pickle.loads(pickle.dumps(run)) == run  # env worker processes
    assert hash(run) == hash(pickle.loads(pickle.dumps(run)))
    make_kwargs = run.env.gym.make_kwargs
    with pytest.raises(TypeError, match="read-only"):
        make_kwargs["config"]["brightness"] = 1.0
    fresh = run.env.gym.gymnasium_make_kwargs()
    fresh["config"]["brightness"] = 1.0  # what an env does to its copy stays there
    assert run.env.gym.gymnasium_make_kwargs()["config"]["brightness"] == 0.75


def test_a_make_kwargs_change_on_resume_is_one_change():
    saved = _build(_raw())
    raw = _raw()
    raw["env"]["gym"]["make_kwargs"]["config"]["observation"]["noise"] = 0.1  # a key the saved config lacks
    raw["training"] = {"max_timesteps": 7}
    changes = config_changes(saved, _build(raw))
    assert [key for key, _, _ in changes] == ["env.gym.make_kwargs", "training.max_timesteps"]
    before, after = changes[0][1:]
    assert "noise" not in before["config"]["observation"] and after["config"]["observation"]["noise"] == 0.1
    assert before["config"]["observation"]["frame_shape"] == [6, 6]  # logged as the YAML reads


SETTINGS = TINY + [  # as in tests/test_backends_e2e.py, whose compiled networks this run reuses
    "algorithm.learning_starts=20",
    "algorithm.train_freq=5",
    "training.checkpoint_freq=100",
    "training.num_eval_episodes=1",
    "training.progress=lines",
]


@pytest.mark.slow
def test_an_env_configured_only_in_yaml_trains_checkpoints_resumes_and_evaluates(tmp_path, capsys):
    config_file = tmp_path / "kwarg_env.yaml"
    config_file.write_text(YAML_SECTION)
    run_dir = tmp_path / "run"
    sets = [arg for setting in SETTINGS for arg in ("--set", setting)]
    assert main(["train", "--config", str(config_file), "--run-dir", str(run_dir), *sets,
                 "--set", "training.max_timesteps=200"]) == 0

    # The resume makes the env from RUN_DIR/config.yaml and checks that against the checkpoint's config:
    # the make kwargs come back from both unchanged (the env could not be made otherwise).
    assert main(["train", "--resume", str(run_dir), "--set", "training.max_timesteps=250"]) == 0
    out = capsys.readouterr().out
    assert "resume: training.max_timesteps 200 -> 250" in out and "resume: env." not in out
    written = config_lib.load(config_file)[0]
    for step in (200, 250):
        saved = config_lib.build(RunConfig, checkpoint.load_config(run_dir / "checkpoints", step))
        assert (saved.env.backend, saved.env.gym) == (written.env.backend, written.env.gym)
    with Checkpointer(run_dir / "checkpoints", read_only=True) as checkpoints:
        assert checkpoints.committed_steps() == [100, 200, 250]
    results = json.loads((run_dir / "results.json").read_text())
    assert results["total_timesteps"] == 250 and results["total_updates"] == 2 * len(range(20, 251, 5))

    report_file = tmp_path / "eval.json"
    assert main(["eval", "--checkpoint", str(run_dir), "--episodes", "2", "--json", str(report_file)]) == 0
    report = json.loads(report_file.read_text())
    assert report["checkpoint_step"] == 250
    assert [episode["length"] for episode in report["episodes"]] == [EPISODE_STEPS] * 2
