"""U-Nets: shapes, the template's exact parameter counts, conditioning, bf16."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxddpm import models
from jaxddpm.models import TemplateUNet, UNet


def _inputs(B, H, W, C, key=0):
  x = jax.random.normal(jax.random.key(key), (B, H, W, C))
  t = jnp.arange(B, dtype=jnp.int32) * 7
  labels = jnp.arange(B, dtype=jnp.int32) % 10
  return x, t, labels, jnp.ones((B,), bool)


def _random_params(model, *inputs, seed=0):
  """Params of the right shapes drawn with NumPy (fan-in scaled kernels, noisy
  biases and norm scales). Flax's initialisers compile slowly on the CPU and zero
  the UNet's output layers, which would hide how the output depends on inputs."""
  shapes = jax.eval_shape(model.init, jax.random.key(0), *inputs)
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name = jax.tree_util.keystr(path)
    if "kernel" in name:
      fan_in = int(np.prod(leaf.shape[:-1]))
      return jnp.asarray(rng.normal(0, 1 / np.sqrt(fan_in), leaf.shape), jnp.float32)
    base = 1.0 if "scale" in name else 0.0
    return jnp.asarray(base + rng.normal(0, 0.05, leaf.shape), jnp.float32)

  return jax.tree_util.tree_map_with_path(draw, shapes)


TINY_UNET = dict(base_channels=16, channel_mults=(1, 2), num_res_blocks=1, num_heads=2,
                 dropout=0.0)


@pytest.mark.parametrize("preset,count", [("small", 1_703_553), ("wide", 6_891_777)])
def test_template_parameter_counts(preset, count):
  """The small preset against the course's PyTorch template, layer for layer:
  PyTorch counts 1,703,553 (bench/torch_baseline.py's copy of it). The wide
  preset's count is a regression pin (what this code gives)."""
  model = TemplateUNet(**models.TEMPLATE_PRESETS[preset])
  shapes = jax.eval_shape(model.init, jax.random.key(0), *_inputs(1, 28, 28, 1))
  assert sum(p.size for p in jax.tree.leaves(shapes)) == count


@pytest.mark.parametrize("H,C,attn", [(28, 1, (14,)), (32, 3, (16,)), (64, 3, (32,))])
@pytest.mark.parametrize("kind", ["template", "unet"])
def test_output_shapes(kind, H, C, attn):
  if kind == "template":
    model = TemplateUNet(down_chs=(8, 16, 32), t_embed_dim=8)
  else:
    model = UNet(attention_resolutions=attn, **TINY_UNET)
  inputs = _inputs(2, H, H, C)
  out = jax.jit(model.apply)(_random_params(model, *inputs), *inputs)
  assert out.shape == (2, H, H, C) and out.dtype == jnp.float32
  assert bool(jnp.all(jnp.isfinite(out)))


@pytest.mark.parametrize("kind", ["template", "unet"])
def test_output_depends_on_labels_iff_use_labels(kind):
  model = (TemplateUNet(down_chs=(8, 16, 32), t_embed_dim=8) if kind == "template"
           else UNet(attention_resolutions=(14,), **TINY_UNET))
  x, t, labels, _ = _inputs(4, 28, 28, 1)
  params = _random_params(model, x, t, labels, jnp.ones(4, bool))
  other = (labels + 3) % 10
  on, off = jnp.ones(4, bool), jnp.zeros(4, bool)
  apply = jax.jit(model.apply)
  a = apply(params, x, t, labels, on)
  b = apply(params, x, t, other, on)
  assert float(jnp.abs(a - b).mean()) > 1e-4
  np.testing.assert_array_equal(np.asarray(apply(params, x, t, labels, off)),
                                np.asarray(apply(params, x, t, other, off)))


def test_multi_hot_attributes():
  model = UNet(num_classes=40, attention_resolutions=(16,), **TINY_UNET)
  x, t, _, use = _inputs(2, 32, 32, 3)
  attrs = (jax.random.uniform(jax.random.key(2), (2, 40)) > 0.5).astype(jnp.float32)
  params = _random_params(model, x, t, attrs, use)
  assert jax.jit(model.apply)(params, x, t, attrs, use).shape == x.shape


def test_unet_zero_init_output():
  """A fresh UNet predicts exactly 0 (zero-initialised output layer), at 28x28 with
  attention as the configs train it. Init compiled as jaxddpm compiles it (LLVM
  -O1, xla.RUN_ONCE): the same params, a third faster to compile."""
  from jaxddpm import xla
  model = UNet(attention_resolutions=(14,), **TINY_UNET)
  inputs = _inputs(2, 28, 28, 1)
  params = xla.jit(model.init, cpu_options=xla.RUN_ONCE)(jax.random.key(0), *inputs)
  out = jax.jit(model.apply)(params, *inputs)
  np.testing.assert_array_equal(np.asarray(out), 0.0)


