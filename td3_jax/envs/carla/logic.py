"""Pure functions behind the CARLA backend (NumPy only, no `carla` import).

Conventions: CARLA's world is left-handed (x, y right, z up; yaw in degrees
turning from +x towards +y). Everything here works in the right-handed plane
of the other backends: `carla_to_plane` maps (x, y, yaw_deg) to (x, -y,
-radians(yaw)) once, at the boundary. In that plane the left normal of a
direction (cos a, sin a) is (-sin a, cos a); the vehicle frame is x forward,
y left; a positive lateral deviation means the car is left of the route's
lane centre and a positive heading error means it points left of the route
direction (the signs `td3_jax.envs.reward.Measurements` documents).
"""

from __future__ import annotations

import functools
import math
import queue
import time
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np

from td3_jax.envs.spaces import FRAME_SIZE

# ITU-R BT.601 luma weights, as OpenCV's RGB2GRAY (the original's conversion).
_LUMA_RGB = (0.299, 0.587, 0.114)


class SensorTimeout(RuntimeError):
    """A sensor reading for the ticked frame did not arrive in time, or was skipped."""


# ----------------------------------------------------------------------------- camera


@functools.lru_cache(maxsize=16)
def area_weights(n_in: int, n_out: int) -> np.ndarray:
    """Resampling matrix of an area (box) resize along one axis.

    Output pixel j averages the input interval [j, j + 1) * n_in / n_out,
    weighting each input pixel by its overlap, which is what OpenCV's
    INTER_AREA does when shrinking.

    Returns:
      (n_out, n_in) float32 matrix whose rows sum to 1.
    """
    scale = n_in / n_out
    edges = np.arange(n_out + 1) * scale
    lo, hi = edges[:-1, None], edges[1:, None]
    pixel = np.arange(n_in)[None, :]
    overlap = np.clip(np.minimum(hi, pixel + 1) - np.maximum(lo, pixel), 0.0, None)
    return (overlap / scale).astype(np.float32)


