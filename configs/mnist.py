"""MNIST, class-conditional.

Run:
  python launch.py --config configs/mnist.py          # GPU: default UNet, 30 epochs
  python launch.py --config configs/mnist.py:cpu      # 2-core CPU, about 15 minutes
  python launch.py --config configs/mnist.py:smoke    # seconds; for tests

Expected (measured, see docs/RESULTS.md): `:cpu` gives a grid of recognisable
digits of the right classes after ~15 min on 2 CPU cores (no GPU).
"""

from configs import base, variants


def get_config(arg=None):
  config = base.get_config()
  config.data.dataset = "mnist"
  return variants.apply(config, arg)
