"""Data: real IDX files, CIFAR-10 and CelebA in their official layouts, TFDS in both
of its formats, splits, missing-data errors."""

import gzip
import io
import os
import pickle
import struct
import tarfile
import types
import zipfile

import numpy as np
import pytest
from PIL import Image

from jaxddpm import celeba, data, standin, tfds_source


def _data_config(**kw):
  from configs import base
  c = base.get_config().data
  c.update(kw)
  return c


@pytest.mark.parametrize("dataset", ["mnist", "fashion_mnist"])
def test_real_idx_files(real_data_dir, dataset):
  cfg = _data_config(dataset=dataset, dir=real_data_dir)
  train, test = data.load_split(cfg, "train"), data.load_split(cfg, "test")
  assert train.images.shape == (60000, 28, 28, 1) and train.images.dtype == np.uint8
  assert test.images.shape == (10000, 28, 28, 1)
  assert train.labels.dtype == np.int32 and set(np.unique(train.labels)) == set(range(10))
  assert 30 < train.images.mean() < 90  # Real pictures: dark background, bright strokes.
  if dataset == "fashion_mnist":
    np.testing.assert_array_equal(np.bincount(train.labels), 6000)
    np.testing.assert_array_equal(np.bincount(test.labels), 1000)


def test_split_is_deterministic_and_disjoint(real_data_dir):
  cfg = _data_config(dataset="mnist", dir=real_data_dir)
  a = data.load(cfg, seed=3)
  b = data.load(cfg, seed=3)
  c = data.load(cfg, seed=4)
  assert len(a["val"]) == 6000 and len(a["train"]) == 54000 and len(a["test"]) == 10000
  np.testing.assert_array_equal(a["val"].images, b["val"].images)
  assert not np.array_equal(a["val"].labels, c["val"].labels)
  # Disjoint: no validation image is also a training image (compare raw bytes).
  train_set = {im.tobytes() for im in a["train"].images[:20000]}
  assert sum(im.tobytes() in train_set for im in a["val"].images[:500]) < 5  # MNIST has a few duplicates.


def test_padding_to_32(real_data_dir):
  cfg = _data_config(dataset="mnist", dir=real_data_dir, image_size=32)
  s = data.load(cfg, seed=0)["test"]
  assert s.images.shape[1:] == (32, 32, 1)
  assert s.images[:, :2].max() == 0  # Padding is background.
  with pytest.raises(ValueError, match="not supported"):
    data.load(_data_config(dataset="mnist", dir=real_data_dir, image_size=27), seed=0)


