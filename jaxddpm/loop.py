"""The training loop: data on the device, chunks of steps, validation, sample
evaluation, checkpoints, logs. Everything numeric lives in `train.py`; this file
decides when things happen.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import threading
import time
from typing import Callable

try:
  import fcntl  # POSIX; elsewhere training runs without a workdir lock.
except ImportError:
  fcntl = None

import jax
import jax.numpy as jnp
import numpy as np

from jaxddpm import attributes, checkpoint, data, diagnostics, evaluate, files, parallel, plots
from jaxddpm import progress, sampling, xla
from jaxddpm import images as images_lib
from jaxddpm.train import (check_diffusion_config, create_train_state, end_epoch,
                           init_params, lr_schedule, make_plateau, make_steps)


class NonFiniteError(FloatingPointError):
  """The loss or gradient norm became NaN/Inf; the last good checkpoint is kept."""


# Set by a stop signal's handler (launch.py) beside its KeyboardInterrupt. Python
# prints and drops an exception raised inside a callback it calls from C, such as
# JAX's garbage-collection hook, so a signal landing there would be lost; training
# checks this after each chunk and stops there as if interrupted.
_stop = threading.Event()


def request_stop() -> None:
  """Makes a running (or the next) training stop after its current chunk, saving
  as on Ctrl-C (KeyboardInterrupt)."""
  _stop.set()


def make_chunk_fn(step_fn: Callable, batch_size: int, mesh=None, steps: int = 1) -> Callable:
  """`chunk(state, images, labels, perm, offset, key, n)`: the first n of `steps`
  train steps in one compiled `lax.scan`, each gathering its batch from the
  device-resident data via the epoch permutation `perm`; metrics come back
  stacked [steps], of which the first n count. n is a traced argument: the short
  chunk at an epoch's end runs the same program with its last steps masked, so a
  run compiles one chunk program (each one costs ~60 s under XLA's GPU
  autotuning). A masked step is computed and its state dropped (a select that
  fuses into the optimizer's elementwise update): at most steps-1 wasted steps
  per epoch. With a mesh, each gathered batch is sharded over its `data` axis
  (the state stays replicated)."""
  if steps < 1:
    raise ValueError(f"steps must be >= 1, got {steps}.")

  def chunk(state, images, labels, perm, offset, key, n):
    def body(state, i):
      # Past the permutation's end (a masked step) the start is clamped: any batch.
      idx = jax.lax.dynamic_slice(perm, ((offset + i) * batch_size,), (batch_size,))
      batch = {"image": images[idx], "label": labels[idx]}
      if mesh is not None:
        batch = jax.lax.with_sharding_constraint(batch, parallel.batch_sharding(mesh))
      new, metrics = step_fn(state, batch, key)
      if steps == 1:
        return new, metrics
      live = i < n
      return jax.tree.map(lambda a, b: jnp.where(live, a, b), new, state), metrics
    if steps == 1:
      # No while loop for a single step.
      state, metrics = body(state, 0)
      return state, jax.tree.map(lambda m: m[None], metrics)
    return jax.lax.scan(body, state, jnp.arange(steps))

  return xla.jit(chunk, donate_argnums=(0,))


def validation_loss(eval_fn, params, images, labels, batch_size: int, key: jax.Array,
                    mesh=None) -> float:
  """Mean loss over the validation set with a fixed key, so epochs compare.
  The last partial batch is dropped (at most batch_size - 1 images)."""
  n = images.shape[0] // batch_size
  if n == 0:
    raise ValueError(f"the validation set ({images.shape[0]} images) is smaller than "
                     f"train.eval_batch_size={batch_size}.")
  place = (lambda b: parallel.shard_batch(b, mesh)) if mesh is not None else (lambda b: b)
  losses = [eval_fn(params, place({"image": images[i * batch_size:(i + 1) * batch_size],
                                   "label": labels[i * batch_size:(i + 1) * batch_size]}),
                    jax.random.fold_in(key, i))["loss"] for i in range(n)]
  return float(jnp.mean(jnp.stack(losses)))


def _chunk_length(step: int, steps_per_epoch: int, total: int, K: int) -> int:
  """Chunks end at multiples of K within an epoch, at epoch ends and at the end,
  so a resumed run splits its steps exactly as an uninterrupted one does."""
  offset = step % steps_per_epoch
  return min(K - offset % K, steps_per_epoch - offset, total - step)


def _eval_batch_size(wanted: int, num_val: int) -> int:
  """train.eval_batch_size, or the largest multiple of the device count that the
  validation set fills when it is smaller (a small data set's val_fraction):
  checked before training, not at the first epoch end."""
  devices = jax.device_count()
  size = min(wanted, num_val // devices * devices)
  if size < 1:
    raise ValueError(f"the validation set holds {num_val} images, fewer than the "
                     f"{devices} device(s): raise data.val_fraction.")
  return size


def _check_train_config(config) -> None:
  t = config.train
  for name in ("batch_size", "steps_per_dispatch", "eval_batch_size", "log_every_steps",
               "checkpoint_every_steps", "samples_per_class"):
    if t[name] < 1:
      raise ValueError(f"train.{name} must be >= 1, got {t[name]}.")
  for name in ("num_epochs", "num_steps", "early_stopping_patience"):
    if t[name] < 0:
      raise ValueError(f"train.{name} must be >= 0, got {t[name]}.")
  if t.num_epochs < 1 and t.num_steps < 1:
    raise ValueError("set train.num_epochs or train.num_steps to at least 1.")
  for name in ("batch_size", "eval_batch_size"):
    if t[name] % jax.device_count():
      raise ValueError(f"train.{name}={t[name]} is not divisible by the "
                       f"{jax.device_count()} devices; use a multiple of {jax.device_count()}.")


# What a run learns from: resuming with one of these changed would go on training
# one run's weights on another's data, model or noise schedule (the data order and
# the validation split follow train.seed and train.batch_size). Where the data
# lives and the compute dtype may change between a run and its resume.
RUN_DEFINING = ("data.", "model.", "diffusion.", "train.seed", "train.batch_size")
MAY_CHANGE_ON_RESUME = ("data.dir", "data.tfds_dir", "model.dtype")


def check_resume_config(workdir: str, config) -> dict[str, tuple]:
  """ValueError if `config` changes a run-defining field of the run in `workdir`;
  else the fields it changes (optimizer, length, intervals, sampling), to log."""
  changes = checkpoint.config_changes(workdir, config)
  fixed = {k: v for k, v in changes.items()
           if k.startswith(RUN_DEFINING) and k not in MAY_CHANGE_ON_RESUME}
  if fixed:
    listed = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in sorted(fixed.items()))
    raise ValueError(
        f"{workdir} holds a run trained with another config ({listed}). Resuming would mix "
        f"two runs: use a new --workdir, or the settings in {workdir}/{checkpoint.CONFIG_FILE} "
        "(optimizer, length and sampling settings may change on a resume).")
  return changes


def train_and_evaluate(config, workdir: str) -> dict:
  """Trains (or resumes) the model of `config` in `workdir`. Returns a summary.

  workdir gets: config.json, metrics.jsonl, checkpoints/{latest,best}/,
  samples/step_*.png. Running again with the same workdir resumes. While it runs
  the workdir is locked: a second training run there is a ValueError.
  """
  _check_train_config(config)
  check_diffusion_config(config.diffusion)
  _prepare_workdir(workdir)
  with _workdir_lock(workdir):
    return _train(config, workdir)


def _train(config, workdir: str) -> dict:
  # Before any loading: a resume with another run's config fails in a second.
  resuming = checkpoint.has_checkpoint(workdir)
  changed = check_resume_config(workdir, config) if resuming else {}
  splits = data.load(config.data, config.train.seed)
  B = config.train.batch_size
  steps_per_epoch = len(splits["train"]) // B
  if steps_per_epoch == 0:
    raise ValueError(f"{len(splits['train'])} training images are fewer than "
                     f"train.batch_size={B}.")
  total = config.train.num_steps or config.train.num_epochs * steps_per_epoch
  eval_batch = _eval_batch_size(config.train.eval_batch_size, len(splits["val"]))

  model, schedule, tx, step_fn, eval_fn = make_steps(config)
  plateau = make_plateau(config.optim)
  root_key = jax.random.key(config.train.seed)
  init_key, _ = jax.random.split(root_key)
  fresh = lambda: create_train_state(init_params(model, config, init_key), tx, plateau,
                                     root_key)
  ckpt = checkpoint.Checkpointer(workdir, config.train.keep_checkpoints)
  # A resume restores into the state's shapes alone: no init program to compile.
  state, damaged = ckpt.restore_latest(jax.eval_shape(fresh)) if resuming else (None, [])
  if state is None:
    state = fresh()
  lead = jax.process_index() == 0  # Multi-host: one host writes files; Orbax coordinates.
  if damaged and lead:  # Said even when quiet: the run goes back to an older state.
    print(f"warning: checkpoint(s) at step {', '.join(map(str, damaged))} did not restore "
          f"(damaged) and were moved to {os.path.join(workdir, 'checkpoints', 'damaged')}; "
          f"resuming from step {int(state.step)}.", file=sys.stderr)
  if lead:
    checkpoint.save_config(workdir, config)
    attributes.save_run_data(workdir, config.data.dataset, splits["train"])
    if splits["train"].stand_in:  # Said even when quiet: nothing here is about real data.
      print(f"note: {config.data.dataset} here is generated stand-in data ({data.STAND_IN_FILE} "
            "in its folder): its samples and numbers say nothing about the real data set.",
            file=sys.stderr)
  mesh = parallel.make_mesh()  # All devices: the batch is split, the state replicated.
  state = parallel.replicate(state, mesh)
  key = jax.random.wrap_key_data(state.rng)
  data_key, step_key, val_key = (jax.random.fold_in(key, i) for i in range(3))

  # The whole uint8 dataset lives on every device; batches are gathered there.
  train_x, train_y, val_x, val_y = parallel.replicate(
      (splits["train"].images, splits["train"].labels, splits["val"].images,
       splits["val"].labels), mesh)
  K = config.train.steps_per_dispatch
  chunk_fn = make_chunk_fn(step_fn, B, mesh, K)  # The jitted step inlines into the scan.
  sampler = sampling.make_sampler(config, with_stats=True)
  grid = _grid_rows(config, splits["train"])
  evaluator = _make_evaluator(config)
  log = progress.MetricsLog(os.path.join(workdir, "metrics.jsonl"), writer=lead,
                            tensorboard_from=int(state.step))
  if splits["train"].stand_in:
    log.write(step=int(state.step), event="data", dataset=config.data.dataset, stand_in=True)
  if resuming:
    log.write(step=int(state.step), event="resume", damaged=damaged,
              changed={k: list(v) for k, v in sorted(changed.items())})
    if changed and lead:  # One line even when quiet: the run is no longer as first set.
      print(f"resuming at step {int(state.step)} with changed settings: " + "; ".join(
          f"{k} {a!r} -> {b!r}" for k, (a, b) in sorted(changed.items())), file=sys.stderr)
  bar = progress.bar(total, "train", start=int(state.step),
                     quiet=config.train.quiet or not lead)
  patience = config.train.early_stopping_patience
  lr_at = lr_schedule(config.optim)  # For logging: the optimizer's own schedule.
  step, perm, perm_epoch, stopped_early = int(state.step), None, -1, False
  bad_epochs = int(state.bad_epochs)  # Host copy: no device sync per chunk.
  last_log_time, last_log_step = time.perf_counter(), step
  pending = []
  validated = step  # The last epoch end whose validation ran (a resume starts past it).

  def validate(params):
    """(validation loss, seconds it took)."""
    t0 = time.perf_counter()
    val = validation_loss(eval_fn, params, val_x, val_y, eval_batch, val_key, mesh)
    return val, time.perf_counter() - t0
  try:
    while step < total and not (patience and bad_epochs >= patience):
      epoch = step // steps_per_epoch
      if epoch != perm_epoch:
        perm = jax.random.permutation(jax.random.fold_in(data_key, epoch), train_x.shape[0])
        perm_epoch = epoch
      k = _chunk_length(step, steps_per_epoch, total, K)
      state, metrics = chunk_fn(state, train_x, train_y, perm, step % steps_per_epoch,
                                step_key, k)
      pending.append((step, metrics, k))
      step += k
      # One chunk in flight at most: a SIGTERM or Ctrl-C, handled when this wait
      # returns, then saves within one chunk's time (schedulers kill 30 s after
      # SIGTERM), not after a queue of dispatched chunks has run.
      metrics["loss"].block_until_ready()
      if _stop.is_set():
        raise KeyboardInterrupt
      crossed = lambda every: step // every != (step - k) // every
      at_epoch_end = step % steps_per_epoch == 0
      must_save = at_epoch_end or crossed(config.train.checkpoint_every_steps) or step == total
      if must_save or crossed(config.train.log_every_steps):
        # Fetch metrics before any save: a NaN state must never be checkpointed.
        _flush_metrics(pending, log, bar, ckpt, state, lr_at, last_log_time, last_log_step, B)
        pending, last_log_time, last_log_step = [], time.perf_counter(), step
      if at_epoch_end:
        val, t_val = validate(state.params)
        state, improved = end_epoch(state, val, plateau)
        bad_epochs = int(state.bad_epochs)
        log.write(step=step, epoch=step // steps_per_epoch, val_loss=val,
                  best_val_loss=float(state.best_val_loss),
                  lr_scale=float(state.plateau.scale), bad_epochs=int(state.bad_epochs),
                  val_seconds=round(t_val, 3))
        if evaluator is not None:
          # With evaluation on, "best" means best samples, not lowest loss.
          improved = False
          if (step // steps_per_epoch) % config.eval.every_epochs == 0:
            state, improved = _evaluate_samples(evaluator, sampler, state, config, root_key,
                                                log, step)
        # The epoch-end updates ran eagerly and left some leaves placed on one device,
        # not replicated over the mesh: the next chunk call would compile again.
        state = parallel.replicate(state, mesh)
        _timed_save(ckpt, log, state, step, best=improved)
        validated = step
      elif step == total and evaluator is None:
        # A step budget seldom ends on an epoch: the last state is validated too, so
        # that "best" (what sampling and evaluation load) can be the finished model
        # rather than the last epoch end's. Epoch counters (plateau, early stopping)
        # are left alone: this is no epoch.
        val, t_val = validate(state.params)
        improved = bool(val < state.best_val_loss)
        state = parallel.replicate(state.replace(
            best_val_loss=jnp.minimum(state.best_val_loss, jnp.float32(val))), mesh)
        log.write(step=step, val_loss=val, best_val_loss=float(state.best_val_loss),
                  end_of_run=True, val_seconds=round(t_val, 3))
        _timed_save(ckpt, log, state, step, best=improved)
        validated = step
      elif must_save:
        _timed_save(ckpt, log, state, step)
      if config.train.sample_every_steps and crossed(config.train.sample_every_steps):
        _write_grid(workdir, step, sampler, state.ema_params, grid, config, root_key, log)
    stopped_early = step < total
    ckpt.save(state)
  except KeyboardInterrupt:
    _stop.clear()  # Handled: a later run in this process starts afresh.
    flush = lambda: _flush_metrics(pending, log, bar, ckpt, state, lr_at, last_log_time,
                                   last_log_step, B)
    saved = _save_interrupted(ckpt, state, flush, validated, steps_per_epoch)
    if lead:
      bar.close()
      print(f"interrupted: saved step {saved}; run the same command to resume from it."
            if saved is not None else "interrupted: the last complete checkpoint stands; run "
            "the same command to resume from it.", file=sys.stderr)
    raise
  finally:
    bar.close()
    failing = sys.exc_info()[0] is not None
    if failing:
      log.close()  # Flushes the TensorBoard events written so far.
    try:
      ckpt.close()  # Waits for pending writes: an async write failure surfaces here.
    except checkpoint.CheckpointWriteError:
      if not failing:  # Never hide the error that is already on its way out.
        raise
  grid_path = _write_grid(workdir, step, sampler, state.ema_params, grid, config, root_key, log)
  summary = dict(step=step, epochs=step / steps_per_epoch, stopped_early=stopped_early,
                 best_val_loss=float(state.best_val_loss),
                 best_frechet_distance=float(state.best_frechet), workdir=os.path.abspath(workdir),
                 samples=grid_path, checkpoints=os.path.join(workdir, "checkpoints"),
                 metrics=os.path.join(workdir, "metrics.jsonl"))
  log.write(event="done", **{k: v for k, v in summary.items() if k != "workdir"})
  log.close()
  return summary


def _save_interrupted(ckpt, state, flush, validated: int, steps_per_epoch: int):
  """On Ctrl-C, checkpoints the last finished chunk so that a rerun resumes there and
  not at the last interval checkpoint (up to train.checkpoint_every_steps back).
  Returns the step saved, or None where the last checkpoint must stand: the
  interrupt caught a chunk mid-dispatch (its donated input state is gone), or an
  epoch end before its validation ran (a resume would skip it), or the state is
  not finite, or the run spans several hosts (their saves must be coordinated)."""
  if jax.process_count() > 1:
    return None
  if any(leaf.is_deleted() for leaf in jax.tree.leaves(state) if isinstance(leaf, jax.Array)):
    return None
  step = int(state.step)
  if step % steps_per_epoch == 0 and step != validated:
    return None
  flush()  # Logs the finished steps; NonFiniteError if one of them was not finite.
  if not all(bool(jnp.all(jnp.isfinite(p))) for p in jax.tree.leaves(state.params)):
    return None  # A chunk whose metrics were never fetched may have diverged.
  ckpt.save(state)
  return step


def _make_evaluator(config):
  """The sample evaluator when config.eval.every_epochs > 0, else None."""
  if not config.eval.every_epochs:
    return None
  e = config.eval
  if e.every_epochs < 0:
    raise ValueError(f"eval.every_epochs must be >= 0, got {e.every_epochs}.")
  if e.num_samples <= e.pr_k or e.pr_k < 1 or e.batch_size < 1:
    raise ValueError(f"eval needs pr_k >= 1, num_samples > pr_k and batch_size >= 1; got "
                     f"pr_k={e.pr_k}, num_samples={e.num_samples}, batch_size={e.batch_size}.")
  return evaluate.make_evaluator(config.data, cache_dir=config.eval.cache_dir or None,
                                 spec=evaluate.classifier_spec(config), k=config.eval.pr_k,
                                 quiet=config.train.quiet)


def _timed_save(ckpt, log, state, step: int, best: bool = False) -> None:
  """Saves and logs how long the save held training up (the copy off the device,
  and any wait for the previous write: Orbax writes to disk in the background)."""
  t0 = time.perf_counter()
  ckpt.save(state, best=best)
  log.write(step=step, checkpoint_seconds=round(time.perf_counter() - t0, 3))


def _evaluate_samples(evaluator, sampler, state, config, root_key, log, step):
  """Scores config.eval.num_samples EMA samples (the same noise every time, so
  evaluations compare); logs them. Returns (state, whether the distance improved)."""
  labels = evaluator.generation_labels(config.eval.num_samples)
  t0 = time.perf_counter()
  imgs = evaluate.generate(sampler, state.ema_params, labels,
                           jax.random.fold_in(root_key, 20_000_003),
                           batch_size=config.eval.batch_size, quiet=config.train.quiet)
  result = evaluator.evaluate(imgs, labels)
  log.write(step=step, **{f"eval_{k}": v for k, v in result.items()},
            eval_seconds=time.perf_counter() - t0)
  improved = result["frechet_distance"] < float(state.best_frechet)
  best = min(result["frechet_distance"], float(state.best_frechet))
  return state.replace(best_frechet=jnp.float32(best)), improved


@contextlib.contextmanager
def _workdir_lock(workdir: str):
  """Holds workdir/.lock for a training run: two runs in one workdir would write the
  same checkpoints and metrics. The OS drops the lock when the process ends, even
  by SIGKILL. Only the first host locks (all hosts share the workdir); a filesystem
  without locks (some network mounts) runs unlocked."""
  if fcntl is None or jax.process_index():
    yield
    return
  with open(os.path.join(workdir, ".lock"), "a+") as f:
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
      locked = True
    except BlockingIOError:
      f.seek(0)
      holder = f.read().strip() or "another process"
      raise ValueError(f"{workdir} is in use by another training run ({holder}): wait for it "
                       "to end or stop it (Ctrl-C keeps its work), or use another --workdir."
                       ) from None
    except OSError:
      locked = False  # This filesystem has no locks.
    if locked:
      f.seek(0)
      f.truncate()
      f.write(f"pid {os.getpid()} on {socket.gethostname()}")
      f.flush()
    try:
      yield
    finally:
      if locked:
        fcntl.flock(f, fcntl.LOCK_UN)


def _prepare_workdir(workdir: str) -> None:
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = files.temp_path(os.path.join(workdir, ".write_test"))  # Hosts share it.
    with open(probe, "w") as f:
      f.write("ok")
    os.remove(probe)
  except OSError as e:
    raise ValueError(f"cannot write to workdir {workdir!r}: {e}. Choose another --workdir.") from e


def _flush_metrics(pending, log, bar, ckpt, state, lr_at, t0, step0, B):
  """Fetches the chunks' metrics (one host transfer), stops on NaN/Inf, logs."""
  if not pending:
    return
  host = jax.device_get([m for _, m, _ in pending])
  live = [k for _, _, k in pending]  # A chunk's masked steps come last: dropped.
  losses = np.concatenate([np.asarray(m["loss"])[:k] for m, k in zip(host, live)])
  norms = np.concatenate([np.asarray(m["grad_norm"])[:k] for m, k in zip(host, live)])
  first = pending[0][0]
  bad = np.flatnonzero(~(np.isfinite(losses) & np.isfinite(norms)))
  if bad.size:
    ckpt.wait()
    raise NonFiniteError(
        f"non-finite loss or gradient at step {first + int(bad[0]) + 1} (loss="
        f"{losses[bad[0]]}, grad_norm={norms[bad[0]]}); training stopped. The last good "
        "checkpoint is intact: lower optim.lr, keep optim.grad_clip on, or try "
        "model.dtype=float32, then rerun to resume.")
  step = first + losses.size
  dt = max(time.perf_counter() - t0, 1e-9)
  lr = float(lr_at(step)) * float(state.plateau.scale)
  record = dict(step=step, loss=float(losses.mean()), grad_norm=float(norms.mean()), lr=lr,
                steps_per_sec=(step - step0) / dt, images_per_sec=(step - step0) * B / dt)
  log.write(**record)
  progress.advance(bar, step, loss=record["loss"], lr=lr)


def _grid_rows(config, train_split):
  """(labels, row captions, title) of the sample grid: one row per class, or for
  attribute data one row per request of `attributes.grid_requests` (captioned),
  the unnamed attributes drawn from the training faces."""
  n = config.train.samples_per_class
  title = (f"STAND-IN DATA, not {config.data.dataset}: generated pictures"
           if train_split.stand_in else "")
  if config.data.conditioning == "class":
    return np.repeat(np.arange(config.data.num_classes), n).astype(np.int32), (), title
  names = train_split.names or tuple(f"attribute {i}" for i in range(config.data.num_classes))
  requests = attributes.grid_requests(names)
  present = np.asarray(train_split.labels) > 0.5
  labels = np.concatenate([attributes.labels_for(r, names, present, n, seed=i)
                           for i, r in enumerate(requests)])
  return labels, tuple(r.replace(",", ", ") for r in requests), title


def _write_grid(workdir, step, sampler, params, grid, config, root_key, log) -> str:
  labels, captions, title = grid
  samples, stats = parallel.to_host(sampler(params, jax.random.fold_in(root_key, 10_000_019),
                                            labels))
  diagnostics.warn_if_diverged(stats)
  path = os.path.join(workdir, "samples", f"step_{step:07d}.png")
  if jax.process_index():  # Every host samples (one computation); the first writes.
    return path
  rows = len(labels) // config.train.samples_per_class
  picture = plots.grid_picture(np.asarray(samples), rows, captions, title)
  log.image("samples", picture, step)
  return images_lib.write_png(path, picture)

