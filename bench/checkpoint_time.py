"""How long a checkpoint save holds training up, as the training loop saves.

  python bench/checkpoint_time.py                       # default (GPU) MNIST config
  python bench/checkpoint_time.py --config configs/mnist.py:cpu --saves 10

Saves the config's freshly initialised train state --saves times under a temporary
folder, alternating "latest only" (the saves every train.checkpoint_every_steps)
and "latest and best" (an epoch end whose validation loss improved), with a pause
between saves so Orbax's background writes can finish as they would during
training. Prints a Markdown table of the blocking time per kind (the loop logs the
same figure as `checkpoint_seconds` in metrics.jsonl). About a minute on a
2-core CPU.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from jaxddpm import checkpoint, parallel  # noqa: E402
from jaxddpm.train import create_train_state, init_params, make_plateau, make_steps  # noqa: E402


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--config", default="configs/mnist.py")
  p.add_argument("--saves", type=int, default=8)
  p.add_argument("--pause", type=float, default=2.0, help="seconds between saves")
  a = p.parse_args()
  from quality import load_config  # bench/ is on sys.path when this script runs.
  config = load_config(a.config)
  model, _, tx, *_ = make_steps(config)
  key = jax.random.key(0)
  state = create_train_state(init_params(model, config, key), tx, make_plateau(config.optim), key)
  state = parallel.replicate(state, parallel.make_mesh())  # Placed as in training.
  n = sum(x.size for x in jax.tree.leaves(state.params))
  times = {False: [], True: []}
  with tempfile.TemporaryDirectory() as folder:
    ckpt = checkpoint.Checkpointer(folder, config.train.keep_checkpoints)
    for i in range(a.saves):
      best = i % 2 == 1
      state = state.replace(step=state.step + 100)
      t0 = time.perf_counter()
      ckpt.save(state, best=best)
      times[best].append(time.perf_counter() - t0)
      time.sleep(a.pause)
    ckpt.close()
  dev = jax.devices()[0]
  print(f"{a.config}: {n / 1e6:.2f} M params, {len(jax.tree.leaves(state))} arrays in the "
        f"state; jax {jax.__version__} on {getattr(dev, 'device_kind', dev.platform)}\n")
  print("| save | median s | min s | max s | saves |\n| --- | --- | --- | --- | --- |")
  for best, name in ((False, "latest only"), (True, "latest and best")):
    t = np.array(times[best][1:] or times[best])  # The first save also makes folders.
    print(f"| {name} | {np.median(t):.3f} | {t.min():.3f} | {t.max():.3f} | {len(t)} |")


if __name__ == "__main__":
  main()
