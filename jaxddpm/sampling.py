"""DDPM and DDIM samplers with classifier-free guidance, as one `jax.lax.scan`.

Why sampling here does not explode the way the seed's did: every step goes
through the predicted clean image x̂_0, which is clipped to the data range [-1, 1]
(and ε̂ re-derived from it) before the update. The seed's update
x_{t-1} = (x_t - β_t/sqrt(1-ᾱ_t) ε̂)/sqrt(α_t) multiplies any error in ε̂ by
1/sqrt(α_t), which is ~32 at the last cosine step (β clipped at 0.999), and CFG
scales the error by s first; nothing brought x_t back.
"""

from __future__ import annotations

import functools
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import errors as flax_errors

from jaxddpm import diffusion, parallel, xla
from jaxddpm import schedules as schedules_lib
from jaxddpm.guidance import (DenoiseFn, guided_prediction, guided_steps, load_guide,
                              make_denoisers, make_guide_fn, onset_steps,
                              onset_timesteps)

SAMPLERS = ("ddpm", "ddim", "dpmpp_2m")
VARIANCES = ("small", "large")


def check_options(*, sampler: str, steps: int, num_train_steps: int, eta: float,
                  guidance_scale, prediction: str, variance: str,
                  guidance_interval=(), spacing: str = "uniform") -> None:
  """ValueError for any sampler option a user can get wrong."""
  if sampler not in SAMPLERS:
    raise ValueError(f"unknown sampler {sampler!r}; choose one of {SAMPLERS}.")
  schedules_lib.check_spacing(spacing)
  if variance not in VARIANCES:
    raise ValueError(f"unknown DDPM variance {variance!r}; choose one of {VARIANCES}.")
  diffusion.check_prediction(prediction)
  if not isinstance(steps, (int, np.integer)) or not 1 <= steps <= num_train_steps:
    raise ValueError(f"steps must be an int in [1, T={num_train_steps}], got {steps!r}.")
  if not eta >= 0:
    raise ValueError(f"eta must be >= 0, got {eta}.")
  if isinstance(guidance_scale, (int, float)) and not guidance_scale >= 0:
    raise ValueError(f"guidance_scale must be >= 0 (1 = conditional, 0 = unconditional), "
                     f"got {guidance_scale}.")
  interval = tuple(guidance_interval or ())
  if interval and not (len(interval) == 2
                       and all(isinstance(v, (int, float, np.integer, np.floating))
                               and not isinstance(v, bool) for v in interval)
                       and 0 <= interval[0] < interval[1]):
    raise ValueError(f"guidance_interval must be () (guidance at every step) or two noise "
                     f"levels (sigma_low, sigma_high) with 0 <= sigma_low < sigma_high, got "
                     f"{guidance_interval!r}.")


