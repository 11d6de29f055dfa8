"""Forward process, parameterisation conversions and loss weights."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxddpm import diffusion, schedules


def _draws(B=64):
  k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
  x0 = jax.random.uniform(k1, (B, 4, 4, 2), minval=-1, maxval=1)
  eps = jax.random.normal(k2, (B, 4, 4, 2))
  ab = jax.random.uniform(k3, (B,), minval=1e-3, maxval=0.999)
  return x0, eps, ab


def test_q_sample_formula():
  s = schedules.linear(100)
  x0, eps, _ = _draws()
  t = jnp.arange(64) % 100
  xt = diffusion.q_sample(s, x0, t, eps)
  ab = np.asarray(s.alpha_bars)[np.asarray(t)][:, None, None, None]
  np.testing.assert_allclose(np.asarray(xt), np.sqrt(ab) * x0 + np.sqrt(1 - ab) * eps,
                             rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("prediction", diffusion.PREDICTIONS)
def test_conversions_are_exact_inverses(prediction):
  x0, eps, ab = _draws()
  a, s = jnp.sqrt(ab)[:, None, None, None], jnp.sqrt(1 - ab)[:, None, None, None]
  xt = a * x0 + s * eps
  pred = diffusion.target(x0, eps, ab, prediction)
  x0_hat, eps_hat = diffusion.to_x0_eps(pred, xt, ab, prediction)
  np.testing.assert_allclose(np.asarray(x0_hat), np.asarray(x0), atol=2e-4)
  np.testing.assert_allclose(np.asarray(eps_hat), np.asarray(eps), atol=2e-4)
  np.testing.assert_allclose(np.asarray(diffusion.eps_from_x0(x0, xt, ab)), np.asarray(eps),
                             atol=2e-4)


def test_v_convention_by_hand():
  """v = sqrt(ᾱ)·ε - sqrt(1-ᾱ)·x_0 (Salimans & Ho 2022), not its negative: with
  x_0 = 0.5, ε = -1 and ᾱ = 0.36 (α = 0.6, s = 0.8), v = -0.6 - 0.4 = -1 and
  x_t = 0.3 - 0.8 = -0.5; back, x_0 = α·x_t - s·v = 0.5 and ε = s·x_t + α·v = -1.
  (Every other test passes with the sign flipped throughout; a checkpoint trained
  elsewhere with v would not.)"""
  x0, eps, ab = jnp.array([0.5]), jnp.array([-1.0]), jnp.array([0.36])
  np.testing.assert_allclose(diffusion.target(x0, eps, ab, "v"), [-1.0], rtol=1e-6)
  np.testing.assert_allclose(diffusion.target(x0, eps, ab, "x0"), [0.5])
  np.testing.assert_allclose(diffusion.target(x0, eps, ab, "eps"), [-1.0])
  x0_hat, eps_hat = diffusion.to_x0_eps(jnp.array([-1.0]), jnp.array([-0.5]), ab, "v")
  np.testing.assert_allclose(x0_hat, [0.5], rtol=1e-6)
  np.testing.assert_allclose(eps_hat, [-1.0], rtol=1e-6)


def test_v_is_rotation():
  """v = a·ε - s·x_0 with (x_t, v) an orthonormal rotation of (x_0, ε): |v|²+|x_t|² = |x0|²+|ε|²."""
  x0, eps, ab = _draws()
  a, s = jnp.sqrt(ab)[:, None, None, None], jnp.sqrt(1 - ab)[:, None, None, None]
  v = diffusion.target(x0, eps, ab, "v")
  np.testing.assert_allclose(np.asarray(v**2 + (a * x0 + s * eps) ** 2),
                             np.asarray(x0**2 + eps**2), rtol=1e-4, atol=1e-5)


def test_min_snr_weights_agree_across_parameterisations():
  """Each parameterisation's MSE is SNR-weighted x_0 MSE times a known factor;
  min_snr must give the same effective x_0 weight min(SNR, γ) for all three."""
  ab = jnp.linspace(0.01, 0.99, 50)
  snr = ab / (1 - ab)
  w = {p: diffusion.loss_weight(ab, p, "min_snr", 5.0) for p in diffusion.PREDICTIONS}
  expected = np.minimum(np.asarray(snr), 5.0)
  np.testing.assert_allclose(np.asarray(w["eps"] * snr), expected, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(w["x0"]), expected, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(w["v"] * (snr + 1)), expected, rtol=1e-5)
  np.testing.assert_array_equal(np.asarray(diffusion.loss_weight(ab, "eps", "uniform")), 1.0)
  with pytest.raises(ValueError, match="weighting"):
    diffusion.loss_weight(ab, "eps", "p2")


def test_v_prediction_is_edm_preconditioning_with_unit_data_std():
  """EDM (Karras et al. 2022) writes the denoiser D(x; σ) = c_skip·x + c_out·F(c_in·x)
  with, for σ_data = 1, c_skip = 1/(σ²+1), c_out = σ/√(σ²+1), c_in = 1/√(σ²+1), and
  weights ‖D - x₀‖² by λ(σ) = (σ²+1)/σ², for x = x₀ + σ·ε. In VP terms σ² = (1-ᾱ)/ᾱ
  and x_t = c_in·x. So a v-model is that denoiser with F = -v̂, and uniform v-MSE is
  EDM's weighted loss, for any prediction v̂ (the formulas, not the code)."""
  rng = np.random.default_rng(0)
  ab = jnp.asarray(rng.uniform(0.01, 0.99, 5), jnp.float32)
  x0 = jnp.asarray(rng.normal(size=(5, 4, 4, 1)), jnp.float32)
  eps = jnp.asarray(rng.normal(size=(5, 4, 4, 1)), jnp.float32)
  v_hat = jnp.asarray(rng.normal(size=(5, 4, 4, 1)), jnp.float32)  # Any model output.
  ab64 = np.asarray(ab, np.float64)
  sigma = np.sqrt((1 - ab64) / ab64)[:, None, None, None]
  x = np.asarray(x0, np.float64) + sigma * np.asarray(eps, np.float64)
  c_skip, c_out = 1 / (sigma**2 + 1), sigma / np.sqrt(sigma**2 + 1)
  c_in = 1 / np.sqrt(sigma**2 + 1)
  x_t = jnp.sqrt(ab)[:, None, None, None] * x0 + jnp.sqrt(1 - ab)[:, None, None, None] * eps
  np.testing.assert_allclose(np.asarray(x_t), c_in * x, rtol=1e-5, atol=1e-5)
  d_edm = c_skip * x + c_out * (-np.asarray(v_hat, np.float64))
  x0_hat, _ = diffusion.to_x0_eps(v_hat, x_t, ab, "v")
  np.testing.assert_allclose(np.asarray(x0_hat), d_edm, rtol=1e-4, atol=1e-4)
  lam = (sigma**2 + 1) / sigma**2
  edm_loss = (lam * (d_edm - np.asarray(x0, np.float64)) ** 2).mean(axis=(1, 2, 3))
  v = diffusion.target(x0, eps, ab, "v")
  v_mse = np.asarray(((v_hat - v) ** 2).mean(axis=(1, 2, 3)), np.float64)
  np.testing.assert_allclose(v_mse * np.asarray(
      diffusion.loss_weight(ab, "v", "uniform")), edm_loss, rtol=1e-4)


