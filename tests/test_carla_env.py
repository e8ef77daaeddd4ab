"""The CARLA env's reset / step / reconnect control flow against an in-process stand-in.

What this proves: given a client that behaves as described below, the env
applies synchronous settings and a seeded synchronous Traffic Manager, spawns
its actors once and NPCs once per connection, matches camera frames to tick
ids (stale readings are queued before the current one on every tick), ends an
episode as truncated and marked on a tick timeout, reconnects with backoff,
stops after `max_failures`, restores the world settings on close, destroys
leftovers of dead td3_jax sessions (and nothing else), keeps NPCs clear of the
ego's spawn point, settles the dropped ego before the first observation,
counts late events in the step of their frame, and repeats actions.

What it does not prove: that a real CARLA server behaves like the stand-in
(actor physics, sensor timing, Traffic Manager behaviour, what a hung server
really raises). The stand-in is a straight road along CARLA's +x axis, an ego
that moves 10 m/s x throttle forward and 0.5 m x steer to CARLA's right per
tick, and a camera whose image is uniformly the tick's frame id (mod 256).
Value objects (Transform, VehicleControl, WorldSettings, ...) are the real
`carla` classes; only client, world, map, actors and batch commands are fakes.
"""

import gc
import math
import os
import socket
import subprocess
from types import SimpleNamespace

import numpy as np
import pytest
from carla_fakes import CarlaWithFakeCommands, FakeServer

import carla

from td3_jax.envs.carla.config import CarlaConfig
from td3_jax.envs.carla.env import CarlaEnv, CarlaFailureError, CarlaUnavailableError, make_carla_env
from td3_jax.envs.reward import COMPONENTS

# The step info keys of the embedded simulator (td3_jax/envs/lanesim/sim.py) that every backend reports.
SHARED_INFO_KEYS = {
    "termination_reason", "success", "collision", "lane_invasion", "offroad", "lateral_deviation_m",
    "heading_error_rad", "speed_mps", "distance_travelled_m", "route_progress", "distance_to_goal_m",
    "obstacle_distance_m", "obstacle_speed_mps", "time_to_collision_s", "reward_components",
}


def make_env(server, sleeps=None, **overrides):
    small = {"npc_counts": (2, 3, 4), "route_length_m": 100.0, "camera_width": 8, "camera_height": 6}
    config = CarlaConfig(**{**small, **overrides})
    return CarlaEnv(
        config, seed=7, carla_module=CarlaWithFakeCommands(), client_factory=server.client,
        sleep=(sleeps.append if sleeps is not None else lambda s: None),
    )


def ticks(server):
    return sum(1 for c in server.calls if isinstance(c, tuple) and c[0] == "tick")


def test_reset_applies_sync_settings_seeded_tm_and_spawns_traffic_once():
    server = FakeServer()
    env = make_env(server)
    obs, info = env.reset()
    assert env.observation_space.contains(obs)
    assert ("apply_settings", True, 0.05) in server.calls
    assert ("tm_sync", True) in server.calls and ("tm_seed", 7) in server.calls and ("tm_port", 8000) in server.calls
    assert info["npc_count"] == 2 and info["carla_failures"] == 0
    env.reset()
    env.reset()
    assert sum(1 for c in server.calls if c[0] == "spawn_npc") == 2  # once per connection, not per reset
    assert len([a for a in server.actors.values() if a.type_id.startswith("vehicle.tesla")]) == 1


def test_npcs_keep_clear_of_the_ego_spawn_point_not_of_the_map_origin():
    server = FakeServer()
    env = make_env(server, spawn_point_index=1)  # the ego starts at x=500; spawn points lie at x=0, 500, 1000
    env.reset()
    npcs = [a for a in server.actors.values() if a.type_id in ("vehicle.a", "vehicle.b")]
    assert sorted(a.transform.location.x for a in npcs) == [0.0, 1000.0]


def tesla_ids(server):
    return [a.id for a in server.actors.values() if a.type_id.startswith("vehicle.tesla")]


def test_leftovers_of_a_killed_td3_jax_process_are_destroyed_on_connect_other_clients_actors_kept():
    server = FakeServer()
    finished = subprocess.Popen(["true"])
    finished.wait()
    dead, live = f"{socket.gethostname()}/{finished.pid}/0", f"{socket.gethostname()}/{os.getppid()}/0"
    start = carla.Transform(carla.Location(x=0.0, y=0.0, z=0.5))  # where the env's ego will spawn
    killed_ego = server.spawn("vehicle.tesla.model3", start, None, {"role_name": f"td3_jax_ego@{dead}"})
    killed_camera = server.spawn(
        "sensor.camera.rgb", carla.Transform(), killed_ego, {"role_name": f"td3_jax_sensor@{dead}"}
    )
    far = carla.Transform(carla.Location(x=1000.0, y=0.0, z=0.5))
    kept = [
        server.spawn("vehicle.a", far, None, {"role_name": "hero"}).id,
        server.spawn("sensor.other.collision", far, None, {"role_name": f"td3_jax_sensor@{live}"}).id,
        server.spawn("sensor.other.collision", far, None, {"role_name": "td3_jax_sensor@other-host/1/0"}).id,
    ]
    env = make_env(server, spawn_point_index=0, npc_counts=(0, 0, 0))
    env.reset()
    assert killed_ego.id not in server.actors and killed_camera.id not in server.actors
    assert all(i in server.actors for i in kept) and len(tesla_ids(server)) == 1
    assert server.actors[tesla_ids(server)[0]].attributes["role_name"].startswith("td3_jax_ego@")


