#!/usr/bin/env bash
# One device session (~9 min on an H100): versions, a short default-config MNIST
# training with its sample grid, its sample quality on 10,000 samples (quality
# issue), and TemplateUNet throughput against PyTorch eager / torch.compile with
# the 10k-sample row (speed issue). The last two steps are not yet run on a GPU.
# XLA's GPU autotuning makes each new program take ~50 s to compile, so the
# timeouts below are mostly compile time. Needs .data/{mnist,fashion-mnist}/ and
# the ml_collections wheel in .whl/, both carried (see docs/RESULTS.md).
# The three together can pass the device tool's 10-minute limit per command: run
# STEPS="train quality" (quality needs train's workdir) and STEPS=throughput apart.
set -uo pipefail
STEPS="${STEPS:-train quality throughput}"
want() { [[ " $STEPS " == *" $1 "* ]]; }
export PYTHONUNBUFFERED=1 JAXDDPM_DATA_DIR="$PWD/.data" OUT="${OUT:-/tmp/out}"
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl
export PYTHONPATH="/tmp/site:$PWD"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, jax.devices())"
quiet() { grep -v -i "warn\|cuda_timer"; }

if want train; then
echo "== train mnist: default config, bf16, 3 epochs"
(time timeout 240 python3 launch.py --config configs/mnist.py --workdir runs/gpu_mnist \
  --config.train.num_epochs=3 --config.model.dtype=bfloat16 --quiet) 2>&1 | quiet | tail -4
cp runs/gpu_mnist/samples/*.png "$OUT/" && cp runs/gpu_mnist/metrics.jsonl "$OUT/"
fi

if want quality; then
echo "== quality: 10,000 samples (the evaluator classifier trains first, once)"
timeout 200 python3 bench/quality.py --workdir runs/gpu_mnist --num_samples 10000 \
  --batch_size 2000 --sweeps default,dpm_steps --grids "$OUT/quality" 2>&1 | quiet \
  | tee "$OUT/quality.md"
fi

if want throughput; then
echo "== throughput (jaxddpm bf16 and fp32; PyTorch fp32 eager and compiled)"
timeout 280 python3 bench/throughput.py --models template-small --batches 1024 \
  --dtypes bfloat16,float32 --sample_count 10000 --iters 16 --steps_per_dispatch 8 --peak \
  --torch eager,compile \
  2>&1 | quiet | tee "$OUT/throughput.md"
fi
