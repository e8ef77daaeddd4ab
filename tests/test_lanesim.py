"""The embedded simulator: determinism, spaces, episode rules, rendering, vectorisation."""

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from td3_jax.envs import EnvConfig, make_env, make_vec_env, observation

from td3_jax.envs.lanesim import roads

from td3_jax.envs.config import LaneSimConfig
from td3_jax.envs.lanesim import traffic
from td3_jax.envs.lanesim.sim import LaneSimEnv, LaneSimVec, push_frames
from td3_jax.envs.reward import COMPONENTS

SMALL = LaneSimConfig(route_length_m=60.0, road_margin_front_m=60.0, max_episode_steps=200)
INFO_KEYS = {
    "termination_reason", "success", "collision", "lane_invasion", "offroad", "lateral_deviation_m",
    "heading_error_rad", "speed_mps", "distance_travelled_m", "route_progress", "distance_to_goal_m",
    "obstacle_distance_m", "obstacle_speed_mps", "time_to_collision_s", "reward_components",
}


def rollout(env, seed, steps, action_seed=0):
    rng = np.random.default_rng(action_seed)
    obs, _ = env.reset(seed=seed)
    trace = [obs]
    for _ in range(steps):
        obs, reward, terminated, truncated, info = env.step(rng.uniform(-0.3, 1.0, 2) * [0.3, 1.0])
        trace.append((obs, reward, info))
        if terminated or truncated:
            obs, _ = env.reset()
            trace.append(obs)
    return trace


def test_same_seed_same_episodes_and_different_seed_differs():
    a = rollout(LaneSimEnv(SMALL), seed=7, steps=120)
    b = rollout(LaneSimEnv(SMALL), seed=7, steps=120)
    assert repr(a) == repr(b)  # frames, vectors, rewards and infos, bit for bit
    c = rollout(LaneSimEnv(SMALL), seed=8, steps=5)
    assert not np.array_equal(a[0]["image"], c[0]["image"])


def test_observations_actions_and_info_conform():
    env = LaneSimEnv(dataclasses.replace(SMALL, scenario=1))
    obs, _ = env.reset(seed=1)
    assert env.observation_space.contains(obs)
    assert obs["vector"].shape == (53,)
    for _ in range(20):
        obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
        assert env.observation_space.contains(obs)
        assert obs["image"].dtype == np.uint8 and obs["vector"].dtype == np.float32
        assert isinstance(reward, float) and np.isfinite(reward)
        assert set(info) == INFO_KEYS and set(info["reward_components"]) == set(COMPONENTS)
        assert reward == pytest.approx(sum(info["reward_components"].values()))
        if terminated or truncated:
            break


def test_stack_holds_consecutive_frames_and_starts_repeated():
    env = LaneSimEnv(SMALL)
    obs, _ = env.reset(seed=2)
    assert all(np.array_equal(obs["image"][..., 0], obs["image"][..., k]) for k in range(4))
    prev = obs
    for _ in range(5):
        obs, *_ = env.step(np.array([0.0, 0.5]))
        np.testing.assert_array_equal(obs["image"][..., :-1], prev["image"][..., 1:])
        prev = obs


@pytest.mark.parametrize("stack", [1, 2, 3, 4, 8])
def test_push_frames_packed_path_matches_plain_shift(stack):
    rng = np.random.default_rng(stack)
    images = rng.integers(0, 256, (3, 5, 6, stack), dtype=np.uint8)
    frames = rng.integers(0, 256, (3, 5, 6), dtype=np.uint8)
    expected = np.concatenate([images[..., 1:], frames[..., None]], axis=-1)
    push_frames(images, frames)
    np.testing.assert_array_equal(images, expected)


