"""Small line charts as uint8 RGB arrays (Pillow only; no plotting library).

Enough for what jaxddpm draws: sampler statistics per step and training curves.
Non-finite points (a diverged sampler) are not dropped silently: they are marked
with a red cross on the top edge and the panel title says how many there were.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

from jaxddpm import images

COLORS = ((31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14),
          (23, 190, 207), (127, 127, 127))
_MARGIN = dict(left=58, right=12, top=24, bottom=30)


def _fmt(v: float) -> str:
  if v == 0 or 1e-2 <= abs(v) < 1e5:
    return f"{v:.4g}"
  return f"{v:.0e}"


def line_panel(series: Sequence[tuple], *, title: str = "", xlabel: str = "",
               log_y: bool = False, size: tuple[int, int] = (380, 250)) -> np.ndarray:
  """One chart. series: (label, x [N], y [N]) tuples. Returns uint8 [H, W, 3]."""
  W, H = size
  img = Image.new("RGB", (W, H), "white")
  draw = ImageDraw.Draw(img)
  x0, x1 = _MARGIN["left"], W - _MARGIN["right"]
  y0, y1 = _MARGIN["top"], H - _MARGIN["bottom"]
  xs = [np.asarray(s[1], np.float64) for s in series]
  ys = [np.asarray(s[2], np.float64) for s in series]
  finite = [np.isfinite(y) & ((y > 0) if log_y else True) for y in ys]
  n_bad = int(sum((~f).sum() for f in finite))
  all_x = np.concatenate(xs) if xs else np.zeros(1)
  good_y = np.concatenate([y[f] for y, f in zip(ys, finite)]) if ys else np.zeros(0)
  if good_y.size == 0:
    good_y = np.ones(1)
  tr = np.log10 if log_y else (lambda v: v)
  lo, hi = float(tr(good_y.min())), float(tr(good_y.max()))
  if hi - lo < 1e-12:
    lo, hi = lo - 0.5, hi + 0.5
  data_lo, data_hi = lo, hi  # Ticks name the data's range; the axes get 5% margins.
  pad = 0.05 * (hi - lo)
  lo, hi = lo - pad, hi + pad
  xlo, xhi = float(all_x.min()), float(all_x.max())
  if xhi - xlo < 1e-12:
    xlo, xhi = xlo - 0.5, xhi + 0.5
  px = lambda v: x0 + (v - xlo) / (xhi - xlo) * (x1 - x0)
  py = lambda v: y1 - (v - lo) / (hi - lo) * (y1 - y0)

  draw.rectangle([x0, y0, x1, y1], outline=(0, 0, 0))
  for frac in (0.0, 0.5, 1.0):
    v = data_lo + frac * (data_hi - data_lo)
    label = _fmt(10**v) if log_y else _fmt(v)
    draw.line([x0 - 3, py(v), x0, py(v)], fill=(0, 0, 0))
    draw.text((2, py(v) - 6), label, fill=(0, 0, 0))
  for frac in (0.0, 0.5, 1.0):
    v = xlo + frac * (xhi - xlo)
    draw.line([px(v), y1, px(v), y1 + 3], fill=(0, 0, 0))
    text = _fmt(v)
    draw.text((px(v) - 3 * len(text) * (1 + frac), y1 + 5), text, fill=(0, 0, 0))
  draw.text((x0 + (x1 - x0) // 2 - 3 * len(xlabel), H - 12), xlabel, fill=(0, 0, 0))
  full_title = title + (f"  [{n_bad} non-finite]" if n_bad else "") + (" (log)" if log_y else "")
  draw.text((x0, 6), full_title, fill=(200, 0, 0) if n_bad else (0, 0, 0))

  for i, ((label, _, _), x, y, ok) in enumerate(zip(series, xs, ys, finite)):
    color = COLORS[i % len(COLORS)]
    points = [(px(a), py(float(tr(b)))) for a, b, g in zip(x, y, ok) if g]
    if len(points) > 1:
      draw.line(points, fill=color, width=2)
    elif points:
      draw.ellipse([points[0][0] - 2, points[0][1] - 2, points[0][0] + 2, points[0][1] + 2],
                   fill=color)
    for a in x[~ok]:
      cx = px(a)
      draw.line([cx - 3, y0 - 3, cx + 3, y0 + 3], fill=(220, 0, 0), width=2)
      draw.line([cx - 3, y0 + 3, cx + 3, y0 - 3], fill=(220, 0, 0), width=2)
    if label and len(series) > 1:
      draw.text((x1 - 120, y0 + 4 + 12 * i), label, fill=color)
  return np.asarray(img)


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
