"""Sampler diagnostics: the divergence warning fires on a diverging sampler and not
on a healthy one; the charts are real images."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxddpm import diagnostics, images, plots, sampling, schedules

SCHEDULE = schedules.cosine(100)
LABELS = jnp.arange(4) % 2
SHAPE = (4, 4, 1)


def _overconfident(x_t, t, labels, use_labels):
  """A broken ε-model: predicts 30x the input (what an error amplified by CFG looks like)."""
  return 30.0 * x_t


def _run(clip_x0):
  return sampling.sample_loop(_overconfident, SCHEDULE, jax.random.key(0), LABELS, SHAPE,
                              sampler="ddpm", steps=100, guidance_scale=1.0, prediction="eps",
                              clip_x0=clip_x0, variance="large", return_stats=True)


def test_divergence_is_reported_loudly_and_x0_clipping_prevents_it():
  _, stats = _run(clip_x0=False)
  assert set(stats) == {"std", "max_abs", "clip_fraction", "timesteps"}  # No trajectories.
  message = diagnostics.divergence_message(stats)
  assert message and "diverged" in message and "step" in message
  with pytest.warns(RuntimeWarning, match="sampling diverged"):
    assert diagnostics.warn_if_diverged(stats)
  x, stats = _run(clip_x0=True)
  assert diagnostics.divergence_message(stats) is None
  assert float(np.max(stats["max_abs"])) < 10  # x_t itself stays bounded, not just x̂0.
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    assert not diagnostics.warn_if_diverged(stats)


def test_divergence_message_names_the_first_bad_step():
  stats = dict(max_abs=np.array([3.0, 2.0, np.inf, np.nan]), timesteps=np.array([99, 66, 33, 0]))
  message = diagnostics.divergence_message(stats)
  assert "step 3 of 4" in message and "timestep 33" in message
  assert diagnostics.divergence_message(dict(max_abs=np.ones(3), timesteps=np.arange(3))) is None


def test_stats_figure_is_a_decodable_non_blank_png(tmp_path):
  _, stats = _run(clip_x0=False)
  path = diagnostics.write_stats_figure(str(tmp_path / "diag.png"), jax.device_get(stats),
                                        "broken model")
  img = images.read_png(path)
  assert img.ndim == 3 and img.shape[2] == 3 and img.shape[1] > 3 * 300
  assert img.std() > 10  # Lines and text, not a blank canvas.


def test_line_panel_marks_non_finite_points():
  x = np.arange(5)
  clean = plots.line_panel([("a", x, np.array([1.0, 2, 3, 4, 5]))], title="t")
  broken = plots.line_panel([("a", x, np.array([1.0, 2, np.inf, np.nan, 5]))], title="t")
  assert clean.dtype == np.uint8 and clean.shape == broken.shape
  red = lambda im: np.sum((im[..., 0] > 200) & (im[..., 1] < 60) & (im[..., 2] < 60))
  assert red(broken) > red(clean)  # Red crosses on the top edge, and a red title.
  # Log scale with non-positive values: those count as non-finite, no crash.
  plots.line_panel([("a", x, np.array([0.0, 1, 10, 100, 1000]))], log_y=True)
  with pytest.raises(ValueError):
    plots.tile([], cols=2)
