"""Attributes by name: parsing, drawing the unnamed ones from the data, the run's
data.json; and an attribute run (stand-in CelebA) trained, sampled by name,
pictured and evaluated end to end."""

import json
import os

import numpy as np
import pytest

from jaxddpm import attributes, cli, data, standin

NAMES = ("Smiling", "Male", "Eyeglasses", "Beard")


def test_parse_names_and_negations():
  assert attributes.parse("Smiling,-male, EYEGLASSES", NAMES) == {0: True, 1: False, 2: True}
  with pytest.raises(ValueError, match="unknown attribute 'Smilling' .did you mean 'Smiling'.*"
                                       "Smiling, Male"):
    attributes.parse("Smilling", NAMES)
  with pytest.raises(ValueError, match="both with and without"):
    attributes.parse("Male,-Male", NAMES)
  with pytest.raises(ValueError, match="no attribute named"):
    attributes.parse(" , ", NAMES)


def test_unnamed_attributes_come_from_training_faces_that_agree():
  """Training faces where a beard goes with Male only: "-Male" must never draw a
  beard, "Male" draws it as often as the men have one (half), and the attributes
  nobody named still vary between images."""
  rng = np.random.default_rng(0)
  male = rng.random(400) < 0.5
  present = np.stack([rng.random(400) < 0.5, male, rng.random(400) < 0.2,
                      male & (rng.random(400) < 0.5)], 1)
  women = attributes.labels_for("-Male", NAMES, present, 200, seed=1)
  assert (women[:, 1] == 0).all() and (women[:, 3] == 0).all()
  men = attributes.labels_for("Male,Smiling", NAMES, present, 400, seed=2)
  assert (men[:, :2] == 1).all()
  assert 0.4 < men[:, 3].mean() < 0.6
  assert 0.1 < men[:, 2].mean() < 0.3  # Eyeglasses: ~0.2 in the data.
  assert men.dtype == np.float32 and men.shape == (400, 4)
  # No training face is a woman with a beard: the unnamed ones fall back to their
  # frequencies, drawn independently.
  odd = attributes.labels_for("-Male,Beard", NAMES, present, 400, seed=3)
  assert (odd[:, 1] == 0).all() and (odd[:, 3] == 1).all()
  assert 0.4 < odd[:, 0].mean() < 0.6
  np.testing.assert_array_equal(odd, attributes.labels_for("-Male,Beard", NAMES, present, 400,
                                                           seed=3))


def test_run_data_round_trip(tmp_path):
  """13 attributes: not a whole number of bytes once packed to bits."""
  labels = (np.random.default_rng(0).random((30, 13)) < 0.3).astype(np.float32)
  names = tuple(f"a{i}" for i in range(13))
  attributes.save_run_data(str(tmp_path), "celeb_a", data.Split(
      np.zeros((30, 2, 2, 3), np.uint8), labels, names, stand_in=True))
  info = attributes.load_run_data(str(tmp_path))
  assert info["stand_in"] and info["names"] == list(names) and info["num_train"] == 30
  np.testing.assert_array_equal(info["present"], labels > 0.5)
  np.testing.assert_allclose(info["frequencies"], labels.mean(0), atol=1e-5)
  classes = tmp_path / "classes"
  classes.mkdir()
  attributes.save_run_data(str(classes), "mnist", data.Split(
      np.zeros((3, 2, 2, 1), np.uint8), np.arange(3, dtype=np.int32)))
  assert not (classes / attributes.ATTRIBUTES_FILE).exists()
  with pytest.raises(ValueError, match="class runs take --labels"):
    attributes.attribute_labels(str(classes), "a1", 2)


def test_grid_rows_are_well_known_attributes_when_the_names_are_celebas():
  assert attributes.grid_requests(tuple(standin.CELEBA_ATTRIBUTES)) == list(
      attributes.CELEBA_GRID)
  assert attributes.grid_requests(NAMES) == list(NAMES)


@pytest.fixture(scope="module")
def attribute_run(tmp_path_factory):
  """configs/celeba.py:smoke at 16x16 on 400 stand-in faces (the official layout,
  JPEGs and lists), trained in-process."""
  from configs import celeba
  from jaxddpm import loop
  root = tmp_path_factory.mktemp("attribute_run")
  standin.write_celeba(str(root / "data" / "celeba"), 400, as_zip=True)
  config = celeba.get_config("smoke")
  config.data.update(dir=str(root / "data"), image_size=16, val_fraction=0.3)
  config.model.update(channel_mults=(1,), attention_resolutions=())
  config.train.update(num_epochs=1, batch_size=16)
  config.eval.update(classifier_holdout=60, classifier_max_train_examples=0)
  workdir = str(root / "run")
  loop.train_and_evaluate(config, workdir)
  return workdir


def test_an_attribute_run_samples_by_name_and_says_it_is_a_stand_in(attribute_run, capsys):
  png, npz, _ = cli.sample(attribute_run, attributes="Smiling,-Male;Eyeglasses",
                           num_per_class=3, steps=2)
  labels = np.load(npz)["labels"]
  names = list(standin.CELEBA_ATTRIBUTES)
  assert labels.shape == (6, 40)
  assert (labels[:3, names.index("Smiling")] == 1).all()
  assert (labels[:3, names.index("Male")] == 0).all()
  assert (labels[3:, names.index("Eyeglasses")] == 1).all()
  assert "STAND-IN" in capsys.readouterr().err
  with pytest.raises(ValueError, match="unknown attribute 'Smiles'"):
    cli.sample(attribute_run, attributes="Smiles", steps=2)
  with pytest.raises(ValueError, match="--labels is for class runs"):
    cli.sample(attribute_run, labels="1,2", steps=2)
  # The default: one row per well-known attribute, as in training's grid.
  _, npz, _ = cli.sample(attribute_run, num_per_class=1, steps=2)
  assert np.load(npz)["labels"].shape == (len(attributes.CELEBA_GRID), 40)


def test_an_attribute_run_is_evaluated_per_attribute(attribute_run):
  result = cli.evaluate(attribute_run, num_samples=40, steps=2, quiet=True)
  per = result["metrics"]["attribute_accuracy"]
  assert list(per) == list(standin.CELEBA_ATTRIBUTES)
  assert all(0.0 <= v <= 1.0 for v in per.values())
  # Agreement averages the 40 per-attribute accuracies.
  assert result["metrics"]["conditional_accuracy"] == pytest.approx(np.mean(list(per.values())))
  assert set(result["floor"]["attribute_accuracy"]) == set(per)
  assert result["data"] == {"dataset": "celeb_a", "stand_in": True}
  records = [json.loads(line) for line in open(os.path.join(attribute_run, "metrics.jsonl"))]
  assert records[0]["event"] == "data" and records[0]["stand_in"] is True
  with open(result["path"]) as f:
    assert json.load(f)["data"]["stand_in"] is True


def test_an_attribute_run_draws_pictures_of_named_attributes(attribute_run):
  paths = cli.pictures(attribute_run, attributes="Smiling;Eyeglasses", steps=2,
                       pictures=["forward", "reverse", "curves"])
  assert sorted(os.path.basename(p) for p in paths) == [
      "curves.png", "forward.png", "reverse.gif", "reverse.png"]
  assert all(os.path.getsize(p) > 0 for p in paths)
