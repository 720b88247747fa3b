"""Detection data in Pascal VOC's layout (`--dataset voc --data DIR`): DIR/Annotations/<id>.xml (one per image:
its size and each object's name, bndbox and difficult flag), DIR/JPEGImages/<id>.jpg, and the image ids of each
split in DIR/ImageSets/Main/train.txt and val.txt (VOC2007/VOC2012 as published, and what LabelImg-style tools
write). Read into the same records as COCO's (data/coco.py), so training, evaluation and detection are the same.

Every file is untrusted: an XML file is read within a size limit (MAX_XML_BYTES) and parsed by expat with no
DTD allowed, as defusedxml's forbid_dtd does (so no entity is declared or expanded: no billion laughs, no external
file), elements nested at most MAX_XML_DEPTH deep; a file that is not VOC's XML is refused in one line; each bad
object (no name, a box outside the image or of no size, a class not among classes.txt's) is named with its file and
skipped, or refused with strict data; an image with more objects than RESNETS_MAX_OBJECTS (data/coco.py) is named
and skipped. Difficult objects are kept as COCO's crowd boxes: left out of training and
ignored by the scores, as VOC's own evaluation ignores them. Classes: DIR/classes.txt when there (one name per
line, no background), else the names found in the training split, sorted."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from xml.etree import ElementTree
from xml.parsers import expat

from ..errors import ResnetsError
from .coco import EDGE, CocoDetection, Record, over_limits

log = logging.getLogger("resnets")

MAX_XML_BYTES = 1 << 20  # a VOC annotation is a few KB
MAX_XML_DEPTH = 64  # VOC's nest 4 deep: <annotation><object><bndbox><xmin>
MAX_LIST_BYTES = 64 << 20  # an image-id or class list
SPLITS = {"train": ("train",), "val": ("val", "test")}


def parse_xml(data: bytes, path: Path) -> ElementTree.Element:
    """The element tree of `data`, built by expat with a DTD refused where it starts (before any entity in it is
    declared) and elements nested at most MAX_XML_DEPTH deep; ResnetsError (one line) for anything else."""
    builder, parser, depth = ElementTree.TreeBuilder(), expat.ParserCreate(), 0

    def start(tag: str, attrs: dict) -> None:
        nonlocal depth
        depth += 1
        if depth > MAX_XML_DEPTH:
            raise ResnetsError(f"{path}: elements nested deeper than {MAX_XML_DEPTH} (VOC's nest 4); refused")
        builder.start(tag, attrs)

    def end(tag: str) -> None:
        nonlocal depth
        depth -= 1
        builder.end(tag)

    def dtd(*_) -> None:
        raise ResnetsError(f"{path}: a DTD (<!DOCTYPE ...>), which could declare entities; VOC's XML has none, refused")

    parser.StartDoctypeDeclHandler = parser.EntityDeclHandler = dtd
    parser.StartElementHandler, parser.EndElementHandler, parser.CharacterDataHandler = start, end, builder.data
    try:
        parser.Parse(data, True)
    except expat.ExpatError as e:
        raise ResnetsError(f"{path}: not XML ({e})") from None
    return builder.close()


def _read_xml(path: Path) -> ElementTree.Element:
    try:
        size = path.stat().st_size
        if size > MAX_XML_BYTES:
            raise ResnetsError(f"{path}: {size:,} bytes is more than the {MAX_XML_BYTES:,} a VOC annotation may have")
        data = path.read_bytes()
    except OSError as e:
        raise ResnetsError(f"cannot read {path}: {e.strerror or e}") from None
    root = parse_xml(data, path)
    if root.tag != "annotation":
        raise ResnetsError(f"{path}: the root element is <{root.tag}>, not VOC's <annotation>")
    return root


def _number(el: ElementTree.Element | None, tag: str) -> float | None:
    text = el.findtext(tag) if el is not None else None
    try:
        value = float(text) if text is not None else None
    except ValueError:
        return None
    return value if value is not None and value == value and abs(value) < 1e9 else None


def _image_size(root: ElementTree.Element, path: Path) -> tuple[int, int]:
    w, h = _number(root.find("size"), "width"), _number(root.find("size"), "height")
    if not w or not h or w < 1 or h < 1 or w != int(w) or h != int(h):
        raise ResnetsError(f"{path}: no <size> with a whole width and height; not a VOC annotation")
    return int(w), int(h)


def _objects(root: ElementTree.Element, path: Path, rec: Record, labels: dict[str, int] | None) -> list[str]:
    """Each <object> onto `rec` (labels None: names only collected); the problems of those skipped."""
    problems = []
    for k, obj in enumerate(root.iter("object")):
        name = (obj.findtext("name") or "").strip()
        where = f"{path}: object {k + 1}"
        box = obj.find("bndbox")
        x0, y0, x1, y1 = (_number(box, t) for t in ("xmin", "ymin", "xmax", "ymax"))
        why = None
        if not name:
            why = "no <name>"
        elif labels is not None and name not in labels:
            why = f"class {name!r} is not in classes.txt"
        elif None in (x0, y0, x1, y1):
            why = "no <bndbox> of 4 numbers"
        elif x1 <= x0 or y1 <= y0:
            why = f"box ({x0:g}, {y0:g}, {x1:g}, {y1:g}) has no size"
        elif x0 < -EDGE or y0 < -EDGE or x1 > rec.width + EDGE or y1 > rec.height + EDGE:
            why = f"box ({x0:g}, {y0:g}, {x1:g}, {y1:g}) lies outside the {rec.width}x{rec.height} image"
        if why is not None:
            problems.append(f"{where}: {why}; skipped")
            continue
        rec.boxes.append([max(x0, 0.0), max(y0, 0.0), min(x1, rec.width), min(y1, rec.height)])
        rec.labels.append(labels[name] if labels is not None else 0)
        rec.crowd.append(1 if (obj.findtext("difficult") or "0").strip() == "1" else 0)
        rec.segmentations.append(None)
    return problems


def _ids(root: Path, split: str) -> list[str] | None:
    main = root / "ImageSets" / "Main"
    file = next((main / f"{n}.txt" for n in SPLITS[split] if (main / f"{n}.txt").is_file()), None)
    if file is None:
        return None
    if file.stat().st_size > MAX_LIST_BYTES:
        raise ResnetsError(f"{file} is larger than {MAX_LIST_BYTES:,} bytes; not a list of image ids")
    ids = [line.split()[0] for line in file.read_text(encoding="utf-8", errors="replace").splitlines() if line.split()]
    bad = [i for i in ids if "/" in i or "\\" in i or i in (".", "..")]
    if bad:
        raise ResnetsError(f"{file}: {bad[0]!r} is not an image id (ids name files inside Annotations/)")
    return ids


def _classes(root: Path, ids: list[str]) -> list[str]:
    listed = root / "classes.txt"
    if listed.is_file():
        if listed.stat().st_size > MAX_LIST_BYTES:
            raise ResnetsError(f"{listed} is larger than {MAX_LIST_BYTES:,} bytes; not a list of class names")
        names = [n.strip() for n in listed.read_text(encoding="utf-8").splitlines() if n.strip()]
        if not names or len(set(names)) != len(names):
            raise ResnetsError(f"{listed}: class names, one per line, each once")
        return names
    found: set[str] = set()
    for i in ids:
        for obj in _read_xml(root / "Annotations" / f"{i}.xml").iter("object"):
            if (obj.findtext("name") or "").strip():
                found.add(obj.findtext("name").strip())
    if not found:
        raise ResnetsError(f"no object in {root / 'Annotations'} names a class")
    return sorted(found)


def load(data: str | os.PathLike, split: str, *, strict: bool = False, classes: list[str] | None = None):
    """The `split` ("train" or "val") of the VOC folder `data` as a CocoDetection (None: no such split);
    classes: those of training (default: classes.txt, or the training split's names)."""
    root = Path(data)
    if not (root / "Annotations").is_dir():
        raise ResnetsError(
            f"{root} has no Annotations/ folder (Pascal VOC's layout: Annotations, JPEGImages, ImageSets/Main)"
        )
    ids = _ids(root, split)
    if ids is None:
        if split == "train":
            raise ResnetsError(f"no {root / 'ImageSets' / 'Main' / 'train.txt'} listing the training images")
        return None
    classes = classes or _classes(root, ids)
    labels = {n: k + 1 for k, n in enumerate(classes)}
    records, problems = [], []
    for i in ids:
        xml = root / "Annotations" / f"{i}.xml"
        if not xml.is_file():
            problems.append(f"{xml}: missing (listed in ImageSets/Main/{split}.txt); image skipped")
            continue
        tree = _read_xml(xml)
        w, h = _image_size(tree, xml)
        name = (tree.findtext("filename") or f"{i}.jpg").strip()
        if Path(name).name != name or name in (".", ".."):
            raise ResnetsError(f"{xml}: <filename> {name!r} is not a file name inside JPEGImages/")
        rec = Record(str(root / "JPEGImages" / name), len(records) + 1, w, h)
        problems += _objects(tree, xml, rec, labels)
        crowded = over_limits(rec, False)
        if crowded is not None:
            problems.append(f"{xml}: {crowded}; image skipped")
            continue
        records.append(rec)
    if problems and strict:
        raise ResnetsError(f"{problems[0]} (strict data is on)")
    for p in problems[:20]:
        log.warning("%s", p)
    if len(problems) > 20:
        log.warning("%s: %d more objects skipped", root, len(problems) - 20)
    return CocoDetection(records, list(classes), root / "Annotations", False)
