"""Procedural two-lane roads and their top-down raster. Host-side NumPy code.

A road is a centreline sampled every `SAMPLE_M` metres of arc length, built
from a curvature profile: straights and circular arcs joined by clothoids
(curvature linear in arc length). World frame: x east, y north, yaw
counter-clockwise from x. The road starts at the origin heading along +x and
its heading stays within `max_heading_deg` of that, so its projection on x
grows monotonically and it can never cross itself.

Traffic is right-handed: the ego drives in the right lane (centre at
``-lane_width / 2`` along the left normal), oncoming traffic in the left lane.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from td3_jax.envs.config import LaneSimConfig

SAMPLE_M = 0.5
"""Arc length between centreline samples."""
MARKING_WIDTH_M = 0.25
"""Painted line width; wider than the usual 0.15 m so lines survive 84-pixel point sampling."""
DASH_M = (3.0, 6.0)
"""Centre-line dash length and gap."""
SHOULDER_M = 0.4
"""Paved strip outside each edge line."""
RASTER_PAD_M = 10.0
"""Terrain kept around the road's bounding box in the raster."""
GRASS_BLOCK_M = 2.0
"""Size of the terrain texture blocks (coarse, so they do not flicker when sampled far away)."""

SHADE_GRASS = (92, 124)
"""Range of terrain gray levels."""
SHADE_ASPHALT = 64
"""Road surface gray level."""
SHADE_MARKING = 235
"""Lane-marking gray level."""


@dataclasses.dataclass(frozen=True)
class Road:
    """A sampled centreline, its route and its raster.

    Attributes:
      xy: (K, 2) float64 centreline points, SAMPLE_M apart in arc length.
      heading: (K,) float64 yaw of the centreline, rad.
      curvature: (K,) float64 signed curvature, 1/m (left turn positive).
      start_s: arc length of the ego's start.
      goal_s: arc length of the goal (start_s + route length).
      raster: (H, W) uint8 top-down gray image; row = y, column = x.
      origin: (2,) float64 world position of raster cell (0, 0)'s corner.
      cell: raster cell size, m.
    """

    xy: np.ndarray
    heading: np.ndarray
    curvature: np.ndarray
    start_s: float
    goal_s: float
    raster: np.ndarray
    origin: np.ndarray
    cell: float

    @property
    def length(self) -> float:
        """Arc length of the whole centreline."""
        return (len(self.heading) - 1) * SAMPLE_M


def curvature_profile(rng: np.random.Generator, cfg: LaneSimConfig) -> np.ndarray:
    """Curvature at every sample of a road of `cfg.road_length_m`.

    Args:
      rng: the episode's generator.
      cfg: road parameters.

    Returns:
      (K,) float64 curvature, K = road_length_m / SAMPLE_M + 1. The first
      straight covers the margin behind the start, so the ego starts on it.
    """
    num = int(round(cfg.road_length_m / SAMPLE_M)) + 1
    pieces = [np.zeros(int(round((cfg.road_margin_back_m + rng.uniform(*cfg.straight_length_m)) / SAMPLE_M)))]
    heading = 0.0
    limit = np.radians(cfg.max_heading_deg)
    total = len(pieces[0])
    while total < num:
        kappa = rng.uniform(1.0 / cfg.curve_radius_m[1], 1.0 / cfg.curve_radius_m[0])
        angle = np.radians(rng.uniform(*cfg.curve_angle_deg))
        # Turn back towards the initial direction more often the further the road has swung.
        sign = -np.sign(heading) if rng.uniform() < 0.5 + 0.5 * abs(heading) / limit else rng.choice([-1.0, 1.0])
        angle = min(angle, limit - sign * heading)
        if angle < np.radians(cfg.curve_angle_deg[0]):
            sign, angle = -sign, min(np.radians(cfg.curve_angle_deg[1]), limit + sign * heading)
        transition = rng.uniform(*cfg.clothoid_length_m)
        # Each clothoid turns by kappa * transition / 2; the arc takes the rest.
        transition = min(transition, angle / kappa)
        arc = max(angle / kappa - transition, 0.0)
        n_transition, n_arc = int(round(transition / SAMPLE_M)), int(round(arc / SAMPLE_M))
        ramp = np.linspace(0.0, 1.0, n_transition, endpoint=False) if n_transition else np.zeros(0)
        curve = sign * kappa * np.concatenate([ramp, np.ones(n_arc), 1.0 - ramp])
        heading += float(np.sum(curve)) * SAMPLE_M
        straight = np.zeros(int(round(rng.uniform(*cfg.straight_length_m) / SAMPLE_M)))
        pieces += [curve, straight]
        total += len(curve) + len(straight)
    return np.concatenate(pieces)[:num]


