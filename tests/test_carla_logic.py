"""The pure functions of the CARLA backend (no server, no `carla` import)."""

import math
import queue
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from td3_jax.envs.carla import logic
from td3_jax.envs.carla.config import CarlaConfig
from td3_jax.envs.carla.env import termination


def _bgra(gray_rgb: np.ndarray) -> bytes:
    """(H, W, 3) RGB uint8 -> BGRA bytes as CARLA sends them."""
    h, w, _ = gray_rgb.shape
    out = np.empty((h, w, 4), np.uint8)
    out[..., 0], out[..., 1], out[..., 2], out[..., 3] = gray_rgb[..., 2], gray_rgb[..., 1], gray_rgb[..., 0], 255
    return out.tobytes()


def _luma(rgb):
    return 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]


# ----------------------------------------------------------------------------- camera


@given(st.integers(1, 300), st.integers(1, 100))
def test_area_weights_rows_sum_to_one_and_keep_the_mean(n_in, n_out):
    weights = logic.area_weights(n_in, n_out)
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, atol=1e-5)
    # Every input pixel carries the same total weight, so the mean is preserved.
    np.testing.assert_allclose(weights.sum(axis=0), n_out / n_in, atol=1e-5)


def test_bgra_channel_order_is_blue_green_red():
    red = np.zeros((4, 4, 3), np.uint8)
    red[..., 0] = 255
    assert np.all(logic.bgra_to_gray(_bgra(red), 4, 4, size=2) == round(0.299 * 255))


def test_integer_downscale_is_the_block_mean_of_the_luma():
    rgb = np.random.default_rng(0).integers(0, 256, (168, 168, 3), dtype=np.uint8)
    expected = _luma(rgb.astype(np.float64)).reshape(84, 2, 84, 2).mean(axis=(1, 3))
    got = logic.bgra_to_gray(_bgra(rgb), 168, 168)
    assert got.shape == (84, 84) and got.dtype == np.uint8
    assert np.max(np.abs(got - expected)) <= 0.5 + 1e-3


@settings(max_examples=20, deadline=None)
@given(st.integers(10, 200), st.integers(10, 200), st.integers(0, 2**31 - 1))
def test_any_camera_size_gives_an_84x84_frame_with_the_same_mean(height, width, seed):
    rgb = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    gray = logic.bgra_to_gray(_bgra(rgb), height, width)
    assert gray.shape == (84, 84)
    assert abs(gray.mean() - _luma(rgb.astype(np.float64)).mean()) <= 0.5


def test_wrong_buffer_size_is_rejected():
    with pytest.raises(ValueError, match="BGRA"):
        logic.bgra_to_gray(b"\x00" * 10, 2, 2)


# ----------------------------------------------------------------------------- frame matching


def _readings(frames):
    q = queue.Queue()
    for f in frames:
        q.put(SimpleNamespace(frame=f))
    return q


@given(st.lists(st.integers(0, 50), max_size=10), st.integers(51, 60))
def test_the_ticked_frame_is_returned_and_older_ones_dropped(stale, target):
    q = _readings(sorted(stale) + [target, target + 1])
    reading, dropped = logic.wait_for_frame(q, target, timeout_s=1.0)
    assert reading.frame == target and dropped == len(stale)
    assert q.get_nowait().frame == target + 1  # later readings stay queued


def test_a_duplicate_frame_is_dropped_at_the_next_tick():
    q = _readings([5, 5, 6])
    assert logic.wait_for_frame(q, 5, 1.0)[0].frame == 5
    reading, dropped = logic.wait_for_frame(q, 6, 1.0)
    assert (reading.frame, dropped) == (6, 1)


def test_a_skipped_frame_raises():
    with pytest.raises(logic.SensorTimeout, match="skipped frame 4"):
        logic.wait_for_frame(_readings([3, 5]), 4, 1.0)


def test_a_missing_frame_times_out_within_the_timeout():
    now = [0.0]

    class Clock:
        def __call__(self):
            return now[0]

    class SlowQueue(queue.Queue):
        def get(self, block=True, timeout=None):
            now[0] += timeout
            raise queue.Empty

    with pytest.raises(logic.SensorTimeout, match="no sensor frame 7 within 2"):
        logic.wait_for_frame(SlowQueue(), 7, 2.0, clock=Clock())
    assert now[0] == pytest.approx(2.0)


def test_events_of_later_frames_are_carried_to_the_next_step():
    q, carry = _readings([1, 3, 5]), []
    assert [e.frame for e in logic.drain_events(q, 3, carry)] == [1, 3]
    assert [e.frame for e in carry] == [5]
    assert [e.frame for e in logic.drain_events(q, 5, carry)] == [5]
    assert carry == []


