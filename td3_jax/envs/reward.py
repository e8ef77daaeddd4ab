"""The lane-keeping reward: five weighted components of one step's measurements.

Shared by every driving backend (the embedded simulator and CARLA). Each
component is a pure NumPy function of a `Measurements` record whose fields are
scalars or arrays of one common shape (one entry per env), so the same code
scores one CARLA car or a batch of simulated ones. Host-side code.

`termination` holds the embedded simulator's episode rules; the CARLA backend applies the same rules in its own.

The components, weights and thresholds follow the original system's HEAD
(``total = sum_i weight_i * component_i``; efficiency 2, lane_keeping 2,
comfort 1, safety 1, progress 3). Deliberate differences:

* The waypoint bonus is paid once per route waypoint passed (the original paid
  it for every centimetre of advance through an index mix-up).
* Lateral deviation is signed and measured from the centre of the lane the
  car drives in; the heading error is taken from that lane's direction, never
  from the opposite lane. The reward uses the magnitudes.
* Collision, off-road and wrong-way penalties are read from the config (the
  original hard-coded them next to dead config keys).
* Time to collision uses the closing speed to the obstacle, not the ego speed,
  so following a car at a steady gap is not penalised as a near miss.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import numpy as np

COMPONENTS = ("efficiency", "lane_keeping", "comfort", "safety", "progress")
"""Names of the reward components, in the order they are reported."""
REASONS = ("", "collision", "off_road", "route_completed", "time_limit")
"""Termination reasons by code (`termination`); "" while the episode runs."""


@dataclasses.dataclass(frozen=True)
class RewardConfig:
    """Weights and thresholds of the five reward components (original HEAD values)."""

    efficiency_weight: float = 2.0
    """Weight of the efficiency component."""
    lane_keeping_weight: float = 2.0
    """Weight of the lane-keeping component."""
    comfort_weight: float = 1.0
    """Weight of the comfort component."""
    safety_weight: float = 1.0
    """Weight of the safety component."""
    progress_weight: float = 3.0
    """Weight of the progress component."""
    target_speed_mps: float = 8.33
    """Speed (m/s) at which efficiency reaches 1 (30 km/h)."""
    overspeed_penalty: float = 0.0
    """Efficiency per m/s above `target_speed_mps` (<= 0). 0 is the original's HEAD reward, where progress
    pays for every extra m/s and nothing for the target speed (its `overspeed_penalty_scale` key was dead)."""
    moving_bonus: float = 0.15
    """Efficiency bonus while the speed exceeds `moving_speed_mps`."""
    moving_speed_mps: float = 0.5
    """Speed above which the car counts as moving (efficiency bonus, no stopping penalty)."""
    lateral_tolerance_m: float = 0.5
    """Half lane width used by lane keeping when the backend reports no lane width."""
    lateral_share: float = 0.7
    """Share of the lane-keeping score lost at a deviation of one half lane width."""
    heading_share: float = 0.3
    """Share of the lane-keeping score lost at a heading error of `heading_tolerance_rad`."""
    heading_tolerance_rad: float = 0.1
    """Heading error (rad) at which the heading share is fully lost."""
    centering_bonus: float = 0.0
    """Lane-keeping bonus at the lane centre, falling as a Gaussian of the lateral deviation (width
    `centering_width_m`). 0 is the original's reward, whose linear term pays 0.4 per metre of deviation per
    simulator step (at weight 2): about 0.16 for the last 0.4 m, against ~3 for speed and progress."""
    centering_width_m: float = 0.3
    """Standard deviation (m) of the centering bonus's Gaussian."""
    standstill_speed_mps: float = 0.1
    """Below this speed lane keeping and comfort are 0; lane keeping ramps up from here."""
    lane_keeping_full_speed_mps: float = 3.0
    """Speed at which lane keeping reaches its full scale."""
    jerk_scale_mps3: float = 5.0
    """Jerk (m/s^3) at which comfort crosses zero."""
    comfort_scale: float = 0.3
    """Comfort value at zero jerk, and the scale of the quadratic penalty above `jerk_scale_mps3`."""
    steering_change_penalty: float = 0.0
    """Comfort per unit of change of the steer command from one env step to the next (<= 0; steer is in
    [-1, 1]), paid once per env step while moving. 0 is the original's reward, where only the jerk term sees
    a steering change, through the acceleration it causes. Pair it with `observation.previous_action`, so
    the critic sees the steer a change is measured from."""
    proximity_distance_m: float = 10.0
    """Obstacles closer than this (bumper gap) cost proximity_penalty / max(gap, proximity_floor_m) per step."""
    proximity_penalty: float = -1.0
    """Numerator of the proximity penalty (m)."""
    proximity_floor_m: float = 0.5
    """Smallest gap used in the proximity penalty."""
    ttc_threshold_s: float = 3.0
    """Times to collision below this cost ttc_penalty / max(ttc, ttc_floor_s) per step."""
    ttc_penalty: float = -0.5
    """Numerator of the time-to-collision penalty (s)."""
    ttc_floor_s: float = 0.1
    """Smallest time to collision used in its penalty."""
    collision_penalties: tuple[float, float, float] = (-5.0, -25.0, -100.0)
    """Collision penalty below `collision_speeds_mps[0]`, below `[1]`, and above."""
    collision_speeds_mps: tuple[float, float] = (2.0, 5.0)
    """Speed bands (m/s) of the collision penalties."""
    offroad_penalty: float = -20.0
    """Safety penalty per step with the car's centre off the paved road."""
    wrong_way_onset_penalty: float = -1.0
    """Wrong-way penalty at a heading error just over 90 degrees (at speed); linear to `wrong_way_penalty`."""
    wrong_way_penalty: float = -5.0
    """Wrong-way penalty at a heading error of 180 degrees (at speed)."""
    wrong_way_fade_speed_mps: float = 2.0
    """The wrong-way penalty is scaled by min(speed / this, 1)."""
    lane_departure_penalty: float = 0.0
    """Safety penalty on the step the episode ends by leaving the lane (|lateral deviation| > the env's
    offroad_limit_m, either side). 0 is the original's reward, where leaving to the left (into the
    paved oncoming lane) costs only the lane invasion while leaving to the right also costs off-road steps."""
    lane_invasion_penalty: float = -10.0
    """Safety penalty on a step in which the car starts to cross a lane marking."""
    stopping_penalties: tuple[float, float, float] = (-0.01, -0.03, -0.05)
    """Penalty while stopped: goal near, goal beyond `stopping_goal_distances_m[0]`, beyond `[1]`."""
    stopping_goal_distances_m: tuple[float, float] = (10.0, 20.0)
    """Distances to the goal (m) that raise the stopping penalty."""
    distance_scale: float = 0.5
    """Progress reward per metre of route arc length advanced."""
    waypoint_bonus: float = 1.0
    """Progress bonus per route waypoint passed (once each)."""
    goal_bonus: float = 100.0
    """Progress bonus on the step the route is completed (once per episode)."""
    progress_clip: tuple[float, float] = (-10.0, 110.0)
    """Bounds of the progress component."""

    def __post_init__(self):
        for name in ("efficiency", "lane_keeping", "comfort", "safety", "progress"):
            if getattr(self, f"{name}_weight") < 0:
                raise ValueError(f"reward.{name}_weight must be >= 0, got {getattr(self, f'{name}_weight')}")
        positive = (
            "target_speed_mps", "lateral_tolerance_m", "heading_tolerance_rad", "centering_width_m",
            "lane_keeping_full_speed_mps", "jerk_scale_mps3", "proximity_distance_m", "ttc_threshold_s",
        )
        for name in positive:
            if not getattr(self, name) > 0:
                raise ValueError(f"reward.{name} must be > 0, got {getattr(self, name)}")
        for name in ("lateral_share", "heading_share"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"reward.{name} must be in [0, 1], got {getattr(self, name)}")
        non_positive = (
            "offroad_penalty", "lane_departure_penalty", "overspeed_penalty", "wrong_way_onset_penalty",
            "wrong_way_penalty", "lane_invasion_penalty", "proximity_penalty", "ttc_penalty", "steering_change_penalty",
        )
        for name in non_positive:
            if getattr(self, name) > 0:
                raise ValueError(f"reward.{name} must be <= 0, got {getattr(self, name)}")
        if len(self.collision_penalties) != 3 or any(p > 0 for p in self.collision_penalties):
            raise ValueError(f"reward.collision_penalties must be 3 values <= 0, got {self.collision_penalties}")
        if len(self.stopping_penalties) != 3 or any(p > 0 for p in self.stopping_penalties):
            raise ValueError(f"reward.stopping_penalties must be 3 values <= 0, got {self.stopping_penalties}")
        for name in ("collision_speeds_mps", "stopping_goal_distances_m"):
            pair = getattr(self, name)
            if len(pair) != 2 or not 0 <= pair[0] <= pair[1]:
                raise ValueError(f"reward.{name} must be 2 increasing values >= 0, got {pair}")
        low, high = self.progress_clip
        if not low < high:
            raise ValueError(f"reward.progress_clip must be (low, high) with low < high, got {self.progress_clip}")
        if self.lane_keeping_full_speed_mps <= self.standstill_speed_mps:
            raise ValueError(
                f"reward.lane_keeping_full_speed_mps must be > standstill_speed_mps ({self.standstill_speed_mps}), "
                f"got {self.lane_keeping_full_speed_mps}"
            )
        if self.moving_speed_mps < 0 or self.waypoint_bonus < 0 or self.goal_bonus < 0 or self.centering_bonus < 0:
            raise ValueError("reward.moving_speed_mps, waypoint_bonus, goal_bonus and centering_bonus must be >= 0")

    @property
    def weights(self) -> dict[str, float]:
        """Component name -> weight."""
        return {name: getattr(self, f"{name}_weight") for name in COMPONENTS}


