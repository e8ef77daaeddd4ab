#!/usr/bin/env python3
"""Prints a checkpoint's critic over a grid of actions, averaged over states of a fixed drive.

    python scripts/critic_landscape.py RUN_DIR [--step N] [--states 400] [--steer-points 9]

The states come from driving the run's env (evaluation seed) with small random steering and
zero pedal, so every checkpoint of a run is probed on the same observations. Each row is one
pedal value (brake -1, coast 0, throttle +1) and each column a steering value from -1 (left)
to +1 (right); each entry is min(Q1, Q2) averaged over the states. A critic that has learned
what an action does has curvature here; a table that is linear across the whole box is what a
deterministic policy gradient turns into a corner policy (docs/results.md).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from td3_jax.core import networks, td3
from td3_jax.envs import make_env
from td3_jax.errors import UserError
from td3_jax.training import config as config_lib
from td3_jax.training.evaluate import restore_train_state


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    parser.add_argument("--states", type=int, default=400, help="env steps of the probing drive")
    parser.add_argument("--steer-points", type=int, default=9)
    args = parser.parse_args(argv)
    if not (args.run_dir / "config.yaml").is_file():
        print(f"critic_landscape: error: {args.run_dir} has no config.yaml; pass a td3-jax run directory",
              file=sys.stderr)
        return 2
    try:
        run, _ = config_lib.load(args.run_dir / "config.yaml")
        env = make_env(run.env)
        td3_cfg = config_lib.td3_config(run, env.action_space.shape[0])
        restored = restore_train_state(args.run_dir / "checkpoints", td3_cfg, env, args.step)
    except UserError as error:
        print(f"critic_landscape: error: {error}", file=sys.stderr)
        return 2
    state = restored.train_state
    rng = np.random.default_rng(0)
    images, vectors = [], []
    obs, _ = env.reset(seed=run.training.eval_seed)
    for _ in range(args.states):
        images.append(obs["image"])
        vectors.append(obs["vector"])
        obs, _, terminated, truncated, _ = env.step(np.array([rng.normal(0.0, 0.1), 0.0]))
        if terminated or truncated:
            obs, _ = env.reset()
    image, vector = jnp.asarray(np.stack(images)), jnp.asarray(np.stack(vectors))
    actor, critic = networks.make_networks(td3_cfg.network)
    policy = np.asarray(actor.apply({"params": td3.policy_params(state)}, image, vector))
    steers = np.linspace(-1.0, 1.0, args.steer_points)
    print(f"checkpoint {args.run_dir}/{restored.step}: policy mean action (steer, pedal) = "
          f"({policy[:, 0].mean():+.3f}, {policy[:, 1].mean():+.3f}) over {len(images)} states")
    print("pedal \\ steer " + " ".join(f"{s:+7.2f}" for s in steers))
    for pedal in (-1.0, 0.0, 1.0):
        row = []
        for steer in steers:
            action = jnp.broadcast_to(jnp.array([steer, pedal], jnp.float32), (image.shape[0], 2))
            q1, q2 = critic.apply({"params": state.critic_params}, image, vector, action)
            row.append(float(jnp.mean(jnp.minimum(q1, q2))))
        print(f"{pedal:+13.0f} " + " ".join(f"{q:7.1f}" for q in row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