def test_vector_env_matches_single_envs_and_autoresets():
    vec = LaneSimVec(2, SMALL, seed=5)
    singles = [LaneSimEnv(SMALL), LaneSimEnv(SMALL)]
    obs, _ = vec.reset()
    # Env i of the vector env draws from episode_rng(5, i); env 0 is LaneSimEnv(seed=5).
    single_obs, _ = singles[0].reset(seed=5)
    np.testing.assert_array_equal(obs["image"][0], single_obs["image"])
    actions = np.array([[0.0, 1.0], [1.0, 1.0]])  # env 1 steers off the road quickly
    for _ in range(60):
        obs, reward, terminated, truncated, info = vec.step(actions)
        single_obs, single_reward, *_ = singles[0].step(actions[0])
        np.testing.assert_array_equal(obs["image"][0], single_obs["image"])
        assert reward[0] == single_reward
        if terminated[1]:
            break
    assert terminated[1] and info["termination_reason"][1] == "off_road"
    assert info["_final_obs"].tolist() == [False, True] and info["final_obs"][0] is None
    final = info["final_obs"][1]
    assert vec.single_observation_space.contains(final)
    # Info describes the final step of the ended episode, not the reset that followed it.
    assert info["speed_mps"][1] == pytest.approx(final["vector"][0] * observation.SPEED_SCALE, rel=1e-5)
    assert info["distance_travelled_m"][1] > 0
    assert abs(final["vector"][1] * observation.ObservationConfig().deviation_scale_m) > SMALL.offroad_limit_m
    # The returned observation is the first of the next episode: a repeated frame, on the lane centre.
    assert all(np.array_equal(obs["image"][1, ..., 0], obs["image"][1, ..., k]) for k in range(4))
    assert obs["vector"][1, 1] == 0.0
    assert vec.observation_space.contains(obs)


