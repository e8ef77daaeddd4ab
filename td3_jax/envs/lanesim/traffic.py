"""NPC vehicles: spawning, car following, collision and obstacle queries. Host-side NumPy.

NPCs live in road coordinates: arc length ``s`` along the centreline and a lane.
The first half of each env's NPCs drive in the ego's lane (direction +s), the
rest in the oncoming lane (direction -s). The road is treated as a ring for
them: a vehicle leaving one end re-enters at the other, far outside the camera's
view, so traffic density stays constant. Within a lane NPCs keep their order
(the Intelligent Driver Model never lets one pass another), so each vehicle's
leader is its neighbour in the lane's array; they also brake for the ego when
it occupies their lane ahead of them.
"""

from __future__ import annotations

import numpy as np

NPC_LENGTH_M = 4.5
"""Body length of every NPC."""
NPC_WIDTH_M = 1.9
"""Body width of every NPC."""
NPC_HEIGHT_M = 1.5
"""Body height of every NPC (for rendering)."""
IDM_ACCEL = 1.5
"""IDM maximum acceleration, m/s^2."""
IDM_COMFORT_DECEL = 2.0
"""IDM comfortable deceleration, m/s^2."""
IDM_MAX_DECEL = 8.0
"""Hardest NPC braking, m/s^2."""
IDM_MIN_GAP_M = 2.0
"""IDM standstill bumper gap."""
IDM_HEADWAY_S = 1.2
"""IDM desired time headway."""
SENSOR_LATERAL_MARGIN_M = 0.3
"""Extra lateral clearance within which a vehicle counts as in the ego's path."""


def split(num_npcs: int) -> int:
    """Number of NPCs in the ego's lane; the rest drive in the oncoming lane."""
    return (num_npcs + 1) // 2


def spawn_lane(
    rng: np.random.Generator, count: int, ring: float, free_from: float, free_length: float, min_gap: float
) -> np.ndarray:
    """Arc lengths of `count` vehicles on a ring, at least `min_gap` apart, inside a free interval.

    The free interval starts at `free_from` and is `free_length` long (it wraps
    around the ring). Gaps are drawn uniformly (sorted uniform points of a
    shorter interval, each shifted by its rank times `min_gap`).

    Returns:
      (count,) float64 positions in increasing order along the free interval, in [0, ring).
    """
    slack = free_length - count * min_gap
    if slack < 0:
        raise ValueError(f"{count} vehicles do not fit {min_gap} m apart in {free_length:.0f} m of lane")
    offsets = np.sort(rng.uniform(0.0, slack, count)) + min_gap * np.arange(count) + min_gap / 2
    return np.mod(free_from + offsets, ring)


def idm_accel(speed: np.ndarray, desired: np.ndarray, gap: np.ndarray, closing: np.ndarray) -> np.ndarray:
    """Intelligent Driver Model acceleration, clipped to [-IDM_MAX_DECEL, IDM_ACCEL].

    Args:
      speed: own speed, m/s. desired: desired speed, m/s.
      gap: bumper gap to the leader, m. closing: own speed minus the leader's, m/s.
    """
    wanted = IDM_MIN_GAP_M + np.maximum(
        speed * IDM_HEADWAY_S + speed * closing / (2.0 * np.sqrt(IDM_ACCEL * IDM_COMFORT_DECEL)), 0.0
    )
    accel = IDM_ACCEL * (1.0 - (speed / desired) ** 4 - (wanted / np.maximum(gap, 0.1)) ** 2)
    return np.minimum(np.maximum(accel, -IDM_MAX_DECEL), IDM_ACCEL)


def leaders(num_npcs: int, num_forward: int) -> np.ndarray:
    """(M,) index of each NPC's leader: the next vehicle of its lane's array, cyclically."""
    index = np.arange(num_npcs) + 1
    index[num_forward - 1 : num_forward] = 0
    if num_npcs > num_forward:
        index[-1] = num_forward
    return index


