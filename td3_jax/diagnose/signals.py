"""Signals of a TD3 run and the thresholds `td3-jax diagnose` judges them by.

Tag names of td3_jax, of the original PyTorch system, of Stable-Baselines3 and
of CleanRL map to one set of signal names (`SIGNALS`); the small numeric
helpers here are shared by the criteria table (`td3_jax.diagnose.report`) and
the cause analysis (`td3_jax.diagnose.causes`). Pure functions, no I/O.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from typing import Literal, NamedTuple

import numpy as np

Likelihood = Literal["likely", "possible", "unlikely"]

DEFAULT_MAX_NORMS = {"actor": 1.0, "critic": 10.0}
"""The original system's hard-coded clip thresholds, used when a run states none."""


class Series(NamedTuple):
    """One scalar tag: steps (N,) int64 ascending and values (N,) float64."""

    steps: np.ndarray
    values: np.ndarray


SIGNALS: dict[str, tuple[str, ...]] = {
    "actor_loss": ("train/actor_loss", "losses/actor_loss"),
    "critic_loss": ("train/critic_loss", "losses/qf_loss"),
    "replay_q": ("train/q1_value", "losses/qf1_values"),
    "replay_q2": ("train/q2_value", "losses/qf2_values"),
    "policy_q": ("debug/actor_q_mean",),
    "actor_grad_before": ("debug/actor_grad_norm_BEFORE_clip",),
    "actor_grad_after": ("debug/actor_grad_norm_AFTER_clip",),
    "critic_grad_before": ("debug/critic_grad_norm_BEFORE_clip",),
    "critic_grad_after": ("debug/critic_grad_norm_AFTER_clip",),
    "actor_cnn_grad_after": ("debug/actor_cnn_grad_norm_AFTER_clip", "gradients/actor_cnn_norm"),
    "actor_mlp_grad_after": ("debug/actor_mlp_grad_norm_AFTER_clip", "gradients/actor_mlp_norm"),
    "critic_cnn_grad_after": ("debug/critic_cnn_grad_norm_AFTER_clip", "gradients/critic_cnn_norm"),
    "critic_mlp_grad_after": ("debug/critic_mlp_grad_norm_AFTER_clip", "gradients/critic_mlp_norm"),
    "actor_max_norm": ("agent/actor_max_grad_norm",),
    "critic_max_norm": ("agent/critic_max_grad_norm",),
    "action_saturation": ("debug/action_saturation",),
    "all_finite": ("debug/all_finite",),
    "episode_length": ("train/episode_length", "rollout/ep_len_mean", "charts/episodic_length"),
}
"""Signal name -> tags that carry it, first found wins (td3_jax/original, then SB3/CleanRL)."""

LR_TAG = re.compile(r"^(agent/\w*_lr|train/learning_rate)$")
ACTION_MEAN_TAGS = ("debug/action_steering_mean", "debug/action_throttle_mean")
"""The original's rolling mean of each action component; |mean| near 1 means saturation."""


@dataclasses.dataclass(frozen=True)
class Criteria:
    """Thresholds of the success table and of the cause analysis; a criteria YAML overrides them."""

    max_abs_actor_loss: float = 1e3
    """|actor loss| must stay below this (seed table: < 1,000)."""
    max_abs_q: float = 1e3
    """|Q| on replay actions and at the policy action must stay below this (seed table: < 1,000)."""
    max_policy_replay_q_ratio: float = 10.0
    """Bound on |policy-Q - replay-Q| in units of replay-Q (`td3_jax.training.guard.policy_replay_q_ratio`)."""
    q_scale_floor: float = 1.0
    """Smallest unit of that ratio (reward units)."""
    onset_fraction: float = 0.5
    """Divergence begins where the ratio rises above this fraction of its bound and stays there."""
    actor_max_norm: float | None = None
    """Actor clip threshold; None: from config.yaml, then agent/actor_max_grad_norm, then 1.0."""
    critic_max_norm: float | None = None
    """Critic clip threshold; None: from config.yaml, then agent/critic_max_grad_norm, then 10.0."""
    norm_tolerance: float = 1e-3
    """Relative slack on 'post-clip norm <= max_norm' for float32 rounding."""
    grad_growth_orders: float = 2.0
    """Pre-clip gradient norm growth (log10, late max over early median) named a likely cause."""
    min_episode_length: float = 5.0
    """Mean length of the latest episodes below this is flagged (seed table: 5-20 at 5K steps)."""
    saturation_fraction: float = 0.5
    """Action saturation (|a| > 0.99) above this fraction is a likely cause."""
    high_learning_rate: float = 1e-3
    """A learning rate at or above this is named a possible cause."""
    min_learning_points: int = 3
    """Fewer logged points of learning metrics than this give 'not enough data'."""


