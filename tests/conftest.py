"""Shared tiny configs. Tests run on the CPU with small shapes and fixed keys."""

import os
import shutil
import sys
import tempfile

import pytest

# Tests import the repo's `configs` package and the helper modules beside them.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

_CACHE = pytest.StashKey[str]()


def pytest_configure(config):
  """A fresh jaxddpm cache folder for this session ($JAXDDPM_CACHE_DIR, inherited
  by launch.py subprocesses), with XLA's persistent compilation cache in its xla/,
  as launch.py keeps it. Why: many tests train the same `:smoke` config (resume,
  K steps per call, faults, early stopping, ...), and each run compiled the same
  train, validation and sampling programs again (~13 of a run's ~20 s on 2
  cores); with the cache the later compiles of a program are loads (the suite:
  13:44 -> ~9 min on 2 cores, docs/RESULTS.md "Test suite"). Fresh per session, so no entry outlives the code
  that made it, and tests never write to the user's ~/.cache. Set before any
  compile, as JAX requires."""
  import jax
  folder = tempfile.mkdtemp(prefix="jaxddpm-tests-cache-")
  config.stash[_CACHE] = folder
  os.environ["JAXDDPM_CACHE_DIR"] = folder
  jax.config.update("jax_compilation_cache_dir", os.path.join(folder, "xla"))


def pytest_unconfigure(config):
  folder = config.stash.get(_CACHE, None)
  if folder:
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def tiny_config():
  """A base config with a UNet small enough to train in a test: 8x8x1, 4 classes."""
  from configs import base
  c = base.get_config()
  c.data.image_size = 8
  c.data.num_classes = 4
  c.model.base_channels = 8
  c.model.channel_mults = (1, 2)
  c.model.num_res_blocks = 1
  c.model.attention_resolutions = (4,)
  c.model.num_heads = 2
  c.model.dropout = 0.0
  c.diffusion.num_timesteps = 100
  c.optim.warmup_steps = 0
  c.optim.lr = 1e-3
  return c


@pytest.fixture(scope="session")
def real_data_dir():
  """The folder with real MNIST / Fashion-MNIST IDX files. Under CI (CI set) a
  missing folder fails the test instead of skipping it."""
  path = os.environ.get("JAXDDPM_DATA_DIR") or os.path.join(ROOT, "..", "shared", "data")
  if not os.path.isfile(os.path.join(path, "mnist", "train-images-idx3-ubyte.gz")):
    message = (f"real data not found in {path}: set JAXDDPM_DATA_DIR to a folder with "
               "mnist/ and fashion-mnist/ IDX files")
    if os.environ.get("CI"):
      pytest.fail(message)
    pytest.skip(message)
  return os.path.abspath(path)


@pytest.fixture(scope="session")
def smoke_reference(real_data_dir, tmp_path_factory):
  """One uninterrupted `:smoke` run (32 steps, 2 epochs) as (workdir, summary): the
  run that resumed, interrupted, killed, multi-host and K-steps-per-call runs must
  equal. Made once per session (each costs ~8 s on 2 cores); never write to it."""
  from jaxddpm import loop
  workdir = str(tmp_path_factory.mktemp("smoke_reference"))
  return workdir, loop.train_and_evaluate(_smoke(real_data_dir), workdir)


def _smoke(data_dir):
  """The `:smoke` config reading the real data in data_dir."""
  from configs import mnist
  c = mnist.get_config("smoke")
  c.data.dir = data_dir
  return c


@pytest.fixture
def smoke_config(real_data_dir):
  return _smoke(real_data_dir)
