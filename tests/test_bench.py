"""The benchmark scripts refuse bad options with one line, before any work."""

import os
import runpy
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _bench(script, args, monkeypatch, capsys):
  """(exit code, stderr) of `python bench/<script> <args>`, run as __main__ in this
  process (a new Python would spend its ~1.5 s importing JAX for a one-line
  error). Any exception other than the script's own exit fails the test, as a
  traceback would."""
  monkeypatch.setattr(sys, "argv", [script, *args])
  monkeypatch.chdir(ROOT)
  try:
    runpy.run_path(os.path.join(ROOT, "bench", script), run_name="__main__")
    code = 0
  except SystemExit as e:  # argparse's errors, and sys.exit("error: ...").
    code = e.code
  err = capsys.readouterr().err
  return (1, err + code) if isinstance(code, str) else (code or 0, err)


@pytest.mark.parametrize("script, args, message", [
    ("throughput.py", ["--models", "resnet"], "--models: choose from"),
    ("throughput.py", ["--batches", "64,0"], "--batches, --iters"),
    ("throughput.py", ["--torch", "jit"], "--torch: eager and/or compile"),
    ("quality.py", ["--workdir", "nowhere", "--sweeps", "default,cfg"], "unknown sweep(s) ['cfg']"),
    ("quality.py", ["--workdir", "nowhere", "--num_samples", "3"], "--num_samples must be >= 10"),
    ("quality.py", ["--workdir", "nowhere"], "error: nowhere holds no checkpoint"),
    ("spacing.py", ["--datasets", "mnist,cifar"], "--datasets: choose from"),
    ("spacing.py", ["--steps", "20,x"], "--steps: comma-separated"),
    ("spacing.py", ["--guidance", "1.5,x"], "--guidance: comma-separated"),
    ("spacing.py", ["--guidance", "-1"], "--guidance: scales must be > 0"),
    ("posthoc_ema.py", ["--workdir", "nowhere", "--stds", "0.1,x"], "--stds, --steps: comma"),
    ("posthoc_ema.py", ["--workdir", "nowhere"], "error: no config.json in nowhere"),
    ("real_shapes.py", ["--configs", "svhn"], "no configs/svhn.py"),
    ("real_shapes.py", ["--steps", "0"], "--steps >= 1"),
    ("data_load.py", ["--n", "5"], "--n must be >= 100"),
])
def test_bad_options_are_one_line_errors(script, args, message, monkeypatch, capsys):
  code, err = _bench(script, args, monkeypatch, capsys)
  assert code != 0 and message in err, err


def test_every_sweep_gives_valid_distinct_settings():
  """A bad setting in a sweep would surface only on a GPU, after minutes of training."""
  import importlib.util
  spec = importlib.util.spec_from_file_location("bench_quality",
                                                os.path.join(ROOT, "bench", "quality.py"))
  quality = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(quality)
  from jaxddpm import sampling
  for path in ("mnist.py", "fmnist.py"):
    for variant in ("", ":cpu", ":smoke"):
      config = quality.load_config(os.path.join(ROOT, "configs", path) + variant)
      for name in quality.SWEEPS:
        settings = quality._settings(config, [name], "runs/guide")
        assert settings or variant == ":smoke", (name, variant)  # T < 250 drops some there.
        names = [sampling.settings_name(sampling.resolve_options(config, s)) for s in settings]
        assert len(set(names)) == len(names), (name, variant, names)
        # A setting that names a guidance scale names where it applies too: configs
        # differ in their default interval, and a sweep must mean the same on each.
        for s in settings:
          assert "guidance_interval" in s or "guidance_scale" not in s, (name, s)
          assert "spacing" in s or "sampler" not in s, (name, s)  # Likewise for steps.
  # DDIM-250, the reference of the DPM-Solver++ target, is uniform on the config
  # whose own default has log-SNR steps.
  config = quality.load_config(os.path.join(ROOT, "configs", "fmnist.py"))
  assert config.sampling.spacing == "logsnr"
  ddim250 = [s for s in quality._settings(config, ["targets"]) if s.get("steps") == 250]
  assert ddim250 and all(s["spacing"] == "uniform" for s in ddim250), ddim250
