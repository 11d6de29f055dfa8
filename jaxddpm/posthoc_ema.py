"""Post-hoc EMA (Karras et al. 2024): an EMA of another length, after training,
from the EMA snapshots a run's checkpoints kept.

Every EMA of a run is a weighted sum of its parameter iterates, E_S = Σ_k w_S[k] θ_k
(θ_0 the init, θ_k the params after update k), and the weights follow from the
decay rule alone. So the weights of a wanted EMA are matched by a least-squares
combination of the kept snapshots' weights, and the same combination of the
snapshots' parameters is that EMA, up to the fit's residual. The denser the
snapshots (`train.checkpoint_every_steps`, `train.keep_checkpoints`), the smaller
the residual; `synthesize` reports it.
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import orbax.checkpoint as ocp

from jaxddpm import checkpoint, files, train


def decays(num_steps: int, decay: float, std: float) -> np.ndarray:
  """The decay d_n that `train.ema_update` applies after update n = 0..num_steps-1."""
  n = np.arange(num_steps, dtype=np.float64)
  if std > 0:
    return (n / (n + 1.0)) ** (train.power_ema_gamma(std) + 1.0)
  return np.minimum(decay, (1.0 + n) / (10.0 + n))


def ema_weights(num_steps: int, decay: float, std: float, length: int | None = None):
  """w with E = Σ_k w[k] θ_k after `num_steps` updates: w[0] on the init, w[k] on the
  params after update k; zero-padded to `length`. Each update E ← d·E + (1-d)·θ
  scales every earlier weight by d and gives the new iterate 1-d."""
  d = decays(num_steps, decay, std)
  # later[n] = Π_{j>n} d_j: how much of update n's share survives to the end.
  later = np.append(np.cumprod(d[::-1])[::-1][1:], 1.0) if num_steps else np.ones(0)
  w = np.zeros(max(length or 0, num_steps + 1))
  w[0] = np.prod(d)
  w[1:num_steps + 1] = (1.0 - d) * later
  return w


def fit(snapshot_steps, target_step: int, target_std: float, decay: float, std: float):
  """(coefficients, relative residual): Σ_i c_i w(snapshot_i) ≈ w(target) in least
  squares, where the snapshots are EMAs kept at `snapshot_steps` by a run with
  (decay, std) and the target is the power EMA of `target_std` at `target_step`."""
  steps = [int(s) for s in snapshot_steps]
  length = max(steps + [target_step]) + 1
  basis = np.stack([ema_weights(s, decay, std, length) for s in steps], axis=1)
  target = ema_weights(target_step, 0.0, target_std, length)
  coeffs = np.linalg.lstsq(basis, target, rcond=None)[0]
  residual = np.linalg.norm(basis @ coeffs - target) / np.linalg.norm(target)
  return coeffs, float(residual)


def _snapshots(workdir: str) -> tuple[ocp.CheckpointManager, list[int]]:
  directory = os.path.join(os.path.abspath(workdir), "checkpoints", "latest")
  manager = checkpoint._read_only_manager(directory) if os.path.isdir(directory) else None
  steps = sorted(manager.all_steps()) if manager else []
  if len(steps) < 2:
    raise ValueError(f"{directory} holds {len(steps)} checkpoint(s); post-hoc EMA needs "
                     "several (every 1/24 of the run or closer). Train with e.g. "
                     "--config.train.checkpoint_every_steps=50 "
                     "--config.train.keep_checkpoints=200.")
  return manager, steps


def _restore(manager, step: int) -> dict:
  abstract = checkpoint._on_one_device(manager, step)
  return manager.restore(step, args=ocp.args.StandardRestore(abstract))


def synthesize(workdir: str, target_std: float, step: int | None = None):
  """(config, ema params, info): the power EMA of `target_std` at `step` (default: the
  newest checkpoint), from the EMA snapshots in workdir/checkpoints/latest/.
  info: the snapshot steps, their coefficients and the fit's relative residual."""
  if not 0.0 < target_std < 0.288:
    raise ValueError(f"target_std must be in (0, 0.288) (0.05-0.2 usual), got {target_std}.")
  config = checkpoint.load_config(workdir)
  manager, steps = _snapshots(workdir)
  step = steps[-1] if step is None else int(step)
  if step not in steps:
    raise ValueError(f"no checkpoint at step {step} in {workdir}; kept: {steps}.")
  used = [s for s in steps if s <= step]  # Later iterates are not part of the target.
  coeffs, residual = fit(used, step, target_std, config.optim.ema_decay, config.optim.ema_std)
  total = None
  for s, c in zip(used, coeffs):
    ema = jax.tree.map(lambda a: np.asarray(a, np.float64), _restore(manager, s)["ema_params"])
    total = jax.tree.map(lambda e: c * e, ema) if total is None else jax.tree.map(
        lambda t, e: t + c * e, total, ema)
  params = jax.tree.map(lambda a: a.astype(np.float32), total)
  info = dict(step=step, target_std=target_std, residual=residual, snapshot_steps=used,
              coefficients=[float(c) for c in coeffs])
  return config, params, info


def write_run(workdir: str, out: str, target_std: float, step: int | None = None) -> dict:
  """A workdir at `out` whose `best` checkpoint is `workdir`'s state at `step` with
  the synthesized EMA as its EMA params: `launch.py --mode=sample/evaluate --workdir
  out` use it like any run. Writes out/posthoc_ema.json (info of `synthesize`)."""
  config, params, info = synthesize(workdir, target_std, step)
  manager, _ = _snapshots(workdir)
  tree = _restore(manager, info["step"])
  tree["ema_params"] = params
  os.makedirs(out, exist_ok=True)
  checkpoint.save_config(out, config)
  saver = ocp.CheckpointManager(os.path.join(os.path.abspath(out), "checkpoints", "best"),
                                options=ocp.CheckpointManagerOptions(create=True))
  saver.save(info["step"], args=ocp.args.StandardSave(jax.tree.map(np.asarray, tree)))
  saver.wait_until_finished()
  saver.close()
  files.write_atomic(os.path.join(out, "posthoc_ema.json"),
                     json.dumps(dict(info, source=os.path.abspath(workdir)), indent=2))
  return info
