"""What launch.py's modes do, as plain functions (testable without absl)."""

from __future__ import annotations

import math
import os
import re
import sys

import jax
import numpy as np


def use_compilation_cache(folder: str | None) -> str:
  """Turns on JAX's persistent compilation cache in `folder` (None: the jaxddpm
  cache folder's `xla/`; "": off) and returns the folder used. Why: compiling a
  train step, validation step or sampler takes ~1 min each under XLA's GPU
  autotuning (~10 s on a 2-core CPU); a resumed run, `--mode=sample` or
  `--mode=evaluate` with the same shapes then loads them instead. Safe to delete."""
  if folder == "":
    return ""
  if folder is None:
    from jaxddpm.metrics import classifier  # The cache root the classifiers share.
    folder = os.path.join(classifier.default_cache_dir(), "xla")
  try:
    os.makedirs(folder, exist_ok=True)
  except OSError as e:
    raise ValueError(f"cannot create the compilation cache folder {folder!r}: {e}. Pass "
                     "--compile_cache=<a writable folder>, or --compile_cache= to turn it off.") from e
  jax.config.update("jax_compilation_cache_dir", folder)
  return folder


def distributed_kwargs(environ=os.environ) -> dict:
  """jax.distributed.initialize's process count and index from JAX_NUM_PROCESSES and
  JAX_PROCESS_ID when set. Why: JAX reads JAX_COORDINATOR_ADDRESS itself but not
  these two, so outside SLURM, Open MPI, Kubernetes and TPU pods (which JAX detects)
  a launch by hand had no way to give them."""
  out = {}
  for key, name in (("num_processes", "JAX_NUM_PROCESSES"), ("process_id", "JAX_PROCESS_ID")):
    text = environ.get(name, "").strip()
    if text:
      try:
        out[key] = int(text)
      except ValueError:
        raise ValueError(f"{name} must be an integer, got {text!r}.") from None
  if "num_processes" in out and out["num_processes"] < 1:
    raise ValueError(f"JAX_NUM_PROCESSES must be >= 1, got {out['num_processes']}.")
  if "process_id" in out and not 0 <= out["process_id"] < out.get("num_processes", math.inf):
    raise ValueError(f"JAX_PROCESS_ID must be in [0, JAX_NUM_PROCESSES), got "
                     f"{out['process_id']}.")
  return out


def train(config, workdir: str, *, quiet: bool = False) -> dict:
  """Trains or resumes; prints one closing line with where everything is."""
  from jaxddpm import loop
  if quiet:
    with config.unlocked():
      config.train.quiet = True
  summary = loop.train_and_evaluate(config, workdir)
  how = "stopped early" if summary["stopped_early"] else "done"
  best = summary["best_val_loss"]
  # No epoch end reached (e.g. a short --config.train.num_steps): no validation ran.
  val = f"best val loss {best:.4f}" if math.isfinite(best) else "no epoch end, no validation"
  if jax.process_index():  # Multi-host: one closing line, from the first host.
    return summary
  print(f"{how} at step {summary['step']} ({val}); "
        f"samples: {summary['samples']}; checkpoints: {summary['checkpoints']}; "
        f"metrics: {summary['metrics']}", file=sys.stderr)
  return summary


def cpu_note(config_path: str | None, backend: str) -> str | None:
  """A line for someone about to train a GPU config on a CPU, where the default
  UNet trains at ~19 images/s on 2 cores: about an hour per
  MNIST epoch, days for the whole run, and the :cpu variant exists for this."""
  if backend != "cpu" or not config_path:
    return None
  path, _, variant = config_path.partition(":")
  if variant:
    return None
  return (f"note: {path} is sized for a GPU; on this CPU each epoch takes about an hour "
          f"or more. {path}:cpu trains a smaller model in about 10 minutes (2 cores).")


_SAMPLING_FLAGS = ("sampler", "steps", "spacing", "guidance_scale", "eta", "guidance_interval",
                   "guide_workdir", "seed", "which", "out")
