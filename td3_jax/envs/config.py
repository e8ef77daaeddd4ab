"""Settings of the driving environments: the embedded simulator and the backend choice.

`LaneSimConfig` is the `lanesim:` section of a training config, `GymConfig`
the `gym:` section and `EnvConfig` the `env:` section; `RewardConfig` (in
`reward.py`) is shared with CARLA. Defaults live only here;
`docs/environment.md` explains the task they define.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, Literal

from td3_jax.envs.carla.config import CarlaConfig
from td3_jax.envs.observation import ObservationConfig
from td3_jax.envs.reward import RewardConfig
from td3_jax.envs.spaces import DEFAULT_STACK


def _check_range(section: str, name: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise ValueError(f"{section}.{name} must be in [{low}, {high}], got {value}")


def _check_interval(section: str, name: str, pair: tuple[float, float], low: float) -> None:
    if len(pair) != 2 or not low <= pair[0] <= pair[1]:
        raise ValueError(f"{section}.{name} must be (low, high) with {low} <= low <= high, got {pair}")


@dataclasses.dataclass(frozen=True)
class LaneSimConfig:
    """The embedded lane-keeping simulator: road, traffic, vehicle, camera and episode rules."""

    scenario: int = 0
    """Traffic scenario: 0 light, 1 medium, 2 heavy (index into `npc_density_per_km`)."""
    npc_density_per_km: tuple[float, float, float] = (12.0, 30.0, 60.0)
    """NPC vehicles per km of lane for each scenario (the road has two lanes)."""
    npc_speed_mps: tuple[float, float] = (6.5, 10.0)
    """Range of the NPCs' desired speeds, drawn uniformly per vehicle."""
    npc_min_gap_m: float = 12.0
    """Smallest centre-to-centre spacing of NPCs in one lane at spawn."""
    spawn_clearance_m: float = 20.0
    """No NPC spawns within this arc length ahead of or behind the ego's start."""
    route_length_m: float = 300.0
    """Arc length from the start to the goal."""
    road_margin_back_m: float = 20.0
    """Road built behind the start."""
    road_margin_front_m: float = 80.0
    """Road built beyond the goal, so the camera and the look-ahead points see road there."""
    lane_width_m: float = 3.5
    """Width of each of the two lanes."""
    straight_length_m: tuple[float, float] = (20.0, 80.0)
    """Range of the straight sections' lengths."""
    curve_radius_m: tuple[float, float] = (25.0, 200.0)
    """Range of the curves' radii (the curvature is drawn uniformly between the inverses)."""
    curve_angle_deg: tuple[float, float] = (20.0, 90.0)
    """Range of the heading change of one curve, clothoid transitions included."""
    clothoid_length_m: tuple[float, float] = (8.0, 25.0)
    """Range of the length of each clothoid transition between straight and arc."""
    max_heading_deg: float = 75.0
    """The road's heading stays within this angle of its initial direction (it never crosses itself)."""
    num_waypoints: int = 25
    """Look-ahead points of the route in the observation vector."""
    waypoint_spacing_m: float = 2.0
    """Arc length between look-ahead points, and between the route waypoints that earn the bonus."""
    goal_tolerance_m: float = 3.0
    """The route counts as completed within this arc length of the goal."""
    offroad_limit_m: float = 2.5
    """The episode terminates when |lateral deviation from the lane centre| exceeds this."""
    max_episode_steps: int = 1000
    """Simulator steps after which the episode is truncated (time limit, bootstrapping continues)."""
    dt: float = 0.05
    """Simulated seconds per simulator step."""
    action_repeat: int = 1
    """Simulator steps per env step: the action is held, rewards are summed, the camera renders once at the end."""
    initial_speed_mps: float = 8.33
    """Ego speed at reset (30 km/h); the ego starts on the lane centre, aligned with the lane."""
    wheelbase_m: float = 2.875
    """Distance between the axles of the ego."""
    vehicle_length_m: float = 4.7
    """Length of the ego's body."""
    vehicle_width_m: float = 1.85
    """Width of the ego's body."""
    max_steer_deg: float = 35.0
    """Front-wheel angle at steer = +-1."""
    max_steer_rate_deg_s: float = 120.0
    """Fastest change of the front-wheel angle."""
    max_accel_mps2: float = 3.5
    """Acceleration at full throttle from rest (falls linearly to 0 at `max_speed_mps`)."""
    max_brake_mps2: float = 8.0
    """Deceleration at full brake."""
    coast_decel_mps2: float = 0.3
    """Rolling and air resistance while moving."""
    max_speed_mps: float = 30.0
    """Top speed."""
    max_lateral_accel_mps2: float = 8.0
    """Tyre grip: the path curvature is limited so that v^2 * curvature stays below this."""
    obstacle_range_m: float = 50.0
    """Range of the obstacle sensor (nearest vehicle ahead in the ego's path)."""
    camera_x_m: float = 1.6
    """Camera position ahead of the ego's centre."""
    camera_z_m: float = 1.5
    """Camera height above the ground."""
    camera_pitch_deg: float = 0.0
    """Camera pitch; negative looks down (CARLA convention)."""
    camera_fov_deg: float = 90.0
    """Horizontal field of view."""
    camera_aspect: float = 16.0 / 9.0
    """Aspect ratio of the emulated sensor (256x144 in the original) squeezed into the square frame."""
    render_distance_m: float = 150.0
    """Ground farther than this is drawn as horizon haze."""
    raster_cell_m: float = 0.2
    """Cell size of the top-down road raster the camera samples."""

    def __post_init__(self):
        sec = "lanesim"
        _check_range(sec, "scenario", self.scenario, 0, len(self.npc_density_per_km) - 1)
        if any(d < 0 for d in self.npc_density_per_km):
            raise ValueError(f"{sec}.npc_density_per_km must be >= 0, got {self.npc_density_per_km}")
        _check_interval(sec, "npc_speed_mps", self.npc_speed_mps, 0.5)
        _check_range(sec, "npc_min_gap_m", self.npc_min_gap_m, 6.0, 200.0)
        _check_range(sec, "spawn_clearance_m", self.spawn_clearance_m, 0.0, 200.0)
        _check_range(sec, "route_length_m", self.route_length_m, 20.0, 5000.0)
        _check_range(sec, "road_margin_back_m", self.road_margin_back_m, 5.0, 500.0)
        _check_range(sec, "road_margin_front_m", self.road_margin_front_m,
                     self.num_waypoints * self.waypoint_spacing_m, 1000.0)
        _check_range(sec, "lane_width_m", self.lane_width_m, 2.5, 5.0)
        _check_interval(sec, "straight_length_m", self.straight_length_m, 0.0)
        _check_interval(sec, "curve_radius_m", self.curve_radius_m, 2 * self.lane_width_m + 1.0)
        _check_interval(sec, "curve_angle_deg", self.curve_angle_deg, 1.0)
        _check_interval(sec, "clothoid_length_m", self.clothoid_length_m, 0.0)
        _check_range(sec, "max_heading_deg", self.max_heading_deg, 10.0, 85.0)
        _check_range(sec, "num_waypoints", self.num_waypoints, 1, 200)
        _check_range(sec, "waypoint_spacing_m", self.waypoint_spacing_m, 0.5, 20.0)
        _check_range(sec, "goal_tolerance_m", self.goal_tolerance_m, 0.0, 50.0)
        _check_range(sec, "offroad_limit_m", self.offroad_limit_m, 0.5, 10.0)
        _check_range(sec, "max_episode_steps", self.max_episode_steps, 1, 10**7)
        _check_range(sec, "dt", self.dt, 0.005, 0.2)
        _check_range(sec, "action_repeat", self.action_repeat, 1, 50)
        if self.max_episode_steps % self.action_repeat:
            raise ValueError(
                f"{sec}.max_episode_steps ({self.max_episode_steps}) counts simulator steps and must be a multiple "
                f"of {sec}.action_repeat ({self.action_repeat}), so that time limits fall on env steps"
            )
        _check_range(sec, "initial_speed_mps", self.initial_speed_mps, 0.0, self.max_speed_mps)
        _check_range(sec, "wheelbase_m", self.wheelbase_m, 1.0, 6.0)
        _check_range(sec, "vehicle_length_m", self.vehicle_length_m, self.wheelbase_m, 10.0)
        _check_range(sec, "vehicle_width_m", self.vehicle_width_m, 1.0, 3.0)
        _check_range(sec, "max_steer_deg", self.max_steer_deg, 5.0, 70.0)
        _check_range(sec, "max_steer_rate_deg_s", self.max_steer_rate_deg_s, 10.0, 10000.0)
        _check_range(sec, "max_accel_mps2", self.max_accel_mps2, 0.5, 15.0)
        _check_range(sec, "max_brake_mps2", self.max_brake_mps2, 0.5, 15.0)
        _check_range(sec, "coast_decel_mps2", self.coast_decel_mps2, 0.0, 3.0)
        _check_range(sec, "max_speed_mps", self.max_speed_mps, 5.0, 80.0)
        _check_range(sec, "max_lateral_accel_mps2", self.max_lateral_accel_mps2, 1.0, 15.0)
        _check_range(sec, "obstacle_range_m", self.obstacle_range_m, 5.0, 500.0)
        _check_range(sec, "camera_x_m", self.camera_x_m, -5.0, 5.0)
        _check_range(sec, "camera_z_m", self.camera_z_m, 0.3, 10.0)
        _check_range(sec, "camera_pitch_deg", self.camera_pitch_deg, -60.0, 20.0)
        _check_range(sec, "camera_fov_deg", self.camera_fov_deg, 30.0, 150.0)
        _check_range(sec, "camera_aspect", self.camera_aspect, 0.5, 4.0)
        _check_range(sec, "render_distance_m", self.render_distance_m, 10.0, 1000.0)
        _check_range(sec, "raster_cell_m", self.raster_cell_m, 0.05, 1.0)
        per_lane = (self.num_npcs() + 1) // 2
        free = self.road_length_m - 2 * self.spawn_clearance_m
        if per_lane * self.npc_min_gap_m > free:
            raise ValueError(
                f"{sec}.npc_density_per_km[{self.scenario}] = {self.npc_density_per_km[self.scenario]} puts "
                f"{per_lane} NPCs per lane, which do not fit npc_min_gap_m = {self.npc_min_gap_m} apart in the "
                f"{free:.0f} m of lane outside spawn_clearance_m; lower the density or lengthen the road"
            )

    @property
    def road_length_m(self) -> float:
        """Total arc length of the generated road: margin behind, route, margin beyond."""
        return self.road_margin_back_m + self.route_length_m + self.road_margin_front_m

    def num_npcs(self) -> int:
        """NPC vehicles of the configured scenario on the two lanes of the road."""
        lane_km = 2.0 * self.road_length_m / 1000.0
        return int(round(self.npc_density_per_km[self.scenario] * lane_km))


