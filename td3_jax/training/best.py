"""The best policy of a run by its evaluations, kept in RUN_DIR/best/. Host-side I/O.

Model selection on the evaluation episodes that training runs every
`training.eval_freq` env steps (seeds from `training.eval_seed`), as
Stable-Baselines3's EvalCallback keeps `best_model`: an evaluation whose
`training.best_checkpoint_metric` beats every earlier one writes its train
state (no replay) as one checkpoint step of best/, so that

    td3-jax eval --checkpoint RUN_DIR/best

drives it. Each step's host state records the metric, its direction, its value
and how the evaluations were run (`how`: episodes, seeds, policy, reward).

best/ is its own record; the run's checkpoints hold nothing of it:
- values only improve over time, so the latest step of best/ is the best so far;
- the run's checkpoints delete best steps older than the latest one at or before
  the oldest checkpoint kept, so a resume from any kept checkpoint c finds the best up to c;
- a resume from c deletes best steps after c: they belong to the interrupted
  continuation, which the resumed run replaces;
- when the metric, its direction or `how` differ from the latest step's, earlier values
  were measured otherwise: the selection starts again at the next evaluation.
"""

from __future__ import annotations

import math
from pathlib import Path

from td3_jax.checkpoint.store import Checkpointer
from td3_jax.core.td3 import TD3State
from td3_jax.errors import UserError


class BestCheckpoint:
    """The best evaluation of a run so far, and its policy in `directory`.

    Args:
      directory: RUN_DIR/best.
      metric: the evaluation summary's tag to select by (an `eval/*` tag).
      mode: "max" when higher is better, "min" when lower is.
      how: JSON dict of what makes two evaluations' values comparable (episodes, seeds, policy, reward).
    """

    def __init__(self, directory: Path, metric: str, mode: str, how: dict):
        self.metric, self.mode, self.how = metric, mode, how
        self.directory = directory
        self._checkpointer = Checkpointer(directory, max_to_keep=None, save_replay=False)
        self.step: int | None = None
        self.value: float | None = None
        self._read_latest()

    def close(self) -> None:
        self._checkpointer.close()

    def _read_latest(self) -> str | None:
        """Reads the best so far from best/; returns why the selection starts again, if it does."""
        self.step = self._checkpointer.latest_step()
        self.value = None
        if self.step is None:
            return None
        saved = self._checkpointer.read_host_state(self.step)
        if (saved["metric"], saved["mode"], saved.get("how")) != (self.metric, self.mode, self.how):
            return (f"its evaluations were measured otherwise ({saved['metric']}, {saved['mode']}, {saved.get('how')}), "
                    "so the next evaluation starts the selection again")
        self.value = saved["value"]
        return None

    def consider(self, step: int, summary: dict[str, float], *, train_state: TD3State, config: dict) -> bool:
        """Saves `train_state` when the evaluation `summary` at `step` is the best so far; True if it was.

        Raises:
          UserError: the evaluation does not report the metric (a gymnasium env reports no driving metric).
        """
        if self.metric not in summary:
            raise UserError(
                f"training.best_checkpoint_metric={self.metric!r} is not among the evaluation's metrics "
                f"({', '.join(sorted(summary))}); resume with --set training.best_checkpoint_metric= one of them "
                "(or \"\" to keep no best policy)"
            )
        value = float(summary[self.metric])
        if not math.isfinite(value) or (self.step is not None and step <= self.step):
            return False  # a step already in best/ (a finished run resumed to the same length) is not rewritten
        if self.value is not None and not (value > self.value if self.mode == "max" else value < self.value):
            return False
        self._checkpointer.save(
            step, train_state=train_state, config=config,
            host_state={"env_step": step, "metric": self.metric, "mode": self.mode, "value": value, "how": self.how},
        )
        self.step, self.value = step, value
        return True

    def checkpointed(self, oldest_checkpoint: int) -> None:
        """After a run checkpoint: best steps older than the best up to the oldest checkpoint kept go."""
        steps = self._checkpointer.committed_steps()
        kept = max((s for s in steps if s <= oldest_checkpoint), default=None)
        for old in steps:
            if kept is not None and old < kept:
                self._checkpointer.delete(old)

    def resumed(self, step: int) -> str | None:
        """At a resume from the run's checkpoint at `step`; returns a log line when it changed best/."""
        dropped = self._checkpointer.delete_from(step + 1)
        restart = self._read_latest()
        lines = []
        if dropped:
            kept = "none" if self.step is None else f"step {self.step}"
            lines.append(f"removed the best policies of steps {', '.join(map(str, dropped))}, after the checkpoint "
                         f"the run resumes from; the latest left is {kept}")
        if restart:
            lines.append(restart)
        return f"{self.directory}: {'; '.join(lines)}" if lines else None