def test_read_idx_rejects_bad_files(tmp_path):
  bad = tmp_path / "x.gz"
  with gzip.open(bad, "wb") as f:
    f.write(b"\x00\x00\x08\x01" + (5).to_bytes(4, "big") + b"\x01\x02")  # Says 5, holds 2.
  with pytest.raises(ValueError, match="truncated"):
    data.read_idx(str(bad))
  with gzip.open(bad, "wb") as f:
    f.write(b"PK\x03\x04 not idx")
  with pytest.raises(ValueError, match="magic"):
    data.read_idx(str(bad))
  # A download cut short, and a file that is not gzip at all: gzip's own errors.
  good = gzip.compress(b"\x00\x00\x08\x01" + (5000).to_bytes(4, "big") + bytes(5000))
  bad.write_bytes(good[:len(good) // 2])
  with pytest.raises(ValueError, match="cannot read .*x.gz: EOFError.*download it again"):
    data.read_idx(str(bad))
  bad.write_bytes(b"<html>rate limited</html>")
  with pytest.raises(ValueError, match="cannot read .*x.gz: BadGzipFile.*download it again"):
    data.read_idx(str(bad))


def _cifar_archive(python: bool, rng) -> tuple[bytes, dict]:
  """A CIFAR-10 archive as the official page gives it, four images per batch:
  pickled dicts {b"data": uint8 [n, 3072], b"labels": list} (the Python version)
  or 3,073-byte records, a label byte then the R, G, B planes (the binary one)."""
  buf, truth = io.BytesIO(), {}
  root = "cifar-10-batches-py" if python else "cifar-10-batches-bin"
  with tarfile.open(fileobj=buf, mode="w:gz") as tar:
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
      labels, planes = rng.integers(0, 10, 4), rng.integers(0, 256, (4, 3072), dtype=np.uint8)
      truth[name] = (labels, planes)
      if python:
        payload = pickle.dumps({b"labels": labels.tolist(), b"data": planes}, protocol=2)
      else:
        payload = np.concatenate([labels[:, None].astype(np.uint8), planes], 1).tobytes()
        name += ".bin"
      info = tarfile.TarInfo(f"{root}/{name}")
      info.size = len(payload)
      tar.addfile(info, io.BytesIO(payload))
  return buf.getvalue(), truth


@pytest.mark.parametrize("python", [True, False], ids=["python", "binary"])
def test_cifar_offline_in_both_official_versions(tmp_path, python):
  archive, truth = _cifar_archive(python, np.random.default_rng(0))
  name = data.CIFAR_FILES[0] if python else data.CIFAR_FILES[1]
  (tmp_path / "cifar10").mkdir()
  (tmp_path / "cifar10" / name).write_bytes(archive)
  cfg = _data_config(dataset="cifar10", dir=str(tmp_path), image_size=32, channels=3)
  train, test = data.load_split(cfg, "train"), data.load_split(cfg, "test")
  assert train.images.shape == (20, 32, 32, 3) and test.images.shape == (4, 32, 32, 3)
  assert not train.stand_in
  np.testing.assert_array_equal(train.labels[4:8], truth["data_batch_2"][0])
  np.testing.assert_array_equal(test.labels, truth["test_batch"][0])
  # Pixel (row r, column c) of channel k is byte k*1024 + r*32 + c of the row.
  planes = truth["data_batch_1"][1]
  assert train.images[1, 3, 5, 2] == planes[1, 2 * 1024 + 3 * 32 + 5]
  np.testing.assert_array_equal(train.images[0, :, :, 1].ravel(), planes[0, 1024:2048])
  # A partial download of the archive.
  (tmp_path / "cifar10" / name).write_bytes(archive[:len(archive) // 2])
  with pytest.raises(ValueError, match="cannot read .*cifar.*download it again"):
    data.load_split(cfg, "train")


def _celeba_folder(folder, colours, partition, *, as_zip=False, attrs=None):
  """An official-layout CelebA of flat-coloured 178x218 JPEGs (JPEG keeps a flat
  colour to within a unit or two). Returns the attribute values written."""
  n = len(colours)
  names = ["Smiling", "Male", "Eyeglasses"]
  attrs = np.where(np.arange(n * 3).reshape(n, 3) % 2, 1, -1) if attrs is None else attrs
  files = [f"{i + 1:06d}.jpg" for i in range(n)]
  os.makedirs(folder, exist_ok=True)
  jpegs = {}
  for name, colour in zip(files, colours):
    buf = io.BytesIO()
    Image.new("RGB", (178, 218), tuple(int(c) for c in colour)).save(buf, "JPEG", quality=95)
    jpegs[name] = buf.getvalue()
  if as_zip:
    with zipfile.ZipFile(os.path.join(folder, celeba.IMAGES_ZIP), "w") as z:
      for name, b in jpegs.items():
        z.writestr(f"img_align_celeba/{name}", b)
  else:
    os.makedirs(os.path.join(folder, "img_align_celeba"))
    for name, b in jpegs.items():
      with open(os.path.join(folder, "img_align_celeba", name), "wb") as f:
        f.write(b)
  with open(os.path.join(folder, "list_attr_celeba.txt"), "w") as f:
    # The official file: a count, the names (with a trailing space), then rows
    # whose values are padded to two characters.
    f.write(f"{n}\n{' '.join(names)} \n")
    for name, row in zip(files, attrs):
      f.write(name + "".join(f" {v:2d}" for v in row) + "\n")
  with open(os.path.join(folder, "list_eval_partition.txt"), "w") as f:
    f.writelines(f"{name} {p}\n" for name, p in zip(files, partition))
  return attrs


@pytest.mark.parametrize("as_zip", [False, True], ids=["folder", "zip"])
def test_celeba_offline_official_layout(tmp_path, as_zip):
  colours = np.random.default_rng(1).integers(20, 236, (7, 3))
  partition = [0, 0, 1, 0, 2, 0, 2]
  attrs = _celeba_folder(tmp_path / "celeba", colours, partition, as_zip=as_zip)
  cfg = _data_config(dataset="celeb_a", dir=str(tmp_path), image_size=16, channels=3,
                     num_classes=3, conditioning="attributes")
  train, test = data.load_split(cfg, "train"), data.load_split(cfg, "test")
  assert train.names == test.names == ("Smiling", "Male", "Eyeglasses")
  assert train.images.shape == (4, 16, 16, 3) and test.images.shape == (2, 16, 16, 3)
  # Partition 0 is train, 2 is test, in file order; 1 (validation) is in neither.
  np.testing.assert_allclose(train.images.mean((1, 2)), colours[[0, 1, 3, 5]], atol=2)
  np.testing.assert_allclose(test.images.mean((1, 2)), colours[[4, 6]], atol=2)
  np.testing.assert_array_equal(train.labels, (attrs[[0, 1, 3, 5]] + 1) / 2)
  assert train.labels.dtype == np.float32 and not train.stand_in


def test_celeba_damaged_or_missing_files_say_which(tmp_path):
  folder = tmp_path / "celeba"
  _celeba_folder(folder, np.full((3, 3), 128), [0, 0, 2])
  cfg = _data_config(dataset="celeb_a", dir=str(tmp_path), image_size=16, channels=3,
                     num_classes=3, conditioning="attributes")
  attr = folder / "list_attr_celeba.txt"
  full = attr.read_text()
  attr.write_text(full[:full.rindex("000003.jpg")])  # Truncated: 3 said, 2 there.
  with pytest.raises(ValueError, match="says 3 images .* truncated"):
    data.load_split(cfg, "train")
  attr.write_text(full)
  (folder / "img_align_celeba" / "000002.jpg").write_bytes(b"\xff\xd8 not a jpeg")
  with pytest.raises(ValueError, match="cannot decode CelebA image 000002.jpg"):
    data.load_split(cfg, "train")
  (folder / "img_align_celeba" / "000002.jpg").unlink()
  with pytest.raises(ValueError, match="lacks 1 of the 2 train images .*first: 000002.jpg"):
    data.load_split(cfg, "train")
  (folder / "list_eval_partition.txt").unlink()
  with pytest.raises(ValueError, match="list_eval_partition.txt.*celeba/"):
    data.load_split(cfg, "train")


def test_stand_in_folders_load_and_say_so(tmp_path):
  """The generated stand-ins are read by the same loaders as the real files, and
  every split made from them is marked."""
  standin.write_celeba(str(tmp_path / "celeba"), 40, as_zip=True)
  standin.write_cifar10(str(tmp_path / "cifar10"), 50, 20)
  faces = data.load_split(_data_config(dataset="celeb_a", dir=str(tmp_path), image_size=32,
                                       channels=3, num_classes=40, conditioning="attributes"),
                          "test")
  assert faces.stand_in and faces.names == tuple(standin.CELEBA_ATTRIBUTES)
  assert faces.images.shape == (4, 32, 32, 3)
  objects = data.load_split(_data_config(dataset="cifar10", dir=str(tmp_path), image_size=32,
                                         channels=3), "train")
  assert objects.stand_in and np.bincount(objects.labels).tolist() == [5] * 10


@pytest.mark.parametrize("dataset,shape,cond", [
    ("mnist", (28, 28, 1), "class"),
    ("fashion_mnist", (28, 28, 1), "class"),
    ("cifar10", (32, 32, 3), "class"),
    ("celeb_a", (64, 64, 3), "attributes"),
])
def test_tfds_path_with_mock_data(tmp_path, monkeypatch, dataset, shape, cond):
  import tensorflow_datasets as tfds
  monkeypatch.delenv(data.ENV_VAR, raising=False)
  monkeypatch.setattr(data, "SYSTEM_DIRS", {})
  monkeypatch.setattr(tfds_source, "_reachable", lambda url, timeout=5.0: True)  # "Online".
  k = 40 if cond == "attributes" else 10
  cfg = _data_config(dataset=dataset, tfds_dir=str(tmp_path), image_size=shape[0],
                     channels=shape[2], num_classes=k, conditioning=cond, val_fraction=0.25)
  with tfds.testing.mock_data(num_examples=8):
    splits = data.load(cfg, seed=0)
  assert splits["train"].images.shape == (6, *shape) and splits["val"].images.shape == (2, *shape)
  assert splits["test"].images.dtype == np.uint8
  labels = splits["train"].labels
  if cond == "attributes":
    assert labels.shape == (6, 40) and labels.dtype == np.float32
    assert set(np.unique(labels)) <= {0.0, 1.0}
  else:
    assert labels.shape == (6,) and labels.dtype == np.int32 and labels.max() < 10


def test_celeba_centre_crop_and_resize_values():
  """An aligned face is 218x178: the 178x178 square at rows 20-197 is kept and
  resized by a normalised, antialiased triangle filter, which reproduces a linear
  ramp: output pixel j sits at source (j + ½)·178/64 - ½. Channel 0 ramps along the
  columns, channel 1 along the rows of the square, channel 2 marks the 40 rows
  outside it (255), which must not reach the output at all."""
  r, c = np.meshgrid(np.arange(218), np.arange(178), indexing="ij")
  face = np.stack([c, np.clip(r - 20, 0, 177), np.where((r < 20) | (r >= 198), 255, 0)], -1)
  out = data.fit_size(data.Split(face[None].astype(np.uint8), np.zeros((1, 40), np.float32)),
                      "celeb_a", 64).images[0].astype(int)
  assert out.shape == (64, 64, 3)
  centre = np.rint((np.arange(64) + 0.5) * 178 / 64 - 0.5).astype(int)
  inner = slice(2, 62)  # Away from the edges, where the filter is cut short.
  np.testing.assert_allclose(out[:, inner, 0], np.broadcast_to(centre[inner], (64, 60)), atol=1)
  np.testing.assert_allclose(out[inner, :, 1], np.broadcast_to(centre[inner, None], (60, 64)),
                             atol=1)
  assert out[..., 2].max() == 0


def test_missing_offline_files_say_what_to_do(tmp_path):
  cfg = _data_config(dataset="mnist", dir=str(tmp_path))
  with pytest.raises(ValueError) as e:
    data.load_split(cfg, "train")
  msg = str(e.value)
  assert "train-images-idx3-ubyte.gz" in msg and "JAXDDPM_DATA_DIR" in msg and str(tmp_path) in msg


def test_offline_without_tfds_data_fails_fast(tmp_path, monkeypatch):
  """No offline folder, nothing prepared, no network: a ValueError naming the
  dataset and the fixes, raised before TFDS's minutes of download retries."""
  monkeypatch.delenv(data.ENV_VAR, raising=False)
  monkeypatch.setattr(data, "SYSTEM_DIRS", {})
  monkeypatch.setattr(tfds_source, "_reachable", lambda url, timeout=5.0: False)
  cfg = _data_config(dataset="fashion_mnist", tfds_dir=str(tmp_path))
  with pytest.raises(ValueError) as e:
    data.load_split(cfg, "train")
  msg = str(e.value)
  assert "fashion_mnist" in msg and "t10k-labels-idx1-ubyte.gz" in msg
  assert "apt-get install dataset-fashion-mnist" in msg
  assert not any(p.name.endswith(".tmp") for p in tmp_path.rglob("*"))


def test_unknown_dataset_and_config_mismatch(real_data_dir):
  with pytest.raises(ValueError, match="unknown dataset"):
    data.load_split(_data_config(dataset="svhn"), "train")
  with pytest.raises(ValueError, match="channels"):
    data.load(_data_config(dataset="mnist", dir=real_data_dir, channels=3), seed=0)


def _crc32c(data: bytes) -> int:
  """CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), bit by bit."""
  crc = 0xFFFFFFFF
  for byte in data:
    crc ^= byte
    for _ in range(8):
      crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
  return crc ^ 0xFFFFFFFF


def _tfrecord(records) -> bytes:
  """TFRecord framing: uint64 length, masked CRC of it, data, masked CRC of data."""
  mask = lambda c: (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF
  out = b""
  for r in records:
    length = struct.pack("<Q", len(r))
    out += length + struct.pack("<I", mask(_crc32c(length))) + r
    out += struct.pack("<I", mask(_crc32c(r)))
  return out


def test_tfds_tfrecord_reads_without_tensorflow(tmp_path):
  """A split TFDS prepared as TFRecord (its default): tf.train.Example protos
  built here from TFDS's own proto module, PNG-encoded by PIL, framed as
  TFRecord, in two shards. The loader reads them back exactly, no TensorFlow."""
  import tensorflow_datasets as tfds
  from tensorflow_datasets.proto import tf_example_pb2
  features = tfds.builder("cifar10", data_dir=str(tmp_path / "unused")).info.features
  rng = np.random.default_rng(0)
  images, labels = rng.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8), [3, 1, 4, 1, 5]
  records = []
  for i, (img, y) in enumerate(zip(images, labels)):
    png = io.BytesIO()
    Image.fromarray(img).save(png, "PNG")
    ex = tf_example_pb2.Example()
    ex.features.feature["image"].bytes_list.value.append(png.getvalue())
    ex.features.feature["label"].int64_list.value.append(y)
    ex.features.feature["id"].bytes_list.value.append(f"train_{i}".encode())
    records.append(ex.SerializeToString())
  paths = [tmp_path / "cifar10-train.tfrecord-00000-of-00002",
           tmp_path / "cifar10-train.tfrecord-00001-of-00002"]
  paths[0].write_bytes(_tfrecord(records[:3]))
  paths[1].write_bytes(_tfrecord(records[3:]))
  split = types.SimpleNamespace(num_examples=5, filepaths=paths)
  builder = types.SimpleNamespace(data_dir=str(tmp_path), info=types.SimpleNamespace(
      name="cifar10", file_format="tfrecord", features=features, splits={"train": split}))
  n, examples = tfds_source._examples(builder, "train")
  got = list(examples)
  assert n == 5 and [int(e["label"]) for e in got] == labels
  np.testing.assert_array_equal(np.stack([e["image"] for e in got]), images)
  # A shard cut short is an error, not a silently shorter data set.
  paths[1].write_bytes(_tfrecord(records[3:])[:-10])
  with pytest.raises(ValueError, match="truncated"):
    list(tfds_source._examples(builder, "train")[1])
  builder.info.file_format = "parquet"
  with pytest.raises(ValueError, match="reads array_record or tfrecord"):
    tfds_source._examples(builder, "train")


def test_preparing_without_tensorflow_says_how(tmp_path, monkeypatch):
  """Online, nothing prepared, TFDS's download_and_prepare needs TensorFlow: the
  error says to install it or prepare the data elsewhere, in one line."""
  import tensorflow_datasets as tfds
  monkeypatch.delenv(data.ENV_VAR, raising=False)
  monkeypatch.setattr(data, "SYSTEM_DIRS", {})
  monkeypatch.setattr(tfds_source, "_reachable", lambda url, timeout=5.0: True)

  def needs_tf(self, **kwargs):
    raise ModuleNotFoundError("No module named 'tensorflow'")
  monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", needs_tf)
  cfg = _data_config(dataset="cifar10", tfds_dir=str(tmp_path), image_size=32, channels=3)
  with pytest.raises(ValueError, match="needs TensorFlow.*pip install tensorflow-cpu") as e:
    data.load_split(cfg, "train")
  assert "\n" not in str(e.value) and "cifar-10-python.tar.gz" in str(e.value)
