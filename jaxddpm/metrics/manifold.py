"""Improved precision and recall (Kynkäänniemi et al. 2019), k-NN manifold estimate.

Each set's manifold is the union of balls around its points, each ball reaching
that point's k-th nearest neighbour within the set. Precision: the fraction of
generated points inside the real manifold (are samples realistic?). Recall: the
fraction of real points inside the generated manifold (is the data covered?).
"""

from __future__ import annotations

import numpy as np


def _sq_dists(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
  return np.maximum(d, 0.0)


def knn_radii(features_ND, k: int, chunk: int = 2048) -> np.ndarray:
  """Squared distance from each point to its k-th nearest other point, float64 [N]."""
  f = np.asarray(features_ND, np.float64)
  if not 1 <= k < len(f):
    raise ValueError(f"k must be in [1, N) for N={len(f)} points, got {k}.")
  out = np.empty(len(f))
  for i in range(0, len(f), chunk):
    d = _sq_dists(f[i:i + chunk], f)
    # Column k of the sorted row: column 0 is the point itself (distance 0).
    out[i:i + chunk] = np.partition(d, k, axis=1)[:, k]
  return out


def coverage_fraction(points_ND, manifold_MD, radii_M, chunk: int = 2048) -> float:
  """Fraction of `points` within radius of at least one manifold point."""
  p, m = np.asarray(points_ND, np.float64), np.asarray(manifold_MD, np.float64)
  inside = np.zeros(len(p), bool)
  for i in range(0, len(p), chunk):
    inside[i:i + chunk] = (_sq_dists(p[i:i + chunk], m) <= radii_M[None, :]).any(1)
  return float(inside.mean())


def precision_recall(real_ND, fake_MD, k: int = 3) -> tuple[float, float]:
  """(precision, recall) of `fake` against `real`, both [N, D] feature arrays."""
  real, fake = np.asarray(real_ND, np.float64), np.asarray(fake_MD, np.float64)
  if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
    raise ValueError(f"need two [N, D] feature arrays of one D, got {real.shape}, {fake.shape}.")
  precision = coverage_fraction(fake, real, knn_radii(real, k))
  recall = coverage_fraction(real, fake, knn_radii(fake, k))
  return precision, recall
