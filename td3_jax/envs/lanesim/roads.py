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
CHUNK_M = 10.0
"""Arc length of road painted into the raster at once."""

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
      surface: its top-down raster, painted as views need it.
    """

    xy: np.ndarray
    heading: np.ndarray
    curvature: np.ndarray
    start_s: float
    goal_s: float
    surface: RoadRaster

    def __setstate__(self, state: dict) -> None:
        # A simulator snapshot saved before roads were painted lazily holds the painted image itself.
        if "raster" in state:
            state = dict(state)
            state["surface"] = RoadRaster.painted(state.pop("raster"), state.pop("origin"), state.pop("cell"))
        self.__dict__.update(state)

    @property
    def raster(self) -> np.ndarray:
        """(H, W) uint8 top-down gray image, fully painted; row = y, column = x."""
        return self.surface.image

    @property
    def origin(self) -> np.ndarray:
        """(2,) float64 world position of raster cell (0, 0)'s corner."""
        return self.surface.origin

    @property
    def cell(self) -> float:
        """Raster cell size, m."""
        return self.surface.cell

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


class RoadRaster:
    """A road's top-down gray image, painted in arc-length order only as far as a view needs.

    The terrain is painted at once. The road is stamped as lateral lines of
    points every half cell of arc length, half a cell apart, so no cell inside
    the road is missed even on the outside of the tightest allowed curve; a
    cell stamped more than once keeps its last stamp. The stamps are painted in
    chunks of `CHUNK_M` of arc length, in order, and `view` paints every chunk
    up to the last one that reaches the columns a view reads: every cell it
    reads then holds its final value, so frames equal those of a fully painted
    raster, while an episode that ends early never pays for the road it did
    not see (a new road is the costliest part of a reset).

    Args:
      rng: the episode's generator (draws the terrain texture).
      xy, heading: the centreline's points (K, 2) and yaw (K,), SAMPLE_M apart.
      lane_width: m.
      cell: raster cell size, m.

    Attributes:
      origin: (2,) float64 world position of cell (0, 0)'s corner; row = y, column = x.
      cell: cell size, m.
      shape: (H, W) of the image.
    """

    def __init__(self, rng: np.random.Generator, xy: np.ndarray, heading: np.ndarray, lane_width: float, cell: float):
        self.cell = cell
        self.origin = xy.min(axis=0) - RASTER_PAD_M
        width, height = np.ceil((xy.max(axis=0) + RASTER_PAD_M - self.origin) / cell).astype(int)
        self.shape = (int(height), int(width))
        self._image = _terrain(rng, height, width, max(int(round(GRASS_BLOCK_M / cell)), 1))

        step = cell / 2
        arc = np.arange(len(heading)) * SAMPLE_M
        s_fine = np.arange(0.0, arc[-1], step)
        # Centre and normal in raster cells, float32: the raster spans at most a few thousand cells.
        self._centre_x = ((np.interp(s_fine, arc, xy[:, 0]) - self.origin[0]) / cell).astype(np.float32)
        self._centre_y = ((np.interp(s_fine, arc, xy[:, 1]) - self.origin[1]) / cell).astype(np.float32)
        yaw = np.interp(s_fine, arc, heading)
        self._normal_x, self._normal_y = (-np.sin(yaw)).astype(np.float32), np.cos(yaw).astype(np.float32)
        half = lane_width + MARKING_WIDTH_M / 2 + SHOULDER_M
        offsets = np.arange(-half, half + 1e-9, step)
        self._scaled = (offsets / cell).astype(np.float32)
        self._shade = np.full(len(offsets), SHADE_ASPHALT, np.uint8)
        self._shade[np.abs(np.abs(offsets) - lane_width) <= MARKING_WIDTH_M / 2] = SHADE_MARKING
        self._shade_dashed = self._shade.copy()
        self._shade_dashed[np.abs(offsets) <= MARKING_WIDTH_M / 2] = SHADE_MARKING
        self._dash = np.mod(s_fine, sum(DASH_M)) < DASH_M[0]

        self._starts = np.arange(0, len(s_fine), max(int(round(CHUNK_M / step)), 1))
        # A chunk's stamps lie within `reach` cells of its centre points (2 cells spare for rounding).
        # _lowest_later[k] is the lowest column that chunk k or any later one reaches: every chunk reaching a
        # column <= c comes before the first k whose value exceeds c, so painting the chunks before that k
        # makes every cell up to column c final. (Roads run along +x, so it is nearly chunk k's own.)
        reach = float(np.abs(self._scaled).max()) + 2.0
        lowest = np.minimum.reduceat(self._centre_x, self._starts) - reach
        self._lowest_later = np.minimum.accumulate(lowest[::-1])[::-1]
        self._painted = 0  # chunks painted so far
        self._final_below = float(self._lowest_later[0])  # every column below it is final

    @classmethod
    def painted(cls, image: np.ndarray, origin: np.ndarray, cell: float) -> "RoadRaster":
        """A raster whose road is already painted into `image`."""
        raster = cls.__new__(cls)
        raster.cell, raster.origin, raster.shape, raster._image = cell, origin, image.shape, image
        raster._starts = raster._lowest_later = np.zeros(0)
        raster._painted, raster._final_below = 0, np.inf
        return raster

    @property
    def complete(self) -> bool:
        """Whether the whole road is painted."""
        return self._painted == len(self._starts)

    @property
    def image(self) -> np.ndarray:
        """(H, W) uint8, fully painted."""
        self._paint_through(len(self._starts))
        return self._image

    def view(self, max_column: float) -> np.ndarray:
        """The image, painted far enough that every cell of column <= `max_column` holds its final value."""
        if max_column >= self._final_below:
            self._paint_through(int(np.searchsorted(self._lowest_later, max_column, side="right")))
        return self._image

    def _paint_through(self, end: int) -> None:
        """Paints chunks [painted, end) in order."""
        if end <= self._painted:
            return
        first = self._starts[self._painted]
        last = self._starts[end] if end < len(self._starts) else len(self._centre_x)
        span = slice(first, last)
        shape = (last - first, len(self._scaled))
        work = np.empty(shape, np.float32)
        columns, index = np.empty(shape, np.int32), np.empty(shape, np.int32)
        np.multiply(self._scaled, self._normal_x[span, None], out=work)
        np.add(self._centre_x[span, None], work, out=work)
        np.copyto(columns, work, casting="unsafe")  # truncates, as the cells are non-negative
        np.multiply(self._scaled, self._normal_y[span, None], out=work)
        np.add(self._centre_y[span, None], work, out=work)
        np.copyto(index, work, casting="unsafe")
        index *= self.shape[1]
        index += columns
        shade = np.where(self._dash[span, None], self._shade_dashed, self._shade)
        self._image.reshape(-1)[index.ravel()] = shade.ravel()
        self._painted = end
        self._final_below = float(self._lowest_later[end]) if end < len(self._starts) else np.inf


