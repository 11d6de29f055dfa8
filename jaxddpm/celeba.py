"""CelebA from its official files, as its own page and torchvision give them.

    <dir>/celeba/
      img_align_celeba/000001.jpg ...   (or img_align_celeba.zip holding that folder)
      list_attr_celeba.txt               count, 40 names, then "000001.jpg -1 1 ..."
      list_eval_partition.txt            "000001.jpg 0": 0 train, 1 validation, 2 test

The 218x178 JPEGs are decoded in chunks straight into the final, cropped and
resized uint8 array (`imagestore.fill`): the whole train split at native size
would be 18.9 GB.
"""

from __future__ import annotations

import os
import threading
import zipfile
import zlib

import numpy as np
from PIL import Image

from jaxddpm import imagestore

IMAGES_DIR = "img_align_celeba"
IMAGES_ZIP = "img_align_celeba.zip"
ATTR_FILE = "list_attr_celeba.txt"
PARTITION_FILE = "list_eval_partition.txt"
NATIVE_SHAPE = (218, 178, 3)
# The official partition's numbers. The validation partition is not used: a run
# holds out data.val_fraction of train, as for every dataset.
PARTITIONS = {"train": 0, "validation": 1, "test": 2}
WHERE = ("the CelebA page (mmlab.ie.cuhk.edu.hk/projects/CelebA.html), 'Align&Cropped "
         "Images' and 'Anno'/'Eval'")


def find(folders) -> str | None:
  """The first folder holding the two lists and the images (folder or zip)."""
  for folder in folders:
    has_lists = all(os.path.isfile(os.path.join(folder, n)) for n in (ATTR_FILE, PARTITION_FILE))
    if has_lists and (os.path.isdir(os.path.join(folder, IMAGES_DIR))
                      or os.path.isfile(os.path.join(folder, IMAGES_ZIP))):
      return folder
  return None


def missing_files_hint() -> str:
  return (f"{IMAGES_DIR}/ (or {IMAGES_ZIP}), {ATTR_FILE} and {PARTITION_FILE} from {WHERE}")


def read_attributes(path: str) -> tuple[tuple[str, ...], list[str], np.ndarray]:
  """(names, file names, values int8 [N, K] in {-1, 1}) from list_attr_celeba.txt."""
  try:
    with open(path) as f:
      lines = f.read().splitlines()
    count = int(lines[0])
    names = tuple(lines[1].split())
    rows = [line.split() for line in lines[2:] if line.strip()]
    files = [r[0] for r in rows]
    values = np.array([r[1:] for r in rows], np.int8)
  except (OSError, ValueError, IndexError) as e:
    raise ValueError(f"cannot read {path}: {type(e).__name__}: {e}. It should hold the "
                     f"image count, a line of attribute names, then one line per image; "
                     f"download it again from {WHERE}.") from e
  if len(rows) != count or values.shape != (count, len(names)):
    raise ValueError(f"{path} says {count} images of {len(names)} attributes but holds "
                     f"{values.shape}: truncated? Download it again from {WHERE}.")
  if not np.isin(values, (-1, 1)).all():
    raise ValueError(f"{path}: attribute values must be -1 or 1.")
  return names, files, values


def read_partition(path: str) -> dict[str, int]:
  """{file name: partition} from list_eval_partition.txt."""
  try:
    with open(path) as f:
      return {name: int(p) for name, p in (line.split() for line in f if line.strip())}
  except (OSError, ValueError) as e:
    raise ValueError(f"cannot read {path}: {type(e).__name__}: {e}; download it again "
                     f"from {WHERE}.") from e


def load(folder: str, split: str, image_size: int):
  """(images uint8 [N, s, s, 3], attributes float32 [N, K] in {0, 1}, names) of one
  official partition, each face centre-cropped to 178x178 and resized to s."""
  names, files, values = read_attributes(os.path.join(folder, ATTR_FILE))
  partition = read_partition(os.path.join(folder, PARTITION_FILE))
  want = PARTITIONS[split]
  try:
    pick = [i for i, f in enumerate(files) if partition[f] == want]
  except KeyError as e:
    raise ValueError(f"{os.path.join(folder, PARTITION_FILE)} has no line for {e.args[0]} "
                     f"(listed in {ATTR_FILE}): the two lists do not belong together; "
                     f"download both again from {WHERE}.") from None
  if not pick:
    raise ValueError(f"{os.path.join(folder, PARTITION_FILE)} puts no image in the {split} "
                     f"partition ({want}).")
  with _reader(folder) as read:
    # Before decoding: a partial download or extraction fails in seconds, not at
    # the first missing file minutes in.
    have = read.names()
    lacking = [files[i] for i in pick if files[i] not in have]
    if lacking:
      raise ValueError(f"{read.where} lacks {len(lacking):,} of the {len(pick):,} {split} "
                       f"images listed in {ATTR_FILE} (first: {lacking[0]}): an incomplete "
                       f"download or extraction; get it again from {WHERE}.")
    images = imagestore.fill(len(pick), lambda i: _decode(read, files[pick[i]]),
                             imagestore.crop_resize_fn(image_size))
  return images, (values[pick] > 0).astype(np.float32), names


def _decode(read, name: str) -> np.ndarray:
  try:
    with Image.open(read(name)) as img:
      x = np.asarray(img.convert("RGB"))
  except (OSError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as e:  # PIL: OSError.
    raise ValueError(f"cannot decode CelebA image {name}: {type(e).__name__}: {e}. The "
                     f"image folder or zip is incomplete or damaged: download it again "
                     f"from {WHERE}.") from e
  if x.shape != NATIVE_SHAPE:
    raise ValueError(f"CelebA image {name} is {x.shape[1]}x{x.shape[0]}, not 178x218: "
                     f"use the aligned and cropped images ({IMAGES_DIR}).")
  return x


class _reader:
  """A context giving a reader: `read(name) -> file object` from the image folder
  or the zip, `read.names()` the image names there, `read.where` which. Zip
  handles are per thread: one ZipFile's reads from several threads interleave."""

  def __init__(self, folder: str):
    self.dir = os.path.join(folder, IMAGES_DIR)
    self.zip = os.path.join(folder, IMAGES_ZIP)
    self.local = threading.local()
    self.opened = []
    self.prefix = ""

  def __enter__(self):
    if os.path.isdir(self.dir):
      self.where = self.dir
      return self
    self.where = self.zip
    try:
      with zipfile.ZipFile(self.zip) as z:
        self.members = z.namelist()
    except (OSError, zipfile.BadZipFile) as e:
      raise ValueError(f"cannot read {self.zip}: {type(e).__name__}: {e}. It is damaged or "
                       f"a partial download: download it again from {WHERE}.") from e
    jpeg = next((n for n in self.members if n.endswith(".jpg")), f"{IMAGES_DIR}/x.jpg")
    self.prefix = jpeg[:len(jpeg) - len(jpeg.split("/")[-1])]
    return self

  def names(self) -> set[str]:
    if self.where == self.dir:
      return set(os.listdir(self.dir))
    return {n[len(self.prefix):] for n in self.members if n.startswith(self.prefix)}

  def __call__(self, name: str):
    if self.where == self.dir:
      return open(os.path.join(self.dir, name), "rb")
    z = getattr(self.local, "zip", None)
    if z is None:
      z = self.local.zip = zipfile.ZipFile(self.zip)
      self.opened.append(z)
    return z.open(self.prefix + name)

  def __exit__(self, *exc):
    for z in self.opened:
      z.close()
