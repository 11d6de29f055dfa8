"""Train state and the pure train / eval steps.

`train_step(state, batch, key) -> (state, metrics)` draws everything random from
`fold_in(key, state.step)`, so a run resumed at step k draws exactly what an
uninterrupted run draws at step k.
"""

from __future__ import annotations

import functools
import os
import time
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxddpm import checkpoint, data, diffusion, models, progress, sampling
from jaxddpm import images as images_lib
from jaxddpm import schedules as schedules_lib

OPTIMIZERS = ("adam", "adamw")


@flax.struct.dataclass
class TrainState:
  """Everything a resumed run needs to continue exactly where it stopped."""
  step: jnp.ndarray  # int32 scalar: optimizer steps taken.
  params: Any
  ema_params: Any  # Exponential moving average of params, used for sampling.
  opt_state: Any
  plateau: Any  # optax reduce_on_plateau state; plateau.scale multiplies the lr.
  best_val_loss: jnp.ndarray  # float32: lowest validation loss so far (inf at first).
  bad_epochs: jnp.ndarray  # int32: epochs since it last improved (early stopping).
  rng: jnp.ndarray  # uint32 key data of the run's root key.


def lr_schedule(optim) -> optax.Schedule:
  """Linear warmup to optim.lr (constant without warmup); before plateau scaling."""
  if optim.warmup_steps > 0:
    return optax.linear_schedule(0.0, optim.lr, optim.warmup_steps)
  return optax.constant_schedule(optim.lr)


def make_optimizer(optim) -> optax.GradientTransformation:
  """Adam / AdamW with optional warmup, gradients clipped by global norm first."""
  if optim.optimizer not in OPTIMIZERS:
    raise ValueError(f"unknown optimizer {optim.optimizer!r}; choose one of {OPTIMIZERS}.")
  if not optim.lr > 0:
    raise ValueError(f"optim.lr must be > 0, got {optim.lr}.")
  if optim.warmup_steps < 0 or optim.grad_clip < 0:
    raise ValueError("optim.warmup_steps and optim.grad_clip must be >= 0.")
  lr = lr_schedule(optim)
  if optim.optimizer == "adam":
    opt = optax.adam(lr, b1=optim.b1, b2=optim.b2)
  else:
    opt = optax.adamw(lr, b1=optim.b1, b2=optim.b2, weight_decay=optim.weight_decay)
  clip = optax.clip_by_global_norm(optim.grad_clip) if optim.grad_clip > 0 else optax.identity()
  return optax.chain(clip, opt)


def init_params(model, config, key: jax.Array):
  """Float32 params for `model` at the config's image shape."""
  s, c = config.data.image_size, config.data.channels
  x = jnp.zeros((1, s, s, c), jnp.float32)
  t = jnp.zeros((1,), jnp.int32)
  labels = jnp.zeros((1,), jnp.int32)
  # Jitted: initialisers run op by op are slow, and the forward pass inside init
  # only needs shapes. Labels are ints here; attribute models take float [1, K].
  labels = (labels if config.data.conditioning == "class"
            else jnp.zeros((1, config.data.num_classes), jnp.float32))
  return jax.jit(model.init)(key, x, t, labels, jnp.ones((1,), bool))["params"]


def make_plateau(optim) -> optax.GradientTransformationExtraArgs:
  """ReduceLROnPlateau on the validation loss, stepped once per epoch."""
  if not 0.0 < optim.plateau_factor <= 1.0:
    raise ValueError(f"optim.plateau_factor must be in (0, 1], got {optim.plateau_factor}.")
  return optax.contrib.reduce_on_plateau(
      factor=optim.plateau_factor, patience=optim.plateau_patience,
      cooldown=optim.plateau_cooldown, rtol=optim.plateau_rtol,
      min_scale=optim.plateau_min_scale)


def create_train_state(params, tx: optax.GradientTransformation, plateau=None,
                       key: jax.Array | None = None) -> TrainState:
  plateau = plateau or optax.contrib.reduce_on_plateau()
  key = jax.random.key(0) if key is None else key
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    ema_params=jax.tree.map(jnp.copy, params), opt_state=tx.init(params),
                    plateau=plateau.init(params), best_val_loss=jnp.array(jnp.inf, jnp.float32),
                    bad_epochs=jnp.zeros((), jnp.int32),
                    rng=jnp.array(jax.random.key_data(key)))  # A copy: the state is donated.


