"""How the evaluator's metrics respond to known changes of real images.

  python bench/feature_sensitivity.py --dataset mnist --num_images 10000

A Frechet distance in a classifier's features has no natural unit. This bench
gives it one: it takes N real train images (the floor's images), changes them in
one controlled way at a time (bolder or thinner strokes, more or less ink, blur,
noise, a shift) and reports the same metrics as `bench/quality.py` against the
real test split. A sample set's distance can then be read as "about as far as
real digits drawn one pixel bolder". It also prints each variant's mean ink
(mean pixel / 255), the quantity classifier-free guidance visibly raises, and
with --grids the same per class for sample grids (one row per class, as
`bench/quality.py --grids` and `launch.py --mode=sample` write them):

  python bench/feature_sensitivity.py --dataset mnist --num_images 0 \
      --grids docs/quality/mnist_cpu_500/ddim50_g1.png,docs/quality/mnist_cpu_500/ddim50_g2.png
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from jaxddpm import data as data_lib, evaluate, images  # noqa: E402


def _max3(x: np.ndarray) -> np.ndarray:
  """3x3 grey dilation (max filter) of uint8 [N,H,W,C], edges padded with 0."""
  p = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  h, w = x.shape[1:3]
  return np.max([p[:, i:i + h, j:j + w] for i in range(3) for j in range(3)], axis=0)


def _min3(x: np.ndarray) -> np.ndarray:
  """3x3 grey erosion (min filter), edges padded with 0."""
  return 255 - _max3(255 - x)


def _blur(x: np.ndarray, sigma: float) -> np.ndarray:
  """Separable Gaussian blur (radius 2)."""
  k = np.exp(-0.5 * (np.arange(-2, 3) / sigma) ** 2)
  k /= k.sum()
  f = x.astype(np.float64)
  for axis in (1, 2):
    p = np.pad(f, [(2, 2) if a == axis else (0, 0) for a in range(4)])
    n = f.shape[axis]
    f = sum(k[i] * np.take(p, np.arange(i, i + n), axis=axis) for i in range(5))
  return f


def _gamma(x: np.ndarray, g: float) -> np.ndarray:
  """Pixel intensity v -> 255 (v/255)^g: g < 1 adds ink to the grey edges."""
  return 255.0 * (x / 255.0) ** g


def variants(rng: np.random.Generator) -> dict:
  """name -> function of uint8 images returning float or uint8 images in [0, 255]."""
  half = lambda a, b: (a.astype(np.float64) + b) / 2  # noqa: E731
  return {
      "unchanged (the floor)": lambda x: x,
      "bolder: 3x3 dilation": _max3,
      "bolder: half-way to the 3x3 dilation": lambda x: half(x, _max3(x)),
      "thinner: 3x3 erosion": _min3,
      "more ink: gamma 0.7": lambda x: _gamma(x, 0.7),
      "less ink: gamma 1.4": lambda x: _gamma(x, 1.4),
      "blur, sigma 0.5 px": lambda x: _blur(x, 0.5),
      "blur, sigma 1 px": lambda x: _blur(x, 1.0),
      "noise, sigma 8/255": lambda x: x + rng.normal(0, 8, x.shape),
      "noise, sigma 32/255": lambda x: x + rng.normal(0, 32, x.shape),
      "shift 1 px right": lambda x: np.roll(x, 1, axis=2),
      "shift 2 px right": lambda x: np.roll(x, 2, axis=2),
  }


def ungrid(path: str, size: int, pad: int = 2) -> np.ndarray:
  """A class grid PNG -> uint8 [rows, cols, size, size, C] (rows are classes)."""
  g = images.read_png(path)
  rows, cols = (g.shape[0] - pad) // (size + pad), (g.shape[1] - pad) // (size + pad)
  if rows * (size + pad) + pad != g.shape[0] or cols * (size + pad) + pad != g.shape[1]:
    raise ValueError(f"{path} ({g.shape[0]}x{g.shape[1]}) is not a grid of {size}x{size} "
                     f"images with {pad}-pixel gaps.")
  return np.stack([[g[pad + r * (size + pad):][:size, pad + c * (size + pad):][:, :size]
                    for c in range(cols)] for r in range(rows)])


def ink_table(config, grids: list[str]) -> None:
  """Mean ink, overall and per class, of the real test split and of each grid."""
  test = data_lib.load_split(config.data, "test")
  k = config.data.num_classes
  rows = {"real test split": [test.images[test.labels == c].mean() / 255 for c in range(k)]}
  for path in grids:
    t = ungrid(path, config.data.image_size)
    if len(t) != k:
      raise ValueError(f"{path} has {len(t)} rows; a class grid has one per class ({k}).")
    rows[path] = [t[c].mean() / 255 for c in range(k)]
  print("\n| images | mean ink | " + " | ".join(f"class {c}" for c in range(k)) + " |")
  print("| --- " * (k + 2) + "|")
  for name, ink in rows.items():
    print(f"| {name} | {np.mean(ink):.3f} | " + " | ".join(f"{v:.2f}" for v in ink) + " |")


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--dataset", default="mnist",
                 help="a module of configs/ (mnist, fmnist, ...): its data section is used.")
  p.add_argument("--num_images", type=int, default=10_000,
                 help="real images per change; 0 skips the table (--grids only).")
  p.add_argument("--grids", default="", help="comma-separated class-grid PNGs: mean ink per class.")
  p.add_argument("--seed", type=int, default=0)
  a = p.parse_args(argv)
  config = importlib.import_module(f"configs.{a.dataset}").get_config()
  if a.grids:
    ink_table(config, a.grids.split(","))
  if a.num_images == 0:
    return
  ev = evaluate.make_evaluator(config.data, cache_dir=config.eval.cache_dir or None,
                               spec=evaluate.classifier_spec(config), k=config.eval.pr_k)
  n = a.num_images
  if not 3 < n <= len(ev.held_out):
    raise ValueError(f"--num_images must be in 4..{len(ev.held_out)}, got {n}.")
  real, labels = ev.floor_images(n)
  rng = np.random.default_rng(a.seed)
  print(f"{config.data.dataset}: {n} held-out real train images, changed as named, against the "
        f"real test split (classifier test accuracy {ev.classifier.get('test_accuracy')}).\n")
  print("| change | mean ink | cond. acc. | Frechet dist. | precision | recall |")
  print("| --- | --- | --- | --- | --- | --- |")
  for name, f in variants(rng).items():
    x = np.clip(np.rint(f(real)), 0, 255).astype(np.uint8)
    r = ev.evaluate(x, labels)
    print(f"| {name} | {x.mean() / 255:.3f} | {r['conditional_accuracy']:.4f} | "
          f"{r['frechet_distance']:.3f} | {r['precision']:.3f} | {r['recall']:.3f} |", flush=True)


if __name__ == "__main__":
  main()