class Measurements(NamedTuple):
    """What one step measured. Every field is a float/bool scalar or an array of one shape.

    Attributes:
      speed: ego speed, m/s (>= 0).
      lateral_deviation: signed offset from the centre of the ego's lane, m (left positive).
      heading_error: ego yaw minus the lane direction, wrapped to [-pi, pi], rad.
      lane_half_width: half width of the ego's lane, m (<= 0 means unknown).
      lane_invasion: the car started to cross a lane marking on this step.
      accel: magnitude of the acceleration vector this step, m/s^2.
      prev_accel: the same, previous step.
      lateral_accel: |v * yaw rate| this step, m/s^2.
      prev_lateral_accel: the same, previous step.
      dt: step duration, s.
      obstacle_distance: bumper gap to the nearest obstacle ahead, m (inf if none).
      time_to_collision: gap / closing speed, s (inf if not closing).
      collision: the ego hit something on this step.
      offroad: the ego's centre is off the paved road.
      progress_m: route arc length advanced on this step, m (negative when reversing along it).
      waypoints_passed: route waypoints passed for the first time on this step (>= 0).
      goal_reached: the route was completed on this step (true once per episode).
      distance_to_goal: route arc length left, m.
      steer_change: |steer command - the previous env step's|, on the first simulator step of an env step
        (0 on the others and after a reset).
    """

    speed: np.ndarray
    lateral_deviation: np.ndarray
    heading_error: np.ndarray
    lane_half_width: np.ndarray
    lane_invasion: np.ndarray
    accel: np.ndarray
    prev_accel: np.ndarray
    lateral_accel: np.ndarray
    prev_lateral_accel: np.ndarray
    dt: float
    obstacle_distance: np.ndarray
    time_to_collision: np.ndarray
    collision: np.ndarray
    offroad: np.ndarray
    progress_m: np.ndarray
    waypoints_passed: np.ndarray
    goal_reached: np.ndarray
    distance_to_goal: np.ndarray
    steer_change: np.ndarray | float = 0.0


