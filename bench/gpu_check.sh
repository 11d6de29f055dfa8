#!/usr/bin/env bash
# One device session: versions, throughput table, then short default-config
# trainings of MNIST and Fashion-MNIST with sample grids. Needs the data in
# .data/{mnist,fashion-mnist}/ and the ml_collections wheel in .whl/ (carried).
set -uo pipefail
export PYTHONUNBUFFERED=1 JAXDDPM_DATA_DIR="$PWD/.data" OUT="${OUT:-/tmp/out}"
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH="/tmp/site:$PWD"
fi
export PYTHONPATH="${PYTHONPATH:-$PWD}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import jax, flax, optax, orbax.checkpoint as o; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, jax.devices())"

echo "== throughput"
{ timeout 80 python3 bench/throughput.py --models template-small --batches 128,1024 \
    --dtypes float32,bfloat16 --sample_count 10000 --iters 10
  timeout 80 python3 bench/throughput.py --models unet --batches 128,1024 \
    --dtypes float32,bfloat16 --sample_count 1000 --iters 10; } 2>&1 | grep -v Warning \
  | tee "$OUT/throughput.md"

for ds in mnist fmnist; do
  echo "== train $ds (default config, capped at 100 s)"
  timeout 100 python3 launch.py --config "configs/$ds.py" --workdir "runs/gpu_$ds" \
    --config.train.num_epochs=6 --config.model.dtype=bfloat16 --quiet 2>&1 | grep -v Warning | tail -3
  python3 launch.py --mode=sample --workdir "runs/gpu_$ds" --which=latest 2>&1 | tail -1
  cp runs/gpu_$ds/samples/sample_*.png "$OUT/gpu_${ds}_samples.png"
  cp runs/gpu_$ds/metrics.jsonl "$OUT/gpu_${ds}_metrics.jsonl"
done
