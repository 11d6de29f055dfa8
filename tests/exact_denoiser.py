"""Closed-form denoisers for Gaussian data, to test samplers against exact math.

Data given class c: x_0 ~ N(mu_c, sigma² I). Then x_t | c ~ N(a·mu_c, r² I) with
a = sqrt(ᾱ_t), r² = a²σ² + 1 - ᾱ_t, and the optimal (posterior-mean) prediction is
  E[x_0 | x_t, c] = mu_c + (a σ² / r²)(x_t - a·mu_c).
Unconditionally (uniform class prior) x_t is a Gaussian mixture and
E[x_0 | x_t] = Σ_c p(c | x_t) E[x_0 | x_t, c], p(c | x_t) ∝ N(x_t; a·mu_c, r² I).
"""

import jax
import jax.numpy as jnp

from jaxddpm import diffusion


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
    eps = diffusion.eps_from_x0(x0, x_t, ab)
    return diffusion.target(x0, eps, ab, prediction)

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
  sched = schedules.respace(schedule, steps, spacing)
  ab = np.asarray(sched.alpha_bars, np.float64)
  ab_prev = np.asarray(sched.alpha_bars_prev, np.float64)
  coef1 = np.asarray(sched.posterior_mean_coef1, np.float64)
  coef2 = np.asarray(sched.posterior_mean_coef2, np.float64)
  log_vars = np.asarray(sched.posterior_log_variance_clipped if variance == "small"
                        else sched.large_log_variance, np.float64)
  S = len(ab)
  d_mean = -np.sqrt(ab[-1]) * mu  # E[x_T] = 0, so E[d_T] = -a_T·mu.
  d_var = 1.0
  for i in range(S - 1, -1, -1):
    a, s2 = np.sqrt(ab[i]), 1.0 - ab[i]
    r2 = a * a * sigma**2 + s2
    k_x0, k_eps = a * sigma**2 / r2, np.sqrt(s2) / r2
    if sampler == "ddpm":
      m = coef1[i] * k_x0 + coef2[i]
      noise_var = np.exp(log_vars[i]) if i > 0 else 0.0
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
  mean, p = dpm_solver_affine(sched, sigma, [mu] * sched.num_steps)
  return mean, abs(p)


def dpm_solver_affine(sched, sigma, step_means, first_order=None):
  """DPM-Solver++(2M) on the respaced `sched` with the exact denoiser of
  N(step_means[i], σ²) at step i (noisiest first; a per-step mean is CFG with
  affine denoisers of one slope, guided at some steps only). The solver is then
  deterministic and affine in x_T = ξ, so x and the remembered x̂_0 stay of the
  form p·ξ + q; returns the output's (q, p): mean q, std |p|. `first_order` is
  passed to sampling.dpm_solver_coefficients."""
  import numpy as np
  from jaxddpm import sampling
  ab = np.asarray(sched.alpha_bars, np.float64)
  c = {k: np.asarray(v, np.float64)
       for k, v in sampling.dpm_solver_coefficients(sched.alpha_bars, first_order).items()}
  p, q, p0, q0 = 1.0, 0.0, 0.0, 0.0
  for j, i in enumerate(range(len(ab) - 1, -1, -1)):
    mu = np.asarray(step_means[j], np.float64)
    a = np.sqrt(ab[i])
    k = a * sigma**2 / (a * a * sigma**2 + 1.0 - ab[i])
    px0, qx0 = k * p, mu + k * (q - a * mu)  # x̂_0 = mu + k·(x - a·mu).
    pd = c["w_cur"][i] * px0 + c["w_last"][i] * p0
    qd = c["w_cur"][i] * qx0 + c["w_last"][i] * q0
    p, q = c["c_x"][i] * p + c["c_0"][i] * pd, c["c_x"][i] * q + c["c_0"][i] * qd
    p0, q0 = px0, qx0
  return q, p


def ddim_affine(sched, sigma, step_means):
  """dpm_solver_affine for DDIM (η = 0): (q, p) of the output q + p·ξ."""
  import numpy as np
  ab = np.asarray(sched.alpha_bars, np.float64)
  ab_prev = np.asarray(sched.alpha_bars_prev, np.float64)
  p, q = 1.0, 0.0
  for j, i in enumerate(range(len(ab) - 1, -1, -1)):
    mu = np.asarray(step_means[j], np.float64)
    a, s = np.sqrt(ab[i]), np.sqrt(1.0 - ab[i])
    k = a * sigma**2 / (a * a * sigma**2 + s * s)
    px0, qx0 = k * p, mu + k * (q - a * mu)
    pe, qe = (p - a * px0) / s, (q - a * qx0) / s
    a_p, s_p = np.sqrt(ab_prev[i]), np.sqrt(1.0 - ab_prev[i])
    p, q = a_p * px0 + s_p * pe, a_p * qx0 + s_p * qe
  return q, p


def interval_cfg_affine(schedule, steps, spacing, sampler, sigma, mu_c, mu_u, scale, interval,
                        onset=True):
  """(q, p) of DDIM (η = 0) or DPM-Solver++(2M) with CFG at `scale` for σ in
  `interval` on the affine denoisers of N(mu_c, σ²) and N(mu_u, σ²): guided steps
  see the exact denoiser of N(mu_u + s(mu_c - mu_u), σ²). On sample_loop's grid with
  its onset step (sampling.step_schedule); onset=False: plain respacing without it."""
  from jaxddpm import guidance, sampling, schedules
  onset = onset and sampling.takes_onset_step(sampler, spacing, scale, interval)
  sched = (sampling.step_schedule(schedule, steps, spacing=spacing, sampler=sampler,
                                  guidance_scale=scale, guidance_interval=interval)
           if onset else schedules.respace(schedule, steps, spacing))
  g = guidance.guided_steps(sched.alpha_bars, interval)
  means = [mu_u + scale * (mu_c - mu_u) if gi else mu_c for gi in g[::-1]]
  if sampler == "ddim":
    return ddim_affine(sched, sigma, means)
  first = guidance.onset_steps(sched.alpha_bars, interval) if onset else None
  return dpm_solver_affine(sched, sigma, means, first)
