"""Forward process, prediction parameterisations and the training loss.

With a = sqrt(ᾱ_t) and s = sqrt(1 - ᾱ_t) (so a² + s² = 1):
  x_t = a·x_0 + s·ε                       (q_sample)
  v   = a·ε - s·x_0                       (Salimans & Ho 2022)
  x_0 = (x_t - s·ε)/a = a·x_t - s·v,  ε = (x_t - a·x_0)/s = s·x_t + a·v.
Conversions take ᾱ per example rather than (schedule, t), so the loss (full
schedule) and the samplers (respaced schedule) share them.

"edm" is EDM's preconditioning (Karras et al. 2022, Table 1) written for x_t: with
σ = s/a, data of standard deviation σ_d and r = sqrt(s² + a²·σ_d²) (the standard
deviation of x_t), the network F sees c_in·x_t = x_t/r and
  x̂_0 = c_skip·x_t + c_out·F,   c_skip = a·σ_d²/r²,   c_out = s·σ_d/r,
so its target F = (s·x_0 - a·σ_d²·ε)/(σ_d·r) has unit variance at every noise
level. At σ_d = 1 (r = 1) F = -v: v-prediction is this preconditioning for data of
unit variance. The network's noise input stays the schedule's timestep.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxddpm import schedules as schedules_lib

PREDICTIONS = ("eps", "x0", "v", "edm")
SIGMA_DATA = 0.5  # EDM's σ_d for images in [-1, 1].
WEIGHTINGS = ("uniform", "min_snr")
NOISE_LEVELS = ("uniform", "lognormal")


def check_prediction(prediction: str) -> None:
  if prediction not in PREDICTIONS:
    raise ValueError(f"unknown prediction type {prediction!r}; choose one of {PREDICTIONS}.")


def _bcast(coef_B: jnp.ndarray, like: jnp.ndarray) -> jnp.ndarray:
  """[B] -> [B,1,1,...] to broadcast against an image batch."""
  return jnp.reshape(coef_B, coef_B.shape + (1,) * (like.ndim - coef_B.ndim))


def q_sample(schedule: schedules_lib.Schedule, x0: jnp.ndarray, t: jnp.ndarray,
             noise: jnp.ndarray) -> jnp.ndarray:
  """Samples q(x_t | x_0) = N(sqrt(ᾱ_t) x_0, (1-ᾱ_t) I). x0, noise [B,...], t int [B]."""
  a = _bcast(schedule.sqrt_alpha_bars[t], x0)
  s = _bcast(schedule.sqrt_one_minus_alpha_bars[t], x0)
  return a * x0 + s * noise


def check_sigma_data(sigma_data) -> None:
  if not (isinstance(sigma_data, (int, float)) and sigma_data > 0):
    raise ValueError(f"diffusion.sigma_data must be a number > 0 (the data's standard "
                     f"deviation; 0.5 usual for images in [-1, 1]), got {sigma_data!r}.")


def _edm_r(alpha_bar_B: jnp.ndarray, sigma_data: float) -> jnp.ndarray:
  """sqrt(s² + a²·σ_d²): the standard deviation of x_t for data of std σ_d."""
  return jnp.sqrt((1.0 - alpha_bar_B) + alpha_bar_B * sigma_data**2)


def model_input(x_t: jnp.ndarray, alpha_bar_B: jnp.ndarray, prediction: str,
                sigma_data: float = SIGMA_DATA) -> jnp.ndarray:
  """What the network sees: x_t, or c_in·x_t = x_t/r under "edm"."""
  if prediction != "edm":
    return x_t
  return x_t / _bcast(_edm_r(alpha_bar_B, sigma_data), x_t).astype(x_t.dtype)


def target(x0: jnp.ndarray, eps: jnp.ndarray, alpha_bar_B: jnp.ndarray,
           prediction: str, sigma_data: float = SIGMA_DATA) -> jnp.ndarray:
  """What a `prediction`-type model should output for (x_0, ε) at ᾱ."""
  check_prediction(prediction)
  if prediction == "eps":
    return eps
  if prediction == "x0":
    return x0
  a = _bcast(jnp.sqrt(alpha_bar_B), x0)
  s = _bcast(jnp.sqrt(1.0 - alpha_bar_B), x0)
  if prediction == "edm":
    r = _bcast(_edm_r(alpha_bar_B, sigma_data), x0)
    return (s * x0 - a * sigma_data**2 * eps) / (sigma_data * r)
  return a * eps - s * x0


def to_x0_eps(pred: jnp.ndarray, x_t: jnp.ndarray, alpha_bar_B: jnp.ndarray,
              prediction: str, sigma_data: float = SIGMA_DATA
              ) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Converts a model output into (x̂_0, ε̂) at x_t. Exact inverse of `target`.

  eps-prediction divides by sqrt(ᾱ): at ᾱ ≈ 0 (the last cosine step) a small
  error in ε̂ becomes a huge x̂_0. That is why the samplers clip x̂_0.
  """
  check_prediction(prediction)
  a = _bcast(jnp.sqrt(alpha_bar_B), x_t)
  s = _bcast(jnp.sqrt(1.0 - alpha_bar_B), x_t)
  if prediction == "eps":
    return (x_t - s * pred) / a, pred
  if prediction == "x0":
    return pred, (x_t - a * pred) / s
  if prediction == "edm":  # ε̂ = (x_t - a·x̂_0)/s, written without dividing by s.
    r = _bcast(_edm_r(alpha_bar_B, sigma_data), x_t)
    return (a * sigma_data**2 * x_t / r**2 + s * sigma_data * pred / r,
            s * x_t / r**2 - a * sigma_data * pred / r)
  return a * x_t - s * pred, s * x_t + a * pred


