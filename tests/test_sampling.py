"""Samplers against exact math: Gaussian data has a closed-form optimal denoiser."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from exact_denoiser import (edm_form, exact_dpm_solver_moments, exact_sampler_moments,
                            gaussian_denoiser, interval_cfg_affine, onset_grid)
from jaxddpm import guidance, sampling, schedules

K, N, SIGMA = 4, 256, 0.15  # classes, samples per class, data std per pixel
SHAPE = (2, 2, 1)
MUS = np.array([[-0.6, 0.3, 0.0, 0.5], [0.5, -0.4, 0.2, -0.1],
                [0.0, 0.6, -0.5, 0.3], [0.3, 0.0, 0.5, -0.6]], np.float32).reshape(K, *SHAPE)
LABELS = jnp.repeat(jnp.arange(K), N)
# Monte-Carlo tolerance: 4.5 standard errors. Each statistic is checked against
# the exact answer of the discrete sampler, so only sampling error remains;
# P(|z| > 4.5) ≈ 7e-6 per check, ~1e-3 over every check in this file.
Z = 4.5
SCHEDULES = {"linear": schedules.linear(1000), "cosine": schedules.cosine(1000)}
PREDICTIONS = ("eps", "x0", "v")
# (sampler, eta, variance, steps, allowed |finite-step std / sigma - 1|).
# With all T steps the sampler must reproduce the data (the exact finite-step
# std is within 3% of sigma). With 50 steps the reverse variance ignores the
# uncertainty in x̂_0 and samples come out narrower (Bao et al. 2022,
# Analytic-DPM): 8-25% for data this narrow, computed exactly, not guessed.
SETTINGS = [
    ("ddpm", 0.0, "small", 1000, 0.03),
    ("ddpm", 0.0, "large", 1000, 0.03),
    ("ddim", 0.0, "small", 1000, 0.03),
    ("ddim", 1.0, "small", 1000, 0.03),
    ("ddim", 0.0, "small", 50, 0.2),
    ("ddim", 1.0, "small", 50, 0.3),
]


def _run(schedule, prediction, key=0, **kw):
  den = gaussian_denoiser(schedule.alpha_bars, MUS, SIGMA, prediction)
  f = jax.jit(lambda k: sampling.sample_loop(den, schedule, k, LABELS, SHAPE,
                                             prediction=prediction, **kw))
  return np.asarray(f(jax.random.key(key)))


@functools.lru_cache(maxsize=None)
def _run_all_predictions(schedule_name, **kw):
  """{prediction: _run(...) samples} for ε, x₀ and v from one compiled program:
  three scans in one jit compile in under half the time of three jits, and the
  parametrised tests below each check one prediction's entry."""
  schedule = SCHEDULES[schedule_name]
  dens = {p: gaussian_denoiser(schedule.alpha_bars, MUS, SIGMA, p) for p in PREDICTIONS}
  f = jax.jit(lambda k: {p: sampling.sample_loop(d, schedule, k, LABELS, SHAPE, prediction=p,
                                                 **kw) for p, d in dens.items()})
  return {p: np.asarray(x) for p, x in f(jax.random.key(0)).items()}


@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: f"{s[0]}-eta{s[1]}-{s[2]}-S{s[3]}")
@pytest.mark.parametrize("schedule_name", ["linear", "cosine"])
def test_sampler_matches_gaussian_marginals(schedule_name, setting, prediction):
  sampler, eta, variance, steps, bias_tol = setting
  schedule = SCHEDULES[schedule_name]
  x = _run_all_predictions(schedule_name, sampler=sampler, eta=eta, variance=variance,
                           steps=steps)[prediction]
  assert np.all(np.isfinite(x))
  mean, std = exact_sampler_moments(schedule, steps, sampler, eta, variance, 0.0, SIGMA)
  assert abs(std / SIGMA - 1) < bias_tol
  x = x.reshape(K, N, -1)
  mean_err = (x.mean(axis=1) - MUS.reshape(K, -1)) / (std / np.sqrt(N))
  assert np.abs(mean_err).max() < Z, mean_err
  # Std per class, pooled over the 4 pixels: standard error std / sqrt(2n).
  std_err = (x.std(axis=1).mean(axis=1) - std) / (std / np.sqrt(2 * N * x.shape[2]))
  assert np.abs(std_err).max() < Z, std_err


@pytest.mark.parametrize("sampler,steps", [("ddpm", 1000), ("ddim", 50)])
def test_seed_failure_setting_stays_bounded(sampler, steps):
  """Cosine, T=1000, guidance 7: the seed's x_t exploded; ours stays within the marginals.

  With x̂_0 clipped to [-1, 1], x_t = a·x̂_0 + s·(noise) has |x_t| <= a + s·z_max;
  z_max = 6 bounds the largest of ~4,000 standard normals per step (P ≈ 1e-5).
  """
  schedule = SCHEDULES["cosine"]
  den = gaussian_denoiser(schedule.alpha_bars, MUS, SIGMA, "eps")
  x, info = sampling.sample_loop(den, schedule, jax.random.key(3), LABELS, SHAPE,
                                 sampler=sampler, steps=steps, guidance_scale=7.0,
                                 return_trajectory=True)
  ab = np.asarray(schedule.alpha_bars)[np.asarray(info["timesteps"])]
  bound = np.sqrt(ab) + np.sqrt(1 - ab) * 6.0
  assert np.all(np.asarray(info["max_abs"]) <= bound)
  assert np.all(np.isfinite(np.asarray(x)))  # (|x| <= 1 holds by construction: x = clip(x̂0).)
  assert info["x_t"].shape == (steps, K * N, *SHAPE)
  assert info["x0_pred"].shape == (steps, K * N, *SHAPE)
  # Guidance 7 pushes x̂_0 outside the data range at some steps: clipping is active.
  assert float(np.max(info["clip_fraction"])) > 0


