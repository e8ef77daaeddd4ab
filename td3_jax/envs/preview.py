"""`td3-jax env-preview`: PNGs of the embedded simulator's camera view and of the route. Host-side I/O.

Drives one episode with the baseline controller (or random actions) and writes
``camera.png`` (a grid of camera frames, every `--every` steps, scaled up) and
``map.png`` (the top-down road raster with the route, the ego's path and the
traffic at the last frame).
"""

from __future__ import annotations

import argparse
import dataclasses
import os

import numpy as np

from td3_jax.envs.config import LaneSimConfig
from td3_jax.envs.lanesim.baseline import BaselineController, for_lanesim
from td3_jax.envs.lanesim.roads import SAMPLE_M
from td3_jax.envs.lanesim.sim import LaneSimEnv
from td3_jax.errors import UserError, ensure_writable_dir

SCALE = 3
"""Nearest-neighbour upscaling of each 84x84 frame in camera.png."""
COLUMNS = 6
"""Frames per row of camera.png."""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="env_preview", help="directory the PNGs are written to")
    parser.add_argument("--scenario", type=int, default=0, help="traffic: 0 light, 1 medium, 2 heavy")
    parser.add_argument("--seed", type=int, default=0, help="episode seed (road and traffic)")
    parser.add_argument("--frames", type=int, default=12, help="camera frames in camera.png")
    parser.add_argument("--every", type=int, default=25, help="steps between the frames shown")
    parser.add_argument("--driver", choices=("baseline", "random"), default="baseline",
                        help="who drives: the pure-pursuit baseline or uniform random actions")
    parser.add_argument("--route-length", type=float, default=None, help="route length in m (default: config)")


def run(args: argparse.Namespace) -> int:
    if args.frames < 1 or args.every < 1:
        raise UserError("--frames and --every must be >= 1")
    if not 0 <= args.seed < 2**32:
        raise UserError(f"--seed must be in [0, 2**32), got {args.seed}")
    try:
        cfg = LaneSimConfig(scenario=args.scenario)
        if args.route_length is not None:
            cfg = dataclasses.replace(cfg, route_length_m=args.route_length)
    except ValueError as error:
        raise UserError(str(error)) from error
    ensure_writable_dir(args.out, "--out")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    env = LaneSimEnv(cfg)
    obs, info = env.reset(seed=args.seed)
    road = env.core.roads[0]
    controller = BaselineController(for_lanesim(cfg))
    rng = np.random.default_rng(args.seed)
    frames, path = [obs["image"][..., -1]], [(env.core.x[0], env.core.y[0])]
    step, reason = 0, ""
    while len(frames) < args.frames:
        action = controller.act(obs, info) if args.driver == "baseline" else rng.uniform(-1, 1, 2)
        obs, _, terminated, truncated, info = env.step(action)
        step += 1
        path.append((env.core.x[0], env.core.y[0]))
        if step % args.every == 0 or terminated or truncated:
            frames.append(obs["image"][..., -1])
        if terminated or truncated:
            reason = info["termination_reason"]
            break
    camera_path = os.path.join(args.out, "camera.png")
    plt.imsave(camera_path, frame_grid(frames), cmap="gray", vmin=0, vmax=255)
    map_path = os.path.join(args.out, "map.png")
    draw_map(plt, road, env, np.array(path), map_path, cfg)
    ending = f", episode ended: {reason}" if reason else ""
    print(f"wrote {camera_path} ({len(frames)} frames, every {args.every} steps{ending}) and {map_path}")
    return 0


def frame_grid(frames: list[np.ndarray]) -> np.ndarray:
    """(rows * 84 * SCALE, COLUMNS * 84 * SCALE) uint8 grid of frames, 2-pixel black gutters."""
    size = frames[0].shape[0] * SCALE + 2
    rows = -(-len(frames) // COLUMNS)
    grid = np.zeros((rows * size, min(len(frames), COLUMNS) * size), np.uint8)
    for k, frame in enumerate(frames):
        r, c = divmod(k, COLUMNS)
        big = np.kron(frame, np.ones((SCALE, SCALE), np.uint8))
        grid[r * size : r * size + big.shape[0], c * size : c * size + big.shape[1]] = big
    return grid


def draw_map(plt, road, env: LaneSimEnv, path: np.ndarray, filename: str, cfg: LaneSimConfig) -> None:
    """Top-down raster with the route (start to goal), the ego's path and its last pose, and the NPCs."""
    height, width = road.raster.shape
    extent = (road.origin[0], road.origin[0] + width * road.cell, road.origin[1], road.origin[1] + height * road.cell)
    fig, ax = plt.subplots(figsize=(10, 10 * height / width + 1))
    ax.imshow(road.raster, cmap="gray", vmin=0, vmax=255, origin="lower", extent=extent)
    start, goal = (int(round(s / SAMPLE_M)) for s in (road.start_s, road.goal_s))
    normal = np.stack([-np.sin(road.heading), np.cos(road.heading)], axis=1)
    lane = road.xy - 0.5 * cfg.lane_width_m * normal
    ax.plot(lane[start : goal + 1, 0], lane[start : goal + 1, 1], color="tab:blue", lw=1.5, label="route")
    ax.plot(*lane[start], "o", color="tab:green", label="start")
    ax.plot(*lane[goal], "*", color="tab:red", ms=12, label="goal")
    ax.plot(path[:, 0], path[:, 1], color="tab:orange", lw=1, label="ego path")
    boxes = env.core.boxes[0]
    ax.plot(boxes[:, 0], boxes[:, 1], "s", color="tab:purple", ms=3, label="NPCs")
    ax.plot(*path[-1], ">", color="tab:orange", ms=8)
    ax.set_aspect("equal")
    ax.set_xlabel("x (m)")
    ax.set_ylabel("y (m)")
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(filename, dpi=100)
    plt.close(fig)