def _same_host(host: str) -> str:
    """The host with this machine's names made one, so that localhost:2000 and 127.0.0.1:2000 compare equal."""
    return "localhost" if host.lower() in ("localhost", "127.0.0.1", "::1", "[::1]") else host.lower()


def parse_server(server: str) -> tuple[str, int]:
    """("host", port) of a "host:port" string; ValueError with the expected form otherwise."""
    host, sep, port = server.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f'a CARLA server must look like "host:port" (e.g. "10.0.0.5:2000"), got {server!r}')
    return host, int(port)


@dataclasses.dataclass(frozen=True)
class WorkersConfig:
    """How envs are spread over processes and CARLA servers, and what a crash or a hang does."""

    workers: int = 0
    """Env worker processes; 0 steps every env in the training process, except carla envs: one worker each."""
    carla_in_process: bool = False
    """Step carla envs in the training process, unsupervised (debugging, in-process stand-ins of a server)."""
    carla_servers: tuple[str, ...] = ()
    """CARLA servers as "host:port", one env and worker each: env i uses servers[i] and TM port carla.tm_port + i."""
    carla_server_command: str | None = None
    """Command that starts one CARLA server, with {port} (and optionally {streaming_port}, {primary_port}, {gpu},
    {index}); set, training starts one server per env on this machine, restarts it with its worker, and stops it."""
    carla_server_port_stride: int = 10
    """Started server i (from 0) listens on carla.port + (i + 1) * this, and on the next two ports (streaming,
    secondary); carla.port stays for the evaluation env's server."""
    carla_server_gpus: tuple[int, ...] = ()
    """GPUs for started servers: server i gets gpus[i % len] as CUDA_VISIBLE_DEVICES and {gpu}; empty: inherited."""
    carla_server_ready_timeout_s: float = 60.0
    """How long a CARLA server (started or remote) may take to accept connections before training gives up."""
    on_failure: Literal["restart", "drop"] = "restart"
    """A failed worker is restarted in a new process, or dropped (its envs stop producing data)."""
    max_restarts: int = 3
    """Restarts of one worker before it is dropped."""
    step_timeout_s: float | None = None
    """A worker whose step takes longer counts as failed; null: for carla
    carla.action_repeat * (2 * carla.tick_timeout_s + carla.event_wait_s) + 10, else no limit."""
    reset_timeout_s: float | None = None
    """The same for a reset (and a restarted worker's start); null: the env's whole reconnection budget for carla
    (see docs/carla.md), else no limit."""
    start_method: Literal["spawn", "forkserver", "fork"] = "spawn"
    """multiprocessing start method (fork is unsafe once JAX has started threads)."""

    def __post_init__(self):
        if self.workers < 0:
            raise ValueError(f"env.workers.workers must be >= 0, got {self.workers}")
        if self.max_restarts < 0:
            raise ValueError(f"env.workers.max_restarts must be >= 0, got {self.max_restarts}")
        for name in ("step_timeout_s", "reset_timeout_s"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"env.workers.{name} must be > 0 or null, got {value}")
        if self.carla_server_ready_timeout_s <= 0:
            raise ValueError(
                f"env.workers.carla_server_ready_timeout_s must be > 0, got {self.carla_server_ready_timeout_s}"
            )
        for server in self.carla_servers:
            parse_server(server)
        if self.carla_in_process and (self.carla_servers or self.carla_server_command is not None or self.workers):
            raise ValueError(
                "env.workers.carla_in_process runs the envs in the training process: it excludes workers, "
                "carla_servers and carla_server_command"
            )
        if self.carla_server_command is not None:
            if self.carla_servers:
                raise ValueError("set env.workers.carla_server_command or env.workers.carla_servers, not both")
            if "{port}" not in self.carla_server_command:
                raise ValueError(
                    "env.workers.carla_server_command must contain {port} (e.g. "
                    f"\"CarlaUE4.sh -RenderOffScreen -nosound -carla-rpc-port={{port}}\"), got {self.carla_server_command!r}"
                )
        if self.carla_server_port_stride < 3:
            raise ValueError(
                f"env.workers.carla_server_port_stride must be >= 3 (RPC, streaming and secondary port per server), "
                f"got {self.carla_server_port_stride}"
            )


