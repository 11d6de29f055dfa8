"""PNG writing and grids."""


import numpy as np
import pytest

from jaxddpm import images


def test_png_round_trip(tmp_path):
  rng = np.random.default_rng(0)
  for shape in [(5, 7, 1), (9, 4, 3)]:
    x = rng.integers(0, 256, shape, dtype=np.uint8)
    path = images.write_png(str(tmp_path / f"a{shape[2]}.png"), x)
    np.testing.assert_array_equal(images.read_png(path), x)


def test_grid_layout():
  x = np.stack([np.full((2, 2, 1), i * 20, np.uint8) for i in range(6)])
  g = images.grid(x, rows=2, pad=1, pad_value=255)
  assert g.shape == (2 * 3 + 1, 3 * 3 + 1, 1)
  assert g[1, 1, 0] == 0 and g[1, 4, 0] == 20 and g[4, 1, 0] == 60


def test_to_uint8_range():
  np.testing.assert_array_equal(images.to_uint8(np.array([-2.0, -1.0, 0.0, 1.0, 3.0])),
                                [0, 0, 128, 255, 255])
  with pytest.raises(ValueError):
    images.write_png("/tmp/never.png", np.zeros((2, 2, 2), np.uint8))

