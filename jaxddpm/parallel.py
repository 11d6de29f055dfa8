"""Data parallelism: one `Mesh` over all devices with a single `data` axis.

The batch is sharded over `data`; params, EMA and optimizer state are replicated;
XLA (GSPMD) inserts the gradient all-reduce. The configured batch size is the
global batch. Random draws need no per-device handling: with JAX's partitionable
threefry (the default) a sharded `jax.random.normal(key, shape)` yields exactly
the numbers of the unsharded call, so no two devices draw the same noise and a
sharded run equals a single-device one up to float summation order.

Multi-host (SLURM, TPU pods): call `jax.distributed.initialize()` first (README);
`jax.devices()` then lists every host's devices and the same code runs unchanged.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA = "data"


def make_mesh(devices=None) -> Mesh:
  """A 1-D mesh over `devices` (default: all, on every host)."""
  return Mesh(np.asarray(devices if devices is not None else jax.devices()), (DATA,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over the devices."""
  return NamedSharding(mesh, PartitionSpec(DATA))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def check_divisible(n: int, mesh: Mesh, what: str) -> None:
  """ValueError unless n splits evenly over the mesh's devices."""
  d = mesh.devices.size
  if n % d:
    raise ValueError(f"{what}={n} is not divisible by the {d} devices; use a multiple of {d}.")


def _placeable(tree):
  """Across hosts, this process's own device arrays as NumPy. Why: eager updates
  (jnp.float32(...), a step's host-side bookkeeping) leave arrays on one local
  device, and jax.device_put of such an array onto a mesh that spans hosts made an
  array Orbax could not save ("input arrays must have one shard each"). From NumPy
  every process supplies its part of the same value, as JAX expects."""
  if jax.process_count() == 1:
    return tree
  return jax.tree.map(lambda x: np.asarray(x) if isinstance(x, jax.Array)
                      and x.is_fully_addressable else x, tree)


def shard_batch(tree, mesh: Mesh):
  """Places host or device arrays with their leading axis split over the devices."""
  return jax.device_put(_placeable(tree), batch_sharding(mesh))


def replicate(tree, mesh: Mesh):
  """Places host or device arrays whole on every device of the mesh."""
  return jax.device_put(_placeable(tree), replicated(mesh))


def to_host(tree):
  """NumPy copies of (possibly sharded) arrays; across hosts, gathered from all."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    return multihost_utils.process_allgather(tree, tiled=True)
  return jax.device_get(tree)
