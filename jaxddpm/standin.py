"""Generated stand-ins for CIFAR-10 and CelebA, in their official file layouts.

Neither data set can be downloaded everywhere (CelebA sits behind Google Drive),
yet the code that reads them, and the RGB training, flips, attribute conditioning
and evaluation built on them, must be exercised at their real shapes. These
stand-ins are drawn pictures with the real formats, sizes and label structure:

- CIFAR-10: 32x32 RGB, one drawn shape per class (disc, square, triangle, ...) in
  a random colour, size and place, as `cifar-10-python.tar.gz` (pickled batches)
  or `cifar-10-binary.tar.gz`.
- CelebA: 218x178 JPEG "faces" whose drawing follows about a dozen of the 40
  attributes (hair colour, smile, glasses, hat, beard, lipstick, ...), the
  attributes drawn at CelebA's frequencies, with `list_attr_celeba.txt` and
  `list_eval_partition.txt`.

Each folder holds STAND-IN.txt; the loader sees it and every output made from the
data says it is a stand-in. Not a benchmark of image quality: a model that learns
these has learnt drawn shapes, not faces or objects.

    python -m jaxddpm.standin --out data_standin --celeba 4000 --cifar10 6000
    JAXDDPM_DATA_DIR=data_standin python launch.py --config configs/celeba.py:cpu
"""

from __future__ import annotations

import argparse
import io
import os
import pickle
import sys
import tarfile
import zipfile

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from jaxddpm import celeba, data

NOTICE = ("This folder is generated stand-in data in the official file layout "
          "(python -m jaxddpm.standin), not the real data set. Numbers and pictures made "
          "from it say nothing about the real data.\n")

# CelebA's 40 attributes in list_attr_celeba.txt's order, with their frequencies
# in the real data (rounded), which the stand-in draws them at.
CELEBA_ATTRIBUTES = {
    "5_o_Clock_Shadow": .11, "Arched_Eyebrows": .27, "Attractive": .51,
    "Bags_Under_Eyes": .20, "Bald": .02, "Bangs": .15, "Big_Lips": .24, "Big_Nose": .23,
    "Black_Hair": .24, "Blond_Hair": .15, "Blurry": .05, "Brown_Hair": .20,
    "Bushy_Eyebrows": .14, "Chubby": .06, "Double_Chin": .05, "Eyeglasses": .07,
    "Goatee": .06, "Gray_Hair": .04, "Heavy_Makeup": .39, "High_Cheekbones": .46,
    "Male": .42, "Mouth_Slightly_Open": .48, "Mustache": .04, "Narrow_Eyes": .12,
    "No_Beard": .83, "Oval_Face": .28, "Pale_Skin": .04, "Pointy_Nose": .28,
    "Receding_Hairline": .08, "Rosy_Cheeks": .07, "Sideburns": .06, "Smiling": .48,
    "Straight_Hair": .21, "Wavy_Hair": .32, "Wearing_Earrings": .19, "Wearing_Hat": .05,
    "Wearing_Lipstick": .47, "Wearing_Necklace": .12, "Wearing_Necktie": .07, "Young": .77,
}
# Attributes of one sex only in the stand-in (CelebA's are nearly so).
MALE_ONLY = ("5_o_Clock_Shadow", "Goatee", "Mustache", "Sideburns", "Wearing_Necktie", "Bald")
FEMALE_ONLY = ("Heavy_Makeup", "Wearing_Lipstick", "Wearing_Earrings")
HAIR = {"Black_Hair": (25, 20, 20), "Blond_Hair": (225, 195, 110),
        "Brown_Hair": (110, 70, 40), "Gray_Hair": (165, 165, 165)}
CIFAR_CLASSES = ("disc", "square", "triangle", "cross", "ring", "h-bars", "v-bars",
                 "diamond", "checker", "diagonal")


