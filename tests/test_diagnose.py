"""`td3-jax diagnose`: synthetic td3_jax and original-style runs, the real reference runs, the CLI."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tensorboardX import SummaryWriter

from td3_jax import cli, errors
from td3_jax.diagnose.diagnose import diagnose_run, find_event_files, format_text, read_scalars, write_diagnosis
from td3_jax.diagnose.report import diagnose_scalars
from td3_jax.diagnose.signals import (
    SIGNALS,
    Criteria,
    Series,
    align,
    growth_orders,
    sustained_onset,
)

REFERENCE_RUNS = Path(__file__).resolve().parents[2] / "shared" / "data" / "reference_runs"
LEARNING_STEPS = range(1000, 5001, 200)


def write_run(run_dir: Path, points: dict[str, list[tuple[int, float]]], suffix: str = "") -> Path:
    """Writes {tag: [(step, value)]} with tensorboardX, as a trainer would."""
    writer = SummaryWriter(logdir=str(run_dir), filename_suffix=suffix)
    for tag, series in points.items():
        for step, value in series:
            writer.add_scalar(tag, value, step)
    writer.close()
    return run_dir


def td3_jax_healthy_points() -> dict[str, list[tuple[int, float]]]:
    """Every tag of td3_jax's contract with values of a healthy run: Q rises, policy-Q tracks it, clipping works."""
    points: dict[str, list[tuple[int, float]]] = {}

    def put(tag, step, value):
        points.setdefault(tag, []).append((step, float(value)))

    for i, step in enumerate(LEARNING_STEPS):
        progress = i / (len(LEARNING_STEPS) - 1)
        q = 2.0 + 40.0 * progress
        put("train/critic_loss", step, 3.0 - progress)
        put("train/q1_value", step, q)
        put("train/q2_value", step, q - 0.3)
        put("debug/q1_max", step, 2 * q)
        put("debug/q1_min", step, -5.0)
        put("debug/target_q_mean", step, q)
        put("debug/target_q_max", step, 2 * q)
        put("debug/td_error_q1", step, 1.0)
        put("train/actor_loss", step, -1.2 * q)
        put("debug/actor_q_mean", step, 1.2 * q)
        put("debug/actor_q_max", step, 1.5 * q)
        for net, max_norm, before in (("actor", 1.0, 0.5 + 2 * progress), ("critic", 10.0, 4 + 20 * progress)):
            after = min(before, max_norm)
            put(f"debug/{net}_grad_norm_BEFORE_clip", step, before)
            put(f"debug/{net}_grad_norm_AFTER_clip", step, after)
            put(f"debug/{net}_grad_clip_ratio", step, after / before)
            for group, share in (("cnn", 0.8), ("mlp", 0.6)):  # 0.8^2 + 0.6^2 = 1
                put(f"debug/{net}_{group}_grad_norm_BEFORE_clip", step, share * before)
                put(f"debug/{net}_{group}_grad_norm_AFTER_clip", step, share * after)
                put(f"gradients/{net}_{group}_norm", step, share * after)
                put(f"agent/{net}_{group}_lr", step, 1e-4 if group == "cnn" else 3e-4)
                put(f"agent/{net}_{group}_param_norm", step, 30.0 + progress)
            put(f"agent/{net}_update_norm", step, 1e-3)
        put("debug/action_saturation", step, 0.05)
        put("debug/all_finite", step, 1.0)
    points["agent/actor_max_grad_norm"] = [(1000, 1.0)]
    points["agent/critic_max_grad_norm"] = [(1000, 10.0)]
    for step in range(0, 5001, 50):
        put("train/episode_length", step, 10 + step / 50)
        put("train/episode_reward", step, step / 10)
    put("eval/mean_reward", 5000, 300.0)
    put("eval/success_rate", 5000, 0.5)
    put("eval/avg_episode_length", 5000, 150.0)
    return points


