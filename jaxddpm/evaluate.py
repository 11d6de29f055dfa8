"""Sample quality, measured: conditional accuracy, Frechet distance, precision/recall.

All three are computed in the feature space of the dataset's evaluator classifier
(`metrics/classifier.py`) against the real test split, and each comes with its
*floor*: the same metric for N real train images in place of N samples, images
held out of the classifier's training as samples are. A model cannot beat the
floor; a Frechet distance of 2x the floor is close to the data.

    evaluator = make_evaluator(config)               # classifier + real references
    labels = evaluator.generation_labels(10_000)
    images = generate(make_sampler(config, with_stats=True), params, labels, key)
    result = evaluator.evaluate(images, labels)      # {"conditional_accuracy", ...}
    floor = evaluator.floor(len(images))
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Callable

import jax
import numpy as np

from jaxddpm import checkpoint, data as data_lib, diagnostics, images as images_lib, progress
from jaxddpm import files, parallel, sampling
from jaxddpm.metrics import classifier as classifier_lib
from jaxddpm.metrics import frechet, manifold

EVAL_FILE = "eval.json"


@dataclasses.dataclass
class Evaluator:
  """A classifier and the real data it compares samples with."""
  apply: Callable  # uint8 [N,H,W,C] -> (features float64 [N,D], logits [N,K]).
  classifier: dict  # Its cache key, path and test accuracy.
  held_out: data_lib.Split  # Real train images the classifier never saw: the floor's.
  test_stats: tuple  # (mean, covariance) of all test features.
  test_features: np.ndarray  # Test features in a fixed random order (precision / recall).
  test_labels: np.ndarray  # Their labels, in the same order.
  k: int = 3  # Neighbourhood size of the precision / recall manifolds.
  seed: int = 0
  names: tuple = ()  # Attribute names (attribute data): per-attribute accuracy is reported.
  stand_in: bool = False  # The real data is a generated stand-in (data.STAND_IN_FILE).

  def evaluate(self, images, labels) -> dict:
    """Metrics of N images (uint8, or float in [-1, 1], which is quantised to uint8
    first, as a saved PNG would be) generated for `labels` (int [N] or float [N, K])."""
    images = np.asarray(images)
    if images.dtype != np.uint8:
      images = images_lib.to_uint8(images)
    labels = np.asarray(labels)
    if images.ndim != 4 or len(images) != len(labels):
      raise ValueError(f"need images [N,H,W,C] and N labels; got {images.shape} and "
                       f"{labels.shape}.")
    if len(images) <= self.k:
      raise ValueError(f"need more than k={self.k} images to evaluate, got {len(images)}.")
    features, logits = self.apply(images)
    agree = classifier_lib.agreement(logits, labels)
    reference = self.test_features[:len(images)]
    precision, recall = manifold.precision_recall(reference, features, self.k)
    out = dict(conditional_accuracy=float(np.mean(agree)),
               frechet_distance=frechet.frechet_distance(*frechet.gaussian_stats(features),
                                                         *self.test_stats),
               precision=precision, recall=recall, num_images=int(len(images)))
    if labels.ndim == 2:  # Attributes: how often each one came out as asked.
      right = (np.asarray(logits) > 0) == (labels > 0.5)
      names = self.names or tuple(f"attribute_{i}" for i in range(labels.shape[1]))
      out["attribute_accuracy"] = {n: float(a) for n, a in zip(names, right.mean(0))}
    return out

  def generation_labels(self, n: int) -> np.ndarray:
    """What to generate n samples for: classes cycled evenly (10,000 -> 1,000 per
    class), or for attribute models the test split's attribute vectors, cycled."""
    if n < 1:
      raise ValueError(f"need at least one sample to evaluate, got {n}.")
    if self.test_labels.ndim == 1:
      return (np.arange(n) % self.classifier["num_outputs"]).astype(np.int32)
    return self.test_labels[np.arange(n) % len(self.test_labels)]

  def floor(self, n: int) -> dict:
    """The same metrics for n held-out real train images (a fixed random subset):
    what a model that samples the data distribution exactly would score with n
    samples, its accuracy included (the classifier never saw them either)."""
    return self.evaluate(*self.floor_images(n))

  def floor_images(self, n: int):
    """(uint8 images, labels) of the floor: n of the held-out images, a fixed subset."""
    check_floor_size(n, len(self.held_out))
    idx = np.sort(np.random.default_rng(self.seed + 1).permutation(len(self.held_out))[:n])
    return self.held_out.images[idx], self.held_out.labels[idx]


def check_floor_size(n: int, holdout: int):
  """The floor scores as many held-out real images as there are samples."""
  if n > holdout:
    raise ValueError(f"the floor needs as many held-out real train images as samples: "
                     f"at most {holdout} (the evaluator classifier's holdout), got {n}. "
                     "Evaluate fewer samples.")