class FrozenDict(dict):
    """A read-only, hashable dict, so that a free-form mapping can sit in a frozen config.

    It is a dict for everything that reads one (`dataclasses.asdict`, JSON,
    `gymnasium.make(**...)`); only the methods that change it are refused.
    """

    def _refuse(self, *args, **kwargs):
        raise TypeError("a config mapping is read-only; build a new config with dataclasses.replace")

    __setitem__ = __delitem__ = __ior__ = clear = pop = popitem = setdefault = update = _refuse

    def __hash__(self):
        return hash(frozenset(self.items()))

    def __reduce__(self):  # pickling would otherwise refill the dict item by item, through __setitem__
        return type(self), (dict(self),)


def _frozen(value: Any, key: str) -> Any:
    """`value`, a mapping's entry, with mappings as FrozenDicts and lists as tuples; ValueError for anything
    that would not come back unchanged from the YAML and JSON a run and its checkpoints store."""
    if isinstance(value, Mapping):
        for name in value:
            if not isinstance(name, str):
                raise ValueError(f"{key} must have string keys, got {name!r}")
        return FrozenDict((name, _frozen(item, f"{key}.{name}")) for name, item in value.items())
    if isinstance(value, (list, tuple)):
        return tuple(_frozen(item, f"{key}[{i}]") for i, item in enumerate(value))
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    raise ValueError(
        f"{key} must be a string, number, boolean, null, list or mapping, got {type(value).__name__} {value!r}"
    )