def eps_from_x0(x0: jnp.ndarray, x_t: jnp.ndarray, alpha_bar_B: jnp.ndarray) -> jnp.ndarray:
  """ε̂ consistent with x_t and a given x̂_0 (used after clipping x̂_0)."""
  a = _bcast(jnp.sqrt(alpha_bar_B), x_t)
  s = _bcast(jnp.sqrt(1.0 - alpha_bar_B), x_t)
  return (x_t - a * x0) / s


def loss_weight(alpha_bar_B: jnp.ndarray, prediction: str, weighting: str,
                min_snr_gamma: float = 5.0, sigma_data: float = SIGMA_DATA) -> jnp.ndarray:
  """Per-example weight on the MSE of the chosen target.

  min_snr (Hang et al. 2023) caps the effective x_0-space weight at γ:
  weight_x0 = min(SNR, γ); an eps-MSE already carries SNR, a v-MSE SNR + 1, an
  edm-MSE 1/c_out². "uniform" under edm is EDM's own weighting λ = 1/c_out².
  """
  if weighting == "uniform":
    return jnp.ones_like(alpha_bar_B)
  if weighting != "min_snr":
    raise ValueError(f"unknown loss weighting {weighting!r}; choose one of {WEIGHTINGS}.")
  check_prediction(prediction)
  snr = alpha_bar_B / (1.0 - alpha_bar_B)
  capped = jnp.minimum(snr, min_snr_gamma)
  if prediction == "eps":
    return capped / snr
  if prediction == "x0":
    return capped
  if prediction == "edm":
    return capped * (1.0 - alpha_bar_B) * sigma_data**2 / _edm_r(alpha_bar_B, sigma_data)**2
  return capped / (snr + 1.0)


# Adaptive loss weighting (Karras et al. 2024, EDM2): a learned log-variance u(σ)
# per noise level turns each example's weighted loss l into l·e^(-u) + u. Its
# minimum over u is u = ln E[l | σ], so every noise level ends up contributing
# about equally, whatever its loss's scale. u reads fixed random Fourier features
# of c = ln(σ)/4 (EDM2's c_noise) through one learned linear layer.
ADAPTIVE_KEY = "adaptive_weighting"  # Params key of u's layer (beside the network's).
_FOURIER = 64
_FREQS, _PHASES = (np.random.default_rng(0x75).standard_normal(_FOURIER).astype(np.float32),
                   np.random.default_rng(0x70).random(_FOURIER).astype(np.float32))


def init_adaptive_weighting() -> dict:
  """u's layer at zero: every weight starts at e^0 = 1 (the base weighting)."""
  return {"kernel": jnp.zeros((_FOURIER,), jnp.float32), "bias": jnp.zeros((), jnp.float32)}


def adaptive_log_variance(params: dict, alpha_bar_B: jnp.ndarray) -> jnp.ndarray:
  """u(σ) per example, σ = sqrt((1-ᾱ)/ᾱ); ᾱ is clipped away from 0 and 1 so that
  c stays finite on a zero-terminal-SNR schedule."""
  ab = jnp.clip(alpha_bar_B.astype(jnp.float32), 1e-12, 1.0 - 1e-7)
  c = 0.125 * (jnp.log1p(-ab) - jnp.log(ab))  # ln(σ)/4.
  features = jnp.sqrt(2.0) * jnp.cos(2.0 * jnp.pi * (c[:, None] * _FREQS + _PHASES))
  return features @ params["kernel"] + params["bias"]


