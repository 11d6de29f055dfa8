"""files.py: whole-file writes and strict JSON."""

import io
import json
import math
import os

import numpy as np
import pytest

import smoke

from jaxddpm import files, progress


def test_write_atomic_replaces_the_file_whole_and_leaves_no_temporary(tmp_path):
  path = str(tmp_path / "a.json")
  files.write_atomic(path, "one")
  files.write_atomic(path, b"two")
  assert open(path, "rb").read() == b"two" and os.listdir(tmp_path) == ["a.json"]
  # One temporary name per process (hosts of a multi-host run share folders).
  temp = files.temp_path(path)
  assert temp.startswith(path + ".tmp-") and temp.endswith(f"-{os.getpid()}")


def _strict(text: str):
  """json.loads that refuses Infinity and NaN, as JavaScript's JSON.parse does."""
  def refuse(name):
    raise ValueError(f"not strict JSON: {name}")
  return json.loads(text, parse_constant=refuse)


def test_strict_parsers_refuse_what_python_writes_for_inf():
  with pytest.raises(ValueError, match="Infinity"):
    _strict(json.dumps([1.0, math.inf]))


def test_json_text_writes_non_finite_floats_as_null_anywhere():
  obj = dict(sampling=dict(guidance_interval=(1.0, math.inf), scale=2.0),
             metrics=[dict(loss=math.nan), dict(loss=-math.inf), 0.5], step=3, name="x")
  back = _strict(files.json_text(obj, indent=2))
  assert back == dict(sampling=dict(guidance_interval=[1.0, None], scale=2.0),
                      metrics=[dict(loss=None), dict(loss=None), 0.5], step=3, name="x")


def test_metrics_log_is_strict_json_lines(tmp_path):
  path = str(tmp_path / "metrics.jsonl")
  log = progress.MetricsLog(path)
  log.write(step=1, loss=math.nan)
  log.write(step=2, loss=0.25, interval=(0.3, math.inf))
  records = [_strict(line) for line in open(path)]
  assert [(r["step"], r["loss"]) for r in records] == [(1, None), (2, 0.25)]
  assert records[1]["interval"] == [0.3, None] and "wall_time" in records[0]


def test_metrics_log_writes_tensorboard_scalars_and_images(tmp_path):
  """What `tensorboard --logdir` shows: each step record's numbers as scalars
  (not bools, strings or the `event` records) and pictures as PNG images."""
  from PIL import Image
  log = progress.MetricsLog(str(tmp_path / "metrics.jsonl"), tensorboard_from=0)
  log.write(step=10, loss=0.5, lr=1e-3, stopped=True, name="x")
  log.write(step=20, loss=0.25, val_loss=0.375)
  log.write(step=20, event="checkpoint", seconds=1.5)
  picture = np.zeros((6, 8, 3), np.uint8)
  picture[:, :4, 0] = 255
  log.image("samples", picture, 20)
  log.close()
  events = smoke.tensorboard_events(str(tmp_path))
  scalars = sorted((t, s, v) for t, s, v in events if t != "samples")
  assert scalars == [("loss", 10, 0.5), ("loss", 20, 0.25), ("lr", 10, pytest.approx(1e-3)),
                     ("val_loss", 20, 0.375)]
  (png,) = [v for t, s, v in events if t == "samples" and s == 20]
  np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(png))), picture)
  # Only the first host logs: the others write no event file.
  other = tmp_path / "other"
  progress.MetricsLog(str(other / "metrics.jsonl"), writer=False, tensorboard_from=0).close()
  assert not other.exists()