def dpm_solver_coefficients(alpha_bars, first_order=None) -> dict[str, np.ndarray]:
  """DPM-Solver++(2M) (Lu et al. 2022, Alg. 2) as per-step constants, float32 [S].

  With λ = log(sqrt(ᾱ)/sqrt(1-ᾱ)) and h = λ_{i-1} - λ_i, the step i -> i-1 is
    x_{i-1} = (σ_{i-1}/σ_i)·x_i - sqrt(ᾱ_{i-1})·(e^{-h} - 1)·D,
    D = (1 + 1/(2r))·x̂0_i - 1/(2r)·x̂0_{i+1},  r = h_{i+1}/h_i,
  first order (D = x̂0_i) at the first step (no history), the last one (to
  ᾱ = 1, where h is infinite) and the one before it, into the smallest kept
  timestep ("lower order final"; why: below), and at the steps where
  `first_order` (bool [S]) is set: where the denoiser itself changes, as
  guidance switches on, x̂0_{i+1} is another function's and the extrapolation
  from it is wrong (sample_loop sets them; see step_schedule). Computed in float64
  where the infinities of λ at ᾱ ∈ {0, 1} resolve to finite coefficients.
  """
  ab = np.asarray(alpha_bars, np.float64)
  ab_prev = np.concatenate([[1.0], ab[:-1]])
  with np.errstate(divide="ignore", invalid="ignore"):
    lam = 0.5 * (np.log(ab) - np.log1p(-ab))
    lam_prev = 0.5 * (np.log(ab_prev) - np.log1p(-ab_prev))
    h = lam_prev - lam
    c_x = np.sqrt(1.0 - ab_prev) / np.sqrt(1.0 - ab)
    c_0 = -np.sqrt(ab_prev) * np.expm1(-h)
    h_last = np.concatenate([lam[:-1] - lam[1:], [np.nan]])  # h of the step before.
    w_last = -1.0 / (2.0 * (h_last / h))
  w_last[~np.isfinite(w_last)] = 0.0  # No history, or an infinite step: first order.
  # First order also into t = 0, nearly clean: with evenly spread timesteps that
  # step's λ-jump is ~4x the one before (cosine, 20 steps: 2.7 after 0.62), so 2M
  # would weight x̂0 by 3.2 and the previous x̂0 by -2.2, amplifying the model's
  # errors into speckle. On Gaussian data (exact denoiser) it then overshot the std
  # and was worse than DDIM at 50 steps (tests/test_sampling.py pins both).
  w_last[:2] = 0.0
  if first_order is not None:
    w_last[np.asarray(first_order, bool)] = 0.0
  f32 = lambda a: np.asarray(a, np.float32)
  return dict(c_x=f32(c_x), c_0=f32(c_0), w_cur=f32(1.0 - w_last), w_last=f32(w_last))


def _step_update(sched, i, x_t, x0, eps, noise, *, sampler, eta, variance):
  """x_{i-1} from (x̂_0, ε̂) at respaced index i."""
  ab, ab_prev = sched.alpha_bars[i], sched.alpha_bars_prev[i]
  if sampler == "ddpm":
    mean = sched.posterior_mean_coef1[i] * x0 + sched.posterior_mean_coef2[i] * x_t
    log_var = (sched.posterior_log_variance_clipped if variance == "small"
               else sched.large_log_variance)[i]
    # No noise on the last step: x_{-1} is the sample itself.
    return mean + jnp.where(i > 0, jnp.exp(0.5 * log_var), 0.0) * noise
  # DDIM (Song et al. 2021, eq. 12); sigma = 0 at i = 0 since ᾱ_{-1} = 1.
  sigma = eta * jnp.sqrt((1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev))
  direction = jnp.sqrt(jnp.maximum(1 - ab_prev - sigma**2, 0.0))
  return jnp.sqrt(ab_prev) * x0 + direction * eps + sigma * noise


