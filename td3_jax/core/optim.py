"""One optax chain per network: measure, clip the whole network, Adam per group.

    snapshot("grad_norm_before_clip")    global L2 norms of the raw gradient
    clip_by_global_norm(max_norm)        ONE norm over the whole network (cnn + mlp)
    snapshot("grad_norm_after_clip")     norms of the clipped gradient Adam receives
    partition({"cnn": ..., "mlp": ...})  each group: L2 decay + Adam at its own lr

The clip sits outside the partition on purpose: inside it, each group would be
clipped by its own norm (optax masks the other leaves away). The snapshots
record what the chain actually passed on, so the logged "after clip" norm is
the norm of the gradient actually applied, never a re-derivation. Weight decay
is torch Adam's coupled L2 (added to the gradient before Adam), as in the
original. Learning rates live in the optimizer state (`inject_hyperparams`), so
they are checkpointed, can be read back with `learning_rates` / `hyperparams`, and
are set anew on resume with `with_hyperparams`.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax

from td3_jax.core.hparams import OptimizerConfig

GROUPS = ("cnn", "mlp")
BEFORE_CLIP = "grad_norm_before_clip"
AFTER_CLIP = "grad_norm_after_clip"
_PARTITION_INDEX = 3  # position of the partition in the chain below


def group_norms(tree, labels) -> dict[str, jax.Array]:
    """Global L2 norm of `tree` in total and per label group.

    >>> import jax.numpy as jnp
    >>> norms = group_norms({"a": jnp.array([3.0]), "b": jnp.array([4.0])}, {"a": "cnn", "b": "mlp"})
    >>> [round(float(norms[k]), 3) for k in ("total", "cnn", "mlp")]
    [5.0, 3.0, 4.0]
    """
    leaves = jax.tree.leaves(tree)
    label_leaves = jax.tree.leaves(labels)
    squares = {group: jnp.zeros((), jnp.float32) for group in GROUPS}
    for leaf, label in zip(leaves, label_leaves, strict=True):
        if label not in squares:
            raise ValueError(f"parameter label {label!r} has no optimizer group; expected one of {GROUPS}")
        squares[label] = squares[label] + jnp.sum(jnp.square(leaf.astype(jnp.float32)))
    norms = {group: jnp.sqrt(value) for group, value in squares.items()}
    norms["total"] = jnp.sqrt(sum(squares.values()))
    return norms


def _adam_with_l2(learning_rate: float, weight_decay: float, eps: float) -> optax.GradientTransformation:
    return optax.chain(
        optax.add_decayed_weights(weight_decay),
        optax.scale_by_adam(eps=eps),
        optax.scale_by_learning_rate(learning_rate),
    )


def make_optimizer(config: OptimizerConfig, labels: Callable | dict) -> optax.GradientTransformation:
    """The network's chain: snapshot, global clip, snapshot, per-group Adam.

    Args:
      config: max_grad_norm, cnn_lr, mlp_lr, weight_decay.
      labels: a label pytree (or a function of params returning one) mapping
        each parameter to "cnn" or "mlp"; see `networks.param_labels`.
    """

    def measure(tree):
        tree_labels = labels(tree) if callable(labels) else labels
        return group_norms(tree, tree_labels)

    group = optax.inject_hyperparams(_adam_with_l2)
    return optax.chain(
        optax.snapshot(BEFORE_CLIP, measure),
        optax.clip_by_global_norm(config.max_grad_norm),
        optax.snapshot(AFTER_CLIP, measure),
        optax.partition(
            {
                "cnn": group(learning_rate=config.cnn_lr, weight_decay=config.weight_decay, eps=config.adam_eps),
                "mlp": group(learning_rate=config.mlp_lr, weight_decay=config.weight_decay, eps=config.adam_eps),
            },
            labels,
        ),
    )


def clip_norms(opt_state) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
    """(before, after) norm dicts recorded by the last `update` of the chain."""
    return optax.tree.get(opt_state, BEFORE_CLIP), optax.tree.get(opt_state, AFTER_CLIP)


def learning_rates(opt_state) -> dict[str, jax.Array]:
    """The learning rate each group's Adam applies, read from the optimizer state."""
    return {group: values["learning_rate"] for group, values in hyperparams(opt_state).items()}


def with_hyperparams(opt_state, config: OptimizerConfig):
    """`opt_state` with every group's injected hyperparameters set from `config`.

    Learning rates, weight decay and Adam's eps live in the optimizer state, so
    a restored state keeps the values it was saved with; a resumed run that
    changes them calls this. Adam's moments and counts are kept; each new value
    takes the dtype and placement (sharding) of the one it replaces.
    """
    values = {
        "cnn": {"learning_rate": config.cnn_lr, "weight_decay": config.weight_decay, "eps": config.adam_eps},
        "mlp": {"learning_rate": config.mlp_lr, "weight_decay": config.weight_decay, "eps": config.adam_eps},
    }
    partition = opt_state[_PARTITION_INDEX]
    inner_states = dict(partition.inner_states)
    for group in GROUPS:
        masked = inner_states[group]
        hyperparams = dict(masked.inner_state.hyperparams)
        for name, value in values[group].items():
            old = hyperparams[name]
            hyperparams[name] = jax.device_put(jnp.asarray(value, old.dtype), old.sharding)
        inner_states[group] = masked._replace(inner_state=masked.inner_state._replace(hyperparams=hyperparams))
    chain = list(opt_state)
    chain[_PARTITION_INDEX] = partition._replace(inner_states=inner_states)
    return type(opt_state)(chain)


def hyperparams(opt_state) -> dict[str, dict[str, jax.Array]]:
    """Every group's injected hyperparameters (learning_rate, weight_decay, eps), read from the optimizer state."""
    inner = opt_state[_PARTITION_INDEX].inner_states
    return {group: dict(inner[group].inner_state.hyperparams) for group in GROUPS}