def _terrain(rng: np.random.Generator, height: int, width: int, block: int) -> np.ndarray:
    """(height, width) uint8 terrain of `block`-cell squares of random gray; a partial block repeats the first row or column."""
    coarse = rng.integers(*SHADE_GRASS, size=(height // block + 1, width // block + 1), dtype=np.uint8)
    image = np.empty((height, width), np.uint8)
    full_h, full_w = height // block * block, width // block * block
    # Widen each row of blocks once, then copy it into the block's rows: contiguous copies.
    wide = np.repeat(coarse[: height // block, : width // block], block, axis=1)
    image[:full_h, :full_w].reshape(height // block, block, full_w)[...] = wide[:, None, :]
    image[full_h:] = image[:1]
    image[:, full_w:] = image[:, :1]
    return image


def generate_road(rng: np.random.Generator, cfg: LaneSimConfig) -> Road:
    """A new random road and route for one episode (deterministic in `rng`'s state)."""
    curvature = curvature_profile(rng, cfg)
    heading, xy = integrate(curvature)
    surface = RoadRaster(rng, xy, heading, cfg.lane_width_m, cfg.raster_cell_m)
    return Road(
        xy=xy,
        heading=heading,
        curvature=curvature,
        start_s=cfg.road_margin_back_m,
        goal_s=cfg.road_margin_back_m + cfg.route_length_m,
        surface=surface,
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
