#!/usr/bin/env python3
"""How a checkpoint's steering, and the critic's preferred steering, follow the car's place in the lane.

    python scripts/steering_probe.py RUN_DIR [--step N] [--episodes 3] [--seed 2000000] [--offset-m 0.5] [--policy target]
        [--added-gains 0.5,1.0]

The states are the policy's own: it drives `--episodes` evaluation routes deterministically. On
each state the observation vector is moved as if the car stood +-offset further left (the lateral
deviation, and the look-ahead points shifted sideways) or were turned +-0.1 rad (the heading
error, and the points rotated); the image is left as it is. For each of three steerings it prints
the mean steering on the drive, its mean |change| from one decision to the next (how much it
jitters), and how it moves per metre of deviation and per 0.1 rad of heading error (its gains):

- the actor's steering;
- the steering the critic prefers: argmax of min(Q1, Q2) over a steering grid at the policy's
  pedal, what the critic would teach if the actor could follow;
- on the embedded simulator, the baseline's pure pursuit, which steers from the look-ahead points
  alone: the gains of a controller that keeps the lane centre.

An actor that falls short of gains its critic prefers is held back by its own learning; a critic
that prefers weak gains is held back by its reward or its fit. `--added-gains 0.5,1` tells which:
it drives the same routes again with c * lateral deviation (m, read from the vector) added to the
actor's steering for each c, and prints return, discounted return, lateral RMSE and success. A
return that rises with c means the reward pays for centring the actor has not learned.
`--branch-every N` asks whether the critic knows what steering is worth (embedded simulator only): on
the same routes, at every N-th decision, copies of the simulator steer the policy's steering plus an
offset for one decision and then drive the policy for up to `--horizon` decisions; the critic's
min(Q1, Q2) change for each offset is printed against the change of those discounted returns, with
the offset each prefers per metre of deviation (a critic that prefers less correction than the
returns shows it here, state by state).
Steering +1 turns right and the deviation is positive to the left, so centring gains are positive.
Driving backends only (lanesim, CARLA): the vector's layout is `td3_jax.envs.observation`'s.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from td3_jax.core import networks, td3
from td3_jax.envs import make_env, observation
from td3_jax.errors import UserError
from td3_jax.training import config as config_lib
from td3_jax.training.evaluate import checkpoint_policy_params, restore_train_state

STEER_GRID = np.linspace(-1.0, 1.0, 41)
"""Steering values over which the critic's preferred steering is searched."""
HEADING_STEP_RAD = 0.1
"""Heading-error perturbation, rad."""
BRANCH_OFFSETS = np.array([-0.2, -0.1, -0.05, 0.0, 0.05, 0.1, 0.2])
"""Steering offsets of the Monte Carlo branches (`--branch-every`), added to the policy's steering for one decision."""


