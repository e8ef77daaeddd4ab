"""In-training divergence guard: pure host-side checks of the logged update metrics.

The training loop hands `DivergenceGuard.check` the host-side aggregated update
metrics of every logging interval, keyed by td3_jax's TensorBoard tags
(`train/q1_value`, `debug/actor_q_mean`, `train/actor_loss`, ...). The guard
looks for the failure the original PyTorch system showed: Q at the policy's
action running orders of magnitude above Q on replay actions (the actor
exploiting the critic outside the data), values beyond fixed bounds, and
non-finite numbers. It does no I/O: the loop writes `alert_scalars(alerts)` to
TensorBoard, prints `Alert.message`, and in stop mode saves the last good
checkpoint, writes the diagnosis and exits with `DivergenceGuard.stop_message`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Literal

import numpy as np

Severity = Literal["warning", "critical"]

NON_FINITE_TAG = "alerts/non_finite"
Q_BOUND_TAG = "alerts/q_out_of_bounds"
ACTOR_LOSS_BOUND_TAG = "alerts/actor_loss_out_of_bounds"
Q_GAP_TAG = "alerts/policy_replay_q_gap"
ALERT_TAGS = (NON_FINITE_TAG, Q_BOUND_TAG, ACTOR_LOSS_BOUND_TAG, Q_GAP_TAG)
"""Every TensorBoard tag an `Alert` can carry."""

Q_TAGS = (
    "train/q1_value",
    "train/q2_value",
    "debug/q1_max",
    "debug/q1_min",
    "debug/q2_max",
    "debug/q2_min",
    "debug/target_q_mean",
    "debug/target_q_max",
    "debug/actor_q_mean",
    "debug/actor_q_max",
)
"""Metrics that are Q estimates and must stay within `GuardConfig.max_abs_q`."""

REPLAY_Q_TAG = "train/q1_value"
POLICY_Q_TAG = "debug/actor_q_mean"
ACTOR_LOSS_TAG = "train/actor_loss"
ALL_FINITE_TAG = "debug/all_finite"
ACTOR_UPDATED_TAG = "debug/actor_updated"
ACTOR_METRIC_PREFIXES = ("train/actor_", "debug/actor_", "debug/action_", "agent/actor_update")
"""Metrics of the actor step: NaN placeholders when `debug/actor_updated` is 0, so ignored then."""


REPLAY_Q_SCALE_SHARE = 0.25
"""The policy/replay ratio's unit never falls below this share of the largest |replay-Q| so far."""


def policy_replay_q_ratio(policy_q, replay_q, q_scale_floor: float = 1.0, largest_replay_q: float = 0.0):
    """How far Q at the policy's action sits from Q on replay actions, in units of replay-Q.

    ratio_t = |policy_q_t - replay_q_t| / unit_t, unit_t = max(|replay_q_t|, REPLAY_Q_SCALE_SHARE x
    the largest |replay_q| so far, q_scale_floor). A healthy TD3 run keeps it of order 1 (the policy's action is
    a little better than the logged one); the original system's runs reached 31 to 4e7 as the
    actor exploited the critic outside the data. A critic's replay-Q passes through zero on its way
    from the early crashes' negative returns to the positive ones of driving, and a gap of a few
    reward units there is no policy outside the data: the share of the largest |replay-Q| keeps the
    unit at the scale replay-Q has reached (healthy driving runs gave ratios of 10 to 31 at such a
    crossing without it, 0.5 to 6.6 with it; the original's runs give the same ratios either way).
    The floor keeps the ratio meaningful while Q is still near zero at the start of learning.

    Args:
      policy_q: float or float array, mean Q1 at the policy's action.
      replay_q: float or float array of the same shape, mean Q1 on replay actions; an array is a
        series in step order (NaN entries do not count towards the largest |replay_q|).
      q_scale_floor: smallest unit.
      largest_replay_q: the largest |replay_q| before this value or series (the guard's memory).

    Returns:
      float or float64 array of the broadcast shape; NaN where an input is NaN.
    """
    policy_q = np.asarray(policy_q, dtype=np.float64)
    replay_q = np.asarray(replay_q, dtype=np.float64)
    current = np.abs(replay_q)
    largest = np.fmax(np.fmax.accumulate(current, axis=-1) if current.ndim else current, largest_replay_q)
    unit = np.maximum(np.maximum(current, REPLAY_Q_SCALE_SHARE * largest), q_scale_floor)
    with np.errstate(invalid="ignore", over="ignore"):
        ratio = np.abs(policy_q - replay_q) / unit
    return float(ratio) if ratio.ndim == 0 else ratio