def sample_loop(
    denoise_fn: DenoiseFn,
    schedule: schedules_lib.Schedule,
    key: jax.Array,
    labels,
    shape: tuple[int, int, int],
    *,
    sampler: str = "ddim",
    steps: int = 50,
    spacing: str = "uniform",
    eta: float = 0.0,
    guidance_scale=1.0,
    guidance_interval=(),
    prediction: str = "eps",
    sigma_data: float = diffusion.SIGMA_DATA,
    clip_x0: bool = True,
    variance: str = "small",
    return_trajectory: bool = False,
    return_stats: bool = False,
    batch_sharding=None,
    guided_fn=None,
    guide_fn=None,
):
  """Runs the reverse process from x_T ~ N(0, I) as one `lax.scan` over steps.

  Args:
    denoise_fn: `denoise_fn(x_t, t, labels, use_labels) -> prediction`, with t the
      training timestep int [B] and use_labels bool [B] (False = unconditional).
    schedule: the training schedule (all T steps, concrete); respaced here to `steps`.
    key: PRNG key; x_T and each step's noise are derived from it.
    labels: int [B] classes or float [B, K] attributes.
    shape: (H, W, C) of one image.
    sampler: "ddpm" (ancestral), "ddim" (eta = 0 deterministic, 1 ≈ DDPM) or
      "dpmpp_2m" (DPM-Solver++(2M), deterministic, good in 10-20 steps).
    steps: number of denoising steps, 1..T.
    spacing: which training timesteps the steps visit: "uniform" (evenly spread)
      or "logsnr" (λ evenly spread; see schedules.SPACINGS).
    eta: DDIM stochasticity.
    guidance_scale: CFG scale s >= 0; may be a traced scalar (for vmap sweeps).
    guidance_interval: () to guide every step, or (σ_low, σ_high): guide only the
      steps whose noise level σ = sqrt((1-ᾱ)/ᾱ) is in (σ_low, σ_high] and use the
      conditional prediction at the others (one network pass there, not two).
      DPM-Solver++ with log-SNR steps and s >= 2 then steps from where guidance
      switches on (step_schedule).
    prediction: what denoise_fn predicts: "eps", "x0", "v" or "edm" (which also
      scales denoise_fn's input x_t by c_in; see diffusion.py).
    sigma_data: σ_d of the "edm" prediction.
    clip_x0: clip x̂_0 to [-1, 1] and re-derive ε̂ from it.
    variance: DDPM variance, "small" (β̃_t) or "large" (β_t).
    return_trajectory: also return per-step states and statistics.
    return_stats: also return the per-step statistics only (cheap).
    batch_sharding: a sharding for x_t's batch axis (data parallel sampling);
      the numbers drawn do not depend on it.
    guided_fn: optional `guided_fn(x_t, t, labels, s)` -> the guided prediction in
      one call (see `guided_prediction`); the same numbers up to rounding.
    guide_fn: autoguidance: `guide_fn(x_t, t, labels)` -> a weaker model's
      conditional prediction (same `prediction` type), which then takes the place of
      the unconditional one: guide + s·(cond - guide) (see `guided_prediction`).
      The guidance interval applies to it as to CFG.
  Returns:
    Samples float32 [B, H, W, C]. With return_stats, (samples, info) where info
    holds "std", "max_abs" (of x_t) and "clip_fraction" (of x̂_0 outside [-1, 1])
    [S] (S = steps, from noisiest) and "timesteps" [S]; return_trajectory adds
    "x_t" and "x0_pred" [S, B, H, W, C].
  """
  check_options(sampler=sampler, steps=steps, num_train_steps=schedule.num_steps, eta=eta,
                guidance_scale=guidance_scale, prediction=prediction, variance=variance,
                guidance_interval=guidance_interval, spacing=spacing)
  if len(shape) != 3:
    raise ValueError(f"shape must be one image's (H, W, C), got {shape}.")
  labels = jnp.asarray(labels)
  if labels.ndim not in (1, 2) or labels.shape[0] == 0:
    raise ValueError(f"labels must be int [B] or float [B, K] with B >= 1, got {labels.shape}.")
  # Respacing is NumPy work on the concrete schedule; this keeps it out of the
  # trace when sample_loop runs inside jit (the schedule then enters as constants).
  python_scale = isinstance(guidance_scale, (int, float))
  with jax.ensure_compile_time_eval():
    sched = step_schedule(schedule, steps, spacing=spacing, sampler=sampler,
                          guidance_scale=guidance_scale, guidance_interval=guidance_interval)
  if prediction == "eps" and np.asarray(sched.alpha_bars)[-1] == 0.0:
    raise ValueError("eps-prediction is undefined where ᾱ = 0 (zero terminal SNR); "
                     "use prediction 'v' or 'x0' with zero_terminal_snr.")
  B = labels.shape[0]
  k_init, k_steps = jax.random.split(key)
  x_T = jax.random.normal(k_init, (B, *shape), jnp.float32)
  if batch_sharding is not None:
    x_T = jax.lax.with_sharding_constraint(x_T, batch_sharding)

  needs_noise = sampler == "ddpm" or (sampler == "ddim" and eta > 0)
  guided = guided_steps(sched.alpha_bars, guidance_interval)
  dpm = None
  if sampler == "dpmpp_2m":
    first_order = (onset_steps(sched.alpha_bars, guidance_interval)
                   if takes_onset_step(sampler, spacing, guidance_scale, guidance_interval)
                   else None)
    dpm = {k: jnp.asarray(v)
           for k, v in dpm_solver_coefficients(sched.alpha_bars, first_order).items()}

  def predict(x_t, t_B, i):
    # float32 both: the branches of a lax.cond must agree (bf16 models, traced s).
    full = lambda: guided_prediction(  # noqa: E731
        denoise_fn, x_t, t_B, labels, guidance_scale, guided_fn, guide_fn).astype(jnp.float32)
    cond = lambda: guided_prediction(  # noqa: E731
        denoise_fn, x_t, t_B, labels, 1).astype(jnp.float32)
    if guided.all() or (python_scale and guidance_scale == 1):
      return full()
    if not guided.any():
      return cond()
    # A cond, not a select: the steps outside the interval skip the second pass.
    return jax.lax.cond(jnp.asarray(guided)[i], full, cond)

  def body(carry, i):
    x_t, x0_last = carry  # x0_last: the previous step's x̂_0 (DPM-Solver++ history).
    t_B = jnp.full((B,), sched.timesteps[i])
    ab_B = jnp.full((B,), sched.alpha_bars[i])
    x_in = diffusion.model_input(x_t, ab_B, prediction, sigma_data)
    x0, eps = diffusion.to_x0_eps(predict(x_in, t_B, i), x_t, ab_B, prediction, sigma_data)
    clip_fraction = jnp.mean((jnp.abs(x0) > 1.0).astype(jnp.float32))
    if clip_x0:
      x0 = jnp.clip(x0, -1.0, 1.0)
      eps = diffusion.eps_from_x0(x0, x_t, ab_B)
    if dpm is not None:
      d = dpm["w_cur"][i] * x0 + dpm["w_last"][i] * x0_last
      x_prev = dpm["c_x"][i] * x_t + dpm["c_0"][i] * d
    else:
      noise = (jax.random.normal(jax.random.fold_in(k_steps, i), x_t.shape, jnp.float32)
               if needs_noise else jnp.zeros_like(x_t))
      x_prev = _step_update(sched, i, x_t, x0, eps, noise, sampler=sampler, eta=eta,
                            variance=variance)
    stats = dict(std=jnp.std(x_t), max_abs=jnp.max(jnp.abs(x_t)),
                 clip_fraction=clip_fraction)
    if return_trajectory:
      stats.update(x_t=x_t, x0_pred=x0)
    return (x_prev, x0), stats

  indices = jnp.arange(sched.num_steps - 1, -1, -1)
  (samples, _), info = jax.lax.scan(body, (x_T, jnp.zeros_like(x_T)), indices)
  if not (return_trajectory or return_stats):
    return samples
  info["timesteps"] = sched.timesteps[indices]
  return samples, info