def bgra_to_gray(raw: bytes | np.ndarray, height: int, width: int, size: int = FRAME_SIZE) -> np.ndarray:
    """Converts a CARLA BGRA camera buffer to one square grayscale frame.

    Args:
      raw: `carla.Image.raw_data`, height * width * 4 bytes, B, G, R, A per pixel.
      height, width: the image size in pixels.
      size: side of the output frame.

    Returns:
      (size, size) uint8 frame: BT.601 luma, area-resized, rounded.
    """
    pixels = np.frombuffer(raw, np.uint8) if isinstance(raw, (bytes, bytearray, memoryview)) else raw
    if pixels.size != height * width * 4:
        raise ValueError(f"expected {height}x{width}x4 BGRA bytes, got {pixels.size}")
    bgra = pixels.reshape(height, width, 4).astype(np.float32)
    gray = bgra[..., 2] * _LUMA_RGB[0] + bgra[..., 1] * _LUMA_RGB[1] + bgra[..., 0] * _LUMA_RGB[2]
    small = area_weights(height, size) @ gray @ area_weights(width, size).T
    return np.clip(np.rint(small), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------- frame matching


def wait_for_frame(
    readings: "queue.Queue[Any]",
    frame: int,
    timeout_s: float,
    clock: Callable[[], float] = time.monotonic,
) -> tuple[Any, int]:
    """Takes the reading of tick `frame` from a sensor queue.

    Sensors fill the queue from CARLA's callback thread (`sensor.listen(q.put)`)
    and GPU sensors lag a couple of frames, so the queue may still hold readings
    of earlier ticks: they are dropped. A reading newer than `frame` means this
    tick's reading was lost. Host-side.

    Args:
      readings: queue of objects with an int `.frame`.
      frame: the frame id `world.tick()` returned.
      timeout_s: total time to wait for it.

    Returns:
      (reading whose `.frame == frame`, number of stale readings dropped).

    Raises:
      SensorTimeout: nothing for `frame` within `timeout_s`, or a newer frame came first.
    """
    deadline = clock() + timeout_s
    dropped = 0
    while True:
        remaining = deadline - clock()
        try:
            reading = readings.get(timeout=max(remaining, 0.0)) if remaining > 0 else readings.get_nowait()
        except queue.Empty:
            raise SensorTimeout(f"no sensor frame {frame} within {timeout_s:g} s") from None
        if reading.frame == frame:
            return reading, dropped
        if reading.frame > frame:
            raise SensorTimeout(f"sensor skipped frame {frame} (got {reading.frame})")
        dropped += 1


def drain_events(
    events: "queue.Queue[Any]",
    frame: int,
    carry: list,
    deadline: float = -math.inf,
    clock: Callable[[], float] = time.monotonic,
) -> list:
    """Event readings (collision, lane invasion) of ticks up to `frame`, waiting until `deadline` for late ones.

    Event sensors report only when something happens, so there is no reading
    to wait for; but their readings come on their own stream (collision) or
    from the client's tick thread (lane invasion) and may arrive after
    `world.tick()` returned. Everything that arrived by `deadline` with
    `.frame <= frame` belongs to this tick (or an earlier one). Readings of
    later frames (not produced in synchronous mode, kept for safety) stay in
    `carry` for the next call. Host-side.

    Args:
      events: queue the sensor callback puts readings into.
      frame: the frame id of the current tick.
      carry: list of readings held back by the previous call; updated in place.
      deadline: `clock()` time until which late readings are awaited; the default takes what is queued.

    Returns:
      The readings that belong to ticks <= `frame`, oldest first.
    """
    while True:
        remaining = deadline - clock()
        try:
            carry.append(events.get(timeout=remaining) if remaining > 0 else events.get_nowait())
        except queue.Empty:
            break
    now = [e for e in carry if e.frame <= frame]
    carry[:] = [e for e in carry if e.frame > frame]
    return now


# ----------------------------------------------------------------------------- actor ownership

ROLE_PREFIX = "td3_jax_"


def role_name(kind: str, owner: str) -> str:
    """The `role_name` td3_jax gives an actor: what it is ("ego", "npc", "sensor") and which session owns it."""
    return f"{ROLE_PREFIX}{kind}@{owner}"


def is_leftover(
    role: str, host: str, pid: int, live_owners: set[str] | frozenset[str], pid_alive: Callable[[int], bool]
) -> bool:
    """Whether an actor with this `role_name` is td3_jax's and its owning session is gone.

    Owners are "host/pid/n". A session of this process is gone when it is not in
    `live_owners`; one of another process on this host when that process is not
    alive. Actors of other programs, and td3_jax actors of another host (whose
    liveness cannot be checked), are never leftovers.
    """
    if not role.startswith(ROLE_PREFIX) or "@" not in role:
        return False
    owner = role.split("@", 1)[1]
    owner_host, _, rest = owner.partition("/")
    owner_pid = rest.partition("/")[0]
    if owner_host != host or not owner_pid.isdigit():
        return False
    if int(owner_pid) == pid:
        return owner not in live_owners
    return not pid_alive(int(owner_pid))


# ----------------------------------------------------------------------------- reset


def grounded(
    heights: Sequence[float], vertical_speeds: Sequence[float], ticks: int = 2,
    height_tolerance_m: float = 0.01, speed_tolerance_mps: float = 0.05,
) -> bool:
    """Whether a car has come to rest vertically: over its last `ticks` ticks z stayed put and vz ~ 0.

    Args:
      heights: z of the car at each tick so far, m.
      vertical_speeds: its vertical velocity at each tick, m/s.
    """
    if len(heights) < ticks:
        return False
    recent = heights[-ticks:]
    return max(recent) - min(recent) <= height_tolerance_m and all(
        abs(v) <= speed_tolerance_mps for v in vertical_speeds[-ticks:]
    )


# ----------------------------------------------------------------------------- route


def carla_to_plane(x: float, y: float, yaw_deg: float) -> tuple[float, float, float]:
    """A CARLA location and yaw (left-handed, degrees) in the right-handed plane (radians)."""
    return x, -y, -math.radians(yaw_deg)


def wrap_angle(angle: float | np.ndarray) -> float | np.ndarray:
    """Maps an angle (radians) into [-pi, pi)."""
    return (np.asarray(angle) + np.pi) % (2 * np.pi) - np.pi


def arc_lengths(points: np.ndarray) -> np.ndarray:
    """Cumulative arc length of a polyline: (N, 2) float -> (N,) float64, starting at 0."""
    steps = np.linalg.norm(np.diff(points, axis=0), axis=1)
    return np.concatenate([[0.0], np.cumsum(steps)])


def densify(points: np.ndarray, spacing: float) -> np.ndarray:
    """Resamples a polyline every `spacing` metres along its arc, keeping both ends.

    Args:
      points: (N, 2) float polyline, N >= 2, consecutive points distinct.
      spacing: arc-length step in metres.

    Returns:
      (M, 2) float64 points on the same polyline; M = ceil(length / spacing) + 1.
    """
    s = arc_lengths(points)
    count = int(math.ceil(s[-1] / spacing - 1e-9))
    targets = np.minimum(np.arange(count + 1) * spacing, s[-1])
    return np.stack([np.interp(targets, s, points[:, 0]), np.interp(targets, s, points[:, 1])], -1)


class RouteProjection(NamedTuple):
    """Where the vehicle is relative to the route's centre line."""

    segment: int
    """Index i of the nearest segment (points[i], points[i+1])."""
    arc: float
    """Arc length (m) of the projected point from the route start."""
    lateral: float
    """Signed distance (m) to the centre line; positive = left of it."""
    route_yaw: float
    """Direction (rad) of the nearest segment."""


def project_to_route(
    points: np.ndarray,
    arcs: np.ndarray,
    position: np.ndarray,
    hint: int = 0,
    back: int = 20,
    ahead: int = 200,
) -> RouteProjection:
    """Projects a position onto the route, searching segments near `hint`.

    Searching a window around the previous segment, rather than the whole
    route, keeps the projection on the stretch the car is driving when the
    route passes close to itself (loops, the other side of a junction).

    Args:
      points: (N, 2) dense route, N >= 2.
      arcs: (N,) `arc_lengths(points)`.
      position: (2,) vehicle x, y.
      hint: segment of the previous projection.
      back, ahead: segments searched before and after `hint`.
    """
    lo = max(0, min(hint, len(points) - 2) - back)
    hi = min(len(points) - 1, hint + ahead + 1)
    start, end = points[lo:hi], points[lo + 1 : hi + 1]
    direction = end - start
    length_sq = np.maximum(np.einsum("ij,ij->i", direction, direction), 1e-12)
    offset = position[None, :] - start
    t = np.clip(np.einsum("ij,ij->i", offset, direction) / length_sq, 0.0, 1.0)
    nearest = start + t[:, None] * direction
    best = int(np.argmin(np.linalg.norm(position[None, :] - nearest, axis=1)))
    seg = lo + best
    d = direction[best]
    length = math.sqrt(length_sq[best])
    rel = position - start[best]
    lateral = float((-d[1] * rel[0] + d[0] * rel[1]) / length)
    return RouteProjection(
        segment=seg,
        arc=float(arcs[seg] + t[best] * length),
        lateral=lateral,
        route_yaw=math.atan2(d[1], d[0]),
    )


def heading_error(vehicle_yaw: float, route_yaw: float) -> float:
    """Signed heading error (rad) of the vehicle against the route, in [-pi, pi); positive = left."""
    return float(wrap_angle(vehicle_yaw - route_yaw))


def lookahead_points(points: np.ndarray, arcs: np.ndarray, arc: float, count: int, spacing: float) -> np.ndarray:
    """Route points at arc + spacing * (1..count), clamped to the route's end.

    Returns:
      (count, 2) float64 world x, y.
    """
    targets = np.minimum(arc + spacing * np.arange(1, count + 1), arcs[-1])
    return np.stack([np.interp(targets, arcs, points[:, 0]), np.interp(targets, arcs, points[:, 1])], -1)


def to_vehicle_frame(world_points: np.ndarray, position: np.ndarray, yaw: float) -> np.ndarray:
    """Plane (x, y) points to the vehicle frame (x forward, y left).

    Args:
      world_points: (N, 2) float.
      position: (2,) vehicle x, y.
      yaw: vehicle yaw in radians.

    Returns:
      (N, 2) float64.
    """
    rel = world_points - position[None, :]
    c, s = math.cos(yaw), math.sin(yaw)
    return np.stack([rel[:, 0] * c + rel[:, 1] * s, -rel[:, 0] * s + rel[:, 1] * c], -1)


def choose_branch(
    current_yaw_deg: float, candidate_yaws_deg: Sequence[float], rule: str, rng: np.random.Generator
) -> int:
    """Index of the next waypoint to follow when the lane splits.

    Args:
      current_yaw_deg: yaw of the last route waypoint.
      candidate_yaws_deg: yaws of the candidates `waypoint.next()` returned.
      rule: "straight" (smallest heading change; ties to the first) or "random".
      rng: draws the random branch.
    """
    if len(candidate_yaws_deg) == 1:
        return 0
    if rule == "random":
        return int(rng.integers(len(candidate_yaws_deg)))
    change = np.abs(wrap_angle(np.radians(np.asarray(candidate_yaws_deg) - current_yaw_deg)))
    return int(np.argmin(change))


def pick_spawn(
    spawn_xy: np.ndarray,
    occupied_xy: np.ndarray,
    min_distance: float,
    preferred: int | None,
    rng: np.random.Generator,
) -> int:
    """A spawn point index with no vehicle within `min_distance`.

    Args:
      spawn_xy: (K, 2) the map's spawn points.
      occupied_xy: (M, 2) positions of other vehicles (M may be 0).
      min_distance: clearance in metres.
      preferred: index to use if it is free; None draws one.
      rng: orders the candidates.

    Returns:
      `preferred` if free, else a free point in random order, else `preferred`
      (or a random point) when all are taken.
    """
    order = rng.permutation(len(spawn_xy))
    if preferred is not None:
        order = np.concatenate([[preferred], order[order != preferred]])
    if len(occupied_xy) == 0:
        return int(order[0])
    gaps = np.linalg.norm(spawn_xy[order][:, None, :] - occupied_xy[None, :, :], axis=-1).min(axis=1)
    free = np.flatnonzero(gaps >= min_distance)
    return int(order[free[0]] if len(free) else order[0])


def spread_npc_spawns(
    spawn_xy: np.ndarray, ego_xy: np.ndarray, count: int, min_distance: float, rng: np.random.Generator
) -> np.ndarray:
    """Up to `count` distinct spawn indices at least `min_distance` from the ego, in random order."""
    far = np.flatnonzero(np.linalg.norm(spawn_xy - ego_xy[None, :], axis=1) >= min_distance)
    return rng.permutation(far)[:count]


# ----------------------------------------------------------------------------- control


def action_to_control(action: np.ndarray) -> tuple[float, float, float]:
    """(steer, throttle_brake) in [-1, 1] to CARLA's (steer, throttle, brake).

    A positive throttle_brake is throttle, a negative one brakes with its
    magnitude; the two are never applied together. Values outside [-1, 1] are
    clipped.

    Raises:
      ValueError: the action is not 2 finite numbers.
    """
    action = np.asarray(action, np.float64).reshape(-1)
    if action.shape != (2,) or not np.all(np.isfinite(action)):
        raise ValueError(f"action must be 2 finite numbers, got {action}")
    steer, pedal = np.clip(action, -1.0, 1.0)
    return float(steer), float(max(pedal, 0.0)), float(max(-pedal, 0.0))


# ----------------------------------------------------------------------------- reward inputs


def newly_passed(waypoint_arcs: np.ndarray, furthest_arc: float, arc: float) -> tuple[int, float]:
    """Route waypoints passed for the first time this step.

    Args:
      waypoint_arcs: (N,) increasing arc lengths of the route's waypoints.
      furthest_arc: the furthest arc length reached before this step.
      arc: the arc length now.

    Returns:
      (waypoints in (furthest_arc, arc], new furthest arc). Driving back and
      forth over a waypoint pays it once.
    """
    if arc <= furthest_arc:
        return 0, furthest_arc
    before = np.searchsorted(waypoint_arcs, furthest_arc, side="right")
    after = np.searchsorted(waypoint_arcs, arc, side="right")
    return int(after - before), arc


def obstacle_ahead(
    position: np.ndarray,
    yaw: float,
    speed_along: float,
    others_xy: np.ndarray,
    others_velocity: np.ndarray,
    corridor_half_width: float,
    bumper_offset: float,
    max_distance: float = 50.0,
) -> tuple[float, float, float]:
    """Bumper gap, time to collision and speed of the nearest vehicle in the ego's corridor.

    Args:
      position: (2,) ego x, y in the plane.
      yaw: ego yaw (rad).
      speed_along: ego velocity along its heading, m/s.
      others_xy: (M, 2) other vehicles' centres.
      others_velocity: (M, 2) their planar velocities.
      corridor_half_width: lateral half width (m) a vehicle must be within to count.
      bumper_offset: centre-to-centre distance that is a zero gap (the two half lengths), m.
      max_distance: vehicles farther ahead are ignored.

    Returns:
      (gap m, time to collision s, its speed along the ego's heading m/s); gap
      and time are inf (speed 0) when nothing is ahead, time is inf when not closing.
    """
    if len(others_xy) == 0:
        return math.inf, math.inf, 0.0
    local = to_vehicle_frame(others_xy, position, yaw)
    ahead = (local[:, 0] > 0) & (np.abs(local[:, 1]) <= corridor_half_width) & (local[:, 0] <= max_distance)
    if not np.any(ahead):
        return math.inf, math.inf, 0.0
    nearest = np.flatnonzero(ahead)[np.argmin(local[ahead, 0])]
    gap = max(float(local[nearest, 0]) - bumper_offset, 0.0)
    other_along = float(others_velocity[nearest] @ np.array([math.cos(yaw), math.sin(yaw)]))
    closing = speed_along - other_along
    return gap, (gap / closing if closing > 1e-3 else math.inf), other_along
