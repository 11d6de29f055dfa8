"""CIFAR-10, class-conditional, 32x32 RGB. Needs a GPU for useful results.

Run:
  python launch.py --config configs/cifar10.py        # GPU
  python launch.py --config configs/cifar10.py:smoke  # seconds (needs the data)

Data: TFDS `cifar10`, or offline `cifar-10-binary.tar.gz` in <data dir>/cifar10/.
Expected: not yet measured on a GPU (see docs/RESULTS.md).
"""

from configs import base, variants


def get_config(arg=None):
  config = base.get_config()
  config.data.update(dataset="cifar10", image_size=32, channels=3, num_classes=10)
  config.model.update(base_channels=128, channel_mults=(1, 2, 2, 2),
                      attention_resolutions=(16,), dropout=0.1)
  config.train.num_epochs = 200
  config.optim.ema_decay = 0.9999
  return variants.apply(config, arg)