def efficiency(m: Measurements, cfg: RewardConfig) -> np.ndarray:
    """Speed along the lane over the target speed, plus a moving bonus and the overspeed penalty, clipped to [-1, 1]."""
    value = m.speed * np.cos(m.heading_error) / cfg.target_speed_mps
    value = value + np.where(m.speed > cfg.moving_speed_mps, cfg.moving_bonus, 0.0)
    value = _clip(value, -1.0, 1.0)  # the original's efficiency
    # After the clip, so that the penalty starts at the target speed, not where the clip ends.
    return np.maximum(value + cfg.overspeed_penalty * np.maximum(m.speed - cfg.target_speed_mps, 0.0), -1.0)


def lane_keeping(m: Measurements, cfg: RewardConfig) -> np.ndarray:
    """Centring and alignment score in [0, 0.5 + centering_bonus] scaled by speed; -1 on a lane invasion."""
    half_width = np.where(np.asarray(m.lane_half_width) > 0, m.lane_half_width, cfg.lateral_tolerance_m)
    lateral = 1.0 - cfg.lateral_share * np.minimum(np.abs(m.lateral_deviation) / half_width, 1.0)
    heading = 1.0 - cfg.heading_share * np.minimum(np.abs(m.heading_error) / cfg.heading_tolerance_rad, 1.0)
    centering = cfg.centering_bonus * np.exp(-0.5 * (np.asarray(m.lateral_deviation) / cfg.centering_width_m) ** 2)
    base = 0.5 * (lateral + heading) - 0.5 + centering
    still = cfg.standstill_speed_mps
    speed_scale = _clip((m.speed - still) / (cfg.lane_keeping_full_speed_mps - still), 0.0, 1.0)
    return np.where(m.lane_invasion, -1.0, np.where(m.speed < still, 0.0, base * speed_scale))


