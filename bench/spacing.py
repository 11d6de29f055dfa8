"""How far each sampler's few steps are from the exact ODE, computed exactly.

  python bench/spacing.py                      # MNIST and Fashion-MNIST, ~30 s
  python bench/spacing.py --datasets fmnist --steps 20,50 --guidance 3

Stand-in data: a Gaussian with the real train split's mean and covariance. Its
optimal denoiser is linear, so DDIM (η = 0) and DPM-Solver++(2M) map x_T ~ N(0, I)
to a Gaussian whose std along each principal axis follows from the schedule alone
(the recursions of tests/exact_denoiser.py, one per axis). The table gives the
Frechet distance in pixel space between what the sampler produces and the data
Gaussian, Σ_k (std_k - sqrt(λ_k))², zero for an exact solver; the finite-step
error, nothing else. Axes of small variance (fine detail) are denoised at low
noise, where uniformly spread timesteps are few: the case for `spacing="logsnr"`.
A trained network is not this denoiser, so these numbers rank step schedules.

With guidance in the config's interval (--guidance, the scales; 0 skips it): one
Gaussian per class (the class's mean, the within-class covariance), and the
unconditional model a Gaussian with the overall mean and the same covariance, so the
CFG denoiser is linear too. Guidance only shifts means, and where it switches on the
prediction jumps. The table gives the Frechet distance, averaged over classes, to
the exact guided ODE (DDIM with all T steps, the same interval), including
DPM-Solver++ as it was before it stepped from the guidance onset
(sampling.step_schedule, with log-SNR steps at s >= 2): "dpmpp_2m (no onset
step)"; the two rows agree where the onset step is not taken.

  python bench/spacing.py --workdir runs/fmnist_cpu --num_samples 100

also measures a trained model's own step error: the RMS distance (in 8-bit grey
levels) of each setting's images from those of DDIM with all T steps, from the same
x_T and labels, at the run's guidance (--conditional: guidance 1). Unlike a Frechet
distance this has no sampling noise and no feature space, only the solver's error.
The models' Frechet distances are bench/quality.py's. Tables: docs/results.md,
"Samplers: step error".
"""

from __future__ import annotations

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

import numpy as np  # noqa: E402

from exact_denoiser import (exact_dpm_solver_moments, exact_sampler_moments,  # noqa: E402
                            interval_cfg_affine)
from configs import base  # noqa: E402
from jaxddpm import data, sampling, schedules  # noqa: E402

CONFIGS = {"mnist": "configs/mnist.py", "fmnist": "configs/fmnist.py"}


def principal_stds(config) -> np.ndarray:
  """sqrt of the train split's covariance eigenvalues, pixels in [-1, 1]."""
  x = data.load_split(config.data, "train").images.reshape(-1, config.data.image_size**2)
  x = x.astype(np.float64) / 127.5 - 1.0
  x -= x.mean(axis=0)
  return np.sqrt(np.maximum(np.linalg.eigvalsh(x.T @ x / len(x)), 0.0))


def class_statistics(config):
  """(within-class principal stds [D], class-mean offsets from the overall mean in
  that basis [K, D]) of the train split, pixels in [-1, 1]."""
  split = data.load_split(config.data, "train")
  x = split.images.reshape(len(split.images), -1).astype(np.float64) / 127.5 - 1.0
  y = np.asarray(split.labels)
  means = np.stack([x[y == c].mean(axis=0) for c in range(config.data.num_classes)])
  centred = x - means[y]
  eigval, eigvec = np.linalg.eigh(centred.T @ centred / len(x))
  return np.sqrt(np.maximum(eigval, 0.0)), (means - x.mean(axis=0)) @ eigvec


def guided_error(schedule, stds, offsets, scale, interval, sampler, steps, spacing,
                 onset=True) -> float:
  """Frechet distance (averaged over classes) of one sampler's output from the exact
  guided ODE's, the class Gaussians of class_statistics, CFG at `scale` in `interval`.
  onset=False: DPM-Solver++ on the plain grid, without the first-order onset step
  (which sample_loop takes with log-SNR steps at s >= 2 only)."""
  def run(sampler, steps, spacing, offset, onset):  # Unconditional mean 0.
    onset = onset and sampling.takes_onset_step(sampler, spacing, scale, interval)
    return interval_cfg_affine(schedule, steps, spacing, sampler, stds, offset, 0.0, scale,
                               interval, onset)

  total = 0.0
  for offset in offsets:
    q_ref, p_ref = run("ddim", schedule.num_steps, "uniform", offset, True)
    q, p = run(sampler, steps, spacing, offset, onset)
    total += np.sum((q - q_ref) ** 2) + np.sum((np.abs(p) - np.abs(p_ref)) ** 2)
  return float(total / len(offsets))


def frechet_error(schedule, stds, sampler: str, steps: int, spacing: str) -> float:
  if sampler == "ddim":
    _, out = exact_sampler_moments(schedule, steps, "ddim", 0.0, "small", 0.0, stds, spacing)
  else:
    _, out = exact_dpm_solver_moments(schedule, steps, 0.0, stds, spacing)
  return float(np.sum((out - stds) ** 2))


MODEL_SETTINGS = [(s, n, sp)
                  for s, ns in (("ddim", (20, 50, 100, 250)), ("dpmpp_2m", (10, 20, 50)))
                  for n in ns for sp in schedules.SPACINGS]


