"""Noise schedules as precomputed arrays.

Notation (Ho et al. 2020): beta_t = β_t, alphas = α_t = 1 - β_t,
alpha_bars = ᾱ_t = prod_{s<=t} α_s. Index t runs over 0..S-1 where S is the
number of (possibly respaced) steps; `timesteps[t]` is the training timestep the
model is conditioned on at that index.

Everything is computed once in NumPy float64 and cast to float32 at the end: the
products and ratios near ᾱ ≈ 0 or ᾱ ≈ 1 lose most of their digits in float32.
"""

from __future__ import annotations

import flax
import jax.numpy as jnp
import numpy as np

SCHEDULES = ("linear", "cosine")


@flax.struct.dataclass
class Schedule:
  """Precomputed diffusion coefficients, all float32 [S] (timesteps int32 [S])."""

  betas: jnp.ndarray
  alphas: jnp.ndarray
  alpha_bars: jnp.ndarray
  alpha_bars_prev: jnp.ndarray  # ᾱ_{t-1}, with ᾱ_{-1} = 1.
  sqrt_alpha_bars: jnp.ndarray
  sqrt_one_minus_alpha_bars: jnp.ndarray
  sqrt_recip_alpha_bars: jnp.ndarray  # 1/sqrt(ᾱ); inf where ᾱ = 0 (zero SNR).
  sqrt_recipm1_alpha_bars: jnp.ndarray  # sqrt(1/ᾱ - 1).
  # q(x_{t-1} | x_t, x_0) = N(coef1 * x_0 + coef2 * x_t, posterior_variance).
  posterior_mean_coef1: jnp.ndarray
  posterior_mean_coef2: jnp.ndarray
  posterior_variance: jnp.ndarray  # "fixed small": β̃_t = β_t (1-ᾱ_{t-1}) / (1-ᾱ_t).
  # log β̃_t with t=0 (where β̃_0 = 0) replaced by β̃_1, as in improved DDPM.
  posterior_log_variance_clipped: jnp.ndarray
  # "fixed large": β_t, with t=0 replaced by β̃_1 so that its log stays finite
  # and the last step does not add the (large) β_0 noise to the data.
  large_variance: jnp.ndarray
  large_log_variance: jnp.ndarray
  timesteps: jnp.ndarray  # int32 [S]: model timestep for each index.
  num_train_timesteps: int = flax.struct.field(pytree_node=False, default=0)

  @property
  def num_steps(self) -> int:
    return int(self.betas.shape[0])