def comfort(m: Measurements, cfg: RewardConfig) -> np.ndarray:
    """+comfort_scale at zero jerk, falling linearly to 0 at jerk_scale, quadratic penalty beyond; plus the
    steering-change penalty."""
    jerk = np.hypot((m.accel - m.prev_accel) / m.dt, (m.lateral_accel - m.prev_lateral_accel) / m.dt)
    normalised = np.minimum(jerk / cfg.jerk_scale_mps3, 2.0)
    value = np.where(
        normalised <= 1.0,
        cfg.comfort_scale * (1.0 - normalised),
        -cfg.comfort_scale * (normalised - 1.0) ** 2,
    )
    value = value + cfg.steering_change_penalty * np.asarray(m.steer_change)
    return np.where(m.speed < cfg.standstill_speed_mps, 0.0, value)


def safety(m: Measurements, cfg: RewardConfig) -> np.ndarray:
    """Sum of proximity, TTC, collision, off-road, wrong-way, lane-invasion and stopping penalties (<= 0)."""
    proximity = np.where(
        m.obstacle_distance < cfg.proximity_distance_m,
        cfg.proximity_penalty / np.maximum(m.obstacle_distance, cfg.proximity_floor_m),
        0.0,
    )
    ttc = np.where(
        m.time_to_collision < cfg.ttc_threshold_s,
        cfg.ttc_penalty / np.maximum(m.time_to_collision, cfg.ttc_floor_s),
        0.0,
    )
    slow, mid, fast = cfg.collision_penalties
    collision_value = np.where(
        m.speed < cfg.collision_speeds_mps[0], slow, np.where(m.speed < cfg.collision_speeds_mps[1], mid, fast)
    )
    collision = np.where(m.collision, collision_value, 0.0)
    offroad = np.where(m.offroad, cfg.offroad_penalty, 0.0)
    excess = _clip((np.abs(m.heading_error) - np.pi / 2) / (np.pi / 2), 0.0, 1.0)
    wrong_way = np.where(
        np.abs(m.heading_error) > np.pi / 2,
        (cfg.wrong_way_onset_penalty + (cfg.wrong_way_penalty - cfg.wrong_way_onset_penalty) * excess)
        * np.minimum(m.speed / cfg.wrong_way_fade_speed_mps, 1.0),
        0.0,
    )
    invasion = np.where(m.lane_invasion, cfg.lane_invasion_penalty, 0.0)
    near, mid_stop, far = cfg.stopping_penalties
    stop_value = np.where(
        m.distance_to_goal > cfg.stopping_goal_distances_m[1],
        far,
        np.where(m.distance_to_goal > cfg.stopping_goal_distances_m[0], mid_stop, near),
    )
    stopped = (m.speed < cfg.moving_speed_mps) & ~np.asarray(m.collision) & ~np.asarray(m.offroad)
    stopping = np.where(stopped, stop_value, 0.0)
    return proximity + ttc + collision + offroad + wrong_way + invasion + stopping


def progress(m: Measurements, cfg: RewardConfig) -> np.ndarray:
    """Arc length advanced times distance_scale, plus waypoint and goal bonuses, clipped."""
    value = (
        m.progress_m * cfg.distance_scale
        + np.asarray(m.waypoints_passed) * cfg.waypoint_bonus
        + np.where(m.goal_reached, cfg.goal_bonus, 0.0)
    )
    return _clip(value, *cfg.progress_clip)


def _clip(value: np.ndarray, low: float, high: float) -> np.ndarray:
    # np.clip's dispatch costs several microseconds on the small arrays of one step.
    return np.minimum(np.maximum(value, low), high)


