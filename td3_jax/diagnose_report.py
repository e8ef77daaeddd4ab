"""The analysis behind `td3-jax diagnose`: from scalar series to criteria, verdict and causes.

Pure functions of `{tag: Series}`; reading event files, YAML and plotting live
in `td3_jax.diagnose`. Tag names of td3_jax, of the original PyTorch system,
of Stable-Baselines3 and of CleanRL are mapped to one set of signals, so the
same checks run on any TD3 trainer's logs.

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
import re
import warnings
from collections.abc import Mapping
from typing import Literal, NamedTuple

import numpy as np

from td3_jax.guard import policy_replay_q_ratio

Verdict = Literal["healthy", "diverging", "exploded", "not enough data"]
Likelihood = Literal["likely", "possible", "unlikely"]

EXIT_HEALTHY = 0
EXIT_UNHEALTHY = 1

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
    """Bound on |policy-Q - replay-Q| / max(|replay-Q|, q_scale_floor)."""
    q_scale_floor: float = 1.0
    """Smallest |replay-Q| used as the unit of that ratio (reward units)."""
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
    missing = tuple(name for name, tag in tags.items() if tag is None)
    return Diagnosis(
        path, verdict, summary, divergence_step, rows, tuple(causes), tags, missing, max_norms,
        learning_rates, criteria,
    )


def _gap_row(series, tags, criteria: Criteria) -> tuple[Row, int | None, int | None]:
    bound = criteria.max_policy_replay_q_ratio
    target = f"|policy-Q - replay-Q| <= {fmt(bound)} x max(|replay-Q|, {fmt(criteria.q_scale_floor)})"
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


def find_causes(series, tags, scalars, rows, max_norms, learning_rates, criteria: Criteria, verdict) -> list[Cause]:
    """Candidate causes, each marked likely / possible / unlikely from the evidence in the run."""
    row = {r.criterion.split(" (")[0]: r for r in rows}
    causes = []
    if "policy_q" in series and "replay_q" in series:
        causes.append(_gap_cause(series, tags, row["Policy-Q vs replay-Q"]))
    for net in ("actor", "critic"):
        cause = _post_clip_cause(net, series, tags, max_norms[net], criteria)
        if cause is not None:
            causes.append(cause)
    for net in ("actor", "critic"):
        if f"{net}_grad_before" in series:
            causes.append(_growth_cause(net, series[f"{net}_grad_before"], tags[f"{net}_grad_before"], criteria))
    if learning_rates:
        causes.append(_lr_cause(learning_rates, criteria, verdict, row["Policy-Q vs replay-Q"].status == "FAIL"))
    saturation = _saturation_cause(series, tags, scalars, criteria)
    if saturation is not None:
        causes.append(saturation)
    finite = row["All values finite"]
    if finite.status == "FAIL":
        causes.append(Cause("non_finite", "likely", "NaN/Inf", f"non-finite values first in {finite.measured}"))
    else:
        causes.append(Cause("non_finite", "unlikely", "NaN/Inf", f"no NaN/Inf in {len(scalars)} tags"))
    order = {"likely": 0, "possible": 1, "unlikely": 2}
    return sorted(causes, key=lambda cause: order[cause.likelihood])


def _gap_cause(series, tags, gap_row: Row) -> Cause:
    title = "policy-Q far above replay-Q (the actor exploits the critic outside the data)"
    replay = series["replay_q"].values
    policy = series["policy_q"]
    replay_range = f"{fmt(np.nanmin(replay))} .. {fmt(np.nanmax(replay))}"
    if gap_row.status != "FAIL":
        return Cause("policy_replay_q_gap", "unlikely", title, f"ratio {gap_row.measured}; replay-Q {replay_range}")
    finite = np.isfinite(policy.values)
    if not finite.any():
        return Cause("policy_replay_q_gap", "possible", title, f"{tags['policy_q']} has no finite value; see NaN/Inf")
    peak = int(np.argmax(np.where(finite, np.abs(policy.values), -np.inf)))
    evidence = (
        f"Q at the policy action ({tags['policy_q']}) reached {fmt(policy.values[peak])} at step "
        f"{int(policy.steps[peak])} while Q on replay actions ({tags['replay_q']}) stayed within {replay_range}"
    )
    if "actor_mlp_grad_after" in series and "actor_cnn_grad_after" in series:
        mlp = float(np.nanmax(series["actor_mlp_grad_after"].values))
        cnn = float(np.nanmax(series["actor_cnn_grad_after"].values))
        if cnn > 0 and mlp <= 1e-3 * cnn:
            evidence += (
                f"; the actor MLP gets ~no gradient (max {fmt(mlp)}) while the actor CNN gets {fmt(cnn)}, "
                "so the CNN's gradient does not come through the action"
            )
    evidence += (
        ". Check what the actor loss feeds into the critic: the critic must see its own features of the "
        "state (under stop_gradient) and the actor may change Q only through the action; a lower "
        "learning rate or clipping only delays this"
    )
    return Cause("policy_replay_q_gap", "likely", title, evidence)


def _post_clip_cause(net, series, tags, max_norm: dict, criteria: Criteria) -> Cause | None:
    title = f"{net} 'post-clip' gradient norm above max_norm"
    limit = max_norm["value"] * (1 + criteria.norm_tolerance)
    bound = fmt(max_norm["value"])
    groups = [g for g in (f"{net}_cnn_grad_after", f"{net}_mlp_grad_after") if g in series]
    group_max = {g: float(np.nanmax(series[g].values)) for g in groups}
    over_groups = {g: v for g, v in group_max.items() if v > limit}
    key = f"post_clip_norm_{net}"
    if f"{net}_grad_after" in series:
        after = series[f"{net}_grad_after"].values
        tag = tags[f"{net}_grad_after"]
        if not np.isfinite(after).any():
            return Cause(key, "possible", title, f"{tag} has no finite value; see NaN/Inf")
        after = after[np.isfinite(after)]
        if after.max() > limit:
            return Cause(key, "likely", title, (
                f"{tag} reaches {fmt(np.nanmax(after))} > {bound}: clipping is not applied, or the logged value "
                "is not the global L2 norm of the gradient actually applied"
            ))
        if over_groups:
            listed = ", ".join(f"{tags[g]} max {fmt(v)}" for g, v in over_groups.items())
            return Cause(key, "likely", f"{net} sub-group 'after clip' norms above max_norm (metric artefact)", (
                f"{listed} exceed {bound} while the global {tag} stays <= {bound}: a part of the clipped gradient "
                "cannot be larger than the whole, so these values are not L2 norms of the applied gradient "
                "(e.g. sums of per-tensor norms); clipping itself works"
            ))
        clipped = float(np.mean(after >= max_norm["value"] * (1 - criteria.norm_tolerance)))
        return Cause(key, "unlikely", title, (
            f"clipping verified: {tag} max {fmt(np.nanmax(after))} <= {bound}, at the bound in {clipped:.0%} of points"
        ))
    if not groups:
        return None
    if not over_groups:
        listed = ", ".join(f"{tags[g]} max {fmt(v)}" for g, v in group_max.items())
        return Cause(key, "unlikely", title, f"{listed} <= {bound} (no global post-clip norm logged)")
    evidence = []
    for group, worst in over_groups.items():
        values = series[group].values
        low = float(np.nanmin(values[values > 0])) if (values > 0).any() else 0.0
        shape = (
            f"near-constant at {fmt(low / max_norm['value'])}-{fmt(worst / max_norm['value'])} x max_norm, the "
            "signature of clipping plus a sum of per-tensor norms"
            if low > 0 and worst / low < 1.5 and worst <= 3 * max_norm["value"]
            else f"spanning {fmt(low)} .. {fmt(worst)}, as if no clipping applied"
        )
        evidence.append(f"{tags[group]} {shape}")
    return Cause(key, "likely", title, (
        f"{'; '.join(evidence)}. A part of a gradient clipped to {bound} cannot exceed {bound}: the logged values "
        "are not global L2 norms of the applied gradient, or clipping is not applied. No global post-clip "
        "norm is logged to tell which"
    ))


def _growth_cause(net: str, before: Series, tag: str, criteria: Criteria) -> Cause:
    orders = growth_orders(before.values)
    evidence = (
        f"{tag} rose from a median of {fmt(early_level(before.values))} early to max "
        f"{fmt(np.nanmax(before.values))} ({orders:.1f} orders)"
    )
    if orders >= criteria.grad_growth_orders:
        likelihood: Likelihood = "likely"
        evidence += (
            "; clipping bounds each step, but Adam normalises step sizes, so a persistent direction still "
            "moves the weights at full speed: look for what keeps pushing the gradient up"
        )
    else:
        likelihood = "possible" if orders >= 1 else "unlikely"
    title = f"{net} pre-clip gradient norm growing by orders of magnitude"
    return Cause(f"grad_growth_{net}", likelihood, title, evidence)


def _lr_cause(learning_rates, criteria: Criteria, verdict, gap_failed: bool) -> Cause:
    title = "learning rates"
    high = {tag: last for tag, (_, last) in learning_rates.items() if last >= criteria.high_learning_rate}
    changed = {tag: (a, b) for tag, (a, b) in learning_rates.items() if math.isfinite(a + b) and a != b}
    listed = ", ".join(f"{tag.split('/')[-1]} {fmt(last)}" for tag, (_, last) in learning_rates.items())
    if verdict in ("healthy", "not enough data"):
        return Cause("learning_rates", "unlikely", title, listed)
    if high or changed:
        evidence = "; ".join(
            [f"{tag} = {fmt(v)} >= {fmt(criteria.high_learning_rate)}" for tag, v in high.items()]
            + [f"{tag} changed {fmt(a)} -> {fmt(b)} during the run" for tag, (a, b) in changed.items()]
        )
        if gap_failed:
            evidence += "; a higher rate speeds the divergence up but does not explain the policy-Q/replay-Q gap"
        return Cause("learning_rates", "possible", title, evidence)
    evidence = f"all below {fmt(criteria.high_learning_rate)} ({listed})"
    if gap_failed:
        evidence += "; lowering them would delay, not remove, a divergence driven by the policy-Q/replay-Q gap"
    return Cause("learning_rates", "unlikely", title, evidence)


def _saturation_cause(series, tags, scalars, criteria: Criteria) -> Cause | None:
    title = "actions saturated at +-1"
    consequence = (
        ": tanh is saturated, almost no gradient flows through the action, and the policy is stuck at a "
        "constant corner action"
    )
    if "action_saturation" in series:
        values = series["action_saturation"].values
        late = float(np.nanmean(values[-max(1, len(values) // 4):]))
        evidence = f"{tags['action_saturation']} latest mean {late:.0%}"
        if late > criteria.saturation_fraction:
            return Cause("action_saturation", "likely", title, evidence + consequence)
        return Cause("action_saturation", "unlikely", title, evidence)
    means = {tag: scalars[tag].values for tag in ACTION_MEAN_TAGS if tag in scalars and len(scalars[tag].values)}
    if not means:
        return None
    late = {tag: float(np.nanmean(v[-max(1, len(v) // 4):])) for tag, v in means.items()}
    evidence = ", ".join(f"{tag} latest {fmt(v)}" for tag, v in late.items())
    if any(abs(v) > 0.9 for v in late.values()):
        return Cause("action_saturation", "likely", title, evidence + consequence)
    return Cause("action_saturation", "unlikely", title, evidence)
