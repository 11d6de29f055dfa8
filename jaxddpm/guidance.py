"""Guidance: how the conditional prediction is pushed away from a "negative" one.

Classifier-free guidance (CFG) uses the model's own unconditional prediction as
the negative; autoguidance (Karras et al. 2024) uses a weaker model's conditional
prediction: a smaller model trained for less on the same data and diffusion, whose
errors are the kind the main model makes too, only larger, so extrapolating away
from them removes some of the main model's. Either may be limited to an interval
of noise levels (Kynkäänniemi et al. 2024). `sampling.sample_loop` calls these.
"""

from __future__ import annotations

from typing import Callable

import jax.numpy as jnp
import numpy as np

DenoiseFn = Callable[[jnp.ndarray, jnp.ndarray, jnp.ndarray, jnp.ndarray], jnp.ndarray]


def guided_prediction(denoise_fn: DenoiseFn, x_t, t_B, labels, guidance_scale,
                      guided_fn=None, guide_fn=None):
  """Guidance: negative + s·(cond - negative), from batched calls.

  The negative prediction is the model's own unconditional one (CFG, one batched
  call of both halves) or, with `guide_fn(x_t, t, labels)`, a weaker model's
  conditional prediction (autoguidance, Karras et al. 2024: the guide is the same
  kind of model, smaller and trained for less; both predict the same quantity).
  A Python-number scale of exactly 1 (or 0) needs only the conditional (or the
  negative) prediction, so it costs one pass, not two. `guided_fn(x_t, t, labels,
  s)`, when given, computes CFG itself (a model that shares work between the
  halves, see `make_denoisers`); autoguidance does not use it.
  """
  B = x_t.shape[0]
  python_scale = isinstance(guidance_scale, (int, float))
  if guide_fn is not None:
    if python_scale and guidance_scale == 0:
      return guide_fn(x_t, t_B, labels)
    cond = denoise_fn(x_t, t_B, labels, jnp.ones((B,), bool))
    if python_scale and guidance_scale == 1:
      return cond
    cond, guide = cond.astype(jnp.float32), guide_fn(x_t, t_B, labels).astype(jnp.float32)
    return guide + guidance_scale * (cond - guide)
  if python_scale and guidance_scale in (0, 1):
    use = jnp.full((B,), guidance_scale == 1)
    return denoise_fn(x_t, t_B, labels, use)
  if guided_fn is not None:
    return guided_fn(x_t, t_B, labels, guidance_scale)
  both = lambda a: jnp.concatenate([a, a], axis=0)
  use = jnp.concatenate([jnp.ones((B,), bool), jnp.zeros((B,), bool)])
  pred = denoise_fn(both(x_t), both(t_B), both(labels), use)
  cond, uncond = pred[:B], pred[B:]
  return uncond + guidance_scale * (cond - uncond)


def guided_steps(alpha_bars, guidance_interval) -> np.ndarray:
  """bool [S]: which steps apply guidance, given their ᾱ. The interval is in the
  noise level σ = sqrt((1-ᾱ)/ᾱ) (x_t/sqrt(ᾱ) = x_0 + σ·ε, the EDM σ), so it means
  the same for any schedule and step count: guidance where σ_low < σ <= σ_high
  (Kynkäänniemi et al. 2024, "Applying guidance in a limited interval"); the
  conditional prediction (s = 1) elsewhere. () guides every step."""
  ab = np.asarray(alpha_bars, np.float64)
  if not guidance_interval:
    return np.ones(ab.shape, bool)
  lo, hi = guidance_interval
  with np.errstate(divide="ignore"):
    sigma = np.sqrt((1.0 - ab) / ab)  # +inf where ᾱ = 0 (zero terminal SNR).
  return (sigma > lo) & (sigma <= hi)


