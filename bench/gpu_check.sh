#!/usr/bin/env bash
# The GPU checks (quality, speed, checkpoints, real shapes), sized for one lent GPU:
# 15 minutes of device time in all, starts included; 10 minutes per command.
#
#   STEPS=quality DATASETS=fmnist EPOCHS=15 bash bench/gpu_check.sh  # one dataset
#   STEPS=throughput bash bench/gpu_check.sh                         # ~4-5 min
#   STEPS=checkpoint bash bench/gpu_check.sh                         # ~1 min
#   STEPS=shapes bash bench/gpu_check.sh     # CIFAR-10 / CelebA GPU configs, ~3-4 min
#
# Fits one 10-minute call (all 30 epochs in ~306 s, ~90 s of it to the first step,
# then the six settings of sweep `targets` in ~200 s; a timeout keeps those done):
#   STEPS=quality DATASETS=fmnist EPOCHS=30 TRAIN_TIMEOUT=320 QUALITY_TIMEOUT=240 \
#     SWEEPS=targets bash bench/gpu_check.sh
# A warm machine keeps runs/ (git-ignored) between calls: within its idle window a
# second call can evaluate more settings of the same model without training again:
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl;
#   PYTHONPATH=/tmp/site:$PWD JAXDDPM_DATA_DIR=$PWD/.data JAXDDPM_CACHE_DIR=$PWD/.jcache \
#     python3 bench/quality.py --workdir runs/gpu_fmnist --num_samples 10000 \
#     --batch_size 2500 --sweeps guidance_early
# Other calls that fit: 15 epochs and 7 settings (~300 s of training):
#   STEPS=quality DATASETS=fmnist EPOCHS=15 TRAIN_TIMEOUT=300 QUALITY_TIMEOUT=270 \
#     SWEEPS=default,guidance_fine,guidance_interval bash bench/gpu_check.sh
# autoguidance (~250 s model, ~150 s guide, 4 settings):
#   STEPS=quality DATASETS=mnist EPOCHS=15 TRAIN_TIMEOUT=250 GUIDE=1 GUIDE_TIMEOUT=150 \
#     QUALITY_TIMEOUT=180 SWEEPS=default bash bench/gpu_check.sh
# Fashion-MNIST and the torch.compile comparison:
#   STEPS="quality throughput" DATASETS=fmnist EPOCHS=12 TRAIN_TIMEOUT=215 \
#     QUALITY_TIMEOUT=140 SWEEPS=default,guidance_fine TP_TIMEOUT=220 FP32_TIMEOUT=0 \
#     bash bench/gpu_check.sh
#
# quality: the default (GPU) configs of DATASETS (side by side on the one GPU when
#   several), bf16 compute, in-training evaluation off, then bench/quality.py on each
#   with 10,000 samples. The training timeout is a safety net: a run it stops is
#   evaluated at its best checkpoint; the log shows its progress, and its Python
#   stack if the timeout hit. Knobs: DATASETS, EPOCHS, K (steps per call; 8 is the
#   default, ~90 steps/s against ~38 with 1), NO_AUTOTUNE=1, TRAIN_TIMEOUT; for
#   bench/quality.py SWEEPS (e.g. default,guidance_fine,guidance_interval: guidance
#   1, 1.5 and 2, then guidance only for sigma in an interval, at ~15-30 s each on
#   the default UNet; eta: DDIM's eta 0, 0.5, 1) and QUALITY_TIMEOUT. GUIDE=1 also
#   trains an autoguidance guide after each model (the same config at half the
#   width, GUIDE_EPOCHS epochs, default max(1, EPOCHS/4), within GUIDE_TIMEOUT s)
#   and adds the autoguidance sweep (guidance 2, 2.5 and 3 with that guide).
#   Budget (H200, Fashion-MNIST, K=8; docs/results.md, "Speed: one GPU"): ~70 s to compile
#   the train chunk, ~60 s the validation step, 72 s to step 104, then 94 steps/s;
#   ~2-3 s of checkpoint writing and ~5-6 s per epoch end; 12 epochs in 167 s; the
#   end-of-run grid's sampler compile over 27 s: allow ~45 s after training;
#   ~45 s for the 10,000-sample evaluation. metrics.jsonl times epoch ends and
#   checkpoints (val_seconds, checkpoint_seconds, wall_time): read them first. Two
#   datasets side by side with K=8 and autotuning off did not reach step 104 in
#   300 s (cause not isolated): try one dataset first.
# throughput: TemplateUNet small, batch 1024: jaxddpm against PyTorch eager and
#   torch.compile in bf16 (autocast) with the 10,000-sample DDIM-50+CFG time, then
#   float32 against PyTorch eager. Autotuning on (XLA's default), as users run it.
# shapes: bench/real_shapes.py at each config's own batch, 20 steps.
#
# Needs, carried (all git-ignored): .data/{mnist,fashion-mnist}/ (copies of
# ../shared/data/*), .whl/ (the ml_collections wheel, see the device README) and
# .jcache/classifiers/ (a copy of ~/.cache/jaxddpm/classifiers after the evaluator
# classifiers were trained on the CPU, e.g. by bench/quality.py: keyed by dataset
# and recipe, e.g. fashion_mnist_28px_v1_f0bb101921 and mnist_28px_v1_e4858d1c0d).
# With JAXDDPM_CACHE_DIR=$PWD/.jcache, this trains Fashion-MNIST's in ~19 min on 2
# Intel Xeon cores, 44 on the AMD EPYC (the smoke classifiers there do not count):
#   python -c "from configs import fmnist; from jaxddpm.metrics import classifier;
#              classifier.load_or_train(fmnist.get_config().data)"
# Results come back as $OUT/quality.tar (logs, metrics, grids, tables),
# $OUT/throughput.md, $OUT/checkpoint.md and $OUT/shapes.md. SMOKE=1 runs the same
# pipeline on :smoke configs (CPU).
set -uo pipefail
STEPS="${STEPS:-quality}"
want() { [[ " $STEPS " == *" $1 "* ]]; }
XLA_FLAGS_GIVEN="${XLA_FLAGS:-}"
export PYTHONUNBUFFERED=1 JAXDDPM_DATA_DIR="$PWD/.data" JAXDDPM_CACHE_DIR="$PWD/.jcache"
OUT="${OUT:-/tmp/out}"
mkdir -p "$OUT"
if [[ -d .whl ]] && ! python3 -c "import ml_collections" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
python3 -c "import jax, flax, optax, orbax.checkpoint as o, torch; print('jax', jax.__version__, \
'flax', flax.__version__, 'optax', optax.__version__, 'torch', torch.__version__, jax.devices())"
quiet() { grep -v -i "warn\|cuda_timer\|^ *$"; }

