"""The observation vector shared by the driving backends (lanesim and CARLA).

Layout, as in the original: ``[speed, lateral deviation, heading error, then
per look-ahead point (x, y)]`` in float32, followed, with
``previous_action``, by the previous env step's action ``(steer,
throttle_brake)``. Unlike the original, the lateral
deviation is signed (left of the lane centre positive), the heading error is
taken from the ego's own lane, and the scales bring what matters for lane
keeping to unit order: the original's ``/ 30, / 3.5, / pi, / 50`` turned a
typical heading error (0.05 rad) into 0.016 and a 0.3 m offset into 0.09,
next to 512 unit-scale image features, and Adam grows a first-layer weight by
only about its learning rate per update. Look-ahead points are in the vehicle
frame, x forward and y left, on the centre of the ego's lane; points past the
goal repeat the goal, so the route's end is visible in the vector.
"""

from __future__ import annotations

import dataclasses

import numpy as np

SPEED_SCALE = 10.0
"""m/s per unit of the speed entry."""
WAYPOINT_SCALE = 20.0
"""m per unit of a look-ahead coordinate."""
HEADER = 3
"""Entries before the look-ahead points."""
ACTION_ENTRIES = 2
"""Entries of the previous action at the vector's end, with `ObservationConfig.previous_action`."""


@dataclasses.dataclass(frozen=True)
class ObservationConfig:
    """Scales of the two vector entries lane keeping hinges on (lanesim and carla; a gym env makes its own vector)."""

    deviation_scale_m: float = 1.0
    """Metres of lateral deviation per unit of vector entry 1; smaller makes a small offset a larger input."""
    heading_scale_rad: float = 0.25
    """Radians of heading error per unit of vector entry 2."""
    previous_action: bool = False
    """Append the previous env step's action (steer, throttle_brake; 0, 0 after a reset) to the vector. The
    steer being applied is state the frames show only through its effect; a reward on steering changes
    (`reward.steering_change_penalty`) needs it in the observation to stay Markov. False is the original's vector."""

    @property
    def action_entries(self) -> int:
        """Entries the previous action adds at the vector's end (0 or `ACTION_ENTRIES`)."""
        return ACTION_ENTRIES if self.previous_action else 0

    def vector_size(self, num_waypoints: int) -> int:
        """Length of a vector with `num_waypoints` look-ahead points in this layout."""
        return HEADER + 2 * num_waypoints + self.action_entries

    def __post_init__(self):
        for name in ("deviation_scale_m", "heading_scale_rad"):
            value = getattr(self, name)
            if not 0.01 <= value <= 10.0:
                raise ValueError(f"env.observation.{name} must be in [0.01, 10.0], got {value}")


def build_vector(
    speed: np.ndarray,
    lateral_deviation: np.ndarray,
    heading_error: np.ndarray,
    waypoints: np.ndarray,
    scale: ObservationConfig,
    previous_action: np.ndarray | None = None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Scales measurements into the observation vector.

    Args:
      speed: (N,) m/s.
      lateral_deviation: (N,) signed, m.
      heading_error: (N,) rad in [-pi, pi].
      waypoints: (N, W, 2) look-ahead points in the vehicle frame, m.
      scale: the scales, and whether the previous action is appended.
      previous_action: (N, 2) the previous env step's actions; required with `scale.previous_action`.
      out: optional (N, 3 + 2W [+ 2]) float32 buffer.

    Returns:
      (N, 3 + 2W [+ 2]) float32.
    """
    num, count, _ = waypoints.shape
    end = HEADER + 2 * count
    if out is None:
        out = np.empty((num, end + scale.action_entries), np.float32)
    out[:, 0] = speed / SPEED_SCALE
    out[:, 1] = lateral_deviation / scale.deviation_scale_m
    out[:, 2] = heading_error / scale.heading_scale_rad
    out[:, HEADER:end] = waypoints.reshape(num, 2 * count) / WAYPOINT_SCALE
    if scale.previous_action:
        if previous_action is None:
            raise ValueError("observation.previous_action is on: pass the previous actions")
        out[:, end:] = previous_action
    return out


def parse_vector(vector: np.ndarray, scale: ObservationConfig) -> tuple[float, float, float, np.ndarray]:
    """Inverse of `build_vector` for one observation.

    Args:
      vector: (3 + 2W [+ 2],) float32.
      scale: the config it was built with.

    Returns:
      (speed m/s, lateral deviation m, heading error rad, (W, 2) waypoints m).
    """
    speed, points = speed_and_points(vector, scale)
    vector = np.asarray(vector, np.float64)
    return speed, float(vector[1] * scale.deviation_scale_m), float(vector[2] * scale.heading_scale_rad), points


def speed_and_points(vector: np.ndarray, scale: ObservationConfig = ObservationConfig()) -> tuple[float, np.ndarray]:
    """(speed m/s, (W, 2) look-ahead points m) of one observation vector built with `scale`'s layout."""
    vector = np.asarray(vector, np.float64)
    points = vector[HEADER:len(vector) - scale.action_entries]
    return float(vector[0] * SPEED_SCALE), points.reshape(-1, 2) * WAYPOINT_SCALE
