"""LaneSim: the embedded lane-keeping simulator, stepping N cars in one NumPy pass.

`LaneSimCore` holds N independent episodes (one road, its traffic and the ego
car each) as arrays and advances them together; `LaneSimEnv` (gymnasium Env)
and `LaneSimVec` (gymnasium VectorEnv, same-step autoreset) wrap it with frame
stacking. Host-side code.

Per step: the ego follows a kinematic bicycle model (front-wheel angle with a
rate limit, throttle/brake limits, tyre-grip limit on curvature), is projected
on the road, NPCs follow the Intelligent Driver Model, collisions are tested
box against box, the reward is computed from the measurements
(`td3_jax.envs.reward`), and the camera renders the next frame. Episodes
terminate on collision, off-road (|lateral deviation| > offroad_limit_m) or
route completion, and are truncated at max_episode_steps.
"""

from __future__ import annotations

from typing import Any

import gymnasium
import numpy as np
from gymnasium.vector import AutoresetMode, VectorEnv

from td3_jax.envs import spaces

from td3_jax.envs.lanesim import roads

from td3_jax.envs.config import LaneSimConfig
from td3_jax.envs.lanesim import traffic
from td3_jax.envs.lanesim.camera import Camera
from td3_jax.envs.observation import ObservationConfig, build_vector
from td3_jax.envs.reward import REASONS, Measurements, RewardConfig, add_departure_penalty, compute_reward, termination
from td3_jax.envs.spaces import FRAME_SIZE

NPC_SHADES = (30, 225)
"""Range of NPC body gray levels."""
COLLISION_CHECK_M = 10.0
"""Arc-length distance beyond which ego and NPC cannot overlap (the box test is skipped)."""


def wrap_angle(angle: np.ndarray) -> np.ndarray:
    """Angle wrapped to [-pi, pi)."""
    return np.mod(angle + np.pi, 2 * np.pi) - np.pi


