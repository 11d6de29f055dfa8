"""The default U-Net: DDPM/ADM-style residual blocks with scale-shift conditioning.

Differences from the course template that matter for sampling quality: the
time + class embedding reaches every residual block (not just two decoder points),
self-attention at the low resolutions, dropout, and zero-initialised last layers
so each block starts as the identity and the network starts by predicting 0.
"""

from __future__ import annotations

import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxddpm.models import conv, layers

zeros = nn.initializers.zeros


def _norm(dtype, name=None):
  # 32 groups as in DDPM; fewer where 32 does not divide the channels (small widths,
  # concatenated skips such as 16 + 32 = 48).
  return lambda c: nn.GroupNorm(num_groups=math.gcd(32, c), epsilon=1e-5, dtype=dtype,
                                name=name)


class ResBlock(nn.Module):
  """GN -> SiLU -> conv -> GN·(1+scale)+shift -> SiLU -> dropout -> conv(zero) + skip."""
  out: int
  dropout: float
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, emb_BD, train: bool):
    h = nn.silu(_norm(self.dtype)(x.shape[-1])(x))
    h = conv.Conv(self.out, (3, 3), padding=1, dtype=self.dtype)(h)
    scale_shift = nn.Dense(2 * self.out, dtype=self.dtype)(nn.silu(emb_BD))
    scale, shift = jnp.split(scale_shift[:, None, None, :], 2, axis=-1)
    h = _norm(self.dtype)(self.out)(h) * (1 + scale) + shift
    h = nn.Dropout(self.dropout, deterministic=not train)(nn.silu(h))
    h = conv.Conv(self.out, (3, 3), padding=1, dtype=self.dtype, kernel_init=zeros)(h)
    if x.shape[-1] != self.out:
      x = conv.Conv(self.out, (1, 1), dtype=self.dtype, name="skip")(x)
    return x + h