def test_an_event_that_arrives_before_the_deadline_is_taken_and_the_wait_is_bounded():
    now = [0.0]

    class LateQueue(queue.Queue):
        """Its one event comes 0.3 s into the wait; then nothing."""

        def get(self, block=True, timeout=None):
            if now[0] < 0.3 <= now[0] + timeout:
                now[0] = 0.3
                return SimpleNamespace(frame=4)
            now[0] += timeout
            raise queue.Empty

    carry = []
    assert [e.frame for e in logic.drain_events(LateQueue(), 4, carry, deadline=0.5, clock=lambda: now[0])] == [4]
    assert now[0] == pytest.approx(0.5)


def test_grounded_needs_a_still_height_and_no_vertical_speed_over_the_last_ticks():
    assert not logic.grounded([0.5], [0.0])
    assert not logic.grounded([0.5, 0.45], [-0.5, -1.0])
    assert not logic.grounded([0.02, 0.0], [-0.9, 0.0])
    assert logic.grounded([0.5, 0.0, 0.0], [-1.0, 0.0, 0.01])


# ----------------------------------------------------------------------------- route geometry

_polyline = st.lists(
    st.tuples(st.floats(-100, 100), st.floats(-100, 100)), min_size=2, max_size=8
).map(np.array).filter(lambda p: np.all(np.linalg.norm(np.diff(p, axis=0), axis=1) > 0.5))


@settings(max_examples=40, deadline=None)
@given(_polyline, st.floats(0.1, 5.0))
def test_densify_keeps_the_line_its_length_and_ends(points, spacing):
    dense = logic.densify(points, spacing)
    np.testing.assert_allclose(dense[0], points[0])
    np.testing.assert_allclose(dense[-1], points[-1], atol=1e-9)
    assert np.all(np.linalg.norm(np.diff(dense, axis=0), axis=1) <= spacing + 1e-9)
    # Every dense point lies on the original polyline.
    arcs = logic.arc_lengths(points)
    for p in dense:
        assert abs(logic.project_to_route(points, arcs, p, 0, 0, len(points)).lateral) < 1e-6


@settings(max_examples=50, deadline=None)
@given(st.floats(-math.pi, math.pi), st.floats(1.0, 99.0), st.floats(-3.0, 3.0))
def test_projection_recovers_arc_and_signed_offset_on_any_heading(angle, arc, offset):
    direction = np.array([math.cos(angle), math.sin(angle)])
    left = np.array([-direction[1], direction[0]])
    origin = np.array([5.0, -7.0])
    points = logic.densify(np.stack([origin, origin + 100 * direction]), 0.5)
    arcs = logic.arc_lengths(points)
    proj = logic.project_to_route(points, arcs, origin + arc * direction + offset * left, hint=0, ahead=400)
    assert proj.arc == pytest.approx(arc, abs=1e-6)
    assert proj.lateral == pytest.approx(offset, abs=1e-6)  # left of the line is positive
    assert logic.wrap_angle(proj.route_yaw - angle) == pytest.approx(0.0, abs=1e-9)


def test_right_in_carla_is_negative_lateral_and_heading():
    # A CARLA car at y = +1 (CARLA's y points right) on a route along +x.
    x, y, _ = logic.carla_to_plane(10.0, 1.0, 0.0)
    points = logic.densify(np.array([[0.0, 0.0], [50.0, 0.0]]), 1.0)
    assert logic.project_to_route(points, logic.arc_lengths(points), np.array([x, y])).lateral == pytest.approx(-1.0)
    # CARLA yaw +10 deg turns towards +y, i.e. to the right.
    assert logic.heading_error(logic.carla_to_plane(0, 0, 10.0)[2], 0.0) == pytest.approx(-math.radians(10))


def test_projection_stays_on_the_driven_stretch_of_a_route_that_doubles_back():
    # A U-shaped route whose return leg passes 3 m from the outward leg.
    points = logic.densify(np.array([[0.0, 0.0], [100.0, 0.0], [100.0, 3.0], [0.0, 3.0]]), 0.5)
    arcs = logic.arc_lengths(points)
    near_start = logic.project_to_route(points, arcs, np.array([20.0, 1.6]), hint=30, back=20, ahead=40)
    assert near_start.arc == pytest.approx(20.0)


@given(st.floats(-10, 10), st.floats(-10, 10), st.floats(-math.pi, math.pi), st.floats(-math.pi, math.pi))
def test_vehicle_frame_is_invariant_to_rotating_the_world(px, py, yaw, turn):
    points = np.array([[1.0, 2.0], [-3.0, 0.5], [px + 4, py]])
    position = np.array([px, py])
    rot = np.array([[math.cos(turn), -math.sin(turn)], [math.sin(turn), math.cos(turn)]])
    np.testing.assert_allclose(
        logic.to_vehicle_frame(points, position, yaw),
        logic.to_vehicle_frame(points @ rot.T, rot @ position, yaw + turn),
        atol=1e-9,
    )


