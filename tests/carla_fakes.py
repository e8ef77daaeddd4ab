"""An in-process stand-in for a CARLA server, for tests of the CARLA env and of training on it.

The stand-in is a straight road along CARLA's +x axis, an ego that moves
10 m/s x throttle forward and 0.5 m x steer to CARLA's right per tick, and a
camera whose image is uniformly the tick's frame id (mod 256). As a CARLA
0.9.16 server: actors outlive the client that spawned them, a vehicle cannot
spawn at an occupied spawn point, an actor's `get_transform` is the origin
until the first tick after its spawn, the ego falls with gravity onto the road,
and (with `event_delay_s`) collision and lane-invasion events come from
another thread after the tick returned. Value objects
(Transform, VehicleControl, WorldSettings, ...) are the real `carla` classes;
only client, world, map, actors and batch commands are fakes. Build an env
with ``CarlaEnv(..., carla_module=CarlaWithFakeCommands(), client_factory=FakeServer().client)``.
`SharedWorldServer` is one world for clients in several processes (worker processes and the trainer's).
"""

import os
import threading
from pathlib import Path
from types import SimpleNamespace

import carla

from td3_jax.envs.carla.client import process_alive

TIMEOUT_MESSAGE = "time-out of 10000ms while waiting for the simulator"


class FakeWaypoint:
    def __init__(self, x):
        self.x = x
        self.transform = carla.Transform(carla.Location(x=x, y=0.0, z=0.0), carla.Rotation(yaw=0.0))
        self.lane_width = 3.5
        self.lane_type = carla.LaneType.Driving

    def next(self, distance):
        return [FakeWaypoint(self.x + distance)]


class FakeMap:
    name = "Carla/Maps/Town01"

    def get_spawn_points(self):
        return [carla.Transform(carla.Location(x=x, y=0.0, z=0.3)) for x in (0.0, 500.0, 1000.0)]

    def get_waypoint(self, location, project_to_road=True, lane_type=None):
        if project_to_road or abs(location.y) < 5.0:
            return FakeWaypoint(location.x)
        return None


class FakeActor:
    def __init__(self, server, actor_id, type_id, transform, parent=None, attributes=None):
        self.server, self.id, self.type_id, self.parent = server, actor_id, type_id, parent
        self.attributes = dict(attributes or {})
        self.transform = transform
        self.ticked = False  # until the first tick after its spawn, get_transform is the origin (carla#1424)
        self.control = carla.VehicleControl()
        self.vertical_speed = 0.0
        self.callback = None
        self.bounding_box = SimpleNamespace(extent=carla.Vector3D(2.4, 1.0, 0.8))

    def listen(self, callback):
        self.callback = callback

    def stop(self):
        self.callback = None

    def apply_control(self, control):
        self.control = control

    def set_transform(self, transform):
        self.transform = transform

    def get_transform(self):
        return self.transform if self.ticked else carla.Transform()

    def set_target_velocity(self, v):
        self.server.calls.append("set_target_velocity")
        self.vertical_speed = v.z

    def set_target_angular_velocity(self, v):
        pass


class FakeBlueprint:
    """Vehicles and sensors have a `role_name` attribute, as in CARLA 0.9.16."""

    def __init__(self, type_id):
        self.id = type_id
        self.attributes = {"role_name": ""}
        if type_id == "sensor.camera.rgb":
            self.attributes.update(image_size_x="800", image_size_y="600", fov="90", sensor_tick="0.0")

    def set_attribute(self, name, value):
        if name not in self.attributes:
            raise IndexError(f"blueprint {self.id} has no attribute {name}")
        self.attributes[name] = value

    def has_attribute(self, name):
        return name in self.attributes


class FakeLibrary:
    def find(self, type_id):
        return FakeBlueprint(type_id)

    def filter(self, pattern):
        return [FakeBlueprint("vehicle.a"), FakeBlueprint("vehicle.b")]


class FakeSnapshot:
    def __init__(self, frame, actors):
        self.frame, self._actors = frame, actors

    def has_actor(self, actor_id):
        return actor_id in self._actors

    def find(self, actor_id):
        actor = self._actors[actor_id]
        speed = 10.0 * actor.control.throttle if actor.type_id.startswith("vehicle.tesla") else 0.0
        return SimpleNamespace(
            get_transform=lambda: actor.transform,
            get_velocity=lambda: carla.Vector3D(speed, 0.0, actor.vertical_speed),
            get_acceleration=lambda: carla.Vector3D(0.0, 0.0, 0.0),
            get_angular_velocity=lambda: carla.Vector3D(0.0, 0.0, 0.0),
        )


SPAWN_CLEARANCE_M = 2.0


