"""The GPU configs at their real sizes: compile, a few train steps, time and memory.
About 2 minutes on a 2-core CPU (most of it compiling), under a minute on a GPU.

  python bench/real_shapes.py                          # CPU: batch 8, 3 steps each
  python bench/real_shapes.py --batch 0 --steps 20     # GPU: each config's own batch

For configs/cifar10.py and configs/celeba.py (and any --configs), builds the
model, compiles the train chunk (the loop's program, steps_per_dispatch steps per
call) and runs --steps steps on synthetic uint8 batches of the real shape
(32x32x3, 64x64x3; random labels or attributes), random flips included. Prints a
Markdown table: parameters, compile seconds, seconds per step, images/s, peak
device memory where the backend reports it, and the time per epoch of the real
train split (50,000 / 162,770 images less validation). A shape the model cannot
take fails here in seconds, not an hour into a user's first GPU run.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from jaxddpm import loop, train  # noqa: E402

TRAIN_IMAGES = {"cifar10": 50_000, "celeb_a": 162_770}  # Real train splits.


def measure(config, batch: int, steps: int) -> dict:
  B = batch or config.train.batch_size
  K = min(config.train.steps_per_dispatch, steps)
  with config.unlocked():
    config.train.batch_size = B
  model, _, tx, step_fn, _ = train.make_steps(config)
  params = train.init_params(model, config, jax.random.key(0))
  state = train.create_train_state(params, tx, train.make_plateau(config.optim))
  d = config.data
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.integers(0, 256, (2 * B, d.image_size, d.image_size, d.channels),
                                    dtype=np.uint8))
  labels = jnp.asarray(rng.random((2 * B, d.num_classes)) < 0.3, jnp.float32) if (
      d.conditioning == "attributes") else jnp.asarray(rng.integers(0, d.num_classes, 2 * B),
                                                       jnp.int32)
  chunk = loop.make_chunk_fn(step_fn, B, None, K)
  perm = jnp.arange(2 * B)
  t0 = time.perf_counter()
  state, metrics = chunk(state, images, labels, perm, 0, jax.random.key(1), K)
  loss = float(metrics["loss"][0])
  compile_s = time.perf_counter() - t0
  calls = max(1, steps // K)
  t0 = time.perf_counter()
  for _ in range(calls):
    state, metrics = chunk(state, images, labels, perm, 0, jax.random.key(1), K)
  metrics["loss"].block_until_ready()
  per_step = (time.perf_counter() - t0) / (calls * K)
  stats = jax.devices()[0].memory_stats() or {}
  epoch = TRAIN_IMAGES.get(d.dataset, 0) * (1 - d.val_fraction)
  return dict(params=sum(p.size for p in jax.tree.leaves(params)), batch=B, compile_s=compile_s,
              step_s=per_step, images_s=B / per_step, first_loss=loss,
              peak_gib=stats.get("peak_bytes_in_use", 0) / 2**30,
              epoch_min=epoch / B * per_step / 60)


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--configs", default="cifar10,celeba", help="configs/<name>.py, comma-separated")
  p.add_argument("--batch", type=int, default=8, help="batch size; 0 = each config's own")
  p.add_argument("--steps", type=int, default=3, help="timed steps after the compile")
  args = p.parse_args()
  names = [n for n in args.configs.split(",") if n]
  unknown = [n for n in names if not os.path.isfile(os.path.join("configs", f"{n}.py"))]
  if unknown or not names:
    sys.exit(f"error: --configs: no configs/{unknown[0] if unknown else ''}.py; give names "
             "like cifar10,celeba (run from the repository root).")
  if args.batch < 0 or args.steps < 1:
    sys.exit("error: --batch must be >= 0 and --steps >= 1.")
  device = jax.devices()[0]
  print(f"{device.platform}: {device.device_kind}, {jax.device_count()} device(s)\n")
  print("| config | image | params | batch | compile s | s/step | images/s | first loss | "
        "peak GiB | min/epoch |")
  print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
  for name in names:
    config = importlib.import_module(f"configs.{name}").get_config()
    r = measure(config, args.batch, args.steps)
    d = config.data
    print(f"| {name} | {d.image_size}x{d.image_size}x{d.channels} | {r['params'] / 1e6:.1f}M | "
          f"{r['batch']} | {r['compile_s']:.0f} | {r['step_s']:.3f} | {r['images_s']:.1f} | "
          f"{r['first_loss']:.3f} | {r['peak_gib']:.2f} | {r['epoch_min']:.0f} |", flush=True)


if __name__ == "__main__":
  main()
