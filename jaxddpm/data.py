"""Datasets as whole uint8 arrays: offline folders first, TFDS otherwise.

Where data comes from, in order:
1. `config.data.dir`, else the environment variable JAXDDPM_DATA_DIR: a folder with
   one sub-folder per dataset, in each data set's official layout:
   - `mnist/`, `fashion-mnist/`: the four IDX `.gz` files;
   - `cifar10/`: `cifar-10-python.tar.gz` or `cifar-10-binary.tar.gz`;
   - `celeba/`: `img_align_celeba/` (or its zip), `list_attr_celeba.txt` and
     `list_eval_partition.txt` (`jaxddpm/celeba.py`).
   When such a folder is named, nothing is downloaded: missing files are an error
   that says which.
2. System copies: Debian's `dataset-fashion-mnist` in /usr/share/datasets/.
3. TFDS, prepared as TFRecord or ArrayRecord (`jaxddpm/tfds_source.py`); it
   downloads when online.

Images arrive at config.data.image_size (CelebA cropped and resized in chunks, in
bounded memory). The sets are small enough at that size (at most a few GB of
uint8) to live on the device whole.

A folder holding a file named STAND-IN.txt is generated stand-in data in an
official layout (`jaxddpm/standin.py`): its splits say so (`Split.stand_in`),
and so does every output made from them.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import pickle
import struct
import tarfile

import numpy as np

from jaxddpm import celeba, imagestore, tfds_source

DATASETS = ("mnist", "fashion_mnist", "cifar10", "celeb_a")
ENV_VAR = "JAXDDPM_DATA_DIR"
IDX_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
CIFAR_FILES = ("cifar-10-python.tar.gz", "cifar-10-binary.tar.gz")
STAND_IN_FILE = "STAND-IN.txt"
# Sub-folder names accepted for each dataset inside an offline folder.
FOLDERS = {
    "mnist": ("mnist",),
    "fashion_mnist": ("fashion-mnist", "fashion_mnist"),
    "cifar10": ("cifar10", "cifar-10"),
    "celeb_a": ("celeb_a", "celeba"),
}
SYSTEM_DIRS = {"fashion_mnist": ("/usr/share/datasets/fashion-mnist",)}


@dataclasses.dataclass(frozen=True)
class Split:
  """images uint8 [N,H,W,C]; labels int32 [N] (classes) or float32 [N,K] in {0, 1}
  (attributes, named by `names`); `stand_in`: generated, not the real data set."""
  images: np.ndarray
  labels: np.ndarray
  names: tuple[str, ...] = ()
  stand_in: bool = False

  def subset(self, index) -> Split:
    """The images and labels at `index` (a slice, mask or index array)."""
    return dataclasses.replace(self, images=self.images[index], labels=self.labels[index])

  def __len__(self) -> int:
    return int(self.images.shape[0])


# ----------------------------------------------------------------------------- IDX


def read_idx(path: str) -> np.ndarray:
  """Reads an IDX file (gzipped or not) into a uint8 array of its stated shape."""
  opener = gzip.open if path.endswith(".gz") else open
  try:
    with opener(path, "rb") as f:
      raw = f.read()
  except (OSError, EOFError) as e:  # gzip's BadGzipFile is an OSError.
    raise _damaged(path, e) from e
  if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
    raise ValueError(f"{path} is not an unsigned-byte IDX file (bad magic number).")
  ndim = raw[3]
  dims = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
  data = np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim)
  if data.size != int(np.prod(dims)):
    raise ValueError(f"{path}: header says {dims} but holds {data.size} bytes (truncated?).")
  return data.reshape(dims)


def _damaged(path: str, e: Exception) -> ValueError:
  return ValueError(f"cannot read {path}: {type(e).__name__}: {e}. The file is damaged or "
                    "a partial download: download it again.")


def _find_files(folder_candidates, names) -> str | None:
  for folder in folder_candidates:
    if all(os.path.isfile(os.path.join(folder, n)) for n in names):
      return folder
  return None


def _candidates(root: str, dataset: str) -> list[str]:
  return [os.path.join(root, sub) for sub in FOLDERS[dataset]] + [root]


def _load_idx(folder: str, split: str) -> Split:
  images_file, labels_file = IDX_FILES[split]
  images = read_idx(os.path.join(folder, images_file))
  labels = read_idx(os.path.join(folder, labels_file))
  if images.ndim != 3 or labels.shape != images.shape[:1]:
    raise ValueError(f"{folder}: {split} images {images.shape} and labels {labels.shape} "
                     "do not match.")
  return Split(images[..., None], labels.astype(np.int32))


def _load_cifar(path: str, split: str) -> Split:
  """CIFAR-10 from either official archive: the Python version (pickled batches of
  row-major RGB planes) or the binary version (label byte + planes per record)."""
  python = path.endswith(CIFAR_FILES[0])
  members = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
  if not python:
    members = [m + ".bin" for m in members]
  images, labels = [], []
  try:
    with tarfile.open(path, "r:gz") as tar:
      by_name = {os.path.basename(m.name): m for m in tar.getmembers()}
      for name in members:
        if name not in by_name:
          raise ValueError(f"{path} lacks {name}: is it the official "
                           f"{'Python' if python else 'binary'} version of CIFAR-10?")
        raw = tar.extractfile(by_name[name]).read()
        x, y = _cifar_python_batch(raw, path) if python else _cifar_binary_batch(raw, path)
        images.append(x)
        labels.append(y)
  except (tarfile.TarError, OSError, EOFError) as e:
    raise _damaged(path, e) from e
  planes = np.concatenate(images).reshape(-1, 3, 32, 32)
  return Split(np.ascontiguousarray(planes.transpose(0, 2, 3, 1)),
               np.concatenate(labels).astype(np.int32))


def _cifar_python_batch(raw: bytes, path: str):
  try:
    batch = pickle.loads(raw, encoding="bytes")  # Pickled by Python 2: byte-string keys.
    x = np.asarray(batch[b"data"], np.uint8)
    y = np.asarray(batch[b"labels"])
  except (pickle.UnpicklingError, KeyError, TypeError, ValueError, EOFError) as e:
    raise _damaged(path, e) from e
  if x.ndim != 2 or x.shape[1] != 3 * 32 * 32 or len(y) != len(x):
    raise _damaged(path, ValueError(f"a batch holds data {x.shape}, labels {y.shape}"))
  return x, y


def _cifar_binary_batch(raw: bytes, path: str):
  record = 1 + 3 * 32 * 32  # A label byte, then the image as 3 planes of 32x32.
  if len(raw) % record:
    raise _damaged(path, ValueError("its batches are not whole 3,073-byte records"))
  records = np.frombuffer(raw, np.uint8).reshape(-1, record)
  return records[:, 1:], records[:, 0]


# ----------------------------------------------------------------------------- TFDS


def _missing_data_error(dataset: str, why: str, offline_dir: str | None = None) -> ValueError:
  use = f"pass --config.data.dir=<dir> or set {ENV_VAR}=<dir>"
  if dataset in ("mnist", "fashion_mnist"):
    files = ", ".join(IDX_FILES["train"] + IDX_FILES["test"])
    offline = f"put {files} in <dir>/{FOLDERS[dataset][0]}/ and {use}"
    if dataset == "fashion_mnist":
      offline += " (or `apt-get install dataset-fashion-mnist`)"
  elif dataset == "cifar10":
    offline = (f"put {' or '.join(CIFAR_FILES)} (from www.cs.toronto.edu/~kriz/cifar.html) "
               f"in <dir>/cifar10/ and {use}")
  else:
    offline = f"put {celeba.missing_files_hint()} in <dir>/celeba/ and {use}"
  where = f" in {offline_dir}" if offline_dir else ""
  return ValueError(f"dataset {dataset!r} is not available{where}: {why}. To fix: {offline}; "
                    "or point --config.data.tfds_dir at a folder where TFDS prepared it.")


# ----------------------------------------------------------------------------- API


def offline_dir(data_config) -> str | None:
  """The offline folder named by config.data.dir or JAXDDPM_DATA_DIR, if any."""
  return data_config.get("dir") or os.environ.get(ENV_VAR) or None


def load_split(data_config, split: str) -> Split:
  """One split ("train" or "test") of config.data.dataset at config.data.image_size."""
  dataset, size = data_config.dataset, data_config.image_size
  if dataset not in DATASETS:
    raise ValueError(f"unknown dataset {dataset!r}; choose one of {DATASETS}.")
  if split not in IDX_FILES:
    raise ValueError(f"unknown split {split!r}; choose 'train' or 'test'.")
  root = offline_dir(data_config)
  candidates = _candidates(root, dataset) if root else []
  folder = None
  if dataset in ("mnist", "fashion_mnist"):
    names = IDX_FILES["train"] + IDX_FILES["test"]
    folder = _find_files(candidates, names)
    folder = folder or (None if root else _find_files(SYSTEM_DIRS.get(dataset, ()), names))
    native = _load_idx(folder, split) if folder else None
  elif dataset == "cifar10":
    found = [(f, n) for n in CIFAR_FILES if (f := _find_files(candidates, [n]))]
    folder = found[0][0] if found else None
    native = _load_cifar(os.path.join(*found[0]), split) if found else None
  else:
    folder = celeba.find(candidates)
    if folder:
      images, labels, names = celeba.load(folder, split, size)
      native = Split(images, labels, names)
  if folder is None:
    if root:
      raise _missing_data_error(dataset, "the files are not there", root)
    missing = lambda why: _missing_data_error(dataset, why)
    images, labels, names = tfds_source.load(dataset, split, data_config.get("tfds_dir") or None,
                                             size, missing)
    native = Split(images, labels, names)
  stand_in = bool(folder) and os.path.isfile(os.path.join(folder, STAND_IN_FILE))
  return dataclasses.replace(fit_size(native, dataset, size), stand_in=stand_in)


def fit_size(split: Split, dataset: str, image_size: int) -> Split:
  """Brings images to image_size: zero-pad MNIST-likes (28 -> 32 lets a U-Net pool
  three times), centre-crop and resize CelebA, and reject what cannot fit."""
  images = split.images
  H = images.shape[1]
  if dataset == "celeb_a":
    if images.shape[1:3] != (image_size, image_size):
      images = imagestore.crop_resize_fn(image_size)(images)
  elif image_size != H:
    pad = image_size - H
    if pad < 0 or pad % 2 or dataset == "cifar10":
      raise ValueError(f"{dataset} images are {H}x{H}; data.image_size={image_size} is not "
                       f"supported (MNIST-likes can be padded by an even amount).")
    images = np.pad(images, ((0, 0), (pad // 2,) * 2, (pad // 2,) * 2, (0, 0)))
  return dataclasses.replace(split, images=images)


def train_val_split(split: Split, val_fraction: float, seed: int) -> tuple[Split, Split]:
  """Deterministic for a seed: the same images land in validation every run."""
  if not 0.0 <= val_fraction < 1.0:
    raise ValueError(f"data.val_fraction must be in [0, 1), got {val_fraction}.")
  n_val = int(round(len(split) * val_fraction))
  perm = np.random.default_rng(seed).permutation(len(split))
  val, train = np.sort(perm[:n_val]), np.sort(perm[n_val:])
  return split.subset(train), split.subset(val)


def load(data_config, seed: int) -> dict[str, Split]:
  """{"train", "val", "test"} splits, sized for the model, checked against the config."""
  limit = data_config.get("max_train_examples") or 0
  if limit < 0:
    raise ValueError(f"data.max_train_examples must be >= 0 (0 = all), got {limit}.")
  train_full = load_split(data_config, "train")
  test = load_split(data_config, "test")
  _check_against_config(train_full, data_config)
  train, val = train_val_split(train_full, data_config.val_fraction, seed)
  if limit:
    train = train.subset(slice(limit))
  return {"train": train, "val": val, "test": test}


def _check_against_config(split: Split, d) -> None:
  shape = (d.image_size, d.image_size, d.channels)
  if split.images.shape[1:] != shape:
    raise ValueError(f"{d.dataset} images are {split.images.shape[1:]} but the config says "
                     f"{shape} (data.image_size, data.channels).")
  if split.labels.ndim == 1:
    if d.conditioning != "class" or split.labels.max() >= d.num_classes:
      raise ValueError(f"{d.dataset} has class labels up to {split.labels.max()}; set "
                       f"data.conditioning='class' and data.num_classes > that.")
  elif d.conditioning != "attributes" or split.labels.shape[1] != d.num_classes:
    raise ValueError(f"{d.dataset} has {split.labels.shape[1]} attributes; set "
                     f"data.conditioning='attributes' and data.num_classes to it.")
