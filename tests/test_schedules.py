"""Schedules against their closed forms and the identities DDPM relies on."""

import numpy as np
import pytest

from jaxddpm import schedules

ALL = {
    "linear": lambda: schedules.linear(1000),
    "cosine": lambda: schedules.cosine(1000),
    "linear_zt": lambda: schedules.linear(1000, zero_terminal_snr=True),
    "cosine_zt": lambda: schedules.cosine(1000, zero_terminal_snr=True),
    "respaced": lambda: schedules.respace(schedules.cosine(1000), 50),
}


def _f64(a):
  return np.asarray(a, np.float64)


def test_linear_closed_form():
  s = schedules.linear(1000, 1e-4, 0.02)
  betas = np.linspace(1e-4, 0.02, 1000)
  np.testing.assert_allclose(_f64(s.betas), betas, rtol=1e-6)
  np.testing.assert_allclose(_f64(s.alpha_bars), np.cumprod(1 - betas), rtol=1e-5)


def test_cosine_closed_form_and_clipping():
  T, off = 1000, 0.008
  s = schedules.cosine(T, off, max_beta=0.999)
  f = lambda t: np.cos((t / T + off) / (1 + off) * np.pi / 2) ** 2
  t = np.arange(T)
  # ᾱ_t = f(t+1)/f(0) wherever β was not clipped (all but the last step here).
  np.testing.assert_allclose(_f64(s.alpha_bars)[:-1], (f(t + 1) / f(0))[:-1], rtol=1e-5)
  assert np.all(_f64(s.betas) <= 0.999 + 1e-7)
  assert np.isclose(float(s.betas[-1]), 0.999)  # f(T) = 0 would give β = 1.
  clipped = schedules.cosine(T, off, max_beta=0.02)
  assert np.all(_f64(clipped.betas) <= 0.02 + 1e-9)


@pytest.mark.parametrize("name", list(ALL))
def test_monotone_and_in_range(name):
  s = ALL[name]()
  ab = _f64(s.alpha_bars)
  assert np.all(np.diff(ab) < 0)
  assert np.all((ab >= 0) & (ab < 1))
  assert np.all((_f64(s.betas) > 0) & (_f64(s.betas) <= 1))