def _thawed(value: Any) -> Any:
    """A fresh, mutable copy of a `_frozen` value: dicts for mappings, tuples for sequences.

    Tuples, because YAML cannot say which an env wants and tuples are what
    shapes need (highway-env computes `(stack_size,) + observation_shape`).
    """
    if isinstance(value, Mapping):
        return {name: _thawed(item) for name, item in value.items()}
    if isinstance(value, tuple):
        return tuple(_thawed(item) for item in value)
    return value


def split_gym_id(env_id: str) -> tuple[str | None, str]:
    """(module or None, registered id) of a gymnasium id written `[module:]id`, e.g. "highway_env:racetrack-v0".

    `gymnasium.make` imports the module before looking the id up, so the module's import registers the env.
    """
    module, sep, name = env_id.rpartition(":")
    return (module if sep else None), name


def _is_gym_backend(backend: str) -> bool:
    """gym:<id> or gym:<module>:<id>, the module a dotted Python name (gymnasium splits the id at its one colon)."""
    if not backend.startswith("gym:"):
        return False
    module, name = split_gym_id(backend.removeprefix("gym:"))
    if not name or (module is not None and ":" in module):
        return False
    return module is None or all(part.isidentifier() for part in module.split("."))


_MAKE_KWARGS_SET_ELSEWHERE = {
    "id": "env.backend",
    "stack": "env.stack",
    "seed": "env.seed",
    "layout": "env.gym.layout",
    "value_range": "env.gym.value_range",
    "image_key": "env.gym.image_key",
    "vector_keys": "env.gym.vector_keys",
}
"""Arguments of `make_gym_env` itself: a key of the same name in make_kwargs could not reach `gymnasium.make`."""


