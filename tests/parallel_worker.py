"""Run by test_parallel.py in a subprocess with 4 forced CPU devices (XLA_FLAGS must
be set before jax is imported). Prints one JSON line of measurements."""

import json
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import smoke  # noqa: E402
from jaxddpm import loop, parallel, sampling, schedules, train  # noqa: E402


def tiny_config():
  c = smoke.tiny_config()  # The in-process tests' tiny config (tests/conftest.py).
  c.sampling.steps = 5
  return c


def max_diff(a, b):
  return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def main(workdir):
  out = {"devices": jax.device_count()}
  c = tiny_config()
  model, _, tx, step, _ = train.make_steps(c)
  params = train.init_params(model, c, jax.random.key(0))
  fresh = lambda: train.create_train_state(jax.tree.map(jnp.copy, params), tx)
  rng = np.random.default_rng(0)
  batch = {"image": rng.integers(0, 256, (8, 8, 8, 1), dtype=np.uint8),
           "label": (np.arange(8) % 4).astype(np.int32)}
  key = jax.random.key(3)
  device0 = jax.devices()[0]  # Everything committed there: one single-device compile.
  single, m1 = step(jax.device_put(fresh(), device0), jax.device_put(batch, device0), key)
  mesh = parallel.make_mesh()
  sharded_batch = parallel.shard_batch(batch, mesh)
  out["batch_shards"] = len(sharded_batch["image"].addressable_shards)
  out["shard_shape"] = list(sharded_batch["image"].addressable_shards[0].data.shape)
  # Compiled once, both to run and to read: what crosses devices (or leaves them).
  compiled = step.lower(parallel.replicate(fresh(), mesh), sharded_batch, key).compile()
  multi, m2 = compiled(parallel.replicate(fresh(), mesh), sharded_batch, key)
  out["step_loss_diff"] = abs(float(m1["loss"]) - float(m2["loss"]))
  out["step_param_diff"] = max_diff(single.params, multi.params)
  out["params_replicated"] = bool(jax.tree.leaves(multi.params)[0].sharding.is_fully_replicated)
  hlo = compiled.as_text()
  out["step_collectives"] = re.findall(
      r" (all-reduce|all-gather|all-to-all|reduce-scatter|collective-permute|send|recv|"
      r"custom-call|infeed|outfeed)(?:-start)?\(", hlo)

  # The loop's chunk (batch gathered on device, then sharded) against the same two
  # steps on one device (the single-device step above, compiled already).
  images = rng.integers(0, 256, (16, 8, 8, 1), dtype=np.uint8)
  labels = (np.arange(16) % 4).astype(np.int32)
  perm = np.asarray(jax.random.permutation(jax.random.key(1), 16))
  a = jax.device_put(fresh(), device0)
  for i in range(2):
    idx = perm[i * 8:(i + 1) * 8]
    a, _ = step(a, jax.device_put({"image": images[idx], "label": labels[idx]}, device0), key)
  b = loop.make_chunk_fn(step, 8, mesh, steps=2)(parallel.replicate(fresh(), mesh),
                                        *parallel.replicate((images, labels, perm), mesh),
                                        0, key, 2)[0]
  out["chunk_param_diff"] = max_diff(a.params, b.params)

  # Sampling: make_sampler shards a batch of 8 over the 4 devices.
  sample = sampling.make_sampler(c)
  got = sample(params, jax.random.key(5), np.arange(8) % 4)
  out["sample_sharded"] = not got.sharding.is_fully_replicated
  denoise = lambda x, t, y, u: model.apply({"params": params}, x, t, y, u, train=False)
  schedule = schedules.from_config(c.diffusion)
  want = jax.jit(lambda k, y: sampling.sample_loop(
      denoise, schedule, k, y, (8, 8, 1), sampler="ddim", steps=5,
      guidance_scale=c.sampling.guidance_scale, prediction=c.diffusion.prediction))(
          jax.device_put(jax.random.key(5), jax.devices()[0]),
          jax.device_put(jnp.arange(8) % 4, jax.devices()[0]))
  out["sample_diff"] = float(jnp.max(jnp.abs(np.asarray(got) - np.asarray(want))))

  # A batch the devices cannot split.
  c.train.batch_size = 30
  try:
    loop.train_and_evaluate(c, os.path.join(workdir, "never"))
    out["indivisible_error"] = ""
  except ValueError as e:
    out["indivisible_error"] = str(e)

  # The whole loop on :smoke, 4 steps, for the outer test to compare with 1 device.
  s = smoke.config(os.environ["JAXDDPM_DATA_DIR"])
  s.train.num_steps = 4
  loop.train_and_evaluate(s, os.path.join(workdir, "smoke4"))
  print(json.dumps(out))


if __name__ == "__main__":
  main(sys.argv[1])