def draw_timesteps(key: jax.Array, schedule: schedules_lib.Schedule, batch_size: int,
                   noise_levels: str = "uniform",
                   lognormal: tuple[float, float] = (-1.2, 1.2)) -> jnp.ndarray:
  """Training timesteps t, int [B].

  uniform: every t of the schedule equally often.
  lognormal: ln σ ~ N(mean, std²) in the noise level σ = sqrt((1-ᾱ)/ᾱ), as EDM
  trains (Karras et al. 2022: mean -1.2, std 1.2), rounded up to the first step
  whose σ_t is at least the draw (clipped to the last). This spends the steps on
  the middle noise levels, where the denoiser has most to learn.
  """
  if noise_levels == "uniform":
    return jax.random.randint(key, (batch_size,), 0, schedule.num_steps)
  if noise_levels != "lognormal":
    raise ValueError(f"unknown noise_levels {noise_levels!r}; choose one of {NOISE_LEVELS}.")
  ab = schedule.alpha_bars
  log_sigma_T = 0.5 * (jnp.log1p(-ab) - jnp.log(ab))  # Increasing in t.
  log_sigma_B = lognormal[0] + lognormal[1] * jax.random.normal(key, (batch_size,))
  t = jnp.searchsorted(log_sigma_T, log_sigma_B)
  return jnp.minimum(t, schedule.num_steps - 1).astype(jnp.int32)


def label_mask(key: jax.Array, batch_size: int, p_uncond: float) -> jnp.ndarray:
  """CFG label dropout: True keeps the label, False trains the unconditional model."""
  return jax.random.uniform(key, (batch_size,)) >= p_uncond


def loss_fn(
    apply_fn: Callable[..., jnp.ndarray],
    params,
    schedule: schedules_lib.Schedule,
    images: jnp.ndarray,
    labels: jnp.ndarray,
    key: jax.Array,
    *,
    prediction: str = "eps",
    weighting: str = "uniform",
    min_snr_gamma: float = 5.0,
    p_uncond: float = 0.1,
    noise_levels: str = "uniform",
    lognormal: tuple[float, float] = (-1.2, 1.2),
    adaptive: dict | None = None,
    sigma_data: float = SIGMA_DATA,
    train: bool = True,
) -> jnp.ndarray:
  """Mean weighted MSE of the denoising objective on one batch.

  Args:
    apply_fn: `apply_fn(params, x_t, t, labels, use_labels, train=..., rngs=...)`.
    images: float [B,H,W,C] in [-1, 1].
    labels: int [B] class indices or float [B,K] multi-hot attributes.
    key: draws t (see `draw_timesteps`), ε, the CFG label mask and dropout.
    adaptive: u's params (`init_adaptive_weighting`) to train the adaptive
      weighting's objective mean(l·e^(-u) + u) instead of mean(l).
    sigma_data: σ_d of the "edm" prediction (ignored by the others).
  Returns:
    Scalar float32 loss.
  """
  B = images.shape[0]
  k_t, k_noise, k_mask, k_drop = jax.random.split(key, 4)
  t = draw_timesteps(k_t, schedule, B, noise_levels, lognormal)
  noise = jax.random.normal(k_noise, images.shape, jnp.float32)
  x_t = q_sample(schedule, images, t, noise)
  use_labels = label_mask(k_mask, B, p_uncond)
  alpha_bar = schedule.alpha_bars[t]
  pred = apply_fn(params, model_input(x_t, alpha_bar, prediction, sigma_data),
                  schedule.timesteps[t], labels, use_labels, train=train, rngs={"dropout": k_drop})
  err = (pred.astype(jnp.float32)
         - target(images, noise, alpha_bar, prediction, sigma_data)) ** 2
  mse_B = jnp.mean(err, axis=tuple(range(1, err.ndim)))
  loss_B = loss_weight(alpha_bar, prediction, weighting, min_snr_gamma, sigma_data) * mse_B
  if adaptive is not None:
    u_B = adaptive_log_variance(adaptive, alpha_bar)
    loss_B = loss_B * jnp.exp(-u_B) + u_B
  return jnp.mean(loss_B)
