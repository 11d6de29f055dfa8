"""The `:smoke` training run the loop, fault, resume and multi-host tests share.

It is configs/mnist.py:smoke (2 epochs of 512 images, 32 steps) on real MNIST
digits averaged down to 8x8 and written as IDX files in MNIST's own format, so the
offline loader reads them as it reads the real set. Why 8x8: the behaviour these
tests check (exact resume, crash safety, K steps per call, hosts against one) does
not depend on the image size, and a 28x28 step costs 12x the arithmetic. The
real-size files are read by test_data.py, and test_launch.py trains `:smoke` at
28x28 end to end as a user would.
"""

import gzip
import os
import struct

import numpy as np

SIZE = 8
# launch.py flags for this run; the data folder goes in JAXDDPM_DATA_DIR.
LAUNCH_ARGS = ("--config", "configs/mnist.py:smoke", f"--config.data.image_size={SIZE}")


def config(data_dir):
  """configs/mnist.py:smoke at 8x8, reading the small MNIST in data_dir."""
  from configs import mnist
  c = mnist.get_config("smoke")
  c.data.update(dir=data_dir, image_size=SIZE)
  return c


def write_small_mnist(real_dir: str, out_dir: str) -> str:
  """Every MNIST image zero-padded to 32x32 (as data.fit_size pads) and averaged
  over 4x4 blocks to 8x8, written as the four IDX .gz files in out_dir/mnist/."""
  from jaxddpm import data
  folder = os.path.join(out_dir, "mnist")
  os.makedirs(folder, exist_ok=True)
  for images_file, labels_file in data.IDX_FILES.values():
    x = data.read_idx(os.path.join(real_dir, "mnist", images_file))
    x = np.pad(x, ((0, 0), (2, 2), (2, 2))).reshape(-1, SIZE, 4, SIZE, 4).mean(axis=(2, 4))
    _write_idx(os.path.join(folder, images_file), np.rint(x).astype(np.uint8))
    _write_idx(os.path.join(folder, labels_file),
               data.read_idx(os.path.join(real_dir, "mnist", labels_file)))
  return out_dir


def _write_idx(path: str, array: np.ndarray) -> None:
  """IDX: two zero bytes, 0x08 (unsigned byte), the rank, big-endian dims, data."""
  header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
  with gzip.open(path, "wb", compresslevel=1) as f:
    f.write(header + array.tobytes())
