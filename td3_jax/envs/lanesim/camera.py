"""Forward pinhole camera over a flat world: ground from a raster, vehicles as boxes. Host-side NumPy.

Each pixel's ray is intersected with the ground plane once, at construction, in
the vehicle frame (x forward, y left, z up). A frame then costs one rigid
transform of those ground points, one gather from the episode's road raster
and a rectangle fill per visible vehicle. The sensor emulated is the
original's: a horizontal field of view over a 16:9 image that is squeezed to
84x84, so the vertical field of view is narrower than the horizontal one.
"""

from __future__ import annotations

import numpy as np

from td3_jax.envs.config import LaneSimConfig
from td3_jax.envs.lanesim.roads import Road
from td3_jax.envs.lanesim.traffic import NPC_HEIGHT_M
from td3_jax.envs.spaces import FRAME_SIZE

SKY_TOP, SKY_HORIZON = 205, 175
"""Gray levels of the sky at the top of the frame and at the horizon."""
HAZE = 150
"""Gray level of ground beyond the render distance."""
FAR_M = 1e4
"""Ground points beyond this are clamped (they are drawn as haze; this keeps float32 cells finite)."""
MIN_DEPTH_M = 0.3
"""A vehicle's near face closer than this to the camera is drawn as if at this depth."""
WINDOW_SHARE = 0.35
"""Upper share of a vehicle box drawn in the darker window shade."""


