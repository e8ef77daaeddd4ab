"""Settings of the CARLA backend (no `carla` import here).

`CarlaConfig` is the `carla:` section of a training config. Every default lives
in this dataclass; `docs/carla.md` explains each key.
"""

from __future__ import annotations

import dataclasses
from typing import Literal


@dataclasses.dataclass(frozen=True)
class CarlaConfig:
    """Connection, world, sensors, traffic, route and failure handling of the CARLA env."""

    host: str = "localhost"
    """Host name or IP address of the CARLA server."""
    port: int = 2000
    """RPC port of the CARLA server (the server also uses port + 1 for streaming)."""
    tm_port: int = 8000
    """First Traffic Manager port of a training: it uses tm_port to tm_port + (env.workers.max_restarts + 1) x
    num_envs (env i, each restart, then the evaluation env); give concurrent trainings ranges that do not overlap."""
    connect_timeout_s: float = 10.0
    """Client RPC timeout: the first connection fails with a clear error after this long."""
    tick_timeout_s: float = 10.0
    """How long one `world.tick` or one sensor frame may take before the step counts as a failure."""
    event_wait_s: float = 0.01
    """How long after a tick returned its collision and lane-invasion events are awaited (they may come late)."""
    map: str = "Town01"
    """Map loaded at connection if the server runs another one."""
    fixed_delta_seconds: float = 0.05
    """Simulated seconds per tick in synchronous mode (CARLA requires <= 0.1)."""
    scenario: int = 0
    """Traffic scenario: index into `npc_counts` (0, 1, 2 -> light, medium, heavy)."""
    npc_counts: tuple[int, ...] = (20, 50, 100)
    """NPC vehicles under the Traffic Manager for each scenario index."""
    respawn_npcs_every_reset: bool = False
    """Destroy and respawn all NPCs at every reset; off, they are spawned once per connection."""
    npc_min_distance_m: float = 20.0
    """NPCs are not spawned within this distance of the ego spawn point, and the ego is not reset next to one."""
    ego_blueprint: str = "vehicle.tesla.model3"
    """Blueprint id of the ego vehicle."""
    spawn_point_index: int | None = None
    """Index into the map's spawn points for the ego; None draws one per episode from the seeded generator."""
    camera_width: int = 256
    """Rendered camera width in pixels (the frame is then reduced to 84x84 gray)."""
    camera_height: int = 144
    """Rendered camera height in pixels."""
    camera_fov: float = 90.0
    """Horizontal field of view of the camera in degrees."""
    camera_mount: tuple[float, float, float, float] = (1.6, 0.0, 1.5, 0.0)
    """Camera position relative to the ego: (x forward m, y right m, z up m, pitch deg)."""
    route_length_m: float = 250.0
    """Length of the route followed from the spawn point along the map's waypoints."""
    route_spacing_m: float = 2.0
    """Spacing of the map waypoints the route is built from, of the bonus waypoints and of the look-ahead points."""
    num_waypoints: int = 25
    """Look-ahead points of the route in the observation vector."""
    route_dense_spacing_m: float = 0.25
    """Spacing of the densified route used for projection and progress."""
    route_branch: Literal["straight", "random"] = "straight"
    """At a junction follow the branch with the smallest heading change, or a seeded random branch."""
    goal_tolerance_m: float = 3.0
    """The route counts as completed within this arc length of its end."""
    action_repeat: int = 1
    """Ticks one env step holds its action for (1 = one decision per tick); rewards and events are summed over them."""
    max_episode_steps: int = 1000
    """Env steps after which an episode is truncated (1000 x action_repeat x fixed_delta_seconds simulated s)."""
    offroad_limit_m: float = 2.5
    """An episode terminates when |lateral deviation from the route's lane centre| exceeds this."""
    settle_ticks: int = 2
    """Fewest ticks run after placing the ego at reset before the first observation (frames catch up)."""
    settle_max_ticks: int = 40
    """Most ticks run at reset waiting for the ego, spawned 0.5 m up, to rest on the road (40 x 0.05 s = 2 s)."""
    max_failures: int = 5
    """Tick timeouts or lost connections tolerated per env; one more stops training with a clear error."""
    reconnect_attempts: int = 5
    """Connection attempts after one failure before it counts as fatal."""
    reconnect_backoff_s: float = 2.0
    """Wait before the first reconnection attempt; doubles after each failed attempt."""

    def num_npcs(self) -> int:
        """NPC vehicles of the configured scenario."""
        if not 0 <= self.scenario < len(self.npc_counts):
            raise ValueError(
                f"carla.scenario must be in 0..{len(self.npc_counts) - 1}, got {self.scenario}"
            )
        return self.npc_counts[self.scenario]

    def __post_init__(self):
        if not 0.0 < self.fixed_delta_seconds <= 0.1:
            raise ValueError(
                f"carla.fixed_delta_seconds must be in (0, 0.1] (CARLA physics limit), "
                f"got {self.fixed_delta_seconds}"
            )
        if self.connect_timeout_s <= 0 or self.tick_timeout_s <= 0:
            raise ValueError("carla.connect_timeout_s and carla.tick_timeout_s must be positive")
        if self.action_repeat < 1:
            raise ValueError(f"carla.action_repeat must be >= 1, got {self.action_repeat}")
        if self.event_wait_s < 0:
            raise ValueError("carla.event_wait_s must be >= 0")
        if len(self.camera_mount) != 4:
            raise ValueError("carla.camera_mount must be (x, y, z, pitch)")
        if self.route_dense_spacing_m <= 0 or self.route_spacing_m <= 0:
            raise ValueError("carla.route_spacing_m and carla.route_dense_spacing_m must be positive")
        if not 1 <= self.settle_ticks <= self.settle_max_ticks:
            raise ValueError("carla.settle_ticks must be in 1..carla.settle_max_ticks")
        self.num_npcs()
