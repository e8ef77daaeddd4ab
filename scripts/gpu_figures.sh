#!/usr/bin/env bash
# The GPU figures of docs/benchmarks.md in one run that fits in 15 minutes of GPU time.
#
#   OUT=/some/dir scripts/gpu_figures.sh            # on the GPU machine, from the repo root
#   GPU_FIGURES_QUICK=1 OUT=gpu_smoke scripts/gpu_figures.sh   # seconds-long smoke run (any machine)
#
# Writes into $OUT: bench_auto.json / bench_xla.json / bench_matmul.json (`td3-jax bench`: updates/s
# at batch 256 and 32, single and fused, compile times, the shared-encoder variants, the
# same-architecture PyTorch reference and SB3 on the same device in the same run, act, replay,
# the training loop's host time), train.log and train_results.json (end-to-end env steps/s of the
# driving recipe), nvidia-smi.txt and a log of everything. Missing Python packages are installed
# from wheels in .whl/ when that folder exists (docs/benchmarks.md, *GPU*).
set -uo pipefail
OUT=${OUT:?set OUT to the folder for the figures}
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu_figures.log") 2>&1
export XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1
if [ -d .whl ]; then
  site=$(mktemp -d)
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .whl/*.whl \
    && export PYTHONPATH="$site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
quick=(); steps=3000
if [ -n "${GPU_FIGURES_QUICK:-}" ]; then quick=(--quick); steps=300; fi
(nvidia-smi || true) > "$OUT/nvidia-smi.txt" 2>&1
python3 -c "import jax; print('jax', jax.__version__, jax.devices())"

# The update with each convolution path; the first also times act, replay, simulator and loop.
python3 -m td3_jax.cli bench "${quick[@]}" --json "$OUT/bench_auto.json" || echo "bench (auto) failed: $?"
for impl in xla matmul; do
  python3 -m td3_jax.cli bench "${quick[@]}" --only update --conv-impl "$impl" --json "$OUT/bench_$impl.json" \
    || echo "bench ($impl) failed: $?"
done

# End to end: the driving recipe for a few thousand env steps (compile and the first updates included).
run_dir=$(mktemp -d)/gpu_run
sets=(--set "training.max_timesteps=$steps" --set training.eval_freq=0 --set training.num_eval_episodes=0
      --set training.compare_baseline=false --set "training.checkpoint_freq=$steps")
if [ -n "${GPU_FIGURES_QUICK:-}" ]; then
  sets+=(--set algorithm.learning_starts=100 --set networks.cnn.features=8 --set algorithm.batch_size=8)
fi
start=$(date +%s.%N)
python3 -m td3_jax.cli train --config configs/td3_lanesim_cpu.yaml --run-dir "$run_dir" "${sets[@]}" \
  > "$OUT/train.log" 2>&1 || echo "train failed: $?"
end=$(date +%s.%N)
python3 - "$run_dir" "$start" "$end" "$steps" "$OUT/train_results.json" <<'PY'
import json, sys
run_dir, start, end, steps, out = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
wall = end - start
json.dump({"env_steps": steps, "wall_s": wall, "env_steps_per_s": steps / wall, "run_dir": run_dir}, open(out, "w"), indent=2)
print(f"driving recipe: {steps} env steps in {wall:.1f} s = {steps / wall:.1f} env steps/s (compile included)")
PY
tail -n 3 "$OUT/train.log"