# The onset step (step_schedule) only where it measured better on the Fashion-MNIST
# :cpu model: with log-SNR steps at guidance 2 and above, not at 1.5 (the jump
# grows with s - 1, the first-order step's cost does not), and never with uniform
# steps (docs/sampling.md, "Where guidance switches on").
ONSET_STEP_SPACING = "logsnr"
ONSET_STEP_MIN_SCALE = 2.0


def takes_onset_step(sampler: str, spacing: str, guidance_scale, guidance_interval) -> bool:
  """Whether DPM-Solver++ steps from the guidance onset at first order (step_schedule)."""
  return (sampler == "dpmpp_2m" and spacing == ONSET_STEP_SPACING and bool(guidance_interval)
          and isinstance(guidance_scale, (int, float))
          and guidance_scale >= ONSET_STEP_MIN_SCALE)


def step_schedule(schedule: schedules_lib.Schedule, steps: int, *, spacing: str = "uniform",
                  sampler: str = "ddim", guidance_scale=1.0,
                  guidance_interval=()) -> schedules_lib.Schedule:
  """The respaced schedule a sampler walks: `steps` timesteps by `spacing`, and for
  DPM-Solver++ with log-SNR steps and guidance >= 2 in an interval
  (takes_onset_step), the timestep where guidance switches on
  (guidance.onset_timesteps) in place of its nearest.

  Why: the guided prediction jumps there by (s - 1)·(cond - uncond), and a
  second-order step across the jump extrapolates from the unguided side's x̂_0.
  Stepping from the onset itself, at first order (sample_loop), keeps each step on
  one smooth piece (docs/results.md, "Samplers: step error"). Where
  guidance switches off, at σ = 0.28, the predictions have nearly met, and a
  first-order restart there cost more than it saved. DDIM is first order anyway.
  """
  keep = ()
  if takes_onset_step(sampler, spacing, guidance_scale, guidance_interval):
    keep = onset_timesteps(schedule.alpha_bars, guidance_interval)
  return schedules_lib.respace(schedule, steps, spacing, keep)