class FakeServer:
    """World state that outlives clients; `hang_ticks` / `refuse_connections` / `fail_destroys` inject failures.

    Actors stay until destroyed, whichever client spawned them; a vehicle cannot
    spawn within `SPAWN_CLEARANCE_M` of another (CARLA's blocked spawn point).
    """

    def __init__(self):
        self.calls: list = []
        self.settings = carla.WorldSettings()
        self.actors: dict[int, FakeActor] = {}
        self.frame = 100
        self.next_id = 1
        self.hang_ticks = 0
        self.refuse_connections = 0
        self.collide_at: set[int] = set()
        self.invade_at: set[int] = set()
        self.event_delay_s = None  # seconds: events come from another thread this long after the tick
        self.fail_destroys = 0
        self.road_z = 0.0  # the ego falls from its spawn height with gravity until it reaches this
        self.clients = 0

    def client(self, host, port):
        self.clients += 1
        return FakeClient(self)

    def spawn(self, type_id, transform, parent=None, attributes=None):
        if type_id.startswith("vehicle.") and any(
            location.distance(transform.location) < SPAWN_CLEARANCE_M for location, _ in self.vehicles()
        ):
            raise RuntimeError("Spawn failed because of collision at spawn position")
        actor = FakeActor(self, self.next_id, type_id, transform, parent, attributes)
        self.actors[actor.id] = actor
        self.next_id += 1
        return actor

    def destroy(self, actor_id):
        self.actors.pop(actor_id, None)
        self.calls.append(("destroy", actor_id))

    def traffic_manager(self, port):
        return FakeTrafficManager(self)

    def vehicles(self):
        """(location, role_name) of every vehicle in the world."""
        return [(a.transform.location, a.attributes.get("role_name", "")) for a in self.actors.values()
                if a.type_id.startswith("vehicle.")]

    def tick(self, seconds):
        self.calls.append(("tick", seconds))
        if self.hang_ticks:
            self.hang_ticks -= 1
            raise RuntimeError(TIMEOUT_MESSAGE)
        self.frame += 1
        for actor in list(self.actors.values()):
            actor.ticked = True
            if actor.type_id.startswith("vehicle.tesla"):
                loc = actor.transform.location
                dt = self.settings.fixed_delta_seconds or 0.05
                actor.vertical_speed -= 9.81 * dt
                z = loc.z + actor.vertical_speed * dt
                if z <= self.road_z:
                    z, actor.vertical_speed = self.road_z, 0.0
                actor.transform = carla.Transform(
                    carla.Location(x=loc.x + 0.5 * actor.control.throttle, y=loc.y + 0.5 * actor.control.steer, z=z),
                    actor.transform.rotation,
                )
        for actor in list(self.actors.values()):
            if actor.callback is None:
                continue
            if actor.type_id == "sensor.camera.rgb":
                # A stale reading of the previous frame arrives before this tick's.
                for frame in (self.frame - 1, self.frame):
                    pixel = bytes([frame % 256] * 3 + [255])
                    actor.callback(SimpleNamespace(frame=frame, width=8, height=6, raw_data=pixel * 48))
            elif actor.type_id == "sensor.other.collision" and self.frame in self.collide_at:
                impulse = carla.Vector3D(300.0, 0.0, 0.0)
                self._report(actor.callback, SimpleNamespace(frame=self.frame, normal_impulse=impulse))
            elif actor.type_id == "sensor.other.lane_invasion" and self.frame in self.invade_at:
                self._report(actor.callback, SimpleNamespace(frame=self.frame, crossed_lane_markings=[]))
        return self.frame


    def _report(self, callback, event):
        if self.event_delay_s is None:
            callback(event)
        else:
            threading.Timer(self.event_delay_s, callback, (event,)).start()


class FakeWorld:
    def __init__(self, server):
        self.server = server

    def get_map(self):
        return FakeMap()

    def get_settings(self):
        return self.server.settings

    def apply_settings(self, settings):
        self.server.calls.append(("apply_settings", settings.synchronous_mode, settings.fixed_delta_seconds))
        self.server.settings = settings

    def get_blueprint_library(self):
        return FakeLibrary()

    def spawn_actor(self, blueprint, transform, attach_to=None):
        return self.server.spawn(blueprint.id, transform, attach_to, blueprint.attributes)

    def get_actors(self):
        return list(self.server.actors.values())

    def tick(self, seconds=10.0):
        return self.server.tick(seconds)

    def get_snapshot(self):
        return FakeSnapshot(self.server.frame, self.server.actors)


class FakeTrafficManager:
    def __init__(self, server):
        self.server = server

    def set_synchronous_mode(self, mode):
        self.server.calls.append(("tm_sync", mode))

    def set_random_device_seed(self, seed):
        self.server.calls.append(("tm_seed", seed))


class FakeClient:
    def __init__(self, server):
        self.server = server

    def set_timeout(self, seconds):
        self.server.calls.append(("set_timeout", seconds))

    def get_server_version(self):
        if self.server.refuse_connections:
            self.server.refuse_connections -= 1
            raise RuntimeError(TIMEOUT_MESSAGE)
        return "0.9.16"

    def get_client_version(self):
        return "0.9.16"

    def get_world(self):
        return FakeWorld(self.server)

    def get_trafficmanager(self, port):
        self.server.calls.append(("tm_port", port))
        return self.server.traffic_manager(port)

    def apply_batch_sync(self, commands, do_tick=False):
        if self.server.fail_destroys and any(command.kind == "destroy" for command in commands):
            self.server.fail_destroys -= 1
            raise RuntimeError(TIMEOUT_MESSAGE)
        responses = []
        for command in commands:
            if command.kind == "spawn":
                self.server.calls.append(("spawn_npc", command.then_command.port))
                try:
                    blueprint = command.blueprint
                    actor = self.server.spawn(blueprint.id, command.transform, None, blueprint.attributes)
                except RuntimeError as error:
                    responses.append(SimpleNamespace(error=str(error), actor_id=0))
                    continue
                responses.append(SimpleNamespace(error="", actor_id=actor.id))
            else:
                self.server.destroy(command.actor_id)
                responses.append(SimpleNamespace(error="", actor_id=command.actor_id))
        if do_tick:
            self.server.tick(10.0)
        return responses