def celeba_attributes(n: int, rng: np.random.Generator) -> np.ndarray:
  """int8 [n, 40] in {-1, 1}: CelebA's frequencies, with sex-specific attributes
  and one hair colour at most per face."""
  names = list(CELEBA_ATTRIBUTES)
  p = np.array(list(CELEBA_ATTRIBUTES.values()))
  a = rng.random((n, len(names))) < p
  col = {k: i for i, k in enumerate(names)}
  male = a[:, col["Male"]]
  for k in MALE_ONLY:
    a[:, col[k]] &= male
    a[:, col[k]] |= male & (rng.random(n) < min(1.0, 2 * CELEBA_ATTRIBUTES[k]))
  for k in FEMALE_ONLY:
    a[:, col[k]] = ~male & (rng.random(n) < min(1.0, CELEBA_ATTRIBUTES[k] / 0.58))
  beard = a[:, [col[k] for k in ("Goatee", "Mustache", "5_o_Clock_Shadow")]].any(1)
  a[:, col["No_Beard"]] = ~beard
  hair = rng.choice(len(HAIR) + 1, n, p=[.24, .15, .20, .04, .37])
  for j, k in enumerate(HAIR):
    a[:, col[k]] = hair == j
  return np.where(a, 1, -1).astype(np.int8)


def draw_face(attrs: dict, rng: np.random.Generator) -> Image.Image:
  """One 178x218 stand-in face drawn from its attributes."""
  W, H = 178, 218
  bg = rng.integers(40, 220, 3)
  img = Image.new("RGB", (W, H), tuple(int(v) for v in bg))
  d = ImageDraw.Draw(img)
  cx, cy = 89 + rng.integers(-6, 7), 118 + rng.integers(-6, 7)
  skin = (235, 215, 200) if attrs["Pale_Skin"] else tuple(
      int(v) for v in rng.choice([(224, 180, 150), (200, 150, 115), (150, 105, 75)]))
  hair = next((HAIR[k] for k in HAIR if attrs[k]), (70, 50, 35))
  long_hair = not attrs["Male"]
  if long_hair and not attrs["Bald"]:
    d.rectangle([cx - 58, cy - 40, cx + 58, cy + 70], fill=hair)
  rx, ry = (50 if attrs["Chubby"] else 44), 58
  d.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=skin)
  if not attrs["Bald"]:
    top = cy - ry - 8 + (12 if attrs["Receding_Hairline"] else 0)
    d.chord([cx - rx - 4, top, cx + rx + 4, cy + 10], 180, 360, fill=hair)
    if attrs["Bangs"]:
      d.rectangle([cx - rx + 8, cy - 40, cx + rx - 8, cy - 22], fill=hair)
  if not attrs["No_Beard"]:
    d.chord([cx - rx + 4, cy + 5, cx + rx - 4, cy + ry], 0, 180, fill=(60, 45, 35))
  eye_y, eye_h = cy - 8, (2 if attrs["Narrow_Eyes"] else 5)
  for ex in (cx - 18, cx + 18):
    d.ellipse([ex - 7, eye_y - eye_h, ex + 7, eye_y + eye_h], fill=(250, 250, 250))
    d.ellipse([ex - 3, eye_y - 3, ex + 3, eye_y + 3], fill=(40, 30, 30))
    if attrs["Eyeglasses"]:
      d.ellipse([ex - 13, eye_y - 11, ex + 13, eye_y + 11], outline=(10, 10, 10), width=3)
    if attrs["Rosy_Cheeks"]:
      d.ellipse([ex - 8, cy + 8, ex + 8, cy + 20], fill=(235, 120, 130))
  if attrs["Eyeglasses"]:
    d.line([cx - 5, eye_y, cx + 5, eye_y], fill=(10, 10, 10), width=3)
  lips = (200, 30, 50) if attrs["Wearing_Lipstick"] else (150, 70, 70)
  my = cy + 30
  if attrs["Mouth_Slightly_Open"]:
    d.ellipse([cx - 12, my - 5, cx + 12, my + 9], fill=(60, 20, 20), outline=lips, width=3)
  elif attrs["Smiling"]:
    d.arc([cx - 20, my - 16, cx + 20, my + 10], 20, 160, fill=lips, width=4)
  else:
    d.line([cx - 16, my, cx + 16, my], fill=lips, width=4)
  if attrs["Mustache"]:
    d.rectangle([cx - 16, my - 9, cx + 16, my - 4], fill=(50, 35, 25))
  if attrs["Wearing_Hat"]:
    color = tuple(int(v) for v in rng.integers(0, 256, 3))
    d.rectangle([cx - 62, cy - ry - 6, cx + 62, cy - ry + 6], fill=color)
    d.rectangle([cx - 40, cy - ry - 40, cx + 40, cy - ry], fill=color)
  if attrs["Wearing_Necktie"]:
    d.polygon([(cx - 8, H - 30), (cx + 8, H - 30), (cx, H)], fill=(30, 40, 140))
  if attrs["Wearing_Earrings"]:
    for ex in (cx - rx - 2, cx + rx + 2):
      d.ellipse([ex - 4, cy + 4, ex + 4, cy + 12], fill=(240, 200, 40))
  if not attrs["Young"]:
    for dy in (-40, -34):
      d.line([cx - 20, cy + dy, cx + 20, cy + dy], fill=(120, 90, 80), width=1)
  if attrs["Blurry"]:
    img = img.filter(ImageFilter.GaussianBlur(3))
  return img


