"""Training and sampling throughput of jaxddpm's models; prints a Markdown table.
A few minutes on a 2-core CPU per model and batch (compiles included).

  python bench/throughput.py                       # CPU-sized defaults
  python bench/throughput.py --models template-small --torch eager,compile  # vs PyTorch
  python bench/throughput.py --models template-small,unet --batches 128,256 \
      --dtypes float32,bfloat16 --sample_count 10000

Train: steady-state images/s of the jitted train step (compile time reported
apart), FLOPs per image from XLA's cost analysis of the lowered (not yet optimised)
step and the FLOP/s achieved; with --steps_per_dispatch K also K steps per call, as
the training loop runs them (--chunk_only times only that: one compile fewer).
Sample: images/s for DDIM-50 with CFG as `sampling.make_sampler` runs it (for
TemplateUNet the label-free encoder once for both CFG halves).
XLA:CPU compiler options: jaxddpm's (jaxddpm/xla.py); JAXDDPM_XLA_DEFAULTS=1 times
XLA's defaults instead.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from configs import base  # noqa: E402
from jaxddpm import loop, parallel, sampling, train  # noqa: E402

MODELS = {
    "template-small": dict(name="template", template_preset="small"),
    "template-wide": dict(name="template", template_preset="wide"),
    "unet": dict(name="unet"),  # The base config's default UNet.
    "unet-cpu": dict(name="unet", base_channels=32, num_res_blocks=1,
                     attention_resolutions=(7,), dropout=0.0),
}


def _config(model: str, dtype: str, size: int, channels: int):
  c = base.get_config()
  c.model.update(MODELS[model], dtype=dtype)
  c.data.update(image_size=size, channels=channels)
  if size == 32 and c.model.name == "unet":
    c.model.attention_resolutions = tuple(16 if r == 14 else 8 if r == 7 else r
                                          for r in c.model.attention_resolutions)
  return c


def _cpu_name() -> str:
  """The CPU's model name: the ratios to PyTorch differ by CPU (an AMD EPYC and an
  Intel Xeon with AMX, docs/results.md), so every table should say which ran it."""
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def _flops(lowered) -> float:
  """XLA's FLOP count of the step before optimisation. After it, XLA:GPU leaves
  out the convolutions it hands to cuDNN (0.04 instead of 1.5 GFLOP per image for
  TemplateUNet small), so the compiled count cannot give a GPU's MFU."""
  cost = lowered.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float((cost or {}).get("flops", float("nan")))  # None: jax 0.11 on a GPU.


def matmul_peak(dtype: str, n: int = 4096, iters: int = 5) -> float:
  """Measured TFLOP/s of an n x n matmul on the default device: the denominator
  of the 'of peak' column (a measured, not a datasheet, peak)."""
  a = jnp.ones((n, n), dtype)
  f = jax.jit(lambda x: x @ x)
  jax.block_until_ready(f(a))
  t0 = time.perf_counter()
  for _ in range(iters):
    out = f(a)
  jax.block_until_ready(out)
  return 2 * n**3 * iters / (time.perf_counter() - t0) / 1e12


def bench_train(c, batch: int, iters: int, sharded: bool = False, k: int = 1,
                chunk_only: bool = False) -> dict:
  model, _, tx, step, _ = train.make_steps(c)
  params = train.init_params(model, c, jax.random.key(0))
  state = train.create_train_state(params, tx)
  s = c.data.image_size
  data = {"image": jnp.full((batch, s, s, c.data.channels), 128, jnp.uint8),
          "label": jnp.arange(batch, dtype=jnp.int32) % c.data.num_classes}
  if sharded:  # Data parallel over all devices, as the training loop does.
    mesh = parallel.make_mesh()
    state, data = parallel.replicate(state, mesh), parallel.shard_batch(data, mesh)
  key = jax.random.key(1)
  lowered = step.lower(state, data, key)
  flops = _flops(lowered)  # Global: counted before the program is split over devices.
  out = dict(gflop_img=flops / batch / 1e9, img_s=float("nan"), compile_s=float("nan"))
  if not (chunk_only and k > 1):
    t0 = time.perf_counter()
    compiled = lowered.compile()
    out["compile_s"] = time.perf_counter() - t0
    state, m = compiled(state, data, key)
    jax.block_until_ready(m)
    t0 = time.perf_counter()
    for _ in range(iters):
      state, m = compiled(state, data, key)
    jax.block_until_ready(m)
    out["img_s"] = batch * iters / (time.perf_counter() - t0)
  # The step donates the state: params for sampling come from the last result.
  out["params"] = state.ema_params
  if k > 1:
    # The chunk donates the state: the params for sampling come from its result.
    out["chunk_img_s"], out["params"], chunk_compile_s = _bench_chunk(
        step, state, data, key, batch, iters, k, parallel.make_mesh() if sharded else None)
    if chunk_only:
      out["compile_s"] = chunk_compile_s
  # FLOP/s of the fastest way timed: what the hardware achieved.
  best = max(v for v in (out["img_s"], out.get("chunk_img_s", float("nan"))) if v == v)
  out["tflops"] = flops / batch * best / 1e12
  return out


