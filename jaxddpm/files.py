"""Writing files so that a reader never sees half of one.

Every file jaxddpm writes outside Orbax (images, config.json, eval.json, the
evaluator classifier) goes to a temporary name first and is renamed when complete:
a run killed mid-write leaves the previous file, or none.
"""

from __future__ import annotations

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
