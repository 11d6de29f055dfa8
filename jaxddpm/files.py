"""Writing files so that a reader never sees half of one.

The JSON files meant for other tools (eval.json, metrics.jsonl, bench/quality.py's
--json) are strict JSON: see `json_text`.

Every file jaxddpm writes outside Orbax (images, config.json, eval.json, the
evaluator classifier) goes to a temporary name first and is renamed when complete:
a run killed mid-write leaves the previous file, or none.
"""

from __future__ import annotations

import json
import math
import os
import socket


def temp_path(path: str) -> str:
  """A temporary name beside `path`, one per process. Why per process: the hosts of
  a multi-host run share the workdir and caches and may write the same file at
  once; with one shared temporary name one host's rename pulled it from under the
  other's."""
  return f"{path}.tmp-{socket.gethostname()}-{os.getpid()}"


def write_atomic(path: str, payload: bytes | str) -> str:
  """Writes `payload` to `path` through a temporary file and a rename. Returns path."""
  tmp = temp_path(path)
  with open(tmp, "wb" if isinstance(payload, bytes) else "w") as f:
    f.write(payload)
  os.replace(tmp, path)
  return path


def json_text(obj, **kwargs) -> str:
  """json.dumps, with every non-finite float written as null. Why: Python's json
  writes inf and nan as `Infinity` and `NaN`, which strict parsers (JavaScript's
  JSON.parse, jq, many dashboards) refuse; an open guidance interval (σ > 1 is
  (1.0, inf)) or a diverged loss would make the whole file unreadable to them.
  null reads as "no bound" / "no number". config.json is not written this way:
  jaxddpm reads it back into a config, where inf must stay a float."""
  return json.dumps(_finite_or_none(obj), allow_nan=False, **kwargs)


def _finite_or_none(obj):
  if isinstance(obj, float):
    return obj if math.isfinite(obj) else None
  if isinstance(obj, dict):
    return {k: _finite_or_none(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [_finite_or_none(v) for v in obj]
  return obj