def linear_betas(T: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> np.ndarray:
  """Ho et al. 2020: β_t linear from beta_start to beta_end, float64 [T]."""
  _check_T(T)
  if not 0.0 < beta_start <= beta_end < 1.0:
    raise ValueError(
        f"linear schedule needs 0 < beta_start <= beta_end < 1, got "
        f"beta_start={beta_start}, beta_end={beta_end}.")
  return np.linspace(beta_start, beta_end, T, dtype=np.float64)


def cosine_betas(T: int, s: float = 0.008, max_beta: float = 0.999) -> np.ndarray:
  """Nichol & Dhariwal 2021: ᾱ(t) = f(t)/f(0), f(t) = cos²((t/T + s)/(1 + s) · π/2).

  β_t = 1 - ᾱ(t+1)/ᾱ(t), clipped at max_beta: without the clip the last β is 1
  (ᾱ(T) = 0) and 1/sqrt(α_t) in the DDPM mean is infinite.
  """
  _check_T(T)
  if s < 0:
    raise ValueError(f"cosine schedule offset s must be >= 0, got {s}.")
  if not 0.0 < max_beta <= 1.0:
    raise ValueError(f"max_beta must be in (0, 1], got {max_beta}.")
  steps = np.arange(T + 1, dtype=np.float64) / T
  f = np.cos((steps + s) / (1 + s) * np.pi / 2) ** 2
  alpha_bar = f / f[0]
  return np.minimum(1.0 - alpha_bar[1:] / alpha_bar[:-1], max_beta)


def rescale_zero_terminal_snr(betas: np.ndarray) -> np.ndarray:
  """Lin et al. 2023, Alg. 1: shift and scale sqrt(ᾱ) so ᾱ_{T-1} = 0, ᾱ_0 kept.

  With ᾱ_{T-1} > 0 the model never sees pure noise in training but starts from it
  in sampling. After the rescale, eps-prediction is undefined at the last step, so
  use prediction "v" or "x0" with it.
  """
  betas = np.asarray(betas, np.float64)
  sqrt_ab = np.sqrt(np.cumprod(1.0 - betas))
  first, last = sqrt_ab[0], sqrt_ab[-1]
  sqrt_ab = (sqrt_ab - last) * first / (first - last)
  alpha_bar = sqrt_ab**2
  alphas = np.concatenate([alpha_bar[:1], alpha_bar[1:] / alpha_bar[:-1]])
  return 1.0 - alphas


def from_betas(betas: np.ndarray, timesteps: np.ndarray | None = None,
               num_train_timesteps: int | None = None) -> Schedule:
  """Builds a Schedule from float64 betas [S]; the single place coefficients are derived."""
  betas = np.asarray(betas, np.float64)
  if betas.ndim != 1 or betas.size == 0:
    raise ValueError(f"betas must be a non-empty 1-D array, got shape {betas.shape}.")
  if np.any(betas <= 0) or np.any(betas > 1):
    raise ValueError("betas must lie in (0, 1].")
  S = betas.shape[0]
  timesteps = np.arange(S) if timesteps is None else np.asarray(timesteps)
  alphas = 1.0 - betas
  alpha_bars = np.cumprod(alphas)
  alpha_bars_prev = np.concatenate([[1.0], alpha_bars[:-1]])
  one_minus = 1.0 - alpha_bars
  with np.errstate(divide="ignore"):
    sqrt_recip = 1.0 / np.sqrt(alpha_bars)
    sqrt_recipm1 = np.sqrt(1.0 / alpha_bars - 1.0)
  posterior_variance = betas * (1.0 - alpha_bars_prev) / one_minus
  # β̃_0 = 0; use β̃_1 for the log so it stays finite (never used to add noise).
  var_1 = posterior_variance[1] if S > 1 else betas[0]
  posterior_log_var = np.log(np.concatenate([[var_1], posterior_variance[1:]]))
  large_variance = np.concatenate([[var_1], betas[1:]])
  f32 = lambda a: jnp.asarray(a, jnp.float32)
  return Schedule(
      betas=f32(betas),
      alphas=f32(alphas),
      alpha_bars=f32(alpha_bars),
      alpha_bars_prev=f32(alpha_bars_prev),
      sqrt_alpha_bars=f32(np.sqrt(alpha_bars)),
      sqrt_one_minus_alpha_bars=f32(np.sqrt(one_minus)),
      sqrt_recip_alpha_bars=f32(sqrt_recip),
      sqrt_recipm1_alpha_bars=f32(sqrt_recipm1),
      posterior_mean_coef1=f32(betas * np.sqrt(alpha_bars_prev) / one_minus),
      posterior_mean_coef2=f32((1.0 - alpha_bars_prev) * np.sqrt(alphas) / one_minus),
      posterior_variance=f32(posterior_variance),
      posterior_log_variance_clipped=f32(posterior_log_var),
      large_variance=f32(large_variance),
      large_log_variance=f32(np.log(large_variance)),
      timesteps=jnp.asarray(timesteps, jnp.int32),
      num_train_timesteps=int(num_train_timesteps or S),
  )


def linear(T: int, beta_start: float = 1e-4, beta_end: float = 0.02, *,
           zero_terminal_snr: bool = False) -> Schedule:
  """Linear-β schedule over T steps (Ho et al. 2020)."""
  betas = linear_betas(T, beta_start, beta_end)
  if zero_terminal_snr:
    betas = rescale_zero_terminal_snr(betas)
  return from_betas(betas)


def cosine(T: int, s: float = 0.008, max_beta: float = 0.999, *,
           zero_terminal_snr: bool = False) -> Schedule:
  """Cosine schedule over T steps (Nichol & Dhariwal 2021)."""
  betas = cosine_betas(T, s, max_beta)
  if zero_terminal_snr:
    betas = rescale_zero_terminal_snr(betas)
  return from_betas(betas)


# Where the sampler's steps go. "uniform": training timesteps evenly spread (Improved
# DDPM). "logsnr": the log signal-to-noise ratio λ = log(sqrt(ᾱ)/sqrt(1-ᾱ)) evenly
# spread (DPM-Solver's choice). With the cosine schedule, uniform steps leave the
# low-noise end, where fine texture is decided, to one or two big steps in λ; there
# DPM-Solver++(2M) at 20 steps lost to DDIM-50 on the Fashion-MNIST GPU model. With
# "logsnr" its step error falls on Gaussian data and on the trained models
# (docs/results.md, "Samplers: step error"); with strong guidance at every step it
# does not, so uniform stays the default and fmnist.py's GPU config opts in.
SPACINGS = ("uniform", "logsnr")
# "logsnr" spreads λ from the cleanest timestep up to this noise level σ = sqrt((1-ᾱ)/ᾱ)
# (EDM's σ_max, Karras et al. 2022), then steps once from T-1: the cosine schedule's
# T-1 is at σ ≈ 2e4, and spreading λ all the way there wastes steps where the sample
# barely changes (on the Gaussian proxy above: 5x the error at 20 steps).
LOGSNR_SIGMA_MAX = 80.0


def respace_timesteps(T: int, steps: int) -> np.ndarray:
  """`steps` training timesteps evenly spread over [0, T-1], both ends included.

  Keeping T-1 matters: the sampler must start where training put pure noise.
  """
  if not 1 <= steps <= T:
    raise ValueError(f"steps must be in [1, T={T}], got {steps}.")
  if steps == 1:
    return np.array([T - 1])
  return np.round(np.linspace(0, T - 1, steps)).astype(np.int64)


def logsnr_timesteps(alpha_bars, steps: int) -> np.ndarray:
  """`steps` distinct training timesteps, increasing, from 0 to T-1, with λ evenly
  spread from timestep 0 to σ = LOGSNR_SIGMA_MAX (or to T-1 where the schedule ends
  below that noise level), plus T-1: each the timestep nearest its λ in λ.

  Timesteps are integers (the model was trained on them), so near t = 0, where
  λ falls fast, rounding would merge neighbours: each then moves to the next free
  timestep, which keeps exactly `steps` network evaluations.
  """
  ab = np.asarray(alpha_bars, np.float64)
  T = len(ab)
  if not 1 <= steps <= T:
    raise ValueError(f"steps must be in [1, T={T}], got {steps}.")
  if steps == 1:
    return np.array([T - 1])
  with np.errstate(divide="ignore"):  # ᾱ = 0 at T-1 with zero terminal SNR: λ = -inf.
    lam = 0.5 * (np.log(ab) - np.log1p(-ab))
  lam_hi_noise = max(-np.log(LOGSNR_SIGMA_MAX), lam[-1])
  # The grid's noisiest point is T-1 itself when the schedule ends below σ_max.
  n = steps if lam_hi_noise == lam[-1] else steps - 1
  targets = np.linspace(lam[0], lam_hi_noise, n)
  # Each target's nearest timestep in λ (T-1 excluded where its λ is -inf).
  finite = np.flatnonzero(np.isfinite(lam))
  kept = finite[np.argmin(np.abs(lam[finite][None, :] - targets[:, None]), axis=1)]
  if n < steps:
    kept = np.concatenate([kept, [T - 1]])
  for i in range(1, steps):  # Distinct: push merged neighbours up ...
    kept[i] = max(kept[i], kept[i - 1] + 1)
  kept[-1] = T - 1
  for i in range(steps - 2, -1, -1):  # ... and back below T-1 where that overshot.
    kept[i] = min(kept[i], kept[i + 1] - 1)
  return kept


def check_spacing(spacing: str) -> None:
  if spacing not in SPACINGS:
    raise ValueError(f"unknown timestep spacing {spacing!r}; choose one of {SPACINGS}.")


def include_timesteps(kept, must, coord) -> np.ndarray:
  """`kept` (increasing timesteps) with each timestep of `must` put in place of the
  free kept one nearest it in `coord` (λ for logsnr, t for uniform): the count, the
  order and both ends stay, so the grid changes by one point per timestep. A `must`
  with no free point to take without breaking the order (fewer than 4 steps) is
  left out.
  """
  kept = np.array(kept)
  fixed = {0, len(kept) - 1}  # The clean end and x_T's timestep stay.
  for b in must:
    hit = np.flatnonzero(kept == b)
    if hit.size:
      fixed.add(int(hit[0]))
      continue
    free = np.array([j for j in range(len(kept)) if j not in fixed], int)
    if not free.size:
      continue
    j = int(free[np.argmin(np.abs(coord[kept[free]] - coord[b]))])
    moved = kept.copy()
    moved[j] = b
    # The nearest point overall keeps the order; a free one beyond a fixed one not.
    if np.all(np.diff(moved) > 0):
      kept = moved
      fixed.add(j)
  return kept


def respace(schedule: Schedule, steps: int, spacing: str = "uniform",
            keep=()) -> Schedule:
  """Improved-DDPM respacing: keep ᾱ at `steps` timesteps and re-derive β.

  β'_i = 1 - ᾱ[t_i] / ᾱ[t_{i-1}] so that the respaced chain has the same
  marginals q(x_t | x_0) at the kept timesteps. `spacing` picks the timesteps
  (SPACINGS); each training timestep in `keep` then takes the place of the nearest
  one (include_timesteps), for samplers that must step exactly there. Needs a
  concrete schedule.
  """
  check_spacing(spacing)
  T = schedule.num_steps
  if steps == T:
    return schedule
  if not np.array_equal(np.asarray(schedule.timesteps), np.arange(T)):
    raise ValueError("respace() needs a schedule that has not been respaced already.")
  if any(not 0 <= int(b) < T for b in keep):
    raise ValueError(f"timesteps to keep must be in [0, T={T}), got {list(keep)}.")
  alpha_bars_T = np.asarray(schedule.alpha_bars, np.float64)
  if spacing == "uniform":
    kept, coord = respace_timesteps(T, steps), np.arange(T, dtype=np.float64)
  else:
    kept = logsnr_timesteps(alpha_bars_T, steps)
    with np.errstate(divide="ignore"):  # λ = -inf at T-1 with zero terminal SNR.
      coord = 0.5 * (np.log(alpha_bars_T) - np.log1p(-alpha_bars_T))
  if len(keep):
    kept = include_timesteps(kept, [int(b) for b in keep], coord)
  alpha_bars = alpha_bars_T[kept]
  prev = np.concatenate([[1.0], alpha_bars[:-1]])
  return from_betas(1.0 - alpha_bars / prev, timesteps=kept, num_train_timesteps=T)


def make(name: str, T: int, *, beta_start: float = 1e-4, beta_end: float = 0.02,
         cosine_s: float = 0.008, max_beta: float = 0.999,
         zero_terminal_snr: bool = False) -> Schedule:
  """Schedule by name ("linear" or "cosine"), the entry point configs use."""
  if name == "linear":
    return linear(T, beta_start, beta_end, zero_terminal_snr=zero_terminal_snr)
  if name == "cosine":
    return cosine(T, cosine_s, max_beta, zero_terminal_snr=zero_terminal_snr)
  raise ValueError(f"unknown schedule {name!r}; choose one of {SCHEDULES}.")


def from_config(d) -> Schedule:
  """Training schedule from a config's `diffusion` section."""
  return make(d.schedule, d.num_timesteps, beta_start=d.beta_start, beta_end=d.beta_end,
              cosine_s=d.cosine_s, max_beta=d.max_beta, zero_terminal_snr=d.zero_terminal_snr)


def _check_T(T: int) -> None:
  if not isinstance(T, (int, np.integer)) or T < 2:
    raise ValueError(f"the number of timesteps T must be an int >= 2, got {T!r}.")
