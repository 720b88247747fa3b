"""Where files live and whether to fetch them: the caches' root, the offline switch, the class-name lists shipped
with the package, the numbers set by environment variables (`setting`). Standard library only, on the bottom floor:
the weights registry, the Hub reader, the Keras reader, the ONNX cache and the data readers' limits all read these,
and none of them imports another for them."""

from __future__ import annotations

import math
import os
from functools import lru_cache
from importlib import resources
from pathlib import Path

from .errors import ResnetsError, printable


def home_dir() -> Path:
    """$RESNETS_HOME, else $XDG_CACHE_HOME/resnets, else ~/.cache/resnets: the root of every cache of ours."""
    if os.environ.get("RESNETS_HOME"):
        return Path(os.environ["RESNETS_HOME"])
    return Path(os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")) / "resnets"


def cache_dir() -> Path:
    """Downloaded weights: home_dir()/weights."""
    return home_dir() / "weights"


def onnx_cache_dir() -> Path:
    """ONNX exports the backends made: home_dir()/onnx."""
    return home_dir() / "onnx"


def shard_cache_dir() -> Path:
    """Shards streamed from URLs or commands: $RESNETS_SHARD_CACHE, else home_dir()/shards."""
    return Path(os.environ.get("RESNETS_SHARD_CACHE") or home_dir() / "shards")


def setting(
    name: str, default: float, what: str, *, low: float = 0.0, high: float = math.inf, low_ok: bool = False
) -> float:
    """The number the environment variable `name` sets (`default` when it is unset or empty), refused in one line
    saying `what` to give when it is not a finite number above `low` (or equal to it, with `low_ok`) and at most
    `high`: a limit from the environment is checked as an option is."""
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not ((low <= value if low_ok else low < value) and value <= high and math.isfinite(value)):
        raise ResnetsError(f"{name}={printable(text)[:40]!r}: {what}")
    return value


def offline() -> bool:
    """Downloads are off: RESNETS_OFFLINE is set (to anything but 0)."""
    return os.environ.get("RESNETS_OFFLINE", "") not in ("", "0")


def downloads_off() -> bool:
    """Nothing is fetched from the Hugging Face Hub: ours (RESNETS_OFFLINE) or huggingface_hub's own switch is on."""
    return offline() or os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")


@lru_cache(maxsize=None)
def _class_list(name: str) -> tuple[str, ...]:
    text = resources.files("resnets").joinpath(f"assets/{name}_classes.txt").read_text(encoding="utf-8")
    return tuple(line for line in text.splitlines() if line)


def class_list(name: str) -> list[str]:
    """A class-name list shipped with the package (e.g. "imagenet": the 1000 ImageNet-1k classes)."""
    return list(_class_list(name))