def step_npcs(
    s: np.ndarray,
    speed: np.ndarray,
    desired: np.ndarray,
    direction: np.ndarray,
    leader: np.ndarray,
    ring: float,
    ego_gap: np.ndarray,
    ego_speed: np.ndarray,
    dt: float,
) -> None:
    """Advances every NPC by one step of car following, in place.

    Args:
      s: (N, M) float64 arc lengths, updated.
      speed: (N, M) float64 speeds >= 0, updated.
      desired: (N, M) float64 desired speeds.
      direction: (M,) +1 for NPCs driving along +s, -1 for oncoming ones.
      leader: (M,) `leaders` index.
      ring: ring length, m.
      ego_gap: (N, M) bumper gap from each NPC to the ego ahead of it in its
        lane (inf where the ego is not in its lane).
      ego_speed: (N, M) the ego's speed along each NPC's direction of travel.
      dt: step, s.
    """
    lead_gap = np.mod(direction * (s[:, leader] - s), ring)
    lead_gap[lead_gap == 0.0] = ring
    lead_gap -= NPC_LENGTH_M
    use_ego = ego_gap < lead_gap
    gap = np.where(use_ego, ego_gap, lead_gap)
    closing = speed - np.where(use_ego, ego_speed, speed[:, leader])
    speed += idm_accel(speed, desired, gap, closing) * dt
    np.maximum(speed, 0.0, out=speed)
    s += direction * speed * dt
    np.mod(s, ring, out=s)


def boxes_overlap(
    dx: np.ndarray,
    dy: np.ndarray,
    yaw_a: np.ndarray,
    yaw_b: np.ndarray,
    half_a: tuple[float, float],
    half_b: tuple[float, float],
) -> np.ndarray:
    """Separating-axis test of two oriented rectangles.

    Args:
      dx, dy: centre of B minus centre of A (world frame), any common shape.
      yaw_a, yaw_b: headings, broadcastable to that shape.
      half_a, half_b: (half length, half width) of A and B.

    Returns:
      bool array: the rectangles intersect.
    """
    ca, sa, cb, sb = np.cos(yaw_a), np.sin(yaw_a), np.cos(yaw_b), np.sin(yaw_b)
    cos_rel = np.abs(ca * cb + sa * sb)
    sin_rel = np.abs(sa * cb - ca * sb)
    (al, aw), (bl, bw) = half_a, half_b
    hit = np.abs(dx * ca + dy * sa) <= al + bl * cos_rel + bw * sin_rel
    hit &= np.abs(-dx * sa + dy * ca) <= aw + bl * sin_rel + bw * cos_rel
    hit &= np.abs(dx * cb + dy * sb) <= bl + al * cos_rel + aw * sin_rel
    hit &= np.abs(-dx * sb + dy * cb) <= bw + al * sin_rel + aw * cos_rel
    return hit


def nearest_ahead(
    npc_s: np.ndarray,
    npc_d: np.ndarray,
    npc_speed_s: np.ndarray,
    ego_s: np.ndarray,
    ego_d: np.ndarray,
    ego_speed_s: np.ndarray,
    ego_length: float,
    ego_width: float,
    sensor_range: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The nearest vehicle ahead in the ego's path, measured along the road.

    Args:
      npc_s, npc_d: (N, M) arc length and signed lateral offset of every NPC.
      npc_speed_s: (N, M) NPC velocity along +s (negative for oncoming).
      ego_s, ego_d, ego_speed_s: (N,) the same for the ego.
      ego_length, ego_width: ego body size.
      sensor_range: farthest bumper gap reported.

    Returns:
      (gap, leader_speed_s, time_to_collision), each (N,) float64: bumper gap
      (inf if none), the leader's speed along +s (0 if none), gap / closing
      speed (inf if none or not closing).
    """
    ahead = npc_s - ego_s[:, None]
    gap = ahead - 0.5 * (NPC_LENGTH_M + ego_length)
    in_path = np.abs(npc_d - ego_d[:, None]) < 0.5 * (NPC_WIDTH_M + ego_width) + SENSOR_LATERAL_MARGIN_M
    valid = in_path & (ahead > 0.0) & (gap < sensor_range)
    gap = np.where(valid, np.maximum(gap, 0.0), np.inf)
    nearest = np.argmin(gap, axis=1)
    rows = np.arange(len(ego_s))
    best = gap[rows, nearest]
    found = np.isfinite(best)
    leader_v = np.where(found, npc_speed_s[rows, nearest], 0.0)
    closing = ego_speed_s - leader_v
    ttc = np.where(found & (closing > 0.1), best / np.maximum(closing, 0.1), np.inf)
    return best, leader_v, ttc