@dataclasses.dataclass(frozen=True)
class GymConfig:
    """A gym:<id> env: the arguments of gymnasium.make and how the adapter reads its observation (docs/gym_envs.md)."""

    make_kwargs: dict[str, Any] = dataclasses.field(default_factory=FrozenDict)
    """Keyword arguments of gymnasium.make, e.g. {continuous: true} for CarRacing or {config: {...}} for highway-env; mappings may nest, lists arrive as tuples."""
    layout: str | None = None
    """Axes of the image observation in the letters h, w, c, s, (sc), e.g. "chw" or "shw"; null: guessed from its shape."""
    value_range: tuple[float, float] | None = None
    """(low, high) of the raw image values, mapped to [0, 255]; null: [0, 255] for uint8 images, else the Box bounds."""
    image_key: str | None = None
    """The image entry of a Dict observation; null: the only image Box, or the first of image, pixels, rgb, camera, observation."""
    vector_keys: tuple[str, ...] | None = None
    """The Dict entries concatenated into the vector; null: every entry but the image (all must be Boxes)."""

    def __post_init__(self):
        sec = "env.gym"
        if not isinstance(self.make_kwargs, Mapping):
            raise ValueError(f"{sec}.make_kwargs must be a mapping of keyword arguments, got {self.make_kwargs!r}")
        object.__setattr__(self, "make_kwargs", _frozen(self.make_kwargs, f"{sec}.make_kwargs"))
        for name, where in _MAKE_KWARGS_SET_ELSEWHERE.items():
            if name in self.make_kwargs:
                raise ValueError(f"{sec}.make_kwargs cannot hold {name!r}: the adapter takes it from {where}; set that")
        if self.layout is not None:
            from td3_jax.envs.gym_adapter import parse_layout  # imports gymnasium: only when a layout is set

            try:
                parse_layout(self.layout)
            except ValueError as error:
                raise ValueError(f"{sec}.layout: {error}") from None
        if self.value_range is not None:
            pair = tuple(self.value_range)
            if len(pair) != 2 or not all(math.isfinite(v) for v in pair) or not pair[0] < pair[1]:
                raise ValueError(f"{sec}.value_range must be [low, high] with finite low < high, got {self.value_range}")
            object.__setattr__(self, "value_range", pair)
        if self.vector_keys is not None:
            object.__setattr__(self, "vector_keys", tuple(self.vector_keys))
            if len(set(self.vector_keys)) != len(self.vector_keys):
                raise ValueError(f"{sec}.vector_keys names an entry twice: {list(self.vector_keys)}")
            if self.image_key is not None and self.image_key in self.vector_keys:
                raise ValueError(f"{sec}.vector_keys holds the image_key {self.image_key!r}")

    def gymnasium_make_kwargs(self) -> dict[str, Any]:
        """make_kwargs as a fresh dict for one `gymnasium.make`: an env may keep and change what it is given."""
        return _thawed(self.make_kwargs)