def resolve_options(config, overrides: dict) -> dict:
  """config.sampling with `overrides` applied and checked (ValueError for an unknown
  option or a bad value)."""
  opts = dict(config.sampling)
  unknown = sorted(set(overrides) - set(opts))
  if unknown:
    raise ValueError(f"unknown sampling option(s) {unknown}; known: {sorted(opts)}.")
  opts.update(overrides)
  opts["guidance_interval"] = tuple(opts.get("guidance_interval") or ())  # JSON: a list.
  # Configs made before these options existed: their behaviour then.
  opts["guide_workdir"] = opts.get("guide_workdir") or ""
  opts["spacing"] = opts.get("spacing") or "uniform"
  check_options(sampler=opts["sampler"], steps=opts["steps"],
                num_train_steps=config.diffusion.num_timesteps, eta=opts["eta"],
                guidance_scale=opts["guidance_scale"],
                prediction=config.diffusion.prediction, variance=opts["variance"],
                guidance_interval=opts["guidance_interval"], spacing=opts["spacing"])
  return opts


def settings_name(opts: dict) -> str:
  """A file-name part for sampler settings: e.g. ddim50_g2, ddim50_g2_eta1,
  dpmpp_2m20_logsnr_g2, ddim50_g3_i0.28-5.42, ddim50_g2.5_ag-guide_mnist
  (autoguidance by the run in .../guide_mnist). Settings that differ get names
  that differ."""
  name = f"{opts['sampler']}{opts['steps']}"
  if opts.get("spacing", "uniform") != "uniform":
    name += f"_{opts['spacing']}"
  name += f"_g{opts['guidance_scale']:g}"
  if opts["sampler"] == "ddim" and opts.get("eta"):
    name += f"_eta{opts['eta']:g}"
  if opts["sampler"] == "ddpm" and opts.get("variance", "small") != "small":
    name += f"_var-{opts['variance']}"
  if not opts.get("clip_x0", True):
    name += "_noclip"
  if opts.get("guidance_interval"):
    name += "_i{:g}-{:g}".format(*opts["guidance_interval"])
  if opts.get("guide_workdir"):
    name += "_ag-" + os.path.basename(os.path.normpath(opts["guide_workdir"]))
  return name