# The launch.py flags each mode reads (beside --config, --workdir, --quiet, ...).
MODE_FLAGS = {
    "train": (),
    "sample": ("labels", "attributes", "num_per_class") + _SAMPLING_FLAGS,
    "evaluate": ("num_samples",) + _SAMPLING_FLAGS,
    "pictures": ("pictures", "labels", "attributes") + _SAMPLING_FLAGS,
}


def check_mode_flags(mode: str, given) -> None:
  """ValueError for a flag given on the command line that `mode` would ignore
  (`--mode=sample --num_samples=20` once wrote 100 images without a word)."""
  unused = sorted(set(given) - set(MODE_FLAGS[mode]))
  if unused:
    where = "; ".join(f"--{f} is for --mode=" + "/".join(m for m, fs in MODE_FLAGS.items()
                                                         if f in fs) for f in unused)
    hint = (" Sampling settings for training go in the config "
            "(--config.sampling.guidance_scale=...)." if mode == "train" else "")
    raise ValueError(f"--mode={mode} does not use {', '.join('--' + f for f in unused)} "
                     f"({where}).{hint}")


def _other_sections_hint(name: str) -> str:
  """' (did you mean 'optim.lr'?)' when a section of configs/base.py, which every
  config builds on, has a field `name`; '' otherwise."""
  from jaxddpm import checkpoint  # Orbax: imported only on this error path.
  places = [f"{section}.{name}" for section, fields in checkpoint.base_defaults().items()
            if isinstance(fields, dict) and name in fields]
  return f" (did you mean {' or '.join(map(repr, places))}?)" if places else ""


CONFIGS_HINT = ("The configs are configs/{mnist,fmnist,cifar10,celeba}.py, each also as "
                ":cpu and :smoke; configs/base.py lists and explains every field.")


def config_flag_error(error: BaseException, argv, config_file: str | None) -> str:
  """One line for a --config file that does not load or a --config.<field> override
  that names no field, in place of ml_collections' traceback (a misspelt override is
  the commonest mistake on the command line)."""
  text = str(error)
  overrides = [a.partition("=")[0] for a in argv if a.startswith("--config.")]
  if config_file is None and overrides:
    # absl only says "Unknown command line flag": the overrides exist only with --config.
    return (f"{overrides[0]}: --config.<field> overrides change the config a training run "
            "starts from and need --config; sample, evaluate and pictures read the run's "
            "own config: use their flags instead (--sampler, --steps, --spacing, "
            "--guidance_scale, --guidance_interval, --eta; see --help).")
  if isinstance(error, (AttributeError, KeyError)):
    # ml_collections: KeyError/AttributeError("'lrr'\nDid you mean "lr" instead of "lrr"?")
    text = text.replace("\\n", "\n").replace("\\'", "'")
    missing = re.search(r"'(\w+)'", text)
    guess = re.search(r'Did you mean "(\w+)"', text)
    for arg in argv:
      path = arg[len("--config."):].partition("=")[0] if arg.startswith("--config.") else ""
      parts = path.split(".")
      if missing and missing.group(1) in parts:
        i = parts.index(missing.group(1))
        if guess:
          hint = f" (did you mean {'.'.join(parts[:i] + [guess.group(1)])!r}?)"
        else:  # A field in the wrong section: --config.train.lr for optim.lr.
          hint = _other_sections_hint(parts[i])
        return f"{arg}: the config has no field {'.'.join(parts[:i + 1])!r}{hint}. {CONFIGS_HINT}"
    return f"a --config.<field> override names no field: {text.strip()}. {CONFIGS_HINT}"
  # A config file's own exception arrives as a traceback inside the message: its
  # last line says what went wrong (ValueError: unknown config variant 'gpu'; ...).
  last = [line.strip() for line in text.strip().splitlines() if line.strip()][-1:]
  detail = last[0] if last else type(error).__name__
  detail = detail[len("ValueError: "):] if detail.startswith("ValueError: ") else detail
  if isinstance(error, OSError) or "Traceback" in text:
    return f"cannot load --config {config_file}: {detail} {CONFIGS_HINT}"
  return text  # absl's own flag errors are one line already.


