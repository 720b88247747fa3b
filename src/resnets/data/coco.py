"""Detection data in COCO's format: a folder of images and one instances.json (`--dataset coco --data DIR`, with
DIR/train/instances.json and DIR/val/instances.json, or DIR/instances.json alone to evaluate on). The file is
untrusted: read within a size limit, checked against COCO's schema (a file that breaks it is refused in one line,
before any image is read), and each annotation checked against its image: a box outside the image or of no size,
an unknown category or image, a polygon or RLE mask that does not fit the image is named with its file and skipped
(or, with strict data, refused). Images without boxes are kept (they teach what is not an object).

Samples are the image as float [0, 1] (C, H, W) and torchvision's detection target ({"boxes" XYXY, "labels",
"iscrowd", "image_id", and "masks" when asked}), augmented with torchvision.transforms.v2 on tv_tensors so boxes
and masks follow the pixels. Labels run 1..K in the order of the category ids; 0 is the background.

What a file or a sample may cost is bounded; each limit is stated here and set by an environment variable (which
the loader's workers see too):
- the file: at most RESNETS_MAX_ANNOTATION_MB (default 512; COCO's train2017 is 448 MB, LVIS's 1.1 GB needs it
  raised), UTF-8, brackets nested at most MAX_JSON_DEPTH deep (COCO's nest 5), counted before json.loads, which
  recurses once a level;
- an image: at most RESNETS_MAX_OBJECTS objects (default 1,000; COCO's most crowded image has 93, torchvision's
  detectors keep 100 detections) and, with masks, at most RESNETS_MAX_MASK_MB (default 256) of them, one uint8
  byte a pixel an object. An image over either is named and skipped whole at load (refused with strict data):
  dropping some of its objects would train and score on an image with annotations missing. The same check makes
  a sample over them a BadSample, never a larger tensor; so does rasterising its polygons when pycocotools would
  need more than the mask budget for it (POLYGON_BYTES a point of each boundary, upsampled 5x).
An object's polygons are merged into one RLE before decoding (one H x W mask, however many polygons); compressed
RLE (a string of counts, as crowd annotations may have) is read at load as pycocotools reads it, so a broken one
is a named annotation, not a mask of whatever memory followed it."""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import ResnetsError
from ..home import setting
from . import jsonfile
from .batching import leave_stops_to_the_run, mix_seed, seeded_cpu_rng
from .datasets import BadSample, decode

log = logging.getLogger("resnets")

INSTANCES = "instances.json"
MAX_CATEGORIES = 10_000
EDGE = 1.0  # a box may pass the image's edge by this many pixels (rounding) and is clipped; further is an error
AUGMENTS = ("none", "hflip", "ssd")

# the limits of the module docstring: (environment variable, default)
ANNOTATION_MB = ("RESNETS_MAX_ANNOTATION_MB", 512)
OBJECTS = ("RESNETS_MAX_OBJECTS", 1000)
MASK_MB = ("RESNETS_MAX_MASK_MB", 256)
MAX_JSON_DEPTH = jsonfile.MAX_DEPTH  # COCO's own files nest 5 deep: {"annotations": [{"segmentation": [[x, ...]]}]}
POLYGON_BYTES = 16  # what pycocotools' rleFrPoly allocates per boundary point (two ints, then two uints)


@dataclass
class Record:
    """One image and its usable annotations (boxes XYXY in pixels, labels 1..K, crowd flags, masks' sources)."""

    path: str
    image_id: int
    width: int
    height: int
    boxes: list[list[float]] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    crowd: list[int] = field(default_factory=list)
    segmentations: list[Any] = field(default_factory=list)


def limit(named: tuple[str, int]) -> float:
    """The limit in force: its environment variable when set (a positive number), else its default."""
    name, default = named
    return setting(name, default, f"a positive number, or unset for the default of {default:,}")


def _refuse(path: Path, why: str) -> ResnetsError:
    return ResnetsError(f"{path}: {why}; not a COCO instances file")


json_depth = jsonfile.depth  # (the name its tests and callers know)


