"""Peak memory and decoding speed of loading CelebA from its official layout.

  python bench/data_load.py --n 20000                 # stand-in JPEGs in a temp folder
  python bench/data_load.py --data_dir ~/data --n 0   # a real CelebA: all of train

Writes --n stand-in faces (218x178 JPEGs, `jaxddpm.standin`) unless --data_dir is
given, then loads the train split at --image_size in a fresh Python process and
prints a Markdown table: images, the final uint8 array, the process's memory
before loading (Python, NumPy, JAX) and its peak while loading, the working set
(peak - before - array), decoded images/s, and the peak projected to CelebA's
162,770 train images (before + that array + the same working set). --n 20000
takes about two minutes on 2 cores, most of it writing the stand-in.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CELEBA_TRAIN = 162_770
GIB = 2.0**30


def _rss_now() -> int:
  with open("/proc/self/status") as f:
    return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


def _child(data_dir: str, image_size: int) -> None:
  """Loads in this (fresh) process and prints one JSON line."""
  import jax  # noqa: F401 - counted in the memory before loading, as in training.
  from ml_collections import ConfigDict

  from jaxddpm import data
  cfg = ConfigDict(dict(dataset="celeb_a", image_size=image_size, channels=3, num_classes=40,
                        conditioning="attributes", dir=data_dir, tfds_dir=""))
  before = _rss_now()
  t0 = time.perf_counter()
  split = data.load_split(cfg, "train")
  seconds = time.perf_counter() - t0
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
  print(json.dumps(dict(n=len(split), array=split.images.nbytes, before=before, peak=peak,
                        seconds=seconds, stand_in=split.stand_in)))


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--n", type=int, default=20_000, help="stand-in train faces to write (with "
                 "no --data_dir; 15%% more are written for the test and validation partitions)")
  p.add_argument("--data_dir", default="", help="a data folder holding celeba/ (real data)")
  p.add_argument("--image_size", type=int, default=64)
  p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
  args = p.parse_args()
  if args.child:
    return _child(args.data_dir, args.image_size)
  if not args.data_dir and args.n < 100:
    p.error("--n must be >= 100 (or give --data_dir)")
  with tempfile.TemporaryDirectory() as tmp:
    data_dir = args.data_dir
    if not data_dir:
      from jaxddpm import standin
      t0 = time.perf_counter()
      total = round(args.n / 0.85)
      standin.write_celeba(os.path.join(tmp, "celeba"), total)
      print(f"wrote {total} stand-in faces in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
      data_dir = tmp
    out = subprocess.run([sys.executable, __file__, "--child", "--data_dir", data_dir,
                          "--image_size", str(args.image_size)], capture_output=True, text=True)
    if out.returncode:
      sys.exit(f"error: loading failed:\n{out.stderr.strip()}")
    r = json.loads(out.stdout.strip().splitlines()[-1])
  working = r["peak"] - r["before"] - r["array"]
  projected = r["before"] + CELEBA_TRAIN * r["array"] / r["n"] + working
  cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
              if line.startswith("model name")), "?")
  print(f"{'stand-in' if r['stand_in'] else 'real'} CelebA, train split at "
        f"{args.image_size}x{args.image_size}; {os.cpu_count()} cores, {cpu}\n")
  print("| images | array | before loading | peak | working set | images/s | "
        "projected peak, 162,770 |")
  print("| --- | --- | --- | --- | --- | --- | --- |")
  print(f"| {r['n']:,} | {r['array'] / GIB:.2f} GiB | {r['before'] / GIB:.2f} GiB | "
        f"{r['peak'] / GIB:.2f} GiB | {working / GIB:.2f} GiB | {r['n'] / r['seconds']:.0f} | "
        f"{projected / GIB:.2f} GiB |")


if __name__ == "__main__":
  main()
