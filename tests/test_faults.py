"""Crash safety: SIGKILL at random points, a write cut short, and determinism."""

import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np

import smoke
from jaxddpm import checkpoint, loop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _steps(workdir):
  folder = os.path.join(workdir, "checkpoints", "latest")
  return sorted(int(d) for d in os.listdir(folder) if d.isdigit()) if os.path.isdir(folder) else []


def _assert_same_params(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_sigkill_at_random_points_then_resume_equals_uninterrupted(smoke_reference,
                                                                   small_data_dir, tmp_path):
  reference = smoke_reference[0]
  workdir = str(tmp_path / "killed")
  cmd = [sys.executable, os.path.join(ROOT, "launch.py"), *smoke.LAUNCH_ARGS,
         "--workdir", workdir, "--quiet"]
  env = dict(os.environ, JAXDDPM_DATA_DIR=small_data_dir)
  rng = np.random.default_rng(0)
  for kill_after in (8, 16):  # Kill once past each of two checkpoints, at a random delay.
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    for _ in range(6000):  # Poll for up to ~5 minutes (a watchdog, not a speed check).
      if any(s >= kill_after for s in _steps(workdir)) or proc.poll() is not None:
        break
      time.sleep(0.05)
    else:
      proc.kill()
      raise AssertionError(f"training wrote no checkpoint past step {kill_after}")
    time.sleep(rng.uniform(0.0, 0.3))
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL  # Killed mid-run, not finished already.
  r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  assert "done at step 32" in r.stderr
  _, want = checkpoint.load_checkpoint(reference, which="latest")
  _, got = checkpoint.load_checkpoint(workdir, which="latest")
  _assert_same_params(got, want)


def test_sigterm_stops_training_with_its_work_saved(small_data_dir, tmp_path):
  """SLURM preemption and `kill` send SIGTERM: handled as Ctrl-C, a message, no trace."""
  workdir = str(tmp_path)
  cmd = [sys.executable, os.path.join(ROOT, "launch.py"), *smoke.LAUNCH_ARGS,
         "--workdir", workdir, "--config.train.num_steps=100000"]
  proc = subprocess.Popen(cmd, cwd=ROOT, env=dict(os.environ, JAXDDPM_DATA_DIR=small_data_dir),
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  for _ in range(6000):  # A watchdog of ~5 minutes, not a speed check.
    if _steps(workdir) or proc.poll() is not None:
      break
    time.sleep(0.05)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=300)
  assert proc.returncode == 130 and "Traceback" not in err, err[-3000:]
  assert "interrupted: " in err and "run the same command to resume" in err
  if "interrupted: saved step " in err:  # Else it fell on an epoch end before validation.
    saved = int(err.split("interrupted: saved step ")[1].split(";")[0])
    assert _steps(workdir)[-1] == saved >= 8


def test_write_cut_short_leaves_the_previous_checkpoint_restorable(smoke_config, tmp_path):
  with smoke_config.unlocked():
    smoke_config.train.num_steps = 8
  workdir = str(tmp_path)
  loop.train_and_evaluate(smoke_config, workdir)
  _, before = checkpoint.load_checkpoint(workdir, which="latest")
  # What a kill during Orbax's write of step 12 leaves: its temporary folder, half written.
  latest = tmp_path / "checkpoints" / "latest"
  partial = latest / "12.orbax-checkpoint-tmp"
  shutil.copytree(latest / "8", partial)
  for f in sorted(p for p in partial.rglob("*") if p.is_file())[::2]:
    f.write_bytes(f.read_bytes()[: len(f.read_bytes()) // 2])
  _, after = checkpoint.load_checkpoint(workdir, which="latest")
  _assert_same_params(after, before)
  with smoke_config.unlocked():
    smoke_config.train.num_steps = 16
  assert loop.train_and_evaluate(smoke_config, workdir)["step"] == 16  # Resumes from 8.


def test_same_config_and_seed_give_identical_params_and_samples(smoke_config, tmp_path,
                                                              smoke_reference):
  reference, want = smoke_reference  # The same config, trained once per test run.
  got = loop.train_and_evaluate(smoke_config, str(tmp_path))
  _, pa = checkpoint.load_checkpoint(reference, which="latest")
  _, pb = checkpoint.load_checkpoint(str(tmp_path), which="latest")
  _assert_same_params(pa, pb)
  from jaxddpm import images
  np.testing.assert_array_equal(images.read_png(want["samples"]), images.read_png(got["samples"]))
