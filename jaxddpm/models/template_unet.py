"""The seed's course-template U-Net (NVIDIA DLI), with its skip-connection fix.

Kept faithful so users of that course can compare like with like: same blocks,
same channel plan, same conditioning (multiplicative class embedding and additive
time embedding at two decoder points only). Presets `small` (the template's MNIST
model) and `wide` (the seed's CIFAR attempt).
"""

from __future__ import annotations

from typing import Sequence

import math

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxddpm.models import conv, layers

PRESETS = {
    "small": dict(down_chs=(32, 64, 128), t_embed_dim=8),
    "wide": dict(down_chs=(64, 128, 256), t_embed_dim=256),
}


def _gelu(x):
  # The exact GELU, torch.nn.GELU's default, in torch's form: erf is ~2.5x cheaper
  # than the erfc that jax.nn.gelu uses on XLA:CPU (equal to 1e-6, tested).
  return 0.5 * x * (1.0 + jax.lax.erf(x * (1.0 / math.sqrt(2.0))))


class GELUConvBlock(nn.Module):
  """Conv 3x3 -> GroupNorm(min(groups, out)) -> GELU."""
  out: int
  groups: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = conv.Conv(self.out, (3, 3), padding=1, dtype=self.dtype)(x)
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


class ConvTranspose2x2(nn.Module):
  """`nn.ConvTranspose(out, (2, 2), strides=(2, 2), padding="VALID")`, same params.

  Kernel 2x2 with stride 2 never overlaps, so each input pixel writes its own 2x2
  output patch: one dense layer to 4 * out channels and a depth-to-space. Why not
  nn.ConvTranspose: XLA:CPU computes that layer's kernel gradient with a naive
  loop (~150 ms of a ~1.3 s train step at batch 128, measured); as a dense layer
  it is one matmul. Identical numbers (tested), identical parameter tree
  (`kernel` [2, 2, in, out], `bias` [out]), so checkpoints carry over.
  """
  out: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    kernel = self.param("kernel", nn.initializers.lecun_normal(),
                        (2, 2, x.shape[-1], self.out))
    bias = self.param("bias", nn.initializers.zeros, (self.out,))
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    # nn.ConvTranspose (transpose_kernel=False) applies the kernel flipped in space.
    y = jnp.einsum("bhwc,ijco->bhwijo", x, kernel[::-1, ::-1])
    return einops.rearrange(y, "b h w i j o -> b (h i) (w j) o") + bias


class UpBlock(nn.Module):
  """ConvTranspose 2x2 stride 2, concat skip, then four GELUConvBlocks."""
  out: int
  groups: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, skip):
    x = ConvTranspose2x2(self.out, self.dtype, name="ConvTranspose_0")(x)
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

  The label enters only the decoder (two multiplicative embeddings), so the
  encoder does not depend on it: `model.apply(params, x, t, labels,
  guidance_scale=s)` returns the classifier-free-guided prediction
  uncond + s * (cond - uncond) with the encoder run once for both halves, ~1/3
  fewer FLOPs than the two full passes it equals (tested). The samplers use it.

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
  shares_guidance_encoder = True  # guidance.make_denoisers looks for this.

  @nn.compact
  def __call__(self, x_BHWC, t_B, labels, use_labels_B=None, train: bool = False,
               guidance_scale=None):
    del train  # The template has no dropout.
    layers.check_inputs(x_BHWC, t_B, labels)
    if (use_labels_B is None) == (guidance_scale is None):
      raise ValueError("TemplateUNet: pass use_labels [B] for one prediction, or "
                       "guidance_scale for the guided one, not both or neither.")
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

    B = x.shape[0]
    if guidance_scale is not None:  # Conditional and unconditional halves, one decoder pass.
      both = lambda a: jnp.concatenate([a, a], axis=0)
      down0, skip1, skip2, mid, t_emb, labels = map(
          both, (down0, skip1, skip2, mid, t_emb, labels))
      use_labels_B = jnp.arange(2 * B) < B
    cond = layers.condition_vector(labels, use_labels_B, self.num_classes)
    t1 = EmbedBlock(c2, self.dtype, name="temb1")(t_emb)
    t2 = EmbedBlock(c1, self.dtype, name="temb2")(t_emb)
    c1e = EmbedBlock(c2, self.dtype, name="cemb1")(cond)
    c2e = EmbedBlock(c1, self.dtype, name="cemb2")(cond)

    h = UpBlock(c1, 32, self.dtype, name="up1")(c1e * mid + t1, skip2)
    h = UpBlock(c0, 8, self.dtype, name="up2")(c2e * h + t2, skip1)
    h = conv.Conv(c0, (3, 3), padding=1, dtype=self.dtype, name="out_conv")(
        jnp.concatenate([h, down0], axis=-1))
    h = nn.relu(nn.GroupNorm(num_groups=min(8, c0), epsilon=1e-5, dtype=self.dtype,
                             name="out_norm")(h))
    out = conv.Conv(C, (3, 3), padding=1, dtype=self.dtype, name="out")(h).astype(jnp.float32)
    if guidance_scale is None:
      return out
    cond_out, uncond_out = out[:B], out[B:]
    return uncond_out + guidance_scale * (cond_out - uncond_out)
