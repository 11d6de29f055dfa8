"""Datasets as whole uint8 arrays: offline folders first, TFDS otherwise.

Where data comes from, in order:
1. `config.data.dir`, else the environment variable JAXDDPM_DATA_DIR: a folder with
   one sub-folder per dataset (`mnist/`, `fashion-mnist/` holding the four IDX
   `.gz` files; `cifar10/` holding `cifar-10-binary.tar.gz`). When such a folder is
   named, nothing is downloaded: missing files are an error that says which.
2. System copies: Debian's `dataset-fashion-mnist` in /usr/share/datasets/.
3. TFDS (`tfds.builder(...).download_and_prepare()`), which downloads when online.

The sets are small enough (at most a few GB of uint8) to live on the device whole;
see `device_put_splits`.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import struct
import tarfile
import urllib.request

import numpy as np

DATASETS = ("mnist", "fashion_mnist", "cifar10", "celeb_a")
ENV_VAR = "JAXDDPM_DATA_DIR"
IDX_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
CIFAR_FILE = "cifar-10-binary.tar.gz"
# Sub-folder names accepted for each dataset inside an offline folder.
FOLDERS = {
    "mnist": ("mnist",),
    "fashion_mnist": ("fashion-mnist", "fashion_mnist"),
    "cifar10": ("cifar10", "cifar-10"),
    "celeb_a": ("celeb_a", "celeba"),
}
SYSTEM_DIRS = {"fashion_mnist": ("/usr/share/datasets/fashion-mnist",)}
NATIVE_SIZE = {"mnist": 28, "fashion_mnist": 28, "cifar10": 32, "celeb_a": None}
CELEBA_CROP = 178  # Centre square of the 218x178 aligned faces.


@dataclasses.dataclass(frozen=True)
class Split:
  """images uint8 [N,H,W,C]; labels int32 [N] (classes) or float32 [N,K] (attributes)."""
  images: np.ndarray
  labels: np.ndarray

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


def _load_cifar_binary(path: str, split: str) -> Split:
  members = ([f"data_batch_{i}.bin" for i in range(1, 6)] if split == "train"
             else ["test_batch.bin"])
  chunks = []
  try:
    with tarfile.open(path, "r:gz") as tar:
      by_name = {os.path.basename(m.name): m for m in tar.getmembers()}
      for name in members:
        if name not in by_name:
          raise ValueError(f"{path} lacks {name}: is it the binary version of CIFAR-10?")
        chunks.append(np.frombuffer(tar.extractfile(by_name[name]).read(), np.uint8))
  except (tarfile.TarError, OSError, EOFError) as e:
    raise _damaged(path, e) from e
  record = 1 + 3 * 32 * 32  # A label byte, then the image as 3 planes of 32x32.
  if sum(c.size for c in chunks) % record:
    raise _damaged(path, ValueError("its batches are not whole 3,073-byte records"))
  records = np.concatenate(chunks).reshape(-1, record)
  images = records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
  return Split(np.ascontiguousarray(images), records[:, 0].astype(np.int32))


# ----------------------------------------------------------------------------- TFDS


def _missing_data_error(dataset: str, why: str, offline_dir: str | None = None) -> ValueError:
  if dataset in ("mnist", "fashion_mnist"):
    files = ", ".join(IDX_FILES["train"] + IDX_FILES["test"])
    offline = (f"put {files} in <dir>/{FOLDERS[dataset][0]}/ and pass "
               f"--config.data.dir=<dir> or set {ENV_VAR}=<dir>")
    if dataset == "fashion_mnist":
      offline += " (or `apt-get install dataset-fashion-mnist`)"
  elif dataset == "cifar10":
    offline = (f"put {CIFAR_FILE} (the binary version) in <dir>/cifar10/ and pass "
               f"--config.data.dir=<dir> or set {ENV_VAR}=<dir>")
  else:
    offline = ("prepare it with TFDS on a machine with internet (celeb_a needs its five "
               "Google Drive files) and point --config.data.tfds_dir at that data_dir")
  where = f" in {offline_dir}" if offline_dir else ""
  return ValueError(f"dataset {dataset!r} is not available{where}: {why}. To fix: {offline}; "
                    "or run online with `pip install tensorflow-cpu` so TFDS can download it.")


def _reachable(url: str, timeout: float = 5.0) -> bool:
  """A quick check before TFDS, which retries for minutes when offline."""
  try:
    urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout)
    return True
  except Exception:  # noqa: BLE001 - any failure means "cannot download now".
    return False


def _load_tfds(dataset: str, split: str, tfds_dir: str | None) -> Split:
  import tensorflow_datasets as tfds  # Heavy import: only when TFDS is used.
  builder = tfds.builder(dataset, data_dir=tfds_dir)
  if not builder.is_prepared():
    urls = list(builder.url_infos or {})
    if urls and not _reachable(urls[0]):
      raise _missing_data_error(dataset, f"TFDS has not prepared it and {urls[0]} cannot be "
                                "reached (offline?)")
    try:
      builder.download_and_prepare(file_format="array_record")
    except ImportError as e:
      raise _missing_data_error(dataset, f"TFDS needs TensorFlow to prepare it ({e})") from e
  source = builder.as_data_source(split=split)
  examples = [source[i] for i in range(len(source))]
  images = np.stack([np.asarray(ex["image"], np.uint8) for ex in examples])
  if dataset == "celeb_a":
    names = sorted(examples[0]["attributes"])
    labels = np.array([[float(ex["attributes"][n]) for n in names] for ex in examples],
                      np.float32)
  else:
    labels = np.array([int(ex["label"]) for ex in examples], np.int32)
  return Split(images, labels)


# ----------------------------------------------------------------------------- API


def offline_dir(data_config) -> str | None:
  """The offline folder named by config.data.dir or JAXDDPM_DATA_DIR, if any."""
  return data_config.get("dir") or os.environ.get(ENV_VAR) or None


def load_split(data_config, split: str) -> Split:
  """One split ("train" or "test") of config.data.dataset at its native size."""
  dataset = data_config.dataset
  if dataset not in DATASETS:
    raise ValueError(f"unknown dataset {dataset!r}; choose one of {DATASETS}.")
  if split not in IDX_FILES:
    raise ValueError(f"unknown split {split!r}; choose 'train' or 'test'.")
  root = offline_dir(data_config)
  if dataset in ("mnist", "fashion_mnist"):
    names = IDX_FILES["train"] + IDX_FILES["test"]
    folder = _find_files(_candidates(root, dataset) if root else [], names)
    folder = folder or (None if root else _find_files(SYSTEM_DIRS.get(dataset, ()), names))
    if folder:
      return _load_idx(folder, split)
  elif dataset == "cifar10":
    folder = _find_files(_candidates(root, dataset) if root else [], [CIFAR_FILE])
    if folder:
      return _load_cifar_binary(os.path.join(folder, CIFAR_FILE), split)
  if root and dataset != "celeb_a":
    raise _missing_data_error(dataset, "the files are not there", root)
  return _load_tfds(dataset, split, data_config.get("tfds_dir") or None)


def fit_size(split: Split, dataset: str, image_size: int) -> Split:
  """Brings images to image_size: zero-pad MNIST-likes (28 -> 32 lets a U-Net pool
  three times), centre-crop and resize CelebA, and reject what cannot fit."""
  images = split.images
  H = images.shape[1]
  if dataset == "celeb_a":
    images = _crop_resize(images, image_size)
  elif image_size != H:
    pad = image_size - H
    if pad < 0 or pad % 2 or dataset == "cifar10":
      raise ValueError(f"{dataset} images are {H}x{H}; data.image_size={image_size} is not "
                       f"supported (MNIST-likes can be padded by an even amount).")
    images = np.pad(images, ((0, 0), (pad // 2,) * 2, (pad // 2,) * 2, (0, 0)))
  return Split(images, split.labels)


def _crop_resize(images: np.ndarray, size: int, chunk: int = 2048) -> np.ndarray:
  import jax  # Resizing 200k faces is much faster as one compiled op.
  H, W = images.shape[1:3]
  top, left = (H - CELEBA_CROP) // 2, (W - CELEBA_CROP) // 2
  crop = images[:, top:top + CELEBA_CROP, left:left + CELEBA_CROP]
  resize = jax.jit(lambda x: jax.image.resize(
      x.astype(np.float32), (x.shape[0], size, size, x.shape[3]), "linear", antialias=True))
  out = [np.asarray(resize(crop[i:i + chunk])) for i in range(0, len(crop), chunk)]
  return np.clip(np.rint(np.concatenate(out)), 0, 255).astype(np.uint8)


def train_val_split(split: Split, val_fraction: float, seed: int) -> tuple[Split, Split]:
  """Deterministic for a seed: the same images land in validation every run."""
  if not 0.0 <= val_fraction < 1.0:
    raise ValueError(f"data.val_fraction must be in [0, 1), got {val_fraction}.")
  n_val = int(round(len(split) * val_fraction))
  perm = np.random.default_rng(seed).permutation(len(split))
  val, train = np.sort(perm[:n_val]), np.sort(perm[n_val:])
  return (Split(split.images[train], split.labels[train]),
          Split(split.images[val], split.labels[val]))


def load(data_config, seed: int) -> dict[str, Split]:
  """{"train", "val", "test"} splits, sized for the model, checked against the config."""
  limit = data_config.get("max_train_examples") or 0
  if limit < 0:
    raise ValueError(f"data.max_train_examples must be >= 0 (0 = all), got {limit}.")
  train_full = fit_size(load_split(data_config, "train"), data_config.dataset,
                        data_config.image_size)
  test = fit_size(load_split(data_config, "test"), data_config.dataset, data_config.image_size)
  _check_against_config(train_full, data_config)
  train, val = train_val_split(train_full, data_config.val_fraction, seed)
  if limit:
    train = Split(train.images[:limit], train.labels[:limit])
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