if want quality; then
  # Knobs: DATASETS (run side by side), EPOCHS, K (train.steps_per_dispatch), NO_AUTOTUNE=1.
  DATASETS="${DATASETS:-mnist fmnist}" EPOCHS="${EPOCHS:-30}" NUM="${NUM_SAMPLES:-10000}"
  TRAIN_TIMEOUT="${TRAIN_TIMEOUT:-300}" SWEEPS="${SWEEPS:-default}"
  variant="" extra=(--config.model.dtype=bfloat16 --config.eval.every_epochs=0
                    --config.train.sample_every_steps=0)
  if [[ -n "${K:-}" ]]; then extra+=(--config.train.steps_per_dispatch="$K"); fi
  if [[ -n "${SMOKE:-}" ]]; then variant=":smoke" extra=(); fi
  # Side by side, no process may take JAX's default 75% of the GPU's memory.
  export XLA_PYTHON_CLIENT_MEM_FRACTION=0.45 JAX_LOG_COMPILES=1 PYTHONFAULTHANDLER=1
  rm -rf /tmp/hlo  # Only this run's programs in the count below.
  export XLA_FLAGS="${XLA_FLAGS:-} --xla_dump_to=/tmp/hlo --xla_dump_hlo_as_text"
  if [[ -n "${NO_AUTOTUNE:-}" ]]; then
    export XLA_FLAGS="$XLA_FLAGS --xla_gpu_autotune_level=0"
  fi
  R="$OUT/q"; mkdir -p "$R"
  run_one() {  # dataset config name; a stuck run prints its Python stack (SIGABRT)
    local t0=$SECONDS
    timeout -s ABRT "$TRAIN_TIMEOUT" python3 launch.py --config "configs/$1.py$variant" \
      --workdir "runs/gpu_$1" --config.train.num_epochs="$EPOCHS" "${extra[@]}" \
      > "$R/train_$1.log" 2>&1
    echo "train $1: exit $? after $((SECONDS - t0)) s" >> "$R/train_$1.log"
    local sweeps="$SWEEPS" guide=()
    if [[ -n "${GUIDE:-}" ]]; then  # Autoguidance: a half-width model trained for less.
      local width="$(python3 -c "from configs import $1; print($1.get_config('${variant#:}' or None).model.base_channels // 2)")"
      timeout -s ABRT "${GUIDE_TIMEOUT:-150}" python3 launch.py --config "configs/$1.py$variant" \
        --workdir "runs/gpu_$1_guide" --config.model.base_channels="$width" \
        --config.train.num_epochs="${GUIDE_EPOCHS:-$(( EPOCHS / 4 > 0 ? EPOCHS / 4 : 1 ))}" \
        "${extra[@]}" > "$R/guide_$1.log" 2>&1
      echo "guide $1: exit $? after $((SECONDS - t0)) s" >> "$R/guide_$1.log"
      sweeps="$sweeps,autoguidance" guide=(--guide_workdir "runs/gpu_$1_guide")
    fi
    timeout -s ABRT "${QUALITY_TIMEOUT:-240}" python3 bench/quality.py --workdir "runs/gpu_$1" --num_samples "$NUM" \
      --batch_size 2500 --sweeps "$sweeps" "${guide[@]}" --grids "$R/grid_$1" \
      --json "$R/quality_$1.jsonl" > "$R/quality_$1.log" 2>&1
    echo "quality $1: exit $? after $((SECONDS - t0)) s" >> "$R/quality_$1.log"
  }
  echo "== quality: default configs ($DATASETS), bf16, $EPOCHS epochs, then $NUM samples"
  for d in $DATASETS; do run_one "$d" & done
  wait
  for d in $DATASETS; do
    cp "runs/gpu_$d/metrics.jsonl" "$R/metrics_$d.jsonl"
    for f in runs/gpu_$d/samples/*.png; do cp "$f" "$R/${d}_$(basename "$f")"; done
    echo "-- $d"; grep -i "compilation of\|Traceback\|File \"\|Error" "$R/train_$d.log" | tail -12
    grep '"epoch"' "runs/gpu_$d/metrics.jsonl" | tail -2
    quiet < "$R/train_$d.log" | tail -3; quiet < "$R/quality_$d.log" | tail -6
  done
  # Did the train step keep any conditional (there should be none since the CPU-only
  # convolution is chosen when traced)? Sampling with a guidance interval and the
  # plateau scheduler's eager lax.cond hold one by design, so only train programs count.
  echo "optimized train-step modules with a conditional: $(grep -l 'conditional(' \
    /tmp/hlo/*jit_{chunk,train_step}*after_optimizations.txt 2>/dev/null | wc -l) of \
    $(ls /tmp/hlo/*jit_{chunk,train_step}*after_optimizations.txt 2>/dev/null | wc -l)"
  tar -cf "$OUT/quality.tar" -C "$OUT" q && rm -rf "$R"
fi

if want shapes; then  # The CIFAR-10 and CelebA GPU configs at their real sizes and batches.
  echo "== real shapes"
  timeout "${SHAPES_TIMEOUT:-300}" python3 bench/real_shapes.py --batch 0 --steps 20 2>&1 \
    | quiet | tee "$OUT/shapes.md"
fi

if want checkpoint; then  # How long a save holds training up (default UNet state).
  echo "== checkpoint saves"
  timeout 120 python3 bench/checkpoint_time.py --saves 10 2>&1 | quiet | tee "$OUT/checkpoint.md"
fi

if want throughput; then
  # Knobs: TP_TIMEOUT and FP32_TIMEOUT (seconds; 0 skips that part), TP_EXTRA (more
  # bench/throughput.py arguments, e.g. "--batches 8 --iters 2" for a CPU check).
  # No HLO dumps or compile logs from the quality step here: they slow compiling.
  export XLA_FLAGS="${XLA_FLAGS_GIVEN}" JAX_LOG_COMPILES=0
  export XLA_PYTHON_CLIENT_MEM_FRACTION=0.45  # PyTorch runs in the same process.
  touch "$OUT/throughput.md"
  if (( ${TP_TIMEOUT:-300} > 0 )); then
    echo "== throughput: bf16, jaxddpm vs PyTorch eager and torch.compile (autocast)"
    timeout "${TP_TIMEOUT:-300}" python3 bench/throughput.py --models template-small \
      --batches 1024 --dtypes bfloat16 --sample_count 10000 --iters 48 --steps_per_dispatch 8 \
      --chunk_only --peak --torch eager,compile ${TP_EXTRA:-} 2>&1 | quiet | tee "$OUT/throughput.md"
  fi
  if (( ${FP32_TIMEOUT:-150} > 0 )); then
    echo "== throughput: float32, jaxddpm vs PyTorch eager"
    timeout "${FP32_TIMEOUT:-150}" python3 bench/throughput.py --models template-small \
      --batches 1024 --dtypes float32 --sample_count 10000 --iters 48 --steps_per_dispatch 8 \
      --chunk_only --peak --torch eager ${TP_EXTRA:-} 2>&1 | quiet | tee -a "$OUT/throughput.md"
  fi
fi
