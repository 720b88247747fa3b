"""What a model is and how to feed it, as one declared object: `ModelMeta` (architecture, options, class names,
eval preprocessing, where the weights came from), set on every model the factory builds as `model.meta`, saved
with it and read back checked. timm keeps `model.pretrained_cfg`; torchvision's weights give `.meta` and
`.transforms()`; this is both, and `Preprocessing` gives its own eval transform and normaliser.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

from .choices import CROP_MODES, INTERPOLATIONS
from .errors import WeightsError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# the largest crop a model is fed (resize: twice that): above any published eval size (BiT's 480, timm's 640),
# below what makes one forward pass take gigabytes (a crop of 5000 took 23.6 GB)
MAX_INPUT_SIZE = 1024  # the shorter side to `resize`, or both sides
FORMAT = "resnets.model/1"  # the safetensors metadata "format" value of a self-describing resnets model file


@dataclass(frozen=True)
class Preprocessing:
    """Evaluation preprocessing: resize the shorter side to `resize` (crop_mode "squash": both sides, ignoring the
    aspect ratio, as timm's squash mode and Keras' `load_img(target_size=...)` do), centre-crop `crop`, scale to
    [0, 1], normalise with mean/std (per channel, in that [0, 1] scale). "nearest" is Pillow's nearest."""

    resize: int
    crop: int
    interpolation: str = "bilinear"
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    crop_mode: str = "center"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocessing":
        """From a saved dict, checked (raises WeightsError saying what is wrong)."""

        def size(key: str) -> int:
            v, high = d.get(key), MAX_INPUT_SIZE * (2 if key == "resize" else 1)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v != int(v) or not 1 <= v <= high:
                raise WeightsError(f"{key} must be a whole number of pixels from 1 to {high}; got {v!r}")
            return int(v)

        def stats(key: str, default: tuple[float, ...]) -> tuple[float, ...]:
            v = d.get(key, default)
            if not isinstance(v, (list, tuple)) or not 1 <= len(v) <= 64 or any(
                    isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x) or abs(x) > 1e4
                    for x in v):  # fmt: skip
                raise WeightsError(f"{key} must be a list of finite numbers, one per channel; got {str(v)[:80]}")
            return tuple(float(x) for x in v)

        if not isinstance(d, dict):
            raise WeightsError(f"preprocessing must be a table; got {type(d).__name__}")
        interp = d.get("interpolation", "bilinear")
        if interp not in INTERPOLATIONS:
            raise WeightsError(f"interpolation must be bilinear, bicubic or nearest; got {interp!r}")
        crop_mode = d.get("crop_mode", "center")
        if crop_mode not in CROP_MODES:
            raise WeightsError(f"crop_mode must be {' or '.join(CROP_MODES)}; got {crop_mode!r}")
        mean, std = stats("mean", IMAGENET_MEAN), stats("std", IMAGENET_STD)
        if len(mean) != len(std):
            raise WeightsError(f"mean and std must have one value per channel; got {len(mean)} and {len(std)}")
        if min(std) <= 0:
            raise WeightsError(f"std must be positive; got {list(std)}")
        return cls(resize=size("resize"), crop=size("crop"), interpolation=interp, mean=mean, std=std, crop_mode=crop_mode)

    @classmethod
    def default(cls, crop: int, in_chans: int = 3) -> "Preprocessing":
        """What a net trained at `crop` is fed when its weights record nothing: the ImageNet statistics, and the
        shorter side resized to crop / 0.875 (256 for 224) as torchvision and timm evaluate, or to the crop itself
        for the 32-pixel CIFAR nets."""
        resize = crop if crop <= 32 else round(crop / 0.875)
        return cls(resize, crop).for_channels(in_chans)

    def for_channels(self, n: int) -> "Preprocessing":
        """The same preprocessing for `n` input channels. Grey images fed to a net whose statistics are RGB's (or
        the other way round): every channel gets the average of the channel statistics."""
        if n == len(self.mean):
            return self
        m, s = sum(self.mean) / len(self.mean), sum(self.std) / len(self.std)
        return dataclasses.replace(self, mean=(m,) * n, std=(s,) * n)

    def transform(self):
        """The eval transform, on uint8 images (C, H, W) or batches: shorter side to `resize`, centre `crop`
        (torchvision.transforms.v2; normalisation is `normalizer()`, kept apart so it can run on the device)."""
        from .data.transforms import eval_transform

        return eval_transform(resize=self.resize, crop=self.crop, interpolation=self.interpolation,
                              crop_mode=self.crop_mode)  # fmt: skip

    def normalizer(self):
        """uint8 images -> float, scaled to [0, 1] and normalised (on the images' device)."""
        from .data.transforms import normalizer

        return normalizer(self.mean, self.std)

    def transforms(self):
        """One callable from an image (a PIL image, or a uint8 / [0, 1] float tensor (C, H, W)) to the model's
        normalised input (C, crop, crop), as torchvision's `weights.transforms()`: `model(pre.transforms()(im)[None])`."""
        return _Pipeline(self)

    def describe(self) -> str:
        size = f"resize {self.resize}x{self.resize} (squash)" if self.crop_mode == "squash" else f"resize {self.resize}"
        return f"{size}, crop {self.crop}, {self.interpolation}, mean {list(self.mean)}, std {list(self.std)}"