def read_json(path: Path) -> dict:
    """The file's JSON object, parsed only when it is within the size limit, UTF-8 and nested at most
    MAX_JSON_DEPTH deep."""
    cap = int(limit(ANNOTATION_MB) * 2**20)
    try:
        size = path.stat().st_size
        if size > cap:
            raise _refuse(path, f"{size:,} bytes is more than the {cap:,} allowed ({ANNOTATION_MB[0]} raises it)")
        raw = path.read_bytes()
    except OSError as e:
        raise ResnetsError(f"cannot read {path}: {e.strerror or e}") from None
    if json.detect_encoding(raw) not in ("utf-8", "utf-8-sig"):
        raise _refuse(path, f"{json.detect_encoding(raw).upper()} text; JSON files are UTF-8")
    depth = json_depth(raw)
    if depth > MAX_JSON_DEPTH:
        raise _refuse(path, f"brackets nested deeper than {MAX_JSON_DEPTH} (COCO's nest 5)")
    cost, bound = jsonfile.python_bytes(raw), jsonfile.RATIO * len(raw) + jsonfile.SLACK
    if cost > bound:
        raise _refuse(path, f"about {cost:,} bytes once parsed, over {bound:,} ({jsonfile.RATIO}x the file)")
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as e:  # not JSON, not UTF-8, a number of over 4,300 digits
        raise _refuse(path, f"not JSON ({str(e).splitlines()[0][:120]})") from None
    if not isinstance(data, dict):
        raise _refuse(path, "the top level is not an object")
    return data