def original_points(actor_loss, q1=None, actor_cnn=1.95, critic_cnn=22.0, extra=None):
    """Tags of the original PyTorch system before 2025-11-21: no global norms, sums of per-tensor norms."""
    n = len(actor_loss)
    steps = [2600 + 100 * i for i in range(n)]
    q1 = q1 if q1 is not None else [20.0 + i for i in range(n)]
    points = {
        "train/actor_loss": list(zip(steps, actor_loss)),
        "train/q1_value": list(zip(steps, q1)),
        "train/q2_value": list(zip(steps, q1)),
        "train/critic_loss": list(zip(steps, [50.0] * n)),
        "gradients/actor_cnn_norm": list(zip(steps, [actor_cnn] * n)),
        "gradients/actor_mlp_norm": list(zip(steps, [0.0] * n)),
        "gradients/critic_cnn_norm": list(zip(steps, [critic_cnn] * n)),
        "gradients/critic_mlp_norm": list(zip(steps, [2.5] * n)),
        "agent/actor_lr": list(zip(steps, [3e-4] * n)),
        "agent/actor_cnn_lr": list(zip(steps, [1e-4] * n)),
        "train/episode_length": [(i, 12.0) for i in range(40)],
    }
    points.update(extra or {})
    return points


def causes(diagnosis):
    return {cause.key: cause.likelihood for cause in diagnosis.causes}


@pytest.fixture(scope="module")
def healthy_run(tmp_path_factory):
    run_dir = write_run(tmp_path_factory.mktemp("healthy"), td3_jax_healthy_points())
    (run_dir / "config.yaml").write_text(
        "algorithm:\n  gradient_clipping:\n    actor_max_norm: 1.0\n    critic_max_norm: 10.0\n"
    )
    return run_dir


def test_healthy_td3_jax_run(healthy_run, capsys):
    diagnosis = diagnose_run(healthy_run)
    assert diagnosis.verdict == "healthy" and diagnosis.divergence_step is None
    assert diagnosis.missing == ()
    assert all(row.status == "ok" for row in diagnosis.rows), format_text(diagnosis)
    assert diagnosis.max_norms["actor"] == {"value": 1.0, "source": "config.yaml"}
    assert not any(cause.likelihood == "likely" for cause in diagnosis.causes)
    assert cli.main(["diagnose", str(healthy_run)]) == 0
    out = capsys.readouterr().out
    assert "Verdict: HEALTHY" in out and "Actor loss bounded" in out


def test_max_norm_sources_fall_back_from_config_to_tags_to_defaults(tmp_path):
    points = td3_jax_healthy_points()
    with_tags = diagnose_run(write_run(tmp_path / "tags", points))
    assert with_tags.max_norms["critic"] == {"value": 10.0, "source": "tag agent/critic_max_grad_norm"}
    del points["agent/actor_max_grad_norm"]
    defaults = diagnose_run(write_run(tmp_path / "defaults", points))
    assert defaults.max_norms["actor"]["value"] == 1.0 and "default" in defaults.max_norms["actor"]["source"]


def test_original_exploding_run_names_the_gap_and_the_sum_of_norms_artefact(tmp_path):
    loss = [-250.0 * 10 ** (i / 2) for i in range(20)]
    diagnosis = diagnose_run(write_run(tmp_path, original_points(loss)))
    assert diagnosis.verdict == "exploded" and diagnosis.exit_code == 1
    assert diagnosis.divergence_step == 2600
    found = causes(diagnosis)
    assert found["policy_replay_q_gap"] == "likely"
    assert found["post_clip_norm_actor"] == "likely" and found["post_clip_norm_critic"] == "likely"
    assert found["learning_rates"] == "unlikely"
    gap = next(c for c in diagnosis.causes if c.key == "policy_replay_q_gap")
    assert "-train/actor_loss" in gap.evidence and "actor MLP gets ~no gradient" in gap.evidence
    artefact = next(c for c in diagnosis.causes if c.key == "post_clip_norm_actor")
    assert "sum of per-tensor norms" in artefact.evidence
    assert {"actor_grad_after", "policy_q"} & set(diagnosis.missing) == {"actor_grad_after"}


def test_nan_run_is_exploded_from_the_first_non_finite_step(tmp_path):
    q1 = [20.0, 21.0, 22.0, math.nan, math.nan, math.nan]
    diagnosis = diagnose_run(write_run(tmp_path, original_points([-20.0] * 6, q1=q1)))
    assert diagnosis.verdict == "exploded" and diagnosis.divergence_step == 2900
    assert causes(diagnosis)["non_finite"] == "likely"
    assert "train/q1_value (step 2900)" in diagnosis.rows[6].measured


