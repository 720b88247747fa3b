"""Bounded JSON: depth counted before parsing (outside strings, escapes understood), UTF-8 only, one line."""

import time

import pytest

from resnets.data import jsonfile
from resnets.errors import ResnetsError


def test_depth_counts_brackets_outside_strings_only():
    assert jsonfile.depth(b'{"a": [[1], "]]]", {"b": "\\\\"}]}') == 3
    assert jsonfile.depth(b'{"a": "\\"[[[[[[", "b": [1]}') == 2  # an escaped quote does not end the string
    assert jsonfile.depth(b"[]") == 1 and jsonfile.depth(b"7") == 0


def test_a_bracket_bomb_is_one_line_and_fast():
    t = time.monotonic()
    with pytest.raises(ResnetsError) as e:
        jsonfile.loads(b"[" * 200_000, "index.json", what="an index nests 4 deep")
    assert time.monotonic() - t < 2
    assert str(e.value) == "index.json: brackets nested deeper than 64 (an index nests 4 deep)"


def test_what_json_loads_refuses_is_one_line_too():
    for raw, needle in ((b"\xff\xfe[\x00]\x00", "UTF-16"), (b"{nope}", "not JSON"), (b"9" * 5000, "not JSON")):
        with pytest.raises(ResnetsError) as e:
            jsonfile.loads(raw, "x.json")
        assert needle in str(e.value) and "\n" not in str(e.value)
    assert jsonfile.loads(b'{"a": [1, {"b": 2}]}', "ok.json") == {"a": [1, {"b": 2}]}


def test_a_bomb_by_breadth_is_refused_before_parsing_and_real_files_are_not():
    """64 MB of `{},` took 2.4 GB in json.loads; 8 MB of it is refused from its estimate. A COCO-like file of
    floats and a shard-index-like file of small arrays pass."""
    bomb = b'{"images": [' + b"{}," * (8 << 20) + b"{}]}"
    with pytest.raises(ResnetsError, match="once parsed, over"):
        jsonfile.loads(bomb, "instances.json")
    ann = b'{"id": 1, "image_id": 2, "category_id": 3, "bbox": [1.5, 2.5, 30.25, 40.75], "segmentation": [['
    coco = b'{"annotations": [' + b",".join(ann + b"12.5, 13.25, 40.5, 41.75, 9.0, 8.5]]}" for _ in range(200_000))
    assert len(jsonfile.loads(coco + b"]}", "coco.json")["annotations"]) == 200_000
    index = b'{"samples": [' + b",".join(b'["000000123", 7, 1536, 40312, "jpg"]' for _ in range(200_000)) + b"]}"
    assert len(jsonfile.loads(index, "index.json")["samples"]) == 200_000
    assert jsonfile.python_bytes(coco) < 12 * len(coco) and jsonfile.python_bytes(bomb) > 12 * len(bomb) + (256 << 20)
