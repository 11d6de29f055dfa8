"""CelebA, conditioned on its 40 binary attributes (multi-hot), 64x64 centre crops.

Run:
  python launch.py --config configs/celeba.py         # GPU
  python launch.py --config configs/celeba.py:smoke   # seconds (needs the data)

Data: TFDS `celeb_a` (five Google Drive files; prepare it where there is internet
and point --config.data.tfds_dir at that data_dir). Guidance then strengthens the
requested attributes. Expected: not yet measured on a GPU (see docs/RESULTS.md).
"""

from configs import base, variants


def get_config(arg=None):
  config = base.get_config()
  config.data.update(dataset="celeb_a", image_size=64, channels=3, num_classes=40,
                     conditioning="attributes")
  config.model.update(base_channels=128, channel_mults=(1, 1, 2, 2, 4),
                      attention_resolutions=(16,), dropout=0.1)
  config.train.update(num_epochs=50, samples_per_class=8)
  config.optim.ema_decay = 0.9999
  return variants.apply(config, arg)
