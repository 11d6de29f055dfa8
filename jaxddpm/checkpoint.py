"""Orbax checkpoints under `workdir/checkpoints/` and loading them from scripts.

Two managers: `latest/` keeps the last k train states (for resuming), `best/` the
one with the lowest Frechet distance when in-training evaluation is on, else the
lowest validation loss (for sampling). `workdir/config.json` holds
the config the run was made with, so a checkpoint can be used without it.
Orbax writes each step to a temporary folder and renames it when complete, so a
run killed mid-write leaves the previous checkpoint restorable.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os

import flax
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from jaxddpm import files, parallel

CONFIG_FILE = "config.json"


def _dir(workdir: str, which: str) -> str:
  return os.path.join(os.path.abspath(workdir), "checkpoints", which)


class CheckpointWriteError(ValueError):
  """A checkpoint could not be written (disk full, permissions, ...); training stops
  and the last complete checkpoint stays as it was."""


class Checkpointer:
  """Saves TrainStates as plain nested dicts of arrays (no class pickling)."""

  def __init__(self, workdir: str, keep: int):
    self.workdir = workdir
    if keep < 1:
      raise ValueError(f"train.keep_checkpoints must be >= 1, got {keep}.")
    # Across hosts both managers save the same step at an epoch end; Orbax names its
    # hosts' barriers by step, so without a prefix of their own the two collide
    # ("Barrier ... is already ongoing") and the write fails.
    options = lambda which, keep: ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=True,
        multiprocessing_options=ocp.options.MultiprocessingOptions(
            barrier_sync_key_prefix=which))
    self.latest = ocp.CheckpointManager(_dir(workdir, "latest"), options=options("latest", keep))
    self.best = ocp.CheckpointManager(_dir(workdir, "best"), options=options("best", 1))

  def save(self, state, *, best: bool = False) -> None:
    """Saves at state.step (asynchronously); also as the best when `best`."""
    tree = flax.serialization.to_state_dict(state)
    if jax.process_count() == 1:
      # One batched copy to host memory that both managers share: given device
      # arrays, Orbax copies each of the ~1,100 leaves itself, once per manager
      # (docs/results.md, "Speed: checkpoints, compiles, data"). Across hosts Orbax gets the
      # arrays as they are and coordinates the write.
      tree = parallel.to_host(tree)
    step = int(state.step)
    try:
      if step not in self.latest.all_steps():
        self.latest.save(step, args=ocp.args.StandardSave(tree))
      if best and step not in self.best.all_steps():
        self.best.save(step, args=ocp.args.StandardSave(tree))
    except Exception as e:  # noqa: BLE001 - Orbax surfaces I/O failures as many types.
      raise self._write_error(step, e) from e

  def restore_latest(self, template):
    """(state, damaged): the newest train state that restores, shaped like
    `template` (None if there is no checkpoint), and the steps of newer ones that
    did not. Why fall back: the last few states are kept for this; a newest one
    damaged on disk (a failing disk, a copy cut short) would otherwise stop a run
    that an older one can continue. The damaged ones are moved, not deleted, to
    checkpoints/damaged/<step>, so a later save of that step is not skipped. If
    none restores (another model's checkpoints, say), the newest one's error. Runs
    on several hosts do not fall back: their folders must be moved in step."""
    steps = sorted(self.latest.all_steps(), reverse=True)
    failed = []
    for step in steps:
      try:
        state = _restore(self.latest, step, template, self.latest.directory)
      except ValueError as e:
        if jax.process_count() > 1:
          raise
        failed.append((step, e))
        continue
      for bad, _ in failed:
        _move_aside(self.workdir, bad)
      if failed:
        self.latest.reload()
      return state, [bad for bad, _ in failed]
    if failed:
      raise failed[0][1]
    return None, []

  def wait(self) -> None:
    """Blocks until pending writes are on disk (call before exiting or raising)."""
    try:
      self.latest.wait_until_finished()
      self.best.wait_until_finished()
    except Exception as e:  # noqa: BLE001 - an async write failed; same as above.
      raise self._write_error(None, e) from e

  def _write_error(self, step, e: Exception) -> CheckpointWriteError:
    try:
      last = self.latest.latest_step()
    except Exception:  # noqa: BLE001 - the folder itself may be unreadable now.
      last = None
    what = f"the checkpoint at step {step}" if step is not None else "a checkpoint"
    return CheckpointWriteError(
        f"could not write {what} in {self.workdir}: {type(e).__name__}: {str(e)[:200]}. "
        "Training stopped. Free disk space (or fix the folder's permissions) and run the "
        f"same command again to resume from the last complete checkpoint (step {last}).")

  def close(self) -> None:
    self.wait()
    self.latest.close()
    self.best.close()


def _move_aside(workdir: str, step: int) -> str:
  """Moves checkpoints/latest/<step> to checkpoints/damaged/<step>(-n)."""
  target = os.path.join(os.path.abspath(workdir), "checkpoints", "damaged", str(step))
  os.makedirs(os.path.dirname(target), exist_ok=True)
  n, free = 1, target
  while os.path.exists(free):
    free, n = f"{target}-{n}", n + 1
  os.replace(os.path.join(_dir(workdir, "latest"), str(step)), free)
  return free


def _restore(manager, step: int, template, where):
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct,
                          flax.serialization.to_state_dict(template))
  try:
    tree = manager.restore(step, args=ocp.args.StandardRestore(abstract))
  except Exception as e:  # noqa: BLE001 - Orbax raises many types; all mean the same here.
    raise ValueError(
        f"cannot restore the checkpoint at step {step} in {where}: {type(e).__name__}: "
        f"{str(e)[:300]}. It was probably made with another model, image size or "
        "optimizer than this config, or it is damaged: use a new --workdir, or the config "
        f"saved in {CONFIG_FILE} beside it.") from e
  return flax.serialization.from_state_dict(template, tree)


def _on_one_device(manager, step: int):
  """The checkpoint's arrays as abstract targets on this process's first device:
  a state saved replicated over 8 GPUs loads on a laptop for sampling."""
  meta = manager.item_metadata(step)
  meta = getattr(meta, "tree", meta)
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  return jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), meta)


def save_config(workdir: str, config) -> str:
  return files.write_atomic(os.path.join(workdir, CONFIG_FILE),
                            config.to_json_best_effort(indent=2))


def load_config(workdir: str) -> ml_collections.ConfigDict:
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.isfile(path):
    raise ValueError(f"no {CONFIG_FILE} in {workdir}: is it a jaxddpm workdir? "
                     "Train with `python launch.py --config ... --workdir DIR` first.")
  defaults = base_defaults()
  return ml_collections.ConfigDict(_fill_defaults(_read_config_file(path, defaults), defaults))


def _read_config_file(path: str, defaults: dict) -> dict:
  """The saved config as a dict of sections; ValueError saying what to do if it is not."""
  try:
    with open(path) as f:
      saved = json.load(f)
    bad = not isinstance(saved, dict) or any(
        isinstance(v, dict) != isinstance(saved.get(k, v), dict) for k, v in defaults.items())
    why = "not a config of sections (data, model, ...)" if bad else ""
  except (OSError, ValueError) as e:  # json's decode error is a ValueError.
    why = f"{type(e).__name__}: {e}"
  if why:
    raise ValueError(f"{path} is damaged ({why}). Training writes it: delete it and run the "
                     "training command again, which resumes from the checkpoints and writes "
                     "it anew from --config.")
  return saved


def has_checkpoint(workdir: str) -> bool:
  """Whether workdir holds a complete train state to resume (Orbax names each step's
  folder by its number; a write cut short leaves `<step>.orbax-checkpoint-tmp`)."""
  folder = _dir(workdir, "latest")
  return os.path.isdir(folder) and any(name.isdigit() for name in os.listdir(folder))


def config_changes(workdir: str, config) -> dict[str, tuple]:
  """{"section.field": (saved value, new value)} for the fields of the workdir's
  config.json that `config` sets differently ({} without a config.json). Fields the
  saved file lacks (added to jaxddpm since) are not compared."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.isfile(path):
    return {}
  saved = _flat(_read_config_file(path, base_defaults()))
  new = _flat(json.loads(config.to_json_best_effort()))  # Tuples as lists, as saved.
  return {k: (v, new.get(k)) for k, v in saved.items() if new.get(k, v) != v}


def _flat(tree: dict, prefix: str = "") -> dict:
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      out.update(_flat(v, f"{prefix}{k}."))
    else:
      out[prefix + k] = v
  return out


# configs/ sits beside the package, in the repository and in site-packages alike.
BASE_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           "configs", "base.py")


