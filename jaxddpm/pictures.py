"""Pictures of a model at work: the forward process, the reverse process (strip and
GIF), a guidance sweep and the training curves. Each function returns uint8 arrays;
`write_all` writes PNG / GIF files into a folder (`launch.py --mode=pictures`).
"""

from __future__ import annotations

import io
import os
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from jaxddpm import diffusion, files, guidance, images, models, parallel, plots, progress
from jaxddpm import sampling, xla
from jaxddpm import schedules as schedules_lib

PICTURES = ("forward", "reverse", "guidance", "curves")
GUIDANCE_SCALES = (0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0)


def _to_rgb(grid: np.ndarray) -> np.ndarray:
  return np.repeat(grid, 3, axis=-1) if grid.shape[-1] == 1 else grid


def forward_strip(schedule: schedules_lib.Schedule, images_uint8, timesteps: Sequence[int],
                  key: jax.Array) -> np.ndarray:
  """Rows: the given images; columns: x_t at each timestep (the seed's
  show_noise_progression). Returns a uint8 grid."""
  x0 = jnp.asarray(images_uint8, jnp.float32) / 127.5 - 1.0
  T = schedule.num_steps
  ts = [int(t) for t in timesteps]
  if not ts or min(ts) < 0 or max(ts) >= T:
    raise ValueError(f"timesteps must be in [0, T-1={T - 1}], got {ts}.")
  eps = jax.random.normal(key, x0.shape)  # One noise draw: columns differ only in t.
  cols = [diffusion.q_sample(schedule, x0, jnp.full((x0.shape[0],), t), eps) for t in ts]
  x = jnp.stack(cols, axis=1).reshape(-1, *x0.shape[1:])  # Row-major: image by image.
  return images.grid(images.to_uint8(np.asarray(x)), rows=x0.shape[0])


def reverse_frames(config, params, labels, key: jax.Array, *, num_frames: int = 10,
                   **sampling_overrides):
  """(x_t, x̂_0, timesteps) at num_frames evenly spaced sampler steps (the last is
  the final sample): float [F, B, H, W, C] twice and int [F]."""
  sample = sampling.make_sampler(config, with_trajectory=True, **sampling_overrides)
  final, info = parallel.to_host(sample(params, key, labels))  # Gathered across hosts.
  S = info["x_t"].shape[0]
  if num_frames < 2:
    raise ValueError(f"num_frames must be >= 2, got {num_frames}.")
  pick = np.unique(np.linspace(0, S - 1, min(num_frames - 1, S)).round().astype(int))
  x_t = np.concatenate([info["x_t"][pick], final[None]])
  x0 = np.concatenate([info["x0_pred"][pick], final[None]])
  ts = np.concatenate([info["timesteps"][pick], [-1]])  # -1: the finished sample.
  return x_t, x0, ts


def reverse_strip(x_t, x0) -> np.ndarray:
  """Two rows per label (x_t above, predicted x̂_0 below), one column per frame."""
  F, B = x_t.shape[:2]
  rows = np.stack([x_t, x0], axis=0)  # [2, F, B, ...]
  ordered = rows.transpose(2, 0, 1, *range(3, rows.ndim)).reshape(2 * B * F, *x_t.shape[2:])
  return images.grid(images.to_uint8(ordered), rows=2 * B)


def reverse_gif(path: str, x_t, x0, *, scale: int = 3, ms_per_frame: int = 150,
                title: str = "") -> str:
  """Animated GIF: each frame shows every label's x_t (top row) and x̂_0 (bottom),
  under `title` if one is given."""
  frames = []
  for f in range(x_t.shape[0]):
    pair = np.concatenate([x_t[f], x0[f]])
    grid = _to_rgb(images.grid(images.to_uint8(pair), rows=2))
    grid = np.kron(grid, np.ones((scale, scale, 1), np.uint8))
    frames.append(Image.fromarray(plots.caption(grid, title) if title else grid))
  frames += [frames[-1]] * 5  # Hold the result before looping.
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  gif = io.BytesIO()
  frames[0].save(gif, format="GIF", save_all=True, append_images=frames[1:],
                 duration=ms_per_frame, loop=0)
  return files.write_atomic(path, gif.getvalue())


def guidance_sweep(config, params, labels, key: jax.Array,
                   scales: Sequence[float] = GUIDANCE_SCALES, **sampling_overrides) -> np.ndarray:
  """Samples [S, B, H, W, C] for each guidance scale from the SAME noise, computed
  in one compiled call (the sampler vmapped over the scales)."""
  scales_np = np.asarray(scales, np.float32)
  if scales_np.ndim != 1 or scales_np.size == 0 or not np.all(scales_np >= 0):
    raise ValueError(f"guidance scales must be a non-empty list of numbers >= 0, got {scales}.")
  opts = sampling.resolve_options(config, sampling_overrides)
  labels = sampling.check_labels(labels, config.data.num_classes)
  model = models.build_model(config)
  schedule = schedules_lib.from_config(config.diffusion)
  shape = (config.data.image_size, config.data.image_size, config.data.channels)
  guide_model, guide_params = guidance.load_guide(config, opts["guide_workdir"])

  @xla.jit
  def run(params, guide_params, key, labels, scales):
    denoise, guided = guidance.make_denoisers(model, params)
    one = lambda s: sampling.sample_loop(
        denoise, schedule, key, labels, shape, sampler=opts["sampler"], steps=opts["steps"],
        spacing=opts["spacing"], eta=opts["eta"], guidance_scale=s,
        guidance_interval=opts["guidance_interval"], prediction=config.diffusion.prediction,
        sigma_data=config.diffusion.sigma_data,
        clip_x0=opts["clip_x0"], variance=opts["variance"], guided_fn=guided,
        guide_fn=guidance.make_guide_fn(guide_model, guide_params))
    return jax.vmap(one)(scales)

  return np.asarray(run(params, guide_params, key, labels, jnp.asarray(scales_np)))


