"""The evaluator's eyes: a small CNN per dataset, trained by jaxddpm, cached.

Sample metrics (conditional accuracy, Frechet distance, precision / recall) are
computed in the feature space of a classifier trained on the dataset's real train
split (less the images held out for the floor): its penultimate layer. Inception features (FID) know nothing about 28x28
greyscale digits; a classifier of the data itself does.

A trained classifier is cached under `cache_dir/classifiers/<key>/` with its test
accuracy; the key names the dataset, image size, code VERSION and a hash of the
spec, so a changed recipe never reuses a stale network. One process trains a
missing entry; others that share the cache wait for it and load it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import time
from typing import Sequence

try:
  import fcntl  # POSIX; elsewhere processes that share a cache may each train.
except ImportError:
  fcntl = None

import flax.linen as nn
import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxddpm import data as data_lib, files
from jaxddpm import xla

VERSION = 1  # Bump when training or architecture changes in a way specs do not show.
CACHE_ENV_VAR = "JAXDDPM_CACHE_DIR"


@dataclasses.dataclass(frozen=True)
class Spec:
  """Architecture and training recipe of one classifier."""
  widths: Sequence[int] = (32, 64, 128)  # Conv width per level; 2x2 max-pool between levels.
  convs_per_level: int = 1
  feature_dim: int = 128  # Penultimate width: the metric feature space.
  dropout: float = 0.3
  epochs: int = 8
  batch_size: int = 128
  lr: float = 1e-3  # Adam, cosine-decayed to 0.
  shift: int = 2  # Random translation by up to this many pixels (augmentation).
  hflip: bool = False  # Random horizontal flips (clothes, objects, faces; not digits).
  max_train_examples: int = 0  # Train on the first N only (tests); 0 = all.
  # Train images the classifier never sees, drawn at random once per seed: the
  # evaluator's floor. Samples are new images too, so the floor must be unseen
  # images: a classifier is more accurate on the images it trained on (Fashion-
  # MNIST's: 95.6% on 10,000 of them, 93.4% on 10,000 held out and on the test split).
  holdout: int = 10_000
  seed: int = 0


# What reaches >= 99.0% on MNIST and >= 93% on Fashion-MNIST on a 2-core CPU in
# minutes (docs/results.md, "The evaluator"); CIFAR-10 and CelebA are sized for a
# GPU. Fashion-MNIST has two convs per level: with one (92.0%) a sample set that
# matched the data exactly would score under a 93% accuracy target.
SPECS = {
    "mnist": Spec(epochs=4),
    "fashion_mnist": Spec(epochs=15, convs_per_level=2, hflip=True),
    "cifar10": Spec(widths=(64, 128, 256), convs_per_level=2, feature_dim=256, epochs=40,
                    hflip=True, shift=4),
    "celeb_a": Spec(widths=(32, 64, 128, 256), convs_per_level=2, feature_dim=256, epochs=5,
                    hflip=True, shift=4),
}


class Classifier(nn.Module):
  """Conv (+ReLU) blocks with max-pooling, then Dense(feature_dim) -> features -> logits."""
  spec: Spec
  num_outputs: int

  @nn.compact
  def __call__(self, x_BHWC, *, train: bool = False):
    """uint8 images [B,H,W,C] -> (features [B, feature_dim], logits [B, num_outputs])."""
    x = x_BHWC.astype(jnp.float32) / 127.5 - 1.0
    for level, width in enumerate(self.spec.widths):
      if level:
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
      for _ in range(self.spec.convs_per_level):
        x = nn.relu(nn.Conv(width, (3, 3))(x))
    x = x.reshape(x.shape[0], -1)
    features = nn.relu(nn.Dense(self.spec.feature_dim)(x))
    h = nn.Dropout(self.spec.dropout, deterministic=not train)(features)
    return features, nn.Dense(self.num_outputs)(h)


def default_spec(dataset: str) -> Spec:
  if dataset not in SPECS:
    raise ValueError(f"no evaluator classifier for dataset {dataset!r}; known: {sorted(SPECS)}.")
  return SPECS[dataset]


def default_cache_dir() -> str:
  return os.environ.get(CACHE_ENV_VAR) or os.path.join(
      os.path.expanduser("~"), ".cache", "jaxddpm")


def cache_key(dataset: str, image_size: int, spec: Spec) -> str:
  digest = hashlib.sha256(json.dumps(dataclasses.asdict(spec), sort_keys=True).encode())
  return f"{dataset}_{image_size}px_v{VERSION}_{digest.hexdigest()[:10]}"


def _loss(logits, labels):
  """Softmax cross-entropy for classes (int [B]), sigmoid BCE for attributes [B, K]."""
  if labels.ndim == 1:
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
  return optax.sigmoid_binary_cross_entropy(logits, labels).mean()


def agreement(logits, labels) -> jnp.ndarray:
  """Per-example: 1 if classified as the label (classes), else the fraction of the
  K attributes predicted right (attributes, threshold 0.5)."""
  if labels.ndim == 1:
    return (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
  return ((logits > 0) == (labels > 0.5)).astype(jnp.float32).mean(-1)


def _augment(images, key, spec: Spec):
  """Random shifts (zero padding) and flips, on the device."""
  B, H, W, _ = images.shape
  k_shift, k_flip = jax.random.split(key)
  if spec.shift:
    s = spec.shift
    padded = jnp.pad(images, ((0, 0), (s, s), (s, s), (0, 0)))
    offsets = jax.random.randint(k_shift, (B, 2), 0, 2 * s + 1)
    crop = lambda img, o: jax.lax.dynamic_slice(img, (o[0], o[1], 0), (H, W, img.shape[-1]))
    images = jax.vmap(crop)(padded, offsets)
  if spec.hflip:
    flip = jax.random.bernoulli(k_flip, 0.5, (B, 1, 1, 1))
    images = jnp.where(flip, images[:, :, ::-1], images)
  return images


def train(train_split: data_lib.Split, spec: Spec, *, quiet: bool = True):
  """Trains a classifier on all of `train_split` (`load_or_train` passes it the
  split less the holdout); deterministic for a spec (same params bit for bit on
  the same hardware). Returns (model, params)."""
  if spec.max_train_examples:
    train_split = train_split.subset(slice(spec.max_train_examples))
  n = len(train_split)
  steps_per_epoch = n // spec.batch_size
  if steps_per_epoch == 0:
    raise ValueError(f"{n} images are fewer than the classifier batch size {spec.batch_size}.")
  labels = train_split.labels
  num_outputs = int(labels.max()) + 1 if labels.ndim == 1 else labels.shape[1]
  model = Classifier(spec, num_outputs)
  key = jax.random.key(spec.seed)
  init_key, data_key, step_key = jax.random.split(key, 3)
  init = xla.jit(model.init, cpu_options=xla.RUN_ONCE)  # Runs once: compile fast.
  params = init(init_key, jnp.zeros((1, *train_split.images.shape[1:]), jnp.uint8))["params"]
  total = spec.epochs * steps_per_epoch
  tx = optax.adam(optax.cosine_decay_schedule(spec.lr, total))
  opt_state = tx.init(params)

  @xla.jit
  def step(params, opt_state, images, labels, key):
    k_aug, k_drop = jax.random.split(key)
    images = _augment(images, k_aug, spec)

    def loss_fn(p):
      _, logits = model.apply({"params": p}, images, train=True, rngs={"dropout": k_drop})
      return _loss(logits, labels)
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  x, y = jnp.asarray(train_split.images), jnp.asarray(labels)
  t0 = time.perf_counter()
  for epoch in range(spec.epochs):
    perm = jax.random.permutation(jax.random.fold_in(data_key, epoch), n)
    for i in range(steps_per_epoch):
      idx = perm[i * spec.batch_size:(i + 1) * spec.batch_size]
      params, opt_state, loss = step(params, opt_state, x[idx], y[idx],
                                     jax.random.fold_in(step_key, epoch * steps_per_epoch + i))
    if not quiet:
      print(f"classifier epoch {epoch + 1}/{spec.epochs}: loss {float(loss):.4f} "
            f"({time.perf_counter() - t0:.0f} s)", flush=True)
  return model, params


def make_apply(model: Classifier, params, batch_size: int = 1000):
  """`apply(images_uint8) -> (features float64 [N, D], logits float32 [N, K])`, in
  fixed-size batches (one compilation; the last batch padded). Fewer images than
  a batch go as one batch of the next power of two: a quick 50-sample evaluation
  computes 64 images, not 1,000, and compiles one of a few small programs."""
  fn = xla.jit(lambda x: model.apply({"params": params}, x))

  def apply(images):
    images = np.asarray(images)
    if images.dtype != np.uint8:
      raise ValueError(f"the classifier takes uint8 images, got {images.dtype}.")
    size = min(batch_size, 1 << max(len(images) - 1, 0).bit_length())
    feats, logits = [], []
    for i in range(0, len(images), size):
      chunk = images[i:i + size]
      pad = size - len(chunk)
      f, l = fn(np.pad(chunk, ((0, pad),) + ((0, 0),) * 3) if pad else chunk)
      feats.append(np.asarray(f)[:len(chunk)])
      logits.append(np.asarray(l)[:len(chunk)])
    return np.concatenate(feats).astype(np.float64), np.concatenate(logits)

  return apply


def accuracy(apply, split: data_lib.Split) -> float:
  _, logits = apply(split.images)
  return float(np.mean(np.asarray(agreement(jnp.asarray(logits), jnp.asarray(split.labels)))))


def load_or_train(data_config, *, spec: Spec | None = None, cache_dir: str | None = None,
                  splits=None, quiet: bool = False):
  """The dataset's classifier from the cache, trained (and cached) on first use.

  Args:
    data_config: config.data (dataset, image_size, dir, ...).
    spec: recipe; default SPECS[dataset].
    cache_dir: default $JAXDDPM_CACHE_DIR or ~/.cache/jaxddpm.
    splits: {"train", "test"} Splits if already loaded (else loaded here).
  Returns:
    (apply, meta): `apply(uint8 images) -> (features, logits)` and a dict with
    "test_accuracy", "key", "path", "train_seconds".
  """
  dataset = data_config.dataset
  spec = spec or default_spec(dataset)
  key = cache_key(dataset, data_config.image_size, spec)
  folder = os.path.join(cache_dir or default_cache_dir(), "classifiers", key)
  cached = _load_cached(folder, data_config, spec)
  if cached:
    return cached
  os.makedirs(os.path.dirname(folder), exist_ok=True)
  with _exclusive(folder + ".lock", quiet):
    # Another process may have trained it while this one waited for the lock.
    return _load_cached(folder, data_config, spec) or _train_and_cache(
        folder, key, data_config, spec, splits, quiet)


def _load_cached(folder: str, data_config, spec: Spec):
  """(apply, meta) from a complete cache entry in `folder`, else None."""
  params_path, meta_path = os.path.join(folder, "params.msgpack"), os.path.join(folder,
                                                                               "meta.json")
  if not (os.path.isfile(meta_path) and os.path.isfile(params_path)):
    return None
  try:
    with open(meta_path) as f:
      meta = json.load(f)
    model = Classifier(spec, meta["num_outputs"])
  except (ValueError, KeyError, TypeError) as e:  # json's errors are ValueErrors.
    raise ValueError(f"the cached classifier in {folder} is damaged ({meta_path}: "
                     f"{type(e).__name__}: {e}); delete that folder and it will be "
                     "retrained.") from e
  # The tree's structure is all from_bytes needs: shapes only, nothing compiled.
  template = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros(
      (1, data_config.image_size, data_config.image_size, data_config.channels),
      jnp.uint8))["params"]
  with open(params_path, "rb") as f:
    try:
      params = flax.serialization.from_bytes(template, f.read())
    except Exception as e:  # noqa: BLE001 - msgpack raises several types; all mean damage.
      raise ValueError(f"the cached classifier in {folder} is damaged ({e}); delete that "
                       "folder and it will be retrained.") from e
  return make_apply(model, params), dict(meta, path=folder)


@contextlib.contextmanager
def _exclusive(lock_path: str, quiet: bool):
  """Holds `lock_path` while this process trains a classifier, so that processes
  sharing a cache (evaluations started together, the hosts of one run) train it
  once: the others wait, then load it. The OS drops the lock when its holder ends,
  even by SIGKILL. A filesystem without locks (some network mounts) goes unlocked."""
  if fcntl is None:
    yield
    return
  with open(lock_path, "a") as f:
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      if not quiet:
        print(f"waiting for another process to finish training this classifier ({lock_path})",
              flush=True)
      fcntl.flock(f, fcntl.LOCK_EX)
    except OSError:
      pass  # No locks here.
    yield  # Closing the file releases the lock.


def _train_and_cache(folder: str, key: str, data_config, spec: Spec, splits, quiet: bool):
  dataset = data_config.dataset
  if splits is None:
    splits = train_test_splits(data_config)
  if not quiet:
    print(f"training the evaluator's {dataset} classifier (once; cached in {folder})",
          flush=True)
  t0 = time.perf_counter()
  model, params = train(split_holdout(splits["train"], spec)[0], spec, quiet=quiet)
  apply = make_apply(model, params)
  meta = dict(dataset=dataset, image_size=data_config.image_size, version=VERSION,
              spec=dataclasses.asdict(spec), num_outputs=model.num_outputs,
              test_accuracy=accuracy(apply, splits["test"]),
              train_seconds=round(time.perf_counter() - t0, 1), key=key)
  os.makedirs(folder, exist_ok=True)
  files.write_atomic(os.path.join(folder, "params.msgpack"),
                     flax.serialization.to_bytes(params))
  # Last: marks it complete.
  files.write_atomic(os.path.join(folder, "meta.json"), json.dumps(meta, indent=2))
  if not quiet:
    print(f"classifier test accuracy {meta['test_accuracy']:.4f}", flush=True)
  return apply, dict(meta, path=folder)


def train_test_splits(data_config) -> dict:
  """The full real train split (train + val of the diffusion run) and the test split."""
  return {s: data_lib.load_split(data_config, s) for s in ("train", "test")}


def split_holdout(train_split: data_lib.Split, spec: Spec):
  """(fit, held_out): the classifier trains on `fit`; `held_out` (spec.holdout images,
  a random subset fixed by spec.seed) is the floor's real images."""
  n = len(train_split)
  if not 0 < spec.holdout < n:
    raise ValueError(f"the classifier's holdout must be in 1..{n - 1} of the {n} train "
                     f"images, got {spec.holdout}: set eval.classifier_holdout (in training's "
                     "--config, or in the run's config.json) to about a fifth of them, and "
                     "evaluate at most that many samples.")
  held = np.zeros(n, bool)
  held[np.random.default_rng(spec.seed).permutation(n)[:spec.holdout]] = True
  return train_split.subset(~held), train_split.subset(held)