class Camera:
    """Renders (84, 84) uint8 frames of the road ahead of a vehicle.

    Args:
      cfg: camera mount and optics (camera_* fields, render_distance_m).
      size: frame height and width in pixels.
    """

    def __init__(self, cfg: LaneSimConfig, size: int = FRAME_SIZE):
        self.size = size
        self.mount_x, self.mount_z = cfg.camera_x_m, cfg.camera_z_m
        half_h = np.tan(np.radians(cfg.camera_fov_deg) / 2)
        self.half_tan = half_h
        self.fx = (size / 2) / half_h
        self.fy = (size / 2) / (half_h / cfg.camera_aspect)
        pitch = np.radians(cfg.camera_pitch_deg)
        self.cos_p, self.sin_p = np.cos(pitch), np.sin(pitch)
        centres = np.arange(size) + 0.5 - size / 2
        u, v = np.meshgrid(centres / self.fx, centres / self.fy)
        # Ray (forward, left, up) = (1, -u, -v) in the camera, then pitched about the left axis.
        forward = self.cos_p + self.sin_p * v
        up = self.sin_p - self.cos_p * v
        with np.errstate(divide="ignore"):
            t = np.where(up < -1e-6, -self.mount_z / up, np.inf)
        ground_x, ground_y = self.mount_x + t * forward, -t * u
        distance = t * np.sqrt(forward**2 + u**2)
        # Rays that hit the ground are whole rows at the bottom: one contiguous span of the flat frame.
        below = np.flatnonzero((up < -1e-6).ravel())
        self.ground_start = int(below[0]) if len(below) else size * size
        span = slice(self.ground_start, None)
        self.far_index = np.flatnonzero(distance.ravel()[span] > cfg.render_distance_m)
        # Homogeneous ground points in raster cells, so one 2x3 matmul maps them to raster columns and rows.
        with np.errstate(invalid="ignore"):
            self.ground_cells = np.stack(
                [np.minimum(ground_x.ravel()[span], FAR_M) / cfg.raster_cell_m,
                 np.clip(ground_y.ravel()[span], -FAR_M, FAR_M) / cfg.raster_cell_m,
                 np.ones(size * size - self.ground_start)]
            ).astype(np.float32)
        # Box of the ground points within the render distance, vehicle frame, in cells: the raster must be
        # painted as far as the columns they map to (farther points are drawn as haze).
        near = np.delete(self.ground_cells, self.far_index, axis=1)
        self.near_box = tuple(map(float, (*near[:2].min(axis=1), *near[:2].max(axis=1)))) if near.shape[1] else None
        self.cell = cfg.raster_cell_m
        self.max_box_distance = cfg.render_distance_m
        rows = np.broadcast_to(np.linspace(SKY_TOP, SKY_HORIZON, size)[:, None], (size, size))
        background = np.where(up < -1e-6, HAZE, rows).astype(np.uint8)
        self.background = background.ravel()

    def render(
        self,
        road: Road,
        pose: tuple[float, float, float],
        boxes: np.ndarray | None = None,
        out: np.ndarray | None = None,
    ) -> np.ndarray:
        """One frame.

        Args:
          road: the episode's road (raster, origin, cell).
          pose: (x, y, yaw) of the vehicle centre, world frame.
          boxes: (M, 6) float64 other vehicles: x, y, yaw, half length, half width, gray level.
          out: optional (size, size) uint8 buffer to draw into.

        Returns:
          (size, size) uint8 frame (`out` if given).
        """
        x, y, yaw = pose
        c, s = np.cos(yaw), np.sin(yaw)
        to_cells = 1.0 / self.cell
        transform = np.array(
            [[c, -s, (x - road.origin[0]) * to_cells], [s, c, (y - road.origin[1]) * to_cells]], np.float32
        )
        cells = (transform @ self.ground_cells).astype(np.intp)
        surface = road.surface
        height, width = surface.shape
        top = np.array([[width - 1], [height - 1]])
        np.maximum(cells, 0, out=cells)
        np.minimum(cells, top, out=cells)
        if surface.complete:
            raster = surface.image
        else:
            # The largest column the near points map to (2 cells spare for rounding; a linear map's maximum
            # over a box, term by term), clamped as the reads are.
            reach = 0.0
            if self.near_box is not None:
                x0, y0, x1, y1 = self.near_box
                reach = transform[0, 2] + max(c * x0, c * x1) + max(-s * y0, -s * y1) + 2
            raster = surface.view(min(max(reach, 0.0), width - 1))
        frame = self.background.copy() if out is None else _fill(out, self.background)
        flat = frame.reshape(-1)
        ground = raster.reshape(-1).take(cells[1] * width + cells[0])
        ground[self.far_index] = HAZE
        flat[self.ground_start :] = ground
        image = flat.reshape(self.size, self.size)
        if boxes is not None and len(boxes):
            self._draw_boxes(image, x, y, c, s, boxes)
        return image

    def _draw_boxes(self, image: np.ndarray, x: float, y: float, c: float, s: float, boxes: np.ndarray) -> None:
        """Draws each vehicle as the screen rectangle of its near face widened to its full lateral extent."""
        dx, dy = boxes[:, 0] - x, boxes[:, 1] - y
        ahead = c * dx + s * dy - self.mount_x
        side = -s * dx + c * dy
        rel = boxes[:, 2] - np.arctan2(s, c)
        cos_rel, sin_rel = np.abs(np.cos(rel)), np.abs(np.sin(rel))
        extent_ahead = boxes[:, 3] * cos_rel + boxes[:, 4] * sin_rel
        extent_side = boxes[:, 3] * sin_rel + boxes[:, 4] * cos_rel
        near = ahead - extent_ahead
        visible = (ahead + extent_ahead > MIN_DEPTH_M) & (near < self.max_box_distance)
        visible &= np.abs(side) - extent_side < np.maximum(near, MIN_DEPTH_M) * self.half_tan
        if not visible.any():
            return
        index = np.flatnonzero(visible)
        near = np.maximum(near[index], MIN_DEPTH_M)
        side, extent_side = side[index], extent_side[index]
        low, high = -self.mount_z, NPC_HEIGHT_M - self.mount_z
        depth_low = np.maximum(self.cos_p * near + self.sin_p * low, MIN_DEPTH_M)
        depth_high = np.maximum(self.cos_p * near + self.sin_p * high, MIN_DEPTH_M)
        half = self.size / 2
        limits = np.stack([
            half - self.fy * (self.cos_p * high - self.sin_p * near) / depth_high,
            half - self.fy * (self.cos_p * low - self.sin_p * near) / depth_low,
            half - self.fx * (side + extent_side) / depth_low,
            half - self.fx * (side - extent_side) / depth_low,
        ], axis=1)
        limits = np.rint(np.minimum(np.maximum(limits, 0), self.size)).astype(np.intp).tolist()
        shades = boxes[index, 5].astype(np.uint8).tolist()
        # Far to near, so nearer vehicles cover farther ones.
        for k in np.argsort(-near).tolist():
            r0, r1, c0, c1 = limits[k]
            if r1 <= r0 or c1 <= c0:
                continue
            split = r0 + max(int((r1 - r0) * WINDOW_SHARE), 1)
            image[r0:split, c0:c1] = shades[k] // 2
            image[split:r1, c0:c1] = shades[k]


def _fill(out: np.ndarray, background: np.ndarray) -> np.ndarray:
    out.reshape(-1)[:] = background
    return out
