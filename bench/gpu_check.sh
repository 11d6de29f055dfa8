#!/usr/bin/env bash
# The GPU checks of the quality and speed issues, sized for one lent device session
# (15 minutes of device time, 10 per command). Run the two steps as two commands:
#
#   STEPS=quality bash bench/gpu_check.sh      # ~8 min on an H100
#   STEPS=throughput bash bench/gpu_check.sh   # ~4-5 min
#
# quality: the default (GPU) MNIST and Fashion-MNIST configs trained side by side on
#   the one GPU (bf16 compute, in-training evaluation off), then bench/quality.py on
#   each with 10,000 samples. XLA's GPU autotuning is off for these runs
#   (--xla_gpu_autotune_level=0): with it each new program took ~50 s to compile, and
#   a training run compiles four. The training timeout is a safety net: a run it
#   stops is evaluated at its best checkpoint, and the log says how far it got.
# throughput: TemplateUNet small, batch 1024: jaxddpm against PyTorch eager and
#   torch.compile in bf16 (autocast) with the 10,000-sample DDIM-50+CFG time, then
#   float32 against PyTorch eager. Autotuning on (XLA's default), as users run it.
#
# Needs, carried: .data/{mnist,fashion-mnist}/ (the IDX files), .whl/ (the
# ml_collections wheel) and .jcache/classifiers/ (the evaluator classifiers, trained
# on the CPU: the cache is keyed by dataset and recipe). See docs/RESULTS.md.
# Results come back as $OUT/quality.tar (logs, metrics, grids, tables) and
# $OUT/throughput.md. SMOKE=1 runs the same pipeline on :smoke configs (CPU check).
set -uo pipefail
STEPS="${STEPS:-quality}"
want() { [[ " $STEPS " == *" $1 "* ]]; }
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
  EPOCHS="${EPOCHS:-30}" TRAIN_TIMEOUT="${TRAIN_TIMEOUT:-300}" NUM="${NUM_SAMPLES:-10000}"
  variant="" extra=(--config.model.dtype=bfloat16 --config.eval.every_epochs=0
                    --config.train.sample_every_steps=0)
  if [[ -n "${SMOKE:-}" ]]; then variant=":smoke" extra=(); fi
  # Two processes share the GPU: neither may take JAX's default 75% of its memory.
  export XLA_PYTHON_CLIENT_MEM_FRACTION=0.45
  export XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_autotune_level=0"
  R="$OUT/q"; mkdir -p "$R"
  run_one() {  # dataset config name, workdir name
    local t0=$SECONDS
    timeout "$TRAIN_TIMEOUT" python3 launch.py --config "configs/$1.py$variant" \
      --workdir "runs/gpu_$2" --config.train.num_epochs="$EPOCHS" "${extra[@]}" --quiet \
      > "$R/train_$2.log" 2>&1
    echo "train $2: exit $? after $((SECONDS - t0)) s" >> "$R/train_$2.log"
    timeout 170 python3 bench/quality.py --workdir "runs/gpu_$2" --num_samples "$NUM" \
      --batch_size 2500 --sweeps default --grids "$R/grid_$2" --json "$R/quality_$2.jsonl" \
      > "$R/quality_$2.log" 2>&1
    echo "quality $2: exit $? after $((SECONDS - t0)) s" >> "$R/quality_$2.log"
  }
  echo "== quality: default configs, bf16, $EPOCHS epochs, then $NUM samples each"
  run_one mnist mnist & run_one fmnist fmnist &
  wait
  for d in mnist fmnist; do
    cp runs/gpu_$d/metrics.jsonl "$R/metrics_$d.jsonl" 2>/dev/null
    for f in runs/gpu_$d/samples/*.png; do cp "$f" "$R/${d}_$(basename "$f")"; done
    echo "-- $d"; quiet < "$R/train_$d.log" | tail -6; quiet < "$R/quality_$d.log" | tail -8
  done
  tar -cf "$OUT/quality.tar" -C "$OUT" q && rm -rf "$R"
fi

if want throughput; then
  echo "== throughput: bf16, jaxddpm vs PyTorch eager and torch.compile (autocast)"
  export XLA_PYTHON_CLIENT_MEM_FRACTION=0.45  # PyTorch runs in the same process.
  timeout 300 python3 bench/throughput.py --models template-small --batches 1024 \
    --dtypes bfloat16 --sample_count 10000 --iters 48 --steps_per_dispatch 8 --chunk_only \
    --peak --torch eager,compile 2>&1 | quiet | tee "$OUT/throughput.md"
  echo "== throughput: float32, jaxddpm vs PyTorch eager"
  timeout 150 python3 bench/throughput.py --models template-small --batches 1024 \
    --dtypes float32 --sample_count 10000 --iters 48 --steps_per_dispatch 8 --chunk_only \
    --peak --torch eager 2>&1 | quiet | tee -a "$OUT/throughput.md"
fi