def write_celeba(folder: str, n: int, *, seed: int = 0, as_zip: bool = False,
                 test_fraction: float = 0.1, quality: int = 90) -> str:
  """Writes an official-layout CelebA of n stand-in faces into folder. The
  partition is CelebA's order: train first, then validation (5%), then test."""
  rng = np.random.default_rng(seed)
  names = list(CELEBA_ATTRIBUTES)
  values = celeba_attributes(n, rng)
  files = [f"{i + 1:06d}.jpg" for i in range(n)]
  os.makedirs(folder, exist_ok=True)
  archive = zipfile.ZipFile(os.path.join(folder, celeba.IMAGES_ZIP), "w") if as_zip else None
  if not as_zip:
    os.makedirs(os.path.join(folder, celeba.IMAGES_DIR), exist_ok=True)
  for name, row in zip(files, values):
    buf = io.BytesIO()
    draw_face(dict(zip(names, row > 0)), rng).save(buf, "JPEG", quality=quality)
    if archive:  # JPEGs do not compress: stored, as in the official zip.
      archive.writestr(f"{celeba.IMAGES_DIR}/{name}", buf.getvalue())
    else:
      with open(os.path.join(folder, celeba.IMAGES_DIR, name), "wb") as f:
        f.write(buf.getvalue())
  if archive:
    archive.close()
  with open(os.path.join(folder, celeba.ATTR_FILE), "w") as f:
    f.write(f"{n}\n{' '.join(names)} \n")
    f.writelines(f"{name} " + " ".join(f"{v:2d}" for v in row) + "\n"
                 for name, row in zip(files, values))
  n_test, n_val = round(n * test_fraction), round(n * 0.05)
  part = np.zeros(n, int)
  part[n - n_test - n_val:n - n_test], part[n - n_test:] = 1, 2
  with open(os.path.join(folder, celeba.PARTITION_FILE), "w") as f:
    f.writelines(f"{name} {p}\n" for name, p in zip(files, part))
  _notice(folder)
  return folder


