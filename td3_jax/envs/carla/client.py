"""One connection to a CARLA server: world settings, Traffic Manager, ego, sensors, NPCs.

Host-side code. The `carla` module is passed in (never imported at module
level) so that the rest of td3_jax does not need the package and tests can
drive a session with the real `carla` value classes against a stand-in client.
Every CARLA call that can block has a timeout: RPCs through
`client.set_timeout`, ticks through `world.tick(seconds)`, sensor frames
through `wait_for_frame`. A timeout or a lost connection raises RuntimeError
(what `carla` raises, and what `SensorTimeout` subclasses); the env decides
what to do with it.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import queue
import socket
import time
from typing import Any, Callable, NamedTuple

import numpy as np

from td3_jax.envs.carla import logic
from td3_jax.envs.carla.config import CarlaConfig

log = logging.getLogger(__name__)

# Lane types a car may drive on; any other surface under its centre is off-road.
_ROAD_LANE_TYPES = ("Driving", "Parking", "Bidirectional")
_LIFT_M = 0.5  # spawn above the road so the chassis does not start inside it
_LOAD_WORLD_TIMEOUT_S = 60.0
_session_numbers = itertools.count()
_live_owners: set[str] = set()  # owners of the sessions of this process that are not closed


def process_alive(pid: int) -> bool:
    """Whether a process of this host is running (signal 0 checks without signalling); a zombie is not."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    try:  # a killed worker its parent has not reaped yet still answers signal 0
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def destroy_leftovers(carla: Any, client: Any, world: Any) -> int:
    """Destroys the actors of td3_jax sessions that are gone (killed, restarted, timed out destroying).

    Such actors stay in the world, block spawn points and keep their sensors
    streaming. Only actors whose `role_name` names a dead td3_jax owner are
    destroyed (one batch); other clients' actors are left alone. Returns how many.
    """
    host, pid = socket.gethostname(), os.getpid()
    leftovers = [
        actor.id for actor in world.get_actors()
        if logic.is_leftover(actor.attributes.get("role_name", ""), host, pid, _live_owners, process_alive)
    ]
    if leftovers:
        log.warning("destroying %d actors left by earlier td3_jax sessions", len(leftovers))
        client.apply_batch_sync([carla.command.DestroyActor(i) for i in leftovers], False)
    return len(leftovers)


def sync_settings(carla: Any, current: Any, fixed_delta_seconds: float) -> Any:
    """`current` world settings switched to synchronous mode with a fixed step.

    Rendering stays on: with `no_rendering_mode` cameras return empty images.
    The physics substeps must cover the step (CARLA rejects settings where
    max_substeps * max_substep_delta_time < fixed_delta_seconds).
    """
    settings = clone_settings(carla, current)
    settings.synchronous_mode = True
    settings.no_rendering_mode = False
    settings.fixed_delta_seconds = fixed_delta_seconds
    if settings.substepping and settings.max_substeps * settings.max_substep_delta_time < fixed_delta_seconds:
        settings.max_substeps = math.ceil(fixed_delta_seconds / settings.max_substep_delta_time)
    return settings


def restore_settings(carla: Any, original: Any) -> Any:
    """The settings to leave the server in: the original ones, never synchronous.

    A server left in synchronous mode waits for a tick that never comes, which
    blocks the next client; an original synchronous setting can only be a
    leftover of a client that died without restoring.
    """
    settings = clone_settings(carla, original)
    settings.synchronous_mode = False
    if original.synchronous_mode:
        settings.fixed_delta_seconds = None
    return settings


def settings_fields(carla: Any) -> list[str]:
    """Names of the `carla.WorldSettings` fields of the installed client (its properties)."""
    return sorted(name for name, value in vars(carla.WorldSettings).items() if isinstance(value, property))


def clone_settings(carla: Any, settings: Any) -> Any:
    """A copy of a `carla.WorldSettings`, every field of the installed client (the class has no copy support)."""
    copy = carla.WorldSettings()
    for name in settings_fields(carla):
        setattr(copy, name, getattr(settings, name))
    return copy