def guidance_grid(samples_SB, scales, interval=()) -> np.ndarray:
  """One row per scale (labelled), one column per label; `interval`, where the
  scales applied only to some noise levels, is captioned above them all (some
  configs guide in an interval by default, and the scale alone would mislead)."""
  rows = [plots.caption(_to_rgb(images.grid(images.to_uint8(s), rows=1)), f"guidance {g:g}")
          for s, g in zip(samples_SB, scales)]
  tile = plots.tile(rows, cols=1, pad=2)
  if interval:
    tile = plots.caption(tile, "sigma in ({:g}, {:g}]".format(*interval))
  return tile


def training_curves(records: list[dict]) -> np.ndarray:
  """Loss (train and validation), learning rate and any sample metrics against the
  step, from metrics.jsonl records."""
  def series(key, label=""):
    # None: a value that was not finite (metrics.jsonl is strict JSON, files.json_text).
    pts = [(r["step"], r[key]) for r in records if r.get(key) is not None and "step" in r]
    return (label or key, np.array([p[0] for p in pts]), np.array([p[1] for p in pts]))

  loss, val = series("loss", "train"), series("val_loss", "validation")
  if loss[1].size == 0:
    raise ValueError("no training records (step, loss) in the metrics to plot.")
  panels = [plots.line_panel([s for s in (loss, val) if s[1].size], title="loss",
                             xlabel="step", log_y=True),
            plots.line_panel([series("lr")], title="learning rate", xlabel="step")]
  for key, title in (("eval_frechet_distance", "Frechet distance (samples)"),
                     ("eval_conditional_accuracy", "conditional accuracy (samples)")):
    s = series(key)
    if s[1].size:
      panels.append(plots.line_panel([s], title=title, xlabel="step"))
  return plots.tile(panels, cols=2)


def write_all(workdir: str, out_dir: str, *, which: str = "best", labels=None, seed: int = 0,
              pictures: Sequence[str] = PICTURES, title: str = "",
              **sampling_overrides) -> list[str]:
  """Writes the chosen pictures of a workdir's model into out_dir. Returns paths.
  `labels`: int [B] classes or float [B, K] attributes (default: the first ten
  classes, or the grid's attribute rows); `title`: a caption above each PNG (the
  stand-in notice). On several hosts each host runs the sampling (split across
  them) and the first host alone writes the files."""
  from jaxddpm import attributes, checkpoint, data  # Local: keeps this module light.
  unknown = sorted(set(pictures) - set(PICTURES))
  if unknown:
    raise ValueError(f"unknown picture(s) {unknown}; choose from {PICTURES}.")
  config = checkpoint.load_config(workdir)
  key = jax.random.key(seed)
  C = config.data.num_classes
  if labels is None:
    labels = (np.arange(min(C, 10)) if config.data.conditioning == "class"
              else attributes.rows_for(workdir, None, 1, seed)[0])
  labels = np.asarray(sampling.check_labels(labels, C))  # Range and shape, before any work.
  lead = jax.process_index() == 0  # Multi-host: every host samples, the first writes.
  written = []
  png = lambda path, picture: images.write_png(path, plots.caption(picture, title)
                                               if title else picture)

  def put(name: str, write: Callable[[str], Any]) -> None:
    path = os.path.join(out_dir, name)
    if lead:
      write(path)
    written.append(path)

  if "curves" in pictures:
    records = progress.read_metrics(os.path.join(workdir, "metrics.jsonl")) if os.path.isfile(
        os.path.join(workdir, "metrics.jsonl")) else []
    curves = training_curves(records)
    put("curves.png", lambda p: png(p, curves))
  if "forward" in pictures:
    test = data.load_split(config.data, "test")
    if config.data.conditioning == "class":
      idx = [int(np.flatnonzero(test.labels == c)[0]) for c in labels]
    else:
      idx = list(range(len(labels)))
    T = config.diffusion.num_timesteps
    ts = np.linspace(0, T - 1, 9).round().astype(int)
    strip = forward_strip(schedules_lib.from_config(config.diffusion), test.images[idx], ts, key)
    put("forward.png", lambda p: png(p, strip))
  if "reverse" in pictures or "guidance" in pictures:
    _, params = checkpoint.load_checkpoint(workdir, which=which)
  if "reverse" in pictures:
    x_t, x0, _ = reverse_frames(config, params, labels, key, **sampling_overrides)
    put("reverse.png", lambda p: png(p, reverse_strip(x_t, x0)))
    put("reverse.gif", lambda p: reverse_gif(p, x_t, x0, title=title))
  if "guidance" in pictures:
    overrides = {k: v for k, v in sampling_overrides.items() if k != "guidance_scale"}
    sweep = guidance_sweep(config, params, labels, key, GUIDANCE_SCALES, **overrides)
    interval = sampling.resolve_options(config, overrides)["guidance_interval"]
    put("guidance.png", lambda p: png(p, guidance_grid(sweep, GUIDANCE_SCALES, interval)))
  return written
