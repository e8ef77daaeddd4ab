#!/usr/bin/env python3
"""Trains Stable-Baselines3's TD3 `CnnPolicy` on a td3_jax config's env, evaluated as td3_jax evaluates.

    python scripts/train_sb3.py --config configs/highway_racetrack.yaml --seed 1 --run-dir runs/sb3_racetrack_s1

The point is a comparison on equal terms with `td3-jax train --config ... --seed N`:
- **The same env.** `td3_jax.envs.make_env(config.env)`: backend, `env.gym.make_kwargs`, frame stack
  and adapter, so SB3 sees the (84, 84, S) uint8 image td3_jax sees. Envs whose observation has a
  vector part are refused (`CnnPolicy` reads one image).
- **The same budget and data schedule.** `training.max_timesteps`, and `algorithm.batch_size`,
  `buffer_size`, `learning_starts`, `train_freq`, `gradient_steps`, `discount`, `tau`,
  `policy_freq`, `policy_noise`, `noise_clip`, and Gaussian exploration noise of
  `exploration_noise.initial` (SB3's noise is constant).
- **SB3's own learner otherwise**: its `CnnPolicy` (NatureCNN features, its MLP sizes) and its
  learning rate, so the comparison is with SB3 as its users run it.
- **The same evaluation.** Every `training.eval_freq` env steps, `training.num_eval_episodes`
  deterministic episodes from seed `training.eval_seed` through `td3_jax.training.evaluate.evaluate`,
  written as the same `eval/*` tags to a TensorBoard file in the run directory, so
  `python scripts/plot_run.py TD3_RUN SB3_RUN --out F` draws both.

Needs the bench extra (torch, stable-baselines3) and the env's own extra.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import gymnasium
import numpy as np


class ImageOnly(gymnasium.ObservationWrapper):
    """The adapter's ``{"image", "vector"}`` observation as the image alone (the vector is empty)."""

    def __init__(self, env: gymnasium.Env):
        super().__init__(env)
        self.observation_space = env.observation_space["image"]

    def observation(self, observation):
        return observation["image"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="td3_jax YAML config (the env and schedule are read from it)")
    parser.add_argument("--seed", type=int, required=True, help="sets training.seed and env.seed, as td3-jax train --seed")
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    args = parser.parse_args(argv)

    from stable_baselines3 import TD3
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.noise import NormalActionNoise
    from tensorboardX import SummaryWriter

    from td3_jax.envs import make_env
    from td3_jax.training import config as config_lib
    from td3_jax.training.evaluate import episode_step_limit, evaluate

    overrides = [*args.set, f"training.seed={args.seed}", f"env.seed={args.seed}"]
    run, _ = config_lib.load(args.config, overrides)
    algorithm, training = run.algorithm, run.training
    env = make_env(run.env)
    if env.observation_space["vector"].shape[0]:
        print(f"{run.env.backend} has a vector observation; SB3's CnnPolicy reads the image alone", file=sys.stderr)
        return 2
    eval_env = make_env(run.env)
    eval_steps = training.eval_max_episode_steps or episode_step_limit(run.env, eval_env)
    run_dir = Path(args.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "command.json").write_text(json.dumps({"argv": sys.argv, "config": config_lib.to_dict(run)}, indent=2))
    writer = SummaryWriter(str(run_dir))
    writer.add_scalar("progress/buffer_size", 0.0, 0)  # the run's first event: plot_run.py counts minutes from it
    actions = env.action_space.shape[0]
    model = TD3(
        "CnnPolicy",
        ImageOnly(env),
        buffer_size=algorithm.buffer_size,
        learning_starts=algorithm.learning_starts,
        batch_size=algorithm.batch_size,
        tau=algorithm.tau,
        gamma=algorithm.discount,
        train_freq=algorithm.train_freq,
        gradient_steps=algorithm.gradient_steps,
        action_noise=NormalActionNoise(np.zeros(actions), np.full(actions, algorithm.exploration_noise.initial)),
        policy_delay=algorithm.policy_freq,
        target_policy_noise=algorithm.policy_noise,
        target_noise_clip=algorithm.noise_clip,
        optimize_memory_usage=False,
        seed=args.seed,
        verbose=0,
    )
    start = time.perf_counter()
    evaluations = []

    def policy(obs: dict, info: dict) -> np.ndarray:
        del info
        return model.predict(obs["image"], deterministic=True)[0]

    class Evaluate(BaseCallback):
        def _on_step(self) -> bool:
            if training.eval_freq and self.num_timesteps % training.eval_freq == 0:
                summary, _ = evaluate(eval_env, policy, training.num_eval_episodes, training.eval_seed,
                                      max_steps=eval_steps)
                for tag, value in summary.items():
                    if np.isfinite(value):  # collisions per km over no distance is NaN: no point, as in td3-jax train
                        writer.add_scalar(tag, value, self.num_timesteps)
                writer.flush()
                evaluations.append({"env_step": self.num_timesteps, **summary})
                print(f"eval @ {self.num_timesteps}: return {summary['eval/mean_reward']:.1f}, "
                      f"{(time.perf_counter() - start) / 60:.1f} min", flush=True)
            return True

    model.learn(total_timesteps=training.max_timesteps, callback=Evaluate())
    writer.close()
    (run_dir / "results.json").write_text(json.dumps({
        "learner": "stable-baselines3 TD3 CnnPolicy", "seed": args.seed, "env_steps": training.max_timesteps,
        "wall_minutes": (time.perf_counter() - start) / 60, "evaluations": evaluations,
    }, indent=2))
    return 0


if __name__ == "__main__":
    from td3_jax.cli import relaunch_with_huge_pages

    relaunch_with_huge_pages()  # as `td3-jax` does, so both learners run under the same allocator
    sys.exit(main())
