"""CelebA faces conditioned on their 40 binary attributes (multi-hot), 64x64 centre crops.

Run:
  python launch.py --config configs/celeba.py         # GPU
  python launch.py --config configs/celeba.py:cpu     # 2-core CPU, about 15 minutes
  python launch.py --config configs/celeba.py:smoke   # seconds; for tests
  python launch.py --mode=sample --workdir runs/celeba --attributes="Smiling,-Male;Eyeglasses"

Data: <data dir>/celeba/ in the official layout (img_align_celeba/ or its zip,
list_attr_celeba.txt, list_eval_partition.txt), or TFDS `celeb_a`. Flips on.
Expected: not measured on the real data (it is not on the machines this project
is measured on); `:cpu` on the generated stand-in: docs/results.md, "Sample
quality: CIFAR-10 and CelebA on stand-in data".
"""

from configs import base, variants


def get_config(arg=None):
  config = base.get_config()
  config.data.update(dataset="celeb_a", image_size=64, channels=3, num_classes=40,
                     conditioning="attributes", random_flip=True)
  config.model.update(base_channels=128, channel_mults=(1, 1, 2, 2, 4),
                      attention_resolutions=(16,), dropout=0.1)
  config.train.update(num_epochs=50, samples_per_class=8)
  config.optim.ema_decay = 0.9999
  config = variants.apply(config, arg)
  if arg == "cpu":
    # 64x64x3 at ~33 images/s on 2 cores (Intel Xeon): a narrow first level (16
    # channels at 64x64 costs what 32 channels at 32x32 does) and 900 steps of 32.
    config.model.update(base_channels=16, channel_mults=(1, 2, 4, 4),
                        attention_resolutions=(8,))
    config.train.update(batch_size=32, num_steps=900, checkpoint_every_steps=300,
                        samples_per_class=8)
    config.eval.update(num_samples=500, batch_size=250, classifier_holdout=1000)
  return config
