"""Closed-form denoisers for Gaussian data, to test samplers against exact math.

Data given class c: x_0 ~ N(mu_c, sigma² I). Then x_t | c ~ N(a·mu_c, r² I) with
a = sqrt(ᾱ_t), r² = a²σ² + 1 - ᾱ_t, and the optimal (posterior-mean) prediction is
  E[x_0 | x_t, c] = mu_c + (a σ² / r²)(x_t - a·mu_c).
Unconditionally (uniform class prior) x_t is a Gaussian mixture and
E[x_0 | x_t] = Σ_c p(c | x_t) E[x_0 | x_t, c], p(c | x_t) ∝ N(x_t; a·mu_c, r² I).

The references below are written from the papers' formulas and use none of the
code under test: the only jaxddpm function they call is schedules.respace, for
which steps a sampler visits (tested on its own in test_schedules.py).
"""

import jax
import jax.numpy as jnp


def gaussian_denoiser(alpha_bars_T, mus_KHWC, sigma, prediction, uncond_mean_HWC=None):
  """denoise_fn(x_t, t, labels, use_labels) predicting `prediction` exactly.

  Args:
    alpha_bars_T: ᾱ of the training schedule, indexed by training timestep.
    mus_KHWC: class means [K, H, W, C].
    sigma: per-pixel std of every class.
    uncond_mean_HWC: if given, the unconditional model is the single Gaussian
      N(uncond_mean, σ²) instead of the class mixture (gives CFG a closed form).
  """
  mus = jnp.asarray(mus_KHWC, jnp.float32)

  def posterior_mean(x_t, a, r2, mu):
    return mu + (a * sigma**2 / r2) * (x_t - a * mu)

  def denoise(x_t, t, labels, use_labels):
    ab = alpha_bars_T[t]
    a = jnp.sqrt(ab)[:, None, None, None]
    r2 = a**2 * sigma**2 + (1.0 - ab)[:, None, None, None]
    x0_cond = posterior_mean(x_t, a, r2, mus[labels])
    if uncond_mean_HWC is not None:
      x0_uncond = posterior_mean(x_t, a, r2, jnp.asarray(uncond_mean_HWC, jnp.float32))
    else:
      x0_k = posterior_mean(x_t[:, None], a[:, None], r2[:, None], mus[None])  # [B,K,H,W,C]
      logp = -0.5 * jnp.sum((x_t[:, None] - a[:, None] * mus[None]) ** 2, axis=(2, 3, 4))
      w = jax.nn.softmax(logp / r2[:, 0, 0, 0][:, None], axis=1)
      x0_uncond = jnp.einsum("bk,bkhwc->bhwc", w, x0_k)
    x0 = jnp.where(use_labels[:, None, None, None], x0_cond, x0_uncond)
    s = jnp.sqrt(1.0 - ab)[:, None, None, None]
    eps = (x_t - a * x0) / s  # x_t = a·x_0 + s·ε.
    return {"eps": eps, "x0": x0, "v": a * eps - s * x0}[prediction]  # v: Salimans & Ho.

  return denoise


def edm_form(x0_denoise_fn, alpha_bars_T, sigma_data):
  """An x₀-predicting denoise_fn rewritten as EDM's network F (Karras et al. 2022,
  Table 1): it receives c_in·x with x = x_t/√ᾱ and σ² = (1-ᾱ)/ᾱ, and returns
  F = (D(x) - c_skip·x)/c_out, c_in = 1/√(σ²+σ_d²), c_skip = σ_d²/(σ²+σ_d²),
  c_out = σ·σ_d/√(σ²+σ_d²)."""

  def denoise(z, t, labels, use_labels):
    ab = alpha_bars_T[t][:, None, None, None]
    sigma2 = (1.0 - ab) / ab
    x = z * jnp.sqrt(sigma2 + sigma_data**2)  # Undo c_in.
    d = x0_denoise_fn(jnp.sqrt(ab) * x, t, labels, use_labels)
    c_skip = sigma_data**2 / (sigma2 + sigma_data**2)
    c_out = jnp.sqrt(sigma2) * sigma_data / jnp.sqrt(sigma2 + sigma_data**2)
    return (d - c_skip * x) / c_out

  return denoise


