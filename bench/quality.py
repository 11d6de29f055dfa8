"""Sample quality of a trained model across samplers, steps and guidance scales.
Time: the sampling, per setting: 2,000 DDIM-50 samples of a `:cpu` model take ~8
minutes on a 2-core CPU; 10,000 of a GPU model 10-60 s on one GPU.

  python bench/quality.py --config configs/mnist.py:cpu --workdir runs/mnist_cpu
  python bench/quality.py --workdir runs/fmnist_cpu --sweeps default,dpm_steps \
      --num_samples 2000 --grids docs/quality/fmnist_cpu

Trains the config into --workdir first when it holds no checkpoint (and reports
the training wall time), else reuses it. Each setting generates --num_samples
images (classes cycled; 10,000 = 1,000 per class) from the same key and reports
conditional accuracy, Frechet distance (evaluator-classifier features), precision
and recall, beside the same metrics for as many held-out real train images (the
floor; the evaluator classifier never saw them, as it never saw the samples).
Prints a Markdown table; --json appends one JSON line per setting.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from jaxddpm import checkpoint, evaluate, files, images, sampling  # noqa: E402

# Sweeps that name a guidance scale guide every step (PLAIN) unless they give an
# interval: some dataset configs default to one (configs/mnist.py, fmnist.py), and
# a sweep must mean the same on every config. The others inherit the config's guidance.
PLAIN = dict(guidance_interval=())

SWEEPS = {
    "default": lambda c, guide: [{}],
    # Autoguidance (Karras et al. 2024) by --guide_workdir's model, around the
    # scales where a guide's extrapolation is usually best.
    "autoguidance": lambda c, guide: [dict(sampler="ddim", steps=50, guidance_scale=s,
                                           guide_workdir=guide, **PLAIN)
                                      for s in (2.0, 2.5, 3.0)],
    "guidance": lambda c, guide: [dict(sampler="ddim", steps=50, guidance_scale=s, **PLAIN)
                                  for s in (0.0, 1.0, 2.0, 3.0, 5.0, 7.0)],
    # Around guidance 2 (the :cpu configs' default), for the Frechet distance of strong
    # models: guidance trades distance for accuracy.
    "guidance_fine": lambda c, guide: [dict(sampler="ddim", steps=50, guidance_scale=s, **PLAIN)
                                       for s in (1.0, 1.5, 2.0)],
    # Below the default, where a strong model's distance is lowest, and guidance 1
    # with twice the steps: is what remains the sampler's discretisation or the model?
    "guidance_low": lambda c, guide: [dict(sampler="ddim", steps=50, guidance_scale=1.25, **PLAIN),
                                      dict(sampler="ddim", steps=100, guidance_scale=1.0, **PLAIN)],
    # Guidance only at middle noise levels (Kynkäänniemi et al. 2024; (0.28, 5.42]
    # is their EDM2 interval, in the same σ): less mode-seeking at high noise.
    "guidance_interval": lambda c, guide: [
        dict(sampler="ddim", steps=50, guidance_scale=s, guidance_interval=iv)
        for s, iv in ((2.0, (0.28, 5.42)), (3.0, (0.28, 5.42)), (2.0, (1.0, np.inf)),
                      (2.0, (0.0, 1.0)))],
    # Guidance only at the noisiest steps, where a class is decided: accuracy from
    # guidance, the rest of the sample from the conditional model alone. (On the MNIST
    # GPU model, worse than plain guidance at equal accuracy.) First plain guidance 1.1,
    # between guidance_fine's 1 and guidance_low's 1.25 (first: a timeout keeps it).
    "guidance_early": lambda c, guide: [dict(sampler="ddim", steps=50, guidance_scale=1.1,
                                             **PLAIN)] + [
        dict(sampler="ddim", steps=50, guidance_scale=s, guidance_interval=iv)
        for s, iv in ((2.0, (5.42, np.inf)), (3.0, (5.42, np.inf)), (2.0, (1.0, np.inf)))],
    # Small scales in the EDM2 interval: the best accuracy-for-distance trade found
    # near 99% on the MNIST GPU model.
    "guidance_mid": lambda c, guide: [
        dict(sampler="ddim", steps=50, guidance_scale=s, guidance_interval=(0.28, 5.42))
        for s in (1.25, 1.5)],
    # Has the sampler converged? On the Fashion-MNIST GPU model DDIM-50 had not (DDIM-100
    # at guidance 1: 1.95 against 2.75): more steps at guidance 1, where the distance is
    # lowest, and DDIM-250 at guidance 2, the reference DPM-Solver++ is measured against.
    "converged": lambda c, guide: [
        dict(sampler=s, steps=n, guidance_scale=g, **PLAIN)
        for s, n, g in (("dpmpp_2m", 20, 1.0), ("ddim", 250, 1.0), ("dpmpp_2m", 50, 1.0),
                        ("ddim", 250, 2.0))
        if n <= c.diffusion.num_timesteps],
    # The same question at the config's own guidance (a scale in an interval on the
    # GPU configs): DDIM-250 there is also DPM-Solver++'s reference at that guidance
    # (dpm_steps gives DPM++ 10, 20).
    "converged_default": lambda c, guide: [
        dict(sampler=s, steps=n) for s, n in (("ddim", 250), ("dpmpp_2m", 50), ("ddim", 100))
        if n <= c.diffusion.num_timesteps],
    # Timestep spacing (schedules.SPACINGS) at the config's guidance: DPM-Solver++ with
    # log-SNR-even steps (its authors' choice), against its uniform steps (dpm_steps)
    # and DDIM's; DDIM-250 with uniform steps (converged_default) is the reference.
    # Then DPM-Solver++ 20 unguided, where log-SNR steps cut its step error most
    # (docs/results.md, "Samplers: step error"), then DPM-Solver++ 50.
    "spacing": lambda c, guide: [
        dict(sampler=s, steps=n, spacing="logsnr")
        for s, n in (("dpmpp_2m", 20), ("dpmpp_2m", 10), ("ddim", 50))
        if n <= c.diffusion.num_timesteps] + [
        dict(sampler="dpmpp_2m", steps=20, spacing="logsnr", guidance_scale=1.0, **PLAIN)] + [
        dict(sampler="dpmpp_2m", steps=50, spacing="logsnr")
        for _ in range(50 <= c.diffusion.num_timesteps)],
    # The GPU quality checks in the fewest settings, most needed first (a device
    # call's timeout keeps the settings done): the config's default (accuracy and
    # distance), DPM-Solver++ 20 with log-SNR steps against its reference DDIM-250,
    # then unguided DDIM-250, the lowest distance measured on the GPU models, then
    # DPM-Solver++ 20's uniform steps and unguided log-SNR steps.
    "targets": lambda c, guide: [{}] + [
        dict(sampler=s, steps=n, **kw)
        for s, n, kw in (("dpmpp_2m", 20, dict(spacing="logsnr")), ("ddim", 250, {}),
                         ("ddim", 250, dict(guidance_scale=1.0, **PLAIN)),
                         ("dpmpp_2m", 20, {}),
                         ("dpmpp_2m", 20, dict(spacing="logsnr", guidance_scale=1.0, **PLAIN)))
        if n <= c.diffusion.num_timesteps],
    "ddim_steps": lambda c, guide: [dict(sampler="ddim", steps=s)  # At most T steps.
                                    for s in (10, 20, 50, 100, 250)
                                    if s <= c.diffusion.num_timesteps],
    # DDIM's noise: 0 deterministic, 1 about DDPM's ancestral step on the respaced
    # schedule. Fresh noise at each step can correct a model's errors, at the cost
    # of more steps to converge.
    "eta": lambda c, guide: [dict(sampler="ddim", steps=50, eta=e) for e in (0.0, 0.5, 1.0)],
    "dpm_steps": lambda c, guide: [dict(sampler="dpmpp_2m", steps=s) for s in (10, 20)],
    "ddpm": lambda c, guide: [dict(sampler="ddpm", steps=c.diffusion.num_timesteps)],
}


def _settings(config, sweeps, guide: str = ""):
  """Full sampler settings for the requested sweeps, without duplicates (`guide`:
  the autoguidance sweep's guide workdir)."""
  seen, out = set(), []
  for name in sweeps:
    if name not in SWEEPS:
      raise ValueError(f"unknown sweep {name!r}; choose from {sorted(SWEEPS)}.")
    for overrides in SWEEPS[name](config, guide):
      # A setting that names its sampler means uniform steps unless it names a
      # spacing, whatever the config's (fmnist.py's GPU default is log-SNR), as a
      # named guidance scale names its interval (PLAIN): a sweep means the same on
      # every config.
      if "sampler" in overrides:
        overrides = {"spacing": "uniform", **overrides}
      full = dict(config.sampling, **overrides)
      key = tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in full.items()))
      if key not in seen:
        seen.add(key)
        out.append(overrides)
  return out