def parse_labels(labels: str, num_classes: int, num_per_class: int) -> np.ndarray:
  """'all' -> each class num_per_class times; '3,3,7' -> those labels."""
  if labels == "all":
    if num_per_class < 1:
      raise ValueError(f"--num_per_class must be >= 1, got {num_per_class}.")
    return np.repeat(np.arange(num_classes), num_per_class).astype(np.int32)
  try:
    out = np.array([int(x) for x in labels.split(",") if x.strip()], np.int32)
  except ValueError:
    raise ValueError(f"--labels must be 'all' or comma-separated integers, got {labels!r}.")
  if out.size == 0:
    raise ValueError("--labels is empty.")
  return out


def parse_interval(text: str | None):
  """--guidance_interval: None (the config's), 'all' (every step: ()), or 'LOW,HIGH'."""
  if text is None:
    return None
  if text.strip().lower() in ("all", ""):
    return ()
  try:
    low, high = (float(v) for v in text.split(","))
  except ValueError:
    raise ValueError(f"--guidance_interval must be 'all' or two noise levels 'LOW,HIGH' "
                     f"(e.g. 0.3,5), got {text!r}.") from None
  return (low, high)


def sampling_overrides(**options) -> dict:
  """The sampling options a user gave (None = the config's), as make_sampler overrides."""
  if isinstance(options.get("guidance_interval"), str):
    options["guidance_interval"] = parse_interval(options["guidance_interval"])
  return {k: v for k, v in options.items() if v is not None}


def stand_in_title(workdir: str) -> str:
  """A caption for pictures of a run trained on generated stand-in data; '' else."""
  from jaxddpm import attributes
  info = attributes.load_run_data(workdir)
  return (f"STAND-IN DATA, not {info['dataset']}: generated pictures"
          if info.get("stand_in") else "")


def request_labels(workdir: str, config, labels: str, attributes: str | None, n: int,
                   seed: int = 0):
  """(labels, rows, captions) of --labels (class runs) or --attributes (attribute
  runs: one row of n images per ';'-separated request, e.g. 'Smiling,-Male')."""
  from jaxddpm import attributes as attributes_lib
  if config.data.conditioning == "class":
    if attributes is not None:
      raise ValueError("--attributes is for runs conditioned on attributes (CelebA); this "
                       "run is conditioned on classes: use --labels.")
    label_array = parse_labels(labels, config.data.num_classes, n)
    return label_array, (config.data.num_classes if labels == "all" else 1), ()
  if labels != "all":
    raise ValueError("--labels is for class runs; this run is conditioned on attributes: "
                     "name them, e.g. --attributes=Smiling,Eyeglasses,-Male (';' separates "
                     "rows).")
  if n < 1:
    raise ValueError(f"--num_per_class must be >= 1, got {n}.")
  label_array, captions = attributes_lib.rows_for(workdir, attributes, n, seed)
  return label_array, len(captions), captions


def sample(workdir: str, *, labels: str = "all", attributes: str | None = None,
           num_per_class: int = 10, sampler=None, steps=None, spacing=None,
           guidance_scale=None, eta=None, guidance_interval=None, guide_workdir=None,
           seed: int = 0, which: str = "best", out: str | None = None) -> tuple[str, str, str]:
  """Samples from a workdir's checkpoint; writes a PNG grid, an .npz and a PNG of
  the sampler's per-step statistics (warning loudly if it diverged). Returns paths.
  Class runs take --labels; attribute runs --attributes (one row per request)."""
  from jaxddpm import checkpoint, diagnostics, parallel, plots, sampling
  from jaxddpm import images as images_lib
  config, params = checkpoint.load_checkpoint(workdir, which=which)
  overrides = sampling_overrides(sampler=sampler, steps=steps, spacing=spacing,
                                 guidance_scale=guidance_scale, eta=eta,
                                 guidance_interval=guidance_interval, guide_workdir=guide_workdir)
  sample_fn = sampling.make_sampler(config, with_stats=True, **overrides)
  label_array, rows, captions = request_labels(workdir, config, labels, attributes,
                                               num_per_class, seed)
  # Across hosts the samples are split over every host's devices: gathered to each.
  x, stats = parallel.to_host(sample_fn(params, jax.random.key(seed), label_array))
  name = sampling.settings_name(sampling.resolve_options(config, overrides))
  if out is None:
    # Another checkpoint than best gets its own files, not best's.
    which_tag = "" if which == "best" else f"_{which}" if which == "latest" else f"_step{which}"
    out = os.path.join(workdir, "samples", f"sample_{name}_seed{seed}{which_tag}")
  png, npz = out + ".png", out + ".npz"
  if jax.process_index():  # Multi-host: the first host writes the files.
    return png, npz, out + "_diagnostics.png"
  title = stand_in_title(workdir)
  images_lib.write_png(png, plots.grid_picture(np.asarray(x), rows, captions, title))
  np.savez(npz, images=images_lib.to_uint8(x), labels=label_array)
  diagnostics.warn_if_diverged(stats)
  diag = diagnostics.write_stats_figure(out + "_diagnostics.png", stats,
                                        f"{workdir}: {name}, {len(label_array)} samples")
  note = f" ({title})" if title else ""
  print(f"wrote {len(label_array)} samples{note}: {png} and {npz}; sampler diagnostics: "
        f"{diag}", file=sys.stderr)
  return png, npz, diag


