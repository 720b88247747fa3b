"""What a model is and how to feed it, as one declared object: `ModelMeta` (architecture, options, class names,
eval preprocessing, where the weights came from), set on every model the factory builds as `model.meta`, saved
with it and read back checked. timm keeps `model.pretrained_cfg`; torchvision's weights give `.meta` and
`.transforms()`; this is both, with `Preprocessing` (data/preprocessing.py) for how the model is fed.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from typing import Any

from .choices import CROP_MODES  # noqa: F401  (resnets.meta.CROP_MODES, as before)
from .data.preprocessing import IMAGENET_MEAN, IMAGENET_STD, MAX_INPUT_SIZE, Preprocessing  # noqa: F401
from .errors import ResnetsError, WeightsError
from .models.registry import TASK_TRAITS, TaskTraits, get_entry, list_models

FORMAT = "resnets.model/1"  # the safetensors metadata "format" value of a self-describing resnets model file


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
            except (ValueError, RecursionError):  # not JSON, or nested past the parser (a hostile file)
                raise WeightsError(f"{where}: its {key} metadata is not valid JSON (a damaged model file)") from None
            if values[key] is not None and not isinstance(values[key], kind):
                raise WeightsError(
                    f"{where}: its {key} metadata should be a {kind.__name__}, not {type(values[key]).__name__}"
                )
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
        return cls(
            arch, dict(options), list(names) if names is not None else None, pre, where, values.get("extra") or {}
        )

    @classmethod
    def from_plain(cls, d: dict, where: str) -> "ModelMeta | None":
        """From plain values (a training checkpoint's "resnets" record), with the same checks."""
        raw = {"format": FORMAT, "architecture": d.get("architecture")}
        raw.update({k: json.dumps(v, default=str) for k, v in d.items() if k != "architecture"})
        return cls.from_record(raw, where)


def meta_of(model) -> ModelMeta:
    """`model.meta`, or one clear error for a model not built by resnets.create_model / load."""
    meta = model.meta if hasattr(model, "meta") else None  # a plain torch module has none
    if meta is None:
        raise ResnetsError(
            f"this {type(model).__name__} was not built by resnets.create_model or resnets.load, so it "
            "records no architecture; build it with create_model"
        )
    return meta


def traits_of(model) -> TaskTraits:
    """The task `model` is for (models.registry.TASK_TRAITS): its recorded architecture's, else, for a model built
    elsewhere (torchvision's own), its class: a task's `kinds`, else a classifier."""
    meta = getattr(model, "meta", None)
    if isinstance(meta, ModelMeta) and meta.architecture in list_models():
        return get_entry(meta.architecture).task
    kinds = {f"{c.__module__}.{c.__qualname__}" for c in type(model).__mro__}
    return next((t for t in TASK_TRAITS.values() if kinds & set(t.kinds)), TASK_TRAITS["classification"])


def preprocessing_for(model) -> Preprocessing:
    """The preprocessing to feed `model` with: what its weights record, else its architecture's default input
    size with the ImageNet statistics (said in the log)."""
    meta = meta_of(model)
    pre, recorded = meta.eval_preprocessing()
    if not recorded:
        logging.getLogger("resnets").warning(
            "%s records no preprocessing; using %s's default: %s",
            meta.source or "the model",
            meta.architecture,
            pre.describe(),
        )
    return pre