def load_config(config_path: str):
  """The config of "path/to/config.py[:variant]", as launch.py's --config takes it."""
  import importlib.util
  path, _, variant = config_path.partition(":")
  spec = importlib.util.spec_from_file_location("bench_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(variant or None)


def _train_if_needed(config_path, workdir):
  if checkpoint.has_checkpoint(workdir):
    return None
  if not config_path:
    raise ValueError(f"{workdir} holds no checkpoint; give --config to train it first.")
  from jaxddpm import loop
  config = load_config(config_path)
  t0 = time.perf_counter()
  loop.train_and_evaluate(config, workdir)
  return time.perf_counter() - t0


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--workdir", required=True)
  p.add_argument("--config", default="", help="config to train with if workdir is empty")
  p.add_argument("--num_samples", type=int, default=10_000)
  p.add_argument("--sweeps", default="default,guidance,ddim_steps,dpm_steps,ddpm")
  p.add_argument("--batch_size", type=int, default=500)
  p.add_argument("--which", default="best", choices=("best", "latest"))
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--grids", default="", help="folder for a 10-per-class grid per setting")
  p.add_argument("--json", default="", help="append one JSON line per setting here")
  p.add_argument("--guide_workdir", default="", help="the guide model of the autoguidance "
                 "sweep (a smaller, shorter-trained run on the same data and diffusion)")
  args = p.parse_args()
  sweeps = args.sweeps.split(",")
  if "autoguidance" in sweeps and not args.guide_workdir:
    p.error("the autoguidance sweep needs --guide_workdir (train a guide first: README, "
            "'Autoguidance').")
  unknown = sorted(set(sweeps) - set(SWEEPS))
  if unknown:
    p.error(f"unknown sweep(s) {unknown}; choose from {sorted(SWEEPS)}.")
  if args.num_samples < 10 or args.batch_size < 1:
    p.error("--num_samples must be >= 10 (one per class and more than the k of precision "
            "and recall) and --batch_size >= 1.")

  train_seconds = _train_if_needed(args.config, args.workdir)
  config, params = checkpoint.load_checkpoint(args.workdir, which=args.which)
  spec = evaluate.classifier_spec(config)
  evaluate.check_floor_size(args.num_samples, spec.holdout)  # Before a classifier trains.
  evaluator = evaluate.make_evaluator(config.data, cache_dir=config.eval.cache_dir or None,
                                      spec=spec,
                                      k=config.eval.pr_k)
  n = args.num_samples
  floor = evaluator.floor(n)
  labels = evaluator.generation_labels(n)
  print(f"workdir {args.workdir} ({args.which} checkpoint), {n} samples per setting, "
        f"{jax.devices()[0].device_kind}; training: "
        + (f"{train_seconds / 60:.1f} min" if train_seconds else "reused (not timed here)"))
  print(f"classifier {evaluator.classifier['key']}: test accuracy "
        f"{evaluator.classifier['test_accuracy']:.4f}\n")
  header = ("| sampler | steps | guidance | cond. acc. | Frechet dist. | precision | recall "
            "| sample s (of which compile) |")
  print(header + "\n" + "|---" * 8 + "|")
  f = floor
  print(f"| held-out real train images (floor) | - | - | {f['conditional_accuracy']:.4f} | "
        f"{f['frechet_distance']:.3f} | {f['precision']:.3f} | {f['recall']:.3f} | - |",
        flush=True)
  for overrides in _settings(config, sweeps, args.guide_workdir):
    opts = sampling.resolve_options(config, overrides)
    sample = sampling.make_sampler(config, with_stats=True, **overrides)
    key = jax.random.key(args.seed)
    times = []
    imgs = evaluate.generate(sample, params, labels, key, batch_size=args.batch_size,
                             batch_seconds=times)
    seconds = sum(times)
    # The first batch also compiles: its excess over the others' median.
    # (Unknown with a single batch: then the total includes compiling.)
    compile_s = max(times[0] - float(np.median(times[1:])), 0.0) if len(times) > 1 else None
    m = evaluator.evaluate(imgs, labels)
    interval = opts["guidance_interval"]
    guidance = f"{opts['guidance_scale']:g}" + (
        " for σ in ({:g}, {:g}]".format(*interval) if interval else "") + (
        f" (autoguidance by {opts['guide_workdir']})" if opts["guide_workdir"] else "")
    sampler = opts["sampler"] + (f" η={opts['eta']:g}" if opts["sampler"] == "ddim"
                                 and opts["eta"] else "") + (
        f", {opts['spacing']} steps" if opts["spacing"] != "uniform" else "")
    print(f"| {sampler} | {opts['steps']} | {guidance} | "
          f"{m['conditional_accuracy']:.4f} | {m['frechet_distance']:.3f} | "
          f"{m['precision']:.3f} | {m['recall']:.3f} | {seconds:.0f} "
          f"({'-' if compile_s is None else f'{compile_s:.0f}'}) |",
          flush=True)
    if args.grids:
      per_class = np.concatenate([imgs[labels == c][:10] for c in range(config.data.num_classes)])
      images.write_png(os.path.join(args.grids, sampling.settings_name(opts) + ".png"),
                       images.class_grid(per_class.astype(np.float32) / 127.5 - 1.0,
                                         config.data.num_classes))
    if args.json:
      with open(args.json, "a") as fh:
        fh.write(files.json_text(dict(workdir=args.workdir, settings=opts, metrics=m,
                                      floor=floor, sample_seconds=seconds,
                                      compile_seconds=compile_s,
                                      train_seconds=train_seconds)) + "\n")


if __name__ == "__main__":
  try:
    main()
  except ValueError as e:  # A bad workdir, config or option: what jaxddpm said, no trace.
    sys.exit(f"error: {e}")
