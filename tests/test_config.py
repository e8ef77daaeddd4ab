"""Strict config loading: every key read, unknown keys and bad values rejected in one line."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
import typing
from pathlib import Path

import pytest
import yaml

from td3_jax.training import config as config_lib
from td3_jax.training.config import ConfigError, RunConfig

REPO = Path(__file__).resolve().parents[1]


def _load(text: str, *sets: str) -> RunConfig:
    return config_lib.build(RunConfig, yaml.safe_load(text) or {}) if not sets else config_lib.load(None, list(sets))[0]


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "configs").glob("*.yaml")))
def test_shipped_configs_load(name):
    run, raw = config_lib.load(REPO / "configs" / name)
    assert isinstance(run, RunConfig)


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("algorithm: {batch_sise: 3}", "unknown config key 'batch_sise' in algorithm"),
        ("networks: {cnn: {actor_cnn_lr: -1.0}}", "actor_cnn_lr must be >= 0"),
        ("algorithm: {batch_size: 512, buffer_size: 100}", "buffer_size must be >= algorithm.batch_size"),
        ("algorithm: {policy_freq: 1.5}", "algorithm.policy_freq must be an integer"),
        ("algorithm: {critic_huber_delta: -1.0}", "algorithm.critic_huber_delta must be >= 0"),
        ("training: {save_replay_buffer: 3}", "training.save_replay_buffer must be true or false"),
        ("env: {backend: mujoco}", "env.backend"),
        ("guard: {mode: loud}", "guard"),
        ("nonsense: 1", "unknown config key 'nonsense' at the top level"),
        ("networks: {actor: {hidden_sizes: 256}}", "networks.actor.hidden_sizes must be a list"),
        ("env: {observation: {deviation_scale_m: 0}}", "env.observation.deviation_scale_m must be in"),
        ("networks: {critic: {vector_after_trunk: true}}", "(networks.critic): vector_after_trunk must be false without a trunk"),
        ("env: {backend: 'gym:CarRacing-v3', observation: {heading_scale_rad: 0.05}}", "Remove env.observation"),
    ],
)
def test_bad_configs_fail_with_one_clear_line(text, fragment):
    with pytest.raises(ConfigError) as error:
        _load(text)
    message = str(error.value)
    assert fragment in message
    assert "\n" not in message


def test_yaml_quirks_are_handled():
    run = _load("networks: {cnn: {actor_cnn_lr: 1e-5}}\nguard: {mode: off}\ntraining: {progress: off}")
    assert run.networks.cnn.actor_cnn_lr == 1e-5  # YAML 1.1 reads 1e-5 as a string
    assert run.guard.mode == "off" and run.training.progress == "off"


def test_set_overrides_and_dump_round_trip(tmp_path):
    run, _ = config_lib.load(None, [
        "algorithm.batch_size=64", "env.lanesim.scenario=2", "networks.actor.hidden_sizes=[32, 32]",
        "env.observation.deviation_scale_m=0.25",
    ])
    assert run.algorithm.batch_size == 64 and run.env.lanesim.scenario == 2
    assert run.env.observation.deviation_scale_m == 0.25
    assert run.networks.actor.hidden_sizes == (32, 32)
    config_lib.dump(run, tmp_path / "c.yaml")
    assert config_lib.load(tmp_path / "c.yaml")[0] == run
    with pytest.raises(ConfigError, match="unknown config key 'bogus' in algorithm"):
        config_lib.load(None, ["algorithm.bogus=1"])


def test_every_training_config_field_is_read():
    """Each field of algorithm/networks/training is read outside its definition.

    The env and guard sections are checked by their modules' own tests (their
    reward weights, for instance, are read through getattr).
    """
    package = REPO / "td3_jax"
    config_module = package / "training" / "config.py"
    sources = "\n".join(p.read_text() for p in package.rglob("*.py") if p != config_module)
    sources += config_module.read_text().split("def td3_config")[1]

    def walk(cls):
        for field in dataclasses.fields(cls):
            hint = typing.get_type_hints(cls)[field.name]
            if dataclasses.is_dataclass(hint):
                yield from walk(hint)
            else:
                yield cls.__name__, field.name

    sections = (config_lib.AlgorithmConfig, config_lib.NetworksConfig, config_lib.TrainingConfig)
    unread = [f"{cls}.{name}" for section in sections for cls, name in walk(section) if f".{name}" not in sources]
    assert not unread, f"config fields never read: {unread}"


def test_missing_config_file_is_one_line_and_exit_2(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "td3_jax.cli", "train", "--config", str(tmp_path / "nope.yaml")],
        capture_output=True, text=True, cwd=tmp_path,
    )
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "does not exist" in result.stderr
    assert "Traceback" not in result.stderr


def test_config_reference_is_generated_and_complete():
    from td3_jax.training import config_doc
    text = config_doc.markdown()
    assert (REPO / "docs" / "config.md").read_text() == text, "regenerate: python -m td3_jax.training.config_doc > docs/config.md"
    undocumented = [line for line in text.splitlines() if line.startswith("| `") and line.endswith("|  |")]
    assert not undocumented, f"config fields without a docstring: {undocumented}"


def test_unknown_conv_impl_is_a_config_error():
    with pytest.raises(ConfigError, match="networks.cnn.conv_impl must be one of"):
        _load("networks: {cnn: {conv_impl: fastest}}")


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("algorithm:\n  tau: 0.01\n  tau: 0.02\n", "line 3: duplicate key 'tau' (first at line 2)"),
        ("training: {seed: 1}\nguard: {}\ntraining: {seed: 2}\n", "line 3: duplicate key 'training' (first at line 1)"),
        ("training: {seed: 1, seed: 2}\n", "line 1: duplicate key 'seed'"),
    ],
)
def test_duplicate_keys_are_errors_with_their_lines(tmp_path, text, fragment):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=re.escape(fragment)) as error:
        config_lib.load(path)
    assert "\n" not in str(error.value)


def test_merge_keys_may_override_what_they_merge(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("x: &shared {a: 1, b: 2}\ny:\n  <<: *shared\n  b: 3\n")
    assert config_lib.read_yaml(path, "file") == {"x": {"a": 1, "b": 2}, "y": {"a": 1, "b": 3}}


def test_duplicate_keys_in_a_set_value_are_errors():
    with pytest.raises(ConfigError, match="duplicate key 'a'"):
        config_lib.load(None, ["algorithm.exploration_noise={a: 1, a: 2}"])


@pytest.mark.parametrize(
    "content, fragment",
    [
        (b"- algorithm\n", "holds a list, not a mapping of sections"),
        (b"\xef\xbb\xbftraining: {seed: 1}\n\xff\n", "not UTF-8 text (byte 0xff at line 2)"),
        (b"training: {seed: [1}\n", "is not valid YAML at line 1"),
    ],
)
def test_unusable_config_files_are_one_line(tmp_path, content, fragment):
    path = tmp_path / "c.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=re.escape(fragment)) as error:
        config_lib.load(path)
    assert "\n" not in str(error.value)


def test_no_config_file_keeps_the_built_in_defaults():
    assert config_lib.load(None)[0] == RunConfig()


def test_eval_policy_offers_exactly_the_policies_a_train_state_keeps():
    from td3_jax.core.hparams import POLICIES

    hint = typing.get_type_hints(config_lib.TrainingConfig)["eval_policy"]
    assert typing.get_args(hint) == POLICIES


RECIPE = Path(__file__).resolve().parents[1] / "configs" / "driving_recipe.yaml"
RECIPE_USERS = ("td3_lanesim_cpu.yaml", "td3_carla.yaml")


def _leaves(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        out.update(_leaves(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return out


@pytest.mark.parametrize("name", RECIPE_USERS)
def test_driving_configs_carry_the_whole_recipe_unchanged(name):
    recipe = _leaves(config_lib.read_yaml(RECIPE, "recipe"))
    own = config_lib.read_yaml(RECIPE.parent / name, "config file")
    assert own.get("extends") == RECIPE.name
    overridden = set(recipe) & set(_leaves({k: v for k, v in own.items() if k != "extends"}))
    assert not overridden, f"{name} overrides recipe keys {sorted(overridden)}; change the recipe instead"
    resolved = _leaves(config_lib.to_dict(config_lib.load(RECIPE.parent / name)[0]))
    for key, value in recipe.items():
        expected = list(value) if isinstance(value, tuple) else value
        assert resolved[key] == pytest.approx(expected), key


def test_the_racetrack_config_carries_the_recipes_learner_settings():
    """configs/highway_racetrack.yaml writes out the recipe's learner keys (the recipe's env.reward is lanesim and CARLA's;
    its training.eval_policy and the evaluated average's algorithm.policy_average_tau are not learner settings, and the
    racetrack's comparison with SB3 evaluates the online actor on both sides)."""
    recipe = {k: v for k, v in _leaves(config_lib.read_yaml(RECIPE, "recipe")).items()
              if not k.startswith(("env.", "training.")) and k != "algorithm.policy_average_tau"}
    resolved = _leaves(config_lib.to_dict(config_lib.load(RECIPE.parent / "highway_racetrack.yaml")[0]))
    for key, value in recipe.items():
        expected = list(value) if isinstance(value, tuple) else value
        assert resolved[key] == pytest.approx(expected), key


