"""The in-training divergence guard: bounds, non-finite values, policy/replay-Q gap, stop logic."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from td3_jax.training.guard import (
    ACTOR_LOSS_BOUND_TAG,
    ALERT_TAGS,
    NON_FINITE_TAG,
    Q_BOUND_TAG,
    Q_GAP_TAG,
    Q_TAGS,
    DivergenceGuard,
    GuardConfig,
    alert_scalars,
    policy_replay_q_ratio,
)

REFERENCE_RUNS = Path(__file__).resolve().parents[2] / "shared" / "data" / "reference_runs"


def healthy_metrics(q=20.0):
    return {
        "train/critic_loss": 1.5,
        "train/q1_value": q,
        "train/q2_value": q - 0.5,
        "debug/q1_max": 2 * q,
        "train/actor_loss": -1.1 * q,
        "debug/actor_q_mean": 1.1 * q,
        "debug/all_finite": 1.0,
    }


def test_healthy_metrics_raise_nothing_and_advance_last_good_step():
    guard = DivergenceGuard(GuardConfig(mode="stop"))
    for step in (100, 200, 300):
        assert guard.check(step, healthy_metrics()) == []
    assert guard.last_good_step == 300 and not guard.should_stop and guard.checks == 3


def test_off_mode_checks_nothing():
    guard = DivergenceGuard(GuardConfig(mode="off"))
    assert guard.check(1, {"train/q1_value": math.nan}) == []
    assert guard.checks == 0 and not guard.should_stop


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_is_critical_and_stops_at_once_despite_patience(bad):
    guard = DivergenceGuard(GuardConfig(mode="stop", patience=5))
    guard.check(100, healthy_metrics())
    alerts = guard.check(200, {**healthy_metrics(), "train/critic_loss": bad})
    assert [a.tag for a in alerts] == [NON_FINITE_TAG] and alerts[0].severity == "critical"
    assert "train/critic_loss" in alerts[0].message
    assert guard.should_stop
    assert "step 200" in guard.stop_message and "last good step: 100" in guard.stop_message
    assert "\n" not in guard.stop_message


def test_nan_actor_placeholders_of_a_critic_only_update_are_ignored():
    placeholders = {"train/actor_loss": math.nan, "debug/actor_q_mean": math.nan,
                    "debug/actor_grad_norm_BEFORE_clip": math.nan, "debug/action_saturation": math.nan,
                    "agent/actor_update_norm": math.nan}
    metrics = {**healthy_metrics(), **placeholders, "debug/actor_updated": 0.0}
    assert DivergenceGuard(GuardConfig()).check(1, metrics) == []
    alerts = DivergenceGuard(GuardConfig()).check(1, {**metrics, "debug/actor_updated": 1.0})
    assert alerts[0].tag == NON_FINITE_TAG


def test_all_finite_flag_zero_is_non_finite():
    alerts = DivergenceGuard(GuardConfig()).check(5, {**healthy_metrics(), "debug/all_finite": 0.0})
    assert alerts[0].tag == NON_FINITE_TAG


@pytest.mark.parametrize("tag", Q_TAGS)
def test_every_q_metric_is_bounded(tag):
    config = GuardConfig(max_abs_q=100.0, max_policy_replay_q_ratio=1e12)
    alerts = DivergenceGuard(config).check(7, {**healthy_metrics(q=1.0), tag: -150.0})
    assert any(a.tag == Q_BOUND_TAG and a.severity == "critical" and tag in a.message for a in alerts)


@pytest.mark.parametrize("tag", ["debug/q2_max", "debug/q2_min"])
def test_q2_extremes_alone_leaving_the_bound_alert(tag):
    """Q2 can diverge while Q1 stays small (the min-target hides it from the TD target)."""
    config = GuardConfig(max_abs_q=100.0, max_policy_replay_q_ratio=1e12)
    alerts = DivergenceGuard(config).check(7, {**healthy_metrics(q=1.0), tag: 150.0})
    assert [(a.tag, a.severity) for a in alerts] == [(Q_BOUND_TAG, "critical")] and tag in alerts[0].message


def test_actor_loss_bound_and_warning_before_it():
    config = GuardConfig(max_abs_actor_loss=100.0, warn_fraction=0.5, max_policy_replay_q_ratio=1e12)
    warn = DivergenceGuard(config).check(1, {"train/actor_loss": -60.0})
    crit = DivergenceGuard(config).check(1, {"train/actor_loss": -160.0})
    assert [(a.tag, a.severity) for a in warn] == [(ACTOR_LOSS_BOUND_TAG, "warning")]
    assert [(a.tag, a.severity) for a in crit] == [(ACTOR_LOSS_BOUND_TAG, "critical")]


def test_gap_uses_actor_q_mean_else_minus_actor_loss():
    config = GuardConfig(max_policy_replay_q_ratio=10.0)
    with_q = DivergenceGuard(config).check(3, {"train/q1_value": 20.0, "debug/actor_q_mean": 400.0})
    derived = DivergenceGuard(config).check(3, {"train/q1_value": 20.0, "train/actor_loss": -400.0})
    for alerts, source in ((with_q, "debug/actor_q_mean"), (derived, "-train/actor_loss")):
        gap = [a for a in alerts if a.tag == Q_GAP_TAG]
        assert gap and gap[0].severity == "critical" and source in gap[0].message


def test_critical_alerts_come_before_warnings():
    config = GuardConfig(max_abs_q=100.0, max_policy_replay_q_ratio=10.0)
    # |Q| = 60 nears the bound (checked first); the policy/replay ratio of 59 is past its bound.
    alerts = DivergenceGuard(config).check(3, {"train/q1_value": 1.0, "debug/actor_q_mean": 60.0})
    assert [(a.tag, a.severity) for a in alerts] == [(Q_GAP_TAG, "critical"), (Q_BOUND_TAG, "warning")]


def test_warn_mode_never_stops():
    guard = DivergenceGuard(GuardConfig(mode="warn"))
    for step in range(5):
        assert guard.check(step, {"train/q1_value": math.nan})
    assert not guard.should_stop and guard.stop_message == "" and guard.first_critical_step == 0


def test_patience_counts_consecutive_critical_checks():
    guard = DivergenceGuard(GuardConfig(mode="stop", patience=2, max_abs_q=10.0))
    bad = {"train/q1_value": 50.0, "debug/actor_q_mean": 50.0}
    guard.check(1, bad)
    guard.check(2, {"train/q1_value": 1.0})  # a good check resets the count
    guard.check(3, bad)
    assert not guard.should_stop
    guard.check(4, bad)
    assert guard.should_stop and guard.last_good_step == 2 and guard.first_critical_step == 1


def test_state_dict_is_json_and_round_trips():
    guard = DivergenceGuard(GuardConfig(mode="stop"))
    guard.check(10, healthy_metrics())
    guard.check(20, {"train/q1_value": 5e3})
    state = json.loads(json.dumps(guard.state_dict()))
    restored = DivergenceGuard(GuardConfig(mode="stop"))
    restored.load_state_dict(state)
    assert restored.state_dict() == guard.state_dict()
    with pytest.raises(ValueError):
        restored.load_state_dict({**state, "surprise": 1})


def test_alert_scalars_cover_every_tag_with_worst_level():
    alerts = DivergenceGuard(GuardConfig(max_abs_q=10.0)).check(1, {"train/q1_value": 20.0})
    values = alert_scalars(alerts)
    assert set(values) == set(ALERT_TAGS)
    assert values[Q_BOUND_TAG] == 1.0 and values[NON_FINITE_TAG] == 0.0


@pytest.mark.parametrize(
    "field, value", [("mode", "loud"), ("max_abs_q", 0.0), ("warn_fraction", 1.5), ("patience", 0)]
)
def test_config_rejects_bad_values(field, value):
    with pytest.raises(ValueError, match=field):
        GuardConfig(**{field: value})


finite = st.floats(-1e6, 1e6, allow_nan=False)


@given(policy=finite, replay=finite, scale=st.floats(1e-3, 1e3))
@settings(max_examples=200, deadline=None)
def test_ratio_is_scale_free_once_replay_q_exceeds_the_floor(policy, replay, scale):
    floor = 1.0
    if abs(replay) < floor or abs(replay * scale) < floor:
        return
    a = policy_replay_q_ratio(policy, replay, floor)
    b = policy_replay_q_ratio(policy * scale, replay * scale, floor)
    assert a == pytest.approx(b, rel=1e-9, abs=1e-12)


@given(policy=finite, replay=finite)
@example(policy=7.0, replay=1.0)  # ratio 6: the warning band, always tried
@settings(max_examples=200, deadline=None)
def test_guard_gap_alert_matches_the_ratio(policy, replay):
    config = GuardConfig(max_abs_q=1e12, max_abs_actor_loss=1e12)
    alerts = DivergenceGuard(config).check(1, {"train/q1_value": replay, "debug/actor_q_mean": policy})
    ratio = policy_replay_q_ratio(policy, replay, config.q_scale_floor)
    severities = [a.severity for a in alerts if a.tag == Q_GAP_TAG]
    if ratio > config.max_policy_replay_q_ratio:
        assert severities == ["critical"]
    elif ratio > config.warn_fraction * config.max_policy_replay_q_ratio:
        assert severities == ["warning"]
    else:
        assert severities == []


@given(series=st.lists(st.tuples(finite, finite), min_size=1, max_size=20))
@settings(max_examples=200, deadline=None)
def test_a_series_ratio_is_the_scalar_ratio_with_the_largest_replay_q_before_it(series):
    policy, replay = (np.array(column) for column in zip(*series))
    vector = policy_replay_q_ratio(policy, replay)
    scalar = [policy_replay_q_ratio(p, r, 1.0, np.abs(replay[:t]).max(initial=0.0)) for t, (p, r) in enumerate(series)]
    assert vector == pytest.approx(scalar, rel=1e-12, abs=0)


@given(series=st.lists(st.tuples(finite, finite), min_size=1, max_size=20))
@settings(max_examples=100, deadline=None)
def test_the_guard_s_gap_alerts_follow_the_series_ratio(series):
    """Checked one interval at a time, the guard alerts exactly where the series' ratio says."""
    config = GuardConfig(max_abs_q=1e12, max_abs_actor_loss=1e12)
    guard = DivergenceGuard(config)
    ratios = policy_replay_q_ratio(*(np.array(column) for column in zip(*series)), config.q_scale_floor)
    for step, ((policy, replay), ratio) in enumerate(zip(series, ratios)):
        severities = [a.severity for a in guard.check(step, {"train/q1_value": replay, "debug/actor_q_mean": policy})
                      if a.tag == Q_GAP_TAG]
        bound = config.max_policy_replay_q_ratio
        assert severities == (["critical"] if ratio > bound else ["warning"] if ratio > config.warn_fraction * bound else [])


