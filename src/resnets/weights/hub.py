"""Weights from the Hugging Face Hub and from timm's folders: `hf-hub:ORG/NAME[@REVISION]` wherever weights are
named, fetched with huggingface_hub into its own cache (offline mode honoured: a cached repo loads with no
network), and timm's `config.json` (architecture, classes, `pretrained_cfg`: input size, interpolation,
crop_pct, mean, std, label names) read as the model's metadata, so a timm model is fed as timm feeds it.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from ..choices import CROP_MODES, INTERPOLATIONS
from ..data.preprocessing import MAX_INPUT_SIZE
from ..errors import WeightsError
from ..home import downloads_off
from ..meta import IMAGENET_MEAN, IMAGENET_STD, ModelMeta, Preprocessing
from ..models import list_models
from ..models.registry import MAX_CLASSES
from .files import read_weights

PREFIX = "hf-hub:"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")


def weight_file(folder: Path, source: str) -> Path:
    """The weights of a folder in timm's layout (the first of WEIGHT_FILES there), or a WeightsError naming
    `source`."""
    found = next((folder / f for f in WEIGHT_FILES if (folder / f).is_file()), None)
    if found is None:
        raise WeightsError(f"{source} holds no weights ({', '.join(WEIGHT_FILES)})")
    return found


def is_hub(text: str) -> bool:
    return text.startswith(PREFIX)


def parse(text: str) -> tuple[str, str | None]:
    """ "hf-hub:ORG/NAME@REV" -> ("ORG/NAME", "REV")."""
    repo, _, revision = text[len(PREFIX) :].partition("@")
    if repo.count("/") != 1 or not all(repo.split("/")):
        raise WeightsError(f"{text!r}: a Hub name is hf-hub:ORG/NAME[@REVISION]")
    return repo, revision or None


def fetch(text: str, *, download: bool = True) -> Path:
    """The local folder of a Hub repo (config.json and its weights), downloaded into huggingface_hub's cache
    when online (and `download`) and not there yet."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    repo, revision = parse(text)
    try:
        return Path(
            snapshot_download(
                repo,
                revision=revision,
                local_files_only=downloads_off() or not download,
                cache_dir=os.environ.get("HF_HUB_CACHE") or None,  # read now, not at import
                allow_patterns=["config.json", *WEIGHT_FILES],
            )
        )
    except LocalEntryNotFoundError:
        raise WeightsError(
            f"{text} is not in the Hugging Face cache and downloads are off; fetch it once online "
            f"(`hf download {repo}`), or unset HF_HUB_OFFLINE / RESNETS_OFFLINE"
        ) from None
    except (RepositoryNotFoundError, RevisionNotFoundError, HFValidationError) as e:
        raise WeightsError(f"{text}: {str(e).splitlines()[0]}") from None
    except OSError as e:  # no network
        raise WeightsError(f"cannot download {text} ({e}); check the network, or use a cached copy") from None


# a timm config.json is a few kilobytes (label names of 21k classes: ~0.5 MB); a larger one is not read
MAX_CONFIG_BYTES = 4 << 20


def timm_config_in(folder: Path) -> dict | None:
    """The config.json of a folder in timm's layout (one naming an `architecture`, not a resnets run's config),
    or None. Read only up to MAX_CONFIG_BYTES; its values are checked by `check_timm_config`."""
    path = folder / "config.json"
    if path.is_file() and path.stat().st_size > MAX_CONFIG_BYTES:
        raise WeightsError(f"{path} is {path.stat().st_size:,} bytes; a timm config.json is a few kilobytes")
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return cfg if isinstance(cfg, dict) and isinstance(cfg.get("architecture"), str) and "model" not in cfg else None