@dataclasses.dataclass(frozen=True)
class GuardConfig:
    """What the in-training guard checks and what it does about it."""

    mode: Literal["off", "warn", "stop"] = "warn"
    """off: no checks; warn: alerts are logged and printed; stop: a critical alert ends training."""
    max_abs_q: float = 1e3
    """Bound on |Q| for every Q metric in `Q_TAGS` (the seed's success criterion)."""
    max_abs_actor_loss: float = 1e3
    """Bound on |train/actor_loss| (the seed's success criterion)."""
    max_policy_replay_q_ratio: float = 10.0
    """Bound on `policy_replay_q_ratio`: policy-Q an order of magnitude beyond replay-Q's scale."""
    q_scale_floor: float = 1.0
    """Smallest unit of the policy/replay ratio (reward units; `policy_replay_q_ratio`)."""
    warn_fraction: float = 0.5
    """A value beyond this fraction of a bound gives a warning before it becomes critical."""
    patience: int = 1
    """Consecutive checks with a critical alert before stop mode stops (non-finite stops at once)."""

    def __post_init__(self):
        if self.mode not in ("off", "warn", "stop"):
            raise ValueError(f"guard mode must be off, warn or stop, got {self.mode!r}")
        for name in ("max_abs_q", "max_abs_actor_loss", "max_policy_replay_q_ratio", "q_scale_floor"):
            if not getattr(self, name) > 0:
                raise ValueError(f"guard {name} must be > 0, got {getattr(self, name)!r}")
        if not 0 < self.warn_fraction <= 1:
            raise ValueError(f"guard warn_fraction must be in (0, 1], got {self.warn_fraction!r}")
        if self.patience < 1:
            raise ValueError(f"guard patience must be >= 1, got {self.patience!r}")


@dataclasses.dataclass(frozen=True)
class Alert:
    """One finding of a guard check."""

    severity: Severity
    """warning: approaching a bound; critical: a bound is crossed or a value is not finite."""
    tag: str
    """TensorBoard tag of the alert, one of `ALERT_TAGS`."""
    message: str
    """One line for the console, naming the step, the metric and the bound."""


def alert_scalars(alerts: list[Alert]) -> dict[str, float]:
    """TensorBoard values of one check: every `ALERT_TAGS` entry, 0 none, 0.5 warning, 1 critical."""
    values = dict.fromkeys(ALERT_TAGS, 0.0)
    for alert in alerts:
        level = 1.0 if alert.severity == "critical" else 0.5
        values[alert.tag] = max(values[alert.tag], level)
    return values