def vehicle_control(carla: Any, action: np.ndarray) -> Any:
    """The `carla.VehicleControl` of an action (steer, throttle_brake) in [-1, 1]."""
    steer, throttle, brake = logic.action_to_control(action)
    return carla.VehicleControl(throttle=throttle, steer=steer, brake=brake)


def camera_transform(carla: Any, mount: tuple[float, float, float, float]) -> Any:
    """Camera pose relative to the ego: mount = (x forward, y right, z up, pitch deg), CARLA's frame."""
    x, y, z, pitch = mount
    return carla.Transform(carla.Location(x=x, y=y, z=z), carla.Rotation(pitch=pitch))


def camera_attributes(config: CarlaConfig) -> dict[str, str]:
    """Blueprint attributes of the RGB camera; sensor_tick 0 renders one image per tick."""
    return {
        "image_size_x": str(config.camera_width),
        "image_size_y": str(config.camera_height),
        "fov": str(config.camera_fov),
        "sensor_tick": "0.0",
    }


def lifted(carla: Any, transform: Any) -> Any:
    """A spawn pose: the lane waypoint's transform raised by half a metre, level."""
    loc = transform.location
    return carla.Transform(
        carla.Location(x=loc.x, y=loc.y, z=loc.z + _LIFT_M), carla.Rotation(yaw=transform.rotation.yaw)
    )


class Route(NamedTuple):
    """The lane the ego follows this episode, in the right-handed plane."""

    waypoints: np.ndarray
    """(N, 2) float64 map waypoints, `route_spacing_m` apart."""
    waypoint_arcs: np.ndarray
    """(N,) float64 arc length of each waypoint."""
    dense: np.ndarray
    """(M, 2) float64 the same line every `route_dense_spacing_m`."""
    dense_arcs: np.ndarray
    """(M,) float64 arc lengths of `dense`."""
    half_widths: np.ndarray
    """(M,) float64 half lane width at each dense point, m."""
    start: Any
    """`carla.Transform` the ego is placed at."""


class Reading(NamedTuple):
    """What one tick produced, matched to its frame id. Positions in the right-handed plane."""

    frame: int
    gray: np.ndarray
    """(84, 84) uint8 camera frame of this tick."""
    position: np.ndarray
    """(2,) ego x, y."""
    yaw: float
    height: float
    """Ego z, m."""
    vertical_speed: float
    """Ego vertical velocity, m/s, positive up."""
    velocity: np.ndarray
    """(2,) ego planar velocity, m/s."""
    accel: float
    """Magnitude of the ego's acceleration vector, m/s^2."""
    yaw_rate: float
    """rad/s, positive turning left."""
    collision_impulse: float
    """Summed collision impulse of this tick, N*s; 0 without a collision."""
    collided: bool
    lane_invasion: bool
    offroad: bool
    others_xy: np.ndarray
    """(K, 2) positions of the NPC vehicles."""
    others_velocity: np.ndarray
    """(K, 2) their planar velocities."""


