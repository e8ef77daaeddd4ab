"""When the host loop explores, updates and acts on its intervals: pure functions of the env step.

One counter, `env_step`, gates exploration, training, logging, evaluation and
checkpoints, so no gate can disagree with another (the original's even/odd
logging bug).
"""

from __future__ import annotations

import math

from td3_jax.training.config import ExplorationNoiseConfig


def exploration_std(schedule: ExplorationNoiseConfig, steps_since_start: int) -> float:
    """Std of the exploration noise `steps_since_start` env steps after learning starts."""
    if schedule.schedule == "constant":
        return schedule.initial
    fraction = steps_since_start / schedule.decay_steps
    if schedule.schedule == "linear":
        return schedule.initial + (schedule.final - schedule.initial) * min(1.0, fraction)
    return schedule.final + (schedule.initial - schedule.final) * math.exp(-5.0 * fraction)


def update_calls(before: int, after: int, learning_starts: int, train_freq: int) -> int:
    """Update calls due when the env step counter moves from `before` to `after`: one per `train_freq` crossed."""
    if after < learning_starts:
        return 0
    first = max(before, learning_starts - 1)
    return after // train_freq - first // train_freq


def crossed(before: int, after: int, every: int) -> bool:
    """Whether a multiple of `every` lies in (before, after]."""
    return after // every > before // every
