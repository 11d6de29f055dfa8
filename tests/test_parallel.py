"""Data parallel on 4 forced CPU devices (in a subprocess: the device count is fixed
when jax starts) against the same computations on one device."""

import json
import os
import subprocess
import sys

import jax
import numpy as np

from jaxddpm import checkpoint, loop

HERE = os.path.dirname(os.path.abspath(__file__))


def test_four_devices_match_one(smoke_config, real_data_dir, tmp_path):
  env = dict(os.environ, JAXDDPM_DATA_DIR=real_data_dir,
             XLA_FLAGS="--xla_force_host_platform_device_count=4")
  r = subprocess.run([sys.executable, os.path.join(HERE, "parallel_worker.py"), str(tmp_path)],
                     capture_output=True, text=True, env=env, timeout=900)
  assert r.returncode == 0, r.stderr[-3000:]
  out = json.loads(r.stdout.strip().splitlines()[-1])
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
  with smoke_config.unlocked():
    smoke_config.train.num_steps = 4
  loop.train_and_evaluate(smoke_config, str(tmp_path / "one"))
  _, one = checkpoint.load_checkpoint(str(tmp_path / "one"), which="latest")
  _, four = checkpoint.load_checkpoint(str(tmp_path / "smoke4"), which="latest")
  # Adam scales every update to ~lr (1e-3 here) whatever the gradient's size, so
  # float summation order (4 shards vs 1) in a near-zero gradient shows at that
  # scale: 4 steps that may each move a parameter by 1e-3 agree to 1% of that.
  for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(four), strict=True):
    np.testing.assert_allclose(a, b, atol=4e-5)
