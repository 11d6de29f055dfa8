"""The seed's course-template U-Net (NVIDIA DLI), with its skip-connection fix.

Kept faithful so users of that course can compare like with like: same blocks,
same channel plan, same conditioning (multiplicative class embedding and additive
time embedding at two decoder points only). Presets `small` (the template's MNIST
model) and `wide` (the seed's CIFAR attempt).
"""

from __future__ import annotations

from typing import Sequence

import einops
import flax.linen as nn
import jax.numpy as jnp

from jaxddpm.models import layers

PRESETS = {
    "small": dict(down_chs=(32, 64, 128), t_embed_dim=8),
    "wide": dict(down_chs=(64, 128, 256), t_embed_dim=256),
}


def _gelu(x):
  return nn.gelu(x, approximate=False)  # torch.nn.GELU's default is the exact erf.


class GELUConvBlock(nn.Module):
  """Conv 3x3 -> GroupNorm(min(groups, out)) -> GELU."""
  out: int
  groups: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = nn.Conv(self.out, (3, 3), padding=1, dtype=self.dtype)(x)
    x = nn.GroupNorm(num_groups=min(self.groups, self.out), epsilon=1e-5, dtype=self.dtype)(x)
    return _gelu(x)


class RearrangePoolBlock(nn.Module):
  """2x2 space-to-depth (C -> 4C, H and W halved), then GELUConvBlock(4C -> C)."""
  channels: int
  groups: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = einops.rearrange(x, "b (h p1) (w p2) c -> b h w (c p1 p2)", p1=2, p2=2)
    return GELUConvBlock(self.channels, self.groups, self.dtype)(x)


class ResidualConvBlock(nn.Module):
  out: int
  groups: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    x1 = GELUConvBlock(self.out, self.groups, self.dtype)(x)
    x2 = GELUConvBlock(self.out, self.groups, self.dtype)(x1)
    return x1 + x2


class DownBlock(nn.Module):
  """Returns (pooled, skip); skip is taken before pooling (the seed's fix)."""
  out: int
  groups: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    skip = GELUConvBlock(self.out, self.groups, self.dtype)(x)
    skip = GELUConvBlock(self.out, self.groups, self.dtype)(skip)
    return RearrangePoolBlock(self.out, self.groups, self.dtype)(skip), skip


class UpBlock(nn.Module):
  """ConvTranspose 2x2 stride 2, concat skip, then four GELUConvBlocks."""
  out: int
  groups: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, skip):
    x = nn.ConvTranspose(self.out, (2, 2), strides=(2, 2), padding="VALID", dtype=self.dtype)(x)
    x = jnp.concatenate([x, skip.astype(x.dtype)], axis=-1)
    for _ in range(4):
      x = GELUConvBlock(self.out, self.groups, self.dtype)(x)
    return x


class EmbedBlock(nn.Module):
  """Dense(e) -> GELU -> Dense(e), shaped [B,1,1,e] to broadcast over pixels."""
  features: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, v):
    v = nn.Dense(self.features, dtype=self.dtype)(v)
    v = nn.Dense(self.features, dtype=self.dtype)(_gelu(v))
    return v[:, None, None, :]


class TemplateUNet(nn.Module):
  """The course template U-Net. `model.apply(params, x, t, labels, use_labels)`.

  Attributes:
    down_chs: (c0, c1, c2) channels at H, H/2, H/4.
    t_embed_dim: sinusoidal embedding size of t/T.
    num_classes: classes (one-hot) or attributes (multi-hot) K.
    num_timesteps: T, to embed t/T as the template does.
    dtype: compute dtype (params stay float32).
  """
  down_chs: Sequence[int] = (32, 64, 128)
  t_embed_dim: int = 8
  num_classes: int = 10
  num_timesteps: int = 1000
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x_BHWC, t_B, labels, use_labels_B, train: bool = False):
    del train  # The template has no dropout.
    layers.check_inputs(x_BHWC, t_B, labels)
    H, W, C = x_BHWC.shape[1:]
    if H % 4 or W % 4:
      raise ValueError(f"TemplateUNet pools twice: image size must be divisible by 4, got {H}x{W}.")
    c0, c1, c2 = self.down_chs
    x = x_BHWC.astype(self.dtype)
    down0 = ResidualConvBlock(c0, 8, self.dtype, name="down0")(x)
    down1, skip1 = DownBlock(c1, 32, self.dtype, name="down1")(down0)
    down2, skip2 = DownBlock(c2, 32, self.dtype, name="down2")(down1)
    mid = ResidualConvBlock(c2, 32, self.dtype, name="mid")(down2)

    t_emb = layers.sinusoidal_embedding(t_B / self.num_timesteps, self.t_embed_dim)
    cond = layers.condition_vector(labels, use_labels_B, self.num_classes)
    t1 = EmbedBlock(c2, self.dtype, name="temb1")(t_emb)
    t2 = EmbedBlock(c1, self.dtype, name="temb2")(t_emb)
    c1e = EmbedBlock(c2, self.dtype, name="cemb1")(cond)
    c2e = EmbedBlock(c1, self.dtype, name="cemb2")(cond)

    h = UpBlock(c1, 32, self.dtype, name="up1")(c1e * mid + t1, skip2)
    h = UpBlock(c0, 8, self.dtype, name="up2")(c2e * h + t2, skip1)
    h = nn.Conv(c0, (3, 3), padding=1, dtype=self.dtype, name="out_conv")(
        jnp.concatenate([h, down0], axis=-1))
    h = nn.relu(nn.GroupNorm(num_groups=min(8, c0), epsilon=1e-5, dtype=self.dtype,
                             name="out_norm")(h))
    out = nn.Conv(C, (3, 3), padding=1, dtype=self.dtype, name="out")(h)
    return out.astype(jnp.float32)
