"""PyTorch reference for the speed comparison: the same TemplateUNet, train step and
DDIM + CFG sampler as jaxddpm, timed in eager mode and under torch.compile.

  pip install -e ".[bench]"          # torch (CPU: pip install torch==2.13.0)
  python bench/torch_baseline.py --presets small --batches 128 --modes eager,compile
  python bench/throughput.py --torch  # jaxddpm and this, same run, with ratios

The network mirrors jaxddpm/models/template_unet.py layer for layer (parameter
counts are printed and must match: small 1,703,553 at 28x28x1); the train step is
ε-MSE with Adam and global-norm clipping; the sampler is DDIM with CFG, timed two
ways: as jaxddpm samples (the label-free encoder run once for both CFG halves,
`sample_ips`) and as a plain batched pass of 2B images per step
(`sample_2pass_ips`, what the seed's code does). `--dtypes bfloat16` runs the model
under bf16 autocast (float32 params), the counterpart of jaxddpm's
model.dtype=bfloat16. On a GPU cuDNN's benchmark mode is on (it picks the fastest
convolution algorithms, as XLA's autotuning does for jaxddpm) and the warm-up
steps pay for it.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

PRESETS = {"small": ((32, 64, 128), 8), "wide": ((64, 128, 256), 256)}
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
torch.backends.cudnn.benchmark = True  # Fastest conv algorithms: XLA autotunes jaxddpm's.


def _sync():
  if DEVICE.type == "cuda":
    torch.cuda.synchronize()


class GELUConv(nn.Sequential):
  def __init__(self, cin, cout, groups):
    super().__init__(nn.Conv2d(cin, cout, 3, padding=1), nn.GroupNorm(min(groups, cout), cout),
                     nn.GELU())


class Residual(nn.Module):
  def __init__(self, cin, cout, groups):
    super().__init__()
    self.a, self.b = GELUConv(cin, cout, groups), GELUConv(cout, cout, groups)

  def forward(self, x):
    x1 = self.a(x)
    return x1 + self.b(x1)


class Down(nn.Module):
  def __init__(self, cin, cout, groups):
    super().__init__()
    self.convs = nn.Sequential(GELUConv(cin, cout, groups), GELUConv(cout, cout, groups))
    self.pool = GELUConv(4 * cout, cout, groups)

  def forward(self, x):
    skip = self.convs(x)
    pooled = F.pixel_unshuffle(skip, 2)  # Space-to-depth, as einops' rearrange.
    return self.pool(pooled), skip


class Up(nn.Module):
  def __init__(self, cin, cskip, cout, groups):
    super().__init__()
    self.up = nn.ConvTranspose2d(cin, cout, 2, stride=2)
    self.convs = nn.Sequential(GELUConv(cout + cskip, cout, groups),
                               *[GELUConv(cout, cout, groups) for _ in range(3)])

  def forward(self, x, skip):
    return self.convs(torch.cat([self.up(x), skip], 1))


class Embed(nn.Sequential):
  def __init__(self, cin, cout):
    super().__init__(nn.Linear(cin, cout), nn.GELU(), nn.Linear(cout, cout))


class TemplateUNet(nn.Module):
  def __init__(self, preset="small", channels=1, num_classes=10, T=1000):
    super().__init__()
    (c0, c1, c2), self.t_dim = PRESETS[preset]
    self.T, self.num_classes = T, num_classes
    self.down0 = Residual(channels, c0, 8)
    self.down1, self.down2 = Down(c0, c1, 32), Down(c1, c2, 32)
    self.mid = Residual(c2, c2, 32)
    self.temb1, self.temb2 = Embed(self.t_dim, c2), Embed(self.t_dim, c1)
    self.cemb1, self.cemb2 = Embed(num_classes, c2), Embed(num_classes, c1)
    self.up1, self.up2 = Up(c2, c2, c1, 32), Up(c1, c1, c0, 8)
    self.out_conv = nn.Conv2d(2 * c0, c0, 3, padding=1)
    self.out_norm = nn.GroupNorm(min(8, c0), c0)
    self.out = nn.Conv2d(c0, channels, 3, padding=1)

  def forward(self, x, t, labels, use, guidance_scale=None):
    """One prediction; or, with guidance_scale, the CFG one with a shared encoder."""
    half = self.t_dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=x.device) / (half - 1))
    args = (t.float() / self.T)[:, None] * freqs[None]
    t_emb = torch.cat([args.sin(), args.cos()], -1)
    down0 = self.down0(x)
    down1, skip1 = self.down1(down0)
    down2, skip2 = self.down2(down1)
    mid = self.mid(down2)
    B = x.shape[0]
    if guidance_scale is not None:
      down0, skip1, skip2, mid, t_emb, labels = (
          torch.cat([a, a]) for a in (down0, skip1, skip2, mid, t_emb, labels))
      use = torch.arange(2 * B, device=x.device) < B
    cond = F.one_hot(labels, self.num_classes).float() * use.float()[:, None]
    v = lambda e: e[:, :, None, None]
    h = self.up1(v(self.cemb1(cond)) * mid + v(self.temb1(t_emb)), skip2)
    h = self.up2(v(self.cemb2(cond)) * h + v(self.temb2(t_emb)), skip1)
    h = F.relu(self.out_norm(self.out_conv(torch.cat([h, down0], 1))))
    out = self.out(h)
    if guidance_scale is None:
      return out
    return out[B:] + guidance_scale * (out[:B] - out[B:])


def cosine_alpha_bars(T=1000, s=0.008, max_beta=0.999):
  steps = np.arange(T + 1, dtype=np.float64) / T
  f = np.cos((steps + s) / (1 + s) * np.pi / 2) ** 2
  ab = f / f[0]
  betas = np.minimum(1 - ab[1:] / ab[:-1], max_beta)
  return torch.tensor(np.cumprod(1 - betas), dtype=torch.float32, device=DEVICE)


def _autocast(dtype: str):
  """bf16 compute with float32 params (torch's mixed precision), as jaxddpm's
  model.dtype=bfloat16; float32: no autocast."""
  return torch.autocast(DEVICE.type, dtype=torch.bfloat16, enabled=dtype == "bfloat16")


def make_train_step(model, opt, alpha_bars, p_uncond=0.1, dtype="float32"):
  def step(x0, labels):
    B = x0.shape[0]
    t = torch.randint(0, len(alpha_bars), (B,), device=DEVICE)
    eps = torch.randn_like(x0)
    ab = alpha_bars[t][:, None, None, None]
    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
    use = torch.rand(B, device=DEVICE) >= p_uncond
    with _autocast(dtype):
      pred = model(x_t, t, labels, use)
    loss = F.mse_loss(pred.float(), eps)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    return loss
  return step


@torch.no_grad()
def ddim_cfg(model, alpha_bars, labels, shape, steps=50, scale=2.0, shared=True,
             dtype="float32"):
  """DDIM (eta 0) with CFG in one model call per step (shared: the encoder once for
  both halves, as jaxddpm; else a pass over 2B); x0 clipped like jaxddpm."""
  T = len(alpha_bars)
  ts = np.linspace(0, T - 1, steps).round().astype(int)[::-1]
  B = labels.shape[0]
  x = torch.randn(B, *shape, device=DEVICE)
  use = torch.cat([torch.ones(B, dtype=torch.bool, device=DEVICE),
                   torch.zeros(B, dtype=torch.bool, device=DEVICE)])
  for i, t in enumerate(ts):
    ab = alpha_bars[t]
    ab_prev = alpha_bars[ts[i + 1]] if i + 1 < len(ts) else torch.tensor(1.0, device=DEVICE)
    with _autocast(dtype):
      if shared:
        eps = model(x, torch.full((B,), int(t), device=DEVICE), labels, None, scale)
      else:
        pred = model(torch.cat([x, x]), torch.full((2 * B,), int(t), device=DEVICE),
                     torch.cat([labels, labels]), use)
        eps = pred[B:] + scale * (pred[:B] - pred[B:])
    eps = eps.float()
    x0 = ((x - (1 - ab).sqrt() * eps) / ab.sqrt()).clamp(-1, 1)
    eps = (x - ab.sqrt() * x0) / (1 - ab).sqrt()
    x = ab_prev.sqrt() * x0 + (1 - ab_prev).sqrt() * eps
  return x


def measure(preset="small", batch=128, size=28, channels=1, mode="eager", iters=5,
            sample_count=20, seed=0, dtype="float32") -> dict:
  """Train images/s (steady state) and DDIM-50+CFG images/s for one setting;
  dtype bfloat16 runs the model under bf16 autocast (params stay float32)."""
  torch.manual_seed(seed)
  model = TemplateUNet(preset, channels).to(DEVICE)
  n_params = sum(p.numel() for p in model.parameters())
  opt = torch.optim.Adam(model.parameters(), lr=2e-4)
  alpha_bars = cosine_alpha_bars()
  net = torch.compile(model) if mode == "compile" else model
  step = make_train_step(net, opt, alpha_bars, dtype=dtype)
  x = torch.rand(batch, channels, size, size, device=DEVICE) * 2 - 1
  labels = torch.randint(0, 10, (batch,), device=DEVICE)
  t0 = time.perf_counter()
  for _ in range(2):  # Warm-up: compiles under torch.compile, cuDNN benchmarks.
    step(x, labels)
  _sync()
  warmup = time.perf_counter() - t0
  t0 = time.perf_counter()
  for _ in range(iters):
    step(x, labels)
  _sync()
  train_ips = iters * batch / (time.perf_counter() - t0)
  net.eval()
  sample_labels = torch.arange(sample_count, device=DEVICE) % 10
  ips = {}
  for shared in (True, False):
    ddim_cfg(net, alpha_bars, sample_labels, (channels, size, size), steps=2,
             shared=shared, dtype=dtype)  # Warm-up.
    _sync()
    t0 = time.perf_counter()
    ddim_cfg(net, alpha_bars, sample_labels, (channels, size, size), shared=shared,
             dtype=dtype)
    _sync()
    ips[shared] = sample_count / (time.perf_counter() - t0)
  return dict(preset=preset, batch=batch, shape=f"{size}x{size}x{channels}", mode=mode,
              dtype=dtype,
              params=n_params, train_ips=train_ips, warmup_s=warmup, sample_ips=ips[True],
              sample_2pass_ips=ips[False])


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--presets", default="small")
  p.add_argument("--batches", default="128")
  p.add_argument("--shapes", default="28x1", help="size x channels, comma-separated")
  p.add_argument("--modes", default="eager,compile")
  p.add_argument("--dtypes", default="float32", help="float32 and/or bfloat16 (autocast)")
  p.add_argument("--iters", type=int, default=5)
  p.add_argument("--sample_count", type=int, default=20)
  args = p.parse_args()
  print(f"torch {torch.__version__} on {DEVICE}, {torch.get_num_threads()} threads\n")
  print("| model | shape | mode | dtype | batch | params | train img/s | warm-up s "
        "| DDIM-50+CFG img/s | same, CFG as 2B pass |")
  print("|---|---|---|---|---|---|---|---|---|---|")
  for preset in args.presets.split(","):
    for shape in args.shapes.split(","):
      size, channels = (int(v) for v in shape.split("x"))
      for mode in args.modes.split(","):
        for dtype in args.dtypes.split(","):
          for batch in (int(b) for b in args.batches.split(",")):
            r = measure(preset, batch, size, channels, mode, args.iters, args.sample_count,
                        dtype=dtype)
            print(f"| template-{preset} | {r['shape']} | {mode} | {dtype} | {batch} | "
                  f"{r['params']:,} | "
                  f"{r['train_ips']:.0f} | {r['warmup_s']:.1f} | {r['sample_ips']:.1f} | "
                  f"{r['sample_2pass_ips']:.1f} |",
                  flush=True)


if __name__ == "__main__":
  main()