def _edm_coefficients(ab, sigma_data):
  """EDM's Table 1 in its own σ (float64), with x = x_t/√ᾱ the variance-exploding input."""
  ab = np.asarray(ab, np.float64)[:, None, None, None]
  sigma2 = (1 - ab) / ab
  c_skip = sigma_data**2 / (sigma2 + sigma_data**2)
  c_out = np.sqrt(sigma2) * sigma_data / np.sqrt(sigma2 + sigma_data**2)
  c_in = 1 / np.sqrt(sigma2 + sigma_data**2)
  return np.sqrt(ab), c_skip, c_out, c_in


@pytest.mark.parametrize("sigma_data", [0.5, 0.8])
def test_edm_prediction_is_karras_preconditioning(sigma_data):
  """The "edm" prediction against EDM's formulas in σ (Karras et al. 2022, Table 1):
  the network sees c_in·x, x̂_0 = c_skip·x + c_out·F, the target is
  (x_0 - c_skip·x)/c_out, and "uniform" weighting is EDM's λ = 1/c_out²; min_snr
  gives x̂_0's error the weight min(SNR, γ) as for the other predictions."""
  x0, eps, ab = _draws()
  sqrt_ab, c_skip, c_out, c_in = _edm_coefficients(ab, sigma_data)
  x = np.asarray(x0, np.float64) + np.sqrt((1 - sqrt_ab**2)) / sqrt_ab * np.asarray(eps,
                                                                                     np.float64)
  x_t = jnp.asarray(sqrt_ab * x, jnp.float32)
  kw = dict(prediction="edm", sigma_data=sigma_data)
  np.testing.assert_allclose(np.asarray(diffusion.model_input(x_t, ab, **kw)), c_in * x,
                             rtol=1e-4, atol=1e-4)
  f = np.asarray(jax.random.normal(jax.random.key(5), x0.shape), np.float64)  # Any output.
  x0_hat, _ = diffusion.to_x0_eps(jnp.asarray(f, jnp.float32), x_t, ab, **kw)
  np.testing.assert_allclose(np.asarray(x0_hat), c_skip * x + c_out * f, rtol=1e-4, atol=1e-4)
  target = (np.asarray(x0, np.float64) - c_skip * x) / c_out
  np.testing.assert_allclose(np.asarray(diffusion.target(x0, eps, ab, **kw)), target,
                             rtol=1e-3, atol=1e-3)
  edm_loss = ((c_skip * x + c_out * f - np.asarray(x0, np.float64))**2 / c_out**2).mean(
      axis=(1, 2, 3))
  f_mse = ((f - target)**2).mean(axis=(1, 2, 3))
  w = np.asarray(diffusion.loss_weight(ab, "edm", "uniform", sigma_data=sigma_data))
  np.testing.assert_allclose(w * f_mse, edm_loss, rtol=1e-4)
  ab64 = np.asarray(ab, np.float64)
  w = np.asarray(diffusion.loss_weight(ab, "edm", "min_snr", 5.0, sigma_data=sigma_data))
  np.testing.assert_allclose(w / c_out[:, 0, 0, 0]**2, np.minimum(ab64 / (1 - ab64), 5.0),
                             rtol=1e-4)