class LaneSimCore:
    """N lane-keeping episodes advanced together (no frame stacking, no autoreset).

    Args:
      cfg: simulator settings.
      reward_cfg: reward weights and thresholds.
      num_envs: number of episodes N.
      observation_cfg: scales of the observation vector.
    """

    def __init__(
        self,
        cfg: LaneSimConfig,
        reward_cfg: RewardConfig,
        num_envs: int,
        observation_cfg: ObservationConfig = ObservationConfig(),
    ):
        self.cfg, self.reward_cfg, self.num_envs = cfg, reward_cfg, num_envs
        self.observation_cfg = observation_cfg
        self.camera = Camera(cfg)
        n = num_envs
        self.num_npcs = m = cfg.num_npcs()
        num_forward = traffic.split(m)
        k = int(round(cfg.road_length_m / roads.SAMPLE_M)) + 1
        self.ring = (k - 1) * roads.SAMPLE_M
        self.road_table = np.zeros((n, k, 4))
        self.road_delta = np.zeros((n, k, 4))
        self.roads: list[roads.Road | None] = [None] * n
        for name in ("x", "y", "yaw", "speed", "steer", "s", "d", "odometer", "accel", "lat_accel", "to_goal"):
            setattr(self, name, np.zeros(n))
        self.steps = np.zeros(n, np.int64)
        self.best_waypoint = np.zeros(n, np.int64)
        self.on_marking = np.zeros((n, 3), bool)
        self.npc_s = np.zeros((n, m))
        self.npc_speed = np.zeros((n, m))
        self.npc_desired = np.ones((n, m))
        self.npc_direction = np.where(np.arange(m) < num_forward, 1.0, -1.0)
        self.npc_lane = (self.npc_direction < 0).astype(np.intp)
        self.npc_leader = traffic.leaders(m, num_forward)
        self.npc_d = np.where(self.npc_direction > 0, -0.5, 0.5) * cfg.lane_width_m
        self.npc_yaw_offset = np.where(self.npc_direction > 0, 0.0, np.pi)
        self.boxes = np.zeros((n, m, 6))
        self.boxes[:, :, 3] = traffic.NPC_LENGTH_M / 2
        self.boxes[:, :, 4] = traffic.NPC_WIDTH_M / 2
        self.frames = np.zeros((n, FRAME_SIZE, FRAME_SIZE), np.uint8)
        self.vector = np.zeros((n, observation_cfg.vector_size(cfg.num_waypoints)), np.float32)
        self.prev_action = np.zeros((n, 2))
        self._waypoint_offsets = cfg.waypoint_spacing_m * np.arange(1, cfg.num_waypoints + 1)
        self._points = np.zeros((n, cfg.num_waypoints, 2))
        self._ego_half = (cfg.vehicle_length_m / 2, cfg.vehicle_width_m / 2)
        self._npc_half = (traffic.NPC_LENGTH_M / 2, traffic.NPC_WIDTH_M / 2)
        self._markings = np.array([-1.0, 0.0, 1.0]) * cfg.lane_width_m
        self._paved_half = cfg.lane_width_m + roads.MARKING_WIDTH_M / 2 + roads.SHOULDER_M
        self._lane_centre = -0.5 * cfg.lane_width_m
        self._goal_s = cfg.road_margin_back_m + cfg.route_length_m
        self._half_lane = np.full(n, 0.5 * cfg.lane_width_m)
        self._all = slice(None)  # basic indexing: views, where an index array would copy the road tables
        self._max_steer = np.radians(cfg.max_steer_deg)
        self._max_steer_change = np.radians(cfg.max_steer_rate_deg_s) * cfg.dt
        self._grip = cfg.max_lateral_accel_mps2 * cfg.wheelbase_m

    def reset_env(self, index: int, rng: np.random.Generator) -> None:
        """Starts a new episode in slot `index`, drawing road and traffic from `rng`."""
        cfg = self.cfg
        road = roads.generate_road(rng, cfg)
        self.roads[index] = road
        self.road_table[index], self.road_delta[index] = roads.pose_table(road)
        i = int(round(road.start_s / roads.SAMPLE_M))
        yaw = road.heading[i]
        self.x[index] = road.xy[i, 0] - np.sin(yaw) * self._lane_centre
        self.y[index] = road.xy[i, 1] + np.cos(yaw) * self._lane_centre
        self.yaw[index] = yaw
        self.speed[index] = cfg.initial_speed_mps
        self.s[index], self.d[index] = i * roads.SAMPLE_M, self._lane_centre
        self.steer[index] = self.odometer[index] = self.accel[index] = self.lat_accel[index] = 0.0
        self.to_goal[index] = self._goal_s - self.s[index]
        self.steps[index] = 0
        self.best_waypoint[index] = 0
        self.on_marking[index] = False
        self.prev_action[index] = 0.0
        self._spawn_npcs(index, rng, road)
        envs = slice(index, index + 1)
        self._set_boxes(envs)
        self._observe(envs, np.zeros(1))

    def _spawn_npcs(self, index: int, rng: np.random.Generator, road: roads.Road) -> None:
        cfg = self.cfg
        clear = cfg.spawn_clearance_m
        forward = int(np.sum(self.npc_direction > 0))
        lanes = [
            traffic.spawn_lane(rng, count, self.ring, road.start_s + clear, self.ring - 2 * clear, cfg.npc_min_gap_m)
            for count in (forward, self.num_npcs - forward)
        ]
        # Oncoming NPCs are stored in their direction of travel (decreasing s).
        self.npc_s[index] = np.concatenate([lanes[0], lanes[1][::-1]])
        self.npc_desired[index] = rng.uniform(*cfg.npc_speed_mps, self.num_npcs)
        self.npc_speed[index] = self.npc_desired[index]
        self.boxes[index, :, 5] = rng.integers(*NPC_SHADES, self.num_npcs)

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """Advances every episode by one env step (episodes that ended must be reset by the caller).

        One env step is `cfg.action_repeat` simulator steps with the action held.
        The reward and its components are summed over the simulator steps up to
        and including the one that ended the episode; collision and lane
        invasion report whether one happened in any of them; every other info
        entry and the termination reason are those of that last counted
        simulator step. An episode that ended keeps moving for the rest of the
        env step (the caller resets it), so a terminated episode's final frame
        may show up to action_repeat - 1 simulator steps more; time limits fall
        on env steps (max_episode_steps is a multiple of action_repeat).

        Args:
          actions: (N, 2) float (steer, throttle_brake) in [-1, 1]; clipped.

        Returns:
          (reward (N,) float64, terminated (N,) bool, truncated (N,) bool, info):
          info maps the keys listed in docs/environment.md to (N,) arrays, and
          "reward_components" to ``{component: (N,) weighted value}``. The new
          frames and vectors are in `self.frames` and `self.vector`.
        """
        actions = np.asarray(actions, np.float64).reshape(self.num_envs, 2)
        if not np.isfinite(actions).all():
            raise ValueError(f"actions must be finite, got {actions}")
        actions = np.minimum(np.maximum(actions, -1.0), 1.0)
        steer_change = np.abs(actions[:, 0] - self.prev_action[:, 0])
        reward, terminated, truncated, info, heading_error = self._simulate(actions, steer_change)
        for _ in range(self.cfg.action_repeat - 1):
            live = ~(terminated | truncated)
            step_reward, step_terminated, step_truncated, step_info, step_heading = self._simulate(actions, 0.0)
            reward = reward + np.where(live, step_reward, 0.0)
            terminated = terminated | (live & step_terminated)
            truncated = truncated | (live & step_truncated)
            for key, value in step_info.items():
                if key == "reward_components":
                    for name, part in value.items():
                        info[key][name] = info[key][name] + np.where(live, part, 0.0)
                elif key in ("collision", "lane_invasion"):
                    info[key] = info[key] | (live & value)
                else:
                    info[key] = np.where(live, value, info[key])
            heading_error = np.where(live, step_heading, heading_error)
        self.prev_action[:] = actions
        self._observe(self._all, heading_error)
        return reward, terminated, truncated, info

    def _simulate(
        self, actions: np.ndarray, steer_change: np.ndarray | float
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any], np.ndarray]:
        """One simulator step without rendering: `step`'s outputs plus the heading error.

        `steer_change` is |steer - the previous env step's| on an env step's first simulator step, else 0.
        """
        cfg = self.cfg
        prev_accel, prev_lat = np.hypot(self.accel, self.lat_accel), np.abs(self.lat_accel)
        self._drive(actions)
        heading_error = self._project()
        ego_speed_s = self.speed * np.cos(heading_error)
        reach = 0.5 * cfg.vehicle_width_m * np.abs(np.cos(heading_error)) + 0.5 * cfg.vehicle_length_m * np.abs(
            np.sin(heading_error)
        )
        collision, gap, leader_v, ttc = self._traffic(ego_speed_s, reach)

        on_marking = np.abs(self.d[:, None] - self._markings) < reach[:, None]
        lane_invasion = (on_marking & ~self.on_marking).any(axis=1)
        self.on_marking = on_marking
        to_goal = np.maximum(self._goal_s - self.s, 0.0)
        waypoint = np.floor((self.s - cfg.road_margin_back_m) / cfg.waypoint_spacing_m).astype(np.int64)
        passed = np.maximum(waypoint - self.best_waypoint, 0)
        self.best_waypoint = np.maximum(self.best_waypoint, waypoint)
        completed = to_goal <= cfg.goal_tolerance_m
        deviation = self.d - self._lane_centre
        offroad = np.abs(self.d) > self._paved_half
        accel = np.hypot(self.accel, self.lat_accel)
        measurements = Measurements(
            speed=self.speed, lateral_deviation=deviation, heading_error=heading_error,
            lane_half_width=self._half_lane, lane_invasion=lane_invasion, accel=accel, prev_accel=prev_accel,
            lateral_accel=np.abs(self.lat_accel), prev_lateral_accel=prev_lat, dt=cfg.dt,
            obstacle_distance=gap, time_to_collision=ttc, collision=collision, offroad=offroad,
            progress_m=self.to_goal - to_goal, waypoints_passed=passed, goal_reached=completed,
            distance_to_goal=to_goal, steer_change=steer_change,
        )
        reward, components = compute_reward(measurements, self.reward_cfg)
        self.to_goal = to_goal
        self.steps += 1
        terminated, truncated, reason = termination(
            collision, deviation, to_goal, self.steps, offroad_limit_m=cfg.offroad_limit_m,
            goal_tolerance_m=cfg.goal_tolerance_m, max_episode_steps=cfg.max_episode_steps,
        )
        reward, components = add_departure_penalty(reward, components, reason == _OFF_ROAD, self.reward_cfg)
        info = {
            "termination_reason": _REASONS[reason],
            "success": completed & ~collision,
            "collision": collision,
            "lane_invasion": lane_invasion,
            "offroad": offroad,
            "lateral_deviation_m": deviation,
            "heading_error_rad": heading_error,
            "speed_mps": self.speed.copy(),  # copies: a reset of an ended episode writes into the state
            "distance_travelled_m": self.odometer.copy(),
            "route_progress": np.minimum(np.maximum(self.s - cfg.road_margin_back_m, 0.0) / cfg.route_length_m, 1.0),
            "distance_to_goal_m": to_goal.copy(),
            "obstacle_distance_m": gap,
            "obstacle_speed_mps": leader_v,
            "time_to_collision_s": ttc,
            "reward_components": components,
        }
        return reward, terminated, truncated, info, heading_error

    def _drive(self, actions: np.ndarray) -> None:
        """Kinematic bicycle step (centre reference, slip angle from a centred mass)."""
        cfg, dt = self.cfg, self.cfg.dt
        # steer +1 turns right, as CARLA's control does; the model's wheel angle is positive to the left.
        change = -actions[:, 0] * self._max_steer - self.steer
        self.steer += np.minimum(np.maximum(change, -self._max_steer_change), self._max_steer_change)
        pedal = actions[:, 1]
        accel = np.where(
            pedal > 0.0, pedal * cfg.max_accel_mps2 * (1.0 - self.speed / cfg.max_speed_mps), pedal * cfg.max_brake_mps2
        )
        accel -= (self.speed > 0.0) * cfg.coast_decel_mps2
        new_speed = np.minimum(np.maximum(self.speed + accel * dt, 0.0), cfg.max_speed_mps)
        self.accel = (new_speed - self.speed) / dt
        # Tyre grip: yaw rate * speed may not exceed the lateral limit.
        grip = self._grip / np.maximum(new_speed * new_speed, 1e-6)
        tan_steer = np.minimum(np.maximum(np.tan(self.steer), -grip), grip)
        slip = np.arctan(0.5 * tan_steer)
        yaw_rate = new_speed * np.cos(slip) * tan_steer / cfg.wheelbase_m
        self.lat_accel = new_speed * yaw_rate
        heading = self.yaw + (0.5 * dt) * yaw_rate + slip
        travel = new_speed * dt
        self.x += travel * np.cos(heading)
        self.y += travel * np.sin(heading)
        self.yaw = wrap_angle(self.yaw + yaw_rate * dt)
        self.speed = new_speed
        self.odometer += travel

    def _project(self) -> np.ndarray:
        """Updates the ego's arc length s and lateral offset d by one Newton step; returns the heading error.

        The previous s is within one step's travel of the new projection, so a
        single step from there is exact to second order in that travel.
        """
        pose = roads.sample(self.road_table, self.road_delta, self.s)
        dx, dy = self.x - pose[:, 0], self.y - pose[:, 1]
        cos, sin = np.cos(pose[:, 2]), np.sin(pose[:, 2])
        self.d = -dx * sin + dy * cos
        along = (dx * cos + dy * sin) / np.maximum(1.0 - pose[:, 3] * self.d, 0.1)
        self.s = np.minimum(np.maximum(self.s + along, 0.0), self.ring)
        return wrap_angle(self.yaw - pose[:, 2] - pose[:, 3] * along)

    def _traffic(self, ego_speed_s: np.ndarray, reach: np.ndarray) -> tuple[np.ndarray, ...]:
        """Moves the NPCs; returns collision flags and the nearest vehicle ahead (gap, speed, TTC)."""
        n = self.num_envs
        if not self.num_npcs:
            return np.zeros(n, bool), np.full(n, np.inf), np.zeros(n), np.full(n, np.inf)
        cfg = self.cfg
        # The ego blocks an NPC's lane when its body overlaps that lane.
        in_lane = np.stack([(self.d - reach < 0.0) & (self.d + reach > -cfg.lane_width_m),
                            (self.d + reach > 0.0) & (self.d - reach < cfg.lane_width_m)], axis=1)
        ego_gap = np.mod(self.npc_direction * (self.s[:, None] - self.npc_s), self.ring)
        ego_gap -= 0.5 * (traffic.NPC_LENGTH_M + cfg.vehicle_length_m)
        ego_gap[~in_lane[:, self.npc_lane]] = np.inf
        traffic.step_npcs(
            self.npc_s, self.npc_speed, self.npc_desired, self.npc_direction, self.npc_leader, self.ring,
            ego_gap, self.npc_direction * ego_speed_s[:, None], cfg.dt,
        )
        self._set_boxes(self._all)
        # Only pairs within a few car lengths along the road can touch; usually there are none.
        env, npc = np.nonzero(np.abs(self.npc_s - self.s[:, None]) < COLLISION_CHECK_M)
        collision = np.zeros(n, bool)
        if len(env):
            box = self.boxes[env, npc]
            hit = traffic.boxes_overlap(
                box[:, 0] - self.x[env], box[:, 1] - self.y[env], self.yaw[env], box[:, 2],
                self._ego_half, self._npc_half,
            )
            collision[env[hit]] = True
        gap, leader_v, ttc = traffic.nearest_ahead(
            self.npc_s, self.npc_d, self.npc_speed * self.npc_direction, self.s, self.d, ego_speed_s,
            cfg.vehicle_length_m, cfg.vehicle_width_m, cfg.obstacle_range_m,
        )
        return collision, gap, leader_v, ttc

    def _set_boxes(self, envs: slice) -> None:
        if not self.num_npcs:
            return
        pose = roads.sample(self.road_table[envs], self.road_delta[envs], self.npc_s[envs])
        yaw = pose[..., 2]
        self.boxes[envs, :, 0] = pose[..., 0] - np.sin(yaw) * self.npc_d
        self.boxes[envs, :, 1] = pose[..., 1] + np.cos(yaw) * self.npc_d
        self.boxes[envs, :, 2] = yaw + self.npc_yaw_offset

    def _lookahead(self, envs: slice) -> np.ndarray:
        """Look-ahead points on the ego lane's centre, vehicle frame, (n, W, 2) float64 (a view of a buffer)."""
        s = np.minimum(self.s[envs, None] + self._waypoint_offsets, self._goal_s)
        pose = roads.sample(self.road_table[envs], self.road_delta[envs], s)
        yaw = pose[..., 2]
        dx = pose[..., 0] - np.sin(yaw) * self._lane_centre - self.x[envs, None]
        dy = pose[..., 1] + np.cos(yaw) * self._lane_centre - self.y[envs, None]
        cos, sin = np.cos(self.yaw[envs])[:, None], np.sin(self.yaw[envs])[:, None]
        points = self._points[envs]
        points[..., 0] = cos * dx + sin * dy
        points[..., 1] = cos * dy - sin * dx
        return points

    def __setstate__(self, state: dict[str, Any]) -> None:
        # A snapshot saved before the vector's scales were settings was built with today's defaults.
        state.setdefault("observation_cfg", ObservationConfig())
        # ... and before the previous action was kept (nothing read it then).
        state.setdefault("prev_action", np.zeros((state["num_envs"], 2)))
        self.__dict__.update(state)

    def _observe(self, envs: slice, heading_error: np.ndarray) -> None:
        """Renders the frames and fills the observation vectors of `envs`."""
        self.vector[envs] = build_vector(
            self.speed[envs], self.d[envs] - self._lane_centre, heading_error, self._lookahead(envs),
            self.observation_cfg, self.prev_action[envs],
        )
        for i in range(self.num_envs)[envs]:
            self.camera.render(
                self.roads[i], (self.x[i], self.y[i], self.yaw[i]), self.boxes[i], out=self.frames[i]
            )