@dataclasses.dataclass(frozen=True)
class EnvConfig:
    """Which backend to drive and how its observations are stacked."""

    backend: str = "lanesim"
    """"lanesim" (embedded simulator), "carla", or "gym:<id>" / "gym:<module>:<id>" for a gymnasium env with images (the module is imported first, to register the id)."""
    stack: int = DEFAULT_STACK
    """Frames per observation (oldest first on the last image axis)."""
    seed: int = 0
    """Seed of the first reset; later resets continue the env's own random stream."""
    num_envs: int = 1
    """Envs stepped together by `make_vec_env`."""
    lanesim: LaneSimConfig = LaneSimConfig()
    """Settings of the embedded simulator."""
    reward: RewardConfig = RewardConfig()
    """Reward weights and thresholds (lanesim and carla)."""
    observation: ObservationConfig = ObservationConfig()
    """Scales of the observation vector (lanesim and carla)."""
    carla: CarlaConfig = CarlaConfig()
    """Settings of the CARLA backend."""
    workers: WorkersConfig = WorkersConfig()
    """Env worker processes, CARLA servers and crash handling (docs/scaling.md)."""
    gym: GymConfig = GymConfig()
    """gymnasium.make arguments and observation reading of a gym:<id> backend (docs/gym_envs.md)."""

    def evaluation_shares_training_world(self) -> bool:
        """Whether an evaluation env (on carla.host:carla.port) drives in the world of a training env.

        True for CARLA unless the training envs have servers of their own (started by carla_server_command on
        other ports, or carla_servers without carla.host:carla.port): a CARLA world holds every client's
        vehicles and is ticked by each of them.
        """
        if self.backend != "carla" or self.workers.carla_server_command is not None:
            return False
        servers = {(_same_host(host), port) for host, port in map(parse_server, self.workers.carla_servers)}
        return not servers or (_same_host(self.carla.host), self.carla.port) in servers

    def __post_init__(self):
        if self.backend not in ("lanesim", "carla") and not _is_gym_backend(self.backend):
            raise ValueError(
                'env.backend must be "lanesim", "carla", "gym:<id>" or "gym:<module>:<id>" '
                f"(e.g. gym:CarRacing-v3, gym:highway_env:racetrack-v0), got {self.backend!r}"
            )
        if not self.backend.startswith("gym:") and self.gym != GymConfig():
            raise ValueError(
                f"env.gym configures a gym:<id> backend, but env.backend is {self.backend!r}; "
                "remove env.gym or set env.backend"
            )
        if self.backend.startswith("gym:") and self.observation != ObservationConfig():
            raise ValueError(
                f"env.observation scales the lanesim and carla vector; a {self.backend} env makes its own vector. "
                "Remove env.observation"
            )
        _check_range("env", "stack", self.stack, 1, 16)
        _check_range("env", "seed", self.seed, 0, 2**63 - 1)
        _check_range("env", "num_envs", self.num_envs, 1, 4096)