def test_actors_of_a_session_whose_destroy_timed_out_are_destroyed_at_reconnection():
    server = FakeServer()
    env = make_env(server, spawn_point_index=0)
    env.reset()
    server.hang_ticks, server.fail_destroys = 1, 1
    assert env.step(np.array([0.0, 0.0]))[4]["carla_failure"]
    assert len(tesla_ids(server)) == 1  # the destroy timed out: the old ego blocks its spawn point
    env.reset()
    assert len(tesla_ids(server)) == 1 and len(server.actors) == 1 + 3 + 2  # ego, its 3 sensors, 2 NPCs
    env.step(np.array([0.0, 0.0]))


def test_a_second_env_on_the_same_server_leaves_the_first_ones_actors_alone():
    server = FakeServer()
    training, evaluation = (make_env(server, spawn_point_index=i, npc_counts=(0, 0, 0)) for i in (0, 2))
    training.reset()
    evaluation.reset()
    assert len(tesla_ids(server)) == 2
    assert not training.step(np.array([0.0, 0.0]))[4]["carla_failure"]


def test_the_first_observation_comes_once_the_dropped_ego_rests_on_the_road():
    server = FakeServer()
    env = make_env(server)
    for _ in range(2):  # a reset of a later episode lifts and drops the ego again
        start = ticks(server)
        env.reset()
        ego = server.actors[tesla_ids(server)[0]]
        assert ego.transform.location.z == 0.0 and ego.vertical_speed == 0.0
        assert 7 <= ticks(server) - start <= 10  # a 0.5 m drop takes ~0.32 s = 7 ticks, then 2 at rest
        env.step(np.array([0.0, 0.5]))


def test_settling_is_bounded_when_the_ego_never_lands():
    server = FakeServer()
    server.road_z = -math.inf
    env = make_env(server, settle_max_ticks=12, npc_counts=(0, 0, 0))
    env.reset()
    assert ticks(server) == 12


def test_respawning_npcs_every_reset_when_configured():
    server = FakeServer()
    env = make_env(server, respawn_npcs_every_reset=True)
    env.reset()
    env.reset()
    assert sum(1 for c in server.calls if c[0] == "spawn_npc") == 4
    assert sum(1 for c in server.calls if c[0] == "destroy") == 2


def test_every_observation_shows_the_frame_of_its_own_tick():
    server = FakeServer()
    env = make_env(server)
    obs, _ = env.reset()
    for step in range(6):
        obs, reward, terminated, truncated, info = env.step(np.array([0.0, 0.5]))
        assert obs["image"][0, 0, -1] == info["frame"] % 256
        if step >= 3:  # the stack holds four frames of consecutive ticks, no repeats, no gaps
            assert list(obs["image"][0, 0, :]) == [(info["frame"] - k) % 256 for k in (3, 2, 1, 0)]


def test_step_info_and_reward_from_measurements():
    server = FakeServer()
    env = make_env(server)
    env.reset()
    _, reward, terminated, truncated, info = env.step(np.array([0.0, 1.0]))
    assert not terminated and not truncated and info["carla_failure"] is False
    assert set(info["reward_components"]) == set(COMPONENTS)
    assert SHARED_INFO_KEYS <= set(info)
    assert reward == pytest.approx(sum(info["reward_components"].values()))
    assert info["speed_mps"] == pytest.approx(10.0) and info["route_progress"] > 0
    assert info["distance_travelled_m"] == pytest.approx(0.5)
    # Steering right in CARLA moves the car right of the lane: negative lateral deviation.
    for _ in range(2):
        _, _, _, _, info = env.step(np.array([1.0, 0.0]))
    assert info["lateral_deviation_m"] == pytest.approx(-1.0)


def test_collision_terminates():
    server = FakeServer()
    env = make_env(server)
    env.reset()
    server.collide_at = {server.frame + 2}
    env.step(np.array([0.0, 0.0]))
    _, reward, terminated, truncated, info = env.step(np.array([0.0, 0.0]))
    assert terminated and not truncated and info["termination_reason"] == "collision"
    assert info["reward_components"]["safety"] < 0
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.array([0.0, 0.0]))