_REASONS = np.asarray(REASONS, dtype=object)
_OFF_ROAD = REASONS.index("off_road")


def push_frames(images: np.ndarray, frames: np.ndarray) -> None:
    """Drops the oldest frame of each stack and appends the new one, in place.

    Args:
      images: (N, H, W, S) uint8 stacks, oldest frame first; C-contiguous.
      frames: (N, H, W) uint8 new frames.
    """
    stack = images.shape[-1]
    if stack in _PACKED and np.little_endian:
        # A pixel's S frames are one S-byte word whose lowest byte is the oldest frame.
        packed = images.view(_PACKED[stack])[..., 0]
        packed >>= 8
        packed |= frames.astype(_PACKED[stack]) << (8 * (stack - 1))
    else:
        images[..., :-1] = images[..., 1:]
        images[..., -1] = frames


_PACKED = {2: np.uint16, 4: np.uint32, 8: np.uint64}


def episode_rng(seed: int, index: int) -> np.random.Generator:
    """The random stream of env `index` after a reset with `seed` (same for LaneSimEnv and LaneSimVec)."""
    return np.random.default_rng(np.random.SeedSequence([seed, index]))


class LaneSimEnv(gymnasium.Env):
    """One lane-keeping episode at a time, as a gymnasium Env.

    Observation ``{"image": (84, 84, stack) uint8, "vector": (3 + 2W,) float32}``,
    action ``(steer, throttle_brake)`` in [-1, 1] (steer +1 turns right, as in CARLA). `reset(seed=s)` gives the same
    episodes as env 0 of ``LaneSimVec(..., seed=s)``; later resets without a seed
    continue the stream. Info holds scalars (see docs/environment.md).

    Args:
      cfg: simulator settings. reward_cfg: reward settings.
      stack: frames per observation.
      seed: seed of the first reset when `reset` is called without one.
      observation_cfg: scales of the observation vector.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 20}

    def __init__(
        self,
        cfg: LaneSimConfig = LaneSimConfig(),
        reward_cfg: RewardConfig = RewardConfig(),
        stack: int = spaces.DEFAULT_STACK,
        seed: int = 0,
        observation_cfg: ObservationConfig = ObservationConfig(),
    ):
        self.core = LaneSimCore(cfg, reward_cfg, 1, observation_cfg)
        self.observation_space = spaces.observation_space(stack, self.core.vector.shape[1])
        self.action_space = spaces.action_space()
        self.render_mode = "rgb_array"
        self._images = np.zeros((1, FRAME_SIZE, FRAME_SIZE, stack), np.uint8)
        self._default_seed = seed
        self._rng: np.random.Generator | None = None

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if seed is not None or self._rng is None:
            self._rng = episode_rng(self._default_seed if seed is None else seed, 0)
        self.core.reset_env(0, self._rng)
        self._images[...] = self.core.frames[..., None]
        return {"image": self._images[0].copy(), "vector": self.core.vector[0].copy()}, self.reset_info()

    def step(self, action):
        if self._rng is None:
            raise RuntimeError("LaneSimEnv.step called before reset()")
        reward, terminated, truncated, info = self.core.step(np.asarray(action)[None])
        push_frames(self._images, self.core.frames)
        obs = {"image": self._images[0].copy(), "vector": self.core.vector[0].copy()}
        return obs, float(reward[0]), bool(terminated[0]), bool(truncated[0]), _single_info(info)

    def reset_info(self) -> dict[str, Any]:
        """Info of a fresh episode: route length, NPC count, start pose."""
        core = self.core
        return {
            "route_length_m": core.cfg.route_length_m,
            "npc_count": core.num_npcs,
            "start_pose": (float(core.x[0]), float(core.y[0]), float(core.yaw[0])),
        }

    def render(self) -> np.ndarray:
        """The latest camera frame as (84, 84, 3) uint8."""
        return np.repeat(self.core.frames[0][..., None], 3, axis=-1)


def _single_info(info: dict[str, Any]) -> dict[str, Any]:
    """Python scalars of env 0 from the (1,) arrays of a core step."""
    out = {key: value.item() for key, value in info.items() if key != "reward_components"}
    out["reward_components"] = {key: value.item() for key, value in info["reward_components"].items()}
    return out


class LaneSimVec(VectorEnv):
    """N lane-keeping episodes stepped in one NumPy pass, with same-step autoreset.

    Observations are ``{"image": (N, 84, 84, stack) uint8, "vector": (N, V)
    float32}``. When env i terminates or truncates, `step` returns the first
    observation of its next episode, and its true last observation is in
    ``info["final_obs"][i]`` (an object array of observation dicts, None for envs
    still running; ``info["_final_obs"]`` is the mask), gymnasium's SAME_STEP
    convention. The other info entries are (N,) arrays describing the step just
    taken, for every env (so the termination reason of an ended episode is
    there); ``info["final_info"]`` is the same dict, for gymnasium wrappers.

    Args:
      num_envs: N. cfg, reward_cfg, stack, observation_cfg: as `LaneSimEnv`.
      seed: seed of the first reset when `reset` is called without one; env i
        draws its episodes from `episode_rng(seed, i)`.
    """

    metadata = {"autoreset_mode": AutoresetMode.SAME_STEP}

    def __init__(
        self,
        num_envs: int,
        cfg: LaneSimConfig = LaneSimConfig(),
        reward_cfg: RewardConfig = RewardConfig(),
        stack: int = spaces.DEFAULT_STACK,
        seed: int = 0,
        observation_cfg: ObservationConfig = ObservationConfig(),
    ):
        self.core = LaneSimCore(cfg, reward_cfg, num_envs, observation_cfg)
        self.num_envs = num_envs
        self.single_observation_space = spaces.observation_space(stack, self.core.vector.shape[1])
        self.single_action_space = spaces.action_space()
        self.observation_space = gymnasium.vector.utils.batch_space(self.single_observation_space, num_envs)
        self.action_space = gymnasium.vector.utils.batch_space(self.single_action_space, num_envs)
        self._images = np.zeros((num_envs, FRAME_SIZE, FRAME_SIZE, stack), np.uint8)
        self._default_seed = seed
        self._rngs: list[np.random.Generator] | None = None

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        if seed is not None or self._rngs is None:
            base = self._default_seed if seed is None else seed
            self._rngs = [episode_rng(base, i) for i in range(self.num_envs)]
        for i in range(self.num_envs):
            self._start(i)
        return self._obs(), {"npc_count": np.full(self.num_envs, self.core.num_npcs)}

    def step(self, actions):
        if self._rngs is None:
            raise RuntimeError("LaneSimVec.step called before reset()")
        reward, terminated, truncated, info = self.core.step(actions)
        push_frames(self._images, self.core.frames)
        done = terminated | truncated
        if done.any():
            final = np.full(self.num_envs, None, dtype=object)
            for i in np.flatnonzero(done):
                final[i] = {"image": self._images[i].copy(), "vector": self.core.vector[i].copy()}
                self._start(i)
            info["final_info"], info["_final_info"] = dict(info), done
            info["final_obs"], info["_final_obs"] = final, done
        return self._obs(), reward, terminated, truncated, info

    def _start(self, index: int) -> None:
        self.core.reset_env(index, self._rngs[index])
        self._images[index] = self.core.frames[index][..., None]

    def _obs(self) -> dict[str, np.ndarray]:
        return {"image": self._images.copy(), "vector": self.core.vector.copy()}
