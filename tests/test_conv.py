"""The convolution with canonical gradients (jaxddpm/models/conv.py)."""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jaxddpm.models import conv

NHWC = ("NHWC", "HWIO", "NHWC")


@pytest.mark.parametrize("H,W,k,stride,padding", [
    (9, 9, 3, 1, "SAME"),
    (8, 8, 3, 2, ((1, 1), (1, 1))),  # the U-Nets' downsampling conv
    (7, 7, 3, 2, ((1, 1), (1, 1))),  # odd size: the stride drops a trailing row
    (8, 9, 3, 2, "VALID"),           # negative high pad in the filter gradient
    (6, 6, 1, 1, "VALID"),           # 1x1 skip projection
    (10, 11, 4, 3, ((2, 0), (1, 3))),
])
def test_values_and_gradients_equal_lax(H, W, k, stride, padding):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(3, H, W, 5)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(k, k, 5, 4)), jnp.float32)
  args = dict(window_strides=(stride, stride), padding=padding, dimension_numbers=NHWC,
              precision=lax.Precision.HIGHEST)
  want, want_vjp = jax.vjp(lambda x, w: lax.conv_general_dilated(x, w, **args), x, w)
  got, got_vjp = jax.vjp(lambda x, w: conv.conv_general_dilated(x, w, **args), x, w)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  g = jnp.asarray(rng.normal(size=want.shape), jnp.float32)
  for a, b in zip(got_vjp(g), want_vjp(g)):
    assert a.shape == b.shape and a.dtype == b.dtype
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)


def test_bfloat16_gradients_keep_their_dtype():
  x = jnp.ones((2, 6, 6, 3), jnp.bfloat16)
  w = jnp.ones((3, 3, 3, 4), jnp.bfloat16)
  f = lambda x, w: conv.conv_general_dilated(x, w, (2, 2), "SAME",
                                             dimension_numbers=NHWC).astype(jnp.float32).sum()
  dx, dw = jax.grad(f, argnums=(0, 1))(x, w)
  want_dx, want_dw = jax.grad(lambda x, w: lax.conv_general_dilated(
      x, w, (2, 2), "SAME", dimension_numbers=NHWC).astype(jnp.float32).sum(),
      argnums=(0, 1))(x, w)
  assert dx.dtype == dw.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(dx, np.float32), np.asarray(want_dx, np.float32))
  np.testing.assert_allclose(np.asarray(dw, np.float32), np.asarray(want_dw, np.float32))


def test_other_forms_are_lax_unchanged():
  """Grouped, dilated or non-NHWC convolutions are passed to lax as they are."""
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=(2, 4, 7, 7)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(6, 2, 3, 3)), jnp.float32)
  args = dict(window_strides=(1, 1), padding="SAME", rhs_dilation=(2, 2),
              dimension_numbers=("NCHW", "OIHW", "NCHW"), feature_group_count=2)
  np.testing.assert_array_equal(conv.conv_general_dilated(x, w, **args),
                                lax.conv_general_dilated(x, w, **args))


def test_conv_module_is_flax_conv():
  """Same parameter tree and initial values (checkpoints are interchangeable)."""
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
  ours, theirs = conv.Conv(5, (3, 3), strides=(2, 2), padding=1), nn.Conv(
      5, (3, 3), strides=(2, 2), padding=1)
  p, q = ours.init(jax.random.key(1), x), theirs.init(jax.random.key(1), x)
  assert jax.tree.all(jax.tree.map(lambda a, b: bool((a == b).all()), p, q))
  np.testing.assert_allclose(ours.apply(p, x), theirs.apply(q, x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["unet", "template"])
def test_scanned_train_step_uses_only_canonical_convolutions(tiny_config, name):
  """The regression this module exists for: XLA:CPU canonicalises convolutions
  only at top level, so a non-canonical gradient inside the train-step scan ran
  on XLA's naive loop (~6x slower). Every convolution of a compiled four-step
  chunk must be NHWC x HWIO -> NHWC (`b01f_01io->b01f`)."""
  if jax.default_backend() != "cpu":
    pytest.skip("checks XLA:CPU's compiled program")
  from jaxddpm import loop, train
  tiny_config.model.name = name
  size = 16 if name == "template" else 8  # 8x8 would leave the template 2x2 at the
  tiny_config.data.image_size = size  # bottom, where XLA rewrites a conv covering it all.
  model, _, tx, step, _ = train.make_steps(tiny_config)
  state = train.create_train_state(train.init_params(model, tiny_config, jax.random.key(0)), tx)
  # 20 images, 4 steps of 4: test_loop.py's chunk test runs this same program (unet),
  # compiled once for both (the persistent cache).
  images = jnp.zeros((20, size, size, 1), jnp.uint8)
  labels = jnp.arange(20, dtype=jnp.int32) % 4
  chunk = loop.make_chunk_fn(step, batch_size=4, steps=4)
  hlo = chunk.lower(state, images, labels, jnp.arange(20), 0, jax.random.key(1),
                    2).compile().as_text()
  assert "while" in hlo  # The steps really are in a loop.
  labels_of_convs = re.findall(r"convolution\(.*dim_labels=([^,\s]+)", hlo)
  assert labels_of_convs, "no convolutions found in the compiled chunk"
  assert set(labels_of_convs) == {"b01f_01io->b01f"}, sorted(set(labels_of_convs))


def test_off_the_cpu_the_program_holds_lax_convolution_only(monkeypatch):
  """On a GPU/TPU the traced program is lax's convolution and nothing else: no
  custom VJP, and no `case` on the platform holding both versions."""
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
  w = jax.random.normal(jax.random.key(1), (3, 3, 3, 4))
  nhwc = dict(dimension_numbers=("NHWC", "HWIO", "NHWC"))
  loss = lambda x, w: conv.conv_general_dilated(x, w, (1, 1), "SAME", **nhwc).sum()
  on_cpu = str(jax.make_jaxpr(jax.grad(loss, (0, 1)))(x, w))
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  off_cpu = str(jax.make_jaxpr(jax.grad(loss, (0, 1)))(x, w))
  assert "custom_vjp" in on_cpu and "transpose" in on_cpu
  assert "custom_vjp" not in off_cpu and "cond" not in off_cpu
  lax_only = str(jax.make_jaxpr(jax.grad(
      lambda x, w: lax.conv_general_dilated(x, w, (1, 1), "SAME", **nhwc).sum(), (0, 1)))(x, w))
  assert off_cpu == lax_only


def test_train_step_lowers_without_platform_switch(tiny_config):
  """One version of each convolution in the lowered train step: no `case`."""
  from jaxddpm import train
  model, _, tx, step, _ = train.make_steps(tiny_config)
  state = train.create_train_state(train.init_params(model, tiny_config, jax.random.key(0)), tx)
  s = tiny_config.data.image_size
  batch = {"image": jnp.zeros((4, s, s, 1), jnp.uint8), "label": jnp.arange(4) % 4}
  text = step.lower(state, batch, jax.random.key(1)).as_text()
  assert "stablehlo.convolution" in text and "stablehlo.case" not in text