def test_replay_q_crossing_zero_is_not_an_exploited_critic():
    """The shipped config's seed 9 at 9,250 env steps: replay-Q 1.1 on its way up from -140, policy-Q 37."""
    guard = DivergenceGuard(GuardConfig(max_abs_q=1e4))
    assert guard.check(1, {"train/q1_value": -140.0, "debug/actor_q_mean": -130.0}) == []
    assert guard.check(2, {"train/q1_value": 1.147, "debug/actor_q_mean": 37.16}) == []
    # The same interval with no history is judged against replay-Q's value alone: 31 units off.
    # With it the unit is a quarter of the 140 replay-Q has reached: 1.0 units off.
    fresh = DivergenceGuard(GuardConfig()).check(2, {"train/q1_value": 1.147, "debug/actor_q_mean": 37.16})
    assert [(a.tag, a.severity) for a in fresh] == [(Q_GAP_TAG, "critical")]
    # An actor running away from everything replay-Q has reached is still caught.
    alerts = guard.check(3, {"train/q1_value": 30.0, "debug/actor_q_mean": 30.0 + 11 * 35.0})
    assert [(a.tag, a.severity) for a in alerts] == [(Q_GAP_TAG, "critical")]


def test_the_largest_replay_q_survives_a_resume_and_old_checkpoints_start_from_zero():
    guard = DivergenceGuard(GuardConfig())
    guard.check(1, {"train/q1_value": -140.0, "debug/actor_q_mean": -130.0})
    resumed = DivergenceGuard(GuardConfig())
    resumed.load_state_dict(json.loads(json.dumps(guard.state_dict())))
    assert resumed.check(2, {"train/q1_value": 1.147, "debug/actor_q_mean": 37.16}) == []
    old = {k: v for k, v in guard.state_dict().items() if k != "largest_replay_q"}
    from_old = DivergenceGuard(GuardConfig())
    from_old.load_state_dict(old)
    assert from_old.largest_replay_q == 0.0


@pytest.mark.skipif(not REFERENCE_RUNS.is_dir(), reason="shared reference runs not present")
def test_guard_stops_the_original_diverging_run_at_the_first_gap_crossing():
    from td3_jax.diagnose.diagnose import read_scalars

    scalars = read_scalars(REFERENCE_RUNS / "day21-run2")
    guard = DivergenceGuard(GuardConfig(mode="stop"))
    crossings, replay_scale = [], 0.0
    for step in scalars["train/q1_value"].steps.tolist():
        metrics = {tag: float(s.values[s.steps == step][0]) for tag, s in scalars.items() if step in s.steps}
        replay_scale = max(replay_scale, abs(metrics["train/q1_value"]))  # the largest |replay-Q| so far
        unit = max(abs(metrics["train/q1_value"]), replay_scale / 4, 1.0)
        if abs(metrics["debug/actor_q_mean"] - metrics["train/q1_value"]) / unit > 10:
            crossings.append(step)
        if not guard.should_stop:
            guard.check(step, metrics)
    # |Q| and |actor loss| stay below 1e3 in this run: only the gap can stop it.
    assert guard.should_stop and guard.first_critical_step == crossings[0]
    assert "policy action" in guard.stop_message
