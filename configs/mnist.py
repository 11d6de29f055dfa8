"""MNIST, class-conditional: one row of digits per class.

  python launch.py --config configs/mnist.py          # GPU: default UNet, up to 30 epochs
  python launch.py --config configs/mnist.py:cpu      # 2-core CPU, 10-15 minutes
  python launch.py --config configs/mnist.py:smoke    # seconds; for tests

Expected, `:cpu` (docs/results.md, "Sample quality: `:cpu` configs"): validation
loss ~0.025, clean digits of the right classes (docs/mnist_cpu.png), and with
`--mode=evaluate --num_samples 2000` ~98.7% conditional accuracy.
"""

from configs import base, variants


def get_config(arg=None):
  config = base.get_config()
  config.data.dataset = "mnist"
  config = variants.apply(config, arg)
  if not arg:
    # A strong model guided at 2 on every step trades most of its diversity for
    # accuracy; a small scale in the EDM2 interval keeps the accuracy at a fraction
    # of the distance (docs/results.md, "Sample quality: GPU configs", on
    # Fashion-MNIST). The :cpu model keeps guidance 2 at every step: it needs it.
    config.sampling.update(guidance_scale=1.25, guidance_interval=base.EDM2_INTERVAL)
  return config