@pytest.mark.parametrize("scale", [0.0, 1.0])
def test_cfg_endpoints_equal_plain_sampling(scale):
  """s=1 equals conditional, s=0 unconditional, through the batched CFG path."""
  schedule = SCHEDULES["linear"]
  den = gaussian_denoiser(schedule.alpha_bars, MUS, SIGMA, "eps")
  kw = dict(sampler="ddim", steps=50)
  plain = sampling.sample_loop(den, schedule, jax.random.key(1), LABELS, SHAPE,
                               guidance_scale=scale, **kw)  # One-pass shortcut.
  batched = sampling.sample_loop(den, schedule, jax.random.key(1), LABELS, SHAPE,
                                 guidance_scale=jnp.float32(scale), **kw)  # Two halves.
  np.testing.assert_allclose(np.asarray(batched), np.asarray(plain), atol=1e-5)
  if scale == 0.0:  # Unconditional: samples ignore the labels they were given.
    shuffled = sampling.sample_loop(den, schedule, jax.random.key(1), LABELS[::-1], SHAPE,
                                    guidance_scale=0.0, **kw)
    np.testing.assert_allclose(np.asarray(shuffled), np.asarray(plain), atol=1e-6)


def test_cfg_mean_moves_as_closed_form():
  """Conditional N(mu_c, σ²) and unconditional N(mu_u, σ²) denoisers are affine in
  x_t with the same slope, so their CFG combination is the exact denoiser of
  N(mu_u + s(mu_c - mu_u), σ²): DDIM eta=0 samples must have that mean."""
  schedule = SCHEDULES["cosine"]
  mu_u = np.full(SHAPE, 0.1, np.float32)
  scale = 2.5
  den = gaussian_denoiser(schedule.alpha_bars, MUS * 0.3, SIGMA, "eps", uncond_mean_HWC=mu_u)
  x = sampling.sample_loop(den, schedule, jax.random.key(2), LABELS, SHAPE, sampler="ddim",
                           steps=50, guidance_scale=scale, clip_x0=False)
  x = np.asarray(x).reshape(K, N, -1)
  expected = (mu_u.reshape(1, -1) + scale * (MUS.reshape(K, -1) * 0.3 - mu_u.reshape(1, -1)))
  _, std = exact_sampler_moments(schedule, 50, "ddim", 0.0, "small", 0.0, SIGMA)
  z = (x.mean(axis=1) - expected) / (std / np.sqrt(N))
  assert np.abs(z).max() < Z, z
  # And it really moved: s=2.5 is far from the plain conditional mean.
  assert np.abs(expected - MUS.reshape(K, -1) * 0.3).max() > 20 * std / np.sqrt(N)


def _affine_cfg_denoiser(schedule):
  """Conditional N(0.3 mu_c, σ²) and unconditional N(mu_u, σ²): both affine in x_t
  with the same slope, so any per-step mix of guided and conditional steps has a
  mean that a scalar recursion computes exactly (`_interval_mean`)."""
  mu_u = np.full(SHAPE, 0.1, np.float32)
  den = gaussian_denoiser(schedule.alpha_bars, MUS * 0.3, SIGMA, "eps", uncond_mean_HWC=mu_u)
  return den, mu_u


def _interval_mean(schedule, steps, scale, guided, mu_c, mu_u, sigma=SIGMA):
  """Exact mean of DDIM (eta 0, no clipping) samples when step i (from the noisiest)
  uses the data mean m = mu_u + s(mu_c - mu_u) if guided[i] else mu_c: the exact
  x̂_0 = m + (aσ²/r²)(x_t - a m) is affine, so the mean of x_t follows the same steps."""
  sched = schedules.respace(schedule, steps)
  ab = np.asarray(sched.alpha_bars, np.float64)[::-1]
  ab_prev = np.asarray(sched.alpha_bars_prev, np.float64)[::-1]
  mean = np.zeros_like(mu_c, np.float64)
  for i in range(steps):
    m = mu_u + scale * (mu_c - mu_u) if guided[i] else mu_c
    a, r2 = np.sqrt(ab[i]), ab[i] * sigma**2 + 1 - ab[i]
    x0 = m + a * sigma**2 / r2 * (mean - a * m)
    eps = (mean - a * x0) / np.sqrt(1 - ab[i])
    mean = np.sqrt(ab_prev[i]) * x0 + np.sqrt(1 - ab_prev[i]) * eps
  return mean


