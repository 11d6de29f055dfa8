"""Progress bars (tqdm) and a run's logs: metrics.jsonl and TensorBoard events."""

from __future__ import annotations

import json
import numbers
import os
import sys
import time

import numpy as np
import tqdm

from jaxddpm import files


def bar(total: int, desc: str, *, start: int = 0, quiet: bool = False) -> tqdm.tqdm:
  """A tqdm bar on stderr counting to `total` from `start`. On a terminal it redraws
  in place; in a log file (no TTY) it writes a line every 30 s at most."""
  return tqdm.tqdm(total=total, initial=start, desc=desc, disable=quiet, file=sys.stderr,
                   dynamic_ncols=True, mininterval=0.1 if sys.stderr.isatty() else 30.0)


def advance(progress: tqdm.tqdm, n: int, **postfix) -> None:
  """Moves `progress` to count n (absolute), showing `postfix` (e.g. loss=0.03)."""
  if postfix:
    progress.set_postfix({k: f"{v:.4g}" if isinstance(v, float) else v
                          for k, v in postfix.items()}, refresh=False)
  progress.update(n - progress.n)


class MetricsLog:
  """Appends one JSON object per line to workdir/metrics.jsonl. On several hosts
  only the first writes (the others compute the same numbers). Each record gets
  `wall_time` (Unix seconds): the gaps between records show where a run's time
  went (compiles, epoch ends, checkpoints), also across a resume.

  With `tensorboard_from` (the step the run starts at), the numbers of each
  step's record (not the `event` records) and the sample grids also go to
  TensorBoard event files in the same folder: `tensorboard --logdir runs/`.
  tensorboardX writes them without TensorFlow. A resume drops what an earlier
  try logged past its start, so the curves do not double back.
  """

  def __init__(self, path: str, *, writer: bool = True, tensorboard_from: int | None = None):
    self.path, self.writer, self.tensorboard = path, writer, None
    if writer:
      folder = os.path.dirname(os.path.abspath(path))
      os.makedirs(folder, exist_ok=True)
      if tensorboard_from is not None:
        from tensorboardX import SummaryWriter  # Loads protobuf: only for training.
        self.tensorboard = SummaryWriter(folder, purge_step=tensorboard_from or None,
                                         flush_secs=30)

  def write(self, **record) -> None:
    if not self.writer:
      return
    clean = {k: (float(v) if hasattr(v, "item") else v) for k, v in record.items()}
    clean.setdefault("wall_time", round(time.time(), 3))
    with open(self.path, "a") as f:
      f.write(files.json_text(clean) + "\n")
    if self.tensorboard is not None and "step" in clean and "event" not in clean:
      for k, v in clean.items():
        if (k not in ("step", "wall_time") and isinstance(v, numbers.Real)
            and not isinstance(v, bool)):
          self.tensorboard.add_scalar(k, v, clean["step"], walltime=clean["wall_time"])

  def image(self, tag: str, picture: np.ndarray, step: int) -> None:
    """A uint8 [H, W, 3] picture (a sample grid) under `tag` at `step`."""
    if self.tensorboard is not None:
      self.tensorboard.add_image(tag, picture, step, dataformats="HWC")

  def close(self) -> None:
    if self.tensorboard is not None:
      self.tensorboard.close()
      self.tensorboard = None


def read_metrics(path: str) -> list[dict]:
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]
