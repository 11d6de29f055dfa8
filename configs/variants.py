"""Size variants shared by the dataset configs: `:cpu` and `:smoke` (and none = GPU)."""

VARIANTS = ("", "cpu", "smoke")


def apply(config, arg):
  """Overrides for the variant named by the config-file argument (`file.py:cpu`)."""
  arg = arg or ""
  if arg not in VARIANTS:
    raise ValueError(f"unknown config variant {arg!r}; choose one of {VARIANTS[1:]} "
                     "(or none for the full GPU run).")
  if arg == "cpu":
    # Budget: 1,200 steps of 64 images (76,800, about 1.4 epochs of MNIST) for
    # this ~1.1 GFLOP/image model: 10-15 minutes on 2 cores (docs/results.md,
    # "Speed: training on a 2-core CPU").
    config.model.update(base_channels=32, channel_mults=(1, 2, 2), num_res_blocks=1,
                        attention_resolutions=(config.data.image_size // 4,), dropout=0.0)
    # 10 steps per dispatch: +29% images/s for this model (docs/results.md, "Speed:
    # against PyTorch"). Any K compiles one chunk program (an epoch's short last
    # chunk runs it with steps masked); 10 divides the 890 steps of an MNIST epoch,
    # so no step is masked here.
    config.train.update(batch_size=64, num_epochs=0, num_steps=1200, log_every_steps=50,
                        checkpoint_every_steps=300, sample_every_steps=0,
                        steps_per_dispatch=10)
    config.optim.update(lr=1e-3, warmup_steps=100, ema_decay=0.999)
    config.data.val_fraction = 0.05
    # Evaluation costs ~0.2 s per DDIM-50+CFG sample here (this UNet conditions every
    # block, so CFG is a 2B pass): not inside the budget. `--mode=evaluate`
    # (1,000 samples, ~3-4 min) or bench/quality.py after.
    config.eval.update(every_epochs=0, num_samples=1000)
  elif arg == "smoke":
    config.model.update(base_channels=8, channel_mults=(1, 2), num_res_blocks=1,
                        attention_resolutions=(), num_heads=1, dropout=0.0)
    config.data.update(max_train_examples=512, val_fraction=0.002)  # 1 validation batch.
    config.diffusion.num_timesteps = 100
    config.sampling.steps = 5
    config.train.update(batch_size=32, num_epochs=2, num_steps=0, steps_per_dispatch=1,
                        eval_batch_size=100, log_every_steps=4, checkpoint_every_steps=8,
                        sample_every_steps=0, samples_per_class=2, quiet=True)
    config.optim.update(warmup_steps=0, lr=1e-3)
    config.eval.update(every_epochs=0, num_samples=100, batch_size=50, classifier_epochs=1,
                       classifier_max_train_examples=2000)
  return config