@pytest.mark.parametrize("name", list(ALL))
def test_posterior_identities(name):
  """q(x_{t-1}|x_t,x_0) must reproduce the marginal q(x_{t-1}|x_0):
  coef1 + coef2·sqrt(ᾱ_t) = sqrt(ᾱ_{t-1}), coef2²(1-ᾱ_t) + β̃_t = 1-ᾱ_{t-1}."""
  s = ALL[name]()
  ab, ab_prev = _f64(s.alpha_bars), _f64(s.alpha_bars_prev)
  c1, c2 = _f64(s.posterior_mean_coef1), _f64(s.posterior_mean_coef2)
  np.testing.assert_allclose(c1 + c2 * np.sqrt(ab), np.sqrt(ab_prev), atol=2e-6)
  np.testing.assert_allclose(c2**2 * (1 - ab) + _f64(s.posterior_variance), 1 - ab_prev,
                             atol=2e-6)
  assert ab_prev[0] == 1.0 and float(s.posterior_variance[0]) == 0.0
  assert np.all(np.isfinite(_f64(s.posterior_log_variance_clipped)))
  np.testing.assert_allclose(_f64(s.posterior_log_variance_clipped)[1:],
                             np.log(_f64(s.posterior_variance)[1:]), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(_f64(s.large_variance)[1:], _f64(s.betas)[1:], rtol=1e-6)


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_float32_matches_float64_recomputation(name):
  s = ALL[name]()
  betas = (schedules.linear_betas(1000) if name == "linear" else schedules.cosine_betas(1000))
  ab = np.cumprod(1 - betas)
  for field in s.__dataclass_fields__:
    if field != "num_train_timesteps":
      assert getattr(s, field).dtype in (np.float32, np.int32), field
  np.testing.assert_allclose(_f64(s.sqrt_one_minus_alpha_bars), np.sqrt(1 - ab), rtol=1e-6)
  np.testing.assert_allclose(_f64(s.sqrt_recipm1_alpha_bars), np.sqrt(1 / ab - 1), rtol=1e-6)
  np.testing.assert_allclose(_f64(s.sqrt_recip_alpha_bars), 1 / np.sqrt(ab), rtol=1e-6)


@pytest.mark.parametrize("base", ["linear", "cosine"])
def test_zero_terminal_snr(base):
  """Lin et al. 2023: sqrt(ᾱ) is shifted and scaled, an affine map of the original
  sqrt(ᾱ) fixed by its two ends (ᾱ_0 kept, ᾱ_{T-1} = 0): every rescaled value must
  lie on the line through those two points, not only the ends."""
  plain = ALL[base]()
  zt = ALL[base + "_zt"]()
  assert float(zt.alpha_bars[-1]) == 0.0
  np.testing.assert_allclose(float(zt.alpha_bars[0]), float(plain.alpha_bars[0]), rtol=1e-6)
  assert float(plain.alpha_bars[-1]) > 0.0
  old, new = np.sqrt(_f64(plain.alpha_bars)), np.sqrt(_f64(zt.alpha_bars))
  line = (old - old[-1]) / (old[0] - old[-1]) * old[0]
  np.testing.assert_allclose(new, line, atol=2e-6)
  # A rescale of ᾱ itself (or of the SNR) would miss the line in the middle.
  assert np.abs(np.sqrt((old**2 - old[-1] ** 2) / (old[0] ** 2 - old[-1] ** 2)) * old[0]
                - line).max() > 10 * 2e-6


def test_respacing_keeps_marginals_at_kept_steps():
  full = schedules.cosine(1000)
  r = schedules.respace(full, 50)
  t = np.asarray(r.timesteps)
  assert len(t) == 50 and t[0] == 0 and t[-1] == 999 and np.all(np.diff(t) > 0)
  np.testing.assert_allclose(_f64(r.alpha_bars), _f64(full.alpha_bars)[t], rtol=1e-5)
  assert r.num_train_timesteps == 1000
  assert schedules.respace(full, 1000) is full
  np.testing.assert_array_equal(schedules.respace_timesteps(10, 1), [9])
  with pytest.raises(ValueError, match="already"):
    schedules.respace(r, 10)


def _logsnr(alpha_bars):
  ab = _f64(alpha_bars)
  with np.errstate(divide="ignore"):
    return 0.5 * (np.log(ab) - np.log1p(-ab))


@pytest.mark.parametrize("name", ["linear", "cosine", "cosine_zt"])
@pytest.mark.parametrize("steps", [1, 2, 10, 20, 50, 250, 1000])
def test_logsnr_spacing(name, steps):
  """Exactly `steps` distinct timesteps from 0 to T-1 (T-1 alone for one step), the
  marginals kept, and λ evenly spread: each timestep the integer nearest the one at
  λ_i (λ even from λ(0) to σ = LOGSNR_SIGMA_MAX), except at the clean end, where λ
  falls faster than integer timesteps resolve, every timestep 0, 1, 2, ... until
  the even grid is coarser (and likewise ..., 998, 999 at the noisy end)."""
  full = ALL[name]()
  r = schedules.respace(full, steps, "logsnr")
  t = np.asarray(r.timesteps)
  assert len(t) == steps and t[-1] == 999 and np.all(np.diff(t) > 0)
  assert steps == 1 or t[0] == 0
  np.testing.assert_allclose(_f64(r.alpha_bars), _f64(full.alpha_bars)[t], rtol=1e-5)
  if steps < 3 or steps == 1000:
    return
  lam = _logsnr(full.alpha_bars)
  targets = np.linspace(lam[0], -np.log(schedules.LOGSNR_SIGMA_MAX), steps - 1)
  grid = np.arange(1000)[np.isfinite(lam)]
  nearest = np.array([grid[np.argmin(np.abs(lam[grid] - v))] for v in targets])
  m = np.argmax(t != np.arange(steps))  # t[:m] = 0, 1, ..., m-1: the clean end.
  tail = 1000 - steps + np.arange(steps)  # Likewise ..., 998, 999 at the noisy end.
  n = steps - np.argmax((t == tail)[::-1] == False)  # noqa: E712  t[n:] = tail[n:].
  np.testing.assert_array_equal(t[m:n], nearest[m:n])
  assert np.all(nearest[:m] <= t[:m])  # Pushed up past merged neighbours, never down.
  # Mostly even in λ at the step counts samplers use; at 250 of 1000 (cosine) over
  # half are runs of consecutive timesteps: the integer grid is the limit there.
  assert steps > 50 or (m - 1) + (steps - 1 - n) < steps // 4, (t, nearest)  # 0, T-1 aside.


def test_logsnr_spacing_goes_to_T_minus_1_on_short_schedules():
  """Where T-1 is below σ_max (linear, T=100: σ ≈ 1.3), λ runs evenly to T-1."""
  full = schedules.linear(100)
  lam = _logsnr(full.alpha_bars)
  t = schedules.logsnr_timesteps(full.alpha_bars, 10)
  assert t[-1] == 99 and len(np.unique(t)) == 10
  h = -np.diff(lam[t[4:]])
  np.testing.assert_allclose(h, h.mean(), rtol=0.35)  # Integer timesteps: near even.


@pytest.mark.parametrize("spacing", schedules.SPACINGS)
@pytest.mark.parametrize("steps", [2, 4, 10, 50])
def test_respace_keeps_given_timesteps(spacing, steps):
  """Timesteps a sampler must step from (keep) take the place of the nearest free
  point: same count, same ends, increasing, one point changed per kept timestep,
  the marginals kept. With fewer than 4 steps there is no free point: unchanged."""
  full = schedules.cosine(1000)
  plain = np.asarray(schedules.respace(full, steps, spacing).timesteps)
  lam = _logsnr(full.alpha_bars)
  coord = lam if spacing == "logsnr" else np.arange(1000.0)
  keep = [t for t in (166, 881) if t not in plain]
  r = schedules.respace(full, steps, spacing, keep)
  t = np.asarray(r.timesteps)
  np.testing.assert_allclose(_f64(r.alpha_bars), _f64(full.alpha_bars)[t], rtol=1e-5)
  if steps < 4:
    np.testing.assert_array_equal(t, plain)
    return
  assert set(keep) <= set(t) and len(t) == steps and np.all(np.diff(t) > 0)
  assert t[0] == plain[0] and t[-1] == plain[-1]
  gone = sorted(set(plain) - set(t))
  assert len(gone) == len(keep)
  for b in keep:  # Each replaced the interior point nearest it in the spacing's coordinate.
    interior = plain[1:-1]
    assert interior[np.argmin(np.abs(coord[interior] - coord[b]))] in gone


@pytest.mark.parametrize("call,match", [
    (lambda: schedules.respace(schedules.linear(100), 10, "uniform", [100]), "keep"),
    (lambda: schedules.make("sigmoid", 100), "unknown schedule"),
    (lambda: schedules.respace(schedules.linear(100), 10, "karras"), "unknown timestep spacing"),
    (lambda: schedules.linear(1), "T"),
    (lambda: schedules.linear(100, 0.1, 0.01), "beta_start"),
    (lambda: schedules.cosine(100, max_beta=0.0), "max_beta"),
    (lambda: schedules.respace(schedules.linear(100), 101), "steps"),
])
def test_bad_arguments(call, match):
  with pytest.raises(ValueError, match=match):
    call()