def test_edm_input_and_target_have_unit_variance_and_unit_data_std_is_v():
  """Why EDM preconditions: for data of std σ_d the network's input and target both
  have unit variance at every noise level (measured on 200,000 draws). At σ_d = 1
  the target is -v."""
  ab = jnp.array([0.999, 0.9, 0.5, 0.1, 0.001])
  n = 200_000
  k1, k2 = jax.random.split(jax.random.key(7))
  x0 = 0.5 * jax.random.normal(k1, (5, n))  # σ_d = 0.5.
  eps = jax.random.normal(k2, (5, n))
  x_t = jnp.sqrt(ab)[:, None] * x0 + jnp.sqrt(1 - ab)[:, None] * eps
  for got in (diffusion.model_input(x_t, ab, "edm", 0.5),
              diffusion.target(x0, eps, ab, "edm", 0.5)):
    np.testing.assert_allclose(np.asarray(jnp.std(got, axis=1)), 1.0, atol=0.01)
  np.testing.assert_allclose(np.asarray(diffusion.target(x0, eps, ab, "edm", 1.0)),
                             -np.asarray(diffusion.target(x0, eps, ab, "v")), atol=1e-5)
  with pytest.raises(ValueError, match="sigma_data must be a number > 0"):
    diffusion.check_sigma_data(0.0)


def test_lognormal_noise_levels_follow_the_normal_cdf():
  """EDM's draw: ln σ_t ~ N(-1.2, 1.2²), rounded up to the schedule's grid. The
  share of draws at or below each grid level σ_t must be Φ((ln σ_t + 1.2)/1.2)
  (math.erf, not the code), within sampling error."""
  import math
  s = schedules.cosine(1000)
  t = np.asarray(diffusion.draw_timesteps(jax.random.key(0), s, 200_000, "lognormal",
                                          (-1.2, 1.2)))
  ab = np.asarray(s.alpha_bars, np.float64)
  log_sigma = 0.5 * np.log((1 - ab) / ab)
  for k in (100, 300, 500, 700, 900):
    phi = 0.5 * (1 + math.erf((log_sigma[k] + 1.2) / (1.2 * math.sqrt(2))))
    assert (t <= k).mean() == pytest.approx(phi, abs=0.004), k
  assert t.min() >= 0 and t.max() <= 999
  # Uniform draws cover the schedule evenly.
  u = np.asarray(diffusion.draw_timesteps(jax.random.key(1), s, 100_000))
  assert abs(u.mean() - 499.5) < 3 and u.min() == 0 and u.max() == 999


def test_unknown_noise_levels():
  with pytest.raises(ValueError, match="noise_levels"):
    diffusion.draw_timesteps(jax.random.key(0), schedules.cosine(10), 4, "beta")


def test_label_mask_rate():
  m = diffusion.label_mask(jax.random.key(0), 20000, 0.2)
  assert m.dtype == jnp.bool_
  assert abs(float(jnp.mean(m)) - 0.8) < 0.015  # 5 standard errors of 0.0028.
  assert bool(jnp.all(diffusion.label_mask(jax.random.key(0), 100, 1.0) == False))  # noqa: E712
  assert bool(jnp.all(diffusion.label_mask(jax.random.key(0), 100, 0.0)))


