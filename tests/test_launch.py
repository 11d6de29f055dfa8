"""launch.py end to end on the tests' `:smoke` run (tests/smoke.py): train, resume,
sample, pictures, evaluate; and its one-line errors."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import smoke
from jaxddpm import images

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _launch(*args, data_dir, **env_vars):
  env = dict(os.environ, JAXDDPM_DATA_DIR=data_dir, **env_vars)
  return subprocess.run([sys.executable, os.path.join(ROOT, "launch.py"), *args],
                        capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)


def _launch_here(*args) -> str | None:
  """launch.py's flag parsing and main() in this process: the exit message, or None
  when it returns. For bad input that stops before any work, where a subprocess
  adds only an interpreter start (~2.5 s each); the subprocess runs check the
  process's own exit status and stderr. Any exception but the one-line exit fails
  the test, as a traceback in stderr would."""
  import jax

  import launch
  cache = jax.config.jax_compilation_cache_dir
  launch.FLAGS.unparse_flags()
  try:
    launch.main(launch.parse_flags(["launch.py", *args]))
  except SystemExit as e:
    assert isinstance(e.code, str), e.code
    return e.code
  finally:
    launch.FLAGS.unparse_flags()
    jax.config.update("jax_compilation_cache_dir", cache)
  return None


def test_train_resume_sample_evaluate(small_data_dir, tmp_path):
  # The test run's jaxddpm cache folder (conftest.py): launches load the programs
  # that earlier tests compiled there, or compile them there when run alone.
  workdir, cache = str(tmp_path / "run"), os.environ["JAXDDPM_CACHE_DIR"]
  r = _launch(*smoke.LAUNCH_ARGS, "--workdir", workdir,
              "--config.train.num_steps=20", data_dir=small_data_dir)
  assert r.returncode == 0, r.stderr[-3000:]
  assert "done at step 20" in r.stderr
  for name in ("config.json", "metrics.jsonl", "checkpoints"):
    assert os.path.exists(os.path.join(workdir, name))
  r = _launch(*smoke.LAUNCH_ARGS, "--workdir", workdir,
              data_dir=small_data_dir, JAX_DEBUG_LOG_MODULES="jax._src.compiler")
  assert r.returncode == 0, r.stderr[-3000:]
  assert "done at step 32" in r.stderr  # Resumed from 20...
  # ...with its train chunk from the persistent cache under the jaxddpm cache folder.
  hit = re.search(r"Persistent compilation cache hit for 'jit_chunk' with key '([^']+)'",
                  r.stderr)
  assert hit, r.stderr[-3000:]
  assert any(name.startswith(hit.group(1)) for name in os.listdir(os.path.join(cache, "xla")))
  r = _launch("--mode=sample", "--workdir", workdir, "--labels=3,1,4", "--steps=4",
              "--guidance_scale=2", "--seed=1", data_dir=small_data_dir)
  assert r.returncode == 0, r.stderr[-3000:]
  # Guidance in an interval, over the config.json of a workdir (which stores a list),
  # and log-SNR-even steps.
  r = _launch("--mode=sample", "--workdir", workdir, "--labels=3", "--steps=4",
              "--guidance_scale=2", "--guidance_interval=0.5,20", "--spacing=logsnr",
              "--seed=1", data_dir=small_data_dir)
  assert r.returncode == 0, r.stderr[-3000:]
  assert os.path.isfile(os.path.join(workdir, "samples",
                                     "sample_ddim4_logsnr_g2_i0.5-20_seed1.png"))
  for flag, error in (("--guidance_interval=3,1", "error: guidance_interval must be"),
                      ("--spacing=karras", "error: unknown timestep spacing 'karras'")):
    assert error in _launch_here("--mode=sample", "--workdir", workdir, flag)
  # Autoguidance (the run guiding itself here: any saved run of the same data and
  # diffusion settings will do), and a guide that is not a run.
  r = _launch("--mode=sample", "--workdir", workdir, "--labels=3", "--steps=4",
              "--guidance_scale=2", f"--guide_workdir={workdir}", "--seed=1",
              data_dir=small_data_dir)
  assert r.returncode == 0, r.stderr[-3000:]
  assert os.path.isfile(os.path.join(workdir, "samples", "sample_ddim4_g2_ag-run_seed1.png"))
  error = _launch_here("--mode=sample", "--workdir", workdir, f"--guide_workdir={workdir}/nothing")
  assert error.startswith("error: sampling.guide_workdir=") and "no config.json" in error
  out = os.path.join(workdir, "samples", "sample_ddim4_g2_seed1")
  grid = images.read_png(out + ".png")
  assert grid.ndim == 3 and grid.std() > 0
  npz = np.load(out + ".npz")
  assert npz["images"].shape == (3, smoke.SIZE, smoke.SIZE, 1) and npz["images"].dtype == np.uint8
  np.testing.assert_array_equal(npz["labels"], [3, 1, 4])
  r = _launch("--mode=pictures", "--workdir", workdir, "--labels=1,7", "--steps=4",
              "--guidance_interval=0.5,20", data_dir=small_data_dir)
  assert r.returncode == 0, r.stderr[-3000:]
  for name in ("forward.png", "reverse.png", "guidance.png", "curves.png"):
    img = images.read_png(os.path.join(workdir, "pictures", name))
    assert img.std() > 5, name
  assert os.path.getsize(os.path.join(workdir, "pictures", "reverse.gif")) > 1000
  assert os.path.isfile(os.path.join(workdir, "samples", "sample_ddim4_g2_seed1_diagnostics.png"))
  # Evaluate: the :smoke config's tiny classifier, from the test run's cache folder
  # (trained there by whichever test needs it first).
  r = _launch("--mode=evaluate", "--workdir", workdir, "--num_samples=30", "--quiet",
              data_dir=small_data_dir)
  assert r.returncode == 0, r.stderr[-3000:]
  assert "conditional accuracy" in r.stderr and "eval.json" in r.stderr
  with open(os.path.join(workdir, "eval.json")) as f:
    result = json.load(f)
  assert result["metrics"]["num_images"] == 30 and result["floor"]["num_images"] == 30
  for k in ("conditional_accuracy", "frechet_distance", "precision", "recall"):
    assert np.isfinite(result["metrics"][k]) and np.isfinite(result["floor"][k])
  assert result["sampling"]["steps"] == 5 and 0 < result["classifier"]["test_accuracy"] <= 1


def test_bad_input_is_a_message_not_a_trace(real_data_dir, tmp_path):
  r = _launch("--config", "configs/mnist.py:smoke", "--workdir", str(tmp_path),
              "--config.optim.lr=-1", data_dir=real_data_dir)
  assert r.returncode != 0 and "error: optim.lr must be > 0" in r.stderr
  assert "Traceback" not in r.stderr
  # Config mistakes are one line too (ml_collections raises them as tracebacks). In
  # subprocesses: absl parses a process's flags once, and a second parse in one
  # process reports config overrides differently.
  r = _launch("--config", "configs/mnist.py:smoke", "--config.optim.lrr=1",
              data_dir=real_data_dir)
  assert r.returncode != 0 and "Traceback" not in r.stderr
  assert ("--config.optim.lrr=1: the config has no field 'optim.lrr' (did you mean "
          "'optim.lr'?)") in r.stderr
  r = _launch("--config", "configs/mnist.py:gpu", data_dir=real_data_dir)
  assert r.returncode != 0 and "Traceback" not in r.stderr
  assert "cannot load --config configs/mnist.py:gpu: unknown config variant" in r.stderr
  r = _launch("--config=configs/mnst.py", data_dir=real_data_dir)
  assert r.returncode != 0 and "Traceback" not in r.stderr
  assert "cannot load --config configs/mnst.py: [Errno 2] No such file" in r.stderr
  # Before any other JAX call, so never in this process.
  r = _launch("--multihost", "--mode=sample", "--workdir", str(tmp_path), data_dir=real_data_dir)
  assert r.returncode != 0 and "Traceback" not in r.stderr
  assert "--multihost: jax.distributed.initialize() failed" in r.stderr
  assert _launch_here("--mode=sample", "--workdir", str(tmp_path / "nothing")).startswith(
      "error: ")
  blocker = tmp_path / "a_file"
  blocker.write_text("not a folder")
  assert "cannot create the compilation cache folder" in _launch_here(
      "--mode=sample", "--workdir", str(tmp_path), f"--compile_cache={blocker}/xla")


def test_config_flag_errors_name_the_field():
  import ml_collections
  from jaxddpm import cli
  config = ml_collections.ConfigDict({"optim": {"lr": 1.0}, "train": {"seed": 0}})
  argv = ["launch.py", "--config", "c.py", "--config.train.seed=1", "--config.optim.lrr=2"]
  with pytest.raises(AttributeError) as e:
    config.optim.lrr
  assert cli.config_flag_error(e.value, argv, "c.py").startswith(
      "--config.optim.lrr=2: the config has no field 'optim.lrr' (did you mean 'optim.lr'?).")
  with pytest.raises(KeyError) as e:
    config["optimm"]
  msg = cli.config_flag_error(e.value, ["launch.py", "--config.optimm.lr=2"], "c.py")
  assert msg.startswith("--config.optimm.lr=2: the config has no field 'optimm' "
                        "(did you mean 'optim'?).")
  assert "configs/base.py" in msg
  # A field named in the wrong section (the design card's --config.train.lr) points
  # to the section that has it; ml_collections has no guess there.
  with pytest.raises(AttributeError) as e:
    config.train.lr
  msg = cli.config_flag_error(e.value, ["launch.py", "--config.train.lr=2"], "c.py")
  assert msg.startswith("--config.train.lr=2: the config has no field 'train.lr' "
                        "(did you mean 'optim.lr'?)."), msg
  with pytest.raises(AttributeError) as e:
    config.train.nothing_like_it
  msg = cli.config_flag_error(e.value, ["launch.py", "--config.train.nothing_like_it=2"], "c.py")
  assert "'train.nothing_like_it'. The configs" in msg, msg
  msg = cli.config_flag_error(OSError("Failed loading config file\n  Attempted:\n    "
                                      "[Errno 2] No such file or directory: 'c.py'"),
                              ["launch.py"], "c.py")
  assert msg.startswith("cannot load --config c.py: [Errno 2] No such file or directory")
  # Overrides without --config (e.g. in sample mode, which reads the run's config).
  from absl import flags
  msg = cli.config_flag_error(flags.UnrecognizedFlagError("config.sampling.guidance_scale"),
                              ["launch.py", "--mode=sample", "--config.sampling.guidance_scale=3"],
                              None)
  assert msg.startswith("--config.sampling.guidance_scale: --config.<field> overrides")
  assert "--guidance_scale" in msg


def test_a_gpu_config_on_a_cpu_gets_a_note():
  from jaxddpm import cli
  note = cli.cpu_note("configs/fmnist.py", "cpu")
  assert "configs/fmnist.py is sized for a GPU" in note and "configs/fmnist.py:cpu" in note
  assert cli.cpu_note("configs/fmnist.py:cpu", "cpu") is None
  assert cli.cpu_note("configs/fmnist.py:smoke", "cpu") is None
  assert cli.cpu_note("configs/fmnist.py", "gpu") is None


def test_guidance_interval_flag_parsing():
  from jaxddpm import cli
  assert cli.parse_interval(None) is None
  assert cli.parse_interval("all") == ()
  assert cli.parse_interval("0.28,5.42") == (0.28, 5.42)
  with pytest.raises(ValueError, match="two noise levels"):
    cli.parse_interval("0.3")
  with pytest.raises(ValueError, match="two noise levels"):
    cli.parse_interval("low,high")
  assert cli.sampling_overrides(steps=None, guidance_interval="1,2") == {
      "guidance_interval": (1.0, 2.0)}


def test_labels_flag_parsing():
  from jaxddpm import cli
  np.testing.assert_array_equal(cli.parse_labels("3, 1,4,", 10, 2), [3, 1, 4])
  np.testing.assert_array_equal(cli.parse_labels("all", 3, 2), [0, 0, 1, 1, 2, 2])
  assert cli.parse_labels("7", 10, 1).dtype == np.int32
  for text in ("a,b", "1.5", "1;2"):
    with pytest.raises(ValueError, match=f"--labels must be 'all' or comma-separated "
                                         f"integers, got '{text}'"):
      cli.parse_labels(text, 10, 1)
  for text in ("", " , "):
    with pytest.raises(ValueError, match="--labels is empty"):
      cli.parse_labels(text, 10, 1)
  with pytest.raises(ValueError, match="--num_per_class must be >= 1, got 0"):
    cli.parse_labels("all", 10, 0)


def test_process_count_and_index_come_from_the_environment():
  """JAX reads JAX_COORDINATOR_ADDRESS but not these two; --multihost passes them."""
  from jaxddpm import cli
  assert cli.distributed_kwargs({}) == {}
  assert cli.distributed_kwargs({"JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1"}) == dict(
      num_processes=2, process_id=1)
  with pytest.raises(ValueError, match="JAX_NUM_PROCESSES must be an integer, got 'two'"):
    cli.distributed_kwargs({"JAX_NUM_PROCESSES": "two"})
  with pytest.raises(ValueError, match=r"JAX_PROCESS_ID must be in \[0, JAX_NUM_PROCESSES\)"):
    cli.distributed_kwargs({"JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "2"})
  with pytest.raises(ValueError, match="JAX_NUM_PROCESSES must be >= 1"):
    cli.distributed_kwargs({"JAX_NUM_PROCESSES": "0"})


def test_a_flag_the_mode_ignores_is_an_error():
  from jaxddpm import cli
  cli.check_mode_flags("sample", {"labels", "num_per_class", "steps", "seed"})
  cli.check_mode_flags("evaluate", {"num_samples", "guide_workdir"})
  cli.check_mode_flags("train", set())
  with pytest.raises(ValueError, match=r"--mode=sample does not use --num_samples "
                                       r"\(--num_samples is for --mode=evaluate\)"):
    cli.check_mode_flags("sample", {"num_samples", "steps"})
  with pytest.raises(ValueError, match="--guidance_scale is for "
                                       "--mode=sample/evaluate/pictures.*--config.sampling"):
    cli.check_mode_flags("train", {"guidance_scale"})
  with pytest.raises(ValueError, match="--num_per_class, --pictures"):
    cli.check_mode_flags("evaluate", {"pictures", "num_per_class"})


def test_the_readme_python_api_is_exported():
  import jaxddpm
  from jaxddpm import checkpoint, evaluate, loop, sampling
  assert jaxddpm.load_checkpoint is checkpoint.load_checkpoint
  assert jaxddpm.make_sampler is sampling.make_sampler
  assert jaxddpm.train_and_evaluate is loop.train_and_evaluate
  assert jaxddpm.evaluate_checkpoint is evaluate.evaluate_checkpoint
  assert all(hasattr(jaxddpm, name) for name in jaxddpm.__all__)


def test_a_stop_signal_stands_where_python_drops_its_interrupt(capsys):
  """The SIGTERM / Ctrl-C handler raises KeyboardInterrupt and also asks training to
  stop (test_loop.py: test_ctrl_c_saves_the_last_finished_chunk), since Python drops
  an exception raised inside a callback it calls from C (JAX's garbage-collection
  hook): its printed trace is left out then, and every other one kept."""
  import signal
  import sys

  import launch
  from jaxddpm import loop
  assert not loop._stop.is_set()
  with pytest.raises(KeyboardInterrupt):
    launch._interrupt(signal.SIGTERM, None)
  assert loop._stop.is_set()
  loop._stop.clear()

  def report(exc):
    """Python's own report of `exc` raised where it cannot propagate (a __del__)."""
    seen = []

    class Raises:
      def __del__(self):
        raise exc
    hook, sys.unraisablehook = sys.unraisablehook, seen.append
    try:
      Raises()
    finally:
      sys.unraisablehook = hook
    return seen[0]
  launch._unraisable(report(KeyboardInterrupt()))
  assert capsys.readouterr().err == ""
  launch._unraisable(report(ValueError("a real fault")))
  assert "ValueError: a real fault" in capsys.readouterr().err
