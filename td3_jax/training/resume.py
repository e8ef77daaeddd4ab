"""What `td3-jax train --resume` may change, and reading a saved simulator safely. Host-side.

A resumed run continues from its checkpoint but takes its config from
``config.yaml`` plus `--set`. Every changed key is either applied and logged,
or refused with one line before anything runs: a run never shows one value
and uses another. Refused are keys whose value is baked into what the
checkpoint holds (array shapes, the replay capacity, the restored random
streams) and, when the embedded simulator continues mid-episode from its
snapshot, every `env.*` key of the training env.

The embedded simulator's snapshot is a pickle; `unpack_snapshot` reads it
with an allowlist of the classes a simulator holds, so a run directory from
elsewhere cannot run code on resume.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import pickle
import zlib
from typing import Any

from td3_jax.errors import UserError
from td3_jax.training import config as config_lib

FIXED_KEYS = {
    "algorithm.buffer_size": "the replay buffer's capacity is fixed by the saved buffer",
    "algorithm.policy_average_tau": "the checkpoint keeps the policy average of this rate (or none)",
    "training.seed": "the random streams continue from the checkpoint",
    "env.backend": "the observation shapes and the replay come from this backend",
    "env.stack": "the replay buffer and the networks are built for this stack",
    "env.num_envs": "the replay buffer has one stream per env",
    "env.observation.deviation_scale_m": "the replayed vectors and the trained networks' inputs are on this scale",
    "env.observation.heading_scale_rad": "the replayed vectors and the trained networks' inputs are on this scale",
    "env.observation.previous_action": "the replayed vectors and the trained networks' inputs have this length",
    "networks.cnn.features": "the checkpoint's arrays have this shape",
    "networks.cnn.layer_norm": "the checkpoint's arrays have this shape",
    "networks.cnn.activation": "the checkpoint's weights were trained with it",
    "networks.cnn.shared": "the checkpoint's networks have one encoder or two",
    "networks.actor.hidden_sizes": "the checkpoint's arrays have this shape",
    "networks.actor.trunk_features": "the checkpoint's arrays have this shape",
    "networks.actor.vector_after_trunk": "the checkpoint's arrays have this shape",
    "networks.critic.hidden_sizes": "the checkpoint's arrays have this shape",
    "networks.critic.trunk_features": "the checkpoint's arrays have this shape",
    "networks.critic.vector_after_trunk": "the checkpoint's arrays have this shape",
    "networks.critic.dueling": "the checkpoint's critic has these heads",
    "networks.critic.reward_components": "the checkpoint's critic has these heads and its replay these rewards",
}
"""Keys a resumed run cannot change, with the reason."""


def _flatten(config, plain: dict, prefix: str = "") -> dict[str, Any]:
    """{dotted key: plain value} of every field of a config dataclass, `plain` being its `to_dict`.

    Sections are followed by the dataclass, not by the dict, so that a free-form
    mapping (env.gym.make_kwargs) is one value however its keys change.
    """
    flat = {}
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if dataclasses.is_dataclass(value):
            flat.update(_flatten(value, plain[field.name], f"{prefix}{field.name}."))
        else:
            flat[prefix + field.name] = plain[field.name]
    return flat


def config_changes(saved: config_lib.RunConfig, current: config_lib.RunConfig) -> list[tuple[str, Any, Any]]:
    """(key, saved value, current value) for every key that differs, in config order."""
    before = _flatten(saved, config_lib.to_dict(saved))
    after = _flatten(current, config_lib.to_dict(current))
    return [(key, before[key], value) for key, value in after.items() if before[key] != value]


def check_changes(changes: list[tuple[str, Any, Any]], *, env_snapshot: bool, run_dir) -> None:
    """Raises UserError naming the first change a resume cannot apply.

    Args:
      changes: from `config_changes`.
      env_snapshot: the training env continues from a saved simulator, so none
        of its settings can change.
      run_dir: the run, for the message.
    """
    for key, before, after in changes:
        reason = FIXED_KEYS.get(key)
        if reason is None and env_snapshot and key.startswith("env."):
            reason = "the embedded simulator continues mid-episode from its saved state, random streams included"
        if reason is not None:
            raise UserError(
                f"--resume {run_dir} cannot change {key} ({before!r} -> {after!r}): {reason}; "
                "drop that --set (or restore it in config.yaml), or start a new run"
            )


def describe_changes(changes: list[tuple[str, Any, Any]]) -> list[str]:
    """One log line per applied change."""
    return [f"resume: {key} {before!r} -> {after!r}" for key, before, after in changes]


# ---------------------------------------------------------------- simulator snapshot


def pack_snapshot(value) -> str:
    """A JSON-able string holding `value` (the in-process simulator, its observation, episode sums)."""
    return base64.b64encode(zlib.compress(pickle.dumps(value), 1)).decode("ascii")


_NUMPY_GLOBALS = {
    ("numpy", "dtype"),
    ("numpy", "ndarray"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy.random._pickle", "__generator_ctor"),
    ("numpy.random._pickle", "__bit_generator_ctor"),
    ("numpy.random.bit_generator", "__pyx_unpickle_SeedSequence"),
    ("builtins", "slice"),
}
_CLASS_MODULES = ("td3_jax.envs.", "td3_jax.training.run_log", "gymnasium.spaces.", "numpy.random.")
"""Modules whose classes (never functions) a snapshot may name."""
_MOVED_MODULES = {
    "td3_jax.train": "td3_jax.training.run_log",
    "td3_jax.envs.lanesim": "td3_jax.envs.lanesim.sim",
    "td3_jax.envs.roads": "td3_jax.envs.lanesim.roads",
    "td3_jax.envs.traffic": "td3_jax.envs.lanesim.traffic",
    "td3_jax.envs.camera": "td3_jax.envs.lanesim.camera",
    "td3_jax.envs.baseline": "td3_jax.envs.lanesim.baseline",
}
"""Where the simulator's classes live now, for snapshots saved before the package was grouped by concern."""


class _SnapshotUnpickler(pickle.Unpickler):
    """Resolves only NumPy's array and RNG rebuilders and classes of the simulator's own modules."""

    def find_class(self, module: str, name: str):
        module = _MOVED_MODULES.get(module, module)
        if (module, name) in _NUMPY_GLOBALS:
            return super().find_class(module, name)
        if module.startswith(_CLASS_MODULES):
            found = super().find_class(module, name)
            if isinstance(found, type):
                return found
        raise pickle.UnpicklingError(f"{module}.{name} is not part of a simulator snapshot")


def unpack_snapshot(text: str, where) -> Any:
    """Reads what `pack_snapshot` wrote; anything else is a one-line UserError naming `where`."""
    try:
        return _SnapshotUnpickler(io.BytesIO(zlib.decompress(base64.b64decode(text)))).load()
    except (pickle.UnpicklingError, zlib.error, ValueError, EOFError, TypeError, AttributeError) as error:
        raise UserError(
            f"the simulator snapshot in {where} is corrupt or not a td3_jax snapshot ({error}); "
            "resume from an earlier checkpoint or start a new run"
        ) from None
