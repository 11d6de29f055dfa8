"""The evaluator on real MNIST: real images reproduce the floor, noise is far from
it; evaluation inside training picks the best checkpoint by Frechet distance."""

import os

import jax
import ml_collections
import numpy as np
import pytest

from jaxddpm import checkpoint, evaluate, loop, progress
from jaxddpm.metrics import classifier

TINY = classifier.Spec(widths=(8, 16), feature_dim=32, dropout=0.0, epochs=3, lr=3e-3,
                       max_train_examples=2048)


@pytest.fixture(scope="module")
def evaluator(real_data_dir, tmp_path_factory):
  d = ml_collections.ConfigDict(dict(dataset="mnist", image_size=28, channels=1,
                                     dir=real_data_dir))
  return evaluate.make_evaluator(d, cache_dir=str(tmp_path_factory.mktemp("cache")), spec=TINY,
                                 quiet=True)


def test_real_images_reproduce_the_floor(evaluator):
  n = 500
  floor = evaluator.floor(n)
  assert floor["num_images"] == n and floor["conditional_accuracy"] > 0.75
  # Other held-out images than the floor's: the same metrics, up to sampling noise.
  rng = np.random.default_rng(7)
  held = evaluator.held_out
  idx = rng.choice(len(held), n, replace=False)
  real = evaluator.evaluate(held.images[idx], held.labels[idx])
  assert 0.5 * floor["frechet_distance"] < real["frechet_distance"] < 2 * floor["frechet_distance"]
  assert abs(real["conditional_accuracy"] - floor["conditional_accuracy"]) < 0.06
  for k in ("precision", "recall"):
    assert abs(real[k] - floor[k]) < 0.1 and real[k] > 0.5
  # Float images in [-1, 1] are quantised exactly as uint8 PNGs would be.
  as_float = held.images[idx].astype(np.float32) / 127.5 - 1.0
  again = evaluator.evaluate(as_float, held.labels[idx])
  assert again == real


def test_noise_and_wrong_labels_are_far_from_the_floor(evaluator):
  n = 500
  floor = evaluator.floor(n)
  noise = np.random.default_rng(0).integers(0, 256, (n, 28, 28, 1), dtype=np.uint8)
  bad = evaluator.evaluate(noise, np.arange(n) % 10)
  assert bad["frechet_distance"] > 10 * floor["frechet_distance"]
  assert bad["precision"] < 0.1
  idx = np.arange(n)
  held = evaluator.held_out
  shifted = evaluator.evaluate(held.images[idx], (held.labels[idx] + 1) % 10)
  assert shifted["conditional_accuracy"] < 0.2  # Right images, wrong labels.


def test_evaluate_input_errors(evaluator):
  with pytest.raises(ValueError, match="N labels"):
    evaluator.evaluate(np.zeros((10, 28, 28, 1), np.uint8), np.zeros(9, np.int32))
  with pytest.raises(ValueError, match="more than k"):
    evaluator.evaluate(np.zeros((2, 28, 28, 1), np.uint8), np.zeros(2, np.int32))
  with pytest.raises(ValueError, match="floor needs"):
    evaluator.floor(10**7)


def test_training_with_evaluation_keeps_the_best_frechet_checkpoint(smoke_config, tmp_path):
  with smoke_config.unlocked():
    # The classifier goes to the test run's cache folder, where test_launch.py's
    # `--mode=evaluate` finds it.
    smoke_config.eval.update(every_epochs=1, num_samples=40, batch_size=20)
    smoke_config.train.num_epochs = 3
  workdir = str(tmp_path / "run")
  summary = loop.train_and_evaluate(smoke_config, workdir)
  records = [r for r in progress.read_metrics(os.path.join(workdir, "metrics.jsonl"))
             if "eval_frechet_distance" in r]
  assert [r["step"] for r in records] == [16, 32, 48]
  for r in records:
    assert r["eval_num_images"] == 40 and 0.0 <= r["eval_conditional_accuracy"] <= 1.0
  fds = [r["eval_frechet_distance"] for r in records]
  best_step = records[int(np.argmin(fds))]["step"]
  assert summary["best_frechet_distance"] == pytest.approx(min(fds), rel=1e-6)
  best_dir = os.path.join(workdir, "checkpoints", "best")
  assert sorted(int(d) for d in os.listdir(best_dir) if d.isdigit()) == [best_step]
  config, params = checkpoint.load_checkpoint(workdir, which="best")
  assert config.eval.every_epochs == 1 and jax.tree.leaves(params)
  # Bad requests fail at once: no sampling, and no classifier trained into a new cache.
  fresh_cache = tmp_path / "fresh_cache"
  k = config.eval.pr_k
  for n in (0, k):
    with pytest.raises(ValueError, match=f"num_samples must be more than eval.pr_k={k}.*got {n}"):
      evaluate.evaluate_checkpoint(workdir, num_samples=n, cache_dir=str(fresh_cache))
  with pytest.raises(ValueError, match="steps must be"):
    evaluate.evaluate_checkpoint(workdir, num_samples=40, cache_dir=str(fresh_cache),
                                 steps=10**6)
  with pytest.raises(ValueError, match="at most 10000 .*holdout.*got 10001"):
    evaluate.evaluate_checkpoint(workdir, num_samples=10_001, cache_dir=str(fresh_cache))
  assert not fresh_cache.exists() or not any(fresh_cache.iterdir())