def onset_steps(alpha_bars, guidance_interval) -> np.ndarray:
  """bool [S]: steps where guidance switches on as the sampler steps down: step i is
  guided and step i + 1 (the noisier one before it) is not. None without an
  interval or where guidance starts at the first step. Here the prediction jumps
  by (s - 1)·(cond - uncond), which is large at high noise; where guidance switches
  off, at low noise, the two predictions have nearly met."""
  g = guided_steps(alpha_bars, guidance_interval)
  return np.concatenate([g[:-1] & ~g[1:], [False]])


def onset_timesteps(alpha_bars, guidance_interval) -> np.ndarray:
  """Training timesteps (alpha_bars of the full schedule) where guidance switches on
  (onset_steps): int [0-1], the top of the interval below T-1. Samplers that must
  not step across the jump step from there (sampling.step_schedule)."""
  return np.flatnonzero(onset_steps(alpha_bars, guidance_interval))


def make_denoisers(model, params) -> tuple[DenoiseFn, Callable | None]:
  """(denoise_fn, guided_fn) for `sample_loop` from a jaxddpm model and its params;
  guided_fn is None unless the model computes CFG itself (TemplateUNet: its encoder
  does not see the label, so both halves share one encoder pass)."""
  def denoise_fn(x_t, t, labels, use_labels):
    return model.apply({"params": params}, x_t, t, labels, use_labels, train=False)

  def guided_fn(x_t, t, labels, scale):
    return model.apply({"params": params}, x_t, t, labels, train=False, guidance_scale=scale)

  return denoise_fn, (guided_fn if getattr(model, "shares_guidance_encoder", False) else None)


def make_guide_fn(guide_model, guide_params) -> Callable | None:
  """`guide_fn(x_t, t, labels)` for `sample_loop`: the guide model's conditional
  prediction (autoguidance); None without a guide model (CFG)."""
  if guide_model is None:
    return None

  def guide_fn(x_t, t, labels):
    use = jnp.ones((x_t.shape[0],), bool)
    return guide_model.apply({"params": guide_params}, x_t, t, labels, use, train=False)
  return guide_fn


# What a guide must share with the model it guides: the images and labels it was
# trained on, and the noise schedule and prediction target (so that the same t means
# the same noise level and the predictions can be mixed as they are). Model size,
# training length and optimisation may (and should) differ.
GUIDE_MUST_MATCH = {
    "data": ("dataset", "image_size", "channels", "num_classes", "conditioning"),
    "diffusion": ("schedule", "num_timesteps", "beta_start", "beta_end", "cosine_s",
                  "max_beta", "zero_terminal_snr", "prediction", "sigma_data"),
}


def check_guide(config, guide_config, where: str = "the guide") -> None:
  """ValueError naming every field where the guide's config differs from the model's."""
  diffs = [f"{section}.{name}: {guide_config[section][name]!r} (model: {config[section][name]!r})"
           for section, names in GUIDE_MUST_MATCH.items() for name in names
           if _plain(guide_config[section][name]) != _plain(config[section][name])]
  if diffs:
    raise ValueError(
        f"{where} cannot guide this model: " + "; ".join(diffs) + ". Autoguidance needs a "
        "guide trained on the same data with the same diffusion settings (a smaller model, "
        "trained for less): train one with the model's config and smaller "
        "--config.model.* and --config.train.num_steps.")


def _plain(v):
  return tuple(v) if isinstance(v, list) else v


def load_guide(config, guide_workdir: str):
  """(guide_model, guide_params) from a workdir (its best checkpoint, else its
  latest), checked against `config`; (None, None) for "" (no guide: CFG)."""
  if not guide_workdir:
    return None, None
  from jaxddpm import checkpoint, models  # Local: sampling stays light for the API.
  try:
    guide_config, guide_params = checkpoint.load_checkpoint(guide_workdir, which="best")
  except ValueError as e:
    raise ValueError(f"sampling.guide_workdir={guide_workdir!r}: {e}") from e
  check_guide(config, guide_config, where=f"the guide in {guide_workdir}")
  return models.build_model(guide_config), guide_params