class DivergenceGuard:
    """Checks update metrics once per logging interval and decides whether training must stop.

    Host-side and pure: `check` only reads the metrics it is given and updates
    counters; it never touches files, TensorBoard or the console.
    """

    def __init__(self, config: GuardConfig):
        self.config = config
        self.checks = 0
        """Number of `check` calls that ran (mode other than off)."""
        self.consecutive_critical = 0
        self.last_good_step: int | None = None
        """Step of the latest check without a critical alert (its checkpoint is the one to keep)."""
        self.first_critical_step: int | None = None
        self.should_stop = False
        """True once stop mode has decided that training must end."""
        self.stop_message = ""
        """One line explaining the stop, empty while `should_stop` is False."""
        self.largest_replay_q = 0.0
        """Largest |replay-Q| checked so far: the policy/replay ratio's memory (`policy_replay_q_ratio`)."""

    def check(self, step: int, metrics: Mapping[str, float]) -> list[Alert]:
        """Checks one logging interval's metrics.

        Args:
          step: env step the metrics belong to.
          metrics: host floats keyed by td3_jax TensorBoard tag; actor metrics
            may be absent when the actor did not update in the interval, or
            NaN placeholders when `debug/actor_updated` is 0.

        Returns:
          The alerts, critical ones first; empty when mode is off or all is well.
        """
        if self.config.mode == "off":
            return []
        self.checks += 1
        if metrics.get(ACTOR_UPDATED_TAG, 1.0) == 0.0:
            metrics = {tag: v for tag, v in metrics.items() if not tag.startswith(ACTOR_METRIC_PREFIXES)}
        alerts = self._non_finite(step, metrics)
        if not alerts:
            alerts = self._bounds(step, metrics) + self._gap(step, metrics)
        alerts.sort(key=lambda alert: alert.severity != "critical")
        critical = [alert for alert in alerts if alert.severity == "critical"]
        if not critical:
            self.consecutive_critical = 0
            self.last_good_step = step
            return alerts
        self.consecutive_critical += 1
        if self.first_critical_step is None:
            self.first_critical_step = step
        non_finite = critical[0].tag == NON_FINITE_TAG
        if self.config.mode == "stop" and not self.should_stop and (
            non_finite or self.consecutive_critical >= self.config.patience
        ):
            self.should_stop = True
            last_good = "none" if self.last_good_step is None else str(self.last_good_step)
            self.stop_message = (
                f"divergence guard stopped training at {critical[0].message} "
                f"(last good step: {last_good})"
            )
        return alerts

    def _non_finite(self, step: int, metrics: Mapping[str, float]) -> list[Alert]:
        bad = sorted(tag for tag, value in metrics.items() if not math.isfinite(float(value)))
        if metrics.get(ALL_FINITE_TAG, 1.0) < 1.0 and ALL_FINITE_TAG not in bad:
            bad.append(f"{ALL_FINITE_TAG}=0 (a gradient or parameter)")
        if not bad:
            return []
        return [Alert("critical", NON_FINITE_TAG, f"step {step}: non-finite values in {', '.join(bad)}")]

    def _bounds(self, step: int, metrics: Mapping[str, float]) -> list[Alert]:
        alerts = []
        q_values = {tag: float(metrics[tag]) for tag in Q_TAGS if tag in metrics}
        if q_values:
            tag, value = max(q_values.items(), key=lambda item: abs(item[1]))
            alerts += self._bound_alert(step, Q_BOUND_TAG, tag, value, self.config.max_abs_q)
        if ACTOR_LOSS_TAG in metrics:
            alerts += self._bound_alert(
                step, ACTOR_LOSS_BOUND_TAG, ACTOR_LOSS_TAG, float(metrics[ACTOR_LOSS_TAG]),
                self.config.max_abs_actor_loss,
            )
        return alerts

    def _bound_alert(self, step: int, alert_tag: str, tag: str, value: float, bound: float) -> list[Alert]:
        if abs(value) > bound:
            return [Alert("critical", alert_tag, f"step {step}: |{tag}| = {abs(value):.4g} > {bound:.4g}")]
        if abs(value) > self.config.warn_fraction * bound:
            return [Alert("warning", alert_tag, f"step {step}: |{tag}| = {abs(value):.4g} nears the bound {bound:.4g}")]
        return []

    def _gap(self, step: int, metrics: Mapping[str, float]) -> list[Alert]:
        if REPLAY_Q_TAG not in metrics:
            return []
        if POLICY_Q_TAG in metrics:
            policy_q, source = float(metrics[POLICY_Q_TAG]), POLICY_Q_TAG
        elif ACTOR_LOSS_TAG in metrics:
            # TD3's actor loss is -mean Q1(s, pi(s)).
            policy_q, source = -float(metrics[ACTOR_LOSS_TAG]), f"-{ACTOR_LOSS_TAG}"
        else:
            return []
        replay_q = float(metrics[REPLAY_Q_TAG])
        ratio = policy_replay_q_ratio(policy_q, replay_q, self.config.q_scale_floor, self.largest_replay_q)
        self.largest_replay_q = max(self.largest_replay_q, abs(replay_q))
        bound = self.config.max_policy_replay_q_ratio
        what = (
            f"step {step}: Q at the policy action ({source} = {policy_q:.4g}) is {ratio:.3g} x replay-Q's "
            f"scale away from Q on replay actions ({replay_q:.4g})"
        )
        if ratio > bound:
            return [Alert("critical", Q_GAP_TAG, f"{what} > {bound:.3g}: the actor exploits the critic")]
        if ratio > self.config.warn_fraction * bound:
            return [Alert("warning", Q_GAP_TAG, f"{what}, nearing {bound:.3g}")]
        return []

    def state_dict(self) -> dict:
        """JSON-able counters, for resuming a run."""
        return {
            "checks": self.checks,
            "consecutive_critical": self.consecutive_critical,
            "last_good_step": self.last_good_step,
            "first_critical_step": self.first_critical_step,
            "should_stop": self.should_stop,
            "stop_message": self.stop_message,
            "largest_replay_q": self.largest_replay_q,
        }

    def load_state_dict(self, state: Mapping) -> None:
        """Restores counters written by `state_dict`; unknown or missing keys raise ValueError."""
        expected = set(self.state_dict())
        state = {"largest_replay_q": 0.0, **state}  # checkpoints from before the guard kept it
        if set(state) != expected:
            raise ValueError(f"guard state keys {sorted(state)} differ from {sorted(expected)}")
        self.checks = int(state["checks"])
        self.consecutive_critical = int(state["consecutive_critical"])
        self.last_good_step = None if state["last_good_step"] is None else int(state["last_good_step"])
        self.first_critical_step = (
            None if state["first_critical_step"] is None else int(state["first_critical_step"])
        )
        self.should_stop = bool(state["should_stop"])
        self.stop_message = str(state["stop_message"])
        self.largest_replay_q = float(state["largest_replay_q"])