def _whole(value: Any, low: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _number(value: Any) -> bool:
    """A finite JSON number that a float holds (an int of 400 digits is not: float() would overflow)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return math.isfinite(value) if isinstance(value, float) else abs(value) < 2**63


def _shown(value: Any) -> str:
    """A value as a problem line quotes it: its repr, cut to 60 characters."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _entries(data: dict, key: str, path: Path, required: bool = True) -> list[dict]:
    value = data.get(key, None if required else [])
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise _refuse(path, f'"{key}" must be a list of objects')
    return value


def _categories(data: dict, path: Path) -> tuple[list[str], dict[int, int]]:
    """The class names in category-id order and {category id: label 1..K}."""
    cats = _entries(data, "categories", path)
    if not cats or len(cats) > MAX_CATEGORIES:
        raise _refuse(path, f'"categories" must name 1 to {MAX_CATEGORIES:,} categories; it has {len(cats)}')
    if not all(_whole(c.get("id")) and isinstance(c.get("name"), str) and c["name"].strip() for c in cats):
        raise _refuse(path, "every category needs a whole-number id and a name")
    ids = [c["id"] for c in cats]
    if len(set(ids)) != len(ids):
        raise _refuse(path, "two categories share an id")
    ordered = sorted(cats, key=lambda c: c["id"])
    return [c["name"] for c in ordered], {c["id"]: k + 1 for k, c in enumerate(ordered)}


def _images(data: dict, path: Path, root: Path) -> dict[int, Record]:
    records: dict[int, Record] = {}
    for im in _entries(data, "images", path):
        name, w, h = im.get("file_name"), im.get("width"), im.get("height")
        if not (_whole(im.get("id")) and isinstance(name, str) and name and _whole(w, 1) and _whole(h, 1)):
            raise _refuse(path, f"image entry {_shown(im)} needs a whole-number id, a file_name, width and height")
        parts = Path(name).parts
        if Path(name).is_absolute() or ".." in parts or "\\" in name or "\0" in name or len(name) > 1024:
            raise _refuse(path, f"image {_shown(name)} is not a path inside {root}")
        if im["id"] in records:
            raise _refuse(path, f"two images share the id {im['id']}")
        try:
            inside = (root / name).exists() or not (root / "images" / name).exists()
        except OSError as e:  # a name longer than a file name may be
            raise _refuse(path, f"image {_shown(name)}: {e.strerror}") from None
        records[im["id"]] = Record(str(root / name if inside else root / "images" / name), im["id"], w, h)
    return records


def rle_counts(text: str) -> list[int] | None:
    """The run lengths of COCO's compressed RLE string (pycocotools' rleFrString, read here so that a broken string
    is named at load: pycocotools decodes one that sums short into a mask of whatever memory followed), or None
    when `text` is not one: 6 bits a character from '0', 5 of value and one saying 'more', the last of a run's
    characters giving its sign; each run after the second stored as the difference from the run two before."""
    counts: list[int] = []
    value = shift = 0
    for char in text:
        c = ord(char) - 48
        if not 0 <= c < 64 or shift > 30:
            return None
        value |= (c & 0x1F) << shift
        shift += 5
        if c & 0x20:
            continue
        if c & 0x10:
            value |= -1 << shift
        counts.append(value + (counts[-2] if len(counts) > 2 else 0))
        if counts[-1] < 0:
            return None
        value = shift = 0
    return counts if shift == 0 else None


def _polygons_fit(seg: Any, w: int, h: int) -> str | None:
    """Why a COCO segmentation does not fit a w x h image (None: it does)."""
    if isinstance(seg, list):
        if not seg:
            return "an empty list of polygons"
        for poly in seg:
            if not isinstance(poly, list) or len(poly) < 6 or len(poly) % 2:
                return "a polygon is not a list of at least 3 x, y points"
            if not all(_number(v) for v in poly):
                return "a polygon has a point that is not a number"
            xs, ys = poly[0::2], poly[1::2]
            if min(xs) < -EDGE or min(ys) < -EDGE or max(xs) > w + EDGE or max(ys) > h + EDGE:
                return f"a polygon lies outside the {w}x{h} image"
        return None
    if isinstance(seg, dict):
        size, counts = seg.get("size"), seg.get("counts")
        if not (isinstance(size, list) and len(size) == 2 and all(_whole(v) for v in size)):
            return "an RLE mask without its [height, width] size"
        if size != [h, w]:
            return f"the mask is {size[1]}x{size[0]}, the image {w}x{h}"
        if isinstance(counts, str):
            counts = rle_counts(counts)
            if counts is None:
                return "a compressed RLE mask whose counts string is not COCO's run-length code"
        if not (isinstance(counts, list) and all(_whole(v) for v in counts)):
            return "an RLE mask whose counts are neither a string nor whole numbers"
        if sum(counts) != w * h:
            return f"an RLE mask of {sum(counts):,} pixels for a {w}x{h} image"
        return None
    return "a segmentation that is neither polygons nor an RLE mask"


def _box_problem(ann: dict, rec: Record) -> str | None:
    """Why an annotation's box cannot be used on its image (None: it can)."""
    box = ann.get("bbox")
    if not (isinstance(box, list) and len(box) == 4):
        return "no bbox of 4 numbers"
    if not all(_number(v) for v in box):
        return f"bbox {_shown(box)} holds something that is not a finite number"
    x, y, w, h = box
    if w <= 0 or h <= 0:
        return f"bbox {box} has a {'negative' if min(w, h) < 0 else 'zero'} size"
    if x < -EDGE or y < -EDGE or x + w > rec.width + EDGE or y + h > rec.height + EDGE:
        return f"bbox {box} lies outside the {rec.width}x{rec.height} image"
    return None


def _problem(ann: dict, rec: Record, labels: dict[int, int], masks: bool) -> str | None:
    """Why an annotation cannot be used on its image (None: it can)."""
    cat, crowd, seg = ann.get("category_id"), ann.get("iscrowd", 0), ann.get("segmentation")
    if not (_whole(cat) and cat in labels):
        return f"unknown category id {_shown(cat)}"
    why = _box_problem(ann, rec)
    if why is None and crowd not in (0, 1):  # (false and true too)
        why = f"iscrowd is {_shown(crowd)}, not 0 or 1"
    if why is None and masks:
        why = "no segmentation (the model predicts masks)" if seg is None else _polygons_fit(seg, rec.width, rec.height)
    return why


def _annotate(data: dict, path: Path, records: dict[int, Record], labels: dict[int, int], masks: bool) -> list[str]:
    """Each annotation onto its image's record; the problems of those skipped, one line each."""
    problems = []
    seen: set[int] = set()
    for ann in _entries(data, "annotations", path, required=False):
        aid, image = ann.get("id"), ann.get("image_id")
        name = "?" if aid is None else _shown(aid)
        rec = records.get(image) if _whole(image) else None
        if rec is None:
            problems.append(f"{path}: annotation {name}: image id {_shown(image)} is not in the file")
            continue
        where = f"{path}: annotation {name} ({Path(rec.path).name})"
        why = None if aid is None or _whole(aid) else "its id is not a whole number"
        why = why or ("a second annotation with this id" if aid in seen else _problem(ann, rec, labels, masks))
        if why is not None:
            problems.append(f"{where}: {why}; skipped")
            continue
        if aid is not None:
            seen.add(aid)
        seg, crowd = ann.get("segmentation"), ann.get("iscrowd", 0)
        x, y, w, h = ann["bbox"]
        rec.boxes.append([max(x, 0.0), max(y, 0.0), min(x + w, rec.width), min(y + h, rec.height)])
        rec.labels.append(labels[ann["category_id"]])
        rec.crowd.append(int(crowd))
        rec.segmentations.append(seg)
    return problems


def over_limits(rec: Record, masks: bool) -> str | None:
    """Why the image holds more than a sample may (None: it does not): more objects than RESNETS_MAX_OBJECTS, or
    with masks, more mask bytes (one uint8 byte a pixel an object) than RESNETS_MAX_MASK_MB."""
    n, cap = len(rec.boxes), int(limit(OBJECTS))
    if n > cap:
        return f"{n:,} objects, more than the {cap:,} an image may have ({OBJECTS[0]} raises it)"
    need, budget = n * rec.width * rec.height, limit(MASK_MB) * 2**20
    if masks and need > budget:
        return (
            f"{n:,} masks of {rec.width}x{rec.height} take {need / 2**20:,.0f} MB, more than the "
            f"{budget / 2**20:,.0f} MB allowed ({MASK_MB[0]} raises it)"
        )
    return None


def skip_crowded(records: dict[int, Record], file: Path, masks: bool) -> list[str]:
    """The images over the limits of a sample taken out of `records`; their problems, one line each."""
    problems = []
    for image_id, rec in list(records.items()):
        why = over_limits(rec, masks)
        if why is not None:
            problems.append(f"{file}: image {Path(rec.path).name}: {why}; image skipped")
            del records[image_id]
    return problems


def polygon_bytes(seg: Any) -> int:
    """What pycocotools allocates to rasterise a segmentation's polygons (checked by _polygons_fit): POLYGON_BYTES
    per point of each boundary upsampled 5x (a 0.5 MB polygon zigzagging across a 2000 x 2000 image took 2 GB).
    0 for an RLE."""
    if not isinstance(seg, list):
        return 0
    points = 0
    for poly in seg:
        xy = np.rint(5 * np.asarray(poly, np.float64).reshape(-1, 2))
        points += int(np.abs(xy - np.roll(xy, -1, axis=0)).max(axis=1).sum()) + len(xy)
    return POLYGON_BYTES * points


def object_mask(seg: Any, height: int, width: int) -> np.ndarray:
    """One object's (H, W) uint8 mask: its polygons merged into one RLE before decoding (so a thousand polygons
    cost one mask), or its RLE, uncompressed (counts a list) or compressed (a string)."""
    from pycocotools import mask as coco_mask

    if isinstance(seg, list):
        rle = coco_mask.merge(coco_mask.frPyObjects(seg, height, width))
    elif isinstance(seg["counts"], list):
        rle = coco_mask.frPyObjects(seg, height, width)
    else:
        rle = {"size": [height, width], "counts": seg["counts"].encode("ascii")}
    return coco_mask.decode(rle)


def _per_box(inputs) -> tuple[torch.Tensor, torch.Tensor]:
    """What SanitizeBoundingBoxes drops with each box it drops: the box's label and crowd flag."""
    target = inputs[1]
    return target["labels"], target["iscrowd"]


def transforms(augment: str):
    """torchvision.transforms.v2 for training (on tv_tensors: boxes and masks move with the pixels), ending with
    float [0, 1] images and the boxes that are left after a crop (SanitizeBoundingBoxes). ssd's zoom-out puts the
    image on a canvas up to 4x a side (masks too: up to 16x the mask budget) before its crop."""
    from torchvision.transforms import v2

    steps = {
        "none": [],
        "hflip": [v2.RandomHorizontalFlip(0.5)],
        # SSD's: colour, zoom out, IoU crop, flip (torchvision's detection reference, --data-augmentation ssd)
        "ssd": [v2.RandomPhotometricDistort(), v2.RandomZoomOut(fill=0), v2.RandomIoUCrop(), v2.RandomHorizontalFlip()],
    }[augment]
    return v2.Compose([*steps, v2.ToDtype(torch.float32, scale=True), v2.SanitizeBoundingBoxes(labels_getter=_per_box)])


class CocoDetection(Dataset):
    """A COCO folder's images with their checked annotations. Item `epoch * len + i` is sample i augmented with
    the RNG seeded by (seed, epoch, i), as data.loader.Augmented does for classification (the training sampler's
    keys), so a resumed run, or one with other workers, draws the same crops and flips."""

    def __init__(self, records: list[Record], classes: list[str], source: Path, masks: bool = False):
        self.records, self.classes, self.source, self.masks = records, classes, source, masks
        self.augment, self.seed = "none", 0

    def __len__(self) -> int:
        return len(self.records)

    def with_augment(self, augment: str, seed: int = 0) -> "CocoDetection":
        other = CocoDetection(self.records, self.classes, self.source, self.masks)
        other.augment, other.seed = augment, seed
        return other

    def _masks(self, rec: Record, keep: list[int]) -> torch.Tensor:
        """The (N, H, W) uint8 masks of the objects `keep`; a BadSample when rasterising their polygons would take
        more than the mask budget, or when pycocotools refuses one."""
        budget = limit(MASK_MB) * 2**20
        need = sum(polygon_bytes(rec.segmentations[k]) for k in keep)
        if need > budget:
            raise BadSample(
                rec.path,
                f"rasterising its polygons takes {need / 2**20:,.0f} MB, more than the {budget / 2**20:,.0f} MB "
                f"allowed ({MASK_MB[0]} raises it)",
                "unreadable",
            )
        out = torch.zeros((len(keep), rec.height, rec.width), dtype=torch.uint8)
        for j, k in enumerate(keep):
            try:
                out[j] = torch.from_numpy(object_mask(rec.segmentations[k], rec.height, rec.width))
            except (ValueError, TypeError, IndexError, KeyError, AttributeError) as e:  # pycocotools' many
                raise BadSample(
                    rec.path, f"object {k + 1}'s mask cannot be decoded ({_shown(str(e))})", "corrupt_image"
                ) from None
        return out

    def __getitem__(self, key: int) -> tuple[torch.Tensor, dict]:
        from torchvision import tv_tensors

        epoch, i = divmod(int(key), len(self.records))
        rec = self.records[i]
        crowded = over_limits(rec, self.masks)  # load skips these; records made elsewhere meet the same bound here
        if crowded is not None:
            raise BadSample(rec.path, crowded, "unreadable")
        img = decode(rec.path, 3)
        if tuple(img.shape[1:]) != (rec.height, rec.width):
            raise BadSample(
                rec.path,
                f"the image is {img.shape[2]}x{img.shape[1]}, {self.source.name} says {rec.width}x{rec.height}",
            )
        keep = [k for k, c in enumerate(rec.crowd) if not c or self.augment == "none"]
        target: dict[str, Any] = {
            "boxes": tv_tensors.BoundingBoxes(
                torch.tensor([rec.boxes[k] for k in keep], dtype=torch.float32).reshape(-1, 4),
                format="XYXY",
                canvas_size=(rec.height, rec.width),
            ),
            "labels": torch.tensor([rec.labels[k] for k in keep], dtype=torch.int64),
            "iscrowd": torch.tensor([rec.crowd[k] for k in keep], dtype=torch.int64),
        }
        if self.masks:
            target["masks"] = tv_tensors.Mask(self._masks(rec, keep))
        with seeded_cpu_rng(mix_seed(self.seed, epoch, i)):
            img, target = transforms(self.augment)(tv_tensors.Image(img), target)
        target = {k: v.as_subclass(torch.Tensor) for k, v in target.items()}
        target["image_id"] = rec.image_id
        return img.as_subclass(torch.Tensor), target


def load(path: str | os.PathLike, *, masks: bool = False, strict: bool = False, classes: list[str] | None = None):
    """The COCO folder (or instances file) at `path` as a CocoDetection; its annotations' problems logged, one
    line each (strict: the first refuses the file). classes: the names the labels must follow (a validation
    file's categories are those of training)."""
    path = Path(path)
    file = path / INSTANCES if path.is_dir() else path
    if not file.is_file():
        raise ResnetsError(f"no {INSTANCES} in {path}" if path.is_dir() else f"annotation file not found: {path}")
    data = read_json(file)
    names, labels = _categories(data, file)
    if classes is not None and names != classes:
        raise ResnetsError(
            f"{file}: its categories ({', '.join(names[:5])}...) are not those of training ({', '.join(classes[:5])}...)"
        )
    records = _images(data, file, file.parent)
    problems = _annotate(data, file, records, labels, masks)
    problems += skip_crowded(records, file, masks)
    if problems and strict:
        raise ResnetsError(f"{problems[0]} (strict data is on)")
    for p in problems[:20]:
        log.warning("%s", p)
    if len(problems) > 20:
        log.warning("%s: %d more annotations (or images) skipped", file, len(problems) - 20)
    return CocoDetection(list(records.values()), names, file, masks)


def find(data: str | os.PathLike, split: str) -> Path | None:
    """The instances file of `split` ("train" or "val") under the folder `data`: DIR/train/instances.json, and
    DIR/val (or validation, test)/instances.json; DIR/instances.json is both when the folder has no splits."""
    root = Path(data)
    if not root.exists():
        raise ResnetsError(f"data folder not found: {root}")
    if root.is_file():
        return root
    names = ("train",) if split == "train" else ("val", "validation", "test")
    for name in names:
        if (root / name / INSTANCES).is_file():
            return root / name / INSTANCES
    return root / INSTANCES if (root / INSTANCES).is_file() else None


def collate(items: list) -> tuple[list, list, list]:
    """A batch as (images, targets, bad): lists, since detection images differ in size; unreadable samples
    (BadSample, caught by the loader's dataset wrapper) go to `bad` as (path, reason)."""
    good = [it for it in items if not isinstance(it, BadSample)]
    bad = [(it.path, it.reason) for it in items if isinstance(it, BadSample)]
    return [g[0] for g in good], [g[1] for g in good], bad


class Safe(Dataset):
    """The dataset's samples, or the BadSample of one that cannot be read (named and skipped by the caller)."""

    def __init__(self, ds: CocoDetection):
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int):
        try:
            return self.ds[i]
        except BadSample as e:
            return e


def eval_loader(dataset, batch_size: int, workers: int, rank: int = 0, world: int = 1, collate=collate):
    """Every sample of a detection or segmentation set once over all ranks, in batches of lists, the unreadable
    ones set aside by `collate` (this module's, or data.masks.collate)."""
    from torch.utils.data import DataLoader

    from .loader import EvalBatches

    return DataLoader(
        Safe(dataset), batch_sampler=EvalBatches(len(dataset), batch_size, rank, world), num_workers=workers,
        collate_fn=collate, worker_init_fn=leave_stops_to_the_run,
    )  # fmt: skip
