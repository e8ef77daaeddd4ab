"""The pure-pursuit + PID baseline: geometry of its parts and success on short routes."""

import math

import numpy as np
import pytest

from td3_jax.envs.config import LaneSimConfig
from td3_jax.envs.lanesim.baseline import BaselineConfig, BaselineController, for_lanesim, run_episode
from td3_jax.envs.lanesim.sim import LaneSimEnv


def arc(curvature: float, count: int = 25, spacing: float = 2.0) -> np.ndarray:
    """Points along a circle through the origin tangent to x (vehicle frame, y left)."""
    s = spacing * np.arange(1, count + 1)
    if curvature == 0:
        return np.stack([s, np.zeros_like(s)], axis=1)
    return np.stack([np.sin(curvature * s) / curvature, (1 - np.cos(curvature * s)) / curvature], axis=1)


@pytest.mark.parametrize("curvature", [-0.05, -0.01, 0.0, 0.01, 0.05])
def test_pure_pursuit_steers_towards_the_curve(curvature):
    controller = BaselineController()
    rear_axle = np.array([-0.5 * controller.cfg.wheelbase_m, 0.0])
    steer = controller.steer(arc(curvature) + rear_axle, speed=8.0)
    assert np.sign(steer) == -np.sign(curvature)  # a left curve (positive curvature) needs steer < 0
    # On a circle through the rear axle pure pursuit commands the circle's own steering angle.
    expected = -math.atan(controller.cfg.wheelbase_m * curvature) / math.radians(controller.cfg.max_steer_deg)
    assert steer == pytest.approx(expected, abs=0.05)


def test_curve_speed_slows_for_tight_curves_only():
    controller = BaselineController()
    assert controller.curve_speed(arc(0.0)) == controller.cfg.target_speed_mps
    tight = controller.curve_speed(arc(1 / 20))
    assert tight == pytest.approx(math.sqrt(2.5 * 20), rel=0.1)


def test_follow_speed_stops_behind_a_stopped_car():
    controller = BaselineController()
    cfg = controller.cfg
    assert controller.follow_speed(math.inf, 0.0, 8.0) == cfg.target_speed_mps
    assert controller.follow_speed(cfg.min_gap_m, 0.0, 8.0) == 0.0
    assert controller.follow_speed(10.0, 5.0, 8.0) < 5.0  # closer than the time gap: drop back


def test_pid_brakes_when_too_fast_and_accelerates_when_too_slow():
    controller = BaselineController()
    assert controller.throttle(8.0, 2.0) > 0
    controller.reset()
    assert controller.throttle(2.0, 8.0) < 0


def test_invalid_config_names_the_field():
    with pytest.raises(ValueError, match="kp"):
        BaselineConfig(kp=-1.0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_baseline_completes_short_routes_in_light_traffic(seed):
    cfg = LaneSimConfig(scenario=0, route_length_m=120.0, road_margin_front_m=60.0)
    result = run_episode(LaneSimEnv(cfg), BaselineController(for_lanesim(cfg)), seed=seed)
    assert result["success"] == 1.0 and result["collision"] == 0.0
    assert result["lateral_rmse_m"] < 0.3


def test_the_previous_action_in_the_vector_changes_nothing_the_baseline_does():
    from td3_jax.envs.observation import ObservationConfig

    cfg = LaneSimConfig(scenario=0, route_length_m=120.0, road_margin_front_m=60.0)
    with_action = ObservationConfig(previous_action=True)
    plain = run_episode(LaneSimEnv(cfg), BaselineController(for_lanesim(cfg)), seed=1)
    extended = run_episode(
        LaneSimEnv(cfg, observation_cfg=with_action), BaselineController(for_lanesim(cfg), with_action), seed=1
    )
    assert extended == plain