class _Spawn:
    kind = "spawn"

    def __init__(self, blueprint, transform):
        self.blueprint, self.transform, self.then_command = blueprint, transform, None

    def then(self, command):
        self.then_command = command
        return self


fake_command = SimpleNamespace(
    SpawnActor=_Spawn,
    SetAutopilot=lambda actor, enabled, port: SimpleNamespace(port=port),
    FutureActor=object(),
    DestroyActor=lambda actor_id: SimpleNamespace(kind="destroy", actor_id=actor_id),
)


class CarlaWithFakeCommands:
    """The real `carla` module, except batch commands (they need real blueprints)."""

    command = fake_command

    def __getattr__(self, name):
        return getattr(carla, name)


class SharedWorldServer(FakeServer):
    """One world for clients in several processes, as a CARLA server is.

    Each process holds a `SharedWorldServer` on the same `world_dir`, where every
    vehicle is a file ``vehicle-<pid>-<actor id>`` (x y role_name) from its spawn
    to its destroy, left behind if its process dies without destroying it. A
    spawn is blocked by any process's vehicle; each tick appends the number of
    egos in the world to ``egos-per-tick.log``. The rest of the world (time,
    sensors, settings) is per process.
    """

    def __init__(self, world_dir):
        super().__init__()
        self.world_dir = Path(world_dir)

    def spawn(self, type_id, transform, parent=None, attributes=None):
        actor = super().spawn(type_id, transform, parent, attributes)
        if type_id.startswith("vehicle."):
            self._publish(actor)
        return actor

    def destroy(self, actor_id):
        super().destroy(actor_id)
        self._marker(actor_id).unlink(missing_ok=True)

    def tick(self, seconds):
        frame = super().tick(seconds)
        for actor in self.actors.values():
            if actor.type_id.startswith("vehicle."):
                self._publish(actor)
        egos = sum("_ego@" in role for _, role in self.vehicles())
        with open(self.world_dir / "egos-per-tick.log", "a") as log:
            log.write(f"{os.getpid()} {egos}\n")
        return frame

    def traffic_manager(self, port):
        """As CARLA's client library: the port's Traffic Manager is this process's if it opened one there, a live
        process's that registered the port (this one becomes its remote client: a line in ``tm-remote.log``), or
        a new one of this process's, registered in ``tm-<port>`` (it lives until the process exits)."""
        registry = self.world_dir / f"tm-{port}"
        owner = int(registry.read_text()) if registry.exists() else None
        if owner != os.getpid() and owner is not None and process_alive(owner):
            with open(self.world_dir / "tm-remote.log", "a") as log:
                log.write(f"{os.getpid()} {owner} {port}\n")
        elif owner != os.getpid():
            registry.write_text(str(os.getpid()))
        return super().traffic_manager(port)

    def vehicles(self):
        found = []
        for marker in self.world_dir.glob("vehicle-*"):
            try:
                x, y, role = marker.read_text().split(" ", 2)
            except (OSError, ValueError):  # destroyed, or being written, meanwhile
                continue
            found.append((carla.Location(x=float(x), y=float(y)), role))
        return found

    def _marker(self, actor_id):
        return self.world_dir / f"vehicle-{os.getpid()}-{actor_id}"

    def _publish(self, actor):
        location = actor.transform.location
        partial = self.world_dir / f"partial.{os.getpid()}"
        partial.write_text(f"{location.x} {location.y} {actor.attributes.get('role_name', '')}")
        partial.replace(self._marker(actor.id))  # readers never see half a line


def shared_world_block(spec, world_dir: str, trainer_pid: int):
    """A worker process's envs (`make_block_env`) on a `SharedWorldServer` of `world_dir`.

    gymnasium's AsyncVectorEnv also builds (and closes, unconnected) one in the trainer's process for its
    spaces: that one keeps the trainer's stand-in. Each build in a worker appends a line to ``worker-builds.log``.
    """
    import functools

    from td3_jax.envs.carla import env as carla_env
    from td3_jax.envs.workers import make_block_env

    if os.getpid() != trainer_pid:
        with open(Path(world_dir) / "worker-builds.log", "a") as log:
            log.write(f"{os.getpid()} {spec.first}\n")
        server = SharedWorldServer(world_dir)
        carla_env.make_carla_env = functools.partial(  # this worker process only
            carla_env.make_carla_env, carla_module=CarlaWithFakeCommands(), client_factory=server.client,
            sleep=lambda seconds: None,
        )
    return make_block_env(spec)