def base_defaults() -> dict:
  """configs/base.py's fields, for workdirs saved before a field existed. Loaded by
  its path, not as `configs.base`: a script run from a project with its own
  `configs` package (a common name) would import that one instead, and
  load_checkpoint would fail or fill in the wrong defaults."""
  if not os.path.isfile(BASE_CONFIG):
    raise ValueError(f"jaxddpm's base config is missing ({BASE_CONFIG}): reinstall jaxddpm "
                     "(`pip install -e .` in its repository).")
  spec = importlib.util.spec_from_file_location("jaxddpm._base_config", BASE_CONFIG)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config().to_dict()


def _fill_defaults(saved: dict, defaults: dict) -> dict:
  """`saved`, with any field it lacks (a section added later) taken from defaults."""
  out = dict(saved)
  for k, v in defaults.items():
    if k not in out:
      out[k] = v
    elif isinstance(v, dict) and isinstance(out[k], dict):
      out[k] = _fill_defaults(out[k], v)
  return out


class _ReadOnlyNotes(logging.Filter):
  """Drops Orbax's notes that a read-only manager is read-only: they are what
  loading asks for, not a problem, and users read a WARNING as one."""
  NOTES = ("CheckpointManagerOptions.read_only=True", "Given directory is read only")

  def filter(self, record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith(self.NOTES)


def _read_only_manager(directory: str) -> ocp.CheckpointManager:
  absl_logger = logging.getLogger("absl")
  notes = _ReadOnlyNotes()
  absl_logger.addFilter(notes)
  try:
    return ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(
        read_only=True, create=False), item_handlers=ocp.StandardCheckpointHandler())
  finally:
    absl_logger.removeFilter(notes)