def test_extends_merges_sections_and_later_files_win(tmp_path):
    (tmp_path / "base.yaml").write_text("algorithm: {tau: 0.02, batch_size: 64}\ntraining: {seed: 3}\n")
    (tmp_path / "mid.yaml").write_text("extends: base.yaml\nalgorithm: {batch_size: 32}\n")
    (tmp_path / "top.yaml").write_text("extends: mid.yaml\ntraining: {max_timesteps: 10}\n")
    run, _ = config_lib.load(tmp_path / "top.yaml", ["algorithm.tau=0.5"])
    assert (run.algorithm.tau, run.algorithm.batch_size, run.training.seed, run.training.max_timesteps) == (
        0.5, 32, 3, 10)


@pytest.mark.parametrize("files, fragment", [
    ({"a.yaml": "extends: missing.yaml\n"}, "missing.yaml (extended by"),
    ({"a.yaml": "extends: b.yaml\n", "b.yaml": "extends: a.yaml\n"}, "extends itself"),
    ({"a.yaml": "extends: [b.yaml]\n"}, "must be a file name"),
])
def test_bad_extends_is_one_clear_error(tmp_path, files, fragment):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(ConfigError, match=re.escape(fragment)):
        config_lib.load(tmp_path / "a.yaml")


@pytest.mark.parametrize("settings, shared", [
    ([], False),  # the embedded simulator: every env its own world
    (["env.backend=carla"], True),  # every env on carla.host:carla.port
    (["env.backend=carla", "env.workers.carla_in_process=true"], True),
    (["env.backend=carla", "env.workers.carla_server_command=CarlaUE4.sh -carla-rpc-port={port}"], False),
    (["env.backend=carla", "env.workers.carla_servers=['10.0.0.5:2000']"], False),
    (["env.backend=carla", "env.carla.host=10.0.0.5", "env.workers.carla_servers=['10.0.0.5:2000']"], True),
    (["env.backend=carla", "env.workers.carla_servers=['127.0.0.1:2000']"], True),  # carla.host is localhost
])
def test_which_evaluation_env_shares_a_training_world(settings, shared):
    """The evaluation env connects to carla.host:carla.port; the training envs to their servers."""
    assert config_lib.load(None, settings)[0].env.evaluation_shares_training_world() is shared


