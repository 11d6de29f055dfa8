"""EMA length chosen after training: post-hoc EMAs of one run, each evaluated.

  python bench/posthoc_ema.py --workdir runs/fmnist_long --stds 0.05,0.09,0.15 \
      --steps 1200,2400 --num_samples 2000

The run must have kept dense checkpoints (e.g. `--config.train.checkpoint_every_steps=50
--config.train.keep_checkpoints=200`): each is an EMA snapshot, and the power EMA of
each std (the share of training it averages over; Karras et al. 2024) at each step
is a least-squares combination of them (jaxddpm/posthoc_ema.py). Writes
WORKDIR/posthoc/std<S>_step<N>/ as a run that `launch.py --mode=sample/evaluate`
read, evaluates it with the run's own sampler (--num_samples 0: only writes), and
prints one row per EMA: std, γ, the fit's relative residual, accuracy, Frechet
distance, precision / recall. Time: the evaluations (~4 min per 2,000 Fashion-MNIST
`:cpu` samples at DPM-Solver++ 20 on 2 CPU cores); the synthesis takes seconds.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jaxddpm import evaluate, posthoc_ema, train  # noqa: E402


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--workdir", required=True)
  p.add_argument("--stds", default="0.05,0.1,0.15", help="comma-separated EMA stds")
  p.add_argument("--steps", default="", help="comma-separated steps (default: the newest)")
  p.add_argument("--num_samples", type=int, default=2000, help="0: write the runs only")
  args = p.parse_args()
  try:
    stds = [float(s) for s in args.stds.split(",")]
    steps = [int(s) for s in args.steps.split(",") if s] or [None]
  except ValueError:
    p.error("--stds, --steps: comma-separated numbers (stds in (0, 0.288), steps kept "
            "checkpoints)")
  try:
    rows = _rows(args, stds, steps)
  except ValueError as e:
    sys.exit(f"error: {e}")
  head = ["step", "std", "γ", "residual", "snapshots"]
  if args.num_samples:
    head += ["accuracy", "Frechet distance", "precision / recall"]
  print("\n| " + " | ".join(head) + " |\n" + "| --- " * len(head) + "|")
  for row in rows:
    print("| " + " | ".join(row) + " |")


def _rows(args, stds, steps):
  rows = []
  for step in steps:
    for std in stds:
      out = os.path.join(args.workdir, "posthoc", f"std{std:g}_step{step or 'last'}")
      info = posthoc_ema.write_run(args.workdir, out, std, step)
      row = [str(info["step"]), f"{std:g}", f"{train.power_ema_gamma(std):.2f}",
             f"{info['residual']:.3f}", f"{len(info['snapshot_steps'])}"]
      if args.num_samples:
        m = evaluate.evaluate_checkpoint(out, num_samples=args.num_samples, quiet=True)
        row += [f"{m['metrics']['conditional_accuracy']:.2%}",
                f"{m['metrics']['frechet_distance']:.2f}",
                f"{m['metrics']['precision']:.3f} / {m['metrics']['recall']:.3f}"]
      rows.append(row)
      print("| " + " | ".join(row) + " |", flush=True)
  return rows


if __name__ == "__main__":
  main()
