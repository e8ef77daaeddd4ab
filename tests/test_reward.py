"""Reward components on hand-made situations, and the shared termination rules."""

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from td3_jax.envs.reward import (
    COMPONENTS,
    REASONS,
    Measurements,
    RewardConfig,
    component_rewards,
    compute_reward,
    efficiency,
    lane_keeping,
    progress,
    safety,
    termination,
)

CFG = RewardConfig()


def cruise(**changes) -> Measurements:
    """On the lane centre at the target speed, nothing around, steady acceleration."""
    base = dict(
        speed=CFG.target_speed_mps, lateral_deviation=0.0, heading_error=0.0, lane_half_width=1.75,
        lane_invasion=False, accel=0.0, prev_accel=0.0, lateral_accel=0.0, prev_lateral_accel=0.0, dt=0.05,
        obstacle_distance=np.inf, time_to_collision=np.inf, collision=False, offroad=False,
        progress_m=0.4, waypoints_passed=0, goal_reached=False, distance_to_goal=100.0,
    )
    base.update(changes)
    return Measurements(**base)


def test_cruising_on_centre_scores_each_component_at_its_best():
    total, weighted = compute_reward(cruise(), CFG)
    assert weighted["efficiency"] == pytest.approx(2.0)  # 1.0 + moving bonus, clipped to 1
    assert weighted["lane_keeping"] == pytest.approx(2.0 * 0.5)
    assert weighted["comfort"] == pytest.approx(1.0 * 0.3)
    assert weighted["safety"] == 0.0
    assert weighted["progress"] == pytest.approx(3.0 * 0.4 * 0.5)
    assert total == pytest.approx(sum(weighted.values()))


@given(st.floats(0.0, 30.0), st.floats(0.0, 30.0))
def test_overspeed_penalty_makes_the_target_speed_pay_best(speed, other):
    # Without it efficiency saturates and progress (per metre, so per m/s) keeps paying for speed.
    original = efficiency(cruise(speed=speed), CFG)
    assert efficiency(cruise(speed=speed), dataclasses.replace(CFG, overspeed_penalty=0.0)) == original
    cfg = dataclasses.replace(CFG, overspeed_penalty=-0.25)
    over = max(speed - cfg.target_speed_mps, 0.0)
    assert efficiency(cruise(speed=speed), cfg) == pytest.approx(max(original - 0.25 * over, -1.0))

    def per_step(v):  # efficiency and progress of one 0.05 s step at speed v, 2 m waypoints
        m = cruise(speed=v, progress_m=0.05 * v, waypoints_passed=0.05 * v / 2.0)
        return cfg.efficiency_weight * efficiency(m, cfg) + cfg.progress_weight * progress(m, cfg)

    target = cfg.target_speed_mps
    if other > target and speed > other:  # above the target, faster pays less (until efficiency clips)
        assert per_step(speed) <= per_step(other) + 1e-9 or efficiency(cruise(speed=speed), cfg) == -1.0
    assert per_step(target) >= per_step(other) - 1e-9 or efficiency(cruise(speed=other), cfg) == -1.0


def test_waypoint_bonus_is_paid_per_waypoint_not_per_centimetre():
    creeping = progress(cruise(progress_m=0.01, waypoints_passed=0), CFG)
    assert creeping == pytest.approx(0.005)
    passing = progress(cruise(progress_m=0.01, waypoints_passed=1), CFG)
    assert passing == pytest.approx(0.005 + CFG.waypoint_bonus)


def test_goal_bonus_and_progress_clip():
    assert progress(cruise(goal_reached=True), CFG) == pytest.approx(0.2 + 100.0)
    assert progress(cruise(progress_m=1000.0), CFG) == CFG.progress_clip[1]
    assert progress(cruise(progress_m=-1000.0), CFG) == CFG.progress_clip[0]


@given(st.floats(0.0, 3.0), st.floats(-0.5, 0.5))
def test_lane_keeping_is_symmetric_in_the_signed_deviation(deviation, heading):
    left = lane_keeping(cruise(lateral_deviation=deviation, heading_error=heading), CFG)
    right = lane_keeping(cruise(lateral_deviation=-deviation, heading_error=-heading), CFG)
    assert left == pytest.approx(right)
    assert -1e-12 <= left <= 0.5