@dataclasses.dataclass(frozen=True)
class Row:
    """One line of the success-criteria table."""

    criterion: str
    target: str
    measured: str
    status: Literal["ok", "FAIL", "n/a", "low"]
    source: str
    """Tag(s) the value was measured from."""


@dataclasses.dataclass(frozen=True)
class Cause:
    """One candidate explanation, with the evidence for or against it."""

    key: str
    likelihood: Likelihood
    title: str
    evidence: str



def fmt(value: float) -> str:
    """Compact number: 4 significant digits, exponent beyond 1e5."""
    return f"{value:.4g}"


def resolve_signals(scalars: Mapping[str, Series]) -> tuple[dict[str, Series], dict[str, str | None]]:
    """Picks, for each signal in `SIGNALS`, the first tag present in `scalars`.

    Returns:
      (series by signal name for the signals found, tag by signal name with None for missing).
    """
    series, tags = {}, {}
    for name, candidates in SIGNALS.items():
        tag = next((tag for tag in candidates if tag in scalars and len(scalars[tag].steps)), None)
        tags[name] = tag
        if tag is not None:
            series[name] = scalars[tag]
    if "policy_q" not in series and "actor_loss" in series:
        # TD3's actor loss is -mean Q1(s, pi(s)), so it carries Q at the policy action.
        loss = series["actor_loss"]
        series["policy_q"] = Series(loss.steps, -loss.values)
        tags["policy_q"] = f"-{tags['actor_loss']}"
    return series, tags


def align(steps: np.ndarray, other: Series) -> np.ndarray:
    """Values of `other` at `steps`: the latest point at or before each step, else the first point."""
    index = np.searchsorted(other.steps, steps, side="right") - 1
    return other.values[np.clip(index, 0, len(other.steps) - 1)]


def sustained_onset(steps: np.ndarray, above: np.ndarray) -> int | None:
    """First step from which `above` stays True to the end; None when the last point is not above."""
    if not len(above) or not above[-1]:
        return None
    below = np.flatnonzero(~above)
    return int(steps[0] if not len(below) else steps[below[-1] + 1])


def early_level(values: np.ndarray) -> float:
    """Median |value| of the first quarter (at least one point) of the finite values; NaN if none."""
    values = np.abs(values[np.isfinite(values)])
    return float(np.median(values[: max(1, len(values) // 4)])) if len(values) else math.nan


def growth_orders(values: np.ndarray) -> float:
    """log10 of the series' max |value| over its `early_level`; 0 with fewer than 2 finite points."""
    values = np.abs(values[np.isfinite(values)])
    if len(values) < 2:
        return 0.0
    early = early_level(values)
    late = float(np.max(values))
    if early <= 0:
        return 0.0 if late <= 0 else math.inf
    return math.log10(late / early) if late > 0 else 0.0


def resolve_max_norms(
    criteria: Criteria, config_norms: Mapping[str, float] | None, series: Mapping[str, Series]
) -> dict[str, dict]:
    """Clip thresholds with their source: criteria file, config.yaml, agent/*_max_grad_norm tags, defaults."""
    out = {}
    for net in ("actor", "critic"):
        override = getattr(criteria, f"{net}_max_norm")
        if override is not None:
            out[net] = {"value": float(override), "source": "criteria file"}
        elif config_norms and config_norms.get(net) is not None:
            out[net] = {"value": float(config_norms[net]), "source": "config.yaml"}
        elif f"{net}_max_norm" in series:
            tag = SIGNALS[f"{net}_max_norm"][0]
            out[net] = {"value": float(series[f"{net}_max_norm"].values[-1]), "source": f"tag {tag}"}
        else:
            out[net] = {"value": DEFAULT_MAX_NORMS[net], "source": "default: the original's hard-coded value"}
    return out
