"""The seed report's sampling failure, reproduced on a jaxddpm model, beside the fix.
About 5 minutes on a 2-core CPU (two 1,000-step DDPM runs of 20 images).

  python bench/seed_failure.py --workdir runs/mnist_cpu --out docs/seed_failure.png

Rows, all from the same checkpoint and the same x_T:
  1. the seed's update: DDPM in ε-form, x_{t-1} = (x_t - β_t/sqrt(1-ᾱ_t) ε̂)/sqrt(α_t)
     + sqrt(β_t) z, with the cosine schedule's β *not* clipped (β_{T-1} = 1), no
     clipping of x̂_0, and guidance 7;
  2. the same update with β clipped at 0.999 (what jaxddpm's schedule does),
     still without x̂_0 clipping, guidance 7;
  3. jaxddpm's default sampler for the config (DDIM, x̂_0 clipped, its guidance).
Each row: the samples, then std(x_t), max |x_t| and the fraction of x̂_0 outside
[-1, 1] per step (sampler diagnostics). The model is conditioned on its own
training timesteps throughout; only the update rule differs.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from jaxddpm import (checkpoint, diagnostics, diffusion, guidance, images,  # noqa: E402
                     models, plots, sampling, schedules)


def seed_update_sampler(denoise_fn, train_schedule, betas, key, labels, shape, *,
                        guidance_scale, prediction, sigma_data=diffusion.SIGMA_DATA):
  """The seed's DDPM loop over all T steps as a lax.scan; returns (x_0, stats)."""
  b = np.asarray(betas, np.float64)
  alphas = jnp.asarray(1.0 - b, jnp.float32)
  alpha_bars = jnp.asarray(np.cumprod(1.0 - b), jnp.float32)
  betas32 = jnp.asarray(b, jnp.float32)
  B = labels.shape[0]
  k_init, k_steps = jax.random.split(key)
  x_T = jax.random.normal(k_init, (B, *shape), jnp.float32)

  def body(x_t, t):
    t_B = jnp.full((B,), t)
    # The model's output read as ε̂ through its own training schedule.
    train_ab = jnp.full((B,), train_schedule.alpha_bars[t])
    pred = guidance.guided_prediction(
        denoise_fn, diffusion.model_input(x_t, train_ab, prediction, sigma_data), t_B, labels,
        guidance_scale)
    _, eps = diffusion.to_x0_eps(pred, x_t, train_ab, prediction, sigma_data)
    ab = alpha_bars[t]
    x0_implied = (x_t - jnp.sqrt(1 - ab) * eps) / jnp.sqrt(ab)
    mean = (x_t - betas32[t] / jnp.sqrt(1 - ab) * eps) / jnp.sqrt(alphas[t])
    z = jax.random.normal(jax.random.fold_in(k_steps, t), x_t.shape)
    x_prev = mean + jnp.where(t > 0, jnp.sqrt(betas32[t]), 0.0) * z
    stats = dict(std=jnp.std(x_t), max_abs=jnp.max(jnp.abs(x_t)),
                 clip_fraction=jnp.mean((jnp.abs(x0_implied) > 1).astype(jnp.float32)))
    return x_prev, stats

  T = b.shape[0]
  timesteps = jnp.arange(T - 1, -1, -1)
  samples, stats = jax.lax.scan(body, x_T, timesteps)
  stats["timesteps"] = timesteps
  return samples, stats


def _row(title, samples, stats, rows):
  x = np.nan_to_num(np.asarray(samples, np.float32), nan=0.0, posinf=1.0, neginf=-1.0)
  grid = images.class_grid(x, rows)
  if grid.shape[-1] == 1:
    grid = np.repeat(grid, 3, axis=-1)
  scale = max(1, 250 // grid.shape[0])
  grid = np.kron(grid, np.ones((scale, scale, 1), np.uint8))
  message = diagnostics.divergence_message(stats)
  status = message.split(";")[0] if message else "stable"
  return plots.caption(plots.tile([grid, *diagnostics.stats_panels(stats)], cols=4),
                       f"{title} -- {status}")


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--workdir", required=True)
  p.add_argument("--out", default="docs/seed_failure.png")
  p.add_argument("--per_class", type=int, default=2)
  p.add_argument("--guidance", type=float, default=7.0, help="the seed's guidance scale")
  p.add_argument("--seed", type=int, default=0)
  args = p.parse_args()

  config, params = checkpoint.load_checkpoint(args.workdir)
  model = models.build_model(config)
  train_schedule = schedules.from_config(config.diffusion)
  d = config.diffusion
  shape = (config.data.image_size, config.data.image_size, config.data.channels)
  C = config.data.num_classes
  labels = jnp.asarray(np.repeat(np.arange(C), args.per_class), jnp.int32)
  denoise = lambda x, t, y, use: model.apply({"params": params}, x, t, y, use, train=False)
  key = jax.random.key(args.seed)
  rows = []
  for title, max_beta in (("seed update: cosine beta NOT clipped, no x0 clip", 1.0),
                          ("seed update: beta clipped at 0.999, no x0 clip", d.max_beta)):
    betas = schedules.cosine_betas(d.num_timesteps, d.cosine_s, max_beta)
    run = jax.jit(lambda k: seed_update_sampler(
        denoise, train_schedule, betas, k, labels, shape, guidance_scale=args.guidance,
        prediction=d.prediction, sigma_data=d.sigma_data))
    t0 = time.perf_counter()
    x, stats = jax.device_get(run(key))
    print(f"{title}: {time.perf_counter() - t0:.0f} s; "
          f"{diagnostics.divergence_message(stats) or 'stable'}", flush=True)
    rows.append(_row(f"{title}, DDPM {d.num_timesteps} steps, guidance {args.guidance:g}",
                     x, stats, C))
  s = config.sampling
  sample = sampling.make_sampler(config, with_stats=True)
  t0 = time.perf_counter()
  x, stats = jax.device_get(sample(params, key, labels))
  print(f"jaxddpm default: {time.perf_counter() - t0:.0f} s; "
        f"{diagnostics.divergence_message(stats) or 'stable'}", flush=True)
  rows.append(_row(f"jaxddpm default: {s.sampler} {s.steps} steps, x0 clipped, guidance "
                   f"{s.guidance_scale:g}", x, stats, C))
  figure = plots.tile(rows, cols=1)
  print("wrote", images.write_png(args.out, plots.caption(
      figure, f"{args.workdir} ({d.prediction}-prediction, cosine T={d.num_timesteps}); "
      "rows of samples are classes 0-9")))


if __name__ == "__main__":
  main()
