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
