"""Candidate causes of an unhealthy TD3 run, each weighed likely / possible / unlikely.

Pure functions over the signals of `td3_jax.diagnose.signals` and the rows of
the criteria table; `td3_jax.diagnose.report` calls `find_causes`.
"""

from __future__ import annotations

import math

import numpy as np

from td3_jax.diagnose.signals import (
    ACTION_MEAN_TAGS,
    Cause,
    Criteria,
    Likelihood,
    Row,
    Series,
    early_level,
    fmt,
    growth_orders,
)


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
