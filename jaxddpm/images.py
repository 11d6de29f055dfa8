"""Image grids and a dependency-free PNG writer (zlib + the PNG chunk format)."""

from __future__ import annotations

import os
import struct
import zlib

import numpy as np

from jaxddpm import files


def to_uint8(images: np.ndarray) -> np.ndarray:
  """float [-1, 1] -> uint8 [0, 255] (values outside the range are clipped)."""
  x = np.asarray(images, np.float32)
  return np.clip(np.rint((x + 1.0) * 127.5), 0, 255).astype(np.uint8)


def grid(images_NHWC: np.ndarray, rows: int, pad: int = 2, pad_value: int = 255) -> np.ndarray:
  """Tiles N images (uint8 [N,H,W,C]) into `rows` rows, filled row by row."""
  images = np.asarray(images_NHWC)
  if images.ndim != 4 or images.dtype != np.uint8:
    raise ValueError(f"grid needs uint8 [N,H,W,C], got {images.dtype} {images.shape}.")
  N, H, W, C = images.shape
  cols = -(-N // rows)
  out = np.full((rows * (H + pad) + pad, cols * (W + pad) + pad, C), pad_value, np.uint8)
  for i in range(N):
    r, c = divmod(i, cols)
    y, x = pad + r * (H + pad), pad + c * (W + pad)
    out[y:y + H, x:x + W] = images[i]
  return out


def write_png(path: str, image_HWC: np.ndarray) -> str:
  """Writes uint8 [H,W,1|3] as an 8-bit grayscale or RGB PNG. Returns the path."""
  img = np.asarray(image_HWC)
  if img.ndim == 2:
    img = img[..., None]
  if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] not in (1, 3):
    raise ValueError(f"write_png needs uint8 [H,W,1|3], got {img.dtype} {img.shape}.")
  H, W, C = img.shape
  color_type = 0 if C == 1 else 2
  raw = b"".join(b"\x00" + img[y].tobytes() for y in range(H))  # Filter 0 per row.

  def chunk(tag: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + tag + data
            + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF))

  png = (b"\x89PNG\r\n\x1a\n"
         + chunk(b"IHDR", struct.pack(">IIBBBBB", W, H, 8, color_type, 0, 0, 0))
         + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  return files.write_atomic(path, png)  # Never leave a half-written PNG behind.


def read_png(path: str) -> np.ndarray:
  """Reads back a PNG written by write_png (8-bit, filter 0); for tests and tools."""
  with open(path, "rb") as f:
    data = f.read()
  if data[:8] != b"\x89PNG\r\n\x1a\n":
    raise ValueError(f"{path} is not a PNG file.")
  pos, idat, header = 8, b"", None
  while pos < len(data):
    (length,) = struct.unpack(">I", data[pos:pos + 4])
    tag, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
    if zlib.crc32(tag + body) & 0xFFFFFFFF != struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])[0]:
      raise ValueError(f"{path}: corrupt {tag!r} chunk.")
    if tag == b"IHDR":
      header = struct.unpack(">IIBBBBB", body)
    elif tag == b"IDAT":
      idat += body
    pos += 12 + length
  W, H, depth, color_type = header[:4]
  C = {0: 1, 2: 3}[color_type]
  rows = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(H, 1 + W * C)
  if np.any(rows[:, 0]):
    raise ValueError(f"{path}: only filter type 0 is supported.")
  return rows[:, 1:].reshape(H, W, C)


def class_grid(images: np.ndarray, rows: int) -> np.ndarray:
  """float [-1,1] samples ordered row by row (one row per class) -> one uint8 image."""
  return grid(to_uint8(images), rows)
