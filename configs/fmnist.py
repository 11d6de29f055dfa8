"""Fashion-MNIST, class-conditional.

Run:
  python launch.py --config configs/fmnist.py         # GPU: default UNet, 30 epochs
  python launch.py --config configs/fmnist.py:cpu     # 2-core CPU, about 15 minutes
  python launch.py --config configs/fmnist.py:smoke   # seconds; for tests

Expected (measured, see docs/RESULTS.md): `:cpu` gives recognisable garments of
the right classes (trousers, bags, shoes...) after ~15 min on 2 CPU cores.
"""

from configs import base, variants


def get_config(arg=None):
  config = base.get_config()
  config.data.dataset = "fashion_mnist"
  return variants.apply(config, arg)