_FUNCTIONS = {
    "efficiency": efficiency,
    "lane_keeping": lane_keeping,
    "comfort": comfort,
    "safety": safety,
    "progress": progress,
}


def compute_reward(m: Measurements, cfg: RewardConfig) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Total reward and weighted components.

    Args:
      m: one step's measurements (scalars or arrays of shape (N,)).
      cfg: weights and thresholds.

    Returns:
      (total, weighted): total float64 of the measurement shape, and
      ``{component: weight * component}`` for the names in `COMPONENTS`;
      ``total == sum(weighted.values())``.
    """
    weighted = {name: getattr(cfg, f"{name}_weight") * _FUNCTIONS[name](m, cfg) for name in COMPONENTS}
    total = sum(weighted.values())
    return total, weighted


def add_departure_penalty(
    total: np.ndarray, weighted: dict[str, np.ndarray], departed: np.ndarray, cfg: RewardConfig
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """`compute_reward`'s outputs with the lane-departure penalty added to safety where `departed`.

    Args:
      total, weighted: as returned by `compute_reward`.
      departed: the episode ends on this step because the car left its lane ("off_road").
      cfg: weights and thresholds.
    """
    penalty = np.where(departed, cfg.safety_weight * cfg.lane_departure_penalty, 0.0)
    return total + penalty, weighted | {"safety": weighted["safety"] + penalty}


def component_rewards(components: dict[str, np.ndarray] | None, total: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """A vector env step's weighted components as one (N, C) float32 array, in `COMPONENTS` order.

    What a critic that learns each component separately is trained on (`networks.critic.reward_components`).

    Args:
      components: ``info["reward_components"]``: {component: (N,) weighted value}, None if the env reported none.
      total: (N,) the step's rewards.
      valid: (N,) bool, the envs whose step is a real transition; the others' rows are 0.

    Raises:
      ValueError: a valid env's components are missing or do not sum to its reward (something between
        the env and the trainer changed the reward, and the components would teach another one).
    """
    total, valid = np.asarray(total, np.float64), np.asarray(valid, bool)
    if components is None or not set(COMPONENTS) <= set(components):
        if valid.any():
            raise ValueError(f"the env reports no reward components {', '.join(COMPONENTS)} "
                             "in info['reward_components']")
        return np.zeros((total.shape[0], len(COMPONENTS)), np.float32)
    stacked = np.stack([np.broadcast_to(np.asarray(components[name], np.float64), total.shape)
                        for name in COMPONENTS], axis=-1)
    stacked[~valid] = 0.0
    error = np.abs(stacked.sum(axis=-1) - total)
    if np.any(valid & (error > 1e-3 * np.maximum(1.0, np.abs(total)))):
        raise ValueError("the reward components do not sum to the reward the env returned: a wrapper changed the "
                         "reward, so a per-component critic would learn another one")
    return stacked.astype(np.float32)


def termination(
    collision: np.ndarray,
    lateral_deviation: np.ndarray,
    distance_to_goal: np.ndarray,
    steps: np.ndarray,
    *,
    offroad_limit_m: float,
    goal_tolerance_m: float,
    max_episode_steps: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The episode rules: terminate on collision, off-road or route completion; truncate at the time limit.

    Args:
      collision: the ego hit something on this step.
      lateral_deviation: signed offset from the lane centre, m.
      distance_to_goal: route arc length left, m.
      steps: steps taken in the episode, this one included.
      offroad_limit_m: |lateral_deviation| beyond this terminates ("off_road").
      goal_tolerance_m: distance_to_goal within this terminates ("route_completed").
      max_episode_steps: steps >= this truncates ("time_limit") unless terminated.

    Returns:
      (terminated, truncated, reason): bools and int codes into `REASONS`, of
      the inputs' shape; the first matching reason in the order above wins.
    """
    off_road = np.abs(lateral_deviation) > offroad_limit_m
    completed = np.asarray(distance_to_goal) <= goal_tolerance_m
    terminated = np.asarray(collision) | off_road | completed
    truncated = ~terminated & (np.asarray(steps) >= max_episode_steps)
    reason = np.where(collision, 1, np.where(off_road, 2, np.where(completed, 3, np.where(truncated, 4, 0))))
    return terminated, truncated, reason