def test_guidance_interval_guides_exactly_the_steps_in_it():
  """Guidance only where σ = sqrt((1-ᾱ)/ᾱ) is in (low, high]. Both denoisers are
  affine in x_t with the same slope, so with DDIM (eta 0) each sample is
  c·x_T + b, with the same c whichever steps are guided and b the exact mean of
  that mix of guided and conditional steps: differences between runs from the same
  x_T must equal differences of `_interval_mean`, with no sampling error."""
  schedule, steps, scale, interval = SCHEDULES["cosine"], 50, 3.0, (0.5, 3.0)
  den, mu_u = _affine_cfg_denoiser(schedule)
  run = lambda **kw: np.asarray(sampling.sample_loop(  # noqa: E731
      den, schedule, jax.random.key(2), LABELS, SHAPE, sampler="ddim", steps=steps,
      clip_x0=False, **kw)).reshape(K, N, -1)
  x = run(guidance_scale=scale, guidance_interval=interval)
  x_every, x_none = run(guidance_scale=scale), run(guidance_scale=1.0)
  ab = np.asarray(schedules.respace(schedule, steps).alpha_bars, np.float64)[::-1]
  sigma = np.sqrt((1 - ab) / ab)
  guided = (sigma > interval[0]) & (sigma <= interval[1])
  assert 5 < guided.sum() < steps - 5  # A real mix, in the middle of the schedule.
  mu_c = (MUS * 0.3).reshape(K, -1).astype(np.float64)
  mu_u = mu_u.reshape(1, -1)
  expected = _interval_mean(schedule, steps, scale, guided, mu_c, mu_u)
  every = _interval_mean(schedule, steps, scale, np.ones(steps, bool), mu_c, mu_u)
  none = _interval_mean(schedule, steps, scale, np.zeros(steps, bool), mu_c, mu_u)
  np.testing.assert_allclose(x - x_every, np.broadcast_to((expected - every)[:, None], x.shape),
                             atol=2e-4)
  np.testing.assert_allclose(x - x_none, np.broadcast_to((expected - none)[:, None], x.shape),
                             atol=2e-4)
  # One guided step more or less at either end would be seen (and the mix is neither end).
  for shifted in (np.roll(guided, 1), np.roll(guided, -1)):
    other = _interval_mean(schedule, steps, scale, shifted, mu_c, mu_u)
    assert np.abs(other - expected).max() > 10 * 2e-4
  assert np.abs(expected - every).max() > 0.1 and np.abs(expected - none).max() > 0.1
  # The recursion itself: guiding every step gives CFG's closed-form mean (up to the
  # start at mean 0 instead of sqrt(ᾱ_T)·m, ~1e-5 here).
  np.testing.assert_allclose(every, mu_u + scale * (mu_c - mu_u), atol=1e-4)


def test_guidance_interval_endpoints():
  """An interval holding every step's σ is plain CFG; one holding none is s = 1.
  A traced scale (the picture sweeps vmap it) gives the same as a Python one."""
  schedule = SCHEDULES["linear"]
  den, _ = _affine_cfg_denoiser(schedule)
  run = lambda **kw: np.asarray(sampling.sample_loop(  # noqa: E731
      den, schedule, jax.random.key(3), LABELS, SHAPE, sampler="ddim", steps=20, **kw))
  plain = run(guidance_scale=2.5)
  np.testing.assert_array_equal(run(guidance_scale=2.5, guidance_interval=(0.0, 1e9)), plain)
  np.testing.assert_allclose(run(guidance_scale=2.5, guidance_interval=(1e8, 1e9)),
                             run(guidance_scale=1.0), atol=1e-6)
  mixed = run(guidance_scale=2.5, guidance_interval=(0.5, 3.0))
  np.testing.assert_allclose(run(guidance_scale=jnp.float32(2.5), guidance_interval=(0.5, 3.0)),
                             mixed, atol=1e-5)
  assert np.abs(mixed - plain).max() > 0.01


def _affine_guide(schedule):
  """A guide for autoguidance: the exact conditional denoiser of N(mu_g[c], σ²),
  a different mean per class but the same σ, so it is affine in x_t with the same
  slope as the main model's conditional denoiser (`_affine_cfg_denoiser`)."""
  mu_g = (MUS * 0.1 + 0.05).astype(np.float32)
  guide = gaussian_denoiser(schedule.alpha_bars, mu_g, SIGMA, "eps")
  calls = []

  def guide_fn(x_t, t, labels):
    calls.append(1)  # Counted at trace time: how many guide passes a step holds.
    return guide(x_t, t, labels, jnp.ones(x_t.shape[:1], bool))

  return guide_fn, mu_g, calls


def test_autoguidance_moves_mean_as_closed_form():
  """Autoguidance: guide + s·(cond - guide) with the guide's conditional prediction in
  place of the unconditional one. With both denoisers affine with the same slope,
  DDIM (eta 0) differences from the same x_T equal the exact mean recursion's, with
  the guide's class means as the "negative" means; also inside an interval."""
  schedule, steps, scale, interval = SCHEDULES["cosine"], 50, 2.5, (0.5, 3.0)
  den, _ = _affine_cfg_denoiser(schedule)
  guide_fn, mu_g, _ = _affine_guide(schedule)
  run = lambda **kw: np.asarray(sampling.sample_loop(  # noqa: E731
      den, schedule, jax.random.key(4), LABELS, SHAPE, sampler="ddim", steps=steps,
      clip_x0=False, **kw)).reshape(K, N, -1)
  x_cond = run(guidance_scale=1.0)
  mu_c = (MUS * 0.3).reshape(K, -1).astype(np.float64)
  mu_g = mu_g.reshape(K, -1).astype(np.float64)
  none = _interval_mean(schedule, steps, scale, np.zeros(steps, bool), mu_c, mu_g)
  every = _interval_mean(schedule, steps, scale, np.ones(steps, bool), mu_c, mu_g)
  x = run(guidance_scale=scale, guide_fn=guide_fn)
  np.testing.assert_allclose(x - x_cond, np.broadcast_to((every - none)[:, None], x.shape),
                             atol=2e-4)
  assert np.abs(every - none).max() > 0.1  # It moved, and by the guide's means.
  ab = np.asarray(schedules.respace(schedule, steps).alpha_bars, np.float64)[::-1]
  sigma = np.sqrt((1 - ab) / ab)
  guided = (sigma > interval[0]) & (sigma <= interval[1])
  mixed = _interval_mean(schedule, steps, scale, guided, mu_c, mu_g)
  x = run(guidance_scale=scale, guide_fn=guide_fn, guidance_interval=interval)
  np.testing.assert_allclose(x - x_cond, np.broadcast_to((mixed - none)[:, None], x.shape),
                             atol=2e-4)