class CarlaSession:
    """A client, its world in synchronous mode, the Traffic Manager and the actors it spawned.

    Host-side. Build it with `CarlaSession.connect`; `close` destroys the actors
    and gives the server back in asynchronous mode.
    """

    def __init__(self, carla: Any, client: Any, world: Any, tm: Any, config: CarlaConfig, original_settings: Any):
        self.carla = carla
        self.client = client
        self.world = world
        self.tm = tm
        self.config = config
        self.original_settings = original_settings
        self.owner = f"{socket.gethostname()}/{os.getpid()}/{next(_session_numbers)}"
        _live_owners.add(self.owner)
        self.map = world.get_map()
        self.spawn_points = list(self.map.get_spawn_points())
        self.spawn_xy = np.array(
            [logic.carla_to_plane(t.location.x, t.location.y, 0.0)[:2] for t in self.spawn_points], np.float64
        ).reshape(-1, 2)
        self.ego: Any = None
        self.sensors: list[Any] = []
        self.npc_ids: list[int] = []
        self._camera_q: queue.Queue = queue.Queue()
        self._collision_q: queue.Queue = queue.Queue()
        self._invasion_q: queue.Queue = queue.Queue()
        self._collision_carry: list = []
        self._invasion_carry: list = []
        self._bumper_offset = 4.5

    @classmethod
    def connect(
        cls,
        carla: Any,
        client_factory: Callable[[str, int], Any],
        config: CarlaConfig,
        seed: int,
        original_settings: Any = None,
    ) -> "CarlaSession":
        """Connects, loads the map if needed, and puts world and Traffic Manager in synchronous mode.

        Args:
          carla: the `carla` module.
          client_factory: builds a client, `carla.Client` normally.
          config: connection and world settings.
          seed: Traffic Manager seed.
          original_settings: settings to restore on close; None reads them from the server.

        Raises:
          RuntimeError: no server answered within `config.connect_timeout_s`.
        """
        client = client_factory(config.host, config.port)
        client.set_timeout(config.connect_timeout_s)
        server_version = client.get_server_version()
        if server_version.split("-")[0] != client.get_client_version().split("-")[0]:
            log.warning("CARLA server %s, client %s: versions differ", server_version, client.get_client_version())
        world = client.get_world()
        if not world.get_map().name.split("/")[-1] == config.map:
            client.set_timeout(max(_LOAD_WORLD_TIMEOUT_S, config.connect_timeout_s))
            world = client.load_world(config.map)
            client.set_timeout(config.connect_timeout_s)
        destroy_leftovers(carla, client, world)
        if original_settings is None:
            original_settings = world.get_settings()
        world.apply_settings(sync_settings(carla, original_settings, config.fixed_delta_seconds))
        tm = client.get_trafficmanager(config.tm_port)
        tm.set_synchronous_mode(True)
        tm.set_random_device_seed(seed)
        return cls(carla, client, world, tm, config, original_settings)

    # ------------------------------------------------------------------ route and placement

    def build_route(self, spawn_index: int, rng: np.random.Generator) -> Route:
        """The lane from a spawn point, `route_length_m` long (shorter at a dead end)."""
        cfg = self.config
        wp = self.map.get_waypoint(self.spawn_points[spawn_index].location, project_to_road=True)
        lane = [wp]
        while (len(lane) - 1) * cfg.route_spacing_m < cfg.route_length_m:
            options = wp.next(cfg.route_spacing_m)
            if not options:
                break
            choice = logic.choose_branch(
                wp.transform.rotation.yaw, [o.transform.rotation.yaw for o in options], cfg.route_branch, rng
            )
            wp = options[choice]
            lane.append(wp)
        if len(lane) < 2:
            raise RuntimeError(f"spawn point {spawn_index} has no lane to follow")
        points = np.array(
            [logic.carla_to_plane(w.transform.location.x, w.transform.location.y, 0.0)[:2] for w in lane]
        )
        arcs = logic.arc_lengths(points)
        dense = logic.densify(points, cfg.route_dense_spacing_m)
        dense_arcs = logic.arc_lengths(dense)
        half_widths = np.interp(dense_arcs, arcs, [w.lane_width / 2 for w in lane])
        return Route(points, arcs, dense, dense_arcs, half_widths, lifted(self.carla, lane[0].transform))

    def place_ego(self, transform: Any) -> None:
        """Spawns the ego and its sensors once per session; later episodes move it back, at rest."""
        carla = self.carla
        if self.ego is None:
            library = self.world.get_blueprint_library()
            blueprint = self._tagged(library.find(self.config.ego_blueprint), "ego")
            self.ego = self.world.spawn_actor(blueprint, transform)
            extent = self.ego.bounding_box.extent
            self._bumper_offset = extent.x + 2.4  # plus a typical car's half length
            self._attach_sensors(library)
        else:
            self.ego.set_transform(transform)
            self.ego.set_target_velocity(carla.Vector3D())
            self.ego.set_target_angular_velocity(carla.Vector3D())
        self.ego.apply_control(carla.VehicleControl())

    def _tagged(self, blueprint: Any, kind: str) -> Any:
        """`blueprint` with this session's `role_name` (vehicles and sensors have the attribute)."""
        if blueprint.has_attribute("role_name"):
            blueprint.set_attribute("role_name", logic.role_name(kind, self.owner))
        return blueprint

    def _attach_sensors(self, library: Any) -> None:
        carla = self.carla
        camera_bp = self._tagged(library.find("sensor.camera.rgb"), "sensor")
        for name, value in camera_attributes(self.config).items():
            camera_bp.set_attribute(name, value)
        specs = (
            (camera_bp, camera_transform(carla, self.config.camera_mount), self._camera_q),
            (self._tagged(library.find("sensor.other.collision"), "sensor"), carla.Transform(), self._collision_q),
            (self._tagged(library.find("sensor.other.lane_invasion"), "sensor"), carla.Transform(), self._invasion_q),
        )
        for blueprint, pose, readings in specs:
            sensor = self.world.spawn_actor(blueprint, pose, attach_to=self.ego)
            self.sensors.append(sensor)
            sensor.listen(readings.put)

    def spawn_npcs(self, count: int, rng: np.random.Generator, ego_start: Any) -> None:
        """Spawns `count` NPC vehicles under the Traffic Manager, away from `ego_start` (one batch, one tick).

        The keep-out zone is centred on the ego's spawn transform: the ego's own
        `get_transform()` is the origin until a tick has run (carla#1424).
        """
        if count <= 0:
            return
        carla = self.carla
        ego = ego_start.location
        ego_xy = np.array(logic.carla_to_plane(ego.x, ego.y, 0.0)[:2])
        indices = logic.spread_npc_spawns(self.spawn_xy, ego_xy, count, self.config.npc_min_distance_m, rng)
        blueprints = [
            bp for bp in self.world.get_blueprint_library().filter("vehicle.*")
            if not bp.has_attribute("number_of_wheels") or bp.get_attribute("number_of_wheels").as_int() == 4
        ]
        batch = []
        for index in indices:
            blueprint = self._tagged(blueprints[int(rng.integers(len(blueprints)))], "npc")
            batch.append(
                carla.command.SpawnActor(blueprint, self.spawn_points[int(index)]).then(
                    carla.command.SetAutopilot(carla.command.FutureActor, True, self.config.tm_port)
                )
            )
        responses = self.client.apply_batch_sync(batch, True)
        self.npc_ids = [r.actor_id for r in responses if not r.error]
        if len(self.npc_ids) < count:
            log.info("spawned %d of %d NPC vehicles (the others had no free spawn point)", len(self.npc_ids), count)

    def destroy_npcs(self) -> None:
        """Destroys the NPC vehicles (one batch)."""
        if self.npc_ids:
            self.client.apply_batch_sync([self.carla.command.DestroyActor(i) for i in self.npc_ids], False)
        self.npc_ids = []

    def npc_positions(self) -> np.ndarray:
        """(K, 2) plane positions of the NPCs in the latest snapshot."""
        snapshot = self.world.get_snapshot()
        xy = []
        for actor_id in self.npc_ids:
            if snapshot.has_actor(actor_id):
                loc = snapshot.find(actor_id).get_transform().location
                xy.append(logic.carla_to_plane(loc.x, loc.y, 0.0)[:2])
        return np.array(xy, np.float64).reshape(-1, 2)

    # ------------------------------------------------------------------ stepping

    def tick(self, control: Any) -> Reading:
        """Applies `control`, advances one fixed step and returns that step's readings.

        Collision and lane-invasion events are those whose frame is this tick's
        (or an earlier one's, if they came later than `event_wait_s`).

        Raises:
          RuntimeError: the tick or its camera frame did not come within `tick_timeout_s`.
        """
        timeout = self.config.tick_timeout_s
        self.ego.apply_control(control)
        frame = self.world.tick(timeout)
        events_deadline = time.monotonic() + self.config.event_wait_s
        image, _ = logic.wait_for_frame(self._camera_q, frame, timeout)
        gray = logic.bgra_to_gray(image.raw_data, image.height, image.width)
        collisions = logic.drain_events(self._collision_q, frame, self._collision_carry, events_deadline)
        invasions = logic.drain_events(self._invasion_q, frame, self._invasion_carry, events_deadline)
        snapshot = self.world.get_snapshot()
        if snapshot.frame != frame:
            raise logic.SensorTimeout(f"world snapshot is frame {snapshot.frame}, ticked {frame}")
        state = snapshot.find(self.ego.id)
        tf = state.get_transform()
        x, y, yaw = logic.carla_to_plane(tf.location.x, tf.location.y, tf.rotation.yaw)
        vel = state.get_velocity()
        acc = state.get_acceleration()
        others, others_vel = [], []
        for actor_id in self.npc_ids:
            if snapshot.has_actor(actor_id):
                npc = snapshot.find(actor_id)
                loc, v = npc.get_transform().location, npc.get_velocity()
                others.append((loc.x, -loc.y))
                others_vel.append((v.x, -v.y))
        impulse = sum(math.hypot(e.normal_impulse.x, e.normal_impulse.y, e.normal_impulse.z) for e in collisions)
        return Reading(
            frame=frame,
            gray=gray,
            position=np.array([x, y]),
            yaw=yaw,
            height=tf.location.z,
            vertical_speed=vel.z,
            velocity=np.array([vel.x, -vel.y]),
            accel=math.sqrt(acc.x**2 + acc.y**2 + acc.z**2),
            yaw_rate=-math.radians(state.get_angular_velocity().z),
            collision_impulse=float(impulse),
            collided=bool(collisions),
            lane_invasion=bool(invasions),
            offroad=self._offroad(tf.location),
            others_xy=np.array(others, np.float64).reshape(-1, 2),
            others_velocity=np.array(others_vel, np.float64).reshape(-1, 2),
        )

    def _offroad(self, location: Any) -> bool:
        lane_type = self.carla.LaneType
        wp = self.map.get_waypoint(location, project_to_road=False, lane_type=lane_type.Any)
        if wp is None:
            return True
        return not any(wp.lane_type == getattr(lane_type, name) for name in _ROAD_LANE_TYPES)

    def bumper_offset(self) -> float:
        """Centre-to-centre distance (m) of the ego and a car ahead at a zero gap."""
        return self._bumper_offset

    def forget_events(self) -> None:
        """Drops queued collision and lane-invasion events (those of the previous episode's end)."""
        for readings in (self._collision_q, self._invasion_q):
            while True:
                try:
                    readings.get_nowait()
                except queue.Empty:
                    break
        self._collision_carry.clear()
        self._invasion_carry.clear()

    # ------------------------------------------------------------------ teardown

    def close(self, restore: bool = True) -> None:
        """Destroys the actors and, with `restore`, gives the server back asynchronous.

        Best effort: each call is tried even if an earlier one failed (the
        server may be gone), and nothing raises.
        """
        steps: list[tuple[str, Callable[[], Any]]] = [(f"stop {s.type_id}", s.stop) for s in self.sensors]
        actors = [s.id for s in self.sensors] + ([self.ego.id] if self.ego is not None else []) + self.npc_ids
        if actors:
            commands = [self.carla.command.DestroyActor(i) for i in actors]
            steps.append(("destroy actors", lambda: self.client.apply_batch_sync(commands, False)))
        if restore:
            steps.append(("traffic manager to async", lambda: self.tm.set_synchronous_mode(False)))
            steps.append(
                ("restore world settings", lambda: self.world.apply_settings(
                    restore_settings(self.carla, self.original_settings)))
            )
        for what, call in steps:
            try:
                call()
            except Exception as error:  # noqa: BLE001 - teardown must go on whatever failed
                log.warning("CARLA teardown: %s failed: %s", what, error)
        self.sensors, self.ego, self.npc_ids = [], None, []
        _live_owners.discard(self.owner)