def classifier_spec(config) -> classifier_lib.Spec:
  """The dataset's classifier recipe, with config.eval's test-size overrides."""
  spec = classifier_lib.default_spec(config.data.dataset)
  e = config.eval
  if e.classifier_epochs:
    spec = dataclasses.replace(spec, epochs=e.classifier_epochs)
  if e.get("classifier_holdout"):
    spec = dataclasses.replace(spec, holdout=e.classifier_holdout)
  if e.classifier_max_train_examples:
    spec = dataclasses.replace(spec, max_train_examples=e.classifier_max_train_examples)
  return spec


def make_evaluator(data_config, *, cache_dir: str | None = None, spec=None, k: int = 3,
                   quiet: bool = False) -> Evaluator:
  """Loads the real data and the dataset's classifier (training and caching it once)."""
  spec = spec or classifier_lib.default_spec(data_config.dataset)
  splits = classifier_lib.train_test_splits(data_config)
  apply, meta = classifier_lib.load_or_train(data_config, spec=spec, cache_dir=cache_dir,
                                             splits=splits, quiet=quiet)
  test_features, _ = apply(splits["test"].images)
  order = np.random.default_rng(0).permutation(len(test_features))
  return Evaluator(apply=apply, classifier=meta,
                   held_out=classifier_lib.split_holdout(splits["train"], spec)[1],
                   test_stats=frechet.gaussian_stats(test_features),
                   test_features=test_features[order], test_labels=splits["test"].labels[order],
                   k=k, names=splits["test"].names, stand_in=splits["test"].stand_in)


def generate(sample, params, labels, key: jax.Array, *, batch_size: int = 500,
             quiet: bool = True, batch_seconds: list | None = None) -> np.ndarray:
  """uint8 samples [N,H,W,C] for `labels`, from `sample = make_sampler(config,
  with_stats=True)`, in fixed-size batches (one compilation; the last is padded).
  Warns, once, if the sampler diverged in any batch. Appends each batch's wall
  time to `batch_seconds` if given (the first includes compilation)."""
  labels = np.asarray(labels)
  n = len(labels)
  if n == 0 or batch_size < 1:
    raise ValueError(f"need at least one label and batch_size >= 1 (got {n}, {batch_size}).")
  batch_size = min(batch_size, n)
  bar = progress.bar(n, "sample", quiet=quiet)
  out, warned = [], False
  for i in range(0, n, batch_size):
    chunk = labels[i:i + batch_size]
    pad = batch_size - len(chunk)
    padded = np.concatenate([chunk, chunk[:1].repeat(pad, 0)]) if pad else chunk
    t0 = time.perf_counter()
    x, stats = parallel.to_host(sample(params, jax.random.fold_in(key, i // batch_size), padded))
    if batch_seconds is not None:
      batch_seconds.append(time.perf_counter() - t0)
    warned = warned or diagnostics.warn_if_diverged(stats)
    out.append(images_lib.to_uint8(x[:len(chunk)]))
    progress.advance(bar, min(i + batch_size, n))
  bar.close()
  return np.concatenate(out)


def evaluate_checkpoint(workdir: str, *, num_samples: int | None = None, which: str = "best",
                        seed: int = 0, cache_dir: str | None = None, quiet: bool = False,
                        evaluator: Evaluator | None = None, out: str | None = None,
                        **sampling_overrides) -> dict:
  """Generates num_samples images from a workdir's checkpoint, scores them and their
  floor, and writes the result to workdir/eval.json (or `out`). Returns it."""
  config, params = checkpoint.load_checkpoint(workdir, which=which)
  n = int(config.eval.num_samples if num_samples is None else num_samples)
  k = evaluator.k if evaluator is not None else config.eval.pr_k
  if n <= k:
    raise ValueError(f"num_samples must be more than eval.pr_k={k} (precision and recall "
                     f"look at each image's {k} nearest neighbours), got {n}.")
  spec = classifier_spec(config)
  check_floor_size(n, len(evaluator.held_out) if evaluator is not None else spec.holdout)
  # Bad sampling options fail here, before a classifier that is not cached yet trains.
  sample = sampling.make_sampler(config, with_stats=True, **sampling_overrides)
  if evaluator is None:
    evaluator = make_evaluator(config.data, cache_dir=cache_dir or config.eval.cache_dir or None,
                               spec=spec, k=k, quiet=quiet)
  labels = evaluator.generation_labels(n)
  t0 = time.perf_counter()
  imgs = generate(sample, params, labels, jax.random.key(seed),
                  batch_size=config.eval.batch_size, quiet=quiet or jax.process_index() > 0)
  sample_seconds = time.perf_counter() - t0
  result = dict(
      workdir=os.path.abspath(workdir), checkpoint=which, seed=seed,
      sampling=dict(config.sampling, **sampling_overrides),
      metrics=evaluator.evaluate(imgs, labels), floor=evaluator.floor(n),
      classifier={k: evaluator.classifier[k] for k in ("key", "test_accuracy", "path")},
      data=dict(dataset=config.data.dataset, stand_in=evaluator.stand_in),
      sample_seconds=round(sample_seconds, 2))
  path = out or os.path.join(workdir, EVAL_FILE)
  if jax.process_index() == 0:  # Multi-host: every host scored the same; one writes.
    files.write_atomic(path, files.json_text(result, indent=2))
  result["path"] = path
  return result