def test_autoguidance_endpoints():
  """s = 1 is the conditional model alone (the guide never runs), s = 0 the guide
  alone; a traced scale gives what a Python one does."""
  schedule = SCHEDULES["linear"]
  den, _ = _affine_cfg_denoiser(schedule)
  guide_fn, mu_g, calls = _affine_guide(schedule)
  guide_den = gaussian_denoiser(schedule.alpha_bars, mu_g, SIGMA, "eps")
  run = lambda d, **kw: np.asarray(sampling.sample_loop(  # noqa: E731
      d, schedule, jax.random.key(5), LABELS, SHAPE, sampler="ddim", steps=20, **kw))
  np.testing.assert_array_equal(run(den, guidance_scale=1.0, guide_fn=guide_fn),
                                run(den, guidance_scale=1.0))
  assert not calls
  np.testing.assert_allclose(run(den, guidance_scale=0.0, guide_fn=guide_fn),
                             run(guide_den, guidance_scale=1.0), atol=1e-6)
  np.testing.assert_allclose(run(den, guidance_scale=jnp.float32(2.5), guide_fn=guide_fn),
                             run(den, guidance_scale=2.5, guide_fn=guide_fn), atol=1e-5)


def test_guide_must_share_data_and_diffusion(tiny_config):
  guide = tiny_config.copy_and_resolve_references()
  guide.model.base_channels = 4  # Smaller, trained for less: what a guide should be.
  guide.train.num_steps = 10
  guidance.check_guide(tiny_config, guide)
  # No guide workdir: no guide, CFG.
  assert guidance.load_guide(tiny_config, "") == (None, None)
  assert guidance.make_guide_fn(None, None) is None
  guide.diffusion.prediction = "x0"
  guide.data.image_size = 16
  assert tiny_config.diffusion.prediction == "v"
  with pytest.raises(ValueError, match=r"data.image_size: 16 \(model: 8\); "
                                       r"diffusion.prediction: 'x0' \(model: 'v'\)"):
    guidance.check_guide(tiny_config, guide)


def test_same_key_same_samples_different_key_different():
  schedule = SCHEDULES["linear"]
  kw = dict(sampler="ddpm", steps=100)
  a = _run(schedule, "eps", key=5, **kw)
  b = _run(schedule, "eps", key=5, **kw)
  c = _run(schedule, "eps", key=6, **kw)
  np.testing.assert_array_equal(a, b)
  assert np.abs(a - c).mean() > 0.05


def test_ddim_eta_adds_noise():
  """eta > 0 must actually draw per-step noise (a keyless step would ignore it)."""
  schedule = SCHEDULES["linear"]
  den = gaussian_denoiser(schedule.alpha_bars, MUS, SIGMA, "eps")
  run = lambda eta, key: np.asarray(sampling.sample_loop(
      den, schedule, key, LABELS, SHAPE, sampler="ddim", steps=50, eta=eta))
  k = jax.random.key(0)
  assert np.abs(run(1.0, k) - run(0.0, k)).mean() > 0.01


def test_edm_prediction_samples_as_the_same_denoiser_predicting_x0():
  """A network in EDM's form (fed c_in·x, returning F) of the exact denoiser must
  give the x₀-predicting denoiser's samples: the sampler scales the input by c_in
  and reads x̂_0 = c_skip·x + c_out·F. Guided, so the unconditional pass goes the
  same way."""
  schedule = SCHEDULES["cosine"]
  x0_den = gaussian_denoiser(schedule.alpha_bars, MUS, SIGMA, "x0")
  run = jax.jit(lambda k: {p: sampling.sample_loop(
      d, schedule, k, LABELS[::8], SHAPE, sampler="ddim", steps=20, guidance_scale=2.0,
      prediction=p, sigma_data=0.5)
      for p, d in (("x0", x0_den), ("edm", edm_form(x0_den, schedule.alpha_bars, 0.5)))})
  x = run(jax.random.key(3))
  np.testing.assert_allclose(np.asarray(x["edm"]), np.asarray(x["x0"]), atol=1e-4)


def test_zero_terminal_snr_v_prediction_samples_data():
  schedule = schedules.linear(1000, zero_terminal_snr=True)
  x = _run(schedule, "v", sampler="ddim", steps=1000).reshape(K, N, -1)
  assert np.all(np.isfinite(x))
  assert np.abs(x.mean(axis=1) - MUS.reshape(K, -1)).max() < Z * SIGMA / np.sqrt(N)
  with pytest.raises(ValueError, match="zero terminal SNR"):
    _run(schedule, "eps", sampler="ddim", steps=50)


@pytest.mark.parametrize("kw,match", [
    (dict(sampler="euler"), "unknown sampler"),
    (dict(steps=0), "steps"),
    (dict(steps=1001), "steps"),
    (dict(guidance_scale=-1.0), "guidance_scale"),
    (dict(prediction="score"), "prediction"),
    (dict(variance="medium"), "variance"),
    (dict(eta=-0.5), "eta"),
    (dict(spacing="karras"), "unknown timestep spacing"),
    (dict(guidance_interval=(3.0, 1.0)), "guidance_interval"),
    (dict(guidance_interval=(-1.0, 1.0)), "guidance_interval"),
    (dict(guidance_interval=(1.0,)), "guidance_interval"),
])
def test_bad_options_are_value_errors(kw, match):
  schedule = SCHEDULES["linear"]
  den = gaussian_denoiser(schedule.alpha_bars, MUS, SIGMA, "eps")
  with pytest.raises(ValueError, match=match):
    sampling.sample_loop(den, schedule, jax.random.key(0), LABELS, SHAPE, **kw)


