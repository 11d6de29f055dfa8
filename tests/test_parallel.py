"""Data parallel on 4 forced CPU devices (in a subprocess: the device count is fixed
when jax starts) against the same computations on one device."""

import json
import os
import subprocess
import sys

import jax
import numpy as np

import smoke
from jaxddpm import checkpoint, cli, loop

HERE = os.path.dirname(os.path.abspath(__file__))


def test_four_devices_match_one(smoke_config, small_data_dir, tmp_path):
  env = dict(os.environ, JAXDDPM_DATA_DIR=small_data_dir,
             XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} "
                       "--xla_force_host_platform_device_count=4")
  worker = subprocess.Popen([sys.executable, os.path.join(HERE, "parallel_worker.py"),
                             str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
  try:
    # Meanwhile (the worker mostly compiles, on one core), the same 4 steps of the
    # training loop as its last part, on this one device.
    with smoke_config.unlocked():
      smoke_config.train.num_steps = 4
    loop.train_and_evaluate(smoke_config, str(tmp_path / "one"))
    stdout, stderr = worker.communicate(timeout=900)
  finally:
    worker.kill()
  assert worker.returncode == 0, stderr[-3000:]
  out = json.loads(stdout.strip().splitlines()[-1])
  assert out["devices"] == 4
  assert out["batch_shards"] == 4 and out["shard_shape"] == [2, 8, 8, 1]
  assert out["step_loss_diff"] < 1e-5 and out["step_param_diff"] < 1e-5
  assert out["params_replicated"]
  # No hidden round trips: the gradients (and metrics) of all parameters cross the
  # devices in one combined all-reduce per step, and nothing goes to the host.
  assert out["step_collectives"] == ["all-reduce"], out["step_collectives"]
  assert out["chunk_param_diff"] < 1e-5
  assert out["sample_sharded"] and out["sample_diff"] < 1e-5
  assert "batch_size=30 is not divisible by the 4 devices" in out["indivisible_error"]
  # The training loop itself: 4 steps of :smoke on 4 devices vs on this one device.
  _, one = checkpoint.load_checkpoint(str(tmp_path / "one"), which="latest")
  _, four = checkpoint.load_checkpoint(str(tmp_path / "smoke4"), which="latest")
  # Adam scales every update to ~lr (1e-3 here) whatever the gradient's size, so
  # float summation order (4 shards vs 1) in a near-zero gradient shows at that
  # scale: 4 steps that may each move a parameter by 1e-3 agree to 1% of that.
  for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(four), strict=True):
    np.testing.assert_allclose(a, b, atol=4e-5)


def _free_port() -> int:
  import socket
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _launch_on_two_hosts(args, env):
  """launch.py --multihost as two processes (two "hosts" of one CPU device each,
  joined by jax.distributed over localhost, collectives by gloo)."""
  env = dict(env, JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{_free_port()}", JAX_NUM_PROCESSES="2")
  procs = [subprocess.Popen([sys.executable, os.path.join(HERE, "..", "launch.py"), *args,
                             "--multihost", "--quiet"], env=dict(env, JAX_PROCESS_ID=str(i)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i in range(2)]
  try:
    outs = [p.communicate(timeout=300) for p in procs]
  finally:
    for p in procs:  # One host failing leaves the other waiting at a barrier.
      p.kill()
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  return [err for _, err in outs]


def test_two_hosts_train_resume_and_match_one(smoke_reference, small_data_dir, tmp_path):
  """Multi-host as a SLURM job runs it, on one machine: both hosts write one shared
  workdir (Orbax coordinates the checkpoint writes, including the epoch end's
  "latest" and "best" of the same step), only the first writes metrics and prints,
  a resume restores across hosts, and the losses are those of one device."""
  env = dict(os.environ, JAXDDPM_DATA_DIR=small_data_dir)
  # Each host is one CPU device: the test run's compiler flags, no forced device count.
  env["XLA_FLAGS"] = " ".join(f for f in env.get("XLA_FLAGS", "").split()
                              if "device_count" not in f)
  workdir = str(tmp_path / "two")
  common = [*smoke.LAUNCH_ARGS, "--workdir", workdir]
  cwd = os.getcwd()
  os.chdir(os.path.join(HERE, ".."))
  try:
    first = _launch_on_two_hosts([*common, "--config.train.num_steps=16"], env)
    second = _launch_on_two_hosts([*common, "--config.train.num_steps=24"], env)
    # Sampling split over both hosts gives what one process gives from that checkpoint.
    sample = ["--mode=sample", "--workdir", workdir, "--labels=0,1,2,3"]
    _launch_on_two_hosts([*sample, "--out", str(tmp_path / "two_hosts")], env)
  finally:
    os.chdir(cwd)
  # What launch.py's sample mode runs, in this one process.
  cli.sample(workdir, labels="0,1,2,3", out=str(tmp_path / "one_host"))
  assert [e.count("done at step 16") for e in first] == [1, 0]
  assert [e.count("resuming at step 16") for e in second] == [1, 0]
  assert [e.count("done at step 24") for e in second] == [1, 0]
  ckpts = os.path.join(workdir, "checkpoints")
  assert sorted(os.listdir(os.path.join(ckpts, "latest")), key=int) == ["8", "16", "24"]
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f]
  # Validated: the epoch end, and the run's last step (both hosts, one loss); the
  # lower is "best".
  vals = {r["step"]: r["val_loss"] for r in records if "val_loss" in r}
  assert sorted(vals) == [16, 24]
  assert os.listdir(os.path.join(ckpts, "best")) == [str(min(vals, key=vals.get))]
  two = {r["step"]: r["loss"] for r in records if "loss" in r}
  assert len(two) == len([r for r in records if "loss" in r])  # Each step logged once.
  # The same 24 steps on this one device, in one process: the first 24 of the
  # 32-step reference run (each logged loss is that of the 4 steps before it).
  with open(os.path.join(smoke_reference[0], "metrics.jsonl")) as f:
    one = {r["step"]: r["loss"] for r in map(json.loads, f) if "loss" in r and r["step"] <= 24}
  assert sorted(two) == sorted(one) and 24 in one
  two_hosts, one_host = (np.load(tmp_path / f"{n}.npz") for n in ("two_hosts", "one_host"))
  np.testing.assert_array_equal(two_hosts["images"], one_host["images"])
  np.testing.assert_allclose([two[s] for s in sorted(one)], [one[s] for s in sorted(one)],
                             rtol=1e-5)