class _Pipeline:
    """Preprocessing.transforms(): decode-free, on the CPU."""

    def __init__(self, pre: Preprocessing):
        self.pre, self.resize_crop, self.normalize = pre, pre.transform(), pre.normalizer()

    def __call__(self, image):
        import torch

        from .data.datasets import pil_to_tensor, to_channels

        channels = len(self.pre.mean)
        if isinstance(image, torch.Tensor):
            if image.ndim != 3:
                raise ValueError(f"an image tensor is (C, H, W); got shape {tuple(image.shape)}")
            t = image if image.dtype == torch.uint8 else (image.float().clamp(0, 1) * 255).round().to(torch.uint8)
            t = to_channels(t, channels)
        else:
            t = pil_to_tensor(image, channels)
        return self.normalize(self.resize_crop(t))

    def __repr__(self) -> str:
        return f"transforms({self.pre.describe()})"


@dataclass
class ModelMeta:
    """Everything about a model that is not its weights. `source`: the registered weights or the file they came
    from (None: initialised here)."""

    architecture: str
    options: dict[str, Any] = field(default_factory=dict)
    class_names: list[str] | None = None
    preprocessing: Preprocessing | None = None  # as recorded with the weights; None: nothing recorded
    source: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # what training noted (val_top1, dataset)

    @property
    def in_chans(self) -> int:
        return int(self.options.get("in_chans", 3))

    def names(self, num_classes: int) -> list[str]:
        """The class names, or "0".."n-1" when none are recorded."""
        return list(self.class_names) if self.class_names else [str(i) for i in range(num_classes)]

    def eval_preprocessing(self) -> tuple[Preprocessing, bool]:
        """(the preprocessing to feed the model with, whether it was recorded with the weights): the recorded
        one, else the architecture's default input size with the ImageNet statistics."""
        if self.preprocessing is not None:
            return self.preprocessing, True
        from .models.registry import get_entry

        return Preprocessing.default(get_entry(self.architecture).input_size, self.in_chans), False

    def replace(self, **changes: Any) -> "ModelMeta":
        return dataclasses.replace(self, **changes)

    # ---- the safetensors metadata of a model file: string values, JSON inside

    def to_record(self) -> dict[str, str]:
        rec = {"format": FORMAT, "architecture": self.architecture, "options": json.dumps(self.options)}
        if self.class_names is not None:
            rec["class_names"] = json.dumps(list(self.class_names))
        if self.preprocessing is not None:
            rec["preprocessing"] = json.dumps(self.preprocessing.to_dict())
        if self.extra:
            rec["extra"] = json.dumps(self.extra)
        return rec

    @classmethod
    def from_record(cls, raw: dict[str, str] | None, where: str) -> "ModelMeta | None":
        """The metadata of a resnets model file, checked: a damaged field is one clear WeightsError naming the
        file (`where`), not a crash later. None: not a resnets model file."""
        if not raw or raw.get("format") != FORMAT:
            return None
        values: dict[str, Any] = {}
        for key, kind in {"options": dict, "class_names": list, "preprocessing": dict, "extra": dict}.items():
            if key not in raw:
                continue
            try:
                values[key] = json.loads(raw[key])
            except ValueError:
                raise WeightsError(f"{where}: its {key} metadata is not valid JSON (a damaged model file)") from None
            if values[key] is not None and not isinstance(values[key], kind):
                raise WeightsError(f"{where}: its {key} metadata should be a {kind.__name__}, not {type(values[key]).__name__}")
        arch = raw.get("architecture")
        if not isinstance(arch, str) or not arch:
            raise WeightsError(f"{where}: its metadata names no architecture")
        options = values.get("options") or {}
        if any(not isinstance(k, str) for k in options):
            raise WeightsError(f"{where}: its options metadata has keys that are not names")
        names = values.get("class_names")
        if names is not None and any(not isinstance(c, str) for c in names):
            raise WeightsError(f"{where}: its class names metadata holds something other than names")
        pre = None
        if values.get("preprocessing") is not None:
            try:
                pre = Preprocessing.from_dict(values["preprocessing"])
            except WeightsError as e:
                raise WeightsError(f"{where}: its preprocessing metadata is damaged ({e})") from None
        return cls(arch, dict(options), list(names) if names is not None else None, pre, where, values.get("extra") or {})

    @classmethod
    def from_plain(cls, d: dict, where: str) -> "ModelMeta | None":
        """From plain values (a training checkpoint's "resnets" record), with the same checks."""
        raw = {"format": FORMAT, "architecture": d.get("architecture")}
        raw.update({k: json.dumps(v, default=str) for k, v in d.items() if k != "architecture"})
        return cls.from_record(raw, where)


def meta_of(model) -> ModelMeta:
    """`model.meta`, or one clear error for a model not built by resnets.create_model / load."""
    from .errors import ResnetsError

    meta = model.meta if hasattr(model, "meta") else None  # a plain torch module has none
    if meta is None:
        raise ResnetsError(f"this {type(model).__name__} was not built by resnets.create_model or resnets.load, so it "
                           "records no architecture; build it with create_model")  # fmt: skip
    return meta


def preprocessing_for(model) -> Preprocessing:
    """The preprocessing to feed `model` with: what its weights record, else its architecture's default input
    size with the ImageNet statistics (said in the log)."""
    import logging

    meta = meta_of(model)
    pre, recorded = meta.eval_preprocessing()
    if not recorded:
        logging.getLogger("resnets").warning("%s records no preprocessing; using %s's default: %s",
                                             meta.source or "the model", meta.architecture, pre.describe())  # fmt: skip
    return pre
