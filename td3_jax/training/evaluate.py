"""Deterministic evaluation of a policy, and the `td3-jax eval` subcommand. Host-side.

Each evaluation runs N whole episodes on its own env instance with fixed seeds
(episode i resets with `seed + i`), so every evaluation of a run sees the same
roads and traffic and the training episode is never disturbed. Per-episode
counts are summed over steps, not read from the final step (the original read
collisions and lane invasions from the last step only).

An evaluation episode never runs past a step limit (the env's own time limit
unless configured), so an env whose episodes never end cannot hang training,
and a stop request (SIGINT/SIGTERM in training) is checked before every step.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from pathlib import Path
from typing import Callable

import numpy as np

from td3_jax.core.hparams import POLICIES

Policy = Callable[[dict, dict], np.ndarray]
"""Maps a batched observation {"image": (1, H, W, S), "vector": (1, V)} and the last step's info
to actions (1, A). A policy with a `reset()` method has it called at every episode start."""


@dataclasses.dataclass
class EpisodeResult:
    """What one evaluation episode did."""

    reward: float
    length: int
    success: bool
    collisions: int
    lane_invasions: int
    distance_m: float
    lateral_sq_sum: float
    speed_sum: float
    termination_reason: str
    lateral_sum: float = 0.0
    """Sum of the signed lateral deviations (positive: left of the lane centre)."""
    reported: tuple[str, ...] = ()
    """The `DRIVING_INFO_KEYS` the env put in its step infos (a gymnasium env may report none)."""


DRIVING_INFO_KEYS = ("success", "collision", "lane_invasion", "lateral_deviation_m", "speed_mps", "distance_travelled_m")
"""Step-info keys of the driving backends (lanesim, CARLA) that the driving metrics are computed from."""

DRIVING_METRICS = {
    "eval/success_rate": "success",
    "eval/avg_collisions": "collision",
    "eval/collisions_per_km": "collision",
    "eval/avg_lane_invasions": "lane_invasion",
    "eval/lateral_rmse_m": "lateral_deviation_m",
    "eval/lateral_mean_m": "lateral_deviation_m",
    "eval/mean_speed_kmh": "speed_mps",
    "eval/avg_distance_m": "distance_travelled_m",
}
"""Each driving metric and the info key it needs: without the key it is not reported, rather than read as 0."""

SELECTABLE_METRICS = ("eval/mean_reward", "eval/std_reward", "eval/avg_episode_length", *DRIVING_METRICS)
"""The tags `summarize` reports for every env (the driving ones when the env reports their info keys)."""

STEP_LIMIT_REASON = "eval_step_limit"
"""Termination reason of an evaluation episode cut at its step limit."""


class EvaluationStopped(Exception):
    """A stop was requested during an evaluation; its partial results are discarded."""


def episode_step_limit(env_config, env) -> int | None:
    """The env steps after which the backend itself ends an episode, or None if it never does.

    The embedded simulator counts `max_episode_steps` in simulator steps (an
    env step holds `action_repeat` of them); CARLA counts env steps; a gymnasium
    env has the limit it was registered with, if any.
    """
    if env_config.backend == "lanesim":
        return env_config.lanesim.max_episode_steps // env_config.lanesim.action_repeat
    if env_config.backend == "carla":
        return env_config.carla.max_episode_steps
    spec = getattr(env, "spec", None)
    return getattr(spec, "max_episode_steps", None)


def run_episode(
    env, policy: Policy, seed: int, *, max_steps: int | None = None, should_stop: Callable[[], bool] | None = None
) -> EpisodeResult:
    """Runs one episode of `policy` on `env` from `reset(seed=seed)`.

    Args:
      max_steps: the episode is truncated after this many steps (reason
        `STEP_LIMIT_REASON`) if the env has not ended it; None: no limit.
      should_stop: checked before every step; when it returns True the
        episode is abandoned with `EvaluationStopped`.
    """
    obs, info = env.reset(seed=seed)
    if hasattr(policy, "reset"):
        policy.reset()
    result = EpisodeResult(0.0, 0, False, 0, 0, 0.0, 0.0, 0.0, "")
    while True:
        if should_stop is not None and should_stop():
            raise EvaluationStopped(f"stop requested during an evaluation episode (seed {seed})")
        batched = {key: np.asarray(value)[None] for key, value in obs.items()}
        action = np.asarray(policy(batched, info))[0]
        obs, reward, terminated, truncated, info = env.step(action)
        result.reward += float(reward)
        result.length += 1
        result.collisions += int(bool(info.get("collision", False)))
        result.lane_invasions += int(bool(info.get("lane_invasion", False)))
        result.lateral_sum += float(info.get("lateral_deviation_m", 0.0))
        result.lateral_sq_sum += float(info.get("lateral_deviation_m", 0.0)) ** 2
        result.speed_sum += float(info.get("speed_mps", 0.0))
        result.distance_m = float(info.get("distance_travelled_m", result.distance_m))
        result.reported = tuple(key for key in DRIVING_INFO_KEYS if key in info or key in result.reported)
        if terminated or truncated:
            result.success = bool(info.get("success", False))
            reason = info.get("termination_reason", "")
            result.termination_reason = str(reason) or ("time_limit" if truncated else "terminated")
            return result
        if max_steps is not None and result.length >= max_steps:
            result.termination_reason = STEP_LIMIT_REASON
            return result


def summarize(episodes: list[EpisodeResult]) -> dict[str, float]:
    """Aggregate evaluation metrics, keyed by their TensorBoard tag (eval/*).

    A driving metric (`DRIVING_METRICS`) is left out unless every episode's env
    reported the info key it is computed from.
    """
    if not episodes:
        return {}
    steps = sum(e.length for e in episodes)
    km = sum(e.distance_m for e in episodes) / 1000.0
    summary = {
        "eval/mean_reward": float(np.mean([e.reward for e in episodes])),
        "eval/std_reward": float(np.std([e.reward for e in episodes])),
        "eval/success_rate": float(np.mean([e.success for e in episodes])),
        "eval/avg_collisions": float(np.mean([e.collisions for e in episodes])),
        "eval/collisions_per_km": sum(e.collisions for e in episodes) / km if km > 0 else math.nan,
        "eval/avg_lane_invasions": float(np.mean([e.lane_invasions for e in episodes])),
        "eval/lateral_rmse_m": math.sqrt(sum(e.lateral_sq_sum for e in episodes) / steps),
        "eval/lateral_mean_m": sum(e.lateral_sum for e in episodes) / steps,  # RMSE^2 = mean^2 + spread^2
        "eval/mean_speed_kmh": 3.6 * sum(e.speed_sum for e in episodes) / steps,
        "eval/avg_distance_m": float(np.mean([e.distance_m for e in episodes])),
        "eval/avg_episode_length": float(np.mean([e.length for e in episodes])),
    }
    reported = set.intersection(*(set(e.reported) for e in episodes))
    summary = {tag: value for tag, value in summary.items()
               if tag not in DRIVING_METRICS or DRIVING_METRICS[tag] in reported}
    reasons = sorted({e.termination_reason for e in episodes})
    for reason in reasons:
        summary[f"eval/termination_{reason}"] = float(np.mean([e.termination_reason == reason for e in episodes]))
    return summary


COMPARISON_ROWS = (
    ("success rate", "eval/success_rate", "{:.2f}"),
    ("mean return", "eval/mean_reward", "{:.1f}"),
    ("lateral RMSE (m)", "eval/lateral_rmse_m", "{:.3f}"),
    ("lateral mean (m, + left)", "eval/lateral_mean_m", "{:+.3f}"),
    ("collisions per route", "eval/avg_collisions", "{:.2f}"),
    ("lane invasions per route", "eval/avg_lane_invasions", "{:.2f}"),
    ("distance (m)", "eval/avg_distance_m", "{:.1f}"),
    ("mean speed (km/h)", "eval/mean_speed_kmh", "{:.1f}"),
)


def comparison_table(columns: dict[str, dict[str, float]]) -> str:
    """Evaluation summaries side by side, one column per policy, one row per headline metric."""
    names = list(columns)
    lines = [f"{'':26s}" + "".join(f"{name:>12s}" for name in names)]
    for label, key, spec in COMPARISON_ROWS:
        cells = [spec.format(columns[name][key]) if key in columns[name] else "-" for name in names]
        lines.append(f"{label:26s}" + "".join(f"{cell:>12s}" for cell in cells))
    return "\n".join(lines)


def evaluate(
    env,
    policy: Policy,
    num_episodes: int,
    seed: int,
    *,
    max_steps: int | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> tuple[dict[str, float], list[EpisodeResult]]:
    """Runs `num_episodes` episodes with seeds seed, seed+1, ...; returns (summary, episodes).

    `max_steps` and `should_stop` apply to every episode (see `run_episode`).
    """
    episodes = [
        run_episode(env, policy, seed + i, max_steps=max_steps, should_stop=should_stop) for i in range(num_episodes)
    ]
    return summarize(episodes), episodes


def td3_policy(actor_params, network) -> Policy:
    """The deterministic TD3 policy (no exploration noise) as a `Policy`."""
    import jax

    from td3_jax.core.td3 import act

    key = jax.random.key(0)  # unused: noise_scale is 0

    def policy(obs: dict, info: dict) -> np.ndarray:
        del info
        return np.asarray(act(actor_params, obs["image"], obs["vector"], key, 0.0, network=network))

    return policy


def restore_train_state(directory, td3_cfg, env, step: int | None = None):
    """A checkpoint's train state, without the replay, for acting and probing.

    Args:
      directory: the run's checkpoint directory (RUN_DIR/checkpoints).
      td3_cfg: the run's `TD3Config` (its networks give the state's shapes).
      env: an env of the run's backend (its observation space gives the input shapes).
      step: the checkpoint step; None: the latest.

    Returns:
      The store's `Restored` (train_state, step, ...).
    """
    import jax

    from td3_jax.checkpoint import store as checkpoint
    from td3_jax.core.td3 import init_state

    abstract = jax.eval_shape(
        lambda: init_state(
            td3_cfg,
            jax.random.key(0),
            image_shape=env.observation_space["image"].shape,
            vector_dim=env.observation_space["vector"].shape[0],
        )
    )
    with checkpoint.Checkpointer(directory, read_only=True) as ckpt:
        return ckpt.restore(step, abstract_train_state=abstract, with_replay=False)


def checkpoint_policy_params(train_state, policy: str):
    """`td3.policy_params` of a restored run, its one refusal (no policy average kept) as a `UserError`."""
    from td3_jax.core.td3 import policy_params
    from td3_jax.errors import UserError

    try:
        return policy_params(train_state, policy=policy)
    except ValueError:
        raise UserError("this run keeps no policy average (its algorithm.policy_average_tau is 0); "
                        "pass --policy online or --policy target") from None


class BaselinePolicy:
    """The pure-pursuit + PID baseline (td3_jax.envs.lanesim.baseline) as a `Policy`, for the same evaluation."""

    def __init__(self, env_config):
        from td3_jax.envs.lanesim.baseline import BaselineController, for_lanesim

        if env_config.backend != "lanesim":
            raise ValueError("the baseline evaluation here is set up for the embedded simulator (env.backend: lanesim)")
        self.controller = BaselineController(for_lanesim(env_config.lanesim), env_config.observation)

    def reset(self) -> None:
        self.controller.reset()

    def __call__(self, obs: dict, info: dict) -> np.ndarray:
        single = {key: value[0] for key, value in obs.items()}
        return np.asarray(self.controller.act(single, info))[None]


# ---------------------------------------------------------------- CLI


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", default=None, help="a run directory or its checkpoints/ directory")
    parser.add_argument("--baseline", action="store_true",
                        help="evaluate the pure-pursuit + PID baseline instead, on the same env and seeds")
    parser.add_argument("--config", default=None, help="with --baseline and no --checkpoint: the run config")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    parser.add_argument("--policy", choices=POLICIES, default=None,
                        help="the actor being trained, its Polyak-averaged target actor, or the slow average of "
                             "algorithm.policy_average_tau (default: the run's training.eval_policy)")
    parser.add_argument("--episodes", type=int, default=None, help="episodes (default: the run's num_eval_episodes)")
    parser.add_argument("--seed", type=int, default=None, help="seed of the first episode (default: the run's eval_seed)")
    parser.add_argument("--json", default=None, help="also write the metrics and episodes to this JSON file")
    parser.add_argument("--max-episode-steps", type=int, default=None,
                        help="cut episodes after this many env steps (default: the run's "
                             "training.eval_max_episode_steps, else the env's time limit)")


def run(args: argparse.Namespace) -> int:
    from td3_jax.checkpoint import store as checkpoint
    from td3_jax.envs import make_env
    from td3_jax.errors import UserError, check_output_file
    from td3_jax.training import config as config_lib

    if args.checkpoint is None and not (args.baseline and args.config):
        raise UserError("pass --checkpoint RUN_DIR (or --baseline --config FILE)")
    if args.baseline and args.policy:
        raise UserError("--policy picks which TD3 actor drives; drop it with --baseline")
    # Every argument is checked before the evaluation, which can take long: a bad one must not cost its results.
    if args.json:
        check_output_file(args.json, "--json")
    if args.seed is not None and not 0 <= args.seed < 2**32:
        raise UserError(f"--seed must be in [0, 2**32), got {args.seed}")
    if args.episodes is not None and args.episodes < 1:
        raise UserError(f"--episodes must be >= 1, got {args.episodes}")
    if args.max_episode_steps is not None and args.max_episode_steps < 1:
        raise UserError(f"--max-episode-steps must be >= 1, got {args.max_episode_steps}")
    directory = None
    if args.checkpoint is not None:
        directory = Path(args.checkpoint)
        if (directory / "checkpoints").is_dir():
            directory = directory / "checkpoints"
        if not directory.is_dir():
            raise UserError(f"{args.checkpoint} is not a run directory or checkpoint directory")
        run_config = config_lib.build(config_lib.RunConfig, checkpoint.load_config(directory, args.step))
    else:
        run_config, _ = config_lib.load(args.config)
    env = make_env(run_config.env)
    try:  # a CARLA env holds a server connection and actors: close it on every exit
        return _evaluate_command(args, run_config, directory, env)
    finally:
        env.close()


def _evaluate_command(args: argparse.Namespace, run_config, directory: Path | None, env) -> int:
    from td3_jax.errors import UserError
    from td3_jax.training import config as config_lib

    restored = None
    episodes = args.episodes if args.episodes is not None else run_config.training.num_eval_episodes
    seed = args.seed if args.seed is not None else run_config.training.eval_seed
    if episodes < 1:
        raise UserError(f"the run's training.num_eval_episodes is {episodes}; pass --episodes N")
    if args.baseline:
        try:
            policy = BaselinePolicy(run_config.env)
        except ValueError as error:
            raise UserError(str(error)) from None
        source = "baseline controller"
    else:
        td3_cfg = config_lib.td3_config(run_config, env.action_space.shape[0])
        restored = restore_train_state(directory, td3_cfg, env, args.step)
        which = args.policy or run_config.training.eval_policy
        policy = td3_policy(checkpoint_policy_params(restored.train_state, which), td3_cfg.network)
        source = f"checkpoint {directory}/{restored.step}, {which} policy"
    max_steps = (
        args.max_episode_steps or run_config.training.eval_max_episode_steps
        or episode_step_limit(run_config.env, env)
    )
    if max_steps is None:
        raise UserError(f"{run_config.env.backend} has no time limit, so an episode might never end; pass --max-episode-steps N")
    summary, results = evaluate(env, policy, episodes, seed, max_steps=max_steps)
    print(f"{source}: {episodes} episodes from seed {seed}")
    for key, value in summary.items():
        print(f"  {key:32s} {value:12.4f}")
    if args.json:
        Path(args.json).write_text(
            json.dumps({"source": source, "checkpoint_step": restored.step if restored else None,
                        "policy": None if args.baseline else which, "metrics": summary, "episodes": [dataclasses.asdict(e) for e in results]}, indent=2)
        )
    return 0