def test_vehicle_frame_axes_are_forward_and_left():
    local = logic.to_vehicle_frame(np.array([[0.0, 5.0], [-3.0, 0.0]]), np.zeros(2), math.pi / 2)
    np.testing.assert_allclose(local, [[5.0, 0.0], [0.0, 3.0]], atol=1e-12)


def test_lookahead_points_are_spaced_along_the_arc_and_clamped_at_the_end():
    points = logic.densify(np.array([[0.0, 0.0], [10.0, 0.0], [10.0, 10.0]]), 0.25)
    arcs = logic.arc_lengths(points)
    ahead = logic.lookahead_points(points, arcs, 6.0, 8, 2.0)
    np.testing.assert_allclose(ahead[:3], [[8, 0], [10, 0], [10, 2]], atol=1e-9)
    np.testing.assert_allclose(ahead[-1], [10, 10])


def test_straight_branch_handles_the_wrap_at_180_degrees():
    rng = np.random.default_rng(0)
    assert logic.choose_branch(179.0, [90.0, -179.0, 0.0], "straight", rng) == 1
    draws = {logic.choose_branch(0.0, [0.0, 90.0, -90.0], "random", rng) for _ in range(50)}
    assert draws == {0, 1, 2}


def test_spawn_is_preferred_if_free_else_a_free_one():
    spawns = np.array([[0.0, 0.0], [100.0, 0.0], [200.0, 0.0]])
    rng = np.random.default_rng(0)
    assert logic.pick_spawn(spawns, np.zeros((0, 2)), 20.0, 1, rng) == 1
    assert logic.pick_spawn(spawns, np.array([[101.0, 0.0], [5.0, 0.0]]), 20.0, 1, rng) == 2
    assert logic.pick_spawn(spawns, spawns.copy(), 20.0, 0, rng) == 0
    far = logic.spread_npc_spawns(spawns, np.array([0.0, 0.0]), 5, 20.0, rng)
    assert sorted(far.tolist()) == [1, 2]


# ----------------------------------------------------------------------------- control and reward inputs


@given(st.floats(-3, 3), st.floats(-3, 3))
def test_throttle_and_brake_are_never_applied_together(steer, pedal):
    s, throttle, brake = logic.action_to_control(np.array([steer, pedal]))
    assert -1 <= s <= 1 and 0 <= throttle <= 1 and 0 <= brake <= 1 and throttle * brake == 0
    assert throttle - brake == pytest.approx(float(np.clip(pedal, -1, 1)))
    assert s == pytest.approx(float(np.clip(steer, -1, 1)))


@pytest.mark.parametrize("bad", [[np.nan, 0.0], [0.0], [0.0, 0.0, 0.0]])
def test_malformed_actions_are_rejected(bad):
    with pytest.raises(ValueError):
        logic.action_to_control(np.array(bad))


@given(st.lists(st.floats(-5.0, 5.0), min_size=1, max_size=40))
def test_each_waypoint_is_paid_once_however_the_car_moves(moves):
    waypoints = np.arange(2.0, 101.0, 2.0)
    arc, furthest, paid = 0.0, 0.0, 0
    for move in moves:
        arc = min(max(arc + move, 0.0), 100.0)
        passed, furthest = logic.newly_passed(waypoints, furthest, arc)
        paid += passed
    assert paid == np.sum(waypoints <= furthest)


def test_obstacle_gap_and_time_to_collision():
    ahead = np.array([[20.0, 0.5]])
    gap, ttc, speed = logic.obstacle_ahead(np.zeros(2), 0.0, 10.0, ahead, np.array([[5.0, 0.0]]), 1.75, 4.5)
    assert gap == pytest.approx(15.5) and ttc == pytest.approx(15.5 / 5.0) and speed == pytest.approx(5.0)
    assert logic.obstacle_ahead(np.zeros(2), 0.0, 5.0, ahead, np.array([[5.0, 0.0]]), 1.75, 4.5)[1] == math.inf
    # Behind, or in the next lane: nothing ahead.
    others = np.array([[-10.0, 0.0], [10.0, 3.5]])
    assert logic.obstacle_ahead(np.zeros(2), 0.0, 5.0, others, np.zeros((2, 2)), 1.75, 4.5) == (math.inf, math.inf, 0.0)


# ----------------------------------------------------------------------------- episode rules


def test_termination_rules_and_their_priority():
    cfg = CarlaConfig(max_episode_steps=10, offroad_limit_m=2.5, goal_tolerance_m=3.0)
    assert termination(True, 3.0, 99.0, 100.0, 10, cfg) == (True, False, "collision")
    assert termination(False, -2.6, 99.0, 100.0, 10, cfg) == (True, False, "off_road")
    assert termination(False, 2.4, 97.0, 100.0, 10, cfg) == (True, False, "route_completed")
    assert termination(False, 2.4, 96.0, 100.0, 10, cfg) == (False, True, "time_limit")
    assert termination(False, 0.0, 0.0, 100.0, 9, cfg) == (False, False, "")
