"""A 2-D convolution whose gradients are canonical convolutions, and `Conv` using it.

Why: XLA:CPU runs a convolution on its fast (Eigen) path only in the canonical
form NHWC x HWIO -> NHWC, and its pass that rewrites other forms into that one
(ConvCanonicalization) visits the top-level computation only. The input and
filter gradients that JAX derives are not canonical (the filter gradient treats
the batch as the contracted feature), so inside a `lax.scan` of train steps they
fell back to XLA's naive loop: a train step in a scan ran ~6x slower than the
same step dispatched alone. Here both gradients are written as canonical
convolutions with explicit transposes, which is what that pass would have done
at top level, so they take the fast path anywhere. Only processes whose default
backend is the CPU use it: on a GPU/TPU the program holds lax's convolution alone,
as before (their compilers pick their own layouts). The choice is made when the
function is traced, not with `lax.platform_dependent`: that lowers both versions
behind a `case` on the platform (200 of them in the default UNet's train step),
left to XLA to fold away; with it, a GPU run (two processes, 8-step chunks,
autotuning off) did not reach its 104th step in 300 s. The cause was not
isolated, so GPU programs are kept exactly as they were when measured. A CPU process that places work on a GPU explicitly
gets the CPU version there: correct, only not tuned for it.

Limit: it is a `jax.custom_vjp`, so forward-mode AD (`jax.jvp`, `jacfwd`,
`linearize`) through it fails on the CPU; jaxddpm uses reverse mode only. For
forward mode, build the model with flax's `nn.Conv`.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

_NHWC = ("NHWC", "HWIO", "NHWC")


def _grad_x_padding(size: int, k: int, stride: int, pad: tuple[int, int], out: int):
  # The input gradient is the output gradient, dilated by the stride, convolved
  # with the flipped kernel; these pads give back exactly `size` positions.
  dilated = (out - 1) * stride + 1
  before = k - 1 - pad[0]
  return before, size + k - 1 - dilated - before


def _grad_w_padding(size: int, k: int, stride: int, pad: tuple[int, int], out: int):
  # The filter gradient is the input (padded as in the forward pass) convolved
  # with the output gradient dilated by the stride: k positions per axis. The
  # high pad can be below the forward one when the stride drops trailing rows.
  dilated = (out - 1) * stride + 1
  return pad[0], k - 1 + dilated - size - pad[0]


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv(x, w, strides, pads, precision):
  return lax.conv_general_dilated(x, w, strides, pads, dimension_numbers=_NHWC,
                                  precision=precision)


def _conv_fwd(x, w, strides, pads, precision):
  return _conv(x, w, strides, pads, precision), (x, w)


def _conv_bwd(strides, pads, precision, res, g):
  x, w = res
  (kh, kw), (oh, ow) = w.shape[:2], g.shape[1:3]
  # dx: NHWC x HWIO with the kernel flipped in space and in/out swapped.
  w_t = jnp.flip(w, (0, 1)).transpose(0, 1, 3, 2)
  dx_pads = [_grad_x_padding(x.shape[1], kh, strides[0], pads[0], oh),
             _grad_x_padding(x.shape[2], kw, strides[1], pads[1], ow)]
  dx = lax.conv_general_dilated(g, w_t, (1, 1), dx_pads, lhs_dilation=strides,
                                dimension_numbers=_NHWC, precision=precision)
  # dw: channels as the batch and the batch as the contracted feature, i.e.
  # x as [C_in, H, W, N] against g as [OH, OW, N, C_out] -> [C_in, kh, kw, C_out].
  dw_pads = [_grad_w_padding(x.shape[1], kh, strides[0], pads[0], oh),
             _grad_w_padding(x.shape[2], kw, strides[1], pads[1], ow)]
  dw = lax.conv_general_dilated(x.transpose(3, 1, 2, 0), g.transpose(1, 2, 0, 3), (1, 1),
                                dw_pads, rhs_dilation=strides, dimension_numbers=_NHWC,
                                precision=precision)
  return dx.astype(x.dtype), dw.transpose(1, 2, 0, 3).astype(w.dtype)


_conv.defvjp(_conv_fwd, _conv_bwd)


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                         batch_group_count=1, precision=None, preferred_element_type=None):
  """`lax.conv_general_dilated` with canonical gradients for the plain 2-D NHWC/HWIO
  convolution (any stride and padding); every other form goes to lax unchanged."""
  plain = (lhs.ndim == 4 and rhs.ndim == 4 and feature_group_count == 1
           and batch_group_count == 1 and preferred_element_type is None
           and all(d == 1 for d in (lhs_dilation or (1, 1)))
           and all(d == 1 for d in (rhs_dilation or (1, 1)))
           and lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
           == lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC))
  if not plain or jax.default_backend() != "cpu":
    return lax.conv_general_dilated(
        lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
        feature_group_count, batch_group_count, precision, preferred_element_type)
  if isinstance(padding, str):
    padding = lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], window_strides, padding)
  pads = tuple((int(lo), int(hi)) for lo, hi in padding)
  strides = tuple(int(s) for s in window_strides)
  return _conv(lhs, rhs, strides, pads, precision)


# flax's Conv (same parameters, names and initialisers) computing through the above.
Conv = functools.partial(nn.Conv, conv_general_dilated=conv_general_dilated)
