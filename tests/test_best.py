"""RUN_DIR/best/: the best evaluation's policy, pruned at checkpoints and cut back at a resume.

A run's life is replayed with train states that differ per step (a random fill
seeded by the step), so each kept step can be checked to hold its own state.
The end-to-end paths (train, resume, `td3-jax eval --checkpoint RUN/best`) on
each backend are in tests/test_train.py and tests/test_backends_e2e.py.
"""

from __future__ import annotations

import pytest
from test_checkpoint import CONFIG, abstract_state, assert_bit_identical, random_state

from td3_jax.checkpoint.store import Checkpointer
from td3_jax.errors import UserError
from td3_jax.training.best import BestCheckpoint


@pytest.fixture(scope="module")
def abstract():
    return abstract_state()


HOW = {"episodes": 10, "first_seed": 1000000, "policy": "target", "max_steps": 1000, "env": {"stack": 4}}


def _evaluate(best: BestCheckpoint, abstract, step: int, value: float, metric: str = "eval/mean_reward") -> bool:
    return best.consider(step, {metric: value, "eval/avg_episode_length": 9.0},
                         train_state=random_state(abstract, seed=step), config=CONFIG)


def _kept(directory) -> dict[int, float]:
    with Checkpointer(directory, read_only=True) as checkpointer:
        return {step: checkpointer.read_host_state(step)["value"] for step in checkpointer.committed_steps()}


def test_only_improvements_are_saved_and_the_latest_step_is_the_best(tmp_path, abstract):
    best = BestCheckpoint(tmp_path, "eval/mean_reward", "max", HOW)
    saved = [_evaluate(best, abstract, step, value)
             for step, value in ((10, 1.0), (20, 3.0), (30, 3.0), (40, 2.0), (50, float("nan")), (60, 4.0))]
    assert saved == [True, True, False, False, False, True]  # ties and NaN are no improvement
    assert (best.step, best.value) == (60, 4.0)
    assert _kept(tmp_path) == {10: 1.0, 20: 3.0, 60: 4.0}  # nothing pruned without a run checkpoint
    best.close()
    with Checkpointer(tmp_path, read_only=True) as checkpointer:
        restored = checkpointer.restore(abstract_train_state=abstract)
        assert restored.step == 60
        assert restored.host_state == {"env_step": 60, "metric": "eval/mean_reward", "mode": "max", "value": 4.0,
                                       "how": HOW}
        assert_bit_identical(restored.train_state, random_state(abstract, seed=60))


def test_min_mode_keeps_the_lowest(tmp_path, abstract):
    best = BestCheckpoint(tmp_path, "eval/avg_collisions", "min", HOW)
    assert [_evaluate(best, abstract, s, v, "eval/avg_collisions") for s, v in ((5, 0.5), (10, 0.7), (15, 0.0))] == [
        True, False, True]
    assert (best.step, best.value) == (15, 0.0)
    best.close()


def test_a_checkpoint_prunes_to_the_best_up_to_its_step_and_a_resume_drops_later_ones(tmp_path, abstract):
    best = BestCheckpoint(tmp_path, "eval/mean_reward", "max", HOW)
    for step, value in ((10, 1.0), (20, 2.0)):
        _evaluate(best, abstract, step, value)
    best.checkpointed(20)
    assert _kept(tmp_path) == {20: 2.0}
    _evaluate(best, abstract, 30, 5.0)
    best.checkpointed(25)  # the oldest run checkpoint kept between two bests keeps the best up to it and later ones
    assert _kept(tmp_path) == {20: 2.0, 30: 5.0}

    # The run resumes from its checkpoint at 25: the best of step 30 belongs to the abandoned continuation.
    line = best.resumed(25)
    assert "30" in line and "step 20" in line
    assert (best.step, best.value) == (20, 2.0) and _kept(tmp_path) == {20: 2.0}
    assert not _evaluate(best, abstract, 30, 1.5)  # compared with the best up to the resume point
    assert _evaluate(best, abstract, 30, 2.5)
    assert best.resumed(30) is None  # nothing after 30: nothing to say
    best.close()

    # A new process (a later resume) reads the best so far back from best/ alone.
    reopened = BestCheckpoint(tmp_path, "eval/mean_reward", "max", dict(HOW))
    assert (reopened.step, reopened.value) == (30, 2.5)
    assert not _evaluate(reopened, abstract, 30, 9.0)  # a step already in best/ is not rewritten
    reopened.close()


def test_a_resume_before_every_best_leaves_none(tmp_path, abstract):
    best = BestCheckpoint(tmp_path, "eval/mean_reward", "max", HOW)
    _evaluate(best, abstract, 30, 1.0)
    assert "the latest left is none" in best.resumed(20)
    assert best.step is None and best.value is None and _kept(tmp_path) == {}
    assert _evaluate(best, abstract, 30, -5.0)  # the first evaluation after it is the best again
    best.close()


@pytest.mark.parametrize("metric, mode, how", [
    ("eval/success_rate", "max", HOW),
    ("eval/mean_reward", "min", HOW),
    ("eval/mean_reward", "max", {**HOW, "episodes": 20}),
    ("eval/mean_reward", "max", {**HOW, "env": {"stack": 4, "reward": {"centering_bonus": 1.0}}}),
])
def test_values_measured_otherwise_start_the_selection_again(tmp_path, abstract, metric, mode, how):
    best = BestCheckpoint(tmp_path, "eval/mean_reward", "max", HOW)
    _evaluate(best, abstract, 10, 5.0)
    best.close()
    resumed = BestCheckpoint(tmp_path, metric, mode, how)  # a resume with other evaluation settings
    assert "starts the selection again" in resumed.resumed(10)
    assert resumed.step == 10 and resumed.value is None
    assert _evaluate(resumed, abstract, 20, -100.0, metric)  # worse by the old measure, but the first of the new
    assert resumed.resumed(20) is None  # from here on, the same measure
    resumed.close()


def test_a_metric_the_evaluation_lacks_is_one_clear_error(tmp_path, abstract):
    best = BestCheckpoint(tmp_path, "eval/success_rate", "max", HOW)
    with pytest.raises(UserError, match=r"training.best_checkpoint_metric='eval/success_rate' is not among .*"
                                        r"eval/avg_episode_length, eval/mean_reward\); resume with --set"):
        _evaluate(best, abstract, 10, 1.0)
    assert _kept(tmp_path) == {}
    best.close()