def make_sampler(config, *, with_stats: bool = False, with_trajectory: bool = False,
                 **overrides) -> Callable[[Any, jax.Array, Any], jnp.ndarray]:
  """The function scripts call: `images = sample(params, key, labels)`.

  Args:
    config: ConfigDict with data, model, diffusion and sampling sections.
    with_stats: sample returns (images, per-step stats) as sample_loop's
      return_stats does (for `diagnostics.py`).
    with_trajectory: sample returns (images, info) with every x_t and x̂_0 as
      sample_loop's return_trajectory does (for `pictures.py`).
    **overrides: any field of config.sampling (steps=20, guidance_scale=3.0, ...).
      guide_workdir="runs/guide" loads that run's model (once, here) and guides
      with it instead of the unconditional prediction (autoguidance).
  Returns:
    `sample(params, key, labels) -> float32 [B, H, W, C] in [-1, 1]`, compiled once
    per batch size. Labels are checked on the host (range, dtype, shape) first.
  """
  from jaxddpm import models  # Local: keeps sampling importable without Flax models.

  opts = resolve_options(config, overrides)
  model = models.build_model(config)
  schedule = schedules_lib.from_config(config.diffusion)
  shape = (config.data.image_size, config.data.image_size, config.data.channels)
  num_classes = config.data.num_classes
  guide_model, guide_params = load_guide(config, opts["guide_workdir"])

  mesh = parallel.make_mesh()
  n_devices = mesh.devices.size

  @functools.partial(xla.jit, static_argnums=(4,))
  def _sample(params, guide_params, key, labels, sharded):
    denoise_fn, guided_fn = make_denoisers(model, params)
    return sample_loop(
        denoise_fn, schedule, key, labels, shape,
        sampler=opts["sampler"], steps=opts["steps"], spacing=opts["spacing"], eta=opts["eta"],
        guidance_scale=opts["guidance_scale"], guidance_interval=opts["guidance_interval"],
        prediction=config.diffusion.prediction, sigma_data=config.diffusion.sigma_data,
        clip_x0=opts["clip_x0"], variance=opts["variance"], return_stats=with_stats,
        return_trajectory=with_trajectory,
        batch_sharding=parallel.batch_sharding(mesh) if sharded else None,
        guided_fn=guided_fn,
        guide_fn=make_guide_fn(guide_model, guide_params))

  def sample(params, key, labels):
    labels = check_labels(labels, num_classes)
    check_key(key)
    # Split the batch over the devices when it divides evenly (same numbers either way).
    sharded = n_devices > 1 and labels.shape[0] % n_devices == 0
    if sharded:
      labels = parallel.shard_batch(labels, mesh)
    try:
      return _sample(params, guide_params, key, labels, sharded)
    except _PARAMS_MISMATCH as e:
      # Raised while tracing, before anything runs: params from another model.
      raise ValueError(
          f"params do not fit this config's model ({config.model.name}, image "
          f"{'x'.join(map(str, shape))}): {str(e).split(' (https')[0]} Use the params "
          "and config of one run: config, params = jaxddpm.load_checkpoint(workdir).") from e

  return sample


# Flax's errors for params that are not this model's: raised while tracing, before
# anything runs (a wrong tree, a missing leaf or shape, an extra {"params": ...} layer).
_PARAMS_MISMATCH = (flax_errors.ScopeParamNotFoundError, flax_errors.ScopeParamShapeError,
                    flax_errors.ScopeVariableNotFoundError, flax_errors.ScopeCollectionNotFound,
                    flax_errors.ApplyScopeInvalidVariablesStructureError,
                    flax_errors.ApplyScopeInvalidVariablesTypeError)


def check_key(key) -> None:
  """ValueError unless `key` is one PRNG key: jax.random.key(seed) or the older
  jax.random.PRNGKey(seed) (uint32 [2]); JAX's own error comes from deep inside."""
  shape, dtype = getattr(key, "shape", None), getattr(key, "dtype", None)
  typed = dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)
  if not ((typed and shape == ()) or (not typed and dtype == jnp.uint32 and shape == (2,))):
    got = f"shape {shape} and dtype {dtype}" if shape is not None else repr(key)
    raise ValueError(f"key must be one PRNG key, e.g. jax.random.key(0), got "
                     f"{type(key).__name__} {got}.")


def check_labels(labels, num_classes: int) -> jnp.ndarray:
  """Host-side check of user labels: int [B] in [0, num_classes) or float [B, K]."""
  arr = np.asarray(labels)
  if arr.ndim == 1 and arr.size and np.issubdtype(arr.dtype, np.integer):
    if arr.min() < 0 or arr.max() >= num_classes:
      raise ValueError(f"labels must be in [0, {num_classes}), got values from "
                       f"{arr.min()} to {arr.max()}.")
    return jnp.asarray(arr, jnp.int32)
  if arr.ndim == 2 and arr.shape[0] and arr.shape[1] == num_classes:
    if not np.issubdtype(arr.dtype, np.number):
      raise ValueError(f"attribute labels must be numeric, got {arr.dtype}.")
    return jnp.asarray(arr, jnp.float32)
  raise ValueError(f"labels must be int class indices [B] or float attributes "
                   f"[B, {num_classes}], got dtype {arr.dtype} shape {arr.shape}.")