def test_sampler_traces_once_per_shape():
  """One compiled scan: a second call with new key and labels must not retrace."""
  schedule = SCHEDULES["linear"]
  den = gaussian_denoiser(schedule.alpha_bars, MUS, SIGMA, "eps")
  traces = []

  def counted(x_t, t, labels, use_labels):
    traces.append(1)
    return den(x_t, t, labels, use_labels)

  f = jax.jit(lambda k, l: sampling.sample_loop(counted, schedule, k, l, SHAPE, steps=20,
                                                guidance_scale=3.0))
  f(jax.random.key(0), LABELS).block_until_ready()
  f(jax.random.key(1), LABELS[::-1]).block_until_ready()
  assert len(traces) == 1  # One denoiser call per trace: CFG is a single batched pass.


def test_make_sampler_end_to_end(tiny_config):
  from jaxddpm import train
  tiny_config.sampling.steps = 5
  model, *_ = train.make_steps(tiny_config)
  params = train.init_params(model, tiny_config, jax.random.key(0))
  sample = sampling.make_sampler(tiny_config, guidance_scale=3.0)
  images = sample(params, jax.random.key(0), [0, 1, 2, 3])
  assert images.shape == (4, 8, 8, 1) and images.dtype == jnp.float32
  with pytest.raises(ValueError, match=r"labels must be in \[0, 4\)"):
    sample(params, jax.random.key(0), [0, 4])
  with pytest.raises(ValueError, match="labels must be int"):
    sample(params, jax.random.key(0), np.zeros((2,), np.float32))
  assert sample(params, jax.random.PRNGKey(0), [0, 1]).shape == (2, 8, 8, 1)  # Old-style key.
  for key in (0, jax.random.split(jax.random.key(0), 2), np.zeros(2, np.float32)):
    with pytest.raises(ValueError, match=r"key must be one PRNG key, e.g. jax.random.key\(0\)"):
      sample(params, key, [0, 1])
  # Params of another model: a message that says so, not flax's scope error.
  wrong = jax.tree.map(lambda p: p[..., :1], params)
  with pytest.raises(ValueError, match="params do not fit this config's model.*load_checkpoint"):
    sample(wrong, jax.random.key(0), [0, 1])
  with pytest.raises(ValueError, match="params do not fit.*Could not find parameter"):
    sample({"other": params}, jax.random.key(0), [0, 1])
  # Flax's variables ({"params": params}) instead of the params, and no params at all.
  for bad, why in (({"params": params}, "extra params layer"), (None, "dictionary of collections")):
    with pytest.raises(ValueError, match=f"params do not fit.*{why}"):
      sample(bad, jax.random.key(0), [0, 1])
  with pytest.raises(ValueError, match="unknown sampling option"):
    sampling.make_sampler(tiny_config, guidance=3.0)
  with pytest.raises(ValueError, match="guidance_scale"):
    sampling.make_sampler(tiny_config, guidance_scale=-1.0)
  with pytest.raises(ValueError, match="steps"):
    sampling.make_sampler(tiny_config, steps=101)
  with pytest.raises(ValueError, match="guidance_interval"):
    sampling.make_sampler(tiny_config, guidance_interval=(2.0, 1.0))
  # A workdir's config.json stores the interval as a list.
  tiny_config.sampling.guidance_interval = ()
  listed = sampling.make_sampler(tiny_config, guidance_scale=3.0, guidance_interval=[0.5, 20.0])
  assert listed(params, jax.random.key(0), [0, 1]).shape == (2, 8, 8, 1)
  with pytest.raises(ValueError, match="guide_workdir='nowhere': no config.json"):
    sampling.make_sampler(tiny_config, guide_workdir="nowhere")


def test_make_sampler_with_a_guide_workdir(tiny_config, tmp_path):
  """guide_workdir loads a saved run as the guide: a smaller model runs and moves
  the samples; the model guiding itself is plain conditional sampling."""
  from jaxddpm import checkpoint, train

  def save_run(config, folder, seed):
    model, _, tx, *_ = train.make_steps(config)
    params = train.init_params(model, config, jax.random.key(seed))
    # Away from the init, whose zero output layers make every model predict alike.
    # NumPy noise and one jitted state: op by op (or one threefry per leaf in a
    # jit), the leaves' shapes cost ~25 s of compiling.
    rng = np.random.default_rng(seed)
    params = jax.tree.map(lambda p: p + 0.1 * rng.standard_normal(p.shape, np.float32),
                          jax.device_get(params))
    state = jax.jit(lambda p: train.create_train_state(p, tx))(params)
    folder.mkdir()
    checkpoint.save_config(str(folder), config)
    saver = checkpoint.Checkpointer(str(folder), keep=1)
    saver.save(state)
    saver.close()
    return state.params

  tiny_config.sampling.steps = 5
  params = save_run(tiny_config, tmp_path / "model", 0)
  small = tiny_config.copy_and_resolve_references()
  small.model.update(base_channels=4, attention_resolutions=())
  save_run(small, tmp_path / "guide", 1)
  key, labels = jax.random.key(0), [0, 1, 2, 3]
  cond = np.asarray(sampling.make_sampler(tiny_config, guidance_scale=1.0)(params, key, labels))
  guided = np.asarray(sampling.make_sampler(
      tiny_config, guidance_scale=3.0, guide_workdir=str(tmp_path / "guide"))(params, key, labels))
  assert guided.shape == cond.shape and np.abs(guided - cond).max() > 1e-3
  itself = np.asarray(sampling.make_sampler(
      tiny_config, guidance_scale=3.0, guide_workdir=str(tmp_path / "model"))(params, key, labels))
  np.testing.assert_allclose(itself, cond, atol=1e-5)
  other = tiny_config.copy_and_resolve_references()
  other.diffusion.schedule = "linear" if tiny_config.diffusion.schedule == "cosine" else "cosine"
  with pytest.raises(ValueError, match="cannot guide this model: diffusion.schedule"):
    sampling.make_sampler(other, guide_workdir=str(tmp_path / "guide"))


