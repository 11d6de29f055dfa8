"""Every config and variant builds a model and a train step without error."""

import importlib

import pytest

from jaxddpm import models, sampling


@pytest.mark.parametrize("name", ["mnist", "fmnist", "cifar10", "celeba"])
@pytest.mark.parametrize("variant", [None, "cpu", "smoke"])
def test_config_builds(name, variant):
  config = importlib.import_module(f"configs.{name}").get_config(variant)
  model = models.build_model(config)  # Raises on shapes the model cannot pool.
  assert model.num_classes == config.data.num_classes
  # Raises on any sampler setting that cannot run (steps > T, a bad spacing, ...).
  sampling.resolve_options(config, {})


def test_unknown_variant():
  from configs import mnist
  with pytest.raises(ValueError, match="unknown config variant"):
    mnist.get_config("tpu")


@pytest.mark.parametrize("field, value", [
    ("model.num_res_blocks", 0), ("model.dropout", 1.5), ("diffusion.min_snr_gamma", -1.0),
    ("optim.weight_decay", -1.0), ("optim.b2", 1.0), ("optim.ema_decay", 1.5),
    ("optim.plateau_patience", -1), ("optim.plateau_min_scale", 0.0),
    ("train.num_steps", -1), ("train.early_stopping_patience", -1),
    ("data.max_train_examples", -1)])
def test_a_bad_value_is_an_error_before_any_work(field, value):
  """Each of these once trained without a word (dropout 1.5, a negative min-SNR γ
  that made the loss negative, an EMA that diverged, zero steps)."""
  from configs import mnist
  from jaxddpm import data, loop, train
  config = mnist.get_config("smoke")
  section, name = field.split(".")
  config[section][name] = value
  with pytest.raises(ValueError, match=name):
    train.make_steps(config)
    train.make_plateau(config.optim)
    loop._check_train_config(config)
    data.load(config.data, 0)  # Checks before it reads anything.