def collect_states(env, policy, episodes: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Images, vectors and episode numbers of the states the deterministic policy visits on `episodes` routes."""
    images, vectors, episode_of = [], [], []
    for episode in range(episodes):
        obs, _ = env.reset(seed=seed + episode)
        while True:
            images.append(obs["image"])
            vectors.append(obs["vector"])
            episode_of.append(episode)
            action = policy(obs["image"][None], obs["vector"][None])[0]
            obs, _, terminated, truncated, _ = env.step(action)
            if terminated or truncated:
                break
    return np.stack(images), np.stack(vectors), np.asarray(episode_of)


def drive_with_added_gain(
    env, policy, scale: observation.ObservationConfig, gain: float, episodes: int, seed: int, discount: float
) -> dict[str, float]:
    """Drives `episodes` routes with `gain` * lateral deviation (m; left positive) added to the policy's steering.

    Steering +1 turns right, so a positive gain steers back towards the lane centre.

    Returns:
      {"return", "discounted_return" (per decision, at `discount`), "decisions" (per route): means over the
      routes; "lateral_rmse_m", "lateral_mean_m" over every decision; "success": share of routes}.
    """
    returns, discounted, decisions, deviations, successes = [], [], [], [], 0
    for episode in range(episodes):
        obs, _ = env.reset(seed=seed + episode)
        total, total_discounted, t = 0.0, 0.0, 0
        while True:
            _, deviation, _, _ = observation.parse_vector(obs["vector"], scale)
            action = np.array(policy(obs["image"][None], obs["vector"][None])[0], np.float32)
            action[0] = np.clip(action[0] + gain * deviation, -1.0, 1.0)
            obs, reward, terminated, truncated, info = env.step(action)
            total, total_discounted, t = total + reward, total_discounted + discount**t * reward, t + 1
            deviations.append(deviation)
            if terminated or truncated:
                successes += bool(info.get("success", False))
                break
        returns.append(total)
        discounted.append(total_discounted)
        decisions.append(t)
    deviations = np.asarray(deviations)
    return {
        "return": float(np.mean(returns)), "discounted_return": float(np.mean(discounted)),
        "decisions": float(np.mean(decisions)), "lateral_rmse_m": float(np.sqrt(np.mean(deviations**2))),
        "lateral_mean_m": float(deviations.mean()), "success": successes / episodes,
    }


def branch_returns(env, policy, obs, action: np.ndarray, horizon: int, discount: float) -> np.ndarray:
    """Discounted returns of `action` with each of `BRANCH_OFFSETS` added to its steering for one decision, then
    `policy` for up to `horizon` decisions in all, each on its own copy of `env` (left as it is)."""
    returns = []
    for offset in BRANCH_OFFSETS:
        branch = copy.deepcopy(env)
        first = np.array(action, np.float32)
        first[0] = np.clip(first[0] + offset, -1.0, 1.0)
        next_obs, reward, terminated, truncated, _ = branch.step(first)
        total, t = float(reward), 1
        while not (terminated or truncated) and t < horizon:
            action_t = policy(next_obs["image"][None], next_obs["vector"][None])[0]
            next_obs, reward, terminated, truncated, _ = branch.step(action_t)
            total, t = total + discount**t * float(reward), t + 1
        returns.append(total)
    return np.asarray(returns)


def critic_against_returns(
    env, policy, q_fn, scale: observation.ObservationConfig, *, episodes: int, seed: int, every: int, horizon: int,
    discount: float,
) -> dict:
    """The critic's values of one-decision steering offsets against their Monte Carlo returns (`branch_returns`),
    on the states of `episodes` deterministic routes, every `every`-th decision.

    Returns:
      {"states": count; for name in return, q: "{name}_change": mean value at each of `BRANCH_OFFSETS` minus the
      value at offset 0, "{name}_at_policy": mean value at offset 0, "{name}_preferred_per_deviation":
      least-squares slope, over the states, of the best offset against the lateral deviation (m, left positive)}.
    """
    returns, values, deviations = [], [], []
    for episode in range(episodes):
        obs, _ = env.reset(seed=seed + episode)
        t = 0
        while True:
            action = np.asarray(policy(obs["image"][None], obs["vector"][None])[0], np.float32)
            if t % every == every - 1:
                returns.append(branch_returns(env, policy, obs, action, horizon, discount))
                steered = np.repeat(action[None], len(BRANCH_OFFSETS), axis=0)
                steered[:, 0] = np.clip(steered[:, 0] + BRANCH_OFFSETS, -1.0, 1.0)
                images = np.repeat(obs["image"][None], len(BRANCH_OFFSETS), axis=0)
                vectors = np.repeat(obs["vector"][None], len(BRANCH_OFFSETS), axis=0)
                values.append(np.asarray(q_fn(images, vectors, steered)))
                deviations.append(observation.parse_vector(obs["vector"], scale)[1])
            obs, _, terminated, truncated, _ = env.step(action)
            t += 1
            if terminated or truncated:
                break
    at_policy = int(np.flatnonzero(BRANCH_OFFSETS == 0.0)[0])
    out: dict = {"states": len(returns)}
    for name, table in (("return", np.asarray(returns)), ("q", np.asarray(values))):
        if not len(table):
            continue
        out[f"{name}_change"] = (table - table[:, [at_policy]]).mean(axis=0)
        out[f"{name}_at_policy"] = float(table[:, at_policy].mean())
        best = BRANCH_OFFSETS[np.argmax(table, axis=1)]
        spread = len(best) > 1 and np.ptp(deviations) > 0
        out[f"{name}_preferred_per_deviation"] = float(np.polyfit(deviations, best, 1)[0]) if spread else float("nan")
    return out


def steering_change(steer: np.ndarray, episode_of: np.ndarray) -> float:
    """Mean |steering change| between consecutive decisions of one episode."""
    same = episode_of[1:] == episode_of[:-1]
    return float(np.abs(np.diff(steer))[same].mean()) if same.any() else float("nan")


def _points(vectors: np.ndarray, scale: observation.ObservationConfig) -> np.ndarray:
    """The look-ahead entries (x, y interleaved) of vectors built with `scale`: a view."""
    return vectors[:, observation.HEADER:vectors.shape[1] - scale.action_entries]


def moved_left(vectors: np.ndarray, metres: float, scale: observation.ObservationConfig) -> np.ndarray:
    """The vectors (built with `scale`) of a car `metres` further left: the deviation grows, the look-ahead
    points move right."""
    out = vectors.copy()
    out[:, 1] += metres / scale.deviation_scale_m
    _points(out, scale)[:, 1::2] -= metres / observation.WAYPOINT_SCALE
    return out


def turned_left(vectors: np.ndarray, radians: float, scale: observation.ObservationConfig) -> np.ndarray:
    """The vectors (built with `scale`) of a car yawed `radians` further left: the heading error grows, the
    points rotate right."""
    out = vectors.copy()
    out[:, 2] += radians / scale.heading_scale_rad
    x, y = _points(vectors, scale)[:, 0::2], _points(vectors, scale)[:, 1::2]
    cos, sin = np.cos(radians), np.sin(radians)
    _points(out, scale)[:, 0::2] = x * cos + y * sin
    _points(out, scale)[:, 1::2] = -x * sin + y * cos
    return out


def preferred_steer(q_fn, images, vectors, pedal) -> np.ndarray:
    """Per state, the steering on `STEER_GRID` with the highest min(Q1, Q2) at the given pedal."""
    values = []
    for steer in STEER_GRID:
        action = np.stack([np.full(len(images), steer, np.float32), pedal.astype(np.float32)], axis=1)
        values.append(q_fn(images, vectors, action))
    return STEER_GRID[np.argmax(np.stack(values), axis=0)]


def probe(
    policy, q_fn, images, vectors, episode_of, *, offset_m: float, scale: observation.ObservationConfig, reference=None
) -> dict[str, float]:
    """Steering gains of the actor, of the critic's preferred steering and of `reference` (a policy), if given.

    Returns ``{"{who}_steer_mean", "{who}_steer_change" (mean |change| between consecutive
    decisions), "{who}_steer_per_deviation" (per m), "{who}_steer_per_heading" (per 0.1 rad)}``
    for who in actor, critic (and reference).
    """
    pedal = policy(images, vectors)[:, 1]
    steering = {
        "actor": lambda v: policy(images, v)[:, 0],
        "critic": lambda v: preferred_steer(q_fn, images, v, pedal),
    }
    if reference is not None:
        steering["reference"] = lambda v: reference(images, v)[:, 0]
    out = {}
    for who, steer in steering.items():
        steer_here = steer(vectors)
        out[f"{who}_steer_mean"] = float(steer_here.mean())
        out[f"{who}_steer_change"] = steering_change(steer_here, episode_of)
        left, right = steer(moved_left(vectors, offset_m, scale)), steer(moved_left(vectors, -offset_m, scale))
        out[f"{who}_steer_per_deviation"] = float(np.mean(left - right) / (2 * offset_m))
        left = steer(turned_left(vectors, HEADING_STEP_RAD, scale))
        right = steer(turned_left(vectors, -HEADING_STEP_RAD, scale))
        out[f"{who}_steer_per_heading"] = float(np.mean(left - right) / 2)
    return out


def pure_pursuit(lanesim_config, scale: observation.ObservationConfig = observation.ObservationConfig()):
    """The baseline's steering (pure pursuit on the look-ahead points of vectors built with `scale`) as a batched
    policy."""
    from td3_jax.envs.lanesim.baseline import BaselineController, for_lanesim

    controller = BaselineController(for_lanesim(lanesim_config))

    def policy(images, vectors):
        steer = []
        for vector in vectors:
            speed, points = observation.speed_and_points(vector, scale)
            steer.append(controller.steer(points, speed))
        return np.stack([np.asarray(steer), np.zeros(len(steer))], axis=1)

    return policy


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    parser.add_argument("--episodes", type=int, default=3, help="evaluation routes driven to collect states")
    parser.add_argument("--seed", type=int, default=2_000_000, help="seed of the first route")
    parser.add_argument("--offset-m", type=float, default=0.5, help="lateral-deviation perturbation, m")
    parser.add_argument("--policy", choices=td3.POLICIES, default=None,
                        help="the actor probed and driven: online, the target actor or the slow average (default: the run's "
                             "training.eval_policy); the critic probed is always the online one")
    parser.add_argument("--added-gains", default="",
                        help="comma-separated gains c (steering per m of lateral deviation): drive the routes again "
                             "with c * deviation added to the actor's steering, and print their returns")
    parser.add_argument("--branch-every", type=int, default=0, metavar="N",
                        help="embedded simulator: at every N-th decision of the routes, compare the critic's values of "
                             "one-decision steering offsets with Monte Carlo returns from copies of the simulator")
    parser.add_argument("--horizon", type=int, default=100,
                        help="decisions per Monte Carlo branch (default 100; 0.97**100 = 0.05)")
    args = parser.parse_args(argv)
    try:
        if not (args.run_dir / "config.yaml").is_file():
            raise UserError(f"{args.run_dir} has no config.yaml; pass a td3-jax run directory")
        if args.episodes < 1 or args.horizon < 1 or not args.offset_m > 0 or args.branch_every < 0:
            raise UserError("--episodes and --horizon must be >= 1, --offset-m > 0 and --branch-every >= 0")
        try:
            added_gains = [float(gain) for gain in args.added_gains.split(",") if gain.strip()]
        except ValueError:
            raise UserError(f"--added-gains takes comma-separated numbers, got {args.added_gains!r}") from None
        run, _ = config_lib.load(args.run_dir / "config.yaml")
        if run.env.backend not in ("lanesim", "carla"):
            raise UserError(f"the probe reads the driving observation vector; {run.env.backend} has none")
        if args.branch_every and run.env.backend != "lanesim":
            raise UserError("--branch-every copies the simulator mid-route: the embedded simulator (lanesim) only")
        env = make_env(run.env)
        td3_cfg = config_lib.td3_config(run, env.action_space.shape[0])
        restored = restore_train_state(args.run_dir / "checkpoints", td3_cfg, env, args.step)
        which = args.policy or run.training.eval_policy
        actor_params = checkpoint_policy_params(restored.train_state, which)
    except UserError as error:
        print(f"steering_probe: error: {error}", file=sys.stderr)
        return 2
    state = restored.train_state
    actor, critic = networks.make_networks(td3_cfg.network)
    apply_actor = jax.jit(lambda i, v: actor.apply({"params": actor_params}, i, v))
    apply_critic = jax.jit(lambda i, v, a: jnp.minimum(*critic.apply({"params": state.critic_params}, i, v, a)))

    def policy(images, vectors):
        return np.asarray(apply_actor(jnp.asarray(images), jnp.asarray(vectors)))

    def q_fn(images, vectors, actions):
        return np.asarray(apply_critic(jnp.asarray(images), jnp.asarray(vectors), jnp.asarray(actions)))

    drives, branches = {}, None
    try:
        images, vectors, episode_of = collect_states(env, policy, args.episodes, args.seed)
        for gain in ([0.0] + added_gains) if added_gains else []:
            drives[gain] = drive_with_added_gain(
                env, policy, run.env.observation, gain, args.episodes, args.seed, run.algorithm.discount
            )
        if args.branch_every:
            branches = critic_against_returns(
                env, policy, q_fn, run.env.observation, episodes=args.episodes, seed=args.seed,
                every=args.branch_every, horizon=args.horizon, discount=run.algorithm.discount,
            )
    finally:
        env.close()
    deviation = vectors[:, 1] * run.env.observation.deviation_scale_m
    reference = pure_pursuit(run.env.lanesim, run.env.observation) if run.env.backend == "lanesim" else None
    gains = probe(
        policy, q_fn, images, vectors, episode_of, offset_m=args.offset_m, scale=run.env.observation,
        reference=reference,
    )
    print(f"checkpoint {args.run_dir}/{restored.step}, {which} actor: {len(images)} states of {args.episodes} routes from seed "
          f"{args.seed}; lateral deviation mean {deviation.mean():+.2f} m, std {deviation.std():.2f} m (+ left)")
    columns = ["actor", "critic"] + (["reference"] if reference is not None else [])
    names = {"actor": "actor", "critic": "critic", "reference": "pursuit"}
    print(f"{'':34s}" + "".join(f" {names[c]:>8s}" for c in columns))
    for label, key in (("mean steering (+ right)", "mean"), ("steering change per decision", "change"),
                       ("steering per m of deviation", "per_deviation"),
                       ("steering per 0.1 rad of heading", "per_heading")):
        sign = "" if key == "change" else "+"  # a magnitude
        print(f"{label:34s}" + "".join(f" {gains[f'{c}_steer_{key}']:{sign}8.3f}" for c in columns))
    if drives:
        print(f"\nthe same routes with c * lateral deviation (m) added to the actor's steering (discount "
              f"{run.algorithm.discount}):")
        print(f"{'c':>6s} {'return':>9s} {'discounted':>10s} {'decisions':>9s} {'RMSE m':>7s} {'mean m':>7s} {'success':>7s}")
        for gain, d in drives.items():
            print(f"{gain:6.2f} {d['return']:9.1f} {d['discounted_return']:10.1f} {d['decisions']:9.1f} "
                  f"{d['lateral_rmse_m']:7.3f} {d['lateral_mean_m']:+7.3f} {d['success']:7.2f}")
    if branches is not None:
        print_branches(branches, args.branch_every, args.horizon, run.algorithm.discount)
    return 0


def print_branches(branches: dict, every: int, horizon: int, discount: float) -> None:
    """The table of `critic_against_returns`."""
    print(f"\nthe critic against Monte Carlo returns on {branches['states']} states (every {every}th decision): the "
          f"steering offset for one decision, then the actor for up to {horizon} decisions (discount {discount}):")
    if not branches["states"]:
        return
    print(f"{'steering offset':>20s}" + "".join(f" {offset:+7.2f}" for offset in BRANCH_OFFSETS)
          + "  at the policy  preferred offset per m of deviation")
    for label, name in (("return change", "return"), ("min(Q1, Q2) change", "q")):
        print(f"{label:>20s}" + "".join(f" {value:+7.2f}" for value in branches[f"{name}_change"])
              + f"  {branches[f'{name}_at_policy']:13.1f}  {branches[f'{name}_preferred_per_deviation']:+.3f}")


if __name__ == "__main__":
    sys.exit(main())