@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("steps,bias_tol", [(10, 0.6), (20, 0.35), (250, 0.01)])
@pytest.mark.parametrize("schedule_name", ["linear", "cosine"])
def test_dpm_solver_matches_gaussian_marginals(schedule_name, steps, bias_tol, prediction):
  """DPM-Solver++(2M) against the exact denoiser: samples must match the solver's
  own exact finite-step moments to Monte-Carlo error. Those converge to the data
  (within 1% at 250 steps); at 10-20 uniformly spaced steps the std of data this
  narrow comes out 14-58% low (computed exactly; DDIM: 20-58%)."""
  schedule = SCHEDULES[schedule_name]
  x = _run_all_predictions(schedule_name, sampler="dpmpp_2m", steps=steps)[prediction]
  x = x.reshape(K, N, -1)
  _, std = exact_dpm_solver_moments(schedule, steps, 0.0, SIGMA)
  assert abs(std / SIGMA - 1) < bias_tol, std / SIGMA
  mean_err = (x.mean(axis=1) - MUS.reshape(K, -1)) / (std / np.sqrt(N))
  assert np.abs(mean_err).max() < Z, mean_err
  std_err = (x.std(axis=1).mean(axis=1) - std) / (std / np.sqrt(2 * N * x.shape[2]))
  assert np.abs(std_err).max() < Z, std_err


def test_first_order_dpm_solver_step_is_ddim():
  """Without its second-order correction a DPM-Solver++ step is exactly DDIM η=0:
  σ'/σ·x - sqrt(ᾱ')(e^{-h} - 1)·x̂0 = (s'/s)·x + (a' - a·s'/s)·x̂0. An independent
  check of the coefficients, which the moment recursion above reuses."""
  sched = schedules.respace(SCHEDULES["cosine"], 20)
  c = sampling.dpm_solver_coefficients(sched.alpha_bars)
  ab = np.asarray(sched.alpha_bars, np.float64)
  ab_prev = np.asarray(sched.alpha_bars_prev, np.float64)
  a, s, a_p, s_p = np.sqrt(ab), np.sqrt(1 - ab), np.sqrt(ab_prev), np.sqrt(1 - ab_prev)
  np.testing.assert_allclose(c["c_x"], s_p / s, rtol=1e-5)
  np.testing.assert_allclose(c["c_0"], a_p - a * s_p / s, rtol=1e-5, atol=1e-6)
  # First order at the first step, into t = 0 and from it.
  w = c["w_last"]
  assert w[0] == w[1] == w[-1] == 0 and np.all(w[2:-1] < 0)
  np.testing.assert_allclose(c["w_cur"] + c["w_last"], 1.0, rtol=1e-6)


def test_dpm_solver_coefficients_by_hand():
  """Four steps with ᾱ = 0.9, 0.5, 0.2, 0.05 (cleanest first), where λ = log(α/s)
  = ½log(ᾱ/(1-ᾱ)) is ln 3, 0, -ln 2, -½ln 19, worked by hand from Lu et al. 2022,
  Alg. 2: x' = (s'/s)·x - α'(e^{-h} - 1)·D. Only index 2 is second order (the first
  step has no history; the last two are first order): there h = ln 2, the step
  before had h = ln(√19/2), r = ln(√19/2)/ln 2 and D = (1 + 1/(2r))·x̂0 - 1/(2r)·x̂0_prev."""
  c = sampling.dpm_solver_coefficients(np.array([0.9, 0.5, 0.2, 0.05]))
  h_before = np.log(np.sqrt(19) / 2)
  w = np.log(2) / (2 * h_before)  # 1/(2r) = 0.44485...
  want = dict(
      c_x=[0.0, np.sqrt(0.1 / 0.5), np.sqrt(0.5 / 0.8), np.sqrt(0.8 / 0.95)],
      c_0=[1.0, np.sqrt(0.9) * (1 - 1 / 3), np.sqrt(0.5) * (1 - 1 / 2),
           np.sqrt(0.2) * (1 - 2 / np.sqrt(19))],
      w_cur=[1.0, 1.0, 1.0 + w, 1.0], w_last=[0.0, 0.0, -w, 0.0])
  for name, values in want.items():
    np.testing.assert_allclose(c[name], values, rtol=1e-6, atol=1e-7, err_msg=name)
  assert abs(w - 0.444854) < 1e-6


@pytest.mark.parametrize("sigma", [0.15, 0.5])
@pytest.mark.parametrize("schedule_name", ["linear", "cosine"])
def test_dpm_solver_beats_ddim_and_converges(schedule_name, sigma):
  """Second order must pay, computed exactly on Gaussian data: DPM-Solver++(2M)'s std
  error is below DDIM's at every step count and shrinks as the steps grow. (With a
  second-order step into t = 0 it failed both: on linear, narrow data +17% at 50
  steps against DDIM's -16%, and -16%, +16%, +17% at 10, 20, 50 steps.)"""
  schedule = SCHEDULES[schedule_name]
  errors = []
  for steps in (10, 20, 50, 250):
    _, std = exact_dpm_solver_moments(schedule, steps, 0.0, sigma)
    _, ddim_std = exact_sampler_moments(schedule, steps, "ddim", 0.0, "small", 0.0, sigma)
    errors.append(abs(std / sigma - 1))
    assert errors[-1] < abs(ddim_std / sigma - 1), (steps, std / sigma, ddim_std / sigma)
  assert errors == sorted(errors, reverse=True), errors