def parse_which(which: str | int) -> int | None:
  """None for "best" / "latest", the step for a step number; ValueError otherwise."""
  if which in ("best", "latest"):
    return None
  if isinstance(which, int) or (isinstance(which, str) and which.isdigit()):
    return int(which)
  raise ValueError(f"which must be 'best', 'latest' or a kept step number, got {which!r}.")


def load_checkpoint(workdir: str, *, which: str | int = "best", ema: bool = True):
  """(config, params) from a workdir, for scripts.

  Args:
    workdir: a training run's folder.
    which: "best" (lowest Frechet distance with in-training evaluation on, else
      lowest validation loss), "latest", or a step kept in checkpoints/latest/ (an
      int or its digits: a point on a training curve); "best" falls back to latest
      when no best exists yet.
    ema: the EMA params (default, what samples best) or the raw ones.
  Returns:
    (ConfigDict, params pytree) ready for `make_sampler(config)(params, key, labels)`.
  """
  step = parse_which(which)
  config = load_config(workdir)
  order = [which, "latest"] if which == "best" else ["latest"]
  for name in order:
    directory = _dir(workdir, name)
    if not os.path.isdir(directory):
      continue
    manager = _read_only_manager(directory)
    if step is not None and step not in manager.all_steps():
      raise ValueError(f"no checkpoint at step {step} in {directory}; kept: "
                       f"{sorted(manager.all_steps())}. Keep more with "
                       "--config.train.keep_checkpoints and checkpoint_every_steps.")
    step = manager.latest_step() if step is None else step
    if step is None:
      continue
    try:
      tree = manager.restore(step, args=ocp.args.StandardRestore(_on_one_device(manager, step)))
    except Exception as e:  # noqa: BLE001
      raise ValueError(f"cannot read the checkpoint at step {step} in {directory}: "
                       f"{type(e).__name__}: {str(e)[:300]}. It is damaged or partial; "
                       "try which='latest', or rerun the training command, which resumes "
                       "from the newest checkpoint that restores.") from e
    params = tree["ema_params" if ema else "params"]
    return config, jax.tree.map(np.asarray, params)
  raise ValueError(f"no checkpoint in {os.path.join(workdir, 'checkpoints')}: train first "
                   f"(python launch.py --config ... --workdir {workdir}).")
