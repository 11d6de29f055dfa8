"""Flax U-Nets and `build_model(config)`, the one place a config becomes a module."""

from __future__ import annotations

import jax.numpy as jnp

from jaxddpm.models.template_unet import PRESETS as TEMPLATE_PRESETS
from jaxddpm.models.template_unet import TemplateUNet
from jaxddpm.models.unet import UNet

MODELS = ("unet", "template")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}

__all__ = ["TemplateUNet", "UNet", "build_model", "MODELS", "DTYPES"]


def build_model(config):
  """Module for `config.model`, sized for `config.data` (classes, image size).

  Raises ValueError for an unknown model, preset or dtype, or an image size the
  model cannot pool, before anything is traced.
  """
  m, data = config.model, config.data
  if m.dtype not in DTYPES:
    raise ValueError(f"unknown model.dtype {m.dtype!r}; choose one of {tuple(DTYPES)}.")
  common = dict(num_classes=data.num_classes, num_timesteps=config.diffusion.num_timesteps,
                dtype=DTYPES[m.dtype])
  if m.name == "template":
    if m.template_preset not in TEMPLATE_PRESETS:
      raise ValueError(f"unknown model.template_preset {m.template_preset!r}; "
                       f"choose one of {tuple(TEMPLATE_PRESETS)}.")
    if data.image_size % 4:
      raise ValueError(f"TemplateUNet pools twice: data.image_size={data.image_size} "
                       "must be divisible by 4.")
    return TemplateUNet(**TEMPLATE_PRESETS[m.template_preset], **common)
  if m.name == "unet":
    if m.num_res_blocks < 1 or m.base_channels < 1 or not 0.0 <= m.dropout < 1.0:
      raise ValueError(f"UNet needs model.num_res_blocks >= 1, model.base_channels >= 1 and "
                       f"model.dropout in [0, 1); got {m.num_res_blocks}, {m.base_channels} "
                       f"and {m.dropout}.")
    model = UNet(base_channels=m.base_channels, channel_mults=tuple(m.channel_mults),
                 num_res_blocks=m.num_res_blocks,
                 attention_resolutions=tuple(m.attention_resolutions),
                 num_heads=m.num_heads, dropout=m.dropout, **common)
    model.check_image_size(data.image_size, data.image_size)
    return model
  raise ValueError(f"unknown model.name {m.name!r}; choose one of {MODELS}.")
