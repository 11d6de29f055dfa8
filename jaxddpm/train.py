"""Train state and the pure train / eval steps.

`train_step(state, batch, key) -> (state, metrics)` draws everything random from
`fold_in(key, state.step)`, so a run resumed at step k draws exactly what an
uninterrupted run draws at step k.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxddpm import diffusion, models, xla
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
  # float32: lowest Frechet distance of sample evaluations so far (inf at first);
  # with evaluation on, it picks the "best" checkpoint instead of the val loss.
  best_frechet: jnp.ndarray
  rng: jnp.ndarray  # uint32 key data of the run's root key.


def lr_schedule(optim) -> optax.Schedule:
  """Linear warmup to optim.lr, then constant, or with optim.decay_steps > 0 a cosine
  decay that reaches 0 at that step; before plateau scaling."""
  if optim.decay_steps > 0:
    return optax.warmup_cosine_decay_schedule(0.0, optim.lr, optim.warmup_steps,
                                              optim.decay_steps, end_value=0.0)
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
  if optim.weight_decay < 0 or not (0.0 <= optim.b1 < 1.0 and 0.0 <= optim.b2 < 1.0):
    raise ValueError(f"optim.weight_decay must be >= 0 and optim.b1, optim.b2 in [0, 1); got "
                     f"{optim.weight_decay}, {optim.b1}, {optim.b2}.")
  if not 0.0 <= optim.ema_decay < 1.0:  # ema_decay 1 would never move from the init.
    raise ValueError(f"optim.ema_decay must be in [0, 1) (0.999-0.9999 usual), got "
                     f"{optim.ema_decay}.")
  if not 0.0 <= optim.ema_std < 0.288:  # sqrt(1/12): the widest power profile, γ = 0.
    raise ValueError(f"optim.ema_std must be in [0, 0.288) (0.05-0.2 usual; 0 = use "
                     f"optim.ema_decay), got {optim.ema_std}.")
  if optim.decay_steps and optim.decay_steps <= optim.warmup_steps:
    raise ValueError(f"optim.decay_steps ({optim.decay_steps}) must be 0 (no decay) or more "
                     f"than optim.warmup_steps ({optim.warmup_steps}).")
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
  init = xla.jit(model.init, cpu_options=xla.RUN_ONCE)  # Runs once: compile fast.
  params = init(key, x, t, labels, jnp.ones((1,), bool))["params"]
  if config.diffusion.adaptive_weighting:  # Trained beside the network; flax ignores it.
    params = {**params, diffusion.ADAPTIVE_KEY: diffusion.init_adaptive_weighting()}
  return params


def make_plateau(optim) -> optax.GradientTransformationExtraArgs:
  """ReduceLROnPlateau on the validation loss, stepped once per epoch."""
  if not 0.0 < optim.plateau_factor <= 1.0:
    raise ValueError(f"optim.plateau_factor must be in (0, 1], got {optim.plateau_factor}.")
  if not 0.0 < optim.plateau_min_scale <= 1.0:
    raise ValueError(f"optim.plateau_min_scale must be in (0, 1], got {optim.plateau_min_scale}.")
  for name in ("plateau_patience", "plateau_cooldown", "plateau_rtol"):
    if optim[name] < 0:
      raise ValueError(f"optim.{name} must be >= 0, got {optim[name]}.")
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
                    best_frechet=jnp.array(jnp.inf, jnp.float32),
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


def power_ema_gamma(std: float) -> float:
  """Exponent γ of the power-function EMA whose averaging profile t^γ on [0, 1] has
  standard deviation `std` (Karras et al. 2024): the root of
  std² = (γ+1) / ((γ+2)² (γ+3)), a cubic in γ."""
  r = std ** -2.0
  return float(max(np.roots([1.0, 7.0, 16.0 - r, 12.0 - r]).real))


def ema_update(ema, params, step: jnp.ndarray, decay: float, std: float = 0.0):
  """One EMA update after optimizer step `step` (0-based).

  std > 0: the power-function EMA, decay (1 - 1/(step+1))^(γ+1). It averages
  params with weights ∝ t^γ over the run so far, so its window is a fixed share
  (`std`) of the run whether that is 1,000 steps or 100,000.
  std = 0: the fixed `decay`, warmed up as min(decay, (1+n)/(10+n)) so that the
  average tracks the fast early changes instead of remembering the init. The
  warm-up is 1 - 9/(n+10) ≈ (1 - 1/n)^9: a power EMA of γ = 8 (std ≈ 0.09) until
  `decay` caps it (n ≈ 9,000 for 0.999).
  """
  n = jnp.asarray(step, jnp.float32)
  if std > 0:
    d = (1.0 - 1.0 / (n + 1.0)) ** (power_ema_gamma(std) + 1.0)
  else:
    d = jnp.minimum(decay, (1.0 + n) / (10.0 + n))
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
  diffusion.check_sigma_data(d.sigma_data)
  if d.loss_weighting not in diffusion.WEIGHTINGS:
    raise ValueError(f"unknown diffusion.loss_weighting {d.loss_weighting!r}; "
                     f"choose one of {diffusion.WEIGHTINGS}.")
  if not 0.0 <= d.p_uncond <= 1.0:
    raise ValueError(f"diffusion.p_uncond must be in [0, 1], got {d.p_uncond}.")
  if d.loss_weighting == "min_snr" and not d.min_snr_gamma > 0:
    raise ValueError(f"diffusion.min_snr_gamma must be > 0 (5 usual), got {d.min_snr_gamma}.")
  if d.noise_levels not in diffusion.NOISE_LEVELS:
    raise ValueError(f"unknown diffusion.noise_levels {d.noise_levels!r}; "
                     f"choose one of {diffusion.NOISE_LEVELS}.")
  if not d.lognormal_std > 0:
    raise ValueError(f"diffusion.lognormal_std must be > 0 (1.2 usual), got {d.lognormal_std}.")
  if d.zero_terminal_snr and d.prediction == "eps":
    raise ValueError("zero_terminal_snr makes eps-prediction undefined at the last step; "
                     "set diffusion.prediction to 'v' (recommended) or 'x0'.")


FLIP_STREAM = 0x666C6970  # fold_in tag of the flips' key: independent of the loss's draws.


def random_flip(images_BHWC: jnp.ndarray, key: jax.Array) -> jnp.ndarray:
  """Each image mirrored left-right with probability ½ (on the device, inside the
  step: no host work, and the same flips on a resume, since `key` is the step's)."""
  flip_B = jax.random.bernoulli(key, 0.5, (images_BHWC.shape[0],))
  return jnp.where(flip_B[:, None, None, None], images_BHWC[:, :, ::-1], images_BHWC)


def _loss(model, schedule, d, params, batch, key, train):
  """The training objective; without `train` (validation) the plain weighted loss,
  so that validation losses compare across runs and weightings."""
  adaptive = params.get(diffusion.ADAPTIVE_KEY) if train else None
  return diffusion.loss_fn(
      _apply_fn(model), params, schedule, to_model_range(batch["image"]), batch["label"], key,
      prediction=d.prediction, weighting=d.loss_weighting, min_snr_gamma=d.min_snr_gamma,
      p_uncond=d.p_uncond, noise_levels=d.noise_levels,
      lognormal=(d.lognormal_mean, d.lognormal_std), adaptive=adaptive,
      sigma_data=d.sigma_data, train=train)


def train_step(state: TrainState, batch, key: jax.Array, *, model, schedule, tx,
               diffusion_config, ema_decay: float, ema_std: float = 0.0, flip: bool = False):
  """One optimizer step. batch: {"image": [B,H,W,C] uint8 or float in [-1,1],
  "label": int [B] or float [B,K]}; `flip`: mirror a random half of the batch
  (config.data.random_flip). Returns (new state, {"loss", "grad_norm"})."""
  step_key = jax.random.fold_in(key, state.step)
  if flip:
    batch = dict(batch, image=random_flip(batch["image"],
                                          jax.random.fold_in(step_key, FLIP_STREAM)))
  loss, grads = jax.value_and_grad(
      lambda p: _loss(model, schedule, diffusion_config, p, batch, step_key, True))(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  updates = jax.tree.map(lambda u: u * state.plateau.scale, updates)  # Plateau-reduced lr.
  params = optax.apply_updates(state.params, updates)
  new_state = state.replace(step=state.step + 1, params=params,
                            ema_params=ema_update(state.ema_params, params, state.step,
                                                  ema_decay, ema_std),
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
  step = xla.jit(functools.partial(train_step, tx=tx, ema_decay=config.optim.ema_decay,
                                   ema_std=config.optim.ema_std,
                                   flip=bool(config.data.random_flip), **common),
                 donate_argnums=(0,))
  evaluate = xla.jit(functools.partial(eval_step, **common))
  return model, schedule, tx, step, evaluate
