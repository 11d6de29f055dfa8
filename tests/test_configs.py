"""Every config and variant builds a model and a train step without error."""

import importlib

import pytest

from jaxddpm import models


@pytest.mark.parametrize("name", ["mnist", "fmnist", "cifar10", "celeba"])
@pytest.mark.parametrize("variant", [None, "cpu", "smoke"])
def test_config_builds(name, variant):
  config = importlib.import_module(f"configs.{name}").get_config(variant)
  model = models.build_model(config)  # Raises on shapes the model cannot pool.
  assert model.num_classes == config.data.num_classes
  assert config.sampling.steps <= config.diffusion.num_timesteps


def test_unknown_variant():
  from configs import mnist
  with pytest.raises(ValueError, match="unknown config variant"):
    mnist.get_config("tpu")
