"""CIFAR-10, class-conditional, 32x32 RGB. Needs a GPU for useful results.

Run:
  python launch.py --config configs/cifar10.py        # GPU
  python launch.py --config configs/cifar10.py:cpu    # 2-core CPU, about 15 minutes
  python launch.py --config configs/cifar10.py:smoke  # seconds; for tests

Data: <data dir>/cifar10/ holding cifar-10-python.tar.gz or cifar-10-binary.tar.gz,
or TFDS `cifar10` (TFRecord or ArrayRecord). Flips on.
Expected: not measured on the real data (it is not on the machines this project
is measured on); `:cpu` on the generated stand-in: docs/results.md, "Sample
quality: CIFAR-10 and CelebA on stand-in data".
"""

from configs import base, variants


def get_config(arg=None):
  config = base.get_config()
  config.data.update(dataset="cifar10", image_size=32, channels=3, num_classes=10,
                     random_flip=True)
  config.model.update(base_channels=128, channel_mults=(1, 2, 2, 2),
                      attention_resolutions=(16,), dropout=0.1)
  config.train.num_epochs = 200
  config.optim.ema_decay = 0.9999
  config = variants.apply(config, arg)
  if arg == "cpu":
    # The :cpu UNet at 32x32x3 trains at ~55 images/s on 2 cores (Intel Xeon):
    # 800 steps of 64 is about 15 minutes.
    config.train.num_steps = 800
    # The recipe's 40 classifier epochs are sized for a GPU and 50,000 images.
    config.eval.update(classifier_epochs=10, classifier_holdout=1000)
  return config
