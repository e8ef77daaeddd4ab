"""The host training loop (`Trainer`): acting, replay, updates, evaluation, checkpoints. Host-side.

One loop drives a vector of envs (the embedded simulator by default), fills the
frame-deduplicating replay buffer, and calls the jitted `update_many` every
`train_freq` env steps with `gradient_steps` fused updates. Everything the
update needs is in the `TD3State`; everything the loop needs to continue
exactly (env step, episode counters, RNG states, the env itself for the
embedded simulator, the replay buffer) goes into each checkpoint.

One counter, `env_step`, gates exploration, training, logging, evaluation and
checkpoints, so no gate can disagree with another (the original's even/odd
logging bug). Transitions store `terminated` and `truncated` separately: a
time limit bootstraps, a crash does not.
"""

from __future__ import annotations

import logging
import math
import signal
import time
from pathlib import Path

import jax
import numpy as np

from td3_jax.checkpoint.store import CheckpointError, Checkpointer, save_alone
from td3_jax.core import optim
from td3_jax.core.td3 import act, init_state, policy_params
from td3_jax.envs.factory import step_info
from td3_jax.envs.reward import component_rewards
from td3_jax.envs.workers import WorkerFailureError, evaluation_env_config
from td3_jax.errors import UserError, brief
from td3_jax.replay.batch_feed import BatchFeed
from td3_jax.replay import ReplayBuffer, ReplayMemoryError
from td3_jax.training import config as config_lib
from td3_jax.training import resume
from td3_jax.training.best import BestCheckpoint
from td3_jax.training.evaluate import (
    BaselinePolicy,
    EvaluationStopped,
    comparison_table,
    episode_step_limit,
    evaluate,
    td3_policy,
)
from td3_jax.training.guard import DivergenceGuard, alert_scalars
from td3_jax.training.parallel import DataParallel
from td3_jax.training.run_log import EpisodeStats, LoopClock, RunLog, write_results
from td3_jax.training.schedule import crossed, exploration_std, update_calls

EPISODE_HISTORY = 100  # episodes in the console's running mean
_LOG = logging.getLogger(__name__)


def random_streams(seed: int, process_index: int) -> tuple[jax.Array, jax.Array, np.random.SeedSequence, int | list[int]]:
    """(init key, act key, exploration seed, replay sampler seed) of one process of a run.

    Every process initialises the same networks; exploration noise, random
    actions and replay sampling are the process's own, or every host of a
    multi-host run would explore alike. Process 0 keeps a single-process run's streams.
    """
    init_key, act_key = jax.random.split(jax.random.key(seed))
    own = [process_index] if process_index else []
    if process_index:
        act_key = jax.random.fold_in(act_key, process_index)
    return init_key, act_key, np.random.SeedSequence([seed, 1, *own]), [seed, *own] if own else seed


