"""Data: real IDX files, the TFDS path under mock data, splits, missing-data errors."""

import gzip
import io
import tarfile

import numpy as np
import pytest

from jaxddpm import data


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


def test_cifar_binary_offline(tmp_path):
  rng = np.random.default_rng(0)
  buf = io.BytesIO()
  with tarfile.open(fileobj=buf, mode="w:gz") as tar:
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
      rec = np.concatenate([rng.integers(0, 10, (4, 1)), rng.integers(0, 256, (4, 3072))], 1)
      payload = rec.astype(np.uint8).tobytes()
      info = tarfile.TarInfo(f"cifar-10-batches-bin/{name}")
      info.size = len(payload)
      tar.addfile(info, io.BytesIO(payload))
  (tmp_path / "cifar10").mkdir()
  (tmp_path / "cifar10" / data.CIFAR_FILE).write_bytes(buf.getvalue())
  cfg = _data_config(dataset="cifar10", dir=str(tmp_path), image_size=32, channels=3)
  train = data.load_split(cfg, "train")
  assert train.images.shape == (20, 32, 32, 3) and train.labels.shape == (20,)
  # Channel planes (R, G, B) become the last axis.
  raw = np.frombuffer(tarfile.open(fileobj=io.BytesIO(buf.getvalue())).extractfile(
      "cifar-10-batches-bin/data_batch_1.bin").read(), np.uint8)
  np.testing.assert_array_equal(train.images[0, :, :, 1].ravel(), raw[1 + 1024:1 + 2048])
  # A partial download of the archive.
  (tmp_path / "cifar10" / data.CIFAR_FILE).write_bytes(buf.getvalue()[:len(buf.getvalue()) // 2])
  with pytest.raises(ValueError, match="cannot read .*cifar.*download it again"):
    data.load_split(cfg, "train")


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
  monkeypatch.setattr(data, "_reachable", lambda url, timeout=5.0: True)  # "Online".
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
  monkeypatch.setattr(data, "_reachable", lambda url, timeout=5.0: False)
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