def integrate(curvature: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Heading (K,) and points (K, 2) of the centreline from its curvature, starting at the origin along +x."""
    heading = np.concatenate([[0.0], np.cumsum(0.5 * (curvature[1:] + curvature[:-1])) * SAMPLE_M])
    mid = 0.5 * (heading[1:] + heading[:-1])
    steps = SAMPLE_M * np.stack([np.cos(mid), np.sin(mid)], axis=-1)
    xy = np.concatenate([np.zeros((1, 2)), np.cumsum(steps, axis=0)])
    return heading, xy


def build_raster(
    rng: np.random.Generator, xy: np.ndarray, heading: np.ndarray, lane_width: float, cell: float
) -> tuple[np.ndarray, np.ndarray]:
    """Paints terrain, asphalt and markings into a top-down gray image.

    Lateral lines of points are stamped across the road every half cell of arc
    length, half a cell apart, so no cell inside the road is missed even on the
    outside of the tightest allowed curve.

    Returns:
      (raster (H, W) uint8, origin (2,) float64 world position of its corner).
    """
    origin = xy.min(axis=0) - RASTER_PAD_M
    width, height = np.ceil((xy.max(axis=0) + RASTER_PAD_M - origin) / cell).astype(int)
    block = max(int(round(GRASS_BLOCK_M / cell)), 1)
    coarse = rng.integers(*SHADE_GRASS, size=(height // block + 1, width // block + 1), dtype=np.uint8)
    raster = np.empty((height, width), np.uint8)
    raster_blocks = raster[: height // block * block, : width // block * block].reshape(
        height // block, block, width // block, block
    )
    raster_blocks[...] = coarse[: height // block, None, : width // block, None]
    raster[height // block * block :] = raster[:1]
    raster[:, width // block * block :] = raster[:, :1]

    step = cell / 2
    arc = np.arange(len(heading)) * SAMPLE_M
    s_fine = np.arange(0.0, arc[-1], step)
    # Centre and normal in raster cells, float32: the raster spans at most a few thousand cells.
    centre_x = ((np.interp(s_fine, arc, xy[:, 0]) - origin[0]) / cell).astype(np.float32)
    centre_y = ((np.interp(s_fine, arc, xy[:, 1]) - origin[1]) / cell).astype(np.float32)
    yaw = np.interp(s_fine, arc, heading)
    normal_x, normal_y = (-np.sin(yaw)).astype(np.float32), np.cos(yaw).astype(np.float32)
    half = lane_width + MARKING_WIDTH_M / 2 + SHOULDER_M
    offsets = np.arange(-half, half + 1e-9, step)
    scaled = (offsets / cell).astype(np.float32)
    cols = (centre_x[:, None] + scaled * normal_x[:, None]).astype(np.int32)
    rows = (centre_y[:, None] + scaled * normal_y[:, None]).astype(np.int32)
    shade = np.full((len(s_fine), len(offsets)), SHADE_ASPHALT, np.uint8)
    shade[:, np.abs(np.abs(offsets) - lane_width) <= MARKING_WIDTH_M / 2] = SHADE_MARKING
    dash = np.mod(s_fine, sum(DASH_M)) < DASH_M[0]
    shade[np.ix_(dash, np.abs(offsets) <= MARKING_WIDTH_M / 2)] = SHADE_MARKING
    rows *= width
    rows += cols
    raster.reshape(-1)[rows.ravel()] = shade.ravel()
    return raster, origin


def generate_road(rng: np.random.Generator, cfg: LaneSimConfig) -> Road:
    """A new random road and route for one episode (deterministic in `rng`'s state)."""
    curvature = curvature_profile(rng, cfg)
    heading, xy = integrate(curvature)
    raster, origin = build_raster(rng, xy, heading, cfg.lane_width_m, cfg.raster_cell_m)
    return Road(
        xy=xy,
        heading=heading,
        curvature=curvature,
        start_s=cfg.road_margin_back_m,
        goal_s=cfg.road_margin_back_m + cfg.route_length_m,
        raster=raster,
        origin=origin,
        cell=cfg.raster_cell_m,
    )


def pose_table(road: Road) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample (x, y, yaw, curvature) and the difference to the next sample, both (K, 4) float64."""
    table = np.column_stack([road.xy, road.heading, road.curvature])
    delta = np.zeros_like(table)
    delta[:-1] = table[1:] - table[:-1]
    return table, delta


def sample(table: np.ndarray, delta: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Centreline pose at arc lengths `s`, for a batch of equally long roads.

    Args:
      table: (N, K, 4) float64 `pose_table` rows of N roads.
      delta: (N, K, 4) float64 their differences.
      s: (N, ...) float64 arc lengths; clamped to the road.

    Returns:
      (*s.shape, 4) float64 (x, y, yaw, curvature), linearly interpolated.
    """
    num, k, _ = table.shape
    pos = np.minimum(np.maximum(s * (1.0 / SAMPLE_M), 0.0), k - 1)
    index = pos.astype(np.intp)
    frac = pos - index
    index += (np.arange(num) * k).reshape((num,) + (1,) * (s.ndim - 1))
    return table.reshape(-1, 4)[index] + frac[..., None] * delta.reshape(-1, 4)[index]
