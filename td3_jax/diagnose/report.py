"""The analysis behind `td3-jax diagnose`: from scalar series to criteria table, verdict and causes.

Pure functions of `{tag: Series}`; reading event files, YAML and plotting live
in `td3_jax.diagnose.diagnose`, signal mapping in `td3_jax.diagnose.signals`, the cause
analysis in `td3_jax.diagnose.causes`.

Verdicts:
  exploded: a bound of the seed's success table is crossed (|actor loss|,
    |Q| on replay actions or at the policy action) or a value is not finite.
  diverging: no bound is crossed yet, but Q at the policy action sits more
    than `max_policy_replay_q_ratio` replay-Q units from Q on replay actions,
    or a post-clip gradient norm exceeds its max_norm.
  not enough data: fewer than `min_learning_points` points of learning metrics.
  healthy: none of the above.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Mapping
from typing import Literal

import numpy as np

from td3_jax.diagnose.causes import find_causes
from td3_jax.diagnose.signals import (
    LR_TAG,
    SIGNALS,
    Cause,
    Criteria,
    Row,
    Series,
    align,
    fmt,
    resolve_max_norms,
    resolve_signals,
    sustained_onset,
)
from td3_jax.training.guard import REPLAY_Q_SCALE_SHARE, policy_replay_q_ratio

Verdict = Literal["healthy", "diverging", "exploded", "not enough data"]

EXIT_HEALTHY = 0
EXIT_UNHEALTHY = 1


@dataclasses.dataclass(frozen=True)
class Diagnosis:
    """Everything `td3-jax diagnose` prints; `to_dict` is the --json form."""

    path: str
    verdict: Verdict
    summary: str
    divergence_step: int | None
    """First step of the sustained divergence (None when healthy or unknown)."""
    rows: tuple[Row, ...]
    causes: tuple[Cause, ...]
    signals: dict[str, str | None]
    """Signal name -> tag used (None: missing)."""
    missing: tuple[str, ...]
    max_norms: dict[str, dict]
    learning_rates: dict[str, list[float]]
    """Learning-rate tag -> [first, last] value."""
    criteria: Criteria

    @property
    def exit_code(self) -> int:
        return EXIT_HEALTHY if self.verdict == "healthy" else EXIT_UNHEALTHY

    def to_dict(self) -> dict:
        """JSON-able form; non-finite floats become strings ('nan', 'inf')."""
        out = {
            "path": self.path,
            "verdict": self.verdict,
            "exit_code": self.exit_code,
            "summary": self.summary,
            "divergence_step": self.divergence_step,
            "criteria_table": [dataclasses.asdict(row) for row in self.rows],
            "causes": [dataclasses.asdict(cause) for cause in self.causes],
            "signals": self.signals,
            "missing_signals": list(self.missing),
            "max_norms": self.max_norms,
            "learning_rates": self.learning_rates,
            "thresholds": dataclasses.asdict(self.criteria),
        }
        return _json_safe(out)


def _json_safe(value):
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _non_finite(scalars: Mapping[str, Series]) -> tuple[int | None, list[str]]:
    first_step, tags = None, []
    for tag, (steps, values) in sorted(scalars.items()):
        bad = ~np.isfinite(values)
        if tag == SIGNALS["all_finite"][0]:
            bad |= values < 1.0
        if bad.any():
            step = int(steps[np.argmax(bad)])
            tags.append(f"{tag} (step {step})")
            first_step = step if first_step is None else min(first_step, step)
    return first_step, tags


def _bound_row(criterion: str, bound: float, found: list[tuple[str, Series]]) -> tuple[Row, int | None]:
    target = f"|value| < {fmt(bound)}"
    if not found:
        return Row(criterion, target, "missing", "n/a", "-"), None
    values = np.concatenate([series.values for _, series in found])
    steps = np.concatenate([series.steps for _, series in found])
    finite = np.isfinite(values)
    measured = "no finite value"
    if finite.any():
        measured = f"{fmt(values[finite].min())} .. {fmt(values[finite].max())}"
    over = ~(np.abs(values) < bound)
    crossed = int(steps[over].min()) if over.any() else None
    if crossed is not None:
        measured += f" (first beyond at step {crossed})"
    source = ", ".join(tag for tag, _ in found)
    return Row(criterion, target, measured, "FAIL" if over.any() else "ok", source), crossed


def _norm_row(net: str, max_norm: dict, series: Mapping[str, Series], tags, criteria) -> Row:
    limit = max_norm["value"] * (1 + criteria.norm_tolerance)
    target = f"<= max_norm {fmt(max_norm['value'])}"
    name = f"{net.capitalize()} post-clip grad norm"
    if f"{net}_grad_after" in series:
        values = series[f"{net}_grad_after"].values
        status = "ok" if np.nanmax(values) <= limit else "FAIL"
        return Row(name, target, f"max {fmt(np.nanmax(values))}", status, tags[f"{net}_grad_after"])
    groups = [f"{net}_{group}_grad_after" for group in ("cnn", "mlp") if f"{net}_{group}_grad_after" in series]
    if not groups:
        return Row(name, target, "missing", "n/a", "-")
    worst = max(float(np.nanmax(series[group].values)) for group in groups)
    status = "ok" if worst <= limit else "FAIL"
    measured = f"max {fmt(worst)} over CNN/MLP groups (no global norm logged)"
    return Row(name, target, measured, status, ", ".join(tags[group] for group in groups))


def _episode_row(series: Mapping[str, Series], tags, criteria: Criteria) -> Row:
    target = f"mean of latest >= {fmt(criteria.min_episode_length)} (seed: 5-20 at 5K)"
    if "episode_length" not in series:
        return Row("Episode length", target, "missing", "n/a", "-")
    values = series["episode_length"].values
    latest = values[-max(1, len(values) // 10):]
    measured = f"latest {len(latest)}: {fmt(np.mean(latest))}, all {len(values)}: {fmt(np.mean(values))}"
    status = "ok" if np.mean(latest) >= criteria.min_episode_length else "low"
    return Row("Episode length", target, measured, status, tags["episode_length"])


def diagnose_scalars(
    scalars: Mapping[str, Series],
    criteria: Criteria = Criteria(),
    config_norms: Mapping[str, float] | None = None,
    path: str = "",
) -> Diagnosis:
    """Builds the diagnosis of one run.

    Args:
      scalars: every scalar tag of the run.
      criteria: thresholds.
      config_norms: {"actor": float, "critic": float} clip thresholds from the
        run's config.yaml, or None.
      path: what was read, for the report.

    Returns:
      The diagnosis; `exit_code` is 0 only for a healthy verdict.
    """
    with warnings.catch_warnings():
        # nanmax and friends warn on all-NaN series; those already fail the finite row.
        warnings.simplefilter("ignore", RuntimeWarning)
        return _diagnose(scalars, criteria, config_norms, path)


def _diagnose(scalars, criteria: Criteria, config_norms, path: str) -> Diagnosis:
    series, tags = resolve_signals(scalars)
    max_norms = resolve_max_norms(criteria, config_norms, series)
    learning_rates = {
        tag: [float(s.values[0]), float(s.values[-1])] for tag, s in sorted(scalars.items()) if LR_TAG.match(tag)
    }
    replay = [(tags[name], series[name]) for name in ("replay_q", "replay_q2") if name in series]
    policy = [(tags["policy_q"], series["policy_q"])] if "policy_q" in series else []
    actor = [(tags["actor_loss"], series["actor_loss"])] if "actor_loss" in series else []
    actor_row, actor_crossed = _bound_row("Actor loss bounded", criteria.max_abs_actor_loss, actor)
    replay_row, replay_crossed = _bound_row("Q on replay actions bounded", criteria.max_abs_q, replay)
    policy_row, policy_crossed = _bound_row("Q at policy action bounded", criteria.max_abs_q, policy)

    gap_row, gap_onset, gap_crossed = _gap_row(series, tags, criteria)
    non_finite_step, non_finite_tags = _non_finite(scalars)
    finite_row = Row(
        "All values finite", "no NaN/Inf", "; ".join(non_finite_tags) or "all finite",
        "FAIL" if non_finite_tags else "ok", "all tags",
    )
    rows = (
        actor_row, replay_row, policy_row, gap_row,
        _norm_row("actor", max_norms["actor"], series, tags, criteria),
        _norm_row("critic", max_norms["critic"], series, tags, criteria),
        finite_row, _episode_row(series, tags, criteria),
    )
    learning_points = max((len(series[name].steps) for name in ("actor_loss", "replay_q") if name in series), default=0)
    crossed = [step for step in (actor_crossed, replay_crossed, policy_crossed, non_finite_step) if step is not None]
    starts = [step for step in (*crossed, gap_onset, gap_crossed) if step is not None]
    divergence_step = min(starts) if starts else None
    if crossed:
        verdict: Verdict = "exploded"
    elif learning_points < criteria.min_learning_points:
        verdict, divergence_step = "not enough data", None
    elif any(row.status == "FAIL" for row in rows):
        verdict = "diverging"
    else:
        verdict, divergence_step = "healthy", None
    first_learning = min(
        (int(series[name].steps[0]) for name in ("actor_loss", "replay_q", "policy_q") if name in series), default=None
    )
    failed = [row.criterion.split(" (")[0] for row in rows if row.status == "FAIL"]
    summary = _summary(verdict, divergence_step, first_learning, learning_points, crossed, failed)
    causes = find_causes(series, tags, scalars, rows, max_norms, learning_rates, criteria, verdict)
    warnings = [cause.title for cause in causes if cause.likelihood == "likely"]
    if verdict == "healthy" and warnings:  # the bounds hold, but the policy may still be degenerate
        summary += "; but see the likely causes: " + "; ".join(warnings)
    missing = tuple(name for name, tag in tags.items() if tag is None)
    return Diagnosis(
        path, verdict, summary, divergence_step, rows, tuple(causes), tags, missing, max_norms,
        learning_rates, criteria,
    )


def _gap_row(series, tags, criteria: Criteria) -> tuple[Row, int | None, int | None]:
    bound = criteria.max_policy_replay_q_ratio
    target = (f"|policy-Q - replay-Q| <= {fmt(bound)} x max(|replay-Q|, {fmt(REPLAY_Q_SCALE_SHARE)} x its largest so far, "
              f"{fmt(criteria.q_scale_floor)})")
    name = "Policy-Q vs replay-Q (not in the seed table)"
    if "policy_q" not in series or "replay_q" not in series:
        return Row(name, target, "missing", "n/a", "-"), None, None
    policy = series["policy_q"]
    replay_q = align(policy.steps, series["replay_q"])
    ratio = np.asarray(policy_replay_q_ratio(policy.values, replay_q, criteria.q_scale_floor))
    finite = np.isfinite(ratio)
    over = ~(ratio <= bound)
    crossed = int(policy.steps[over].min()) if over.any() else None
    onset = sustained_onset(policy.steps, ~(ratio <= bound * criteria.onset_fraction)) if over.any() else None
    if not finite.any():
        return Row(name, target, "no finite value", "FAIL", f"{tags['policy_q']} vs {tags['replay_q']}"), onset, crossed
    worst = int(np.argmax(np.where(finite, ratio, -np.inf)))
    measured = (
        f"max {fmt(ratio[worst])} at step {int(policy.steps[worst])} "
        f"(policy-Q {fmt(policy.values[worst])}, replay-Q {fmt(replay_q[worst])})"
    )
    status = "FAIL" if over.any() else "ok"
    return Row(name, target, measured, status, f"{tags['policy_q']} vs {tags['replay_q']}"), onset, crossed


def _summary(verdict, divergence_step, first_learning, learning_points, crossed, failed) -> str:
    if verdict == "not enough data":
        return f"{learning_points} logged point(s) of learning metrics: too few to judge"
    if verdict == "healthy":
        return "all bounds hold and Q at the policy action tracks Q on replay actions"
    if crossed:
        text = "a bound of the success table is crossed"
    else:
        text = f"no bound crossed yet, but {', '.join(failed)} fail(s)"
    if divergence_step is not None:
        text += f"; divergence began at step {divergence_step}"
        if divergence_step == first_learning:
            text += " (the first logged learning step: it began at or before it)"
    return text