@pytest.mark.parametrize("sampler", ["ddim", "dpmpp_2m"])
@pytest.mark.parametrize("schedule_name", ["linear", "cosine"])
def test_logsnr_spacing_matches_gaussian_marginals(schedule_name, sampler):
  """sample_loop with log-SNR-even steps against the exact moments of the same steps."""
  schedule = SCHEDULES[schedule_name]
  x = _run(schedule, "v", sampler=sampler, steps=20, spacing="logsnr").reshape(K, N, -1)
  if sampler == "ddim":
    _, std = exact_sampler_moments(schedule, 20, "ddim", 0.0, "small", 0.0, SIGMA, "logsnr")
  else:
    _, std = exact_dpm_solver_moments(schedule, 20, 0.0, SIGMA, "logsnr")
  mean_err = (x.mean(axis=1) - MUS.reshape(K, -1)) / (std / np.sqrt(N))
  assert np.abs(mean_err).max() < Z, mean_err
  std_err = (x.std(axis=1).mean(axis=1) - std) / (std / np.sqrt(2 * N * x.shape[2]))
  assert np.abs(std_err).max() < Z, std_err


@pytest.mark.parametrize("schedule_name", ["linear", "cosine"])
def test_logsnr_spacing_resolves_narrow_data(schedule_name):
  """Why DPM-Solver++ needs log-SNR-even steps, computed exactly: narrow data (fine
  detail, std 0.02-0.15) is denoised at low noise, where uniform steps are few and
  large in λ. There logsnr at least halves the solver's std error at 10, 20 and 50
  steps, and at 20 steps brings data of std >= 0.05 within 3% (uniform: 14-57% low)."""
  schedule = SCHEDULES[schedule_name]
  for sigma in (0.02, 0.05, 0.15):
    for steps in (10, 20, 50):
      err = {sp: abs(exact_dpm_solver_moments(schedule, steps, 0.0, sigma, sp)[1] / sigma - 1)
             for sp in schedules.SPACINGS}
      assert err["logsnr"] < 0.5 * err["uniform"], (sigma, steps, err)
      if steps == 20 and sigma >= 0.05:
        assert err["logsnr"] < 0.03, (sigma, err)


def test_dpm_solver_with_guidance_moves_mean_as_closed_form():
  schedule = SCHEDULES["cosine"]
  mu_u, scale = np.full(SHAPE, 0.1, np.float32), 2.5
  den = gaussian_denoiser(schedule.alpha_bars, MUS * 0.3, SIGMA, "eps", uncond_mean_HWC=mu_u)
  x = sampling.sample_loop(den, schedule, jax.random.key(2), LABELS, SHAPE, sampler="dpmpp_2m",
                           steps=20, guidance_scale=scale, clip_x0=False)
  expected = mu_u.reshape(1, -1) + scale * (MUS.reshape(K, -1) * 0.3 - mu_u.reshape(1, -1))
  _, std = exact_dpm_solver_moments(schedule, 20, 0.0, SIGMA)
  z = (np.asarray(x).reshape(K, N, -1).mean(axis=1) - expected) / (std / np.sqrt(N))
  assert np.abs(z).max() < Z, z


def test_dpm_solver_steps_from_where_guidance_switches_on():
  """With guidance in an interval the guided prediction jumps where it switches on.
  DPM-Solver++ with log-SNR steps and s >= 2 then steps from exactly that timestep,
  at first order: the grid keeps its count and ends, gains the onset and loses its
  nearest point; DDIM, uniform steps and s < 2 keep the plain grid. sample_loop must
  be that solver: each output equals the exact q + p·x_T of interval_cfg_affine for
  its own x_T (no sampling error), and not the plain grid's answer."""
  schedule, interval, scale = SCHEDULES["cosine"], (0.28, 5.42), 3.0
  onset = guidance.onset_timesteps(schedule.alpha_bars, interval)
  sigma = np.sqrt((1 - np.asarray(schedule.alpha_bars, np.float64)) /
                  np.asarray(schedule.alpha_bars, np.float64))
  assert len(onset) == 1 and sigma[onset[0]] <= 5.42 < sigma[onset[0] + 1]
  for none in ((), (0.28, 1e9)):  # Guided from x_T on, or at every step: no onset.
    assert guidance.onset_timesteps(schedule.alpha_bars, none).size == 0
  plain = np.asarray(schedules.respace(schedule, 20, "logsnr").timesteps)
  grid = np.asarray(sampling.step_schedule(
      schedule, 20, spacing="logsnr", sampler="dpmpp_2m", guidance_scale=scale,
      guidance_interval=interval).timesteps)
  np.testing.assert_array_equal(grid, onset_grid(schedule, 20, interval))
  assert onset[0] in grid and onset[0] not in plain and len(grid) == 20
  assert grid[0] == plain[0] and grid[-1] == plain[-1] and np.all(np.diff(grid) > 0)
  assert len(set(plain) - set(grid)) == 1
  for kw in (dict(sampler="ddim"), dict(guidance_scale=1.5), dict(guidance_interval=()),
             dict(spacing="uniform"), dict(guidance_scale=jnp.float32(3.0))):
    kw = dict(dict(sampler="dpmpp_2m", spacing="logsnr", guidance_scale=scale,
                   guidance_interval=interval), **kw)
    np.testing.assert_array_equal(sampling.step_schedule(schedule, 20, **kw).timesteps,
                                  schedules.respace(schedule, 20, kw["spacing"]).timesteps)

  # Wide data (std 1), where the onset step matters (narrow data: next test).
  mu_u = np.full(SHAPE, 0.1, np.float32)
  den = gaussian_denoiser(schedule.alpha_bars, MUS, 1.0, "eps", uncond_mean_HWC=mu_u)
  mu_c, mu_u = MUS.reshape(K, -1).astype(np.float64), mu_u.reshape(1, -1).astype(np.float64)
  labels = jnp.repeat(jnp.arange(K), 8)
  for spacing, s in (("logsnr", scale), ("logsnr", 1.5), ("uniform", scale)):
    x, info = sampling.sample_loop(den, schedule, jax.random.key(4), labels, SHAPE,
                                   sampler="dpmpp_2m", steps=20, spacing=spacing,
                                   guidance_scale=s, guidance_interval=interval,
                                   clip_x0=False, return_trajectory=True)
    x_T = np.asarray(info["x_t"][0], np.float64).reshape(K, 8, -1)
    x = np.asarray(x, np.float64).reshape(K, 8, -1)
    onset_step = sampling.takes_onset_step("dpmpp_2m", spacing, s, interval)
    assert onset_step == (spacing == "logsnr" and s >= 2)
    q, p = interval_cfg_affine(schedule, 20, spacing, "dpmpp_2m", 1.0, mu_c, mu_u, s, interval,
                               onset=onset_step)
    np.testing.assert_allclose(x, q[:, None] + p * x_T, atol=2e-4)
    if onset_step:
      q_plain, p_plain = interval_cfg_affine(schedule, 20, spacing, "dpmpp_2m", 1.0, mu_c, mu_u,
                                             s, interval, onset=False)
      assert np.abs(q_plain[:, None] + p_plain * x_T - x).max() > 20 * 2e-4