def check_timm_config(cfg: dict, source: str) -> None:
    """A timm config.json from elsewhere, checked against the schema of what we read from it, before anything
    is built: one WeightsError naming the key and the value, never a traceback later."""

    def bad(key: str, value, want: str):
        return WeightsError(f"{source}: config.json's {key} must be {want}; got {json.dumps(value)[:80]}")

    def whole(key: str, v, low: int, high: int) -> None:
        if isinstance(v, bool) or not isinstance(v, int) or not low <= v <= high:
            raise bad(key, v, f"a whole number from {low} to {high:,}")

    def number(key: str, v, low: float, high: float) -> None:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not low < v <= high:
            raise bad(key, v, f"a number over {low:g} and at most {high:g}")

    def names(key: str, v) -> None:
        if not isinstance(v, list) or not all(isinstance(n, str) and len(n) <= 1000 for n in v):
            raise bad(key, v, "a list of class names")

    pre = cfg.get("pretrained_cfg", {})
    if not isinstance(pre, dict):
        raise bad("pretrained_cfg", pre, "a table")
    for where, table in (("", cfg), ("pretrained_cfg.", pre)):
        if table.get("num_classes") is not None:
            whole(where + "num_classes", table["num_classes"], 0, MAX_CLASSES)
        if table.get("label_names") is not None:
            names(where + "label_names", table["label_names"])
    for key in ("input_size", "test_input_size"):
        v = pre.get(key)
        if v is None:
            continue
        if not isinstance(v, list) or len(v) != 3:
            raise bad(f"pretrained_cfg.{key}", v, "[channels, height, width]")
        whole(f"pretrained_cfg.{key}[0]", v[0], 1, 64)
        for side in v[1:]:
            whole(f"pretrained_cfg.{key}", side, 8, MAX_INPUT_SIZE)
    for key in ("crop_pct", "test_crop_pct"):
        if pre.get(key) is not None:
            number(f"pretrained_cfg.{key}", pre[key], 0.1, 2.0)
    for key, choices in (("interpolation", INTERPOLATIONS), ("crop_mode", CROP_MODES)):
        if pre.get(key) is not None and pre[key] not in choices:
            raise bad(f"pretrained_cfg.{key}", pre[key], " or ".join(choices))
    channels = (pre.get("input_size") or [3])[0]
    for key in ("mean", "std"):
        v = pre.get(key)
        if v is None:
            continue
        if (
            not isinstance(v, list)
            or len(v) != channels
            or not all(
                not isinstance(x, bool) and isinstance(x, (int, float)) and math.isfinite(x) and abs(x) <= 1e4
                for x in v
            )
        ):
            raise bad(f"pretrained_cfg.{key}", v, f"a list of {channels} finite numbers (one per input channel)")
        if key == "std" and min(v) <= 0:
            raise bad("pretrained_cfg.std", v, "positive")
    n = cfg.get("num_classes", pre.get("num_classes"))
    labels = cfg.get("label_names") or pre.get("label_names")
    if labels and n is not None and len(labels) != n:
        raise WeightsError(f"{source}: config.json names {len(labels)} classes for num_classes {n}")


def timm_preprocessing(pretrained_cfg: dict) -> Preprocessing:
    """timm's eval transform as ours: the shorter side (crop_mode "squash": both sides) to floor(size / crop_pct),
    a centre crop of `size`."""
    size = int((pretrained_cfg.get("test_input_size") or pretrained_cfg.get("input_size") or (3, 224, 224))[-1])
    crop_pct = float(pretrained_cfg.get("test_crop_pct") or pretrained_cfg.get("crop_pct") or 0.875)
    return Preprocessing.from_dict(
        {
            "resize": math.floor(size / crop_pct),
            "crop": size,
            "interpolation": pretrained_cfg.get("interpolation", "bilinear"),
            "crop_mode": pretrained_cfg.get("crop_mode") or "center",
            "mean": list(pretrained_cfg.get("mean", IMAGENET_MEAN)),
            "std": list(pretrained_cfg.get("std", IMAGENET_STD)),
        }
    )


def read_timm_folder(folder: Path, cfg: dict, source: str) -> tuple[dict, ModelMeta]:
    """(state_dict, metadata) of a folder in timm's layout (what timm's push_to_hf_hub writes), `cfg` its
    config.json."""
    check_timm_config(cfg, source)
    weights = weight_file(folder, source)
    arch = cfg["architecture"]
    if arch not in list_models():
        raise WeightsError(f"{source} is a timm {arch}, which resnets does not build (see `resnets list`)")
    sd, _ = read_weights(weights)
    pre = cfg.get("pretrained_cfg") or {}
    names = cfg.get("label_names") or pre.get("label_names")
    num_classes = cfg.get("num_classes", pre.get("num_classes"))
    options = {"num_classes": num_classes} if num_classes is not None else {}
    if pre.get("input_size"):
        options["in_chans"] = pre["input_size"][0]
    meta = ModelMeta(
        arch, options, class_names=list(names) if names else None, preprocessing=timm_preprocessing(pre), source=source
    )
    return sd, meta
