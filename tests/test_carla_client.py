"""What the env sends to CARLA, built with the real `carla` classes, and the real client with no server."""

import socket
import subprocess
import time

import carla
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from td3_jax.envs.carla.config import CarlaConfig
from td3_jax.envs.carla.env import CarlaEnv, CarlaUnavailableError
from td3_jax.envs.carla.client import (
    camera_attributes,
    camera_transform,
    clone_settings,
    lifted,
    process_alive,
    restore_settings,
    sync_settings,
    vehicle_control,
)
from td3_jax.errors import UserError


@given(st.floats(-2, 2), st.floats(-2, 2))
def test_vehicle_control_from_an_action(steer, pedal):
    control = vehicle_control(carla, np.array([steer, pedal], np.float32))
    assert isinstance(control, carla.VehicleControl)
    assert control.steer == pytest.approx(np.clip(steer, -1, 1), abs=1e-6)
    assert control.throttle == pytest.approx(max(np.clip(pedal, -1, 1), 0), abs=1e-6)
    assert control.brake == pytest.approx(max(-np.clip(pedal, -1, 1), 0), abs=1e-6)
    assert not control.hand_brake and not control.reverse


def test_sync_settings_keep_rendering_and_cover_the_step_with_substeps():
    current = carla.WorldSettings(no_rendering_mode=True, max_culling_distance=50.0)
    current.max_substeps = 2
    settings = sync_settings(carla, current, 0.05)
    assert isinstance(settings, carla.WorldSettings)
    assert settings.synchronous_mode and not settings.no_rendering_mode
    assert settings.fixed_delta_seconds == pytest.approx(0.05)
    assert settings.max_substeps * settings.max_substep_delta_time >= 0.05 - 1e-9
    assert settings.max_culling_distance == pytest.approx(50.0)
    assert current.synchronous_mode is False  # the original is not modified


def test_restored_settings_are_the_original_ones_never_synchronous():
    original = carla.WorldSettings(fixed_delta_seconds=0.02)
    assert restore_settings(carla, original) == original
    leftover = carla.WorldSettings(synchronous_mode=True, fixed_delta_seconds=0.05)
    restored = restore_settings(carla, leftover)
    assert not restored.synchronous_mode and not restored.fixed_delta_seconds


def _changed(value):
    """A value of the same field type that differs from `value` (None is an unset float)."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 3
    return (value or 0.0) + 0.25


def test_settings_copies_and_restores_keep_every_field_of_the_installed_client():
    blank = carla.WorldSettings()
    fields = [n for n in dir(blank) if not n.startswith("_") and not callable(getattr(blank, n))]
    assert {"tile_stream_distance", "actor_active_distance", "spectator_as_ego"} <= set(fields)
    original = carla.WorldSettings()
    for name in fields:
        setattr(original, name, _changed(getattr(original, name)))
    original.synchronous_mode = False
    for copy in (clone_settings(carla, original), restore_settings(carla, original)):
        assert {n: getattr(copy, n) for n in fields} == pytest.approx({n: getattr(original, n) for n in fields})


def test_camera_pose_and_attributes_come_from_the_config():
    config = CarlaConfig(camera_width=320, camera_height=180, camera_fov=100.0, camera_mount=(1.2, 0.1, 1.8, -10.0))
    pose = camera_transform(carla, config.camera_mount)
    assert isinstance(pose, carla.Transform)
    assert (pose.location.x, pose.location.y, pose.location.z) == pytest.approx((1.2, 0.1, 1.8))
    assert pose.rotation.pitch == pytest.approx(-10.0)
    assert camera_attributes(config) == {
        "image_size_x": "320", "image_size_y": "180", "fov": "100.0", "sensor_tick": "0.0",
    }


def test_spawn_pose_is_lifted_and_level():
    waypoint = carla.Transform(carla.Location(x=3.0, y=-4.0, z=0.2), carla.Rotation(pitch=2.0, yaw=91.0, roll=1.0))
    pose = lifted(carla, waypoint)
    assert (pose.location.x, pose.location.y, pose.location.z) == pytest.approx((3.0, -4.0, 0.7))
    assert (pose.rotation.pitch, pose.rotation.yaw, pose.rotation.roll) == pytest.approx((0.0, 91.0, 0.0))


def test_invalid_configs_are_rejected():
    with pytest.raises(ValueError, match="fixed_delta_seconds"):
        CarlaConfig(fixed_delta_seconds=0.2)
    with pytest.raises(ValueError, match="scenario"):
        CarlaConfig(scenario=3)
    with pytest.raises(ValueError, match="action_repeat"):
        CarlaConfig(action_repeat=0)
    with pytest.raises(ValueError, match="settle_ticks"):
        CarlaConfig(settle_ticks=5, settle_max_ticks=4)
    with pytest.raises(ValueError, match="event_wait_s"):
        CarlaConfig(event_wait_s=-0.1)
    assert [CarlaConfig(scenario=k).num_npcs() for k in range(3)] == [20, 50, 100]


def test_no_server_gives_one_clear_line_within_the_timeout():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = CarlaEnv(CarlaConfig(host="127.0.0.1", port=port, connect_timeout_s=0.5))
    start = time.monotonic()
    with pytest.raises(CarlaUnavailableError) as raised:
        env.reset()
    elapsed = time.monotonic() - start
    message = str(raised.value)
    assert isinstance(raised.value, UserError)
    assert elapsed < 3.0
    assert f"127.0.0.1:{port}" in message and "CarlaUE4.sh -RenderOffScreen" in message
    assert "carlasim/carla:0.9.16" in message and "embedded simulator" in message and "\n" not in message
    env.close()


def test_a_killed_process_is_not_alive_even_before_it_is_reaped():
    child = subprocess.Popen(["sleep", "30"])
    assert process_alive(child.pid)
    child.kill()
    deadline = time.monotonic() + 5.0
    while process_alive(child.pid) and time.monotonic() < deadline:  # a zombie until wait()
        time.sleep(0.01)
    assert not process_alive(child.pid)
    child.wait()
    assert not process_alive(child.pid)
