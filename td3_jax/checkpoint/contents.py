"""What a checkpoint's items hold, checked before orbax sees them. Pure functions, no I/O.

JSON items must come back from a JSON round trip identical, types included.
Zero-size arrays (which orbax refuses) are swapped for None on save and
rebuilt from their recorded shape and dtype on restore. Stored and wanted
array trees are compared by leaf name, shape and dtype, so a config that does
not match a checkpoint is named in one line before any array is read.
"""

from __future__ import annotations

import json
import math
from typing import Any

import jax
import numpy as np


def check_json_exact(name: str, value: Any) -> None:
    """Raises TypeError unless `value` comes back from a JSON round trip identical, types included."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError) as error:
        raise TypeError(f"{name} is not JSON-serializable: {error}") from error
    problem = _json_difference(value, json.loads(text), name)
    if problem:
        raise TypeError(f"{name} would not survive JSON unchanged: {problem}")


def _json_difference(original: Any, loaded: Any, path: str) -> str | None:
    if type(original) is not type(loaded):
        return (
            f"{path} is {type(original).__name__} but JSON gives back {type(loaded).__name__}; "
            "store plain int/float/str/bool/None, lists and str-keyed dicts"
        )
    if isinstance(original, dict):
        if list(original) != list(loaded):
            return f"{path} has non-string keys {[k for k in original if not isinstance(k, str)]}"
        for key in original:
            problem = _json_difference(original[key], loaded[key], f"{path}[{key!r}]")
            if problem:
                return problem
    elif isinstance(original, list):
        for index, (a, b) in enumerate(zip(original, loaded)):
            problem = _json_difference(a, b, f"{path}[{index}]")
            if problem:
                return problem
    elif isinstance(original, float):
        if not (original == loaded or (math.isnan(original) and math.isnan(loaded))):
            return f"{path} = {original!r} comes back as {loaded!r}"
    return None


def without_empty_arrays(tree):
    """(`tree` with its zero-size arrays replaced by None, {name: {"shape", "dtype"}} of those arrays).

    orbax refuses to save zero-size arrays (an env without a vector part gives
    the replay a zero-width vector array), so their shape and dtype go into the
    JSON meta instead and `with_empty_arrays` rebuilds them.
    """
    empty = {}

    def drop(path, leaf):
        if math.prod(leaf.shape) > 0:
            return leaf
        empty[path_name(path)] = {"shape": list(leaf.shape), "dtype": np.dtype(leaf.dtype).name}
        return None

    return jax.tree_util.tree_map_with_path(drop, tree), empty


def empty_arrays(recorded: dict) -> dict[str, np.ndarray]:
    """The zero-size arrays `without_empty_arrays` recorded, by name."""
    return {name: np.zeros(spec["shape"], np.dtype(spec["dtype"])) for name, spec in recorded.items()}


def with_empty_arrays(restored, abstract):
    """`restored` with its None leaves replaced by zero-size arrays shaped, typed and placed like `abstract`'s."""
    targets, structure = jax.tree.flatten(abstract)
    # Up to the abstract's structure: a None there is a dropped array; a None node of the state (a policy
    # average it does not keep) is part of the structure itself.
    leaves = structure.flatten_up_to(restored)
    filled = [
        jax.device_put(np.zeros(target.shape, target.dtype), target.sharding) if leaf is None else leaf
        for leaf, target in zip(leaves, targets, strict=True)
    ]
    return structure.unflatten(filled)


def path_name(path: tuple) -> str:
    """A key path as dotted names, the same for a typed tree and orbax's dict/list metadata tree."""
    parts = []
    for key in path:
        for attribute in ("key", "name", "idx"):
            if hasattr(key, attribute):
                parts.append(str(getattr(key, attribute)))
                break
        else:
            parts.append(str(key))
    return ".".join(parts)


def leaves_by_name(tree) -> dict[str, Any]:
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {path_name(path): leaf for path, leaf in leaves}


def first_mismatch(stored: dict[str, Any], wanted: dict[str, Any]) -> str | None:
    """The first difference in leaf names, shapes or dtypes between checkpoint metadata and a target, by name."""
    missing = [name for name in wanted if name not in stored]
    if missing:
        return f"{len(missing)} arrays the config needs are not in the checkpoint (first: {missing[0]})"
    extra = [name for name in stored if name not in wanted]
    if extra:
        return f"{len(extra)} arrays in the checkpoint are not in the config (first: {extra[0]})"
    describe = lambda leaf: f"{tuple(leaf.shape)} {np.dtype(leaf.dtype)}"  # noqa: E731
    differing = [name for name in wanted if describe(stored[name]) != describe(wanted[name])]
    if not differing:
        return None
    first = differing[0]
    more = f" (and {len(differing) - 1} more arrays)" if len(differing) > 1 else ""
    return (
        f"{first} is {describe(stored[first])} in the checkpoint vs {describe(wanted[first])} in the config{more}"
    )
