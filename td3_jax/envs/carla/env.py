"""The CARLA 0.9.16 backend of the lane-keeping env.

Entry point for `td3_jax.envs.factory`::

    make_carla_env(config) -> CarlaEnv (a gymnasium.Env)

`config` is a `CarlaConfig`, or any object with a `carla: CarlaConfig`
attribute and optionally `stack: int` (frames per observation), `seed: int`
(Traffic Manager and spawn draws) and `reward: RewardConfig`. Observation and
action spaces are those of `td3_jax.envs.spaces`; `info` carries the same keys
as the embedded simulator.

Failure contract. A tick or sensor timeout, or a lost connection, ends the
episode at once: `step` returns the last good observation, reward 0.0,
terminated False, truncated True, and ``info["carla_failure"] = True``. That
transition is not a real one: the training loop must not store it, and must
call `reset`, which reconnects with backoff and rebuilds the actors.
``info["carla_failures"]`` counts these events over the env's life; after
`CarlaConfig.max_failures` of them, or when a reconnection gives up, the env
raises `CarlaFailureError` (a `td3_jax.errors.UserError`: one line, exit code 2)
so that training stops and can be resumed from its last checkpoint. Without a
server, the first `reset` raises `CarlaUnavailableError` within
`connect_timeout_s`.

Host-side code. `carla` is imported only when an env is built.
"""

from __future__ import annotations

import logging
import math
import os
import time
import weakref
from typing import Any, Callable

import gymnasium as gym
import numpy as np

from td3_jax.envs.carla import logic
from td3_jax.envs.carla.config import CarlaConfig
from td3_jax.envs.carla.client import CarlaSession, Reading, Route, vehicle_control
from td3_jax.envs.observation import ObservationConfig, build_vector
from td3_jax.envs.reward import Measurements, RewardConfig, add_departure_penalty, compute_reward
from td3_jax.envs.spaces import DEFAULT_STACK, FrameStack, action_space, observation_space
from td3_jax.errors import UserError

log = logging.getLogger(__name__)



class CarlaUnavailableError(UserError):
    """No CARLA server answered at the configured host and port."""


class CarlaFailureError(UserError):
    """CARLA failed more often than configured, or could not be reconnected."""


def _unavailable_message(config: CarlaConfig, error: Exception) -> str:
    return (
        f"no CARLA server at {config.host}:{config.port} (no answer within {config.connect_timeout_s:g} s: "
        f"{str(error).split(',')[0]}); start one with `CarlaUE4.sh -RenderOffScreen -quality-level=Low` or "
        f"`docker run --rm --gpus all --net=host carlasim/carla:0.9.16 bash CarlaUE4.sh -RenderOffScreen`, "
        f"set carla.host/carla.port to it, or train on the embedded simulator instead "
        f"(leave out the carla backend; see docs/carla.md)"
    )


def termination(
    collided: bool, lateral: float, arc: float, route_length: float, steps: int, config: CarlaConfig
) -> tuple[bool, bool, str]:
    """(terminated, truncated, reason) after a step; reason is "" while the episode goes on.

    Collision, leaving the lane by more than `offroad_limit_m` and
    completing the route end the episode (no bootstrap); the step limit
    truncates it (the target bootstraps through it).
    """
    if collided:
        return True, False, "collision"
    if abs(lateral) > config.offroad_limit_m:
        return True, False, "off_road"
    if arc >= route_length - config.goal_tolerance_m:
        return True, False, "route_completed"
    if steps >= config.max_episode_steps:
        return False, True, "time_limit"
    return False, False, ""


class _Resources:
    """What must be released on every exit path; the env's finalizer closes it without the env."""

    def __init__(self):
        self.session: CarlaSession | None = None
        self.original_settings: Any = None

    def close(self, restore: bool = True) -> None:
        if self.session is not None:
            if self.original_settings is None:
                self.original_settings = self.session.original_settings
            self.session.close(restore=restore)
            self.session = None


