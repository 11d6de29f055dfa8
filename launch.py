"""jaxddpm command line: flags -> config -> train or sample. No logic of its own.

  python launch.py --config configs/fmnist.py                    # train (or resume)
  python launch.py --config configs/mnist.py:cpu --config.optim.lr=5e-4
  python launch.py --mode=sample --workdir runs/mnist_cpu --labels=3,3,7 --guidance_scale=3
  python launch.py --mode=evaluate --workdir runs/mnist_cpu --num_samples=1000  # eval.json
  python launch.py --mode=pictures --workdir runs/mnist_cpu --labels=0,3,8  # PNGs and a GIF
  python launch.py --mode=sample --workdir runs/celeba_cpu --attributes="Smiling,-Male;Eyeglasses"
  python launch.py --mode=evaluate --workdir runs/mnist_cpu --guide_workdir runs/mnist_guide
      # autoguidance: a smaller run guides (README, "Autoguidance"); --guidance_scale=2.5
"""

import os
import signal
import sys

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/mnist.py:cpu.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Run folder; default runs/<config name>[_<variant>].")
flags.DEFINE_enum("mode", "train", ["train", "sample", "evaluate", "pictures"], "What to do.")
flags.DEFINE_list("pictures", ["forward", "reverse", "guidance", "curves"],
                  "pictures: which to draw (into workdir/pictures/).")
flags.DEFINE_string("labels", "all", "sample/pictures: comma-separated class labels, or 'all'.")
flags.DEFINE_string("attributes", None, "sample/pictures, for attribute runs (CelebA): names "
                    "to set, '-name' to unset, e.g. Smiling,Eyeglasses,-Male; ';' separates "
                    "rows. Unnamed attributes are drawn from the training data. Default: a "
                    "row per well-known attribute.")
flags.DEFINE_integer("num_per_class", 10, "sample: images per class (--labels=all) or per "
                     "--attributes row.")
flags.DEFINE_integer("num_samples", None, "evaluate: samples to score (default: the config's "
                     "eval.num_samples).")
flags.DEFINE_string("sampler", None, "sample/evaluate: ddim | ddpm | dpmpp_2m (default: the "
                    "config's).")
flags.DEFINE_integer("steps", None, "sample/evaluate: denoising steps (default: the config's).")
flags.DEFINE_string("spacing", None, "sample/evaluate: which timesteps the steps visit, uniform "
                    "| logsnr (default: the config's).")
flags.DEFINE_float("guidance_scale", None, "sample/evaluate: guidance scale, CFG's or, with "
                   "--guide_workdir, autoguidance's (default: the config's).")
flags.DEFINE_float("eta", None, "sample/evaluate: DDIM eta (default: the config's).")
flags.DEFINE_string("guidance_interval", None, "sample/evaluate: 'LOW,HIGH' noise levels sigma "
                    "between which CFG applies (conditional elsewhere), or 'all' (default: "
                    "the config's).")
flags.DEFINE_string("guide_workdir", None, "sample/evaluate/pictures: guide with this run's "
                    "(smaller, shorter-trained) model instead of the unconditional prediction: "
                    "autoguidance; '' for CFG (default: the config's).")
flags.DEFINE_integer("seed", 0, "sample/evaluate: PRNG seed.")
flags.DEFINE_string("which", "best", "sample/evaluate/pictures: which checkpoint: best, latest, "
                    "or a step kept in workdir/checkpoints/latest/.")
flags.DEFINE_string("out", None, "sample: output path prefix (default workdir/samples/...); "
                    "evaluate: the JSON path (default workdir/eval.json).")
flags.DEFINE_bool("quiet", False, "No progress bar.")
flags.DEFINE_string("compile_cache", None, "Folder for XLA's persistent compilation cache: a "
                    "resume, sample or evaluate run of the same shapes skips compiling (~1 min "
                    "per program on a GPU). Default $JAXDDPM_CACHE_DIR/xla or "
                    "~/.cache/jaxddpm/xla; '' turns it off.")
flags.DEFINE_bool("multihost", False, "Call jax.distributed.initialize() first (SLURM, TPU "
                  "pods, or the JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / "
                  "JAX_PROCESS_ID environment variables).")


def default_workdir(config_path: str) -> str:
  path, _, variant = config_path.partition(":")
  name = os.path.splitext(os.path.basename(path))[0]
  return os.path.join("runs", f"{name}_{variant}" if variant else name)