def model_errors(workdir: str, num_samples: int, batch_size: int, conditional: bool):
  """Prints a row per setting: network evaluations and RMS grey levels from DDIM-T."""
  import jax
  from jaxddpm import checkpoint, evaluate, guidance, sampling
  config, params = checkpoint.load_checkpoint(workdir)
  labels = np.arange(num_samples) % config.data.num_classes
  extra = dict(guidance_scale=1.0) if conditional else {}
  T = config.diffusion.num_timesteps

  def images(**kw):
    sample = sampling.make_sampler(config, with_stats=True, **extra, **kw)
    return evaluate.generate(sample, params, labels, jax.random.key(0),
                             batch_size=batch_size).astype(np.float64)

  ref = images(sampler="ddim", steps=T)
  for sampler, steps, spacing in MODEL_SETTINGS:
    if steps >= T:
      continue
    opts = sampling.resolve_options(config, dict(extra, sampler=sampler, steps=steps,
                                                 spacing=spacing))
    sched = sampling.step_schedule(
        schedules.from_config(config.diffusion), steps, spacing=spacing, sampler=sampler,
        guidance_scale=opts["guidance_scale"], guidance_interval=opts["guidance_interval"])
    guided = guidance.guided_steps(sched.alpha_bars, opts["guidance_interval"])
    evals = steps + (int(np.sum(guided)) if opts["guidance_scale"] != 1 else 0)
    err = np.sqrt(np.mean((images(sampler=sampler, steps=steps, spacing=spacing) - ref) ** 2))
    print(f"| {sampler} | {steps} | {spacing} | {evals} | {err:.2f} |", flush=True)


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--datasets", default="mnist,fmnist")
  p.add_argument("--steps", default="10,20,50,100,250")
  p.add_argument("--workdir", default="", help="also a trained model's step error")
  p.add_argument("--num_samples", type=int, default=100)
  p.add_argument("--batch_size", type=int, default=100)
  p.add_argument("--conditional", action="store_true", help="guidance 1, not the run's")
  p.add_argument("--guidance", default="1.5,3",
                 help="CFG scales for the class-Gaussian table, in the config's interval; 0: none")
  args = p.parse_args()
  if args.num_samples < 1 or args.batch_size < 1:
    p.error("--num_samples and --batch_size must be >= 1.")
  names = args.datasets.split(",")
  if set(names) - set(CONFIGS):
    p.error(f"--datasets: choose from {sorted(CONFIGS)}, got {args.datasets!r}.")
  try:
    steps_list = [int(s) for s in args.steps.split(",")]
  except ValueError:
    p.error(f"--steps: comma-separated step counts, got {args.steps!r}.")
  try:
    scales = [float(v) for v in args.guidance.split(",") if float(v) != 0]
  except ValueError:
    p.error(f"--guidance: comma-separated scales, got {args.guidance!r}.")
  if any(not v > 0 for v in scales):
    p.error(f"--guidance: scales must be > 0, got {args.guidance!r}.")
  from bench.quality import load_config
  for name in names:
    config = load_config(os.path.join(ROOT, CONFIGS[name]))
    stds = principal_stds(config)
    schedule = schedules.from_config(config.diffusion)
    d = config.diffusion
    print(f"\n{name}: {d.schedule} schedule, T={d.num_timesteps}; total variance "
          f"{np.sum(stds**2):.1f}, {np.sum(stds**2 > 1e-3)} of {len(stds)} axes with "
          f"variance > 1e-3. Pixel-space Frechet distance to the data Gaussian:\n")
    print("| sampler | spacing | " + " | ".join(f"{s} steps" for s in steps_list) + " |")
    print("|---|---|" + "---|" * len(steps_list))
    for sampler in ("ddim", "dpmpp_2m"):
      for spacing in schedules.SPACINGS:
        errs = [frechet_error(schedule, stds, sampler, s, spacing) for s in steps_list]
        print(f"| {sampler} | {spacing} | " + " | ".join(f"{e:.4f}" for e in errs) + " |")
    # The GPU configs' interval (the table's point is where guidance switches on).
    interval = tuple(config.sampling.guidance_interval) or base.EDM2_INTERVAL
    if scales:
      within, offsets = class_statistics(config)
    for scale in scales:
      print(f"\n{name}, class Gaussians, guidance {scale:g} for σ in ({interval[0]:g}, "
            f"{interval[1]:g}]: Frechet distance to the exact guided ODE's output:\n")
      print("| sampler | spacing | " + " | ".join(f"{s} steps" for s in steps_list) + " |")
      print("|---|---|" + "---|" * len(steps_list))
      for label, sampler, onset in (("ddim", "ddim", True), ("dpmpp_2m", "dpmpp_2m", True),
                                    ("dpmpp_2m (no onset step)", "dpmpp_2m", False)):
        for spacing in schedules.SPACINGS:
          errs = [guided_error(schedule, within, offsets, scale, interval, sampler, s, spacing,
                               onset) for s in steps_list]
          print(f"| {label} | {spacing} | " + " | ".join(f"{e:.4f}" for e in errs) + " |")
  if args.workdir:
    from jaxddpm import checkpoint
    config = checkpoint.load_config(args.workdir)
    s = config.sampling
    guide = ("1 (--conditional)" if args.conditional else f"{s.guidance_scale:g}" + (
        " for σ in ({:g}, {:g}]".format(*s.guidance_interval) if s.guidance_interval else ""))
    print(f"\n{args.workdir}: {args.num_samples} samples, guidance {guide}; RMS distance "
          f"in grey levels (0-255) from DDIM with all {config.diffusion.num_timesteps} "
          "steps, same x_T:\n")
    print("| sampler | steps | spacing | network evaluations | RMS from DDIM-T |")
    print("|---|---|---|---|---|")
    model_errors(args.workdir, args.num_samples, args.batch_size, args.conditional)


if __name__ == "__main__":
  try:
    main()
  except ValueError as e:
    sys.exit(f"error: {e}")