def end_epoch(state: TrainState, val_loss, plateau) -> tuple[TrainState, bool]:
  """Steps the plateau scheduler and the early-stopping counter with val_loss.
  Returns (state, improved). Runs on the host once per epoch."""
  _, plateau_state = plateau.update({}, state.plateau, value=jnp.asarray(val_loss, jnp.float32))
  improved = bool(val_loss < state.best_val_loss)
  return state.replace(
      plateau=plateau_state,
      best_val_loss=jnp.minimum(state.best_val_loss, jnp.float32(val_loss)),
      bad_epochs=jnp.zeros((), jnp.int32) if improved else state.bad_epochs + 1), improved


def ema_update(ema, params, step: jnp.ndarray, decay: float):
  """EMA with warmup: the effective decay min(decay, (1+n)/(10+n)) lets the
  average track the fast early changes instead of remembering the init."""
  d = jnp.minimum(decay, (1.0 + step) / (10.0 + step))
  return jax.tree.map(lambda e, p: d * e + (1.0 - d) * p, ema, params)


def _apply_fn(model):
  def apply(params, x_t, t, labels, use_labels, train, rngs):
    return model.apply({"params": params}, x_t, t, labels, use_labels, train=train, rngs=rngs)
  return apply


def to_model_range(images: jnp.ndarray) -> jnp.ndarray:
  """uint8 [0, 255] -> float32 [-1, 1]; float input is taken as already scaled."""
  if images.dtype == jnp.uint8:
    return images.astype(jnp.float32) / 127.5 - 1.0
  return images.astype(jnp.float32)


def check_diffusion_config(d) -> None:
  diffusion.check_prediction(d.prediction)
  if d.loss_weighting not in diffusion.WEIGHTINGS:
    raise ValueError(f"unknown diffusion.loss_weighting {d.loss_weighting!r}; "
                     f"choose one of {diffusion.WEIGHTINGS}.")
  if not 0.0 <= d.p_uncond <= 1.0:
    raise ValueError(f"diffusion.p_uncond must be in [0, 1], got {d.p_uncond}.")
  if d.zero_terminal_snr and d.prediction == "eps":
    raise ValueError("zero_terminal_snr makes eps-prediction undefined at the last step; "
                     "set diffusion.prediction to 'v' (recommended) or 'x0'.")


def _loss(model, schedule, d, params, batch, key, train):
  return diffusion.loss_fn(
      _apply_fn(model), params, schedule, to_model_range(batch["image"]), batch["label"], key,
      prediction=d.prediction, weighting=d.loss_weighting, min_snr_gamma=d.min_snr_gamma,
      p_uncond=d.p_uncond, train=train)