def test_events_that_arrive_after_the_tick_count_in_the_step_of_their_frame():
    server = FakeServer()
    server.event_delay_s = 0.02
    env = make_env(server, event_wait_s=0.2)
    env.reset()
    server.invade_at, server.collide_at = {server.frame + 1}, {server.frame + 2}
    _, _, terminated, _, info = env.step(np.array([0.0, 0.0]))
    assert info["lane_invasion"] and not terminated
    _, _, terminated, _, info = env.step(np.array([0.0, 0.0]))
    assert terminated and info["termination_reason"] == "collision" and not info["lane_invasion"]


def test_action_repeat_equals_repeated_ticks_until_the_episode_ends():
    held_server, single_server = FakeServer(), FakeServer()
    held, single = make_env(held_server, action_repeat=3), make_env(single_server)
    held.reset(), single.reset()
    for server in (held_server, single_server):
        server.invade_at, server.collide_at = {server.frame + 4}, {server.frame + 8}
    for action, ticks_run in ((np.array([0.2, 0.5]), 3), (np.array([-0.1, 1.0]), 3), (np.array([0.0, 0.3]), 2)):
        obs, reward, terminated, truncated, info = held.step(action)
        total, components, invaded = 0.0, dict.fromkeys(info["reward_components"], 0.0), False
        for _ in range(ticks_run):
            single_obs, single_reward, single_terminated, _, single_info = single.step(action)
            total += single_reward
            components = {k: v + single_info["reward_components"][k] for k, v in components.items()}
            invaded |= single_info["lane_invasion"]
        assert reward == pytest.approx(total) and info["reward_components"] == pytest.approx(components)
        assert info["lane_invasion"] == invaded and terminated == single_terminated
        assert info["frame"] == single_info["frame"] and obs["image"][0, 0, -1] == info["frame"] % 256
        np.testing.assert_allclose(obs["vector"], single_obs["vector"])
    assert terminated and info["termination_reason"] == "collision" and ticks(held_server) == ticks(single_server)


def test_the_time_limit_counts_env_steps_of_action_repeat_ticks():
    server = FakeServer()
    env = make_env(server, action_repeat=4, max_episode_steps=2)
    env.reset()
    start = ticks(server)
    assert env.step(np.array([0.0, 0.3]))[2:4] == (False, False)
    _, _, terminated, truncated, info = env.step(np.array([0.0, 0.3]))
    assert (terminated, truncated, info["termination_reason"]) == (False, True, "time_limit")
    assert ticks(server) - start == 8


def test_tick_timeout_truncates_marks_and_reconnects_with_fresh_actors():
    server = FakeServer()
    env = make_env(server, tick_timeout_s=3.0)
    env.reset()
    obs, *_ = env.step(np.array([0.0, 0.5]))
    old_ego = [a.id for a in server.actors.values() if a.type_id.startswith("vehicle.tesla")]
    server.hang_ticks = 1
    failed_obs, reward, terminated, truncated, info = env.step(np.array([0.0, 0.5]))
    assert (reward, terminated, truncated) == (0.0, False, True)
    assert info["carla_failure"] is True and info["carla_failures"] == 1
    assert info["termination_reason"] == "carla_failure" and "time-out" in info["carla_error"]
    np.testing.assert_array_equal(failed_obs["image"], obs["image"])
    assert ("tick", 3.0) in server.calls
    _, info = env.reset()
    assert server.clients == 2 and info["carla_failures"] == 1
    assert old_ego[0] not in server.actors  # the old ego was destroyed, a new one spawned
    assert len([a for a in server.actors.values() if a.type_id.startswith("vehicle.tesla")]) == 1
    env.step(np.array([0.0, 0.5]))


def test_reconnection_backs_off_and_gives_up_with_a_clear_error():
    server = FakeServer()
    sleeps = []
    env = make_env(server, sleeps, reconnect_attempts=3, reconnect_backoff_s=2.0)
    env.reset()
    server.hang_ticks = 1
    env.step(np.array([0.0, 0.0]))
    server.refuse_connections = 2
    env.reset()
    assert sleeps == [2.0, 4.0]
    server.hang_ticks = 1
    env.step(np.array([0.0, 0.0]))
    server.refuse_connections = 10
    with pytest.raises(CarlaFailureError, match="did not come back after 3 reconnection attempts"):
        env.reset()


def test_too_many_failures_stop_training_and_restore_settings():
    server = FakeServer()
    env = make_env(server, max_failures=2)
    env.reset()
    for _ in range(2):
        server.hang_ticks = 1
        assert env.step(np.array([0.0, 0.0]))[4]["carla_failure"]
        env.reset()
    server.hang_ticks = 1
    with pytest.raises(CarlaFailureError, match="failed 3 times") as raised:
        env.step(np.array([0.0, 0.0]))
    assert "\n" not in str(raised.value) and "checkpoint" in str(raised.value)
    assert server.settings.synchronous_mode is False


