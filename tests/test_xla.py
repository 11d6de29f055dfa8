"""jaxddpm.xla: the CPU compiler options, and that a user's XLA_FLAGS win."""

import jax
import jax.numpy as jnp
import numpy as np

from jaxddpm import xla

CONV = lambda x, w: jax.lax.conv_general_dilated(  # noqa: E731
    x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))


def test_options_on_cpu_and_opt_outs(monkeypatch):
  monkeypatch.delenv("JAXDDPM_XLA_DEFAULTS", raising=False)
  monkeypatch.setenv("XLA_FLAGS", "")
  assert jax.default_backend() == "cpu"
  assert xla.compiler_options() == xla.CPU_OPTIONS
  monkeypatch.setenv("JAXDDPM_XLA_DEFAULTS", "1")
  assert xla.compiler_options() is None
  monkeypatch.delenv("JAXDDPM_XLA_DEFAULTS")
  monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_experimental_ynn_fusion_type=individual_dot")
  assert xla.compiler_options() is None  # The user's own choice is left alone.
  # An XLA that does not know an option (older jaxlib) gets none rather than an error.
  assert not xla._accepted((("xla_cpu_no_such_option", True),))
  assert xla._accepted(tuple(xla.CPU_OPTIONS.items()))


def test_jit_compiles_convolutions_without_ynnpack(monkeypatch):
  """The option reaches the compiler (the convolution is not a YNNPACK fusion)
  and does not change the numbers beyond rounding."""
  monkeypatch.delenv("JAXDDPM_XLA_DEFAULTS", raising=False)
  monkeypatch.setenv("XLA_FLAGS", "")
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 4))
  w = jax.random.normal(jax.random.key(1), (3, 3, 4, 5))
  ours = xla.jit(CONV)
  assert "__ynn_fusion" not in ours.lower(x, w).compile().as_text()
  np.testing.assert_allclose(ours(x, w), jax.jit(CONV)(x, w), rtol=1e-5, atol=1e-5)
  # Options may only sit on the outermost jit; a plain inner function is fine.
  outer = xla.jit(lambda x, w: jnp.sum(CONV(x, w)))
  np.testing.assert_allclose(outer(x, w), jnp.sum(jax.jit(CONV)(x, w)), rtol=1e-5)


def test_jitted_function_nests_inside_a_user_jit():
  """JAX refuses compiler options on a nested jit; ours must still compose."""
  w = jax.random.normal(jax.random.key(1), (3, 3, 4, 5))
  step = xla.jit(lambda x: CONV(x, w) * 2.0)
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 4))
  np.testing.assert_allclose(jax.jit(lambda x: step(x) + 1.0)(x), step(x) + 1.0, rtol=1e-5)
  np.testing.assert_allclose(jax.grad(lambda x: jnp.sum(step(x)))(x).shape, x.shape)
  assert step.lower(x).compile() is not None


def test_init_compiled_for_speed_gives_bitwise_the_same_params(tiny_config, monkeypatch):
  """Parameter init compiles at LLVM -O1 (xla.RUN_ONCE): faster to compile, and
  the params must be exactly those of XLA's default -O3 (a seed means one init)."""
  from jaxddpm import train
  monkeypatch.delenv("JAXDDPM_XLA_DEFAULTS", raising=False)
  monkeypatch.setenv("XLA_FLAGS", "")
  assert xla.compiler_options(xla.RUN_ONCE) == {**xla.CPU_OPTIONS, **xla.RUN_ONCE}
  model = train.make_steps(tiny_config)[0]
  key = jax.random.key(4)
  ours = train.init_params(model, tiny_config, key)
  s = tiny_config.data.image_size
  # -O3 named: the test run compiles at -O1 by default (conftest.py).
  plain = jax.jit(model.init, compiler_options={"xla_backend_optimization_level": 3})(
      key, jnp.zeros((1, s, s, 1)), jnp.zeros((1,), jnp.int32), jnp.zeros((1,), jnp.int32),
      jnp.ones((1,), bool))["params"]
  assert jax.tree.structure(ours) == jax.tree.structure(plain)
  for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(plain)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