def train_step(state: TrainState, batch, key: jax.Array, *, model, schedule, tx,
               diffusion_config, ema_decay: float):
  """One optimizer step. batch: {"image": [B,H,W,C] uint8 or float in [-1,1],
  "label": int [B] or float [B,K]}. Returns (new state, {"loss", "grad_norm"})."""
  step_key = jax.random.fold_in(key, state.step)
  loss, grads = jax.value_and_grad(
      lambda p: _loss(model, schedule, diffusion_config, p, batch, step_key, True))(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  updates = jax.tree.map(lambda u: u * state.plateau.scale, updates)  # Plateau-reduced lr.
  params = optax.apply_updates(state.params, updates)
  new_state = state.replace(step=state.step + 1, params=params,
                            ema_params=ema_update(state.ema_params, params, state.step, ema_decay),
                            opt_state=opt_state)
  return new_state, {"loss": loss, "grad_norm": optax.tree.norm(grads)}


def eval_step(params, batch, key: jax.Array, *, model, schedule, diffusion_config):
  """The training loss without gradients or dropout (use a fixed key to compare)."""
  return {"loss": _loss(model, schedule, diffusion_config, params, batch, key, False)}


def make_steps(config) -> tuple[Any, schedules_lib.Schedule, optax.GradientTransformation,
                                Callable, Callable]:
  """(model, schedule, tx, jitted train_step, jitted eval_step) for a config.

  train_step donates the incoming state: do not reuse it after the call.
  """
  check_diffusion_config(config.diffusion)
  model = models.build_model(config)
  schedule = schedules_lib.from_config(config.diffusion)
  tx = make_optimizer(config.optim)
  common = dict(model=model, schedule=schedule, diffusion_config=config.diffusion)
  step = jax.jit(functools.partial(train_step, tx=tx, ema_decay=config.optim.ema_decay,
                                   **common), donate_argnums=(0,))
  evaluate = jax.jit(functools.partial(eval_step, **common))
  return model, schedule, tx, step, evaluate


# ----------------------------------------------------------------------------- loop


class NonFiniteError(FloatingPointError):
  """The loss or gradient norm became NaN/Inf; the last good checkpoint is kept."""


def make_chunk_fn(step_fn: Callable, batch_size: int) -> Callable:
  """`chunk(state, images, labels, perm, offset, key, k)`: k train steps in one
  compiled `lax.scan`, each gathering its batch from the device-resident data via
  the epoch permutation `perm`; metrics come back stacked [k]."""

  def chunk(state, images, labels, perm, offset, key, k):
    def body(state, i):
      idx = jax.lax.dynamic_slice(perm, ((offset + i) * batch_size,), (batch_size,))
      return step_fn(state, {"image": images[idx], "label": labels[idx]}, key)
    if k == 1:
      # No loop for one step: XLA:CPU runs a train step inside a while loop ~6x
      # slower than outside it (measured; loop-carried conv weights), so the CPU
      # configs dispatch one step at a time.
      state, metrics = body(state, 0)
      return state, jax.tree.map(lambda m: m[None], metrics)
    return jax.lax.scan(body, state, jnp.arange(k))

  return jax.jit(chunk, static_argnums=(6,), donate_argnums=(0,))


def validation_loss(eval_fn, params, images, labels, batch_size: int, key: jax.Array) -> float:
  """Mean loss over the validation set with a fixed key, so epochs compare.
  The last partial batch is dropped (at most batch_size - 1 images)."""
  n = images.shape[0] // batch_size
  if n == 0:
    raise ValueError(f"the validation set ({images.shape[0]} images) is smaller than "
                     f"train.eval_batch_size={batch_size}.")
  losses = [eval_fn(params, {"image": images[i * batch_size:(i + 1) * batch_size],
                             "label": labels[i * batch_size:(i + 1) * batch_size]},
                    jax.random.fold_in(key, i))["loss"] for i in range(n)]
  return float(jnp.mean(jnp.stack(losses)))


def _chunk_length(step: int, steps_per_epoch: int, total: int, K: int) -> int:
  """Chunks end at multiples of K within an epoch, at epoch ends and at the end,
  so a resumed run splits its steps exactly as an uninterrupted one does."""
  offset = step % steps_per_epoch
  return min(K - offset % K, steps_per_epoch - offset, total - step)


def _check_train_config(config) -> None:
  t = config.train
  for name in ("batch_size", "steps_per_dispatch", "eval_batch_size", "log_every_steps",
               "checkpoint_every_steps", "samples_per_class"):
    if t[name] < 1:
      raise ValueError(f"train.{name} must be >= 1, got {t[name]}.")
  if t.num_epochs < 1 and t.num_steps < 1:
    raise ValueError("set train.num_epochs or train.num_steps to at least 1.")
  if t.batch_size % jax.device_count():
    raise ValueError(f"train.batch_size={t.batch_size} is not divisible by the "
                     f"{jax.device_count()} devices.")


def train_and_evaluate(config, workdir: str) -> dict:
  """Trains (or resumes) the model of `config` in `workdir`. Returns a summary.

  workdir gets: config.json, metrics.jsonl, checkpoints/{latest,best}/,
  samples/step_*.png. Running again with the same workdir resumes.
  """
  _check_train_config(config)
  check_diffusion_config(config.diffusion)
  _prepare_workdir(workdir)
  splits = data.load(config.data, config.train.seed)
  B = config.train.batch_size
  steps_per_epoch = len(splits["train"]) // B
  if steps_per_epoch == 0:
    raise ValueError(f"{len(splits['train'])} training images are fewer than "
                     f"train.batch_size={B}.")
  total = config.train.num_steps or config.train.num_epochs * steps_per_epoch

  model, schedule, tx, step_fn, eval_fn = make_steps(config)
  plateau = make_plateau(config.optim)
  root_key = jax.random.key(config.train.seed)
  init_key, _ = jax.random.split(root_key)
  fresh = create_train_state(init_params(model, config, init_key), tx, plateau, root_key)
  ckpt = checkpoint.Checkpointer(workdir, config.train.keep_checkpoints)
  state = ckpt.restore_latest(fresh) or fresh
  checkpoint.save_config(workdir, config)
  key = jax.random.wrap_key_data(state.rng)
  data_key, step_key, val_key = (jax.random.fold_in(key, i) for i in range(3))

  # The whole uint8 dataset lives on the device; batches are gathered there.
  train_x, train_y = jnp.asarray(splits["train"].images), jnp.asarray(splits["train"].labels)
  val_x, val_y = jnp.asarray(splits["val"].images), jnp.asarray(splits["val"].labels)
  chunk_fn = make_chunk_fn(step_fn, B)  # The jitted step inlines into the scan.
  sampler = sampling.make_sampler(config)
  grid_labels = _grid_labels(config, splits["val"])
  log = progress.MetricsLog(os.path.join(workdir, "metrics.jsonl"))
  bar = progress.Progress(total, "train", start=int(state.step), quiet=config.train.quiet)
  patience = config.train.early_stopping_patience
  lr_at = lr_schedule(config.optim)  # For logging: the optimizer's own schedule.
  step, perm, perm_epoch, stopped_early = int(state.step), None, -1, False
  bad_epochs = int(state.bad_epochs)  # Host copy: no device sync per chunk.
  last_log_time, last_log_step = time.perf_counter(), step
  pending = []
  try:
    while step < total and not (patience and bad_epochs >= patience):
      epoch = step // steps_per_epoch
      if epoch != perm_epoch:
        perm = jax.random.permutation(jax.random.fold_in(data_key, epoch), train_x.shape[0])
        perm_epoch = epoch
      k = _chunk_length(step, steps_per_epoch, total, config.train.steps_per_dispatch)
      state, metrics = chunk_fn(state, train_x, train_y, perm, step % steps_per_epoch,
                                step_key, k)
      pending.append((step, metrics))
      step += k
      crossed = lambda every: step // every != (step - k) // every
      at_epoch_end = step % steps_per_epoch == 0
      must_save = at_epoch_end or crossed(config.train.checkpoint_every_steps) or step == total
      if must_save or crossed(config.train.log_every_steps):
        # Fetch metrics before any save: a NaN state must never be checkpointed.
        _flush_metrics(pending, log, bar, ckpt, state, lr_at, last_log_time, last_log_step, B)
        pending, last_log_time, last_log_step = [], time.perf_counter(), step
      if at_epoch_end:
        val = validation_loss(eval_fn, state.params, val_x, val_y,
                              config.train.eval_batch_size, val_key)
        state, improved = end_epoch(state, val, plateau)
        bad_epochs = int(state.bad_epochs)
        log.write(step=step, epoch=step // steps_per_epoch, val_loss=val,
                  best_val_loss=float(state.best_val_loss),
                  lr_scale=float(state.plateau.scale), bad_epochs=int(state.bad_epochs))
        ckpt.save(state, best=improved)
      elif must_save:
        ckpt.save(state)
      if config.train.sample_every_steps and crossed(config.train.sample_every_steps):
        _write_grid(workdir, step, sampler, state.ema_params, grid_labels, config, root_key)
    stopped_early = step < total
    ckpt.save(state)
  finally:
    bar.close()
    ckpt.close()
  grid_path = _write_grid(workdir, step, sampler, state.ema_params, grid_labels, config,
                          root_key)
  summary = dict(step=step, epochs=step / steps_per_epoch, stopped_early=stopped_early,
                 best_val_loss=float(state.best_val_loss), workdir=os.path.abspath(workdir),
                 samples=grid_path, checkpoints=os.path.join(workdir, "checkpoints"),
                 metrics=os.path.join(workdir, "metrics.jsonl"))
  log.write(event="done", **{k: v for k, v in summary.items() if k != "workdir"})
  return summary


def _prepare_workdir(workdir: str) -> None:
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, ".write_test")
    with open(probe, "w") as f:
      f.write("ok")
    os.remove(probe)
  except OSError as e:
    raise ValueError(f"cannot write to workdir {workdir!r}: {e}. Choose another --workdir.") from e


def _flush_metrics(pending, log, bar, ckpt, state, lr_at, t0, step0, B):
  """Fetches the chunks' metrics (one host transfer), stops on NaN/Inf, logs."""
  if not pending:
    return
  host = jax.device_get([m for _, m in pending])
  losses = np.concatenate([np.asarray(m["loss"]) for m in host])
  norms = np.concatenate([np.asarray(m["grad_norm"]) for m in host])
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
  bar.update(step, loss=record["loss"], lr=lr)


def _grid_labels(config, val_split) -> np.ndarray:
  n = config.train.samples_per_class
  if config.data.conditioning == "class":
    return np.repeat(np.arange(config.data.num_classes), n).astype(np.int32)
  rows = min(8, len(val_split))  # Attributes: the first validation faces' attributes.
  return np.repeat(val_split.labels[:rows], n, axis=0)


def _write_grid(workdir, step, sampler, params, labels, config, root_key) -> str:
  samples = sampler(params, jax.random.fold_in(root_key, 10_000_019), labels)
  rows = len(labels) // config.train.samples_per_class
  path = os.path.join(workdir, "samples", f"step_{step:07d}.png")
  return images_lib.write_png(path, images_lib.class_grid(np.asarray(samples), rows))
