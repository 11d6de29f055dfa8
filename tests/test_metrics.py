"""Frechet distance against closed forms; precision / recall on constructed sets;
the evaluator classifier's determinism and cache."""

import dataclasses
import fcntl
import os
import threading

import jax
import numpy as np
import pytest
import scipy.linalg

from jaxddpm import evaluate
from jaxddpm.metrics import classifier, frechet, manifold


def _random_cov(rng, d):
  a = rng.normal(size=(d, d))
  return a @ a.T / d + 0.1 * np.eye(d)


def test_frechet_zero_for_identical_statistics():
  rng = np.random.default_rng(0)
  mu, sigma = rng.normal(size=16), _random_cov(rng, 16)
  assert frechet.frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0.0, abs=1e-9)
  f = rng.normal(size=(500, 8))
  assert frechet.frechet_distance_of(f, f) == pytest.approx(0.0, abs=1e-9)


def test_frechet_closed_forms():
  # 1-D: (m1 - m2)^2 + (s1 - s2)^2.
  d = frechet.frechet_distance([1.0], [[4.0]], [-2.0], [[9.0]])
  assert d == pytest.approx(9.0 + 1.0, rel=1e-12)
  # Commuting (diagonal) covariances: |dmu|^2 + sum (sqrt(a) - sqrt(b))^2.
  a, b = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
  mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
  expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
  assert frechet.frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(
      expected, rel=1e-12)


def test_frechet_matches_general_formula_for_non_commuting_covariances():
  rng = np.random.default_rng(1)
  s1, s2 = _random_cov(rng, 12), _random_cov(rng, 12)
  mu1, mu2 = rng.normal(size=12), rng.normal(size=12)
  covmean = scipy.linalg.sqrtm(s1 @ s2).real
  expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * covmean)
  assert frechet.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9)
  # A distance: symmetric.
  assert frechet.frechet_distance(mu2, s2, mu1, s1) == pytest.approx(expected, rel=1e-9)


def test_frechet_of_samples_converges_to_the_gaussians_distance():
  rng = np.random.default_rng(2)
  a = rng.normal(size=(200_000, 2)) * [1.0, 2.0]
  b = rng.normal(size=(200_000, 2)) * [3.0, 2.0] + [1.0, 0.0]
  assert frechet.frechet_distance_of(a, b) == pytest.approx(1.0 + 4.0, rel=0.02)


def test_frechet_input_errors():
  with pytest.raises(ValueError, match="N >= 2"):
    frechet.gaussian_stats(np.zeros((1, 4)))
  with pytest.raises(ValueError, match="NaN"):
    frechet.gaussian_stats(np.full((3, 2), np.nan))
  with pytest.raises(ValueError, match="one D"):
    frechet.frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))


def test_knn_radii_match_brute_force():
  rng = np.random.default_rng(3)
  f = rng.normal(size=(50, 4))
  d = ((f[:, None] - f[None]) ** 2).sum(-1)
  expected = np.sort(d, axis=1)[:, 3]  # Column 0 is the point itself.
  np.testing.assert_allclose(manifold.knn_radii(f, 3, chunk=7), expected, rtol=1e-10)


def test_precision_recall_see_realism_and_coverage_apart():
  rng = np.random.default_rng(4)
  mode_a = rng.normal(size=(400, 2)) * 0.1
  mode_b = rng.normal(size=(400, 2)) * 0.1 + 10.0
  real = np.concatenate([mode_a, mode_b])
  p, r = manifold.precision_recall(real, real + 1e-9)
  assert p == 1.0 and r == 1.0
  # Mode collapse: every sample realistic, half of the data not covered.
  p, r = manifold.precision_recall(real, rng.normal(size=(800, 2)) * 0.1)
  assert p > 0.95 and 0.4 < r < 0.6
  # Samples off the data entirely.
  p, r = manifold.precision_recall(real, rng.normal(size=(800, 2)) * 0.1 + 5.0)
  assert p == 0.0 and r == 0.0


