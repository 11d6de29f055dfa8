"""A small progress bar and the metrics log; no dependencies beyond the stdlib."""

from __future__ import annotations

import json
import math
import os
import sys
import time

from jaxddpm import files


def _clock(seconds: float) -> str:
  if not math.isfinite(seconds):
    return "--:--"
  m, s = divmod(int(seconds), 60)
  h, m = divmod(m, 60)
  return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class Progress:
  """`[####----] 120/500 loss=0.031 42.1 it/s ETA 00:09` on stderr.

  On a terminal the line redraws in place; in logs and CI (not a TTY) it prints a
  line about every 10% instead; quiet=True prints nothing.
  """

  def __init__(self, total: int, desc: str = "", *, start: int = 0, quiet: bool = False,
               stream=None):
    self.total, self.desc, self.n, self.quiet = total, desc, start, quiet
    self.stream = stream or sys.stderr
    self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
    self._t0, self._n0 = time.perf_counter(), start
    self._last_print = -1.0

  def rate(self) -> float:
    dt = time.perf_counter() - self._t0
    return (self.n - self._n0) / dt if dt > 0 else 0.0

  def update(self, n: int, **postfix) -> None:
    self.n = n
    if self.quiet:
      return
    rate = self.rate()
    eta = (self.total - n) / rate if rate > 0 else float("inf")
    frac = n / self.total if self.total else 1.0
    bar = "#" * int(20 * frac) + "-" * (20 - int(20 * frac))
    post = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                    for k, v in postfix.items())
    line = f"{self.desc} [{bar}] {n}/{self.total} {post} {rate:.3g} it/s ETA {_clock(eta)}"
    if self.tty:
      self.stream.write("\r" + line[:160].ljust(100))
    elif frac - self._last_print >= 0.1 or n >= self.total:
      self.stream.write(line + "\n")
      self._last_print = frac
    self.stream.flush()

  def close(self) -> None:
    """Ends the bar's line; again is a no-op (an interrupt closes it early)."""
    if self.tty and not self.quiet and not getattr(self, "_closed", False):
      self.stream.write("\n")
      self.stream.flush()
    self._closed = True


class MetricsLog:
  """Appends one JSON object per line to workdir/metrics.jsonl. On several hosts
  only the first writes (the others compute the same numbers). Each record gets
  `wall_time` (Unix seconds): the gaps between records show where a run's time
  went (compiles, epoch ends, checkpoints), also across a resume."""

  def __init__(self, path: str, *, writer: bool = True):
    self.path, self.writer = path, writer
    if writer:
      os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)

  def write(self, **record) -> None:
    if not self.writer:
      return
    clean = {k: (float(v) if hasattr(v, "item") else v) for k, v in record.items()}
    clean.setdefault("wall_time", round(time.time(), 3))
    with open(self.path, "a") as f:
      f.write(files.json_text(clean) + "\n")


def read_metrics(path: str) -> list[dict]:
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]
