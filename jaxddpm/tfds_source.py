"""Datasets prepared by TensorFlow Datasets, read without TensorFlow.

TFDS prepares a dataset as TFRecord files by default (`tfds.load`, `tfds build`),
or as ArrayRecord (`file_format="array_record"`). Both hold the same serialized
`tf.train.Example`s, which TFDS's own NumPy decoder (`deserialize_example_np`)
reads; a TFRecord file is a plain sequence of length-prefixed records, read here.
So either format loads where TensorFlow is not installed.
"""

from __future__ import annotations

import os
import struct
import urllib.request
from collections.abc import Callable, Iterator

import numpy as np

from jaxddpm import imagestore

READABLE = ("array_record", "tfrecord")


def read_tfrecord(path: str) -> Iterator[bytes]:
  """The records of one TFRecord file: each is a little-endian uint64 length, its
  masked CRC32C, the data, the data's masked CRC32C. The CRCs are not checked
  (no CRC32C in the standard library); a truncated file is an error."""
  with open(path, "rb") as f:
    while True:
      header = f.read(12)
      if not header:
        return
      if len(header) < 12:
        raise ValueError(f"{path} ends inside a record header: truncated?")
      (length,) = struct.unpack("<Q", header[:8])
      data = f.read(length)
      if len(data) < length or len(f.read(4)) < 4:
        raise ValueError(f"{path} ends inside a record: truncated?")
      yield data


def _reachable(url: str, timeout: float = 5.0) -> bool:
  """A quick check before TFDS, which retries for minutes when offline."""
  try:
    urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout)
    return True
  except Exception:  # noqa: BLE001 - any failure means "cannot download now".
    return False


def _builder(dataset: str, tfds_dir: str | None, missing: Callable[[str], ValueError]):
  import tensorflow_datasets as tfds  # Heavy import: only when TFDS is used.
  builder = tfds.builder(dataset, data_dir=tfds_dir)
  if not builder.is_prepared():
    urls = list(builder.url_infos or {})
    if urls and not _reachable(urls[0]):
      raise missing(f"TFDS has not prepared it and {urls[0]} cannot be reached (offline?)")
    try:
      builder.download_and_prepare(file_format="array_record")
    except ImportError as e:
      raise missing(f"TFDS needs TensorFlow to download and prepare it ({e}): `pip install "
                    "tensorflow-cpu`, or prepare it where TensorFlow is and copy the folder"
                    ) from e
  return builder


def _examples(builder, split: str) -> tuple[int, Callable[[int], dict] | Iterator[dict]]:
  """(n, examples): a random-access function (ArrayRecord) or an iterator (TFRecord)
  of decoded examples."""
  info = builder.info
  fmt = getattr(info.file_format, "value", info.file_format) or "tfrecord"
  if fmt == "tfrecord" and info.splits:
    paths = [str(p) for p in info.splits[split].filepaths]
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
      raise ValueError(f"TFDS's {info.name} in {builder.data_dir} lacks {missing[0]}: "
                       "prepare it again (tfds build) or copy the whole folder.")
    records = (r for p in paths for r in read_tfrecord(p))
    return info.splits[split].num_examples, (info.features.deserialize_example_np(r)
                                             for r in records)
  if fmt not in READABLE:
    raise ValueError(f"TFDS prepared {info.name} in {builder.data_dir} as {fmt!r}; jaxddpm "
                     f"reads {' or '.join(READABLE)}: prepare it again with "
                     "`tfds build --file_format=array_record`.")
  source = builder.as_data_source(split=split)  # ArrayRecord: random access.
  return len(source), source.__getitem__


def load(dataset: str, split: str, tfds_dir: str | None, image_size: int,
         missing: Callable[[str], ValueError]):
  """(images uint8 [N, ...], labels, attribute names) of one TFDS split. CelebA's
  faces are centre-cropped and resized to image_size chunk by chunk, in bounded
  memory; the other sets come at their native size."""
  builder = _builder(dataset, tfds_dir, missing)
  n, examples = _examples(builder, split)
  celeba = dataset == "celeb_a"
  transform = imagestore.crop_resize_fn(image_size) if celeba else (lambda x: x)
  names = tuple(sorted(builder.info.features["attributes"].keys())) if celeba else ()
  labels = np.zeros((n, len(names)) if celeba else (n,), np.float32 if celeba else np.int32)

  def image(i: int, ex: dict) -> np.ndarray:
    labels[i] = [float(ex["attributes"][k]) for k in names] if celeba else int(ex["label"])
    return np.asarray(ex["image"], np.uint8)

  if callable(examples):
    # ArrayRecord: random access; records are decoded (JPEG, PNG) one thread each.
    images = imagestore.fill(n, lambda i: image(i, examples(i)), transform)
  else:
    def chunks():
      batch = []
      for i, ex in enumerate(examples):
        batch.append(image(i, ex))
        if len(batch) == imagestore.CHUNK:
          yield np.stack(batch)
          batch = []
      if batch:
        yield np.stack(batch)
    images = imagestore.fill_from(n, chunks(), transform)
  return images, labels, names