TINY = classifier.Spec(widths=(8, 16), feature_dim=32, dropout=0.0, epochs=3, lr=3e-3,
                       max_train_examples=2048)


@pytest.fixture(scope="module")
def mnist_splits(real_data_dir):
  import ml_collections
  d = ml_collections.ConfigDict(dict(dataset="mnist", image_size=28, channels=1,
                                     dir=real_data_dir))
  return d, classifier.train_test_splits(d)


def test_classifier_training_is_deterministic_and_learns(mnist_splits):
  _, splits = mnist_splits
  model, p1 = classifier.train(splits["train"], TINY)
  _, p2 = classifier.train(splits["train"], TINY)
  for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p2)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  _, p3 = classifier.train(splits["train"], dataclasses.replace(TINY, seed=1))
  assert not np.array_equal(np.asarray(jax.tree.leaves(p1)[0]), np.asarray(jax.tree.leaves(p3)[0]))
  apply = classifier.make_apply(model, p1, batch_size=512)
  test = splits["test"]
  small = type(test)(test.images[:2000], test.labels[:2000])
  assert classifier.accuracy(apply, small) > 0.75  # 2,048 images, 3 epochs, 8/16 channels.
  # Batching: one image, a power-of-two batch, and full batches with a padded last one
  # all give the model's own outputs on those images.
  direct = jax.jit(lambda x: model.apply({"params": p1}, x))
  for n in (1, 40, 600):
    feats, logits = classifier.make_apply(model, p1, batch_size=256)(test.images[:n])
    want_f, want_l = direct(test.images[:n])
    assert feats.shape == (n, TINY.feature_dim) and feats.dtype == np.float64
    np.testing.assert_allclose(feats, want_f, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(logits, want_l, rtol=1e-5, atol=1e-5)


def _row_set(split):
  return {img.tobytes() + bytes([int(lab)]) for img, lab in zip(split.images, split.labels)}


def test_the_holdout_is_a_fixed_partition_of_the_train_split(mnist_splits):
  _, splits = mnist_splits
  train = splits["train"]
  fit, held = classifier.split_holdout(train, TINY)
  assert len(held) == TINY.holdout and len(fit) + len(held) == len(train)
  assert _row_set(fit) | _row_set(held) == _row_set(train)
  assert not _row_set(fit) & _row_set(held)
  again = classifier.split_holdout(train, TINY)[1]
  np.testing.assert_array_equal(again.images, held.images)
  other = classifier.split_holdout(train, dataclasses.replace(TINY, seed=1))[1]
  assert not np.array_equal(other.labels, held.labels)
  for bad in (0, len(train)):
    with pytest.raises(ValueError, match="holdout must be in 1..59999"):
      classifier.split_holdout(train, dataclasses.replace(TINY, holdout=bad))


def test_classifier_cache_round_trip_and_damage(mnist_splits, tmp_path, monkeypatch):
  d, splits = mnist_splits
  trained_on = []
  real_train = classifier.train
  monkeypatch.setattr(classifier, "train",
                      lambda split, spec, **kw: trained_on.append(split) or real_train(
                          split, spec, **kw))
  apply1, meta1 = classifier.load_or_train(d, spec=TINY, cache_dir=str(tmp_path),
                                           splits=splits, quiet=True)
  # Trained without the holdout: the floor's images are as new to it as samples.
  [fit] = trained_on
  np.testing.assert_array_equal(fit.images,
                                classifier.split_holdout(splits["train"], TINY)[0].images)
  assert os.path.isfile(os.path.join(meta1["path"], "meta.json"))
  assert 0.75 < meta1["test_accuracy"] <= 1.0
  # Second call: loaded, not retrained (no data needed), same features.
  apply2, meta2 = classifier.load_or_train(d, spec=TINY, cache_dir=str(tmp_path), quiet=True)
  assert meta2["test_accuracy"] == meta1["test_accuracy"] and len(trained_on) == 1
  # The evaluator's floor draws from exactly the images the classifier never saw.
  ev = evaluate.make_evaluator(d, spec=TINY, cache_dir=str(tmp_path), quiet=True)
  np.testing.assert_array_equal(ev.held_out.images,
                                classifier.split_holdout(splits["train"], TINY)[1].images)
  assert len(trained_on) == 1
  x = splits["test"].images[:64]
  np.testing.assert_array_equal(apply1(x)[0], apply2(x)[0])
  _a_second_process_waits_for_the_training_one_then_loads(d, meta1, x, apply1, tmp_path,
                                                            monkeypatch)
  # Another recipe gets another cache entry.
  assert classifier.cache_key("mnist", 28, TINY) != classifier.cache_key(
      "mnist", 28, dataclasses.replace(TINY, epochs=4))
  with open(os.path.join(meta1["path"], "params.msgpack"), "wb") as f:
    f.write(b"not msgpack")
  with pytest.raises(ValueError, match="damaged"):
    classifier.load_or_train(d, spec=TINY, cache_dir=str(tmp_path), quiet=True)
  with open(os.path.join(meta1["path"], "meta.json"), "w") as f:
    f.write("{cut short")
  with pytest.raises(ValueError, match=r"damaged \(.*meta.json: JSONDecodeError.*delete that"):
    classifier.load_or_train(d, spec=TINY, cache_dir=str(tmp_path), quiet=True)
  with pytest.raises(ValueError, match="uint8"):
    apply1(np.zeros((2, 28, 28, 1), np.float32))


def _a_second_process_waits_for_the_training_one_then_loads(d, meta, x, apply, tmp_path,
                                                            monkeypatch):
  """Another process holds the lock and has not yet written the entry: this one
  waits, then loads that entry instead of training a second copy."""
  folder = meta["path"]
  aside = str(tmp_path / "aside")
  os.rename(folder, aside)  # The entry does not exist yet...
  waiting = threading.Event()
  real_flock = fcntl.flock

  def flock(f, op):
    if not op & fcntl.LOCK_NB:
      waiting.set()  # ...when this process blocks on the lock.
    real_flock(f, op)

  monkeypatch.setattr(classifier.fcntl, "flock", flock)
  monkeypatch.setattr(classifier, "train", lambda *a, **k: pytest.fail("trained a second copy"))
  got = {}
  with open(folder + ".lock", "a") as held:
    real_flock(held, fcntl.LOCK_EX)  # A separate open file: it conflicts within one process.
    waiter = threading.Thread(target=lambda: got.update(result=classifier.load_or_train(
        d, spec=TINY, cache_dir=str(tmp_path), quiet=True)))
    waiter.start()
    assert waiting.wait(timeout=120)
    os.rename(aside, folder)  # The other process finishes its entry and lets go.
  waiter.join(timeout=120)
  monkeypatch.setattr(classifier.fcntl, "flock", real_flock)
  assert "result" in got, "the waiting process raised: see the thread's exception above"
  apply2, meta2 = got["result"]
  assert meta2["test_accuracy"] == meta["test_accuracy"]
  np.testing.assert_array_equal(apply2(x)[0], apply(x)[0])


@pytest.mark.parametrize("dataset,size,channels,outputs", [("cifar10", 32, 3, 10),
                                                           ("celeb_a", 64, 3, 40)])
def test_gpu_sized_classifiers_shapes_and_attribute_agreement(dataset, size, channels, outputs):
  spec = classifier.SPECS[dataset]
  model = classifier.Classifier(spec, outputs)
  x = jax.ShapeDtypeStruct((2, size, size, channels), np.uint8)
  # Shapes only (nothing compiled): init and apply traced abstractly.
  params = jax.eval_shape(model.init, jax.random.key(0), x)["params"]
  features, logits = jax.eval_shape(lambda p, x: model.apply({"params": p}, x), params, x)
  assert features.shape == (2, spec.feature_dim) and logits.shape == (2, outputs)
  # Attributes: agreement is the fraction of the K attributes predicted right.
  attrs = np.array([[1.0, 0.0, 1.0, 0.0]])
  np.testing.assert_allclose(classifier.agreement(np.array([[3.0, -1.0, -2.0, -5.0]]), attrs),
                             [0.75])
