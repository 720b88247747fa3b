"""JSON from elsewhere (COCO annotations, a shard index), parsed only within bounds: its size checked by the caller
before it is read, UTF-8 only, brackets nested at most `depth` deep, counted before `json.loads` (which recurses:
200 KB of '[' is a RecursionError) by a scan in passes of C code, and what parsing it would take in memory
estimated from its objects and values, at most 12x its bytes (64 MB of `{},` took 2.4 GB)."""

from __future__ import annotations

import json
import re

import numpy as np

from ..errors import ResnetsError

MAX_DEPTH = 64  # COCO's own files nest 5 deep, a shard index 4
# what json.loads makes of it, estimated before: an object or array ~120 bytes of Python, a value ~24; at most
# RATIO times the file's bytes and SLACK (COCO's files come to ~5-8x, a shard index ~7x; 64 MB of `{},` to 38x)
CONTAINER_BYTES, VALUE_BYTES, RATIO, SLACK = 120, 24, 12, 256 << 20

_NOT_STRUCTURE = bytes(b for b in range(256) if b not in b'[]{}"')
_STEP = np.zeros(256, np.int64)
_STEP[list(b"[{")], _STEP[list(b"]}")] = 1, -1


def _structure(text: bytes) -> bytes:
    """`text` with every string taken out (escapes first: an escaped quote does not end a string)."""
    return re.sub(rb'"[^"]*"', b"", re.sub(rb"\\.", b"", text, flags=re.S))


def python_bytes(text: bytes) -> int:
    """About how much memory json.loads takes for `text`: its objects and arrays, its values, its strings."""
    bare = _structure(text)
    containers = bare.count(b"[") + bare.count(b"{")
    return CONTAINER_BYTES * containers + VALUE_BYTES * (bare.count(b",") + 1) + len(text)


def depth(text: bytes, stop: int = MAX_DEPTH) -> int:
    """How deep the brackets of the UTF-8 JSON `text` nest outside its strings (counting stops past `stop`), in
    passes of C code: about 0.25 s for a 55 MB COCO file, whose json.loads takes 2.3 s."""
    text = re.sub(rb"\\.", b"", text, flags=re.S)  # escapes out first: an escaped quote does not end a string
    text = re.sub(rb'"[^"]*"', b"", text.translate(None, _NOT_STRUCTURE))  # brackets left, those of strings gone
    steps = _STEP[np.frombuffer(text, np.uint8)]
    level = deepest = 0
    for start in range(0, len(steps), 1 << 24):
        run = np.cumsum(steps[start : start + (1 << 24)]) + level
        deepest, level = max(deepest, int(run.max())), int(run[-1])
        if deepest > stop:
            break
    return deepest


def loads(
    raw: bytes, name: str, *, max_depth: int = MAX_DEPTH, what: str = "", bound: tuple[int, str] | None = None
) -> object:
    """`raw` parsed, or one ResnetsError naming `name`: not UTF-8, nested deeper than `max_depth` (`what` says how
    deep such files nest), over its memory bound once parsed (`bound`: (bytes, what holds that much); default
    RATIO x its bytes), or not JSON (a number of over 4,300 digits included)."""
    encoding = json.detect_encoding(raw)
    if encoding not in ("utf-8", "utf-8-sig"):
        raise ResnetsError(f"{name}: {encoding.upper()} text; JSON files are UTF-8")
    if depth(raw, max_depth) > max_depth:
        raise ResnetsError(f"{name}: brackets nested deeper than {max_depth}{f' ({what})' if what else ''}")
    limit, why = bound or (
        RATIO * len(raw) + SLACK,
        f"{RATIO}x the file: objects and arrays packed far tighter than any real file's",
    )
    cost = python_bytes(raw)
    if cost > limit:
        raise ResnetsError(
            f"{name}: its {len(raw):,} bytes would take about {cost:,} bytes once parsed, over {limit:,} ({why})"
        )
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as e:
        raise ResnetsError(f"{name}: not JSON ({str(e).splitlines()[0][:120]})") from None
