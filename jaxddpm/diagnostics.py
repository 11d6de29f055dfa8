"""Is the sampler healthy? Per-step statistics as a figure, and a loud warning.

The seed's samples failed inside the reverse loop: x_t grew step by step until
the images were noise, while the loss looked fine. Every sampling run can report
per step the std and max |x_t| and the fraction of predicted x0 outside [-1, 1]
(`make_sampler(config, with_stats=True)`); these functions draw and check them.
A healthy run keeps std near 1 falling to the data's (~0.5-0.9) and max |x_t| of
a few units; a diverging one grows without bound.
"""

from __future__ import annotations

import logging
import warnings

import numpy as np

from jaxddpm import images, plots

DIVERGED = 1e3  # max |x_t| beyond this means the sampler has left the data scale.


def divergence_message(stats, limit: float = DIVERGED) -> str | None:
  """None when healthy, else what went wrong and where (1-based step)."""
  max_abs = np.asarray(stats["max_abs"], np.float64)
  bad = np.flatnonzero(~np.isfinite(max_abs) | (max_abs > limit))
  if bad.size == 0:
    return None
  i = int(bad[0])
  finite = max_abs[np.isfinite(max_abs)]
  peak = f"{finite.max():.3g}" if finite.size else "none finite"
  return (f"sampling diverged: max |x_t| = {max_abs[i]:.3g} at step {i + 1} of "
          f"{max_abs.size} (timestep {int(np.asarray(stats['timesteps'])[i])}; largest "
          f"finite value {peak}). Keep sampling.clip_x0=True, lower the guidance scale, "
          "and check that the schedule clips beta (diffusion.max_beta < 1).")


def warn_if_diverged(stats, limit: float = DIVERGED) -> bool:
  """Warns (Python warning and log) when the sampler diverged. Returns whether it did."""
  message = divergence_message(stats, limit)
  if message:
    logging.getLogger("jaxddpm").error(message)
    warnings.warn(message, RuntimeWarning, stacklevel=2)
  return message is not None


def stats_panels(stats, label: str = "") -> list[np.ndarray]:
  """Three charts against the step (1 = noisiest): std(x_t), max |x_t|, clip fraction."""
  step = np.arange(1, len(np.asarray(stats["std"])) + 1)
  series = lambda key: [(label, step, np.asarray(stats[key]))]
  suffix = f" - {label}" if label else ""
  return [plots.line_panel(series("std"), title="std of x_t" + suffix, xlabel="step",
                           log_y=True),
          plots.line_panel(series("max_abs"), title="max |x_t|" + suffix, xlabel="step",
                           log_y=True),
          plots.line_panel(series("clip_fraction"), title="x0 pred outside [-1,1]" + suffix,
                           xlabel="step")]


def write_stats_figure(path: str, stats, title: str = "") -> str:
  """PNG of the three charts in a row, with a title line. Returns the path."""
  figure = plots.tile(stats_panels(stats), cols=3)
  return images.write_png(path, plots.caption(figure, title) if title else figure)
