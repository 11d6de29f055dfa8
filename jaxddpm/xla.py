"""`jit` with jaxddpm's XLA:CPU compiler options.

Why: jaxlib 0.10 hands convolutions on the CPU to YNNPACK by default. On this
project's 2-core x86 machines YNNPACK's convolutions, above all the filter
gradients of 3x3 convs at 28x28, are 1.5-2.6x slower than XLA's Eigen
convolutions (docs/results.md, "Speed: against PyTorch"). We therefore compile our programs
with YNNPACK limited to plain dots. The options go to each compile, not to the
process, so a user's own programs are untouched; a user who sets
`xla_cpu_experimental_ynn_fusion_type` in XLA_FLAGS keeps their choice, and
JAXDDPM_XLA_DEFAULTS=1 turns ours off. Other backends get no options, nor an XLA
that does not know them (older jaxlib).
"""

from __future__ import annotations

import functools
import os
from typing import Any, Callable

import jax
import numpy as np

# Repeated-enum debug options take the enum's full name per compile.
CPU_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}


# For programs that run once and whose compile time is all that counts (parameter
# initialisation: ~100 inlined threefry draws): LLVM at -O1 instead of XLA's -O3
# compiles the `:cpu` UNet's init in 3.1 s instead of 5.1 (2-core CPU), with
# bitwise-identical results (tests/test_xla.py); -O0 changes the last bits.
RUN_ONCE = {"xla_backend_optimization_level": 1}


def compiler_options(extra: dict[str, Any] | None = None) -> dict[str, Any] | None:
  """The options jaxddpm compiles with on the current default backend, or None;
  `extra` adds CPU options for one kind of program (e.g. RUN_ONCE)."""
  if jax.default_backend() != "cpu" or os.environ.get("JAXDDPM_XLA_DEFAULTS") == "1":
    return None
  user = os.environ.get("XLA_FLAGS", "")
  options = {k: v for k, v in {**CPU_OPTIONS, **(extra or {})}.items() if k not in user}
  return options if options and _accepted(tuple(sorted(options.items()))) else None


@functools.lru_cache(maxsize=None)
def _accepted(options: tuple) -> bool:
  """Whether this jaxlib's XLA knows the options (pyproject allows jax >= 0.4.35,
  whose XLA has no YNNPACK and would refuse them): one tiny compile, once."""
  try:
    jax.jit(lambda x: x + 1, compiler_options=dict(options)).lower(
        np.float32(0)).compile()
    return True
  except Exception:  # noqa: BLE001 -- XLA reports an unknown option in several ways.
    return False


class _Jitted:
  """A jitted function that carries the options when it is the outermost jit and
  inlines like any jitted function inside another one (where JAX refuses
  compiler options): user code may wrap jaxddpm's steps in its own jit."""

  def __init__(self, fun: Callable, cpu_options: dict[str, Any] | None = None, **kwargs):
    self._top = jax.jit(fun, compiler_options=compiler_options(cpu_options), **kwargs)
    self._nested = jax.jit(fun, **kwargs)
    functools.update_wrapper(self, fun)  # Sets __wrapped__ = fun, __name__, __doc__.

  def __call__(self, *args, **kwargs):
    traced = any(isinstance(v, jax.core.Tracer) for v in jax.tree.leaves((args, kwargs)))
    return (self._nested if traced else self._top)(*args, **kwargs)

  def lower(self, *args, **kwargs):
    return self._top.lower(*args, **kwargs)


def jit(fun: Callable, cpu_options: dict[str, Any] | None = None, **kwargs) -> Callable:
  """`jax.jit(fun, **kwargs)` compiled with `compiler_options(cpu_options)` when
  called at top level; `.lower(...)` as jax.jit's. Usable as a decorator."""
  return _Jitted(fun, cpu_options, **kwargs)