class AttentionBlock(nn.Module):
  """Multi-head self-attention over pixels, residual, zero-initialised output."""
  num_heads: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    B, H, W, C = x.shape
    if C % self.num_heads:
      raise ValueError(f"attention: {C} channels do not split into {self.num_heads} heads.")
    h = _norm(self.dtype)(C)(x).reshape(B, H * W, C)
    qkv = nn.Dense(3 * C, dtype=self.dtype, name="qkv")(h)
    q, k, v = jnp.split(qkv.reshape(B, H * W, 3 * self.num_heads, C // self.num_heads), 3, axis=2)
    h = nn.dot_product_attention(q, k, v, dtype=self.dtype)
    h = nn.Dense(C, dtype=self.dtype, kernel_init=zeros, name="proj")(h.reshape(B, H * W, C))
    return x + h.reshape(B, H, W, C)


class UNet(nn.Module):
  """Default U-Net. `model.apply(params, x, t, labels, use_labels, train=False)`.

  Attributes:
    base_channels: channels at full resolution (64 is a good GPU default).
    channel_mults: channels per level = base · mult; each level after the first
      halves the resolution, so len-1 halvings must divide the image size.
    num_res_blocks: residual blocks per level in the encoder (decoder has one more).
    attention_resolutions: image sizes (in pixels) at which to add self-attention;
      each must be one of the levels' resolutions.
    num_heads: attention heads.
    dropout: dropout rate in residual blocks (active only with train=True).
    num_classes: classes (one-hot) or attributes (multi-hot) K.
    num_timesteps: T; t is embedded as t·1000/T so embeddings do not depend on T.
    dtype: compute dtype (params stay float32).
  """
  base_channels: int = 64
  channel_mults: Sequence[int] = (1, 2, 2)
  num_res_blocks: int = 2
  attention_resolutions: Sequence[int] = (7,)
  num_heads: int = 4
  dropout: float = 0.1
  num_classes: int = 10
  num_timesteps: int = 1000
  dtype: jnp.dtype = jnp.float32

  def check_image_size(self, height: int, width: int) -> None:
    """ValueError unless the levels pool evenly and attention levels exist."""
    factor = 2 ** (len(self.channel_mults) - 1)
    if height % factor or width % factor:
      raise ValueError(
          f"UNet with {len(self.channel_mults)} levels halves the image "
          f"{len(self.channel_mults) - 1} times: {height}x{width} is not divisible by "
          f"{factor}. Use fewer channel_mults or another image size.")
    sizes = [height // 2**i for i in range(len(self.channel_mults))]
    missing = [r for r in self.attention_resolutions if r not in sizes]
    if missing:
      raise ValueError(
          f"attention_resolutions {tuple(missing)} are not among this UNet's "
          f"resolutions {tuple(sizes)} for {height}x{width} images.")

  @nn.compact
  def __call__(self, x_BHWC, t_B, labels, use_labels_B, train: bool = False):
    layers.check_inputs(x_BHWC, t_B, labels)
    B, H, W, C = x_BHWC.shape
    self.check_image_size(H, W)
    emb_dim = 4 * self.base_channels
    t_emb = layers.sinusoidal_embedding(t_B * (1000.0 / self.num_timesteps), self.base_channels)
    t_emb = nn.Dense(emb_dim, dtype=self.dtype, name="time_in")(t_emb)
    t_emb = nn.Dense(emb_dim, dtype=self.dtype, name="time_out")(nn.silu(t_emb))
    cond = layers.condition_vector(labels, use_labels_B, self.num_classes)
    emb_BD = t_emb + nn.Dense(emb_dim, dtype=self.dtype, name="class_emb")(cond)

    h = conv.Conv(self.base_channels, (3, 3), padding=1, dtype=self.dtype, name="conv_in")(
        x_BHWC.astype(self.dtype))
    skips = [h]
    for level, mult in enumerate(self.channel_mults):
      for i in range(self.num_res_blocks):
        h = ResBlock(self.base_channels * mult, self.dropout, self.dtype,
                     name=f"down_{level}_block_{i}")(h, emb_BD, train)
        if h.shape[1] in self.attention_resolutions:
          h = AttentionBlock(self.num_heads, self.dtype, name=f"down_{level}_attn_{i}")(h)
        skips.append(h)
      if level < len(self.channel_mults) - 1:
        h = conv.Conv(h.shape[-1], (3, 3), strides=(2, 2), padding=1, dtype=self.dtype,
                    name=f"down_{level}_pool")(h)
        skips.append(h)

    h = ResBlock(h.shape[-1], self.dropout, self.dtype, name="mid_block_0")(h, emb_BD, train)
    h = AttentionBlock(self.num_heads, self.dtype, name="mid_attn")(h)
    h = ResBlock(h.shape[-1], self.dropout, self.dtype, name="mid_block_1")(h, emb_BD, train)

    for level, mult in reversed(list(enumerate(self.channel_mults))):
      for i in range(self.num_res_blocks + 1):
        h = jnp.concatenate([h, skips.pop()], axis=-1)
        h = ResBlock(self.base_channels * mult, self.dropout, self.dtype,
                     name=f"up_{level}_block_{i}")(h, emb_BD, train)
        if h.shape[1] in self.attention_resolutions:
          h = AttentionBlock(self.num_heads, self.dtype, name=f"up_{level}_attn_{i}")(h)
      if level > 0:
        b, hh, ww, c = h.shape
        h = jax.image.resize(h, (b, 2 * hh, 2 * ww, c), method="nearest")
        h = conv.Conv(c, (3, 3), padding=1, dtype=self.dtype, name=f"up_{level}_upsample")(h)

    h = nn.silu(_norm(self.dtype, "norm_out")(h.shape[-1])(h))
    out = conv.Conv(C, (3, 3), padding=1, dtype=self.dtype, kernel_init=zeros, name="conv_out")(h)
    return out.astype(jnp.float32)