def test_dpm_solver_onset_step_cuts_its_error():
  """Why DPM-Solver++ steps from the guidance onset, computed exactly. Data like
  images: axes of std 0.1-4, class means apart by half an axis's std (most along the
  wide axes, as digit and garment shapes are). Against the exact ODE (DDIM with all
  T steps, the interval's guidance), the onset step at least halves the solver's
  mean error with log-SNR steps at 10 and 20 steps, guidance 2 and 3 in the EDM2
  interval, on the cosine schedule, and is never worse on the linear one."""
  sigma = np.logspace(-1.0, 0.6, 16)
  signs = np.where(np.random.default_rng(0).random((K, 16)) < 0.5, -1.0, 1.0)
  mu_c, mu_u, interval = 0.5 * sigma * signs, np.zeros((1, 16)), (0.28, 5.42)
  for name, schedule in SCHEDULES.items():
    for scale in (2.0, 3.0):
      guided_T = guidance.guided_steps(schedule.alpha_bars, interval)[::-1]
      exact = _interval_mean(schedule, 1000, scale, guided_T, mu_c, mu_u, sigma)
      for steps in (10, 20):
        err = {onset: np.sqrt(np.mean((interval_cfg_affine(
                   schedule, steps, "logsnr", "dpmpp_2m", sigma, mu_c, mu_u, scale, interval,
                   onset)[0] - exact) ** 2))
               for onset in (False, True)}
        bound = 0.5 if name == "cosine" else 1.0
        assert err[True] < bound * err[False], (name, scale, steps, err)


def test_dpm_solver_zero_terminal_snr():
  schedule = schedules.cosine(1000, zero_terminal_snr=True)
  x = _run(schedule, "v", sampler="dpmpp_2m", steps=20).reshape(K, N, -1)
  assert np.all(np.isfinite(x))
  assert np.abs(x.mean(axis=1) - MUS.reshape(K, -1)).max() < Z * SIGMA / np.sqrt(N)


def test_shared_encoder_guidance_matches_two_pass_sampling():
  """make_denoisers gives TemplateUNet's one-encoder CFG (and nothing for the UNet);
  sampling with it reproduces the generic two-half sampler."""
  from jaxddpm.models import TemplateUNet, UNet
  model = TemplateUNet(down_chs=(8, 16, 32), t_embed_dim=8, num_classes=4, num_timesteps=1000)
  labels = jnp.array([0, 3, 1])
  # Random params of the right shapes (flax's initialisers compile slowly on the CPU).
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((3, 8, 8, 1)),
                          jnp.zeros((3,), jnp.int32), labels, jnp.ones((3,), bool))["params"]
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda v: jnp.asarray(rng.normal(0, 0.3, v.shape), jnp.float32), shapes)
  denoise, guided = guidance.make_denoisers(model, params)
  assert guided is not None
  assert guidance.make_denoisers(UNet(base_channels=8, channel_mults=(1,), num_res_blocks=1,
                                      attention_resolutions=()), params)[1] is None
  run = jax.jit(lambda shared: sampling.sample_loop(
      denoise, SCHEDULES["cosine"], jax.random.key(2), labels, (8, 8, 1), steps=3,
      guidance_scale=3.0, guided_fn=guided if shared else None), static_argnums=0)
  np.testing.assert_allclose(run(True), run(False), rtol=1e-4, atol=1e-4)


def test_settings_that_differ_get_file_names_that_differ(tiny_config):
  """`--eta=1` once wrote over the eta-0 samples of the same sampler, steps and scale."""
  variants = [{}, dict(eta=1.0), dict(eta=0.5), dict(clip_x0=False),
              dict(sampler="ddpm", steps=100), dict(sampler="ddpm", steps=100, variance="large"),
              dict(guidance_interval=(0.3, 5.0)), dict(guidance_scale=3.0),
              dict(spacing="logsnr")]
  names = [sampling.settings_name(sampling.resolve_options(tiny_config, v)) for v in variants]
  assert len(set(names)) == len(names), names
  assert names[1] == f"ddim{tiny_config.sampling.steps}_g{tiny_config.sampling.guidance_scale:g}_eta1"