@pytest.mark.parametrize("kind", ["template", "unet"])
def test_bfloat16_tracks_float32(kind):
  make = ((lambda d: TemplateUNet(down_chs=(8, 16, 32), t_embed_dim=8, dtype=d))
          if kind == "template" else
          (lambda d: UNet(attention_resolutions=(14,), dtype=d, **TINY_UNET)))
  inputs = _inputs(4, 28, 28, 1)
  params = _random_params(make(jnp.float32), *inputs)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(
      jax.eval_shape(make(jnp.bfloat16).init, jax.random.key(0), *inputs)))
  ref = jax.jit(make(jnp.float32).apply)(params, *inputs)
  low = jax.jit(make(jnp.bfloat16).apply)(params, *inputs)
  assert low.dtype == jnp.float32
  rel = float(jnp.linalg.norm(low - ref) / jnp.linalg.norm(ref))
  assert rel < 0.05, rel  # bf16 has 8 mantissa bits: ~0.4% per op, a few % end to end.


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_conv_transpose_2x2_equals_flax(dtype):
  """The dense + depth-to-space ConvTranspose is flax's layer: same parameter tree,
  same initial values from the same key, same outputs and gradients."""
  import flax.linen as nn
  from jaxddpm.models.template_unet import ConvTranspose2x2
  x = jax.random.normal(jax.random.key(0), (3, 5, 4, 6))
  ours, flax_ct = ConvTranspose2x2(7, dtype), nn.ConvTranspose(
      7, (2, 2), strides=(2, 2), padding="VALID", dtype=dtype)
  p = ours.init(jax.random.key(1), x)
  want = flax_ct.init(jax.random.key(1), x)
  assert jax.tree.all(jax.tree.map(lambda a, b: bool((a == b).all()), p, want))
  p = jax.tree.map(lambda v: v + jax.random.normal(jax.random.key(2), v.shape), p)
  out, ref = ours.apply(p, x), flax_ct.apply(p, x)
  assert out.shape == ref.shape == (3, 10, 8, 7) and out.dtype == ref.dtype == dtype
  tol = 1e-5 if dtype == jnp.float32 else 2e-2
  np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(ref, np.float32),
                             rtol=tol, atol=tol)
  loss = lambda m: lambda p, x: jnp.sum(m.apply(p, x).astype(jnp.float32) ** 2)
  if dtype == jnp.float32:
    for g, h in zip(jax.tree.leaves(jax.grad(loss(ours), argnums=(0, 1))(p, x)),
                    jax.tree.leaves(jax.grad(loss(flax_ct), argnums=(0, 1))(p, x))):
      np.testing.assert_allclose(g, h, rtol=1e-4, atol=1e-4)


def test_template_gelu_is_the_exact_gelu():
  from jaxddpm.models.template_unet import _gelu
  x = jnp.linspace(-8.0, 8.0, 1001)
  np.testing.assert_allclose(_gelu(x), jax.nn.gelu(x, approximate=False), atol=2e-6)
  np.testing.assert_allclose(jax.vmap(jax.grad(_gelu))(x),
                             jax.vmap(jax.grad(lambda v: jax.nn.gelu(v, approximate=False)))(x),
                             atol=2e-6)


@pytest.mark.parametrize("labels", ["classes", "attributes"])
def test_template_guided_call_equals_two_passes(labels):
  """guidance_scale=s shares the label-free encoder between the CFG halves and must
  equal uncond + s * (cond - uncond) from two ordinary calls."""
  model = TemplateUNet(down_chs=(8, 16, 32), t_embed_dim=8, num_classes=5)
  x, t, _, use = _inputs(3, 12, 12, 2)
  y = (jnp.array([0, 4, 2]) if labels == "classes"
       else jax.random.bernoulli(jax.random.key(5), 0.5, (3, 5)).astype(jnp.float32))
  params = _random_params(model, x, t, y, use)
  apply = jax.jit(model.apply, static_argnames="train")
  guided_apply = jax.jit(lambda p, x, t, y, s: model.apply(p, x, t, y, guidance_scale=s))
  cond, uncond = apply(params, x, t, y, use), apply(params, x, t, y, ~use)
  for s in (0.0, 1.0, 2.5, 7.0):  # A traced scale: one compile for all four.
    guided = guided_apply(params, x, t, y, s)
    np.testing.assert_allclose(guided, uncond + s * (cond - uncond), rtol=1e-4, atol=1e-4)
  with pytest.raises(ValueError, match="not both or neither"):
    model.apply(params, x, t, y, use, guidance_scale=2.0)
  with pytest.raises(ValueError, match="not both or neither"):
    model.apply(params, x, t, y)


def test_bad_inputs_and_configs(tiny_config):
  model = UNet(attention_resolutions=(14,), **TINY_UNET)
  x, t, labels, use = _inputs(2, 28, 28, 1)
  with pytest.raises(ValueError, match="t must be"):
    jax.jit(model.init)(jax.random.key(0), x, t[:1], labels, use)
  with pytest.raises(ValueError, match="divisible"):
    UNet(channel_mults=(1, 2, 2, 2), attention_resolutions=()).init(
        jax.random.key(0), x, t, labels, use)
  with pytest.raises(ValueError, match="attention_resolutions"):
    UNet(attention_resolutions=(8,), **TINY_UNET).init(jax.random.key(0), x, t, labels, use)
  c = tiny_config
  c.model.name = "transformer"
  with pytest.raises(ValueError, match="unknown model.name"):
    models.build_model(c)
  c.model.name, c.model.dtype = "unet", "float16"
  with pytest.raises(ValueError, match="dtype"):
    models.build_model(c)
  c.model.dtype, c.model.name, c.data.image_size = "float32", "template", 30
  with pytest.raises(ValueError, match="divisible by 4"):
    models.build_model(c)