class Trainer:
    """One training run in `run_dir`. Host-side; see the module docstring."""

    def __init__(self, run: config_lib.RunConfig, run_dir: Path, *, checkpoint_dir: Path | None = None,
                 await_updates: bool = False):
        """`await_updates` blocks on every update as it is dispatched (the bench's loop figure: on a CPU the
        host's work then never shares the cores with an update, as it would not with an accelerator)."""
        from td3_jax.envs import make_env
        from td3_jax.envs.workers import make_worker_vec_env

        self.run = run
        self.run_dir = run_dir
        if run.training.num_eval_episodes and run.env.workers.carla_servers and run.env.evaluation_shares_training_world():
            raise UserError(
                f"the evaluation env's CARLA server {run.env.carla.host}:{run.env.carla.port} (carla.host, carla.port) "
                "is one of env.workers.carla_servers: each evaluation would restart every training worker; point "
                "carla.host and carla.port at a server of its own, or set training.num_eval_episodes: 0"
            )
        self.await_updates = await_updates
        run_dir.mkdir(parents=True, exist_ok=True)
        algorithm = run.algorithm
        init_key, self.act_key, explore_seed, replay_seed = random_streams(run.training.seed, jax.process_index())
        try:
            self.parallel = DataParallel(run.training.devices)
            self.parallel.check_batch_size(algorithm.batch_size)
        except ValueError as error:
            raise UserError(f"training.devices={run.training.devices!r}: {error}") from None
        self.env = make_worker_vec_env(run.env, run.env.workers)
        self.n_envs = self.env.num_envs
        obs_space = self.env.single_observation_space
        image_shape = obs_space["image"].shape
        vector_dim = obs_space["vector"].shape[0]
        self.action_dim = self.env.single_action_space.shape[0]
        self.td3_config = config_lib.td3_config(run, self.action_dim)
        try:  # before the slow parts below, so that a buffer too large for memory fails at once
            self.buffer = ReplayBuffer(
                algorithm.buffer_size,
                n_envs=self.n_envs,
                stack=image_shape[-1],
                frame_shape=image_shape[:2],
                vector_dim=vector_dim,
                action_dim=self.action_dim,
                reward_components=self.td3_config.network.critic_reward_components,
                seed=replay_seed,
            )
        except ReplayMemoryError as error:
            self.env.close()
            raise UserError(f"algorithm.buffer_size={algorithm.buffer_size}: {error}") from None
        self.eval_env = None
        if run.training.num_eval_episodes > 0:
            self.eval_env = make_env(evaluation_env_config(run.env, run.env.workers))
        # A CARLA evaluation on a training env's server would meet that env's ego (driving on with its last
        # control) and traffic: the training envs leave the world for it and start new episodes after it.
        self.eval_shares_world = self.eval_env is not None and run.env.evaluation_shares_training_world()
        self.eval_max_steps = None
        if self.eval_env is not None:
            self.eval_max_steps = run.training.eval_max_episode_steps or episode_step_limit(run.env, self.eval_env)
            if self.eval_max_steps is None:
                raise UserError(
                    f"{run.env.backend} has no time limit, so an evaluation episode might never end; "
                    "set training.eval_max_episode_steps (or training.num_eval_episodes=0)"
                )
        state = init_state(self.td3_config, init_key, image_shape=image_shape, vector_dim=vector_dim)
        self.state = self.parallel.place_state(state)
        self.explore_rng = np.random.default_rng(explore_seed)
        if checkpoint_dir is not None and not (run_dir / "checkpoints").exists():
            # The link lets `--resume RUN_DIR` and `td3-jax eval` find checkpoints kept elsewhere.
            checkpoint_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "checkpoints").symlink_to(checkpoint_dir.absolute(), target_is_directory=True)
        self.checkpointer = Checkpointer(
            run_dir / "checkpoints",
            max_to_keep=run.training.keep_checkpoints,
            save_replay=run.training.save_replay_buffer,
        )
        self.best = None  # the best policy by the evaluations, in best/ (training/best.py)
        if self.eval_env is not None and run.training.best_checkpoint_metric:
            env_settings = {k: v for k, v in config_lib.to_dict(run)["env"].items() if k != "workers"}
            how = {"episodes": run.training.num_eval_episodes, "first_seed": run.training.eval_seed,
                   "policy": run.training.eval_policy, "max_steps": self.eval_max_steps, "env": env_settings}
            self.best = BestCheckpoint(run_dir / "best", run.training.best_checkpoint_metric,
                                       run.training.best_checkpoint_mode, how)
        self.feed = BatchFeed(
            self.buffer, self.parallel.place_batches, batch_size=algorithm.batch_size,
            gradient_steps=algorithm.gradient_steps, n_step=algorithm.n_step, discount=algorithm.discount,
            prefetch=run.training.prefetch_batches,
        )
        self.clock = LoopClock()
        self.guard = DivergenceGuard(run.guard)
        self.env_step = 0
        self.episodes = 0
        self.updates = 0
        self.episode_stats = EpisodeStats(self.n_envs)
        self.recent_rewards: list[float] = []
        self.results = {"training_rewards": [], "evaluations": []}
        self.obs = None
        self._stop_signal: int | None = None
        self._unchecked_updates: list[tuple[int, jax.Array]] = []  # (env step, all_finite) not yet fetched
        self._policy_actions: list[np.ndarray] = []
        self._last_good_state = None
        self._diverged = False

    # ------------------------------------------------------------ state

    def host_state(self) -> dict:
        """JSON-able loop state for an exact resume."""
        backend_snapshot = None
        if _has_env_snapshot(self.run):
            backend_snapshot = resume.pack_snapshot((self.env, self.obs, self.episode_stats))
        return {
            "env_step": self.env_step,
            "episodes": self.episodes,
            "updates": self.updates,
            "explore_rng": self.explore_rng.bit_generator.state,
            "act_key": [int(x) for x in np.asarray(jax.random.key_data(self.act_key))],
            "guard": self.guard.state_dict(),
            "recent_rewards": list(self.recent_rewards),
            "results": self.results,
            "env_snapshot": backend_snapshot,
        }

    def restore(self) -> list[str]:
        """Continues from the latest checkpoint of this run; returns a log line per config change applied.

        Raises:
          UserError: the config changes a key that a resume cannot change (`resume.FIXED_KEYS`).
        """
        if self.checkpointer.latest_step() is None:
            raise UserError(
                f"the run in {self.run_dir} stopped before its first checkpoint, so there is nothing to resume; "
                f"start it again with a new --run-dir (or delete {self.run_dir})"
            )
        # The config is checked first: a refused change must not surface as a shape mismatch of the arrays.
        saved = config_lib.build(config_lib.RunConfig, self.checkpointer.read_config())
        changes = resume.config_changes(saved, self.run)
        resume.check_changes(changes, env_snapshot=_has_env_snapshot(saved), run_dir=self.run_dir)
        restored = self.checkpointer.restore(
            abstract_train_state=self.parallel.abstract_state(self.state), with_replay=True
        )
        host = restored.host_state
        # The restored optimizer states hold the learning rates, weight decay and eps they were saved with.
        state = restored.train_state
        self.state = state.replace(
            actor_opt_state=optim.with_hyperparams(state.actor_opt_state, state.config.actor_optimizer),
            critic_opt_state=optim.with_hyperparams(state.critic_opt_state, state.config.critic_optimizer),
        )
        if restored.replay_state is not None:
            self.buffer.load_state_dict(restored.replay_state)
        self.env_step, self.episodes, self.updates = host["env_step"], host["episodes"], host["updates"]
        self.explore_rng.bit_generator.state = host["explore_rng"]
        self.act_key = jax.random.wrap_key_data(np.asarray(host["act_key"], np.uint32))
        self.guard.load_state_dict(host["guard"])
        self.recent_rewards = list(host["recent_rewards"])
        self.results = host["results"]
        if host["env_snapshot"] is not None:
            snapshot = resume.unpack_snapshot(host["env_snapshot"], self.checkpointer.directory / str(restored.step))
            self.env.close()
            self.env, self.obs, self.episode_stats = snapshot
        else:  # CARLA or gym: a new episode starts
            self._start_new_episodes()
        best_changed = self.best.resumed(self.env_step) if self.best is not None else None
        return resume.describe_changes(changes) + ([best_changed] if best_changed else [])

    def _start_new_episodes(self) -> None:
        """Every env starts a new episode (after a resume, or an evaluation in its world); the buffer does not
        bridge the cut, and the cut episodes are not counted."""
        self.obs, _ = self.env.reset(seed=self.run.env.seed + self.env_step)  # a new seed at every cut
        self.buffer.end_episodes(np.ones(self.n_envs, bool))
        self.episode_stats = EpisodeStats(self.n_envs)

    def _leave_world(self) -> None:
        """Before the eval env drives: a training env that shares its world closes (its actors go)."""
        if self.eval_shares_world and self.env is not None:
            try:
                self.env.close()
            finally:
                self.env = None

    def _rejoin_world(self) -> None:
        """Before the next training step: the eval env gives the world back and the training envs reconnect."""
        if self.env is None:
            self.clock.enter("evaluation")  # its cost; and a failure to reconnect saves a checkpoint first
            self.eval_env.close()  # its actors go; a later evaluation reconnects
            from td3_jax.envs.workers import make_worker_vec_env

            self.env = make_worker_vec_env(self.run.env, self.run.env.workers)
            self._start_new_episodes()

    def save_checkpoint(self) -> None:
        if self.checkpointer.latest_step() == self.env_step:
            return
        self._check_updates_finite()
        replay = self.buffer.state_dict() if self.run.training.save_replay_buffer else None
        self.checkpointer.save(
            self.env_step,
            train_state=self.state,
            host_state=self.host_state(),
            config=config_lib.to_dict(self.run),
            replay_state=replay,
        )
        if self.best is not None:  # a resume may start from any checkpoint kept
            self.best.checkpointed(min(self.checkpointer.committed_steps()))

    # ------------------------------------------------------------ loop

    def _request_stop(self, signum, _frame) -> None:
        self._stop_signal = signum

    def _actions(self) -> np.ndarray:
        algorithm = self.run.algorithm
        if self.env_step < algorithm.learning_starts:
            return self.explore_rng.uniform(-1.0, 1.0, (self.n_envs, self.action_dim)).astype(np.float32)
        std = exploration_std(algorithm.exploration_noise, self.env_step - algorithm.learning_starts)
        self.act_key, key = jax.random.split(self.act_key)
        actions = act(
            self.parallel.local_params(policy_params(self.state)), self.obs["image"], self.obs["vector"], key, std,
            network=self.td3_config.network,
        )
        actions = np.asarray(self.clock.wait(actions))  # the one wait for the device per env step
        self._check_updates_finite()
        if not np.isfinite(actions).all():
            raise _Diverged(f"the policy's actions are not finite at step {self.env_step}: the networks diverged")
        self._policy_actions.append(actions)
        return actions

    def _train(self, log: RunLog) -> None:
        self.clock.enter("sampling")
        batches = self.feed.take()
        self.clock.enter("update")
        # Dispatched, not awaited: the host prepares the next step while the device updates.
        self.state, metrics = self.parallel.update_many(self.state, batches)
        self.feed.release(metrics["debug/all_finite"])  # the batches' host arrays are reused once it is ready
        if self.await_updates:
            self.clock.wait(self.state)
        self.updates += self.run.algorithm.gradient_steps
        log.add_update_metrics(metrics)
        self._unchecked_updates.append((self.env_step, metrics["debug/all_finite"]))

    def _check_updates_finite(self) -> None:
        """Raises _Diverged when an update since the last check produced non-finite values.

        Runs before every use of the state (acting on it, logging it as the last
        good one, evaluating or checkpointing it), so a non-finite state is never
        acted on, evaluated or saved.
        """
        unchecked, self._unchecked_updates = self._unchecked_updates, []
        for step, all_finite in unchecked:
            if np.asarray(self.clock.wait(all_finite)).min() < 1:
                raise _Diverged(f"an update at step {step} produced non-finite values: the networks diverged")

    def _log(self, log: RunLog, interval_start: tuple[int, float, int]) -> None:
        self._check_updates_finite()
        values = log.flush_updates(self.env_step)
        now = time.perf_counter()
        steps, seconds = self.env_step - interval_start[0], now - interval_start[1]
        progress = {
            "progress/env_steps_per_sec": steps / seconds if seconds > 0 else math.nan,
            "progress/buffer_size": float(len(self.buffer)),
            "agent/total_iterations": float(self.updates),
            "agent/is_training": float(self.env_step >= self.run.algorithm.learning_starts),
            "agent/buffer_utilization": len(self.buffer) / self.run.algorithm.buffer_size,
        }
        progress.update(self.clock.interval(steps, self.updates - interval_start[2]))
        if self.env_step >= self.run.algorithm.learning_starts:
            steps_since = self.env_step - self.run.algorithm.learning_starts
            progress["train/exploration_noise"] = exploration_std(self.run.algorithm.exploration_noise, steps_since)
        if self._policy_actions and self.action_dim == 2:  # (steer, throttle_brake), as the original logged
            taken = np.concatenate(self._policy_actions)
            for index, name in enumerate(("steering", "throttle")):
                progress[f"debug/action_{name}_mean"] = float(np.mean(taken[:, index]))
                progress[f"debug/action_{name}_std"] = float(np.std(taken[:, index]))
        self._policy_actions = []
        log.scalars(self.env_step, progress)
        if values:
            alerts = self.guard.check(self.env_step, values)
            if self.run.guard.mode != "off":
                log.scalars(self.env_step, alert_scalars(alerts))
            for alert in alerts:
                log.line(f"[{alert.severity}] {alert.message}")
            if not any(alert.severity == "critical" for alert in alerts):  # finite: `_train` checks every update
                self._last_good_state = (self.env_step, self.state)
        status = {"sps": progress["progress/env_steps_per_sec"]}
        if self.recent_rewards:
            status["ep_return"] = float(np.mean(self.recent_rewards))
        if "train/q1_value" in values:
            status["q"] = values["train/q1_value"]
        log.progress(self.env_step, **status)

    def _evaluate(self, log: RunLog) -> None:
        if self.eval_env is None:
            return
        self._check_updates_finite()
        training = self.run.training
        policy = td3_policy(
            self.parallel.local_params(policy_params(self.state, policy=training.eval_policy)), self.td3_config.network
        )
        self._leave_world()
        try:
            summary, _ = evaluate(
                self.eval_env, policy, training.num_eval_episodes, training.eval_seed,
                max_steps=self.eval_max_steps, should_stop=lambda: self._stop_signal is not None,
            )
        except EvaluationStopped:
            log.line(f"evaluation at step {self.env_step} abandoned: stop requested")
            return
        log.scalars(self.env_step, summary)
        self.results["evaluations"].append({"env_step": self.env_step, **summary})
        driving = [f"{label} {summary[tag]:{spec}}" for label, tag, spec in (
            ("success", "eval/success_rate", ".2f"), ("lateral RMSE (m)", "eval/lateral_rmse_m", ".2f")) if tag in summary]
        best = []
        if self.best is not None:
            if self.best.consider(self.env_step, summary, train_state=self.state, config=config_lib.to_dict(self.run)):
                best = [f"the best so far ({self.best.metric}): saved in {self.best.directory}"]
        log.line(", ".join([f"eval @ {self.env_step}: return {summary['eval/mean_reward']:.1f}",
                            f"length {summary['eval/avg_episode_length']:.0f}", *driving, *best]))

    def _record_step(self, log: RunLog, actions, next_obs, reward, terminated, truncated, info) -> None:
        info = step_info(info)  # an ended episode's last step reports in final_info
        done = np.asarray(terminated) | np.asarray(truncated)
        no_failure = np.zeros(self.n_envs, bool)
        failed = np.asarray(info.get("carla_failure", no_failure), bool) | np.asarray(
            info.get("worker_failure", no_failure), bool
        )
        real_next = {key: np.array(value, copy=True) for key, value in next_obs.items()}
        if done.any():
            for i in np.flatnonzero(done & info.get("_final_obs", done)):
                for key in real_next:
                    real_next[key][i] = info["final_obs"][i][key]
        # A simulator failure's step is not a real transition: skip it, and its episode ends there.
        replayed = reward
        if self.td3_config.network.critic_reward_components:
            try:
                replayed = component_rewards(info.get("reward_components"), reward, ~failed)
            except ValueError as error:
                raise UserError(f"networks.critic.reward_components: {error}") from None
        self.buffer.add(
            self.obs["image"], self.obs["vector"], actions, replayed,
            real_next["image"], real_next["vector"], terminated, truncated, skip=failed,
        )
        self.episode_stats.add(np.where(failed, 0.0, reward), info)
        for i in np.flatnonzero(done):
            values = self.episode_stats.finish(i)
            if failed[i]:
                continue
            self.episodes += 1
            log.scalars(self.env_step, values)
            self.results["training_rewards"].append(values["train/episode_reward"])
            self.recent_rewards = (self.recent_rewards + [values["train/episode_reward"]])[-EPISODE_HISTORY:]
        self.obs = next_obs

    def train(self, *, resume: bool) -> int:
        """Runs until `max_timesteps`; returns the process exit code.

        0 when done, 1 when the guard or a diverged policy stopped the run, and
        128 + the signal's number after SIGINT/SIGTERM (a checkpoint saved
        first). Any exception leaves a checkpoint of the last consistent state
        behind when it can (the exception's last line says which).
        """
        training, algorithm = self.run.training, self.run.algorithm
        changes = self.restore() if resume else []
        if not resume:
            self.obs, _ = self.env.reset(seed=self.run.env.seed)
        config_lib.dump(self.run, self.run_dir / "config.yaml")
        log = RunLog(self.run_dir, total_steps=training.max_timesteps, start_step=self.env_step, progress=training.progress)
        if self.env_step == 0:
            log.scalars(0, {
                "agent/actor_max_grad_norm": algorithm.gradient_clipping.actor_max_norm,
                "agent/critic_max_grad_norm": algorithm.gradient_clipping.critic_max_norm,
            })
            log.text("config", "```\n" + (self.run_dir / "config.yaml").read_text() + "\n```", 0)
        for line in changes:
            log.line(line)
        limit = episode_step_limit(self.run.env, self.eval_env) if self.eval_shares_world else None
        if limit and training.eval_freq and training.eval_freq // self.n_envs < limit:
            log.line(f"warning: each evaluation ends the training episodes (they share the CARLA world), every "
                     f"{training.eval_freq // self.n_envs} steps per env, before their {limit}-step limit; "
                     "raise training.eval_freq to let them run to it")
        log.line(f"run directory {self.run_dir}; {self.buffer.summary()}")
        previous = {sig: signal.signal(sig, self._request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        failed = True
        try:
            try:
                exit_code = self._loop(log)
            except _Diverged as diverged:
                exit_code = self._divergence_stop(log, str(diverged))
            failed = False
        except (UserError, WorkerFailureError) as error:
            raise UserError(f"{error}; {self._save_after_failure()}") from None
        except Exception as error:
            error.add_note(self._save_after_failure())
            raise
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.feed.close()
            # The evaluation env first: a CARLA one gives the world back as it found it, then a training env
            # restores the settings it found. Each is closed even if another fails; none hides the run's error.
            for resource in (self.eval_env, self.env, self.best):
                try:
                    if resource is not None:
                        resource.close()
                except Exception as error:  # noqa: BLE001
                    _LOG.warning("closing %s failed: %s", type(resource).__name__, brief(error))
            log.close(quiet=failed)
        if self._stop_signal is not None:
            print(f"stopped by signal {self._stop_signal} at step {self.env_step}; checkpoint saved. "
                  f"Resume with: td3-jax train --resume {self.run_dir}")
            return 128 + self._stop_signal
        if exit_code == 0:
            self._write_results()
            self._print_diagnosis()
            if self.best is not None and self.best.step is not None:
                print(f"best evaluation: step {self.best.step}, {self.best.metric} {self.best.value:.4g}; "
                      f"evaluate it with: td3-jax eval --checkpoint {self.best.directory}")
            comparison = self.results.get("final_comparison")
            if comparison:
                print(f"final evaluation at step {self.env_step}: {comparison['episodes']} episodes from seed "
                      f"{comparison['first_seed']}, the same for both, deterministic policy")
                print(comparison_table({"TD3": comparison["policy"], "baseline": comparison["baseline"]}))
        return exit_code

    def _loop(self, log: RunLog) -> int:
        """Steps, trains, logs, evaluates and checkpoints until done or stopped; returns the exit code."""
        training, algorithm = self.run.training, self.run.algorithm
        interval_start = (self.env_step, time.perf_counter(), self.updates)
        while self.env_step < training.max_timesteps and self._stop_signal is None:
            self._rejoin_world()
            before = self.env_step
            calls = update_calls(before, before + self.n_envs, algorithm.learning_starts, algorithm.train_freq)
            self.feed.prepare(calls)  # with prefetch, drawn while the device updates and the env steps
            self.clock.enter("acting")
            actions = self._actions()
            self.clock.enter("env step")
            next_obs, reward, terminated, truncated, info = self.env.step(actions)
            self.clock.enter("sampling")
            self.feed.settle()
            self.clock.enter("recording")  # the step is half stored until this phase ends: no checkpoint here
            self.env_step += self.n_envs
            self._record_step(log, actions, next_obs, reward, terminated, truncated, info)
            for _ in range(calls):
                self._train(log)
            self.clock.enter("logging")
            if crossed(before, self.env_step, training.log_freq):
                self._log(log, interval_start)
                interval_start = (self.env_step, time.perf_counter(), self.updates)
                if self.guard.should_stop:
                    return self._divergence_stop(log, self.guard.stop_message)
            self.clock.enter("evaluation")
            if training.eval_freq and crossed(before, self.env_step, training.eval_freq):
                self._evaluate(log)
            self.clock.enter("checkpoint")
            if training.checkpoint_freq and crossed(before, self.env_step, training.checkpoint_freq):
                self.save_checkpoint()
        # Saved before the final evaluation, so that a failing evaluation cannot lose the run.
        self.clock.enter("checkpoint")
        self.save_checkpoint()
        self.clock.enter("evaluation")
        if self._stop_signal is None and (not training.eval_freq or self.env_step % training.eval_freq):
            self._evaluate(log)
        if self._stop_signal is None and training.compare_baseline and self.run.env.backend == "lanesim":
            self._compare_with_baseline(log)
        return 0

    def _compare_with_baseline(self, log: RunLog) -> None:
        """The baseline on the final evaluation's episodes, kept for results.json and the closing table."""
        evaluations = self.results["evaluations"]
        if self.eval_env is None or not evaluations or evaluations[-1]["env_step"] != self.env_step:
            return
        training = self.run.training
        log.line(f"baseline (pure pursuit + PID) on the same {training.num_eval_episodes} episodes")
        try:
            baseline, _ = evaluate(
                self.eval_env, BaselinePolicy(self.run.env), training.num_eval_episodes, training.eval_seed,
                max_steps=self.eval_max_steps, should_stop=lambda: self._stop_signal is not None,
            )
        except EvaluationStopped:
            return
        policy = {k: v for k, v in evaluations[-1].items() if k != "env_step"}
        self.results["final_comparison"] = {
            "episodes": training.num_eval_episodes, "first_seed": training.eval_seed,
            "policy": policy, "baseline": baseline,
        }

    def _save_after_failure(self) -> str:
        """After an exception: saves the state if it is consistent; says where the run can resume from."""
        resume_hint = f"resume with: td3-jax train --resume {self.run_dir}"
        self.feed.cancel()  # a batch drawn for the abandoned step must not advance the saved sampler
        if self._diverged:
            reason = "the networks diverged, so no checkpoint was saved; "
        elif self.clock.phase in ("acting", "env step", "sampling", "update", "logging", "evaluation"):
            try:
                self.save_checkpoint()
                return f"checkpoint saved at step {self.env_step}; {resume_hint}"
            except Exception as error:  # the first failure is the one to report
                reason = f"saving a checkpoint failed too ({brief(error)}); "
        else:
            reason = ""  # mid-step or mid-save: the state is not one to save
        latest = self.checkpointer.latest_step()
        if latest is None:
            return f"{reason}the run has no checkpoint"
        return f"{reason}the last checkpoint is step {latest}: {resume_hint}"

    def _divergence_stop(self, log: RunLog, message: str) -> int:
        """Saves the last healthy, finite state in last_good/; returns exit code 1. A failure to write it, the
        metrics or the diagnosis is reported with the divergence (never via `_save_after_failure`)."""
        self._diverged = True
        if self._last_good_state is None:
            where = "no healthy state was recorded, so last_good/ was not written"
        else:
            step, state = self._last_good_state
            try:
                save_alone(self.run_dir / "last_good", step, train_state=state, config=config_lib.to_dict(self.run))
                where = f"last good state (step {step}) saved in {self.run_dir / 'last_good'}"
            except (CheckpointError, OSError) as error:  # the divergence is the news; the checkpoints are intact
                why = error if isinstance(error, CheckpointError) else brief(error)
                where = f"the last good state (step {step}) was not saved: {why}"
        try:
            log.flush_updates(self.env_step)  # the non-finite values belong in the run's record
            log.writer.flush()  # the diagnosis below reads the event file
            self._write_results()
            self._print_diagnosis()
        except (OSError, UserError) as error:
            print(f"the run's metrics and diagnosis could not all be written ({brief(error)})")
        print(f"{message}; {where}")
        return 1

    def _write_results(self) -> None:
        best = None if self.best is None or self.best.step is None else {
            "env_step": self.best.step, "metric": self.best.metric, "value": self.best.value}
        write_results(self.run_dir / "results.json", self.run, env_step=self.env_step, updates=self.updates,
                      episodes=self.episodes, results=self.results, best=best)

    def _print_diagnosis(self) -> None:
        from td3_jax.diagnose.diagnose import diagnose_run, format_text, write_diagnosis

        diagnosis = diagnose_run(self.run_dir)
        write_diagnosis(diagnosis, self.run_dir)
        print(format_text(diagnosis))


def _has_env_snapshot(run: config_lib.RunConfig) -> bool:
    """The in-process embedded simulator is saved mid-episode; worker processes and other backends are not."""
    return run.env.backend == "lanesim" and run.env.workers.workers == 0


class _Diverged(Exception):
    """The policy produced non-finite actions: training cannot continue."""
