"""scripts/plot_run.py's reading of a learning curve."""

from __future__ import annotations

import numpy as np
from conftest import load_script


def test_first_of_three_consecutive_evaluations_at_90_percent_reads_float32_values():
    rates = [0.0, 0.9, 1.0, 0.8, 0.9, 1.0, 0.9, 0.7]
    evaluations = [{"env_step": 1000 * i, "eval/success_rate": float(np.float32(r))} for i, r in enumerate(rates)]
    plot_run = load_script("plot_run")
    assert plot_run.first_sustained(evaluations)["env_step"] == 4000  # 0.9 as float32 is 0.8999999761581421
    assert plot_run.first_sustained(evaluations[:6]) is None  # the run ends before a third one