def test_lane_keeping_falls_with_deviation_and_is_minus_one_on_invasion():
    values = [float(lane_keeping(cruise(lateral_deviation=d), CFG)) for d in (0.0, 0.5, 1.0, 1.75)]
    assert values == sorted(values, reverse=True)
    assert values[-1] == pytest.approx(0.5 * (0.3 + 1.0) - 0.5)
    assert lane_keeping(cruise(lane_invasion=True), CFG) == -1.0
    assert safety(cruise(lane_invasion=True), CFG) == CFG.lane_invasion_penalty


@given(st.floats(0.0, 1.5), st.floats(0.05, 1.0))
def test_centering_bonus_adds_a_gaussian_of_the_deviation_to_lane_keeping(deviation, bonus):
    centred = RewardConfig(centering_bonus=bonus, centering_width_m=0.3)
    for d in (deviation, -deviation):
        added = lane_keeping(cruise(lateral_deviation=d), centred) - lane_keeping(cruise(lateral_deviation=d), CFG)
        assert added == pytest.approx(bonus * np.exp(-0.5 * (deviation / 0.3) ** 2), abs=1e-12)
    assert lane_keeping(cruise(lane_invasion=True), centred) == -1.0
    assert lane_keeping(cruise(speed=0.0), centred) == 0.0  # no bonus for standing on the centre line


def test_centering_bonus_pays_for_the_last_half_metre():
    """The original's linear term barely separates 0.4 m from the centre; the bonus makes it worth ~progress."""
    centred = RewardConfig(centering_bonus=1.0)
    step = {cfg: [float(compute_reward(cruise(lateral_deviation=d), cfg)[0]) for d in (0.0, 0.4)] for cfg in (CFG, centred)}
    assert step[CFG][0] - step[CFG][1] == pytest.approx(0.16, abs=0.01)
    assert step[centred][0] - step[centred][1] > 1.0


@pytest.mark.parametrize("speed, expected", [(1.0, -5.0), (3.0, -25.0), (8.0, -100.0)])
def test_collision_penalty_by_speed_band(speed, expected):
    assert safety(cruise(speed=speed, collision=True), CFG) == pytest.approx(expected)


@pytest.mark.parametrize("to_goal, expected", [(5.0, -0.01), (15.0, -0.03), (50.0, -0.05)])
def test_stopping_penalty_grows_with_the_distance_left(to_goal, expected):
    assert safety(cruise(speed=0.0, distance_to_goal=to_goal), CFG) == pytest.approx(expected)


def test_proximity_ttc_offroad_and_wrong_way():
    near = safety(cruise(obstacle_distance=4.0, time_to_collision=2.0), CFG)
    assert near == pytest.approx(-1.0 / 4.0 - 0.5 / 2.0)
    assert safety(cruise(offroad=True), CFG) == CFG.offroad_penalty
    assert safety(cruise(heading_error=np.pi), CFG) == pytest.approx(CFG.wrong_way_penalty)
    assert safety(cruise(heading_error=np.pi / 2 - 0.01), CFG) == 0.0


def test_comfort_penalises_jerk():
    smooth = float(compute_reward(cruise(), CFG)[1]["comfort"])
    jerky = float(compute_reward(cruise(accel=1.0), CFG)[1]["comfort"])  # 20 m/s^3
    assert smooth == pytest.approx(0.3)
    assert jerky == pytest.approx(-0.3)


@given(st.floats(0.0, 2.0), st.floats(-5.0, 0.0), st.floats(0.0, 12.0))
def test_steering_change_penalty_is_paid_in_comfort_per_unit_of_change_while_moving(change, penalty, speed):
    cfg = dataclasses.replace(CFG, steering_change_penalty=penalty)
    total, weighted = compute_reward(cruise(speed=speed, steer_change=change), cfg)
    base_total, base = compute_reward(cruise(speed=speed), cfg)  # no change this step
    assert compute_reward(cruise(speed=speed, steer_change=change), CFG)[0] == base_total  # off: the original's
    moving = speed >= cfg.standstill_speed_mps
    assert weighted["comfort"] == pytest.approx(base["comfort"] + (penalty * change if moving else 0.0))
    assert total == pytest.approx(base_total + cfg.comfort_weight * (penalty * change if moving else 0.0))
    assert {k: v for k, v in weighted.items() if k != "comfort"} == {k: v for k, v in base.items() if k != "comfort"}


