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


def _checks():
  """Where each section's values are checked, before any work."""
  from jaxddpm import data, loop, train
  return {"model": train.make_steps, "diffusion": train.make_steps, "optim": train.make_steps,
          "plateau": lambda c: train.make_plateau(c.optim), "train": loop._check_train_config,
          "data": lambda c: data.load(c.data, 0)}


@pytest.mark.parametrize("field, value, check", [
    ("model.num_res_blocks", 0, "model"), ("model.dropout", 1.5, "model"),
    ("diffusion.min_snr_gamma", -1.0, "diffusion"), ("optim.weight_decay", -1.0, "optim"),
    ("optim.b2", 1.0, "optim"), ("optim.ema_decay", 1.5, "optim"),
    ("optim.ema_std", 0.3, "optim"), ("optim.decay_steps", -1, "optim"),
    ("diffusion.noise_levels", "beta", "diffusion"), ("diffusion.lognormal_std", 0.0, "diffusion"),
    ("optim.plateau_patience", -1, "plateau"), ("optim.plateau_min_scale", 0.0, "plateau"),
    ("train.num_steps", -1, "train"), ("train.early_stopping_patience", -1, "train"),
    ("data.max_train_examples", -1, "data")])
def test_a_bad_value_is_an_error_before_any_work(field, value, check):
  """Each of these once trained without a word (dropout 1.5, a negative min-SNR γ
  that made the loss negative, an EMA that diverged, zero steps). Each is refused
  by the one check that owns it, which accepts the config's own value."""
  from configs import mnist
  config = mnist.get_config("smoke")
  config.data.dir = "/nonexistent"  # data.load must refuse the value before reading.
  section, name = field.split(".")
  run = _checks()[check]
  if check != "data":
    run(config)  # The untouched config passes the same check.
  config[section][name] = value
  with pytest.raises(ValueError, match=name):
    run(config)
