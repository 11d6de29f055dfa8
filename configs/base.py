"""Base config: every field jaxddpm reads, with what it does and a sensible range.

Dataset configs (mnist.py, fmnist.py, ...) import this and override a few fields.
Override any field on the command line: `--config.sampling.guidance_scale=3`.
"""

import ml_collections

# Kynkäänniemi et al.'s (2024) EDM2 guidance interval, in the noise level
# sigma = sqrt((1-ᾱ)/ᾱ): the dataset configs that guide in an interval use this one.
EDM2_INTERVAL = (0.28, 5.42)


def get_config(arg=None):
  del arg  # Variants (":cpu", ":smoke") live in the dataset configs.
  config = ml_collections.ConfigDict()

  config.data = data = ml_collections.ConfigDict()
  data.dataset = "mnist"  # mnist | fashion_mnist | cifar10 | celeb_a.
  data.image_size = 28  # Height = width in pixels fed to the model.
  data.channels = 1  # 1 for MNIST-like, 3 for CIFAR-10 / CelebA.
  data.num_classes = 10  # Classes (one-hot), or K attributes (multi-hot, CelebA: 40).
  data.conditioning = "class"  # class (int labels [B]) | attributes (multi-hot [B, K]).
  data.dir = ""  # Offline folder (one sub-folder per dataset); "" = $JAXDDPM_DATA_DIR or TFDS.
  data.tfds_dir = ""  # TFDS data_dir; "" = TFDS's default (~/tensorflow_datasets).
  data.val_fraction = 0.1  # Share of train held out for validation; 0.05-0.2.
  data.max_train_examples = 0  # Use only the first N training images; 0 = all.
  # Mirror a random half of each batch left-right in the train step (on the device).
  # Doubles the data where mirror images are as likely (objects, faces); not digits,
  # nor Fashion-MNIST, whose shoes all point left (docs/results.md, "Training recipe
  # at the `:cpu` budget").
  data.random_flip = False

  config.model = model = ml_collections.ConfigDict()
  model.name = "unet"  # unet (default, ADM-style) | template (the seed's course U-Net).
  model.template_preset = "small"  # For name=template: small (32,64,128) | wide (64,128,256).
  model.base_channels = 64  # UNet width at full resolution; 32-128.
  model.channel_mults = (1, 2, 2)  # Width multiplier per level; len-1 halvings of the image.
  model.num_res_blocks = 2  # Residual blocks per level; 1-3.
  model.attention_resolutions = (14, 7)  # Pixel sizes with self-attention; must be levels.
  model.num_heads = 4  # Attention heads; must divide the channels there.
  model.dropout = 0.1  # Residual-block dropout in training; 0-0.3.
  model.dtype = "float32"  # Compute dtype: float32 | bfloat16 (params stay float32).

  config.diffusion = diffusion = ml_collections.ConfigDict()
  diffusion.schedule = "cosine"  # linear | cosine.
  diffusion.num_timesteps = 1000  # T training timesteps; 100-4000.
  diffusion.beta_start = 1e-4  # Linear schedule: β_0.
  diffusion.beta_end = 0.02  # Linear schedule: β_{T-1}.
  diffusion.cosine_s = 0.008  # Cosine schedule offset s (Nichol & Dhariwal).
  diffusion.max_beta = 0.999  # Cosine schedule: clip β here; 0.99-0.999.
  diffusion.zero_terminal_snr = False  # Rescale so ᾱ_{T-1} = 0 (needs prediction v or x0).
  # v-prediction: an x̂0 = √ᾱ·x_t - √(1-ᾱ)·v̂ whose error does not grow as ᾱ → 0,
  # where ε-prediction divides by √ᾱ (short trainings then leave blotchy backgrounds).
  diffusion.prediction = "v"  # What the model predicts: eps | x0 | v | edm.
  # edm: EDM's preconditioning for data of this standard deviation (at 1 it is
  # v-prediction up to sign; jaxddpm/diffusion.py).
  diffusion.sigma_data = 0.5
  diffusion.loss_weighting = "min_snr"  # uniform | min_snr.
  diffusion.min_snr_gamma = 5.0  # γ for min_snr weighting; 1-20.
  # On top of loss_weighting, learn a weight per noise level that evens out their
  # losses (EDM2's adaptive weighting; jaxddpm/diffusion.py). The train loss then
  # logs that objective (it can be negative); the validation loss stays the plain one.
  diffusion.adaptive_weighting = False
  # Which noise levels training sees: uniform (every timestep equally) | lognormal
  # (ln σ ~ N(lognormal_mean, lognormal_std²), σ = sqrt((1-ᾱ)/ᾱ), as EDM trains).
  diffusion.noise_levels = "uniform"
  diffusion.lognormal_mean = -1.2  # EDM's P_mean; -1.5 to -0.5.
  diffusion.lognormal_std = 1.2  # EDM's P_std; 1-2.
  diffusion.p_uncond = 0.1  # CFG label-dropout probability in training; 0.1-0.2.

  config.sampling = sampling = ml_collections.ConfigDict()
  sampling.sampler = "ddim"  # ddim | ddpm | dpmpp_2m (DPM-Solver++(2M), 10-20 steps).
  sampling.steps = 50  # Denoising steps (respaced); 1..T. DDPM is best at T.
  # Which timesteps the steps visit: uniform (evenly spread) | logsnr (log-SNR evenly
  # spread: finer steps at low noise, DPM-Solver++'s choice; docs/results.md,
  # "Samplers: step error").
  sampling.spacing = "uniform"
  sampling.eta = 0.0  # DDIM noise: 0 deterministic, 1 ≈ DDPM.
  sampling.guidance_scale = 2.0  # CFG scale s: 0 uncond, 1 cond, >1 stronger; 1-5.
  # () guides every step; (lo, hi) only where the noise level sigma = sqrt((1-ᾱ)/ᾱ)
  # is in (lo, hi], conditional elsewhere (Kynkäänniemi et al. 2024). mnist.py and
  # fmnist.py set EDM2_INTERVAL (docs/sampling.md, "Guidance").
  sampling.guidance_interval = ()
  # "" guides with the model's own unconditional prediction (CFG). A workdir: guide
  # with that run's model instead, a smaller one trained for less on the same data
  # and diffusion settings (autoguidance, Karras et al. 2024; docs/sampling.md).
  sampling.guide_workdir = ""
  sampling.clip_x0 = True  # Clip predicted x_0 to [-1, 1]: what keeps sampling stable.
  sampling.variance = "small"  # DDPM variance: small (β̃_t) | large (β_t).

  config.eval = ev = ml_collections.ConfigDict()
  # Sample metrics in the evaluator classifier's features (jaxddpm/evaluate.py).
  ev.every_epochs = 5  # Evaluate EMA samples every N epochs in training; 0 = off.
  ev.num_samples = 10_000  # Samples per evaluation (classes cycled: 1,000 per class).
  ev.batch_size = 500  # Sampling batch size for evaluation.
  ev.pr_k = 3  # k of the k-NN precision / recall manifolds; 3-5.
  ev.cache_dir = ""  # Classifier cache; "" = $JAXDDPM_CACHE_DIR or ~/.cache/jaxddpm.
  ev.classifier_epochs = 0  # Override the classifier recipe's epochs (tests); 0 = recipe.
  ev.classifier_max_train_examples = 0  # Train it on the first N only (tests); 0 = all.
  # Train images the classifier never sees (the floor's); 0 = the recipe's (10,000).
  # At most the number of samples evaluated; smaller data sets need fewer.
  ev.classifier_holdout = 0

  config.optim = optim = ml_collections.ConfigDict()
  optim.optimizer = "adam"  # adam | adamw.
  optim.lr = 2e-4  # Peak learning rate; 1e-4-1e-3.
  optim.b1 = 0.9  # Adam β1.
  optim.b2 = 0.999  # Adam β2.
  optim.weight_decay = 0.0  # AdamW decoupled weight decay; 0-0.05.
  optim.grad_clip = 1.0  # Clip gradients to this global norm; 0 disables.
  optim.warmup_steps = 500  # Linear LR warmup; 0 disables.
  optim.decay_steps = 0  # > 0: cosine decay of the lr, reaching 0 at this step; 0 = constant.
  # EMA of params used for sampling; 0.999-0.9999. Warmed up as min(decay, (1+n)/(10+n)):
  # 0.999 takes over only after ~9,000 steps; before, the warm-up acts as a
  # power-function EMA of σ_rel ≈ 0.09 (γ = 8).
  optim.ema_decay = 0.9995
  # > 0: a power-function EMA instead (Karras et al. 2024) averaging this share of
  # the run so far (its profile's std, σ_rel; 0.05-0.2), whatever the run's length.
  optim.ema_std = 0.0
  optim.plateau_factor = 0.5  # ReduceLROnPlateau: multiply the lr by this; 0.1-0.5.
  optim.plateau_patience = 3  # ... after this many epochs without val improvement.
  optim.plateau_cooldown = 0  # ... then wait this many epochs before counting again.
  optim.plateau_rtol = 1e-4  # ... improvement must beat best by this relative margin.
  optim.plateau_min_scale = 0.01  # ... never below lr * this.

  config.train = train = ml_collections.ConfigDict()
  train.batch_size = 128  # Global batch size.
  train.seed = 0  # Root PRNG seed: init, data order, noise, validation split.
  train.num_epochs = 30  # Passes over the training set (early stopping may end sooner).
  train.num_steps = 0  # If > 0, stop after this many steps instead.
  # Train steps per compiled call (a lax.scan): fewer host round-trips and dispatch
  # gaps; faster on a 2-core CPU too (docs/results.md, "Speed: against PyTorch").
  train.steps_per_dispatch = 8
  train.early_stopping_patience = 8  # Stop after this many epochs without val gain; 0 = off.
  train.eval_batch_size = 500  # Batch size for the validation loss.
  train.log_every_steps = 100  # Metrics to metrics.jsonl and the progress bar.
  train.checkpoint_every_steps = 1000  # Also at every epoch end.
  train.keep_checkpoints = 3  # Latest checkpoints kept (the best is kept apart).
  train.sample_every_steps = 2000  # Sample grid PNG under workdir/samples/; 0 = only at the end.
  train.samples_per_class = 10  # Columns of the sample grid (one row per class).
  train.quiet = False  # No progress bar (logs and CI).
  return config