def parse_flags(argv):
  """absl's parsing, except that a config file that does not load, or an override
  naming no field, is a one-line error instead of ml_collections' traceback."""
  try:
    rest = FLAGS(argv)
    if FLAGS.config is not None:
      FLAGS.config.get("train")  # ml_collections reports a failed load on first use.
    return rest
  except (flags.Error, OSError, AttributeError, KeyError) as e:
    from jaxddpm import cli
    sys.exit(f"error: {cli.config_flag_error(e, argv, _config_arg(argv))}\n"
             "Pass --help to see the flags.")


def _config_arg(argv):
  """The --config value as typed (the flag holds none when its file failed to load)."""
  for i, arg in enumerate(argv):
    if arg.startswith("--config="):
      return arg.partition("=")[2]
    if arg == "--config" and i + 1 < len(argv):
      return argv[i + 1]
  return None


def _interrupt(signum, frame):
  from jaxddpm import loop
  loop.request_stop()  # Stands where the raise below is dropped (see loop.request_stop).
  raise KeyboardInterrupt


def _unraisable(args):
  """Python's report of an exception it could not raise, less a stop signal's
  KeyboardInterrupt dropped inside a callback: training stops at its next chunk
  all the same, and the trace would read as a crash."""
  if not issubclass(args.exc_type, KeyboardInterrupt):
    sys.__unraisablehook__(args)


def main(argv):
  del argv
  logging.set_verbosity(logging.ERROR)  # Orbax logs every save, and read-only opens, below this.
  if FLAGS.multihost:
    import jax
    from jaxddpm import cli
    try:
      # Before any other JAX call: every host's devices join.
      jax.distributed.initialize(**cli.distributed_kwargs())
    except (ValueError, RuntimeError) as e:
      sys.exit(f"error: --multihost: jax.distributed.initialize() failed: {e} Start the "
               "command on every host under SLURM or on a Cloud TPU pod, or set "
               "JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID on each; "
               "for a single process leave --multihost out.")
  # Imported here so that `--help` stays fast.
  from jaxddpm import cli
  config_path = flags.FLAGS["config"].config_filename if FLAGS.config is not None else None
  workdir = FLAGS.workdir or (default_workdir(config_path) if config_path else None)
  if workdir is None:
    raise app.UsageError("give --config (to train) or --workdir (to sample).")
  try:
    cli.check_mode_flags(FLAGS.mode, {f for fs in cli.MODE_FLAGS.values() for f in fs
                                      if FLAGS[f].present})
    cli.use_compilation_cache(FLAGS.compile_cache)
    if FLAGS.mode == "train":
      if FLAGS.config is None:
        raise app.UsageError("--mode=train needs --config.")
      import jax
      note = cli.cpu_note(config_path, jax.default_backend())
      if note:
        print(note, file=sys.stderr)
      # SIGTERM (SLURM preemption, `kill`) stops training as Ctrl-C does: work kept.
      signal.signal(signal.SIGTERM, _interrupt)
      signal.signal(signal.SIGINT, _interrupt)
      sys.unraisablehook = _unraisable
      cli.train(FLAGS.config, workdir, quiet=FLAGS.quiet)
    else:
      sampling = dict(sampler=FLAGS.sampler, steps=FLAGS.steps, spacing=FLAGS.spacing,
                      guidance_scale=FLAGS.guidance_scale, eta=FLAGS.eta,
                      guidance_interval=FLAGS.guidance_interval,
                      guide_workdir=FLAGS.guide_workdir, seed=FLAGS.seed,
                      which=FLAGS.which, out=FLAGS.out)
      if FLAGS.mode == "sample":
        cli.sample(workdir, labels=FLAGS.labels, attributes=FLAGS.attributes,
                   num_per_class=FLAGS.num_per_class, **sampling)
      elif FLAGS.mode == "pictures":
        cli.pictures(workdir, labels=FLAGS.labels, attributes=FLAGS.attributes,
                     pictures=FLAGS.pictures, **sampling)
      else:
        cli.evaluate(workdir, num_samples=FLAGS.num_samples, quiet=FLAGS.quiet, **sampling)
  except (ValueError, FloatingPointError) as e:  # Bad input or NaN: a message, not a trace.
    sys.exit(f"error: {e}")
  except KeyboardInterrupt:  # Training has said what it kept; no trace.
    sys.exit(130)


if __name__ == "__main__":
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # For `configs.*`.
  app.run(main, flags_parser=parse_flags)
