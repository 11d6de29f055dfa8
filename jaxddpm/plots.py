"""Charts (matplotlib, drawn off-screen) and picture layout, as uint8 RGB arrays.

Charts are what jaxddpm plots: sampler statistics per step and training curves.
Non-finite points (a diverged sampler) are not dropped silently: they are marked
with red crosses on the top edge and the chart title says how many there were.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image, ImageDraw

from jaxddpm import images


def line_panel(series: Sequence[tuple], *, title: str = "", xlabel: str = "",
               log_y: bool = False, size: tuple[int, int] = (380, 250)) -> np.ndarray:
  """One chart. series: (label, x [N], y [N]) tuples; a legend when more than one.
  Returns uint8 [H, W, 3] of `size` (W, H) pixels."""
  fig = Figure(figsize=(size[0] / 100, size[1] / 100), dpi=100)
  canvas = FigureCanvasAgg(fig)  # Off-screen: no display, no pyplot global state.
  ax = fig.add_subplot()
  n_bad = 0
  for label, x, y in series:
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    ok = np.isfinite(y) & ((y > 0) if log_y else True)
    n_bad += int((~ok).sum())
    ax.plot(x[ok], y[ok], marker="." if ok.sum() == 1 else None, label=label or None)
    if (~ok).any():  # Crosses on the top edge, in axes coordinates there.
      ax.plot(x[~ok], np.ones((~ok).sum()), "x", color="red", markersize=7, mew=2,
              transform=ax.get_xaxis_transform(), clip_on=False)
  if log_y:
    ax.set_yscale("log")
  ax.set_xlabel(xlabel, fontsize=8)
  ax.tick_params(labelsize=7)
  ax.grid(alpha=0.3)
  if len(series) > 1:
    ax.legend(fontsize=7)
  full_title = title + (f"  [{n_bad} non-finite]" if n_bad else "")
  ax.set_title(full_title, fontsize=9, color="red" if n_bad else "black")
  fig.tight_layout(pad=0.4)
  canvas.draw()
  return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def tile(panels: Sequence[np.ndarray], cols: int, pad: int = 4) -> np.ndarray:
  """Panels (uint8 [H, W, 3|1], any sizes) in a grid, row by row, on white; each
  column as wide as its widest panel, each row as tall as its tallest."""
  if not panels:
    raise ValueError("no panels to tile.")
  rows = math.ceil(len(panels) / cols)
  cells = [panels[r * cols:(r + 1) * cols] for r in range(rows)]
  heights = [max(p.shape[0] for p in row) for row in cells]
  widths = [max(cells[r][c].shape[1] for r in range(rows) if c < len(cells[r]))
            for c in range(cols)]
  out = np.full((sum(heights) + pad * (rows + 1), sum(widths) + pad * (cols + 1), 3), 255,
                np.uint8)
  for r, row in enumerate(cells):
    for c, p in enumerate(row):
      if p.ndim == 2 or p.shape[-1] == 1:
        p = np.repeat(p.reshape(p.shape[0], p.shape[1], 1), 3, axis=-1)
      top, left = pad + sum(heights[:r]) + pad * r, pad + sum(widths[:c]) + pad * c
      out[top:top + p.shape[0], left:left + p.shape[1]] = p
  return out


def caption(image: np.ndarray, text: str, height: int = 18) -> np.ndarray:
  """`image` (uint8 [H, W, 3]) with a line of text above it."""
  if image.ndim == 2 or image.shape[-1] == 1:
    image = np.repeat(image.reshape(image.shape[0], image.shape[1], 1), 3, axis=-1)
  W = max(image.shape[1], 8 * len(text))
  out = Image.new("RGB", (W, image.shape[0] + height), "white")
  out.paste(Image.fromarray(image), (0, height))
  ImageDraw.Draw(out).text((2, 3), text, fill=(0, 0, 0))
  return np.asarray(out)


def grid_picture(samples, rows: int, captions=(), title: str = "") -> np.ndarray:
  """uint8 picture of float [-1, 1] samples ordered row by row; each row captioned
  where `captions` are given, and the whole under `title` where one is."""
  if captions:
    per_row = np.split(images.to_uint8(samples), rows)
    picture = tile([caption(images.grid(r, rows=1), c)
                   for r, c in zip(per_row, captions)], cols=1, pad=2)
  else:
    picture = images.class_grid(samples, rows)
  return caption(picture, title) if title else picture
