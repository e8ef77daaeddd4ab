"""`td3-jax bench --quick` runs and reports every figure with a unit; the FLOP count and torch reference agree."""

from __future__ import annotations

import json
import math

import pytest

from td3_jax import cli

from td3_jax.bench import bench
from td3_jax.core.hparams import TD3Config


def test_quick_bench_writes_every_figure_with_a_unit(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert cli.main(["bench", "--quick", "--no-torch", "--json", str(out)]) == 0
    results = json.loads(out.read_text())
    assert results["machine"]["backend"] == "cpu"
    update = results[f"update_b{bench.QUICK.batch_sizes[0]}"]
    for name in ("jax_updates_per_s", "jax_fused_updates_per_s", "compile_update", "jax_gflops",
                 "jax_shared_encoder_reused_features_updates_per_s", "update_dispatch_median"):
        assert update[name]["value"] > 0 and update[name]["unit"]
    assert results["act"]["latency_median"]["unit"] == "ms"
    assert any("--no-torch" in note for note in results["notes"])
    for section in ("matmul_peak", "act", "replay", "env", "loop"):
        assert results[section] is not None
    for loop in ("1env_inline", "2envs_prefetch"):  # read back from the training loop's own metrics
        figures = {name: results["loop"][f"{loop}_{name}"]["value"] for name in bench.LOOP_FIGURES}
        assert all(value > 0 for value in figures.values()), figures
        total = results["loop"][f"{loop}_host_ms_per_env_step_and_update"]["value"]
        assert total == figures["host_ms_per_env_step"] + figures["host_ms_per_update"]
        for part in ("env_step", "update"):
            phases = [results["loop"][f"{loop}_{name}"]["value"] for name in bench.LOOP_PHASE_FIGURES
                      if name.startswith(f"host_ms_per_{part}_")]
            assert sum(phases) == pytest.approx(figures[f"host_ms_per_{part}"])
    assert "| update_b" in capsys.readouterr().out


def test_update_flops_scale_with_batch_and_count_the_delayed_actor():
    config = TD3Config()
    assert bench.update_flops(config, 64) == pytest.approx(2 * bench.update_flops(config, 32))
    every_step = bench.update_flops(TD3Config(policy_freq=1), 1)
    every_other = bench.update_flops(config, 1)
    assert every_step > every_other
    # About seven encoder forward passes per step (2 target, 3 critic, 4 actor / 2), plus the heads.
    assert 6 * 18e6 < every_other < 9 * 18e6


def test_torch_reference_has_the_td3_jax_architecture():
    bench_torch = pytest.importorskip("td3_jax.bench.torch_reference")
    reference = bench_torch.TorchTD3(TD3Config(), stack=bench.STACK, vector_dim=bench.VECTOR_DIM)
    assert reference.parameter_counts() == bench._jax_parameter_counts()
    reference.update(*bench_torch.torch_batch(bench.random_batch(2)))
    assert all(math.isfinite(p.abs().sum().item()) for p in reference.actor.parameters())


def test_only_measures_the_named_sections_and_refuses_unknown_ones(capsys):
    assert bench._sections("loop, env") == ("loop", "env")
    with pytest.raises(SystemExit):
        cli.main(["bench", "--only", "update,gpu"])
    assert "unknown section(s) ['gpu']" in capsys.readouterr().err
