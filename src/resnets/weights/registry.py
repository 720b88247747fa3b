"""Published weights as data with provenance: url, sha256, classes, eval preprocessing and reported accuracy.

Files are fetched into a local cache only when a registered name is asked for, and checked against their hash.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..data.preprocessing import Preprocessing
from ..errors import WeightsError
from ..home import cache_dir, class_list, offline
from ..registry import Registry

# torch (torch.hub's folder, its downloader) and hub.py (which reads weights files with torch) are imported by the
# functions that fetch: `resnets list` imports this package and answers without loading torch


@dataclass(frozen=True)
class WeightSpec:
    """A published checkpoint. `sha256` is the full digest or, for torchvision's files, the leading hex digits
    that torchvision puts in the file name (the same check torch.hub does). A `url` of hf-hub:ORG/NAME is a
    Hugging Face Hub repo in timm's layout, fetched by huggingface_hub (which checks the files against the
    repo's hashes); its `sha256` is empty."""

    name: str  # "<architecture>.<tag>", e.g. "resnet50.tv2_in1k"
    url: str
    sha256: str
    preprocessing: Preprocessing | None  # None: a detector, which resizes and normalises its images itself
    metrics: dict[str, float] = field(default_factory=dict)  # ImageNet-1k val, single centre crop, % (COCO box_map)
    num_classes: int = 1000
    classes: str = "imagenet"  # a class list shipped in resnets/assets (home.class_list)
    source: str = ""
    recipe: str = ""
    options: dict = field(
        default_factory=dict
    )  # architecture options the file needs (torchvision's v1 COCO: norm_eps 0)

    @property
    def architecture(self) -> str:
        return self.name.split(".", 1)[0]

    @property
    def on_hub(self) -> bool:
        return self.url.startswith("hf-hub:")

    @property
    def file_name(self) -> str:
        return self.url.rsplit("/", 1)[-1]

    def class_names(self) -> list[str]:
        return class_list(self.classes)


_WEIGHTS: Registry[WeightSpec] = Registry("weights", WeightsError, "see `resnets list --weights`")
_PENDING: list[Callable[[], None]] = []


def register_later(tables: Callable[[], None]) -> None:
    """Queue a function that registers a table, run the first time the registry is read or written: the
    published tables read torchvision's own records, which costs torchvision's import, so nothing pays for them
    before a weights name is looked up."""
    _PENDING.append(tables)


def _registry() -> Registry[WeightSpec]:
    while _PENDING:  # taken before it runs: a table's own registrations come back here
        tables = list(_PENDING)
        _PENDING.clear()
        for register in tables:
            register()
    return _WEIGHTS


def register_weights(spec: WeightSpec) -> WeightSpec:
    return _registry().add(spec.name, spec)


def unregister_weights(name: str) -> None:
    """Take a registration back (what a test or a notebook registered for a while)."""
    _registry().pop(name, None)


def list_weights(pattern: str = "*") -> list[str]:
    return _registry().names(pattern)


def get_weights(name: str) -> WeightSpec:
    return _registry().find(name)


def is_registered(name: str) -> bool:
    return name in _registry()


def default_weights(architecture: str) -> str | None:
    """What `pretrained=True` means for `architecture`: its registered weights of the best ImageNet top-1 (as
    torchvision's DEFAULT is its best), or None when it has none."""
    names = list_weights(f"{architecture}.*")
    return max(names, key=lambda n: get_weights(n).metrics.get("top1", 0.0)) if names else None


def _candidates(spec: WeightSpec) -> list[Path]:
    # torchvision/torch.hub keep the same files under <hub dir>/checkpoints: reuse them rather than download again
    import torch.hub

    return [cache_dir() / spec.file_name, Path(torch.hub.get_dir()) / "checkpoints" / spec.file_name]


def fetch(name: str, *, download: bool = True, progress: bool = True) -> Path:
    """Local path of registered weights, downloading them (hash-checked) if they are not cached yet.

    Offline (no network, or RESNETS_OFFLINE=1, or download=False) a missing file is an error saying which file
    to put where.
    """
    spec = get_weights(name)
    if spec.on_hub:  # a Hub repo: huggingface_hub's cache and offline switches
        from . import hub

        return hub.weight_file(hub.fetch(spec.url, download=download), spec.url)
    for path in _candidates(spec):
        if path.is_file():
            return path
    dest = _candidates(spec)[0]
    manual = f"download {spec.url} and save it as {dest}"
    if not download or offline():
        raise WeightsError(f"weights {name!r} are not in the cache and downloads are off; {manual}")
    import torch.hub

    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        # writes to a temporary file beside dest, checks the sha256 prefix, then renames
        torch.hub.download_url_to_file(spec.url, str(dest), hash_prefix=spec.sha256, progress=progress)
    except RuntimeError as e:  # hash mismatch: torch.hub removed the temporary file
        raise WeightsError(f"weights {name!r} from {spec.url} failed the sha256 check ({e}); {manual}") from None
    except OSError as e:
        raise WeightsError(f"cannot download weights {name!r} ({e}); {manual}") from None
    return dest
