"""Pieces both U-Nets share: the timestep embedding and the conditioning vector."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp


def sinusoidal_embedding(t_B: jnp.ndarray, dim: int) -> jnp.ndarray:
  """Transformer-style embedding of a float [B] time, [B, dim] (half sin, half cos).

  Frequencies exp(-log(10000) · i / (dim/2 - 1)), i = 0..dim/2-1, as in the
  course template's SinusoidalPositionEmbedBlock.
  """
  if dim < 4 or dim % 2:
    raise ValueError(f"the time embedding dimension must be even and >= 4, got {dim}.")
  half = dim // 2
  freqs = jnp.exp(-math.log(10000.0) * jnp.arange(half, dtype=jnp.float32) / (half - 1))
  args = t_B.astype(jnp.float32)[:, None] * freqs[None, :]
  return jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)


def condition_vector(labels: jnp.ndarray, use_labels: jnp.ndarray,
                     num_classes: int) -> jnp.ndarray:
  """float [B, num_classes]: one-hot class (int [B]) or multi-hot attributes
  (float [B, K]), zeroed where use_labels is False (the CFG "null" condition).

  A zero vector through the first Dense leaves only its bias: the unconditional
  embedding is learned, and multi-hot attributes need no special case.
  """
  if labels.ndim == 1:
    if not jnp.issubdtype(labels.dtype, jnp.integer):
      raise ValueError(f"class labels of shape [B] must be integers, got {labels.dtype}.")
    vec = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
  elif labels.ndim == 2:
    if labels.shape[1] != num_classes:
      raise ValueError(
          f"attribute labels must be [B, {num_classes}], got {labels.shape}.")
    vec = labels.astype(jnp.float32)
  else:
    raise ValueError(f"labels must be int [B] or float [B, K], got shape {labels.shape}.")
  if use_labels.shape != labels.shape[:1]:
    raise ValueError(f"use_labels must be bool [B]={labels.shape[:1]}, got {use_labels.shape}.")
  return vec * use_labels.astype(jnp.float32)[:, None]


def check_inputs(x: jnp.ndarray, t: jnp.ndarray, labels: jnp.ndarray) -> None:
  """Static shape checks shared by the U-Nets (shapes are known at trace time)."""
  if x.ndim != 4:
    raise ValueError(f"x must be [B,H,W,C], got shape {x.shape}.")
  B = x.shape[0]
  if t.shape != (B,):
    raise ValueError(f"t must be int [B]={(B,)}, got shape {t.shape}.")
  if labels.shape[:1] != (B,):
    raise ValueError(f"labels must have batch size {B}, got shape {labels.shape}.")
