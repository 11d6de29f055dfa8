"""The small configs the tests train: `tiny_config` (unit tests of steps, chunks and
samplers) and the `:smoke` run the loop, fault, resume, launch and multi-host tests
share.

It is configs/mnist.py:smoke (2 epochs of 512 images, 32 steps) with a one-level
UNet and random flips on (so exact resume, crash safety and hosts against one
device are checked with flips drawn in the step), on real MNIST digits averaged down to 8x8 and written as IDX files in
MNIST's own format, so the offline loader reads them as it reads the real set.
Why so small: the behaviour these tests check (exact resume, crash safety, K steps
per call, hosts against one device) does not depend on the image or model size,
and most of a test run's time is XLA compiling and JAX tracing the model: one
level instead of two takes a `:smoke` run from 23 to 15 s cold, 7.3 to 5.0 s with
its programs cached (2-core Intel Xeon). The real 28x28 files are read by
test_data.py and test_evaluate.py; test_models.py runs the UNets at 28x28.
"""

import gzip
import os
import struct

import numpy as np

SIZE = 8
# launch.py flags for this run; the data folder goes in JAXDDPM_DATA_DIR.
LAUNCH_ARGS = ("--config", "configs/mnist.py:smoke", f"--config.data.image_size={SIZE}",
               "--config.model.channel_mults=(1,)", "--config.data.random_flip=True")


def config(data_dir):
  """configs/mnist.py:smoke as LAUNCH_ARGS set it, reading the small MNIST in data_dir."""
  from configs import mnist
  c = mnist.get_config("smoke")
  c.data.update(dir=data_dir, image_size=SIZE, random_flip=True)
  c.model.channel_mults = (1,)
  return c


def tiny_config():
  """A base config with a UNet small enough to train in a test: 8x8x1, 4 classes,
  one level with attention (the fewer layers, the less XLA has to compile)."""
  from configs import base
  c = base.get_config()
  c.data.update(image_size=8, num_classes=4)
  c.model.update(base_channels=8, channel_mults=(1,), num_res_blocks=1,
                 attention_resolutions=(8,), num_heads=2, dropout=0.0)
  c.diffusion.num_timesteps = 100
  c.optim.update(warmup_steps=0, lr=1e-3)
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


def tensorboard_events(folder):
  """(tag, step, value or PNG bytes) of every summary in a folder's event files,
  read with TensorBoard's own protobuf schema (tensorboardX.proto) and the
  TFRecord framing event files use."""
  from tensorboardX.proto import event_pb2

  from jaxddpm import tfds_source
  out = []
  for name in sorted(os.listdir(folder)):
    if name.startswith("events.out.tfevents"):
      for record in tfds_source.read_tfrecord(os.path.join(folder, name)):
        event = event_pb2.Event.FromString(record)
        for v in event.summary.value:
          out.append((v.tag, event.step, v.image.encoded_image_string if v.HasField("image")
                      else v.simple_value))
  return out