def draw_cifar(label: int, rng: np.random.Generator) -> np.ndarray:
  """uint8 [32, 32, 3]: class `label`'s shape on a two-colour gradient."""
  top, bottom = rng.integers(0, 256, (2, 3))
  ramp = np.linspace(0, 1, 32)[:, None, None]
  img = Image.fromarray(((1 - ramp) * top + ramp * bottom).repeat(32, 1).astype(np.uint8))
  d = ImageDraw.Draw(img)
  color = tuple(int(v) for v in rng.integers(0, 256, 3))
  r = int(rng.integers(7, 13))
  cx, cy = (int(v) for v in rng.integers(r, 32 - r, 2))
  box = [cx - r, cy - r, cx + r, cy + r]
  kind = CIFAR_CLASSES[label]
  if kind == "disc":
    d.ellipse(box, fill=color)
  elif kind == "square":
    d.rectangle(box, fill=color)
  elif kind == "triangle":
    d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=color)
  elif kind == "cross":
    d.rectangle([cx - r, cy - 2, cx + r, cy + 2], fill=color)
    d.rectangle([cx - 2, cy - r, cx + 2, cy + r], fill=color)
  elif kind == "ring":
    d.ellipse(box, outline=color, width=3)
  elif kind in ("h-bars", "v-bars"):
    for k in range(-r, r + 1, 5):
      d.rectangle([cx - r, cy + k, cx + r, cy + k + 1] if kind == "h-bars"
                  else [cx + k, cy - r, cx + k + 1, cy + r], fill=color)
  elif kind == "diamond":
    d.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=color)
  elif kind == "checker":
    for i in range(-r, r, 4):
      for j in range(-r, r, 4):
        if (i + j) // 4 % 2 == 0:
          d.rectangle([cx + i, cy + j, cx + i + 3, cy + j + 3], fill=color)
  else:
    d.line([cx - r, cy + r, cx + r, cy - r], fill=color, width=4)
  return np.asarray(img)


def write_cifar10(folder: str, n_train: int, n_test: int, *, seed: int = 0,
                  binary: bool = False) -> str:
  """Writes a CIFAR-10 archive of stand-in images (five train batches and a test
  batch, classes cycled) into folder, in the Python or the binary version."""
  rng = np.random.default_rng(seed)
  root = "cifar-10-batches-bin" if binary else "cifar-10-batches-py"
  sizes = [n_train // 5 + (i < n_train % 5) for i in range(5)] + [n_test]
  names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
  os.makedirs(folder, exist_ok=True)
  path = os.path.join(folder, data.CIFAR_FILES[1] if binary else data.CIFAR_FILES[0])
  with tarfile.open(path, "w:gz") as tar:
    for name, size in zip(names, sizes):
      labels = (np.arange(size) + rng.integers(10)) % 10
      planes = np.stack([draw_cifar(int(y), rng).transpose(2, 0, 1).reshape(-1)
                         for y in labels]) if size else np.zeros((0, 3072), np.uint8)
      if binary:
        payload = np.concatenate([labels[:, None].astype(np.uint8), planes], 1).tobytes()
        name += ".bin"
      else:
        payload = pickle.dumps({b"batch_label": name.encode(), b"labels": labels.tolist(),
                                b"data": planes}, protocol=2)
      info = tarfile.TarInfo(f"{root}/{name}")
      info.size = len(payload)
      tar.addfile(info, io.BytesIO(payload))
  _notice(folder)
  return path


def _notice(folder: str) -> None:
  with open(os.path.join(folder, data.STAND_IN_FILE), "w") as f:
    f.write(NOTICE)


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--out", required=True, help="data folder to write celeba/ and cifar10/ into")
  p.add_argument("--celeba", type=int, default=0, help="stand-in faces (0: none)")
  p.add_argument("--celeba_zip", action="store_true", help="img_align_celeba.zip, not a folder")
  p.add_argument("--cifar10", type=int, default=0, help="stand-in train images (0: none); "
                 "the test batch gets a sixth as many")
  p.add_argument("--seed", type=int, default=0)
  args = p.parse_args(argv)
  if args.celeba < 0 or args.cifar10 < 0 or not (args.celeba or args.cifar10):
    p.error("give --celeba N and/or --cifar10 N (N > 0)")
  if args.celeba:
    write_celeba(os.path.join(args.out, "celeba"), args.celeba, seed=args.seed,
                 as_zip=args.celeba_zip)
  if args.cifar10:
    write_cifar10(os.path.join(args.out, "cifar10"), args.cifar10, max(10, args.cifar10 // 6),
                  seed=args.seed)
  print(f"wrote stand-in data under {args.out} (STAND-IN.txt marks each folder)",
        file=sys.stderr)


if __name__ == "__main__":
  main()