class CarlaEnv(gym.Env):
    """Lane keeping in CARLA: one ego, an RGB camera, collision and lane-invasion sensors, NPC traffic.

    Host-side. Build it with `make_carla_env`; the connection opens on the first
    `reset`. See the module docstring for the failure contract.
    """

    metadata = {"render_modes": []}

    def __init__(
        self,
        config: CarlaConfig,
        reward: RewardConfig = RewardConfig(),
        stack: int = DEFAULT_STACK,
        seed: int = 0,
        carla_module: Any = None,
        client_factory: Callable[[str, int], Any] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        observation: ObservationConfig = ObservationConfig(),
    ):
        """
        Args:
          config: the CARLA settings.
          reward: weights and thresholds of the shared reward.
          stack: frames per observation.
          seed: seeds the Traffic Manager and, until `reset(seed=...)`, spawn and route draws.
          carla_module: the `carla` module; None imports it.
          client_factory: builds a client from (host, port); None uses `carla.Client`.
          sleep: waits between reconnection attempts.
          observation: scales and layout of the observation vector (shared with lanesim).
        """
        if carla_module is None:
            import carla as carla_module  # noqa: PLC0415 - optional dependency, imported on use
        self.config = config
        self.reward_config = reward
        self.observation_config = observation
        self.observation_space = observation_space(stack, observation.vector_size(config.num_waypoints))
        self.action_space = action_space()
        self._carla = carla_module
        self._client_factory = client_factory or carla_module.Client
        self._sleep = sleep
        self._seed = seed
        self._frames = FrameStack(stack)
        self._res = _Resources()
        self._finalizer = weakref.finalize(self, self._res.close)
        self._connected_once = False
        self._failures = 0
        self._episodes = 0
        self._route: Route | None = None
        self._obs: dict[str, np.ndarray] | None = None
        self.np_random = np.random.default_rng(seed)

    # ------------------------------------------------------------------ gym API

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        """Starts an episode, (re)connecting first if needed. Returns (observation, info)."""
        if seed is not None:
            self.np_random = np.random.default_rng(seed)
        attempts = 0
        while True:
            try:
                return self._start_episode()
            except RuntimeError as error:
                if self._res.session is not None:
                    self._count_failure(error)
                self._res.close(restore=False)
                if not self._connected_once:
                    raise CarlaUnavailableError(_unavailable_message(self.config, error)) from None
                attempts += 1
                if attempts > self.config.reconnect_attempts:
                    self.close()
                    raise CarlaFailureError(
                        f"CARLA at {self.config.host}:{self.config.port} did not come back after "
                        f"{self.config.reconnect_attempts} reconnection attempts ({error}); restart the "
                        f"server and resume training from the last checkpoint"
                    ) from None
                wait = self.config.reconnect_backoff_s * 2 ** (attempts - 1)
                log.warning("CARLA reconnection attempt %d failed (%s); next in %.0f s", attempts, error, wait)
                self._sleep(wait)

    def step(self, action: np.ndarray):
        """Applies one action for `action_repeat` fixed steps. Returns (obs, reward, terminated, truncated, info).

        The reward and its components are summed over the ticks up to and
        including the one that ended the episode (the rest of the repeat is
        not run); collision and lane invasion report whether one happened in
        any of them; every other info entry, the termination reason and the
        observation are those of the last tick run. `max_episode_steps`
        counts env steps.
        """
        if self._route is None:
            raise RuntimeError("call reset() before step(), and after an episode ends")
        control = vehicle_control(self._carla, action)
        action = np.clip(np.asarray(action, np.float64).reshape(2), -1.0, 1.0)  # as applied; vehicle_control checked it
        steer_change = abs(action[0] - self._prev_action[0])
        total, components, collided, invaded, impulse = 0.0, None, False, False, 0.0
        for tick in range(self.config.action_repeat):
            try:
                reading = self._res.session.tick(control)
            except RuntimeError as error:
                return self._interrupted(error)
            measurements, tracking = self._measure(reading, steer_change if tick == 0 else 0.0)
            tick_total, weighted = compute_reward(measurements, self.reward_config)
            steps_done = self._steps + (tick == self.config.action_repeat - 1)  # the env step counts at its last tick
            terminated, truncated, reason = termination(
                reading.collided, tracking["lateral"], tracking["arc"], self._route.dense_arcs[-1], steps_done,
                self.config,
            )
            tick_total, weighted = add_departure_penalty(tick_total, weighted, reason == "off_road", self.reward_config)
            total += float(tick_total)
            components = weighted if components is None else {k: components[k] + weighted[k] for k in components}
            collided, invaded = collided or reading.collided, invaded or reading.lane_invasion
            impulse += reading.collision_impulse
            if terminated or truncated:
                break
        self._steps += 1
        self._prev_action = action
        obs = self._observe(reading, tracking, push=True)
        info = self._info(reading, measurements, tracking, components, reason)
        info.update(collision=collided, lane_invasion=invaded, collision_impulse=impulse)
        if terminated or truncated:
            self._route = None
        return obs, total, terminated, truncated, info

    def close(self) -> None:
        """Destroys the actors and restores the server's world settings."""
        self._res.close(restore=True)
        self._route = None

    # ------------------------------------------------------------------ episode

    def _start_episode(self):
        cfg = self.config
        carla = self._carla
        if self._res.session is None:
            self._res.session = CarlaSession.connect(
                carla, self._client_factory, cfg, self._seed, self._res.original_settings
            )
            self._res.original_settings = self._res.session.original_settings
            self._connected_once = True
        session = self._res.session
        fresh = session.ego is None
        if not fresh and cfg.respawn_npcs_every_reset:
            session.destroy_npcs()
        occupied = session.npc_positions() if session.npc_ids else np.zeros((0, 2))
        spawn = logic.pick_spawn(
            session.spawn_xy, occupied, cfg.npc_min_distance_m, cfg.spawn_point_index, self.np_random
        )
        self._route = None
        route = session.build_route(spawn, self.np_random)
        session.place_ego(route.start)
        if fresh or cfg.respawn_npcs_every_reset:
            session.spawn_npcs(cfg.num_npcs(), self.np_random, route.start)
        reading = self._settle(session)
        session.forget_events()
        self._route = route
        self._steps = 0
        projection = logic.project_to_route(route.dense, route.dense_arcs, reading.position)
        self._segment = projection.segment
        self._arc = self._furthest = projection.arc
        self._goal_paid = False
        self._odometer, self._position = 0.0, reading.position
        self._prev_accel, self._prev_lateral_accel = reading.accel, 0.0
        self._prev_action = np.zeros(2)
        self._episodes += 1
        tracking = self._track(reading, projection)
        obs = self._observe(reading, tracking, push=False)
        info = {
            "route_length_m": float(route.dense_arcs[-1]),
            "npc_count": len(session.npc_ids),
            "start_pose": (float(reading.position[0]), float(reading.position[1]), float(reading.yaw)),
            "episode": self._episodes,
            "spawn_point_index": spawn,
            "carla_failures": self._failures,
        }
        return obs, info

    def _settle(self, session: CarlaSession) -> Reading:
        """Ticks at rest until the ego, dropped from its lifted spawn pose, stands on the road.

        The drop takes ~0.3 s; without waiting the first steps happen in the air.
        """
        cfg = self.config
        heights, vertical_speeds = [], []
        for tick in range(cfg.settle_max_ticks):
            reading = session.tick(self._carla.VehicleControl())
            heights.append(reading.height)
            vertical_speeds.append(reading.vertical_speed)
            if tick + 1 >= cfg.settle_ticks and logic.grounded(heights, vertical_speeds):
                return reading
        log.warning("the ego was not at rest on the road after %d ticks (carla.settle_max_ticks)", tick + 1)
        return reading

    def _track(self, reading: Reading, projection: logic.RouteProjection) -> dict[str, float]:
        route = self._route
        speed = float(np.linalg.norm(reading.velocity))
        return {
            "arc": projection.arc,
            "lateral": projection.lateral,
            "heading": logic.heading_error(reading.yaw, projection.route_yaw),
            "half_width": float(route.half_widths[projection.segment]),
            "speed": speed,
        }

    def _measure(self, reading: Reading, steer_change: float) -> tuple[Measurements, dict[str, float]]:
        route = self._route
        projection = logic.project_to_route(route.dense, route.dense_arcs, reading.position, self._segment)
        self._segment = projection.segment
        tracking = self._track(reading, projection)
        progress_m = projection.arc - self._arc
        self._arc = projection.arc
        passed, self._furthest = logic.newly_passed(route.waypoint_arcs[1:], self._furthest, projection.arc)
        remaining = max(float(route.dense_arcs[-1]) - projection.arc, 0.0)
        goal = not self._goal_paid and remaining <= self.config.goal_tolerance_m
        self._goal_paid |= goal
        heading_vec = np.array([math.cos(reading.yaw), math.sin(reading.yaw)])
        gap, ttc, leader_speed = logic.obstacle_ahead(
            reading.position, reading.yaw, float(reading.velocity @ heading_vec), reading.others_xy,
            reading.others_velocity, tracking["half_width"], self._res.session.bumper_offset(),
        )
        lateral_accel = abs(tracking["speed"] * reading.yaw_rate)
        self._odometer += float(np.linalg.norm(reading.position - self._position))
        self._position = reading.position
        completed = remaining <= self.config.goal_tolerance_m
        tracking.update(gap=gap, ttc=ttc, leader_speed=leader_speed, completed=completed)
        measurements = Measurements(
            speed=np.float64(tracking["speed"]),
            lateral_deviation=np.float64(tracking["lateral"]),
            heading_error=np.float64(tracking["heading"]),
            lane_half_width=np.float64(tracking["half_width"]),
            lane_invasion=np.bool_(reading.lane_invasion),
            accel=np.float64(reading.accel),
            prev_accel=np.float64(self._prev_accel),
            lateral_accel=np.float64(lateral_accel),
            prev_lateral_accel=np.float64(self._prev_lateral_accel),
            dt=self.config.fixed_delta_seconds,
            obstacle_distance=np.float64(gap),
            time_to_collision=np.float64(ttc),
            collision=np.bool_(reading.collided),
            offroad=np.bool_(reading.offroad),
            progress_m=np.float64(progress_m),
            waypoints_passed=np.int64(passed),
            goal_reached=np.bool_(goal),
            distance_to_goal=np.float64(remaining),
            steer_change=np.float64(steer_change),
        )
        self._prev_accel, self._prev_lateral_accel = reading.accel, lateral_accel
        return measurements, tracking

    def _observe(self, reading: Reading, tracking: dict[str, float], push: bool) -> dict[str, np.ndarray]:
        route = self._route
        ahead = logic.lookahead_points(
            route.dense, route.dense_arcs, tracking["arc"], self.config.num_waypoints, self.config.route_spacing_m
        )
        local = logic.to_vehicle_frame(ahead, reading.position, reading.yaw)
        image = self._frames.push(reading.gray) if push else self._frames.reset(reading.gray)
        self._obs = {
            "image": image,
            "vector": build_vector(
                np.array([tracking["speed"]]), np.array([tracking["lateral"]]), np.array([tracking["heading"]]),
                local[None], self.observation_config, self._prev_action[None],
            )[0],
        }
        return {k: v.copy() for k, v in self._obs.items()}

    def _info(self, reading, measurements, tracking, weighted, reason) -> dict[str, Any]:
        route_length = float(self._route.dense_arcs[-1])
        return {
            "termination_reason": reason,
            "success": bool(tracking["completed"] and not reading.collided),
            "collision": bool(reading.collided),
            "lane_invasion": bool(reading.lane_invasion),
            "offroad": bool(reading.offroad),
            "lateral_deviation_m": tracking["lateral"],
            "heading_error_rad": tracking["heading"],
            "speed_mps": tracking["speed"],
            "distance_travelled_m": self._odometer,
            "route_progress": min(max(tracking["arc"] / route_length, 0.0), 1.0),
            "distance_to_goal_m": float(measurements.distance_to_goal),
            "obstacle_distance_m": tracking["gap"],
            "obstacle_speed_mps": tracking["leader_speed"],
            "time_to_collision_s": tracking["ttc"],
            "reward_components": {k: float(v) for k, v in weighted.items()},
            "collision_impulse": reading.collision_impulse,
            "carla_failure": False,
            "carla_failures": self._failures,
            "frame": reading.frame,
        }

    # ------------------------------------------------------------------ failures

    def _count_failure(self, error: Exception) -> None:
        self._failures += 1
        log.warning("CARLA failure %d of %d allowed: %s", self._failures, self.config.max_failures, error)
        if self._failures > self.config.max_failures:
            self.close()
            raise CarlaFailureError(
                f"CARLA at {self.config.host}:{self.config.port} failed {self._failures} times "
                f"(last: {error}); stopping; check the server and resume training from the last "
                f"checkpoint (carla.max_failures={self.config.max_failures})"
            ) from None

    def _interrupted(self, error: Exception):
        """Ends the episode after a failed tick: last observation, truncated, marked in info."""
        self._count_failure(error)
        self._res.close(restore=False)
        self._route = None
        info = {
            "termination_reason": "carla_failure",
            "carla_failure": True,
            "carla_failures": self._failures,
            "carla_error": str(error),
        }
        return {k: v.copy() for k, v in self._obs.items()}, 0.0, False, True, info


def make_carla_env(config: Any, **connection: Any) -> CarlaEnv:
    """Builds the CARLA env from a `CarlaConfig` or an object with `.carla` (and optional `.stack`, `.seed`, `.reward`,
    `.observation`).

    `connection` (`carla_module`, `client_factory`, `sleep`) goes to `CarlaEnv`;
    `make_env` passes none, so a test that patches this function with
    ``functools.partial(make_carla_env, client_factory=...)`` puts a stand-in
    server under training and evaluation.

    Also sets ``XLA_PYTHON_CLIENT_PREALLOCATE=false`` unless already set, so that
    JAX, if it has not touched the GPU yet, does not take 75% of its memory
    from the simulator.
    """
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    if isinstance(config, CarlaConfig):
        return CarlaEnv(config, **connection)
    kwargs = {name: getattr(config, name) for name in ("stack", "seed", "reward", "observation") if hasattr(config, name)}
    return CarlaEnv(config.carla, **kwargs, **connection)
