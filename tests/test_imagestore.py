"""Chunked loading: the same array as all at once, never more than a chunk in flight."""

import numpy as np
import pytest

from jaxddpm import imagestore


def test_chunked_fill_equals_one_pass_and_bounds_the_working_set():
  rng = np.random.default_rng(0)
  native = rng.integers(0, 256, (23, 9, 7, 3), dtype=np.uint8)
  seen = []

  def transform(x):
    seen.append(len(x))
    return x[:, 1:5, 2:6] // 2  # Any per-image map.

  out = imagestore.fill(23, lambda i: native[i], transform, chunk=5, threads=2)
  np.testing.assert_array_equal(out, native[:, 1:5, 2:6] // 2)
  assert seen == [5, 5, 5, 5, 3]
  with pytest.raises(ValueError, match="said 4 images but held 3"):
    imagestore.fill_from(4, iter([native[:3]]), lambda x: x)


def test_crop_resize_takes_the_centre_square():
  """218x178: rows 20-197 are the square; at its own size it is copied exactly."""
  x = np.random.default_rng(1).integers(0, 256, (3, 218, 178, 3), dtype=np.uint8)
  np.testing.assert_array_equal(imagestore.crop_resize_fn(178)(x), x[:, 20:198])
  flat = np.full((2, 30, 20, 3), 77, np.uint8)  # A flat image stays flat at any size.
  assert (imagestore.crop_resize_fn(8, chunk=4)(flat) == 77).all()
