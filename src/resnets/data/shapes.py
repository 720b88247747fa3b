"""A small detection and segmentation set made on the spot: coloured circles, squares and triangles on textured
backgrounds (`resnets data shapes --out DIR`). Each split is a COCO folder (images/ and instances.json with boxes,
polygons and areas) and a semantic-segmentation folder (masks/*.png, one class index per pixel, the classes in
DIR/classes.txt, background first), so detection, instance and semantic segmentation all train on the same images.
Shapes do not overlap, so each polygon is its instance's whole mask and the boxes are tight around the pixels.
With `crops`, each shape is also cut out (a square of 1.5 times its box, resized) into DIR/crops/{train,val}/CLASS/:
an image-folder classification set of the same shapes, to pretrain a backbone on before detection, as ImageNet
pretrains the backbones of COCO's detectors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from .. import safe_io
from ..errors import ResnetsError

CLASSES = ("circle", "square", "triangle")
SPLITS = {"train": 0, "val": 1}


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A colour gradient, stripes and noise: texture a detector must learn to ignore."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    a, b = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    angle = rng.uniform(0, math.pi)
    t = (np.cos(angle) * x + np.sin(angle) * y)[..., None]
    img = a * (1 - t) + b * t
    period = rng.uniform(6, 24)
    stripes = np.sin((x * np.cos(-angle) + y * np.sin(-angle)) * size * 2 * math.pi / period)[..., None]
    img = img + stripes * rng.uniform(5, 30) + rng.normal(0, 10, (size, size, 3))
    return np.clip(img, 0, 255)


def _polygon(rng: np.random.Generator, kind: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    turn = rng.uniform(0, 2 * math.pi)
    corners = {"circle": 48, "square": 4, "triangle": 3}[kind]
    return [
        (cx + r * math.cos(turn + 2 * math.pi * k / corners), cy + r * math.sin(turn + 2 * math.pi * k / corners))
        for k in range(corners)
    ]


def _image(rng: np.random.Generator, size: int, most: int):
    """One picture and its instances [(class index, polygon, mask)], no two shapes' boxes closer than 2 pixels."""
    from PIL import Image, ImageDraw

    img = Image.fromarray(_background(rng, size).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    placed, instances = [], []
    for _ in range(int(rng.integers(0, most + 1))):
        for _attempt in range(20):
            r = rng.uniform(size * 0.08, size * 0.22)
            cx, cy = rng.uniform(r + 1, size - r - 1, 2)
            box = (cx - r - 2, cy - r - 2, cx + r + 2, cy + r + 2)
            if all(box[2] < p[0] or p[2] < box[0] or box[3] < p[1] or p[3] < box[1] for p in placed):
                break
        else:
            continue
        placed.append(box)
        c = int(rng.integers(len(CLASSES)))
        poly = _polygon(rng, CLASSES[c], cx, cy, r)
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        draw.polygon(poly, fill=colour)
        mask = Image.new("L", (size, size))
        ImageDraw.Draw(mask).polygon(poly, fill=1)
        instances.append((c, poly, np.asarray(mask, dtype=bool)))
    return img, instances


def _crop(img, box: tuple[int, int, int, int], px: int):
    """The square 1.5 times the box's longer side around its centre, kept inside the image, resized to px."""
    from PIL import Image

    x0, y0, x1, y1 = box
    side = min(round(1.5 * max(x1 - x0, y1 - y0)), *img.size)
    left = min(max(round((x0 + x1 - side) / 2), 0), img.size[0] - side)
    top = min(max(round((y0 + y1 - side) / 2), 0), img.size[1] - side)
    return img.crop((left, top, left + side, top + side)).resize((px, px), Image.Resampling.BILINEAR)


def _split(out: Path, split: str, n: int, size: int, seed: int, most: int, crops: int, bar) -> dict:
    from PIL import Image

    (out / split / "images").mkdir(parents=True)
    (out / split / "masks").mkdir()
    images, annotations = [], []
    rng = np.random.default_rng([seed, SPLITS[split]])
    for i in range(n):
        img, instances = _image(rng, size, most)
        name = f"{i:06d}"
        img.save(out / split / "images" / f"{name}.jpg", quality=92)
        semantic = np.zeros((size, size), dtype=np.uint8)
        for c, poly, mask in instances:
            semantic[mask] = c + 1
            ys, xs = np.nonzero(mask)
            x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
            if crops:
                folder = out / "crops" / split / CLASSES[c]  # a class no shape of the split has: no folder
                folder.mkdir(parents=True, exist_ok=True)
                _crop(img, (x0, y0, x1, y1), crops).save(folder / f"{name}_{len(annotations) + 1:06d}.png")
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i + 1,
                    "category_id": c + 1,
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": int(mask.sum()),
                    "iscrowd": 0,
                    "segmentation": [[round(v, 2) for xy in poly for v in xy]],
                }
            )
        Image.fromarray(semantic).save(out / split / "masks" / f"{name}.png")
        images.append({"id": i + 1, "file_name": f"images/{name}.jpg", "width": size, "height": size})
        bar.update(1)
    categories = [{"id": c + 1, "name": name, "supercategory": "shape"} for c, name in enumerate(CLASSES)]
    coco = {"images": images, "annotations": annotations, "categories": categories}
    (out / split / "instances.json").write_text(json.dumps(coco))
    return {"images": n, "boxes": len(annotations)}


def generate(
    out: str | Path,
    *,
    train: int = 400,
    val: int = 100,
    size: int = 128,
    most: int = 4,
    seed: int = 0,
    crops: int = 0,
    progress=True,
) -> dict:
    """Write the shapes set to `out` (which must not exist or be empty): DIR/{train,val}/images/*.jpg,
    instances.json (COCO) and masks/*.png, and DIR/classes.txt; with `crops` (pixels) also each shape cut out into
    DIR/crops/{train,val}/CLASS/*.png. The same seed writes the same files. Returns {"train": {"images", "boxes"},
    "val": {...}}."""
    from tqdm import tqdm

    out = Path(out)
    if not 32 <= size <= 1024:
        raise ResnetsError(f"--size must be from 32 to 1024 pixels; got {size}")
    if train < 1 or val < 1:
        raise ResnetsError("the shapes set needs at least one training and one validation image")
    if crops and not 8 <= crops <= 512:
        raise ResnetsError(f"--crops must be from 8 to 512 pixels (0: none); got {crops}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ResnetsError(f"{out} exists and is not an empty folder; name a new one")
    with safe_io.atomic_dir(out) as tmp:
        with tqdm(total=train + val, unit="image", disable=not progress, desc="shapes") as bar:
            counts = {
                split: _split(tmp, split, n, size, seed, most, crops, bar)
                for split, n in (("train", train), ("val", val))
            }
        (tmp / "classes.txt").write_text("\n".join(("background", *CLASSES)) + "\n")
    return counts