def test_an_evaluation_server_among_the_training_servers_is_refused_in_one_line(tmp_path):
    from td3_jax.errors import UserError
    from td3_jax.training.trainer import Trainer

    run = config_lib.load(None, ["env.backend=carla", "env.workers.carla_servers=['127.0.0.1:2000', '127.0.0.1:2010']",
                                 "training.num_eval_episodes=1"])[0]
    with pytest.raises(UserError, match=r"localhost:2000 \(carla.host, carla.port\) is one of env.workers.carla_servers"):
        Trainer(run, tmp_path / "run")
    assert not (tmp_path / "run").exists()  # refused before anything was started or written


@pytest.mark.parametrize("backend, refused", [("lanesim", False), ("carla", False), ("gym:CarRacing-v3", True)])
def test_a_per_component_critic_needs_a_backend_that_reports_the_components(backend, refused):
    settings = [f"env.backend={backend}", "networks.critic.reward_components=true"]
    if refused:
        with pytest.raises(config_lib.ConfigError, match="only the lanesim and carla backends report"):
            config_lib.load(None, settings)
        return
    run = config_lib.load(None, settings)[0]
    assert config_lib.td3_config(run).network.critic_reward_components == 5
    assert config_lib.td3_config(config_lib.load(None, [f"env.backend={backend}"])[0]).network.critic_reward_components == 0
