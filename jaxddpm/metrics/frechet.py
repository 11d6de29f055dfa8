"""Frechet distance between Gaussians fitted to two feature sets, in float64.

d² = |μ₁ - μ₂|² + tr(Σ₁) + tr(Σ₂) - 2 tr((Σ₁^{1/2} Σ₂ Σ₁^{1/2})^{1/2})

(the 2-Wasserstein distance between the Gaussians, squared). This is what FID
computes in Inception features; here the features are the evaluator classifier's,
so the number is called a Frechet distance, not FID, and compares only with
numbers made by the same classifier. The trace of the matrix square root is taken
from eigenvalues of the symmetric PSD product Σ₁^{1/2} Σ₂ Σ₁^{1/2}, which is
stable where the general `sqrtm(Σ₁ Σ₂)` of many FID codes goes complex.
"""

from __future__ import annotations

import numpy as np


def gaussian_stats(features_ND) -> tuple[np.ndarray, np.ndarray]:
  """(mean [D], covariance [D, D]) of N feature vectors, float64 (N-1 normalised)."""
  f = np.asarray(features_ND, np.float64)
  if f.ndim != 2 or f.shape[0] < 2:
    raise ValueError(f"features must be [N, D] with N >= 2, got shape {f.shape}.")
  if not np.all(np.isfinite(f)):
    raise ValueError("features contain NaN or Inf (are the images finite?).")
  return f.mean(0), np.cov(f, rowvar=False)


def _psd_sqrt(sigma: np.ndarray) -> np.ndarray:
  w, v = np.linalg.eigh((sigma + sigma.T) / 2)
  return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
  """Squared Frechet (2-Wasserstein) distance between N(mu1, sigma1) and N(mu2, sigma2)."""
  mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
  sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
  D = mu1.shape[0]
  if mu1.shape != (D,) or mu2.shape != (D,) or sigma1.shape != (D, D) or sigma2.shape != (D, D):
    raise ValueError(f"need means [D] and covariances [D, D] of one D; got {mu1.shape}, "
                     f"{sigma1.shape}, {mu2.shape}, {sigma2.shape}.")
  root1 = _psd_sqrt(sigma1)
  middle = root1 @ sigma2 @ root1
  eig = np.linalg.eigvalsh((middle + middle.T) / 2)
  tr_covmean = np.sum(np.sqrt(np.clip(eig, 0.0, None)))
  diff = mu1 - mu2
  value = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_covmean
  return float(max(value, 0.0))  # Rounding can leave -1e-12 for equal inputs.


def frechet_distance_of(features_a, features_b) -> float:
  """Frechet distance between two feature sets [N, D] and [M, D]."""
  return frechet_distance(*gaussian_stats(features_a), *gaussian_stats(features_b))
