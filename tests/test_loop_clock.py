"""LoopClock: the loop's host time by phase, with the waits for the device taken out."""

from __future__ import annotations

import time

import pytest

from td3_jax.training.run_log import LoopClock


class SlowDeviceResult:
    """Stands in for a device array whose computation finishes `seconds` after it is awaited."""

    def __init__(self, seconds: float):
        self.seconds = seconds

    def block_until_ready(self):
        time.sleep(self.seconds)
        return self


def test_host_time_excludes_device_waits_and_evaluations():
    clock = LoopClock()
    clock.enter("acting")
    time.sleep(0.02)  # host work
    clock.wait(SlowDeviceResult(0.10))  # blocked on the device
    clock.enter("env step")
    time.sleep(0.03)
    clock.enter("sampling")
    time.sleep(0.01)
    clock.enter("update")
    time.sleep(0.01)
    clock.wait(SlowDeviceResult(0.05))
    clock.enter("evaluation")
    time.sleep(0.05)  # neither host-per-step nor per-update time
    clock.enter("logging")
    figures = clock.interval(env_steps=2, updates=4)
    # Sleeps overrun, never underrun: each figure is at least its sleeps and well under the next bigger cost.
    assert 25.0 <= figures["progress/host_ms_per_env_step"] < 25.0 + 20.0  # (20 + 30 ms) / 2 steps
    assert 5.0 <= figures["progress/host_ms_per_update"] < 5.0 + 10.0  # (10 + 10 ms) / 4 updates
    assert 37.5 <= figures["progress/device_wait_ms_per_update"] < 37.5 + 10.0  # (100 + 50 ms) / 4 updates
    assert 15.0 <= figures["progress/host_ms_per_env_step/env_step"] < 15.0 + 10.0  # 30 ms / 2 steps
    assert 2.5 <= figures["progress/host_ms_per_update/dispatch"] < 2.5 + 5.0  # 10 ms / 4 updates, the wait taken out


def test_the_phases_add_up_to_each_total():
    clock = LoopClock()
    for phase in LoopClock.STEP_PHASES + LoopClock.UPDATE_PHASES:
        clock.enter(phase)
        time.sleep(0.005)
        clock.wait(SlowDeviceResult(0.005))
    figures = clock.interval(env_steps=3, updates=5)
    for total, phases in (("progress/host_ms_per_env_step", LoopClock.STEP_PHASES),
                          ("progress/host_ms_per_update", LoopClock.UPDATE_PHASES)):
        parts = [figures[f"{total}/{LoopClock.PHASE_TAGS[phase]}"] for phase in phases]
        assert min(parts) >= 0.0
        assert sum(parts) == pytest.approx(figures[total])


def test_each_interval_starts_from_zero_and_omits_what_did_not_happen():
    clock = LoopClock()
    clock.enter("env step")
    time.sleep(0.05)
    clock.interval(env_steps=1, updates=1)
    clock.enter("env step")
    figures = clock.interval(env_steps=10, updates=0)
    assert figures["progress/host_ms_per_env_step"] < 5.0
    # No update in this interval: the per-env-step total and its parts, nothing per update.
    step_parts = {f"progress/host_ms_per_env_step/{LoopClock.PHASE_TAGS[p]}" for p in LoopClock.STEP_PHASES}
    assert set(figures) == {"progress/host_ms_per_env_step"} | step_parts, figures


@pytest.mark.parametrize("phase", LoopClock.STEP_PHASES + LoopClock.UPDATE_PHASES)
def test_every_loop_phase_is_counted(phase):
    clock = LoopClock()
    clock.enter(phase)
    time.sleep(0.02)
    figures = clock.interval(env_steps=1, updates=1)
    assert figures["progress/host_ms_per_env_step"] + figures["progress/host_ms_per_update"] >= 20.0