def exact_sampler_moments(schedule, steps, sampler, eta, variance, mu, sigma,
                          spacing="uniform"):
  """Mean and std that the discrete sampler itself produces from Gaussian data.

  With the exact denoiser every update is affine in x_t: writing d = x_t - a·mu,
  x̂_0 - mu = (aσ²/r²)·d and ε̂ = (s/r²)·d, so d' = m·d + (noise of std σ_step)
  with m and σ_step from the schedule. Iterating from x_T ~ N(0, I) gives the
  sampler's exact output mean and std, finite-step error included; the test then
  only has to allow for Monte-Carlo error. Returns (mean, std) for one pixel.
  """
  import numpy as np
  from jaxddpm import schedules
  ab = np.asarray(schedules.respace(schedule, steps, spacing).alpha_bars, np.float64)
  # DDPM's posterior q(x_{i-1} | x_i, x_0) on the kept steps (Ho et al. 2020, eq. 7),
  # from ᾱ alone: β_i = 1 - ᾱ_i/ᾱ_{i-1}; variance β̃ ("small") or β ("large").
  ab_prev = np.concatenate([[1.0], ab[:-1]])
  beta = 1.0 - ab / ab_prev
  coef1 = beta * np.sqrt(ab_prev) / (1.0 - ab)
  coef2 = (1.0 - ab_prev) * np.sqrt(1.0 - beta) / (1.0 - ab)
  step_var = beta * (1.0 - ab_prev) / (1.0 - ab) if variance == "small" else beta
  S = len(ab)
  d_mean = -np.sqrt(ab[-1]) * mu  # E[x_T] = 0, so E[d_T] = -a_T·mu.
  d_var = 1.0
  for i in range(S - 1, -1, -1):
    a, s2 = np.sqrt(ab[i]), 1.0 - ab[i]
    r2 = a * a * sigma**2 + s2
    k_x0, k_eps = a * sigma**2 / r2, np.sqrt(s2) / r2
    if sampler == "ddpm":
      m = coef1[i] * k_x0 + coef2[i]
      noise_var = step_var[i] if i > 0 else 0.0
    else:
      sig2 = eta**2 * (1 - ab_prev[i]) / s2 * (1 - ab[i] / ab_prev[i])
      m = np.sqrt(ab_prev[i]) * k_x0 + np.sqrt(max(1 - ab_prev[i] - sig2, 0.0)) * k_eps
      noise_var = sig2
    d_mean, d_var = m * d_mean, m * m * d_var + noise_var
  return mu + d_mean, np.sqrt(d_var)


def exact_dpm_solver_moments(schedule, steps, mu, sigma, spacing="uniform"):
  """Like exact_sampler_moments, for DPM-Solver++(2M): (mean, std) of one pixel."""
  from jaxddpm import schedules
  sched = schedules.respace(schedule, steps, spacing)
  mean, p = dpm_solver_affine(sched.alpha_bars, sigma, [mu] * sched.num_steps)
  return mean, abs(p)


def dpm_solver_affine(alpha_bars, sigma, step_means, first_order=None):
  """DPM-Solver++(2M) written out from Lu et al. 2022 (Alg. 2), with no code of
  jaxddpm's: on the steps with `alpha_bars` (respaced ᾱ, cleanest first), with the
  exact denoiser of N(step_means[j], σ²) at the j-th step from the noisiest (a
  per-step mean is CFG with affine denoisers of one slope, guided at some steps).

  With α = sqrt(ᾱ), s = sqrt(1 - ᾱ), λ = log(α/s) and h_j = λ_{j+1} - λ_j:
    x_{j+1} = (s_{j+1}/s_j)·x_j - α_{j+1}(e^{-h_j} - 1)·D_j,
    D_j = (1 + 1/(2r))·x̂0_j - 1/(2r)·x̂0_{j-1},  r = h_{j-1}/h_j,
  and D_j = x̂0_j (first order) at the first step, at the last two (into the
  smallest kept timestep, and from it to ᾱ = 1, where x = x̂0), and where
  `first_order` (bool per respaced index, as sample_loop takes it) is set. The
  solver is deterministic and affine in x_T = ξ, so x and x̂0 stay p·ξ + q;
  returns the output's (q, p): mean q, std |p|."""
  import numpy as np
  ab = np.asarray(alpha_bars, np.float64)[::-1]  # Noisiest first.
  S = len(ab)
  first = set() if first_order is None else {
      S - 1 - i for i in np.flatnonzero(np.asarray(first_order, bool))}
  alpha, s = np.sqrt(ab), np.sqrt(1.0 - ab)
  lam = np.log(alpha) - np.log(s)
  p, q, prev, h_prev = 1.0, 0.0, None, None
  for j in range(S):
    mu = np.asarray(step_means[j], np.float64)
    k = alpha[j] * sigma**2 / (alpha[j] ** 2 * sigma**2 + s[j] ** 2)
    x0 = (k * p, mu + k * (q - alpha[j] * mu))  # x̂0 = mu + k·(x - α·mu), as (p, q).
    if j == S - 1:  # To ᾱ = 1: α = 1, s = 0, e^{-h} = 0.
      return x0[1], x0[0]
    h = lam[j + 1] - lam[j]
    if prev is None or j >= S - 2 or j in first:
      D = x0
    else:
      r = h_prev / h
      D = tuple((1 + 1 / (2 * r)) * a - 1 / (2 * r) * b for a, b in zip(x0, prev))
    c_x, c_0 = s[j + 1] / s[j], -alpha[j + 1] * np.expm1(-h)
    p, q = c_x * p + c_0 * D[0], c_x * q + c_0 * D[1]
    prev, h_prev = x0, h