def test_missing_learning_tags_give_not_enough_data(tmp_path):
    points = {"train/episode_length": [(i, 20.0) for i in range(30)], "train/actor_loss": [(2600, -5.0)]}
    diagnosis = diagnose_run(write_run(tmp_path, points))
    assert diagnosis.verdict == "not enough data" and diagnosis.exit_code == 1
    assert {"replay_q", "actor_grad_after", "critic_grad_before"} <= set(diagnosis.missing)


def test_global_after_norm_at_max_with_larger_subgroups_is_a_metric_artefact(tmp_path):
    n = 8
    steps = [2600 + 100 * i for i in range(n)]
    extra = {
        "debug/actor_grad_norm_AFTER_clip": [(s, 1.0) for s in steps],
        "debug/critic_grad_norm_AFTER_clip": [(s, 10.0) for s in steps],
    }
    diagnosis = diagnose_run(write_run(tmp_path, original_points([-25.0] * n, extra=extra)))
    assert diagnosis.verdict == "healthy"  # clipping works; only the sub-group metric is wrong
    artefact = next(c for c in diagnosis.causes if c.key == "post_clip_norm_actor")
    assert artefact.likelihood == "likely" and "metric artefact" in artefact.title


def test_global_after_norm_above_max_means_clipping_is_not_applied(tmp_path):
    steps = [2600 + 100 * i for i in range(8)]
    extra = {"debug/actor_grad_norm_AFTER_clip": [(s, 5.0) for s in steps]}
    diagnosis = diagnose_run(write_run(tmp_path, original_points([-25.0] * 8, actor_cnn=0.5, extra=extra)))
    assert diagnosis.verdict == "diverging" and diagnosis.rows[4].status == "FAIL"
    assert "clipping is not applied" in next(c for c in diagnosis.causes if c.key == "post_clip_norm_actor").evidence


def test_saturated_actions_and_growing_gradients_are_named(tmp_path):
    points = td3_jax_healthy_points()
    points["debug/action_saturation"] = [(s, 0.97) for s, _ in points["debug/action_saturation"]]
    points["debug/critic_grad_norm_BEFORE_clip"] = [
        (s, 10.0 * 10 ** (3 * i / 20)) for i, (s, _) in enumerate(points["debug/critic_grad_norm_BEFORE_clip"])
    ]
    found = causes(diagnose_run(write_run(tmp_path, points)))
    assert found["action_saturation"] == "likely" and found["grad_growth_critic"] == "likely"


def test_criteria_file_overrides_thresholds(healthy_run, tmp_path):
    strict = tmp_path / "strict.yaml"
    strict.write_text("max_abs_q: 30\n")
    assert cli.main(["diagnose", str(healthy_run), "--criteria", str(strict)]) == 1
    assert diagnose_run(healthy_run, Criteria(max_abs_q=30.0)).verdict == "exploded"


