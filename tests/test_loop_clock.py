"""LoopClock: the loop's host time by phase, with the waits for the device taken out."""

from __future__ import annotations

import pytest

from td3_jax.training import run_log
from td3_jax.training.run_log import LoopClock


class FakeTime:
    """The clock's time source, moved only by the test: exact figures, whatever else the machine runs."""

    def __init__(self):
        self.now = 1000.0

    def perf_counter(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def fake_time(monkeypatch) -> FakeTime:
    fake = FakeTime()
    monkeypatch.setattr(run_log, "time", fake)
    return fake


class SlowDeviceResult:
    """Stands in for a device array whose computation finishes `seconds` after it is awaited."""

    def __init__(self, clock: FakeTime, seconds: float):
        self.clock, self.seconds = clock, seconds

    def block_until_ready(self):
        self.clock.sleep(self.seconds)
        return self


def test_host_time_excludes_device_waits_and_evaluations(fake_time):
    clock = LoopClock()
    clock.enter("acting")
    fake_time.sleep(0.02)  # host work
    clock.wait(SlowDeviceResult(fake_time, 0.10))  # blocked on the device
    clock.enter("env step")
    fake_time.sleep(0.03)
    clock.enter("sampling")
    fake_time.sleep(0.01)
    clock.enter("update")
    fake_time.sleep(0.01)
    clock.wait(SlowDeviceResult(fake_time, 0.05))
    clock.enter("evaluation")
    fake_time.sleep(0.05)  # neither host-per-step nor per-update time
    clock.enter("logging")
    figures = clock.interval(env_steps=2, updates=4)
    assert figures["progress/host_ms_per_env_step"] == pytest.approx(25.0)  # (20 + 30 ms) / 2 steps
    assert figures["progress/host_ms_per_update"] == pytest.approx(5.0)  # (10 + 10 ms) / 4 updates
    assert figures["progress/device_wait_ms_per_update"] == pytest.approx(37.5)  # (100 + 50 ms) / 4 updates
    assert figures["progress/host_ms_per_env_step/env_step"] == pytest.approx(15.0)  # 30 ms / 2 steps
    assert figures["progress/host_ms_per_update/dispatch"] == pytest.approx(2.5)  # 10 ms / 4 updates, the wait taken out


def test_the_phases_add_up_to_each_total(fake_time):
    clock = LoopClock()
    for i, phase in enumerate(LoopClock.STEP_PHASES + LoopClock.UPDATE_PHASES):
        clock.enter(phase)
        fake_time.sleep(0.001 * (i + 1))
        clock.wait(SlowDeviceResult(fake_time, 0.005))
    figures = clock.interval(env_steps=3, updates=5)
    for total, phases in (("progress/host_ms_per_env_step", LoopClock.STEP_PHASES),
                          ("progress/host_ms_per_update", LoopClock.UPDATE_PHASES)):
        parts = [figures[f"{total}/{LoopClock.PHASE_TAGS[phase]}"] for phase in phases]
        assert min(parts) >= 0.0
        assert sum(parts) == pytest.approx(figures[total])


def test_each_interval_starts_from_zero_and_omits_what_did_not_happen(fake_time):
    clock = LoopClock()
    clock.enter("env step")
    fake_time.sleep(0.05)
    clock.interval(env_steps=1, updates=1)
    clock.enter("env step")
    fake_time.sleep(0.01)
    figures = clock.interval(env_steps=10, updates=0)
    assert figures["progress/host_ms_per_env_step"] == pytest.approx(1.0)  # this interval's 10 ms only
    # No update in this interval: the per-env-step total and its parts, nothing per update.
    step_parts = {f"progress/host_ms_per_env_step/{LoopClock.PHASE_TAGS[p]}" for p in LoopClock.STEP_PHASES}
    assert set(figures) == {"progress/host_ms_per_env_step"} | step_parts, figures


@pytest.mark.parametrize("phase", LoopClock.STEP_PHASES + LoopClock.UPDATE_PHASES)
def test_every_loop_phase_is_counted(phase, fake_time):
    clock = LoopClock()
    clock.enter(phase)
    fake_time.sleep(0.02)
    figures = clock.interval(env_steps=1, updates=1)
    assert figures["progress/host_ms_per_env_step"] + figures["progress/host_ms_per_update"] == pytest.approx(20.0)
