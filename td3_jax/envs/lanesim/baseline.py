"""Classical baseline driver: pure pursuit for steering, PID for speed. Host-side code.

Like the original's baseline it drives through the env interface only: it
reads the look-ahead points and speed from the observation vector (layout in
`td3_jax.envs.observation`) and, when the backend reports them, the gap to
and speed of the vehicle ahead from info (``obstacle_distance_m``,
``obstacle_speed_mps``). It outputs ordinary actions; nothing is teleported.

Speed target: `target_speed_mps`, lowered ahead of curves so that the lateral
acceleration stays below `max_lateral_accel_mps2` (braking at
`comfort_decel_mps2` to reach it), and lowered behind a slower vehicle so that
the car could stop `min_gap_m` behind it.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from td3_jax.envs.config import LaneSimConfig
from td3_jax.envs.observation import ObservationConfig, speed_and_points


@dataclasses.dataclass(frozen=True)
class BaselineConfig:
    """Gains and limits of the pure-pursuit + PID driver (original baseline values where it had them)."""

    target_speed_mps: float = 8.33
    """Cruise speed (30 km/h)."""
    wheelbase_m: float = 2.875
    """Wheelbase assumed by pure pursuit (the rear axle is half of it behind the centre)."""
    max_steer_deg: float = 35.0
    """Front-wheel angle of steer = 1 in the driven env."""
    lookahead_min_m: float = 6.0
    """Smallest pure-pursuit look-ahead distance."""
    lookahead_gain_s: float = 0.8
    """Look-ahead distance per m/s of speed."""
    kp: float = 0.5
    """Proportional gain of the speed PID (action units per m/s)."""
    ki: float = 0.3
    """Integral gain of the speed PID."""
    kd: float = 0.13
    """Derivative gain of the speed PID."""
    integral_limits: tuple[float, float] = (0.0, 10.0)
    """Clamp of the PID integrator (m)."""
    max_lateral_accel_mps2: float = 2.5
    """Lateral acceleration the speed profile allows in curves."""
    comfort_decel_mps2: float = 1.5
    """Deceleration the speed profile plans with (curves and the vehicle ahead)."""
    min_gap_m: float = 6.0
    """Bumper gap kept to a stopped vehicle ahead."""
    time_gap_s: float = 1.5
    """Time gap kept to a moving vehicle ahead."""
    dt: float = 0.05
    """Control period, s (the env's step)."""

    def __post_init__(self):
        for name in ("target_speed_mps", "wheelbase_m", "max_steer_deg", "lookahead_min_m",
                     "max_lateral_accel_mps2", "comfort_decel_mps2", "dt"):
            if not getattr(self, name) > 0:
                raise ValueError(f"baseline.{name} must be > 0, got {getattr(self, name)}")
        for name in ("lookahead_gain_s", "kp", "ki", "kd", "min_gap_m", "time_gap_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"baseline.{name} must be >= 0, got {getattr(self, name)}")
        low, high = self.integral_limits
        if not low <= high:
            raise ValueError(
                f"baseline.integral_limits must be (low, high) with low <= high, got {self.integral_limits}"
            )


def for_lanesim(cfg: LaneSimConfig, **changes: Any) -> BaselineConfig:
    """A `BaselineConfig` whose vehicle geometry and control period match the simulator's `cfg`."""
    return BaselineConfig(
        wheelbase_m=cfg.wheelbase_m, max_steer_deg=cfg.max_steer_deg, dt=cfg.dt * cfg.action_repeat, **changes
    )


class BaselineController:
    """Stateful driver; call `reset` at every episode start and `act` every step."""

    def __init__(self, cfg: BaselineConfig = BaselineConfig(), observation: ObservationConfig = ObservationConfig()):
        self.cfg = cfg
        self.observation = observation  # the vector's layout
        self.reset()

    def reset(self) -> None:
        """Clears the PID state."""
        self._integral = 0.0
        self._prev_error: float | None = None

    def act(self, obs: dict[str, np.ndarray], info: dict[str, Any] | None = None) -> np.ndarray:
        """Action for one observation.

        Args:
          obs: {"vector": (3 + 2W [+ 2],) float32, ...} of one env, laid out as `self.observation` says.
          info: the last step's info (may be empty after a reset).

        Returns:
          (2,) float32 (steer, throttle_brake) in [-1, 1].
        """
        speed, points = speed_and_points(obs["vector"], self.observation)
        info = info or {}
        steer = self.steer(points, speed)
        target = min(
            self.curve_speed(points),
            self.follow_speed(
                float(info.get("obstacle_distance_m", math.inf)), float(info.get("obstacle_speed_mps", 0.0)), speed
            ),
        )
        return np.array([steer, self.throttle(target, speed)], np.float32)

    def steer(self, points: np.ndarray, speed: float) -> float:
        """Pure pursuit towards the look-ahead point on the polyline of `points` (vehicle frame, m).

        Returns the steer action in [-1, 1] (+1 full right).
        """
        cfg = self.cfg
        rear = np.array([-0.5 * cfg.wheelbase_m, 0.0])
        path = np.concatenate([np.zeros((1, 2)), points]) - rear
        lookahead = max(cfg.lookahead_min_m, cfg.lookahead_gain_s * speed)
        distance = np.hypot(path[:, 0], path[:, 1])
        beyond = np.flatnonzero(distance >= lookahead)
        if len(beyond) == 0:
            target = path[-1]
        elif beyond[0] == 0:
            target = path[0]
        else:
            i = beyond[0]
            # Interpolate between the last point inside and the first outside the circle.
            frac = (lookahead - distance[i - 1]) / max(distance[i] - distance[i - 1], 1e-6)
            target = path[i - 1] + frac * (path[i] - path[i - 1])
        alpha = math.atan2(target[1], target[0])
        delta = math.atan2(2.0 * cfg.wheelbase_m * math.sin(alpha), lookahead)
        # delta is positive to the left (vehicle frame y left); the action's steer +1 turns right.
        return float(np.clip(-delta / math.radians(cfg.max_steer_deg), -1.0, 1.0))

    def curve_speed(self, points: np.ndarray) -> float:
        """Highest speed from which the car can brake to every upcoming curve's comfortable speed."""
        cfg = self.cfg
        steps = np.diff(np.concatenate([np.zeros((1, 2)), points]), axis=0)
        lengths = np.hypot(steps[:, 0], steps[:, 1])
        moving = lengths > 1e-3
        if moving.sum() < 2:
            return cfg.target_speed_mps
        steps, lengths = steps[moving], lengths[moving]
        angles = np.unwrap(np.arctan2(steps[:, 1], steps[:, 0]))
        curvature = np.abs(np.diff(angles)) / lengths[1:]
        distance = np.cumsum(lengths)[:-1]
        curve = np.sqrt(cfg.max_lateral_accel_mps2 / np.maximum(curvature, 1e-6))
        allowed = np.sqrt(curve**2 + 2.0 * cfg.comfort_decel_mps2 * distance)
        return float(min(cfg.target_speed_mps, allowed.min()))

    def follow_speed(self, gap: float, leader_speed: float, speed: float) -> float:
        """Speed that keeps the time gap to the vehicle ahead and could still stop min_gap behind it."""
        cfg = self.cfg
        if not math.isfinite(gap):
            return cfg.target_speed_mps
        leader = max(leader_speed, 0.0)
        room = max(gap - cfg.min_gap_m, 0.0)
        stopping = math.sqrt(leader**2 + 2.0 * cfg.comfort_decel_mps2 * room)
        headway = leader + (room - cfg.time_gap_s * leader) / max(cfg.time_gap_s, cfg.dt)
        return max(min(stopping, headway), 0.0)

    def throttle(self, target: float, speed: float) -> float:
        """PID on the speed error; positive output is throttle, negative brake."""
        cfg = self.cfg
        error = target - speed
        self._integral = float(np.clip(self._integral + error * cfg.dt, *cfg.integral_limits))
        derivative = 0.0 if self._prev_error is None else (error - self._prev_error) / cfg.dt
        self._prev_error = error
        return float(np.clip(cfg.kp * error + cfg.ki * self._integral + cfg.kd * derivative, -1.0, 1.0))


def run_episode(env: Any, controller: BaselineController, seed: int | None = None) -> dict[str, float]:
    """Drives one episode of a single (non-vector) env.

    Returns:
      success, collision, lane invasions, lateral RMSE (m), mean speed (m/s),
      distance (m), return, length and the termination reason.
    """
    obs, info = env.reset(seed=seed)
    controller.reset()
    deviations, speeds, invasions, total, length = [], [], 0, 0.0, 0
    while True:
        obs, reward, terminated, truncated, info = env.step(controller.act(obs, info))
        deviations.append(info["lateral_deviation_m"])
        speeds.append(info["speed_mps"])
        invasions += int(info["lane_invasion"])
        total += reward
        length += 1
        if terminated or truncated:
            break
    return {
        "success": float(info.get("success", info.get("termination_reason") == "route_completed")),
        "collision": float(info["collision"]),
        "lane_invasions": float(invasions),
        "lateral_rmse_m": float(np.sqrt(np.mean(np.square(deviations)))),
        "mean_speed_mps": float(np.mean(speeds)),
        "distance_m": float(info.get("distance_travelled_m", np.nan)),
        "return": float(total),
        "length": float(length),
        "termination_reason": info["termination_reason"],
    }