@pytest.mark.parametrize("text", ["max_abs_q: 1\nmax_abz_q: 2\n", "max_abs_q: big\n", "- 1\n"])
def test_bad_criteria_file_is_one_line_exit_2(healthy_run, tmp_path, capsys, text):
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    assert cli.main(["diagnose", str(healthy_run), "--criteria", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "criteria file" in err


def test_unreadable_inputs_exit_2(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    garbage = tmp_path / "garbage" / "events.out.tfevents.1.host"
    garbage.parent.mkdir()
    garbage.write_bytes(bytes(range(256)) * 8)
    for path in (tmp_path / "nowhere", tmp_path / "empty", garbage):
        assert cli.main(["diagnose", str(path)]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 3


def test_a_folder_of_several_runs_is_refused_but_one_nested_run_is_found(tmp_path):
    write_run(tmp_path / "one" / "tb", {"train/q1_value": [(1, 1.0)]})
    assert len(find_event_files(tmp_path / "one")) == 1
    write_run(tmp_path / "two" / "a", {"x": [(1, 1.0)]})
    write_run(tmp_path / "two" / "b", {"x": [(1, 1.0)]})
    with pytest.raises(errors.UserError, match="holds 2 runs"):
        find_event_files(tmp_path / "two")


def test_event_files_of_a_resumed_run_are_merged(tmp_path):
    write_run(tmp_path, {"train/q1_value": [(1, 1.0), (2, 2.0)]})
    write_run(tmp_path, {"train/q1_value": [(2, 5.0), (3, 3.0)]}, suffix=".resumed")
    series = read_scalars(tmp_path)["train/q1_value"]
    assert series.steps.tolist() == [1, 2, 3] and series.values.tolist() == [1.0, 5.0, 3.0]


def test_json_and_plot_outputs(healthy_run, tmp_path, capsys):
    png = tmp_path / "curves.png"
    assert cli.main(["diagnose", str(healthy_run), "--json", "--plot", str(png)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["verdict"] == "healthy" and report["exit_code"] == 0
    assert len(report["criteria_table"]) == 8 and report["missing_signals"] == []
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_write_diagnosis_writes_json_and_text(healthy_run, tmp_path):
    json_path, text_path = write_diagnosis(diagnose_run(healthy_run), tmp_path)
    assert json.loads(json_path.read_text())["verdict"] == "healthy"
    assert text_path.read_text().startswith("td3-jax diagnose:")


def test_nan_survives_json(tmp_path):
    diagnosis = diagnose_run(write_run(tmp_path, original_points([-20.0, math.nan, -20.0])))
    json.loads(json.dumps(diagnosis.to_dict(), allow_nan=False))


# Pure helpers against brute-force references.

steps_strategy = st.lists(st.integers(0, 10_000), min_size=1, max_size=30, unique=True).map(sorted)


@given(query=st.lists(st.integers(-5, 10_005), max_size=20), steps=steps_strategy)
@settings(max_examples=100, deadline=None)
def test_align_takes_the_latest_point_at_or_before(query, steps):
    other = Series(np.array(steps), np.arange(len(steps), dtype=np.float64))
    got = align(np.array(query, dtype=np.int64), other)
    for q, value in zip(query, got):
        before = [i for i, s in enumerate(steps) if s <= q]
        assert value == (before[-1] if before else 0)


@given(flags=st.lists(st.booleans(), min_size=1, max_size=30))
@settings(max_examples=100, deadline=None)
def test_sustained_onset_is_the_start_of_the_final_true_run(flags):
    steps = np.arange(len(flags)) * 10
    expected = None
    for i in range(len(flags)):
        if all(flags[i:]):
            expected = int(steps[i])
            break
    assert sustained_onset(steps, np.array(flags)) == expected


@given(values=st.lists(st.floats(1e-3, 1e3), min_size=2, max_size=40), factor=st.floats(1e-2, 1e2))
@settings(max_examples=100, deadline=None)
def test_growth_orders_is_scale_free(values, factor):
    values = np.array(values)
    assert growth_orders(values * factor) == pytest.approx(growth_orders(values), abs=1e-9)


def test_diagnose_scalars_needs_no_files():
    scalars = {tag: Series(np.array([s for s, _ in pts]), np.array([v for _, v in pts]))
               for tag, pts in td3_jax_healthy_points().items()}
    assert diagnose_scalars(scalars).verdict == "healthy"


# The original system's real runs (shared data beside the repo; absent in a user's checkout).

needs_reference = pytest.mark.skipif(not REFERENCE_RUNS.is_dir(), reason="shared reference runs not present")


@needs_reference
def test_day17_debug_run2_exploded_by_the_policy_replay_q_gap():
    diagnosis = diagnose_run(REFERENCE_RUNS / "day17-debug-run2")
    assert diagnosis.verdict == "exploded" and diagnosis.divergence_step == 2600
    assert diagnosis.causes[0].key == "policy_replay_q_gap" and diagnosis.causes[0].likelihood == "likely"
    found = causes(diagnosis)
    assert found["post_clip_norm_actor"] == "likely" and found["learning_rates"] == "unlikely"


@needs_reference
def test_exploration_only_is_not_enough_data():
    diagnosis = diagnose_run(REFERENCE_RUNS / "exploration-only")
    assert diagnosis.verdict == "not enough data" and "actor_loss" in diagnosis.missing


@needs_reference
@pytest.mark.parametrize("run, onset", [("day21-run2", 1700), ("day20-run1-debug", 1400)])
def test_milder_original_runs_are_diverging_with_clipping_judged_correctly(run, onset):
    diagnosis = diagnose_run(REFERENCE_RUNS / run)
    assert diagnosis.verdict == "diverging" and diagnosis.divergence_step == onset
    assert causes(diagnosis)["policy_replay_q_gap"] == "likely"
    if run == "day21-run2":  # global post-clip norms are logged: clipping verified
        assert causes(diagnosis)["post_clip_norm_actor"] == "unlikely"


ANY_TAG = st.sampled_from(sorted({tag for tags in SIGNALS.values() for tag in tags} | {"agent/actor_lr"}))
ANY_VALUE = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.floats(-1e12, 1e12))


@given(st.dictionaries(ANY_TAG, st.lists(ANY_VALUE, min_size=1, max_size=12), max_size=12))
@settings(max_examples=150, deadline=None)
def test_any_scalars_give_a_verdict_and_strict_json(points):
    scalars = {tag: Series(np.arange(len(v), dtype=np.int64) * 10, np.array(v)) for tag, v in points.items()}
    diagnosis = diagnose_scalars(scalars)
    assert diagnosis.verdict in ("healthy", "diverging", "exploded", "not enough data")
    assert (diagnosis.exit_code == 0) == (diagnosis.verdict == "healthy")
    json.dumps(diagnosis.to_dict(), allow_nan=False)
    format_text(diagnosis)
    finite = all(np.isfinite(s.values).all() for s in scalars.values())
    if not finite:
        assert diagnosis.verdict == "exploded"


# ------------------------------------------------------------ damaged event files and output paths


def _event_file(run_dir: Path) -> Path:
    return next(run_dir.glob("*tfevents*"))


def test_a_corrupt_event_file_is_unreadable_input_not_a_short_run(healthy_run, tmp_path, capsys):
    """tensorboard's reader stops quietly at a damaged record; the rest of the run must not pass for missing."""
    data = _event_file(healthy_run).read_bytes()
    damaged = tmp_path / "damaged" / "events.out.tfevents.1.host"
    damaged.parent.mkdir()
    damaged.write_bytes(data[: len(data) // 2] + b"garbage" * 10 + data[len(data) // 2 :])
    assert cli.main(["diagnose", str(damaged.parent)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    err = captured.err.strip()
    assert len(err.splitlines()) == 1 and str(damaged) in err and "corrupt at byte" in err


def test_a_file_that_is_not_an_event_file_is_named(tmp_path, capsys):
    stray = tmp_path / "events.out.tfevents.1.host"
    stray.write_text("these are notes, not events\n")
    assert cli.main(["diagnose", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{stray} is not a TensorBoard event file" in err


def test_a_last_record_cut_short_is_read_up_to_the_cut(healthy_run, tmp_path):
    """What a killed or still-running writer leaves: the records before the cut are sound."""
    data = _event_file(healthy_run).read_bytes()
    cut = tmp_path / "events.out.tfevents.1.host"
    cut.write_bytes(data[: len(data) - 5])
    series = read_scalars(cut)
    assert 0 < len(series["train/q1_value"].steps) <= len(read_scalars(healthy_run)["train/q1_value"].steps)


def test_plot_into_a_directory_writes_the_run_name_png_inside_it(healthy_run, tmp_path, capsys):
    plots = tmp_path / "plots"
    plots.mkdir()
    assert cli.main(["diagnose", str(healthy_run), "--plot", str(plots)]) == 0
    assert [p.name for p in plots.iterdir()] == [f"{healthy_run.name}.png"]
    assert not plots.with_suffix(".png").exists()


@pytest.mark.parametrize("name, fragment", [("missing/curves.png", "does not exist"), ("curves.xyz", ".xyz")])
def test_unwritable_plot_is_refused_before_reading(healthy_run, tmp_path, capsys, name, fragment):
    assert cli.main(["diagnose", str(healthy_run), "--plot", str(tmp_path / name)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.strip().splitlines()) == 1 and fragment in captured.err


@pytest.mark.parametrize(
    "content, fragment",
    [(b"max_abs_q: 1\nmax_abs_q: 2\n", "duplicate key 'max_abs_q'"), (b"max_abs_q: 1 # \xe9\n", "not UTF-8")],
)
def test_criteria_file_with_duplicates_or_not_utf8_is_one_line(healthy_run, tmp_path, capsys, content, fragment):
    criteria = tmp_path / "criteria.yaml"
    criteria.write_bytes(content)
    assert cli.main(["diagnose", str(healthy_run), "--criteria", str(criteria)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and fragment in err