def evaluate(workdir: str, *, num_samples=None, sampler=None, steps=None, spacing=None,
             guidance_scale=None, eta=None, guidance_interval=None, guide_workdir=None,
             seed: int = 0, which: str = "best", out: str | None = None,
             quiet: bool = False) -> dict:
  """Scores a checkpoint's samples (jaxddpm/evaluate.py); writes eval.json."""
  from jaxddpm import evaluate as evaluate_lib
  overrides = sampling_overrides(sampler=sampler, steps=steps, spacing=spacing,
                                 guidance_scale=guidance_scale, eta=eta,
                                 guidance_interval=guidance_interval, guide_workdir=guide_workdir)
  result = evaluate_lib.evaluate_checkpoint(workdir, num_samples=num_samples, which=which,
                                            seed=seed, out=out, quiet=quiet, **overrides)
  m, f = result["metrics"], result["floor"]
  if jax.process_index():  # Multi-host: one summary line, from the first host.
    return result
  if result["data"]["stand_in"]:
    print(f"note: {result['data']['dataset']} here is generated stand-in data: these numbers "
          "say nothing about the real data set.", file=sys.stderr)
  print(f"{m['num_images']} samples: conditional accuracy {m['conditional_accuracy']:.4f}, "
        f"Frechet distance {m['frechet_distance']:.3f} (real-data floor "
        f"{f['frechet_distance']:.3f}), precision {m['precision']:.3f}, recall "
        f"{m['recall']:.3f}; wrote {result['path']}", file=sys.stderr)
  return result


def pictures(workdir: str, *, labels: str = "all", attributes: str | None = None,
             pictures=None, sampler=None, steps=None, spacing=None, guidance_scale=None,
             eta=None, guidance_interval=None, guide_workdir=None, seed: int = 0,
             which: str = "best", out: str | None = None) -> list[str]:
  """Forward / reverse strips, reverse GIF, guidance sweep, training curves: one
  column per class of --labels, or per ';'-separated request of --attributes."""
  from jaxddpm import checkpoint, pictures as pictures_lib
  config = checkpoint.load_config(workdir)
  label_array = request_labels(workdir, config, labels, attributes, 1, seed)[0]
  if config.data.conditioning == "class" and labels == "all":
    label_array = label_array[:10]  # One column per class: at most ten.
  overrides = sampling_overrides(sampler=sampler, steps=steps, spacing=spacing,
                                 guidance_scale=guidance_scale, eta=eta,
                                 guidance_interval=guidance_interval, guide_workdir=guide_workdir)
  paths = pictures_lib.write_all(workdir, out or os.path.join(workdir, "pictures"),
                                 which=which, labels=label_array, seed=seed,
                                 pictures=pictures or pictures_lib.PICTURES,
                                 title=stand_in_title(workdir), **overrides)
  if jax.process_index() == 0:  # Multi-host: the first host wrote them and says so.
    print("wrote " + ", ".join(paths), file=sys.stderr)
  return paths