@settings(max_examples=30)
@given(st.sampled_from(COMPONENTS), st.floats(0.0, 10.0))
def test_each_weight_scales_only_its_component(name, weight):
    cfg = dataclasses.replace(CFG, **{f"{name}_weight": weight})
    m = cruise(lateral_deviation=0.3, obstacle_distance=5.0, accel=0.1)
    _, base = compute_reward(m, RewardConfig())
    _, scaled = compute_reward(m, cfg)
    for other in COMPONENTS:
        unit = base[other] / getattr(CFG, f"{other}_weight")
        expected = unit * (weight if other == name else getattr(CFG, f"{other}_weight"))
        assert scaled[other] == pytest.approx(expected)


def test_vectorised_equals_elementwise():
    rng = np.random.default_rng(0)
    n = 16
    batch = cruise(
        speed=rng.uniform(0, 12, n), lateral_deviation=rng.uniform(-2, 2, n), heading_error=rng.uniform(-3, 3, n),
        lane_half_width=np.full(n, 1.75), lane_invasion=rng.uniform(size=n) < 0.3, accel=rng.uniform(0, 3, n),
        prev_accel=rng.uniform(0, 3, n), obstacle_distance=rng.uniform(0, 20, n),
        time_to_collision=rng.uniform(0, 5, n), collision=rng.uniform(size=n) < 0.2,
        offroad=rng.uniform(size=n) < 0.2, progress_m=rng.uniform(-1, 1, n), waypoints_passed=rng.integers(0, 2, n),
        goal_reached=rng.uniform(size=n) < 0.1, distance_to_goal=rng.uniform(0, 50, n),
    )
    total, _ = compute_reward(batch, CFG)
    for i in range(n):
        single = Measurements(*(f if np.isscalar(f) else f[i] for f in batch))
        assert total[i] == pytest.approx(float(compute_reward(single, CFG)[0]))


@pytest.mark.parametrize(
    "field, value", [("efficiency_weight", -1.0), ("lateral_share", 1.5), ("collision_penalties", (1.0, -2.0, -3.0)),
                     ("progress_clip", (5.0, 1.0)), ("offroad_penalty", 3.0), ("steering_change_penalty", 0.5)],
)
def test_invalid_config_names_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        RewardConfig(**{field: value})


def test_termination_rules_and_priority():
    kwargs = dict(offroad_limit_m=2.5, goal_tolerance_m=3.0, max_episode_steps=10)
    collision = np.array([True, False, False, False, False, True])
    deviation = np.array([3.0, -2.6, 0.0, 0.0, 0.0, 0.0])
    to_goal = np.array([1.0, 50.0, 2.0, 50.0, 50.0, 50.0])
    steps = np.array([10, 3, 3, 10, 3, 3])
    terminated, truncated, reason = termination(collision, deviation, to_goal, steps, **kwargs)
    assert [REASONS[r] for r in reason] == ["collision", "off_road", "route_completed", "time_limit", "", "collision"]
    assert terminated.tolist() == [True, True, True, False, False, True]
    assert truncated.tolist() == [False, False, False, True, False, False]


def test_component_rewards_stack_the_components_and_refuse_a_changed_reward():
    """What a per-component critic is trained on: the weighted components in COMPONENTS order, which sum to the
    reward; a failed env's row is 0; components missing or not summing to the reward are refused."""
    measurements = cruise(speed=np.array([8.0, 3.0, 10.0]), lateral_deviation=np.array([0.0, 0.4, -0.2]))
    total, weighted = compute_reward(measurements, CFG)
    valid = np.array([True, True, False])
    stacked = component_rewards(weighted, total, valid)
    assert stacked.shape == (3, len(COMPONENTS)) and stacked.dtype == np.float32
    for index, name in enumerate(COMPONENTS):
        np.testing.assert_allclose(stacked[:2, index], np.broadcast_to(weighted[name], 3)[:2], rtol=1e-6)
    np.testing.assert_allclose(stacked.sum(axis=-1)[:2], total[:2], rtol=1e-5)
    assert not stacked[2].any()
    with pytest.raises(ValueError, match="do not sum to the reward"):
        component_rewards(weighted, total * 0.5, valid)
    with pytest.raises(ValueError, match="reports no reward components"):
        component_rewards({k: v for k, v in weighted.items() if k != "comfort"}, total, valid)
    # Only failed envs and nothing reported (a step every env of which failed): zeros.
    assert not component_rewards(None, total, np.zeros(3, bool)).any()
