"""train_step / eval_step: learning, CFG dropout, determinism, a golden loss."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxddpm import train


def _batch(config, B=8, seed=0):
  rng = np.random.default_rng(seed)
  s = config.data.image_size
  images = rng.integers(0, 256, (B, s, s, config.data.channels), dtype=np.uint8)
  labels = np.arange(B) % config.data.num_classes
  return {"image": jnp.asarray(images), "label": jnp.asarray(labels, jnp.int32)}


_COMPILED = {}


def _setup(config, seed=0):
  """make_steps + init, shared between tests with the same config (compiling a
  train step takes seconds on the CPU; the tests need not pay for it each time)."""
  cache_key = (config.to_json(), seed)
  if cache_key not in _COMPILED:
    model, schedule, tx, step, evaluate = train.make_steps(config)
    params = train.init_params(model, config, jax.random.key(seed))
    _COMPILED[cache_key] = model, schedule, tx, step, evaluate, params
  model, schedule, tx, step, evaluate, params = _COMPILED[cache_key]
  return model, schedule, tx, step, evaluate, jax.tree.map(jnp.copy, params)


def test_loss_falls_when_overfitting_a_fixed_batch(tiny_config):
  _, _, tx, step, evaluate, params = _setup(tiny_config)
  state = train.create_train_state(params, tx)
  batch, key, eval_key = _batch(tiny_config), jax.random.key(1), jax.random.key(2)
  before = float(evaluate(state.params, batch, eval_key)["loss"])
  for _ in range(150):
    state, metrics = step(state, batch, key)
  after = float(evaluate(state.params, batch, eval_key)["loss"])
  assert int(state.step) == 150
  assert np.isfinite(float(metrics["grad_norm"]))
  # On the same noise draws (a fixed key): 0.384 -> 0.296 when written. A wrong
  # gradient sign raises it, updates that never reach the params leave it.
  assert after < 0.85 * before, (before, after)


def test_labels_do_not_affect_gradient_when_always_dropped(tiny_config):
  # The config's own p_uncond (0.1) for the warm-up steps: the shared compiled step.
  model, schedule, tx, step, _, params = _setup(tiny_config)
  batch = _batch(tiny_config)
  # A few steps first: at init the zero-initialised layers hide the labels' effect.
  state = train.create_train_state(params, tx)
  for _ in range(3):
    state, _ = step(state, batch, jax.random.key(0))
  other = dict(batch, label=(batch["label"] + 1) % tiny_config.data.num_classes)
  # Sanity: with most labels kept (p_uncond 0.1, the same step) they do matter.
  copy = lambda: jax.tree.map(jnp.copy, state)
  kept = [step(copy(), b, jax.random.key(3))[0].params for b in (batch, other)]
  assert max(float(jnp.abs(a - b).max()) for a, b in
             zip(jax.tree.leaves(kept[0]), jax.tree.leaves(kept[1]))) > 1e-6
  tiny_config.diffusion.p_uncond = 1.0
  grad = jax.jit(jax.grad(lambda p, b: train._loss(model, schedule, tiny_config.diffusion, p,
                                                   b, jax.random.key(3), True)))
  g1, g2 = grad(state.params, batch), grad(state.params, other)
  for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_same_key_same_state(tiny_config):
  _, _, tx, step, _, params = _setup(tiny_config)
  batch = _batch(tiny_config)
  # The step donates its input state: build one state per call.
  fresh = lambda: train.create_train_state(jax.tree.map(jnp.copy, params), tx)
  a, _ = step(fresh(), batch, jax.random.key(7))
  b, _ = step(fresh(), batch, jax.random.key(7))
  c, _ = step(fresh(), batch, jax.random.key(8))
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  assert any(float(jnp.abs(x - y).max()) > 0 for x, y in
             zip(jax.tree.leaves(a.params), jax.tree.leaves(c.params)))


def test_random_flips_mirror_a_random_half_inside_the_step(tiny_config):
  """Each image comes out either as it was or mirrored left-right (never anything
  else), about half of them mirrored, the same ones for the same key; and a step
  with flips is the plain step on the batch its key mirrors."""
  images = jnp.asarray(np.random.default_rng(0).integers(0, 256, (64, 8, 8, 1), np.uint8))
  key = jax.random.key(5)
  out = np.asarray(train.random_flip(images, key))
  same = (out == np.asarray(images)).all((1, 2, 3))
  mirrored = (out == np.asarray(images)[:, :, ::-1]).all((1, 2, 3))
  assert (same ^ mirrored).all()  # Random images are never their own mirror.
  assert 16 <= mirrored.sum() <= 48  # Binomial(64, ½): outside this 1 time in 10^4.
  np.testing.assert_array_equal(np.asarray(train.random_flip(images, key)), out)
  assert (np.asarray(train.random_flip(images, jax.random.key(6))) != out).any()

  model, schedule, tx, step, _, params = _setup(tiny_config)
  flip_step = jax.jit(lambda s, b, k: train.train_step(
      s, b, k, model=model, schedule=schedule, tx=tx, diffusion_config=tiny_config.diffusion,
      ema_decay=tiny_config.optim.ema_decay, flip=True))
  fresh = lambda: train.create_train_state(jax.tree.map(jnp.copy, params), tx)
  batch, k = _batch(tiny_config), jax.random.key(9)
  flipped = train.random_flip(batch["image"], jax.random.fold_in(jax.random.fold_in(k, 0),
                                                                 train.FLIP_STREAM))
  assert (np.asarray(flipped) != np.asarray(batch["image"])).any()
  a, _ = flip_step(fresh(), batch, k)
  b, _ = step(fresh(), dict(batch, image=flipped), k)
  for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-6, atol=1e-7)


def test_ema_tracks_params(tiny_config):
  # The config's own decay (0.999): the same compiled step as the other tests here.
  _, _, tx, step, _, params = _setup(tiny_config)
  state = train.create_train_state(params, tx)
  old = jax.tree.map(jnp.copy, state.params)
  state, _ = step(state, _batch(tiny_config), jax.random.key(0))
  # Step 0: decay min(0.999, 1/10) = 0.1, so ema = 0.1·old + 0.9·new.
  for e, o, n in zip(jax.tree.leaves(state.ema_params), jax.tree.leaves(old),
                     jax.tree.leaves(state.params)):
    np.testing.assert_allclose(np.asarray(e), 0.1 * np.asarray(o) + 0.9 * np.asarray(n),
                               rtol=1e-5, atol=1e-6)
  # Later the configured decay caps the warm-up one: min(0.5, 101/110) = 0.5.
  ema, new = {"w": jnp.float32(2.0)}, {"w": jnp.float32(4.0)}
  assert float(train.ema_update(ema, new, jnp.float32(100), 0.5)["w"]) == 3.0
  assert float(train.ema_update(ema, new, jnp.float32(0), 0.5)["w"]) == np.float32(0.1 * 2 + 0.9 * 4)


@pytest.mark.parametrize("std", [0.05, 0.1, 0.2])
def test_power_ema_gamma_matches_profile_std(std):
  """γ solves the cubic: the profile t^γ on [0, 1] (density (γ+1)t^γ) has mean
  (γ+1)/(γ+2) and E[t²] = (γ+1)/(γ+3); their variance must be std², and the
  published pairs hold (Karras et al. 2024: σ_rel 0.05 ↔ γ 16.97, 0.10 ↔ 6.94)."""
  g = train.power_ema_gamma(std)
  mean, second = (g + 1) / (g + 2), (g + 1) / (g + 3)
  assert np.sqrt(second - mean ** 2) == pytest.approx(std, rel=1e-9)
  assert train.power_ema_gamma(0.05) == pytest.approx(16.97, abs=0.01)
  assert train.power_ema_gamma(0.10) == pytest.approx(6.94, abs=0.01)


def test_power_ema_averages_with_profile_weights():
  """Fed the one-hot vectors e_1..e_N as params, the EMA holds the weight each
  step got. Unrolled by hand, step i keeps (1 - β_i)·(i/N)^(γ+1), since
  Π_{j>i} β_j = Π ((j-1)/j)^(γ+1) telescopes; the weights sum to 1 and their
  spread over i/N is the requested share of the run."""
  n, std = 400, 0.1
  g = train.power_ema_gamma(std)
  ema = {"w": jnp.zeros(n)}
  eye = jnp.eye(n)
  for step in range(n):  # step is 0-based: the update after params e_{step+1}.
    ema = train.ema_update(ema, {"w": eye[step]}, jnp.int32(step), decay=0.999, std=std)
  w = np.asarray(ema["w"], np.float64)
  i = np.arange(1, n + 1)
  want = (1 - (1 - 1 / i) ** (g + 1)) * (i / n) ** (g + 1)
  np.testing.assert_allclose(w, want, rtol=1e-4, atol=1e-9)
  assert w.sum() == pytest.approx(1.0, abs=1e-5)  # The init (step 0's β = 0) has no weight.
  u = i / n
  m = (w * u).sum()
  assert np.sqrt((w * (u - m) ** 2).sum()) == pytest.approx(std, rel=0.03)


def test_fixed_decay_warm_up_is_a_power_ema_of_gamma_8():
  """Before `decay` caps it, the warm-up 1 - 9/(n+10) keeps step i's weight
  (1 - β_i)·Π_{j>i} β_j ∝ i^8 for large i: the profile of a power EMA with γ = 8,
  std sqrt(9 / (10² · 11)) ≈ 0.0905 of the run (what base.py says of ema_decay)."""
  n = 400
  ema, eye = {"w": jnp.zeros(n)}, jnp.eye(n)
  for step in range(n):
    ema = train.ema_update(ema, {"w": eye[step]}, jnp.int32(step), decay=0.999)
  w = np.asarray(ema["w"], np.float64)
  u = np.arange(1, n + 1) / n
  m = (w * u).sum() / w.sum()
  spread = np.sqrt((w * (u - m) ** 2).sum() / w.sum())
  assert spread == pytest.approx(np.sqrt(9 / (100 * 11)), rel=0.05)
  assert train.power_ema_gamma(np.sqrt(9 / 1100)) == pytest.approx(8.0, abs=1e-6)


def test_cosine_decay_schedule_values():
  """Warm-up to the peak, then lr·(1 + cos(π·s/S))/2 over the S decay steps: half
  the peak midway, 0 at decay_steps (hand-computed)."""
  optim = ml_collections.ConfigDict(dict(lr=1e-3, warmup_steps=100, decay_steps=1100))
  lr = train.lr_schedule(optim)
  assert float(lr(50)) == pytest.approx(5e-4)
  assert float(lr(100)) == pytest.approx(1e-3)
  assert float(lr(600)) == pytest.approx(5e-4, rel=1e-5)
  assert float(lr(350)) == pytest.approx(1e-3 * (1 + np.cos(np.pi / 4)) / 2, rel=1e-5)
  assert float(lr(1100)) == pytest.approx(0.0, abs=1e-12)


def test_plateau_scale_multiplies_the_parameter_updates(tiny_config):
  """ReduceLROnPlateau's scale must reach the update, not only the bookkeeping.
  Adam's first update of a parameter is lr·g/(|g| + 1e-8) = lr·sign(g) (m̂ = g,
  v̂ = g²) whatever the model: with lr 0.01 the one weight of a linear model must
  move by exactly 0.01·scale, against its gradient."""
  import flax.linen as nn

  from jaxddpm import schedules

  class Linear(nn.Module):
    @nn.compact
    def __call__(self, x, t, labels, use_labels, train=False):
      return x * self.param("w", nn.initializers.constant(0.3), ())

  model = Linear()
  tiny_config.optim.update(lr=0.01, warmup_steps=0)
  tx = train.make_optimizer(tiny_config.optim)
  params = {"w": jnp.float32(0.3)}
  batch = _batch(tiny_config)
  kw = dict(model=model, schedule=schedules.from_config(tiny_config.diffusion),
            tx=tx, diffusion_config=tiny_config.diffusion, ema_decay=0.999)
  step = jax.jit(lambda state: train.train_step(state, batch, jax.random.key(0), **kw))
  moved = {}
  for scale in (1.0, 0.25):
    state = train.create_train_state(params, tx)
    state = state.replace(plateau=state.plateau._replace(scale=jnp.float32(scale)))
    moved[scale] = float(step(state)[0].params["w"]) - 0.3
  grad = jax.grad(lambda p: train._loss(model, kw["schedule"], tiny_config.diffusion, p, batch,
                                        jax.random.fold_in(jax.random.key(0), 0), True))(params)
  for scale, delta in moved.items():
    assert delta == pytest.approx(-0.01 * scale * np.sign(float(grad["w"])), rel=1e-4), moved


def test_golden_one_step_loss(tiny_config):
  """A regression pin: the losses of the first two steps for a fixed init, batch
  and key, as the code once produced them. If a change moves them on purpose (new
  init, new loss), update the numbers in the same commit. Beside it, the first
  loss from the objective's definition: the zero-initialised UNet outputs 0, so
  the loss is mean_b w_b·mean((√ᾱ_b·ε - √(1-ᾱ_b)·x_0)²) with the min-SNR weight
  of v, w = min(SNR, γ)/(SNR + 1), on the draws the step's key makes (t, then ε,
  from split(fold_in(key, step), 4)) and the cosine ᾱ from its formula."""
  _, _, tx, step, _, params = _setup(tiny_config)
  batch = _batch(tiny_config)
  state, first = step(train.create_train_state(params, tx), batch, jax.random.key(0))
  _, second = step(state, batch, jax.random.key(0))
  np.testing.assert_allclose(float(first["loss"]), GOLDEN_FIRST_LOSS, rtol=1e-4)
  np.testing.assert_allclose(float(second["loss"]), GOLDEN_SECOND_LOSS, rtol=1e-4)

  d, T = tiny_config.diffusion, tiny_config.diffusion.num_timesteps
  assert (d.schedule, d.prediction, d.loss_weighting) == ("cosine", "v", "min_snr")
  f = lambda t: np.cos((t / T + d.cosine_s) / (1 + d.cosine_s) * np.pi / 2) ** 2
  betas = np.minimum(1 - f(np.arange(1, T + 1)) / f(np.arange(T)), d.max_beta)
  alpha_bars = np.cumprod(1 - betas)
  k_t, k_noise, _, _ = jax.random.split(jax.random.fold_in(jax.random.key(0), 0), 4)
  x0 = np.asarray(batch["image"], np.float64) / 127.5 - 1
  t = np.asarray(jax.random.randint(k_t, (len(x0),), 0, T))
  eps = np.asarray(jax.random.normal(k_noise, x0.shape, jnp.float32), np.float64)
  ab = alpha_bars[t][:, None, None, None]
  v = np.sqrt(ab) * eps - np.sqrt(1 - ab) * x0
  snr = alpha_bars[t] / (1 - alpha_bars[t])
  want = np.mean(np.minimum(snr, d.min_snr_gamma) / (snr + 1) * np.mean(v**2, axis=(1, 2, 3)))
  np.testing.assert_allclose(float(first["loss"]), want, rtol=1e-5)


def test_adaptive_weighting_starts_as_the_base_loss_and_learns_only_its_layer(tiny_config):
  """u starts at 0, where l·e^(-u) + u has l's value and l's gradient in the
  network: the first step must move the network exactly as the base loss does,
  and move u's layer (whose gradient, 1 - l, is not 0). Validation reports the
  plain weighted loss whatever u is."""
  from jaxddpm import diffusion
  _, _, tx, step, evaluate, params = _setup(tiny_config)
  batch = _batch(tiny_config)
  plain, m_plain = step(train.create_train_state(params, tx), batch, jax.random.key(0))
  tiny_config.diffusion.adaptive_weighting = True
  _, _, tx_a, step_a, evaluate_a, params_a = _setup(tiny_config)
  assert set(params_a) == set(params) | {diffusion.ADAPTIVE_KEY}
  assert not any(np.any(np.asarray(x)) for x in jax.tree.leaves(params_a[diffusion.ADAPTIVE_KEY]))
  adaptive, m_adaptive = step_a(train.create_train_state(params_a, tx_a), batch,
                                jax.random.key(0))
  np.testing.assert_allclose(float(m_adaptive["loss"]), float(m_plain["loss"]), rtol=1e-6)
  net = {k: v for k, v in adaptive.params.items() if k != diffusion.ADAPTIVE_KEY}
  for a, b in zip(jax.tree.leaves(net), jax.tree.leaves(plain.params), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
  assert float(jnp.abs(adaptive.params[diffusion.ADAPTIVE_KEY]["bias"])) > 1e-4
  # Validation: the same number with or without u's layer (and whatever its values).
  moved = dict(adaptive.params, **{diffusion.ADAPTIVE_KEY: {
      "kernel": jnp.full((64,), 0.5), "bias": jnp.float32(2.0)}})
  np.testing.assert_allclose(float(evaluate_a(moved, batch, jax.random.key(5))["loss"]),
                             float(evaluate(net, batch, jax.random.key(5))["loss"]), rtol=1e-6)


GOLDEN_FIRST_LOSS = 0.236853
GOLDEN_SECOND_LOSS = 0.256554


@pytest.mark.parametrize("overrides,match", [
    ({"optim.lr": 0.0}, "lr"),
    ({"optim.optimizer": "sgd"}, "optimizer"),
    ({"diffusion.p_uncond": 1.5}, "p_uncond"),
    ({"diffusion.prediction": "score"}, "prediction"),
    ({"diffusion.sigma_data": -0.5}, "sigma_data must be a number > 0"),
    ({"diffusion.loss_weighting": "p2"}, "weighting"),
    ({"diffusion.schedule": "sigmoid"}, "schedule"),
    ({"diffusion.zero_terminal_snr": True, "diffusion.prediction": "eps"}, "zero_terminal_snr"),
])
def test_bad_config_values(tiny_config, overrides, match):
  for path, value in overrides.items():
    section, field = path.split(".")
    tiny_config[section][field] = value
  with pytest.raises(ValueError, match=match):
    train.make_steps(tiny_config)


def test_bfloat16_compute_loss_tracks_float32(tiny_config):
  """bf16 activations, float32 params and optimizer state: the same 5 steps give
  losses within a few percent of float32's, and the params stay float32."""
  losses = {}
  for dtype in ("float32", "bfloat16"):
    c = tiny_config.copy_and_resolve_references()
    c.model.dtype = dtype
    _, _, tx, step, _, params = _setup(c)
    state = train.create_train_state(params, tx)
    batch = _batch(c)  # The other tests' batch size: float32's compiled step is theirs.
    out = []
    for i in range(5):
      state, m = step(state, batch, jax.random.key(i))
      out.append(float(m["loss"]))
    losses[dtype] = np.array(out)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(state.params))
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(state.opt_state)
               if hasattr(p, "dtype") and jnp.issubdtype(p.dtype, jnp.floating))
  np.testing.assert_allclose(losses["bfloat16"], losses["float32"], rtol=0.05)
