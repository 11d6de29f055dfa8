"""Shared fixtures. Tests run on the CPU with small shapes and fixed keys, in
parallel workers (pytest-xdist, `-n` in pyproject.toml) that share one test-run
folder: XLA's compilation cache and the artefacts made once per test run."""

import fcntl
import json
import os
import shutil
import sys
import tempfile

import pytest

# Tests import the repo's `configs` package and the helper modules beside them.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import smoke  # noqa: E402

# Set by the first pytest process of a test run; its xdist workers inherit it.
RUN_ENV = "JAXDDPM_TEST_RUN_DIR"
REAL_DATA_HELP = ("set JAXDDPM_DATA_DIR to a folder holding mnist/ and fashion-mnist/ with "
                  "their four IDX .gz files each (in this repository's checkout: "
                  "JAXDDPM_DATA_DIR=../shared/data), or deselect the tests that read real "
                  "data with -m 'not real_data'")
_OWNED = pytest.StashKey[str]()


def pytest_configure(config):
  """One test-run folder for the controller and its workers: $JAXDDPM_CACHE_DIR
  (inherited by launch.py subprocesses) with XLA's persistent compilation cache in
  its xla/, as launch.py keeps it. Many tests compile the same programs (the
  `:smoke` run's train chunk, validation and sampler); after the first compile the
  others load them. Fresh per test run, so no entry outlives the code that made it,
  and tests never write to the user's ~/.cache. Set before any compile."""
  import jax
  config.addinivalue_line("markers", "real_data: reads the real MNIST / Fashion-MNIST "
                                     "files ($JAXDDPM_DATA_DIR)")
  folder = os.environ.get(RUN_ENV)
  if not folder:
    folder = tempfile.mkdtemp(prefix="jaxddpm-tests-")
    os.environ[RUN_ENV] = folder
    config.stash[_OWNED] = folder
  os.environ["JAXDDPM_CACHE_DIR"] = folder
  # The tests compile hundreds of small programs and run most of them a few times:
  # LLVM at -O1 instead of XLA's -O3 compiles them faster (docs/results.md, "Test
  # suite"); -O0 compiles faster still but runs the evaluator's classifier 5x
  # slower. Optimisation levels change no float semantics (no fast-math); the one
  # test that needs -O3 asks for it per compile. Inherited by launch.py
  # subprocesses; a level in the caller's XLA_FLAGS wins. Set before jax starts
  # its backend.
  flags = os.environ.get("XLA_FLAGS", "")
  if "xla_backend_optimization_level" not in flags:
    os.environ["XLA_FLAGS"] = f"{flags} --xla_backend_optimization_level=1".strip()
  jax.config.update("jax_compilation_cache_dir", os.path.join(folder, "xla"))
  # Cache every program, not only those that took over a second to compile (JAX's
  # default): the tests' small programs are compiled again by each worker and
  # each launch.py subprocess (which inherit the variable) otherwise.
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


def pytest_unconfigure(config):
  folder = config.stash.get(_OWNED, None)
  if folder:
    shutil.rmtree(folder, ignore_errors=True)
    os.environ.pop(RUN_ENV, None)


# The order files go to the workers (`--dist loadfile --no-loadscope-reorder` keeps
# collection order): the longest first (by their time in a full run), so that no
# long file starts while the other worker idles; then the rest; test_parallel.py
# last, whose subprocesses use both cores when the other worker has finished.
SLOW_FILES = ("test_loop.py", "test_launch.py", "test_sampling.py", "test_train.py",
              "test_faults.py", "test_attributes.py", "test_conv.py", "test_models.py",
              "test_metrics.py", "test_evaluate.py", "test_pictures.py", "test_diffusion.py")
LAST_FILES = ("test_parallel.py",)


def pytest_collection_modifyitems(items):
  """Tests that read the real data carry the `real_data` marker: the one explicit
  way to leave them out (`-m 'not real_data'`). Without the data they fail. Slow
  files first (SLOW_FILES), LAST_FILES last, each file's tests in their own order."""
  for item in items:
    if "real_data_dir" in getattr(item, "fixturenames", ()):
      item.add_marker(pytest.mark.real_data)
  rank = {name: i for i, name in enumerate(SLOW_FILES)}
  rank.update({name: len(SLOW_FILES) + 1 + i for i, name in enumerate(LAST_FILES)})
  items.sort(key=lambda item: rank.get(item.path.name, len(SLOW_FILES)))


def once(name: str, make):
  """make(folder) -> JSON-able result, run once per test run across all workers:
  the first to ask makes it under a file lock in the test-run folder, the others
  wait and read its result."""
  folder = os.path.join(os.environ[RUN_ENV], "once", name)
  os.makedirs(os.path.dirname(folder), exist_ok=True)
  done = folder + ".json"
  with open(folder + ".lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if not os.path.isfile(done):
      os.makedirs(folder, exist_ok=True)
      result = make(folder)
      with open(done, "w") as f:
        json.dump(result, f)
  with open(done) as f:
    return json.load(f)


@pytest.fixture
def tiny_config():
  return smoke.tiny_config()


@pytest.fixture(scope="session")
def real_data_dir():
  """The folder with the real MNIST / Fashion-MNIST IDX files: $JAXDDPM_DATA_DIR,
  else ../shared/data beside the checkout. Missing, the test fails and says how
  to point at it; it is never skipped."""
  path = os.environ.get("JAXDDPM_DATA_DIR") or os.path.join(ROOT, "..", "shared", "data")
  for sub, name in (("mnist", "train-images-idx3-ubyte.gz"),
                    ("fashion-mnist", "t10k-labels-idx1-ubyte.gz")):
    if not os.path.isfile(os.path.join(path, sub, name)):
      pytest.fail(f"real data not found: no {sub}/{name} in {os.path.abspath(path)}; "
                  f"{REAL_DATA_HELP}.", pytrace=False)
  return os.path.abspath(path)


@pytest.fixture(scope="session")
def small_data_dir(real_data_dir):
  """A data folder with real MNIST at 8x8 (tests/smoke.py), made once per test run."""
  return once("small_mnist", lambda folder: smoke.write_small_mnist(real_data_dir, folder))


@pytest.fixture(scope="session")
def smoke_reference(small_data_dir):
  """One uninterrupted `:smoke` run (32 steps, 2 epochs) as (workdir, summary): the
  run that resumed, interrupted, killed, multi-host and K-steps-per-call runs must
  equal. Made once per test run, by whichever worker asks first; never write to it."""
  def train(folder):
    from jaxddpm import loop
    summary = loop.train_and_evaluate(smoke.config(small_data_dir), folder)
    return {k: v for k, v in summary.items() if isinstance(v, (int, float, str, bool))}
  workdir = os.path.join(os.environ[RUN_ENV], "once", "smoke_reference")
  return workdir, once("smoke_reference", train)


@pytest.fixture
def smoke_config(small_data_dir):
  return smoke.config(small_data_dir)
