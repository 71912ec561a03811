#!/usr/bin/env bash
# One-call GPU check (device machine or any CUDA box with jax, flax, optax, orbax, sklearn):
#   1. benchmark grid at the paper's size (ResNet18 width 64): f32 b256 32px, bf16 b256 32px,
#      bf16 b256 64px; none vs gradmix, MFU, and the step times around STALL_SAVES (6) async saves
#      (each step waited for, and pipelined as the trainer runs), with the no-save noise floor;
#   2. the digits quick-start config end to end (model.dtype='auto' -> bfloat16 on GPU).
# Missing pure-Python packages travel as wheels in .whl/ (ml_collections, dm-pix, tensorboardX).
# Reports go to $OUT (default ./runs/gpu_check). Extra arguments go to the benchmark.
set -o pipefail
PY=${PYTHON:-python3}
OUT=${OUT:-runs/gpu_check}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$PY" -c "import jax, flax, optax, orbax.checkpoint as o; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, jax.devices())"
"$PY" -m gradmix_jax.benchmark --config configs/benchmark.py --config.model.width=64 \
  --config.bench.methods="('none','gradmix')" \
  --config.bench.grid="${GRID:-('float32/256/32','bfloat16/256/32','bfloat16/256/64')}" \
  --config.bench.stall_saves="${STALL_SAVES:-6}" --json "$OUT/bench_grid.json" "$@" 2>&1 | grep -v -E '^(I|W)[0-9]{4}' | tee "$OUT/bench.log"
start=$SECONDS
rm -rf /tmp/digits_gpu
timeout "${DIGITS_TIMEOUT:-150}" "$PY" -m gradmix_jax.train --config configs/digits.py \
  --workdir /tmp/digits_gpu 2>&1 | grep -v -E '^(I|W)[0-9]{4}' | tail -40 | tee "$OUT/digits.log"
echo "digits whole command: $((SECONDS - start)) s" | tee -a "$OUT/digits.log"
cp /tmp/digits_gpu/results.json "$OUT/digits_results.json" 2>/dev/null
"$PY" - "$OUT/bench_grid.json" <<'PY'
import json, sys
for r in json.load(open(sys.argv[1]))["runs"]:
    print(r["model"]["dtype"], r["batch_size"], r["model"]["image_size"],
          "none %.0f img/s" % r["none"]["images_per_second"],
          "gradmix %.0f img/s" % r["gradmix"]["images_per_second"],
          "ratio %.2f" % r["ratio_to_none"]["gradmix"],
          "MFU %.1f/%.1f%%" % (100 * r["none"]["mfu_model"], 100 * r["gradmix"]["mfu_model"]))
    for key in ("checkpoint_stall", "checkpoint_stall_pipelined"):
        st = r["gradmix"][key]
        print("   ", st["mode"], "median %.1f ms" % (1e3 * st["median_step_seconds"]),
              "(window steps, worst x, mean x, excess ms)",
              [(s["window_steps"], round(s["ratio"], 3), round(s["mean_ratio"], 3),
                round(1e3 * s["excess_seconds"], 1)) for s in st["saves"]],
              "median over saves: worst %.2fx, excess %.1f ms;" % (
                  st["median_save_ratio"], 1e3 * st["median_excess_seconds"]),
              "slowest step without a save %.2fx" % st["clean_worst_ratio"])
PY
