#!/usr/bin/env bash
# One device session (~5 min on an H100): versions, a short default-config MNIST
# training with its sample grid, and the TemplateUNet throughput / 10k-sample row.
# XLA's GPU autotuning makes each new program take ~50 s to compile, so the
# timeouts below are mostly compile time. Needs .data/{mnist,fashion-mnist}/ and
# the ml_collections wheel in .whl/, both carried (see docs/RESULTS.md).
set -uo pipefail
export PYTHONUNBUFFERED=1 JAXDDPM_DATA_DIR="$PWD/.data" OUT="${OUT:-/tmp/out}"
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl
export PYTHONPATH="/tmp/site:$PWD"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, jax.devices())"
quiet() { grep -v -i "warn\|cuda_timer"; }

echo "== train mnist: default config, bf16, 3 epochs"
(time timeout 240 python3 launch.py --config configs/mnist.py --workdir runs/gpu_mnist \
  --config.train.num_epochs=3 --config.model.dtype=bfloat16 --quiet) 2>&1 | quiet | tail -4
cp runs/gpu_mnist/samples/*.png "$OUT/" && cp runs/gpu_mnist/metrics.jsonl "$OUT/"

echo "== throughput"
timeout 150 python3 bench/throughput.py --models template-small --batches 1024 \
  --dtypes bfloat16 --sample_count 10000 --iters 10 2>&1 | quiet | tee "$OUT/throughput.md"