def test_no_server_at_first_reset_is_a_one_line_error_without_retries():
    server = FakeServer()
    server.refuse_connections = 100
    sleeps = []
    env = make_env(server, sleeps, host="sim.example", port=2345)
    with pytest.raises(CarlaUnavailableError, match="sim.example:2345") as raised:
        env.reset()
    assert sleeps == [] and "\n" not in str(raised.value)


def test_close_and_garbage_collection_restore_async_settings():
    server = FakeServer()
    env = make_env(server)
    env.reset()
    assert server.settings.synchronous_mode is True
    env.close()
    assert server.settings.synchronous_mode is False and ("tm_sync", False) in server.calls
    assert [a for a in server.actors.values()] == []
    env = make_env(server)
    env.reset()
    del env
    gc.collect()
    assert server.settings.synchronous_mode is False


def test_make_carla_env_reads_the_shared_env_settings(monkeypatch):
    monkeypatch.delenv("XLA_PYTHON_CLIENT_PREALLOCATE", raising=False)
    shared = SimpleNamespace(carla=CarlaConfig(), stack=3, seed=5)
    env = make_carla_env(shared)
    assert env.observation_space["image"].shape == (84, 84, 3)
    import os

    assert os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false"
    assert math.isfinite(env.config.connect_timeout_s)


def test_the_observation_scales_reach_the_carla_vector():
    from td3_jax.envs.config import EnvConfig
    from td3_jax.envs.observation import ObservationConfig

    def drive(observation):
        small = CarlaConfig(npc_counts=(2, 3, 4), route_length_m=100.0, camera_width=8, camera_height=6)
        env = make_carla_env(
            EnvConfig(backend="carla", carla=small, seed=7, observation=observation),
            carla_module=CarlaWithFakeCommands(), client_factory=FakeServer().client, sleep=lambda s: None,
        )
        env.reset()
        for _ in range(2):
            obs, _, _, _, info = env.step(np.array([1.0, 0.0]))
        env.close()
        return obs["vector"], info

    scale = ObservationConfig(deviation_scale_m=0.25, heading_scale_rad=0.05)
    scaled, info = drive(scale)
    default, _ = drive(ObservationConfig())
    assert info["lateral_deviation_m"] != 0.0
    assert scaled[1] * scale.deviation_scale_m == pytest.approx(info["lateral_deviation_m"], rel=1e-5)
    assert scaled[2] * scale.heading_scale_rad == pytest.approx(info["heading_error_rad"], rel=1e-5, abs=1e-6)
    np.testing.assert_array_equal(np.delete(scaled, [1, 2]), np.delete(default, [1, 2]))  # speed and points unchanged


def test_the_previous_action_ends_the_carla_vector_and_each_steer_change_is_paid_once_per_env_step():
    from td3_jax.envs.config import EnvConfig
    from td3_jax.envs.observation import ObservationConfig
    from td3_jax.envs.reward import RewardConfig

    # Moving throughout: at a standstill steering is free.
    actions = [np.array([0.1, 0.5]), np.array([-0.3, 0.5]), np.array([2.0, 0.4]), np.array([0.2, 0.3])]

    def drive(observation, reward):
        small = CarlaConfig(npc_counts=(2, 3, 4), route_length_m=100.0, camera_width=8, camera_height=6,
                            action_repeat=3)
        env = make_carla_env(
            EnvConfig(backend="carla", carla=small, seed=7, observation=observation, reward=reward),
            carla_module=CarlaWithFakeCommands(), client_factory=FakeServer().client, sleep=lambda s: None,
        )
        first, _ = env.reset()
        steps = [env.step(action) for action in actions]
        env.close()
        return first, steps

    first, paid = drive(ObservationConfig(previous_action=True), RewardConfig(steering_change_penalty=-2.0))
    _, base = drive(ObservationConfig(), RewardConfig())
    np.testing.assert_array_equal(first["vector"][-2:], 0.0)
    previous = 0.0
    for action, (obs, reward, terminated, truncated, info), (base_obs, base_reward, *_, base_info) in zip(
        actions, paid, base
    ):
        assert not (terminated or truncated)
        applied = np.clip(action, -1.0, 1.0)
        np.testing.assert_allclose(obs["vector"][-2:], applied, rtol=1e-6)
        np.testing.assert_array_equal(obs["vector"][:-2], base_obs["vector"])  # the same drive
        penalty = -2.0 * abs(applied[0] - previous)
        assert reward == pytest.approx(base_reward + penalty)
        comfort = info["reward_components"]["comfort"]
        assert comfort == pytest.approx(base_info["reward_components"]["comfort"] + penalty)
        previous = applied[0]