def ddim_affine(alpha_bars, sigma, step_means):
  """dpm_solver_affine for DDIM (η = 0, Song et al. 2021, eq. 12): (q, p) of the
  output q + p·ξ."""
  import numpy as np
  ab = np.asarray(alpha_bars, np.float64)[::-1]
  ab = np.append(ab, 1.0)  # The last step goes to ᾱ = 1.
  p, q = 1.0, 0.0
  for j in range(len(ab) - 1):
    mu = np.asarray(step_means[j], np.float64)
    a, s = np.sqrt(ab[j]), np.sqrt(1.0 - ab[j])
    k = a * sigma**2 / (a * a * sigma**2 + s * s)
    px0, qx0 = k * p, mu + k * (q - a * mu)
    pe, qe = (p - a * px0) / s, (q - a * qx0) / s
    a_p, s_p = np.sqrt(ab[j + 1]), np.sqrt(1.0 - ab[j + 1])
    p, q = a_p * px0 + s_p * pe, a_p * qx0 + s_p * qe
  return q, p


def onset_grid(schedule, steps, interval):
  """The log-SNR grid with the timestep where guidance switches on in place of
  its nearest interior point in λ, derived here from the definitions: σ =
  sqrt((1-ᾱ)/ᾱ) rises with t; guidance is on where lo < σ <= hi, so going down
  from T-1 it switches on at the largest t with σ_t <= hi, if σ_{T-1} > hi."""
  import numpy as np
  from jaxddpm import schedules
  ab = np.asarray(schedule.alpha_bars, np.float64)
  sig = np.sqrt((1 - ab) / ab)
  grid = np.asarray(schedules.respace(schedule, steps, "logsnr").timesteps)
  lo, hi = interval
  on = np.flatnonzero((sig > lo) & (sig <= hi))
  if not on.size or sig[-1] <= hi or on[-1] in grid or steps < 4:
    return grid
  t_on = on[-1]
  lam = 0.5 * np.log(ab / (1 - ab))
  interior = grid[1:-1]
  nearest = interior[np.argmin(np.abs(lam[interior] - lam[t_on]))]
  return np.sort(np.append(grid[grid != nearest], t_on))


def interval_cfg_affine(schedule, steps, spacing, sampler, sigma, mu_c, mu_u, scale, interval,
                        onset):
  """(q, p) of DDIM (η = 0) or DPM-Solver++(2M) with CFG at `scale` for σ in
  `interval` on the affine denoisers of N(mu_c, σ²) and N(mu_u, σ²): guided steps
  see the exact denoiser of N(mu_u + s(mu_c - mu_u), σ²). onset=True: DPM-Solver++
  on onset_grid, at first order from the first guided step; False: the plain
  respaced grid."""
  import numpy as np
  from jaxddpm import schedules
  ab_full = np.asarray(schedule.alpha_bars, np.float64)
  grid = (onset_grid(schedule, steps, interval) if onset
          else np.asarray(schedules.respace(schedule, steps, spacing).timesteps))
  ab = ab_full[grid]
  sig = np.sqrt((1 - ab) / ab)
  guided = (sig > interval[0]) & (sig <= interval[1])  # Per respaced index.
  means = [mu_u + scale * (mu_c - mu_u) if gi else mu_c for gi in guided[::-1]]
  if sampler == "ddim":
    return ddim_affine(ab, sigma, means)
  # First order where a guided step follows an unguided (noisier) one.
  first = np.concatenate([guided[:-1] & ~guided[1:], [False]]) if onset else None
  return dpm_solver_affine(ab, sigma, means, first)