def _bench_chunk(step, state, data, key, batch: int, iters: int, k: int, mesh):
  """Images/s of k steps per dispatch, as the training loop runs them
  (`loop.make_chunk_fn`: one lax.scan gathering each batch from device memory)."""
  chunk = loop.make_chunk_fn(step, batch, mesh, steps=k)
  images = jnp.tile(data["image"], (k, 1, 1, 1))
  labels = jnp.tile(data["label"], (k,))
  perm = jnp.arange(k * batch, dtype=jnp.int32)
  if mesh is not None:
    images, labels, perm = parallel.replicate((images, labels, perm), mesh)
  t0 = time.perf_counter()
  compiled = chunk.lower(state, images, labels, perm, 0, key, k).compile()
  compile_s = time.perf_counter() - t0
  state, m = compiled(state, images, labels, perm, 0, key, k)
  jax.block_until_ready(m)
  calls = max(1, iters // k)
  t0 = time.perf_counter()
  for _ in range(calls):
    state, m = compiled(state, images, labels, perm, 0, key, k)
  jax.block_until_ready(m)
  return calls * k * batch / (time.perf_counter() - t0), state.ema_params, compile_s


def bench_sample(c, params, count: int, steps: int, guidance: float,
                 sampler: str = "ddim") -> dict:
  sample = sampling.make_sampler(c, steps=steps, guidance_scale=guidance, sampler=sampler)
  labels = np.arange(count, dtype=np.int32) % c.data.num_classes
  t0 = time.perf_counter()
  jax.block_until_ready(sample(params, jax.random.key(0), labels))
  first = time.perf_counter() - t0
  t0 = time.perf_counter()
  jax.block_until_ready(sample(params, jax.random.key(1), labels))
  dt = time.perf_counter() - t0
  return dict(sample_img_s=count / dt, sample_s=dt, sample_compile_s=first - dt)


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--models", default="template-small,unet-cpu")
  p.add_argument("--batches", default="128")
  p.add_argument("--dtypes", default="float32")
  p.add_argument("--shapes", default="28x1", help="e.g. 28x1,32x3")
  p.add_argument("--iters", type=int, default=5)
  p.add_argument("--sample_count", type=int, default=100, help="0 skips sampling")
  p.add_argument("--sample_steps", type=int, default=50)
  p.add_argument("--guidance", type=float, default=3.0)
  p.add_argument("--ddpm_count", type=int, default=0, help="also time DDPM over all T "
                 "steps with CFG on this many images (0 skips; slow on a CPU)")
  p.add_argument("--sharded", action="store_true", help="shard the batch over all devices "
                 "(e.g. XLA_FLAGS=--xla_force_host_platform_device_count=4)")
  p.add_argument("--steps_per_dispatch", type=int, default=1, help="also time K train "
                 "steps per compiled call, as the training loop's lax.scan runs them")
  p.add_argument("--chunk_only", action="store_true", help="with --steps_per_dispatch K: "
                 "time only the K-step call (saves a compile, ~50 s on a GPU)")
  p.add_argument("--peak", action="store_true", help="measure matmul peak; print MFU")
  p.add_argument("--torch", default="", help="also time PyTorch (bench/torch_baseline.py) for "
                 "template-* models in these modes, e.g. eager,compile; prints ratios")
  a = p.parse_args()
  _check_args(p, a)
  dev = jax.devices()[0]
  print(f"jax {jax.__version__} on {dev.platform}: {getattr(dev, 'device_kind', '')} "
        f"x{jax.device_count()}; host {_cpu_name()}, "
        f"{os.cpu_count()} cpus; {time.strftime('%Y-%m-%d')}")
  peaks = {d: matmul_peak(d) for d in a.dtypes.split(",")} if a.peak else {}
  for d, v in peaks.items():
    print(f"measured {d} matmul peak (4096^2): {v:.3f} TFLOP/s")
  if a.sharded:
    print(f"batch sharded over {jax.device_count()} devices")
  ddpm = f" DDPM-T+CFG img/s ({a.ddpm_count}) |" if a.ddpm_count else ""
  K = a.steps_per_dispatch
  chunked = f" train img/s, {K} steps per dispatch |" if K > 1 else ""
  print("| model | shape | dtype | batch | train img/s | GFLOP/img | TFLOP/s | compile s "
        f"|{chunked} DDIM-{a.sample_steps}+CFG img/s ({a.sample_count}) |" + ddpm
        + (" of matmul peak |" if peaks else ""))
  print("| --- " * (9 + bool(chunked) + bool(ddpm) + bool(peaks)) + "|")
  nan = {"sample_img_s": float("nan")}
  for model in a.models.split(","):
    for shape in a.shapes.split(","):
      size, ch = (int(v) for v in shape.split("x"))
      for dtype in a.dtypes.split(","):
        for i, batch in enumerate(int(b) for b in a.batches.split(",")):
          c = _config(model, dtype, size, ch)
          r = bench_train(c, batch, a.iters, a.sharded, K, a.chunk_only)
          # Sampling does not depend on the training batch: timed with the first.
          first = i == 0
          s = (bench_sample(c, r["params"], a.sample_count, a.sample_steps, a.guidance)
               if a.sample_count and first else nan)
          d = (bench_sample(c, r["params"], a.ddpm_count, c.diffusion.num_timesteps,
                            a.guidance, "ddpm") if a.ddpm_count and first else nan)
          print(f"| {model} | {size}x{size}x{ch} | {dtype} | {batch} | {_num(r['img_s'])} | "
                f"{r['gflop_img']:.2f} | {r['tflops']:.3f} | {r['compile_s']:.1f} | "
                + (f"{r['chunk_img_s']:.0f} | " if chunked else "")
                + f"{_num(s['sample_img_s'])} |"
                + (f" {_num(d['sample_img_s'])} |" if ddpm else "")
                + (f" {r['tflops'] / peaks[dtype]:.0%} |" if peaks else ""), flush=True)
          if a.torch and model.startswith("template-"):
            _torch_rows(model.split("-", 1)[1], batch, size, ch, dtype, a, r,
                        s if first else None, chunked=bool(chunked))


def _check_args(p, a) -> None:
  """argparse's one-line error for anything the benchmark loops would trip over."""
  def ints(text):
    try:
      return [int(v) for v in text.split(",")]
    except ValueError:
      return [0]
  if sorted(set(a.models.split(",")) - set(MODELS)):
    p.error(f"--models: choose from {sorted(MODELS)}, got {a.models!r}.")
  if set(a.dtypes.split(",")) - {"float32", "bfloat16"}:
    p.error(f"--dtypes: float32 and/or bfloat16, got {a.dtypes!r}.")
  if any(len(s.split("x")) != 2 or min(ints(s.replace("x", ","))) < 1
         for s in a.shapes.split(",")):
    p.error(f"--shapes: SIZExCHANNELS, e.g. 28x1,32x3, got {a.shapes!r}.")
  if min(ints(a.batches)) < 1 or a.iters < 1 or a.steps_per_dispatch < 1 or a.sample_steps < 1:
    p.error("--batches, --iters, --steps_per_dispatch and --sample_steps must be >= 1.")
  if a.sample_count < 0 or a.ddpm_count < 0:
    p.error("--sample_count and --ddpm_count must be >= 0.")
  if a.torch:
    if set(a.torch.split(",")) - {"eager", "compile"}:
      p.error(f"--torch: eager and/or compile, got {a.torch!r}.")
    try:
      import torch  # noqa: F401
    except ImportError:
      p.error("--torch needs PyTorch: pip install -e '.[bench]' (on a CPU: torch==2.13.0).")


def _num(v: float) -> str:
  return "" if v != v else f"{v:.2f}" if v < 10 else f"{v:.1f}" if v < 1000 else f"{v:.0f}"


def _torch_rows(preset, batch, size, ch, dtype, a, jax_train, jax_sample, chunked=False):
  """The same model, step and sampler in PyTorch (bfloat16: under autocast), and
  jaxddpm / PyTorch ratios."""
  skip = " |" if chunked else ""  # PyTorch has no K-steps column.
  import torch_baseline  # bench/ is on sys.path when this script runs.
  for mode in a.torch.split(","):
    t = torch_baseline.measure(preset, batch, size, ch, mode, a.iters, a.sample_count or 20,
                               dtype=dtype)
    print(f"| torch {mode} template-{preset} | {size}x{size}x{ch} | {dtype} | {batch} | "
          f"{t['train_ips']:.0f} | | | {t['warmup_s']:.1f} |{skip} {_num(t['sample_ips'])} |")
    print(f"| torch {mode}, CFG as a 2B pass | | | | | | | |{skip} "
          f"{_num(t['sample_2pass_ips'])} |")
    sampled = jax_sample is not None and jax_sample["sample_img_s"] == jax_sample["sample_img_s"]
    ratio = "" if not sampled else (
        f"**{jax_sample['sample_img_s'] / t['sample_ips']:.2f}x** "
        f"(vs 2B pass: {jax_sample['sample_img_s'] / t['sample_2pass_ips']:.2f}x)")
    k_ratio = (f" **{jax_train['chunk_img_s'] / t['train_ips']:.2f}x** |" if chunked else "")
    single = jax_train["img_s"] / t["train_ips"]
    single = f"**{single:.2f}x**" if single == single else ""
    print(f"| **jaxddpm / torch {mode}** | | | | {single} | | | |{k_ratio} {ratio} |",
          flush=True)


if __name__ == "__main__":
  main()
