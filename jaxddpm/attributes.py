"""Attributes by name, and what a run knows of its data without loading it.

A training run writes `data.json` into its workdir: the dataset, whether it was a
generated stand-in, and for attribute data (CelebA) the attribute names, with the
training set's attribute vectors beside it (`attributes.npy`, one bit each).
Sampling then needs neither the data nor its loader:

    labels = attribute_labels(workdir, "Smiling,Eyeglasses,-Male", n=16)   # [16, 40]
    images = make_sampler(config)(params, key, labels)

A name sets its attribute to 1, `-name` to 0. Every attribute not named is drawn
per image from the training data: each image takes the attributes of a training
face (drawn at random) that agrees with all the named ones, so "Smiling" gives
varied faces, each a combination that occurs in the data (no beard drawn onto a
face asked to be "-Male"). Where no training face agrees with the request, the
unnamed attributes are drawn independently at their frequencies.
"""

from __future__ import annotations

import difflib
import io
import json
import os

import numpy as np

from jaxddpm import files

DATA_FILE = "data.json"
ATTRIBUTES_FILE = "attributes.npy"
# Rows of the sample grid that training writes for CelebA: attributes a person
# can check at a glance. Data sets with other names get one row per attribute.
CELEBA_GRID = ("Smiling", "-Smiling", "Eyeglasses", "Male", "-Male", "Blond_Hair",
               "Black_Hair", "Wearing_Hat")


def save_run_data(workdir: str, dataset: str, train_split) -> None:
  """Writes workdir/data.json (and attributes.npy for attribute data)."""
  labels = np.asarray(train_split.labels)
  info = dict(dataset=dataset, stand_in=bool(train_split.stand_in), num_train=len(labels),
              names=list(train_split.names))
  if labels.ndim == 2:
    present = labels > 0.5
    info["frequencies"] = [round(float(f), 5) for f in present.mean(0)]
    buf = io.BytesIO()
    np.save(buf, np.packbits(present, axis=1))
    files.write_atomic(os.path.join(workdir, ATTRIBUTES_FILE), buf.getvalue())
  files.write_atomic(os.path.join(workdir, DATA_FILE), json.dumps(info, indent=2))


def load_run_data(workdir: str) -> dict:
  """workdir/data.json ({} for runs that predate it), with "present": bool [N, K]
  training attribute vectors where the run has them."""
  path = os.path.join(workdir, DATA_FILE)
  if not os.path.isfile(path):
    return {}
  with open(path) as f:
    info = json.load(f)
  bits = os.path.join(workdir, ATTRIBUTES_FILE)
  if info.get("frequencies") and os.path.isfile(bits):
    info["present"] = np.unpackbits(np.load(bits), axis=1,
                                    count=len(info["names"])).astype(bool)
  return info


def parse(request: str, names) -> dict[int, bool]:
  """'Smiling,Eyeglasses,-Male' -> {index: wanted} (a name: present, -name: absent).
  Names are matched ignoring case."""
  index = {n.lower(): i for i, n in enumerate(names)}
  wanted: dict[int, bool] = {}
  for item in (x.strip() for x in request.split(",")):
    if not item:
      continue
    name, value = (item[1:], False) if item.startswith("-") else (item.lstrip("+"), True)
    if name.lower() not in index:
      close = difflib.get_close_matches(name.lower(), list(index), n=1)
      hint = f" (did you mean {names[index[close[0]]]!r}?)" if close else ""
      raise ValueError(f"unknown attribute {name!r}{hint}; the attributes are: "
                       f"{', '.join(names)}.")
    i = index[name.lower()]
    if wanted.get(i, value) != value:
      raise ValueError(f"attribute {names[i]!r} is asked for both with and without.")
    wanted[i] = value
  if not wanted:
    raise ValueError(f"no attribute named in {request!r}; write e.g. "
                     f"'{names[0]},-{names[-1]}'.")
  return wanted


def labels_for(request: str, names, present: np.ndarray | None, n: int,
               seed: int = 0, frequencies=None) -> np.ndarray:
  """float32 [n, K] multi-hot labels for `request` (see `parse`): the named
  attributes as asked, the others drawn per image from the training vectors
  `present` (bool [N, K]) that agree with the request, else at `frequencies`."""
  if n < 1:
    raise ValueError(f"need at least one image per request, got {n}.")
  wanted = parse(request, names)
  rng = np.random.default_rng(seed)
  cols, vals = list(wanted), np.array(list(wanted.values()))
  match = (np.flatnonzero((present[:, cols] == vals).all(1)) if present is not None
           else np.empty(0, int))
  if match.size:
    out = present[rng.choice(match, n)].copy()
  else:
    if frequencies is None and present is not None:
      frequencies = present.mean(0)
    if frequencies is None:
      raise ValueError("no training attributes to draw the unnamed attributes from.")
    out = rng.random((n, len(names))) < np.asarray(frequencies)
  out[:, cols] = vals
  return out.astype(np.float32)


def attribute_labels(workdir: str, request: str, n: int, seed: int = 0) -> np.ndarray:
  """float32 [n, K] labels for a trained attribute run in `workdir` (see `labels_for`)."""
  info = load_run_data(workdir)
  if not info.get("frequencies"):
    raise ValueError(f"{workdir} holds no attribute run's data.json (attributes are "
                     "named for CelebA-like data; class runs take --labels).")
  return labels_for(request, info["names"], info.get("present"), n, seed,
                    info["frequencies"])


def grid_requests(names) -> list[str]:
  """The rows of an attribute run's sample grid: CELEBA_GRID where the names are
  CelebA's, else one row per attribute (at most eight)."""
  have = {n.lower() for n in names}
  rows = [r for r in CELEBA_GRID if r.lstrip("-").lower() in have]
  return rows if len(rows) == len(CELEBA_GRID) else list(names[:8])


def rows_for(workdir: str, requests: str | None, n: int, seed: int = 0):
  """(float32 labels [rows * n, K], captions) for an attribute run: one row of n
  images per request in `requests` ('Smiling,-Male;Eyeglasses': rows split by
  ';'), or the grid's rows (`grid_requests`) when None."""
  info = load_run_data(workdir)
  if not info.get("frequencies"):
    raise ValueError(f"{workdir} has no {DATA_FILE} with attribute names (written when "
                     "training starts): train the run with this version of jaxddpm first.")
  names = info["names"]
  rows = ([r for r in requests.split(";") if r.strip()] if requests
          else grid_requests(names))
  labels = [labels_for(r, names, info.get("present"), n, seed + i, info["frequencies"])
            for i, r in enumerate(rows)]
  return np.concatenate(labels), tuple(r.strip().replace(",", ", ") for r in rows)