def test_the_observation_scales_reach_the_vector_of_both_lanesim_envs():
    scale, default_scale = observation.ObservationConfig(deviation_scale_m=0.25, heading_scale_rad=0.05), observation.ObservationConfig()
    factor, default_factor = (np.array([o.deviation_scale_m, o.heading_scale_rad]) for o in (scale, default_scale))
    actions = np.random.default_rng(3).uniform(-0.3, 0.3, (40, 1, 2)) + [0.0, 0.5]
    # make_vec_env with one env and make_env (one action, no batch axis) are the two paths a run takes.
    for make, batch in ((lambda cfg: make_vec_env(cfg, 1), lambda a: a), (make_env, lambda a: a[0])):
        scaled, default = (make(EnvConfig(lanesim=SMALL, seed=4, observation=o)) for o in (scale, default_scale))
        scaled.reset(), default.reset()
        for action in actions:
            obs, _, _, _, info = scaled.step(batch(action))
            vector, base = np.atleast_2d(obs["vector"]), np.atleast_2d(default.step(batch(action))[0]["vector"])
            measured = np.stack([np.atleast_1d(info["lateral_deviation_m"]), np.atleast_1d(info["heading_error_rad"])], 1)
            np.testing.assert_allclose(vector[:, 1:3] * factor, measured, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(vector[:, 1:3] * factor, base[:, 1:3] * default_factor, rtol=1e-5, atol=1e-6)
            np.testing.assert_array_equal(np.delete(vector, [1, 2], axis=1), np.delete(base, [1, 2], axis=1))
        assert np.abs(vector[:, 1]).max() > 0


def test_the_previous_action_ends_the_vector_and_each_steer_change_is_paid_once_per_env_step():
    # Four simulator steps per env step: the change is measured between env steps' commands, paid on the first.
    cfg = dataclasses.replace(SMALL, action_repeat=4)
    plain = observation.ObservationConfig()
    with_action = observation.ObservationConfig(previous_action=True)
    actions = np.random.default_rng(5).uniform(-0.3, 0.3, (10, 1, 2)) + [0.0, 0.6]  # stays on the road
    actions[3] = [[1.7, 0.6]]  # clipped to 1 as applied
    for make, batch in ((lambda c: make_vec_env(c, 1), lambda a: a), (make_env, lambda a: a[0])):
        base = make(EnvConfig(lanesim=cfg, seed=4, observation=plain))
        paid = make(EnvConfig(lanesim=cfg, seed=4, observation=with_action,
                              reward=dataclasses.replace(EnvConfig().reward, steering_change_penalty=-2.0)))
        obs, _ = paid.reset()
        base.reset()
        assert paid.observation_space["vector"].shape[-1] == base.observation_space["vector"].shape[-1] + 2
        assert paid.observation_space.contains(obs)
        np.testing.assert_array_equal(np.atleast_2d(obs["vector"])[:, -2:], 0.0)  # nothing done yet
        previous = np.zeros(2)
        for action in actions:
            obs, reward, terminated, truncated, info = paid.step(batch(action))
            base_obs, base_reward, *_, base_info = base.step(batch(action))
            applied = np.clip(action[0], -1.0, 1.0)
            vector, base_vector = np.atleast_2d(obs["vector"]), np.atleast_2d(base_obs["vector"])
            np.testing.assert_array_equal(vector[:, :-2], base_vector)  # the same drive
            np.testing.assert_allclose(vector[0, -2:], applied, rtol=1e-6)
            penalty = -2.0 * abs(applied[0] - previous[0])
            np.testing.assert_allclose(np.ravel(reward), np.ravel(base_reward) + penalty, rtol=1e-9, atol=1e-9)
            np.testing.assert_allclose(
                np.ravel(info["reward_components"]["comfort"]),
                np.ravel(base_info["reward_components"]["comfort"]) + penalty, rtol=1e-9, atol=1e-9,
            )
            previous = applied
            assert not (np.any(terminated) or np.any(truncated))
        obs, _ = paid.reset()
        np.testing.assert_array_equal(np.atleast_2d(obs["vector"])[:, -2:], 0.0)  # a new episode starts from rest


def test_collision_terminates():
    env = LaneSimEnv(SMALL)
    env.reset(seed=3)
    core = env.core
    core.npc_s[0, 0] = core.s[0] + 3.0  # an NPC of the ego's lane, stopped just ahead
    core.npc_speed[0, 0] = core.npc_desired[0, 0] = 1e-3
    _, reward, terminated, _, info = env.step(np.array([0.0, 1.0]))
    assert terminated and info["collision"] and info["termination_reason"] == "collision"
    assert info["reward_components"]["safety"] <= -100.0


def test_offroad_terminates_beyond_the_limit():
    env = LaneSimEnv(SMALL)
    env.reset(seed=4)
    for _ in range(200):
        _, _, terminated, truncated, info = env.step(np.array([1.0, 0.3]))
        if terminated or truncated:
            break
    assert terminated and info["termination_reason"] == "off_road"
    assert info["lateral_deviation_m"] < -SMALL.offroad_limit_m  # steer +1 is right: negative deviation


@pytest.mark.parametrize("steer", [1.0, -1.0])
def test_lane_departure_penalty_is_paid_once_on_either_side(steer):
    from td3_jax.envs.reward import RewardConfig

    rewards = {}
    for penalty in (0.0, -100.0):
        env = LaneSimEnv(SMALL, RewardConfig(lane_departure_penalty=penalty))
        env.reset(seed=4)
        trace = []
        for _ in range(200):
            _, reward, terminated, truncated, info = env.step(np.array([steer, 0.3]))
            trace.append((reward, info["reward_components"]["safety"]))
            if terminated or truncated:
                break
        assert terminated and info["termination_reason"] == "off_road"
        rewards[penalty] = np.array(trace)
    np.testing.assert_allclose(rewards[-100.0][:-1], rewards[0.0][:-1])
    np.testing.assert_allclose(rewards[-100.0][-1], rewards[0.0][-1] - 100.0)


def test_route_completion_terminates_with_the_goal_bonus():
    cfg = dataclasses.replace(SMALL, route_length_m=20.0, npc_density_per_km=(0.0, 0.0, 0.0))
    env = LaneSimEnv(cfg)
    env.reset(seed=0)  # the first straight covers the route
    for _ in range(200):
        _, _, terminated, truncated, info = env.step(np.array([0.0, 0.5]))
        if terminated or truncated:
            break
    assert terminated and info["success"] and info["termination_reason"] == "route_completed"
    assert info["route_progress"] > 0.8
    assert info["reward_components"]["progress"] >= 3.0 * 100.0


def test_time_limit_truncates_without_terminating():
    env = LaneSimEnv(dataclasses.replace(SMALL, max_episode_steps=5))
    env.reset(seed=0)
    for step in range(5):
        _, _, terminated, truncated, info = env.step(np.array([0.0, -1.0]))
        assert not terminated
        assert truncated == (step == 4)
    assert info["termination_reason"] == "time_limit"


def _core_state(core):
    return np.concatenate([core.x, core.y, core.yaw, core.speed, core.steer, core.s, core.npc_s.ravel()])


@settings(max_examples=8, deadline=None)
@given(repeat=st.integers(2, 4), seed=st.integers(0, 50), steer=st.floats(-1.0, 1.0), pedal=st.floats(-1.0, 1.0))
def test_action_repeat_equals_repeated_simulator_steps_until_the_episode_ends(repeat, seed, steer, pedal):
    cfg = dataclasses.replace(SMALL, max_episode_steps=120)
    held, single = LaneSimVec(3, dataclasses.replace(cfg, action_repeat=repeat), seed=seed), LaneSimVec(3, cfg, seed=seed)
    held.reset(), single.reset()
    actions = np.array([[steer, pedal], [0.0, 0.3], [-steer, 1.0]])
    for _ in range(120 // repeat):
        reward, terminated, truncated, info = held.core.step(actions)
        total, ended, last = np.zeros(3), np.zeros(3, bool), {}
        for _ in range(repeat):
            step_reward, step_terminated, step_truncated, step_info = single.core.step(actions)
            total += np.where(ended, 0.0, step_reward)
            for i in np.flatnonzero(~ended):
                last[i] = (step_info["termination_reason"][i], step_info["lateral_deviation_m"][i], step_terminated[i])
            ended |= step_terminated | step_truncated
        np.testing.assert_allclose(reward, total, rtol=1e-12)
        np.testing.assert_array_equal(terminated | truncated, ended)
        for i, (reason, deviation, was_terminated) in last.items():
            assert info["termination_reason"][i] == reason and terminated[i] == was_terminated
            assert info["lateral_deviation_m"][i] == deviation
        if ended.any():
            break
        np.testing.assert_array_equal(_core_state(held.core), _core_state(single.core))
        np.testing.assert_array_equal(held.core.frames, single.core.frames)


def test_action_repeat_must_divide_the_time_limit():
    with pytest.raises(ValueError, match="multiple of lanesim.action_repeat"):
        LaneSimConfig(max_episode_steps=1000, action_repeat=3)


def test_frame_shows_sky_road_and_markings():
    env = LaneSimEnv(SMALL)
    obs, _ = env.reset(seed=0)
    frame = obs["image"][..., -1]
    assert frame[:30].min() > 160  # sky
    bottom = frame[-10:]
    assert (bottom == roads.SHADE_ASPHALT).mean() > 0.3  # road surface under the car
    assert (bottom == roads.SHADE_MARKING).any(axis=0).sum() >= 2  # edge and centre lines


def test_road_moves_across_the_frame_when_the_car_steers():
    env = LaneSimEnv(dataclasses.replace(SMALL, npc_density_per_km=(0.0, 0.0, 0.0)))

    def road_column(obs):
        """Mean column of the paved road (asphalt and lines) in the middle distance."""
        band = obs["image"][48:70, :, -1]
        return np.nonzero((band == roads.SHADE_ASPHALT) | (band == roads.SHADE_MARKING))[1].mean()

    start = road_column(env.reset(seed=0)[0])
    for _ in range(6):
        left, *_ = env.step(np.array([-0.5, 0.0]))
    start_again = road_column(env.reset(seed=0)[0])
    for _ in range(6):
        right, *_ = env.step(np.array([0.5, 0.0]))
    assert start == start_again
    # Turning left moves the world (and its lines) to the right of the image, and vice versa.
    assert road_column(left) > start + 5 > start - 5 > road_column(right)


@settings(max_examples=10, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_roads_stay_within_heading_and_curvature_limits(seed):
    road = roads.generate_road(np.random.default_rng(seed), SMALL)
    assert road.length == pytest.approx(SMALL.road_length_m)
    assert np.abs(road.heading).max() <= np.radians(SMALL.max_heading_deg) + 0.05
    assert np.abs(road.curvature).max() <= 1.0 / SMALL.curve_radius_m[0] + 1e-9
    assert np.all(np.diff(road.xy[:, 0]) > 0)  # monotone along x: the road cannot cross itself
    start = int(road.start_s / roads.SAMPLE_M)
    assert np.all(road.curvature[: start + 1] == 0)  # the ego starts on a straight


def _reference_raster(rng, road, lane_width, cell):
    """The whole road stamped in one pass, in arc-length order, over the terrain `RoadRaster` draws from `rng`."""
    surface = roads.RoadRaster(rng, road.xy, road.heading, lane_width, cell)
    image = surface._image.copy()  # the terrain only: nothing is painted before a view asks
    arc = np.arange(len(road.heading)) * roads.SAMPLE_M
    s = np.arange(0.0, arc[-1], cell / 2)
    half = lane_width + roads.MARKING_WIDTH_M / 2 + roads.SHOULDER_M
    offsets = np.arange(-half, half + 1e-9, cell / 2)
    yaw = np.interp(s, arc, road.heading)
    for k in range(len(s)):  # one lateral line at a time: later stamps overwrite earlier ones
        centre = (np.array([np.interp(s[k], arc, road.xy[:, 0]), np.interp(s[k], arc, road.xy[:, 1])])
                  - surface.origin) / cell
        shade = np.where(np.abs(np.abs(offsets) - lane_width) <= roads.MARKING_WIDTH_M / 2, roads.SHADE_MARKING,
                         roads.SHADE_ASPHALT)
        if np.mod(s[k], sum(roads.DASH_M)) < roads.DASH_M[0]:
            shade[np.abs(offsets) <= roads.MARKING_WIDTH_M / 2] = roads.SHADE_MARKING
        scaled = (offsets / cell).astype(np.float32)
        columns = (centre[0].astype(np.float32) + scaled * np.float32(-np.sin(yaw[k]))).astype(np.int32)
        rows = (centre[1].astype(np.float32) + scaled * np.float32(np.cos(yaw[k]))).astype(np.int32)
        for row, column, value in zip(rows, columns, shade):
            image[row, column] = value
    return image


@settings(max_examples=6, deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from([0.2, 0.37]),
       st.lists(st.floats(-50.0, 3000.0), min_size=1, max_size=4))
def test_road_raster_paints_lazily_and_every_viewed_column_is_final(seed, cell, views):
    road = roads.generate_road(np.random.default_rng(seed), SMALL)
    reference = _reference_raster(np.random.default_rng(seed + 1), road, SMALL.lane_width_m, cell)
    surface = roads.RoadRaster(np.random.default_rng(seed + 1), road.xy, road.heading, SMALL.lane_width_m, cell)
    seen = -np.inf
    for column in views:
        image = surface.view(column)
        seen = max(seen, column)
        final = int(np.floor(seen)) + 1
        np.testing.assert_array_equal(image[:, :max(final, 0)], reference[:, :max(final, 0)])
    np.testing.assert_array_equal(surface.image, reference)
    assert surface.complete


@pytest.mark.parametrize("scenario", [0, 1])
def test_frames_of_lazily_painted_roads_equal_fully_painted_ones(monkeypatch, scenario):
    # A short render distance, so that the 140 m roads are seen (and painted) a part at a time.
    cfg = dataclasses.replace(SMALL, action_repeat=2, scenario=scenario, render_distance_m=40.0)
    rng = np.random.default_rng(0)
    actions = [np.clip(rng.normal([0.0, 0.5], 0.6, (3, 2)), -1, 1) for _ in range(80)]

    def frames(env):
        trace = [env.reset(seed=4)[0]["image"]]
        shares = []
        for action in actions:
            trace.append(env.step(action)[0]["image"])
            shares += [road.surface._painted / len(road.surface._starts) for road in env.core.roads]
        return np.stack(trace), min(shares)

    lazy, lazy_share = frames(LaneSimVec(3, cfg))
    generate = roads.generate_road

    def painted_road(rng, road_cfg):
        road = generate(rng, road_cfg)
        road.raster  # paints all of it
        return road

    monkeypatch.setattr(roads, "generate_road", painted_road)
    full, full_share = frames(LaneSimVec(3, cfg))
    np.testing.assert_array_equal(lazy, full)
    assert lazy_share < 0.6 and full_share == 1.0  # the lazy roads were painted only partly while seen


def _cross(u, v):
    return u[0] * v[1] - u[1] * v[0]


def _reference_overlap(a, b):
    """Convex polygons intersect iff a corner lies inside the other or two edges cross."""

    def inside(p, poly):
        cross = [_cross(poly[(i + 1) % 4] - poly[i], p - poly[i]) for i in range(4)]
        return all(c >= 0 for c in cross) or all(c <= 0 for c in cross)

    def crosses(p1, p2, q1, q2):
        d1, d2 = _cross(p2 - p1, q1 - p1), _cross(p2 - p1, q2 - p1)
        d3, d4 = _cross(q2 - q1, p1 - q1), _cross(q2 - q1, p2 - q1)
        return d1 * d2 < 0 and d3 * d4 < 0

    return (any(inside(p, b) for p in a) or any(inside(q, a) for q in b)
            or any(crosses(a[i], a[(i + 1) % 4], b[j], b[(j + 1) % 4]) for i in range(4) for j in range(4)))


def _corners(x, y, yaw, hl, hw):
    c, s = np.cos(yaw), np.sin(yaw)
    return np.array([[x + sl * hl * c - sw * hw * s, y + sl * hl * s + sw * hw * c]
                     for sl, sw in ((1, 1), (1, -1), (-1, -1), (-1, 1))])


@settings(max_examples=200, deadline=None)
@given(st.floats(-6, 6), st.floats(-6, 6), st.floats(-np.pi, np.pi), st.floats(-np.pi, np.pi))
def test_box_overlap_matches_polygon_reference(dx, dy, yaw_a, yaw_b):
    half_a, half_b = (2.35, 0.925), (2.25, 0.95)
    got = traffic.boxes_overlap(np.array(dx), np.array(dy), yaw_a, yaw_b, half_a, half_b)
    expected = _reference_overlap(_corners(0, 0, yaw_a, *half_a), _corners(dx, dy, yaw_b, *half_b))
    assert bool(got) == expected


def test_npcs_keep_their_order_and_distance_in_heavy_traffic():
    cfg = dataclasses.replace(LaneSimConfig(), scenario=2, max_episode_steps=10_000)
    vec = LaneSimVec(2, cfg, seed=0)
    vec.reset()
    core = vec.core
    for _ in range(300):
        vec.step(np.array([[0.0, -1.0]] * 2))  # the ego stops and blocks its lane
        s_leader = core.npc_s[:, core.npc_leader]
        gap = np.mod(core.npc_direction * (s_leader - core.npc_s), core.ring)
        assert gap.min() > traffic.NPC_LENGTH_M  # nobody drove into the car ahead


def test_random_policy_fails_quickly():
    env = LaneSimEnv()
    rng = np.random.default_rng(0)
    lengths = []
    for seed in range(5):
        env.reset(seed=seed)
        for step in range(1000):
            _, _, terminated, truncated, _ = env.step(rng.uniform(-1, 1, 2))
            if terminated or truncated:
                break
        lengths.append(step + 1)
    assert np.median(lengths) < 300


def test_make_env_picks_the_backend():
    assert isinstance(make_env(EnvConfig()), LaneSimEnv)
    assert isinstance(make_vec_env(EnvConfig(num_envs=2)), LaneSimVec)
    with pytest.raises(ValueError, match="backend"):
        EnvConfig(backend="unity")


@pytest.mark.parametrize(
    "field, value",
    [("scenario", 3), ("lane_width_m", 1.0), ("curve_radius_m", (50.0, 20.0)), ("dt", 0.0),
     ("npc_density_per_km", (500.0, 30.0, 60.0))],
)
def test_invalid_lanesim_config_names_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        LaneSimConfig(**{field: value})


def test_env_preview_writes_both_pngs(tmp_path):
    from td3_jax.cli import main

    out = tmp_path / "preview"
    assert main(["env-preview", "--out", str(out), "--frames", "3", "--every", "5", "--route-length", "60"]) == 0
    assert (out / "camera.png").stat().st_size > 0 and (out / "map.png").stat().st_size > 0
    assert main(["env-preview", "--scenario", "7", "--out", str(out)]) == 2


def test_make_env_dispatches_lazily_to_the_other_backends(monkeypatch):
    import td3_jax.envs.carla.env as carla_env
    import td3_jax.envs.gym_adapter as gym_adapter

    calls = []
    monkeypatch.setattr(gym_adapter, "make_gym_env", lambda env_id, **kw: calls.append((env_id, kw)) or "gym")
    monkeypatch.setattr(carla_env, "make_carla_env", lambda config: calls.append(config) or "carla")
    assert make_env(EnvConfig(backend="gym:CarRacing-v3", stack=3, seed=9)) == "gym"
    env_id, kwargs = calls[-1]
    assert env_id == "CarRacing-v3" and kwargs["stack"] == 3 and kwargs["seed"] == 9
    # The adapter's options come from env.gym (all unset here).
    assert all(kwargs[name] is None for name in ("layout", "value_range", "image_key", "vector_keys"))
    assert make_env(EnvConfig(backend="carla"), seed=4) == "carla"
    assert calls[-1].backend == "carla" and calls[-1].seed == 4


def test_camera_rays_hit_the_ground_where_a_pinhole_predicts():
    from td3_jax.envs.lanesim.camera import Camera

    cfg = LaneSimConfig()
    camera = Camera(cfg)
    assert camera.ground_start == 42 * 84  # pitch 0: the lower half of the frame sees the ground
    rows = np.arange(42, 84)
    fy = 42 / (np.tan(np.radians(cfg.camera_fov_deg) / 2) / cfg.camera_aspect)
    ahead = cfg.camera_x_m + cfg.camera_z_m * fy / (rows + 0.5 - 42)
    centre_column = camera.ground_cells[0].reshape(42, 84)[:, 41:43].mean(axis=1) * cfg.raster_cell_m
    near = ahead < cfg.render_distance_m
    np.testing.assert_allclose(centre_column[near], ahead[near], rtol=1e-5)
    looking_down = Camera(dataclasses.replace(cfg, camera_pitch_deg=-10.0))
    assert looking_down.ground_start < camera.ground_start


def test_bad_calls_raise_clear_errors():
    env = LaneSimEnv(SMALL)
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.zeros(2))
    env.reset(seed=0)
    with pytest.raises(ValueError, match="finite"):
        env.step(np.array([np.nan, 0.0]))
    _, _, _, _, info = env.step(np.array([5.0, -7.0]))  # out-of-range actions are clipped
    assert np.isfinite(info["speed_mps"])


@pytest.mark.filterwarnings("ignore:.*infinity")  # the shared vector space is unbounded by design
def test_gymnasium_env_checker_passes():
    from gymnasium.utils.env_checker import check_env

    check_env(LaneSimEnv(SMALL), skip_render_check=True)