def test_unknown_prediction():
  with pytest.raises(ValueError, match="prediction"):
    diffusion.target(jnp.zeros(1), jnp.zeros(1), jnp.ones(1), "score")


def _zero_model(params, x_t, t, labels, use_labels, train, rngs):
  return jnp.zeros_like(x_t)


def test_adaptive_weighting_objective_by_hand():
  """EDM2's objective l·e^(-u) + u per example, u = kernel·φ(c) + bias with
  φ_k = √2·cos(2π(f_k·c + p_k)) and c = ln(σ)/4, σ² = (1-ᾱ)/ᾱ; from a model that
  outputs 0, so l is the min-SNR-weighted v-MSE of the draws, written out here."""
  s = schedules.cosine(50)
  x0 = jax.random.uniform(jax.random.key(1), (16, 4, 4, 1), minval=-1, maxval=1)
  labels = jnp.zeros((16,), jnp.int32)
  kernel = jnp.asarray(np.random.default_rng(2).normal(size=64) * 0.3, jnp.float32)
  params = {"kernel": kernel, "bias": jnp.float32(0.4)}
  kw = dict(prediction="v", weighting="min_snr", min_snr_gamma=5.0)
  got = diffusion.loss_fn(_zero_model, {}, s, x0, labels, jax.random.key(3), adaptive=params,
                          **kw)
  # The same draws as loss_fn: t, then ε, from split(key, 4).
  k_t, k_noise, _, _ = jax.random.split(jax.random.key(3), 4)
  t = np.asarray(jax.random.randint(k_t, (16,), 0, 50))
  eps = np.asarray(jax.random.normal(k_noise, x0.shape), np.float64)
  ab = np.asarray(s.alpha_bars, np.float64)[t]
  v = np.sqrt(ab)[:, None, None, None] * eps - np.sqrt(1 - ab)[:, None, None, None] * np.asarray(
      x0, np.float64)
  snr = ab / (1 - ab)
  l = np.minimum(snr, 5.0) / (snr + 1) * np.mean(v**2, axis=(1, 2, 3))
  c = np.log(np.sqrt((1 - ab) / ab)) / 4
  phi = np.sqrt(2) * np.cos(2 * np.pi * (c[:, None] * diffusion._FREQS + diffusion._PHASES))
  u = phi @ np.asarray(kernel, np.float64) + 0.4
  np.testing.assert_allclose(float(got), np.mean(l * np.exp(-u) + u), rtol=1e-5)
  # At u = 0 (its initial value) the objective is the base weighting's loss.
  plain = diffusion.loss_fn(_zero_model, {}, s, x0, labels, jax.random.key(3), **kw)
  at_zero = diffusion.loss_fn(_zero_model, {}, s, x0, labels, jax.random.key(3),
                              adaptive=diffusion.init_adaptive_weighting(), **kw)
  np.testing.assert_allclose(float(at_zero), float(plain), rtol=1e-6)
  np.testing.assert_allclose(float(plain), np.mean(l), rtol=1e-5)


def test_adaptive_weighting_learns_the_log_of_each_levels_loss():
  """The objective's minimum over u is u(σ) = ln E[l | σ]: trained on losses whose
  scale spans three decades across noise levels, u must reach their logarithm
  (to 0.06), so every level's weighted loss l·e^(-u) comes to about 1."""
  import optax
  ab = np.asarray(schedules.cosine(1000).alpha_bars)[::25]
  log_sigma = 0.5 * np.log((1 - ab) / ab)
  want = 1.5 * np.tanh(log_sigma) - 2.0  # ln of the per-level loss, e^-3.5 to e^-0.5.
  ab = jnp.asarray(ab)
  objective = lambda p: jnp.mean(jnp.exp(want) * jnp.exp(-diffusion.adaptive_log_variance(
      p, ab)) + diffusion.adaptive_log_variance(p, ab))
  params, tx = diffusion.init_adaptive_weighting(), optax.adam(0.2)

  @jax.jit
  def step(params, opt):
    updates, opt = tx.update(jax.grad(objective)(params), opt)
    return optax.apply_updates(params, updates), opt

  opt = tx.init(params)
  for _ in range(3000):
    params, opt = step(params, opt)
  u = np.asarray(diffusion.adaptive_log_variance(params, ab))
  np.testing.assert_allclose(u, want, atol=0.06)
  # Finite at ᾱ = 0 and 1 (a zero-terminal-SNR schedule's ends).
  assert np.isfinite(np.asarray(diffusion.adaptive_log_variance(
      params, jnp.asarray([0.0, 1.0])))).all()
