"""Large image sets into one uint8 array in bounded memory.

A data set of large images (CelebA: 162,770 JPEGs of 218x178) is decoded a chunk
at a time, each chunk cropped and resized and written into a preallocated final
array: the peak is that array plus one chunk's working set, never the native-size
set (18.9 GB for CelebA's train split, twice that while stacking).
"""

from __future__ import annotations

import concurrent.futures
import functools
import os
from collections.abc import Callable, Iterable

import numpy as np

CHUNK = 256  # Images per chunk: 30 MB of native CelebA, ~0.3 GB working set as float32.


def workers() -> int:
  """Decode threads: the cores this process may use. PIL decodes outside the GIL."""
  try:
    return max(1, len(os.sched_getaffinity(0)))
  except AttributeError:  # Not on Linux.
    return max(1, os.cpu_count() or 1)


def fill(n: int, decode: Callable[[int], np.ndarray], transform: Callable, *,
         chunk: int = CHUNK, threads: int | None = None) -> np.ndarray:
  """uint8 [n, ...]: image i is transform(decode(i)[None])[0], computed chunk by chunk.

  Args:
    n: number of images.
    decode: i -> uint8 [H, W, C] at native size (called from `threads` threads).
    transform: uint8 [c, H, W, C] -> uint8 [c, h, w, C], e.g. `crop_resize_fn(64)`.
    chunk: images decoded and transformed together.
    threads: decode threads; default `workers()`.
  """
  with concurrent.futures.ThreadPoolExecutor(threads or workers()) as pool:
    chunks = (np.stack(list(pool.map(decode, range(start, min(start + chunk, n)))))
              for start in range(0, n, chunk))
    return fill_from(n, chunks, transform)


def fill_from(n: int, chunks: Iterable[np.ndarray], transform: Callable) -> np.ndarray:
  """uint8 [n, ...] from native-size chunks (uint8 [c, H, W, C], n images in all),
  each transformed as it arrives."""
  if n < 1:
    raise ValueError(f"nothing to load (n={n}).")
  out, start = None, 0
  for native in chunks:
    small = transform(np.asarray(native))
    if out is None:
      out = np.empty((n, *small.shape[1:]), np.uint8)
    if start + len(small) > n:
      raise ValueError(f"the data holds more than the {n} images it said.")
    out[start:start + len(small)] = small
    start += len(small)
  if start != n:
    raise ValueError(f"the data said {n} images but held {start}.")
  return out


@functools.cache
def crop_resize_fn(size: int, chunk: int = CHUNK) -> Callable[[np.ndarray], np.ndarray]:
  """uint8 [c, H, W, C] -> uint8 [c, size, size, C]: the centre square of side
  min(H, W), resized with an antialiased triangle filter (CelebA's 218x178 faces:
  rows 20-197). Every call runs one compiled program of `chunk` images (a shorter
  batch is padded), so a whole data set compiles it once."""
  import jax  # Resizing is much faster as one compiled op than image by image.

  @jax.jit
  def resize(x):
    x = x.astype(np.float32)
    y = jax.image.resize(x, (x.shape[0], size, size, x.shape[3]), "linear", antialias=True)
    return jax.numpy.clip(jax.numpy.rint(y), 0, 255).astype(np.uint8)

  def apply(images: np.ndarray) -> np.ndarray:
    c, H, W = images.shape[:3]
    side = min(H, W)
    top, left = (H - side) // 2, (W - side) // 2
    square = images[:, top:top + side, left:left + side]
    if side == size:
      return np.ascontiguousarray(square)
    out = []
    for i in range(0, c, chunk):
      part = square[i:i + chunk]
      pad = chunk - len(part)
      if pad:
        part = np.concatenate([part, np.zeros((pad, *part.shape[1:]), part.dtype)])
      out.append(np.asarray(resize(part))[:chunk - pad])
    return np.concatenate(out)

  return apply
