"""Building models by name, with weights: `create_model` and `load`.

The model code never touches files; this is where weights are found, read, adapted to the requested head and
input channels, and checked key by key before they are loaded.
"""

from __future__ import annotations

import difflib
import logging
import os
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from .errors import OptionError, WeightsError
from .meta import ModelMeta, Preprocessing
from .models import get_entry, list_models
from .models.registry import check_options
from .models.resnet import Backbone, FeatureList, ResNetV2
from .onnx_file import read_onnx
from .weights import class_list, default_weights, fetch, get_weights, hub, is_registered, list_weights
from .weights.files import KERAS_SUFFIXES, PICKLE_SUFFIXES, read_weights, record_of

log = logging.getLogger("resnets")

_FIRST_CONVS = ("conv1.weight", "conv1.0.weight")  # the 7x7 stem conv, or the first conv of a deep stem


def _resolve(weights: str | os.PathLike, download: bool) -> tuple[dict[str, torch.Tensor], ModelMeta | None, str]:
    """(state_dict, what the weights record (None: nothing), description) for a registered weight name, a weights
    or model file, or a run directory (its model.safetensors)."""
    text = os.fspath(weights)
    if hub.is_hub(text):  # hf-hub:ORG/NAME[@REV], a folder in timm's layout
        folder = hub.fetch(text, download=download)
        cfg = hub.timm_config_in(folder)
        if cfg is None:
            raise WeightsError(f"{text} has no timm config.json naming its architecture")
        sd, meta = hub.read_timm_folder(folder, cfg, text)
        return sd, meta, text
    cfg = hub.timm_config_in(Path(text)) if os.path.isdir(text) else None
    if cfg is not None:  # a timm folder on disk (a Hub download, or ours)
        sd, meta = hub.read_timm_folder(Path(text), cfg, text)
        return sd, meta, text
    if is_registered(text):
        spec = get_weights(text)
        sd, _ = read_weights(fetch(text, download=download))  # a Hub repo's weight file for timm's
        meta = ModelMeta(spec.architecture, dict(spec.options), spec.class_names(), spec.preprocessing, spec.name)
        return sd, meta, repr(text)
    if os.path.isdir(text):
        if not os.path.isfile(os.path.join(text, "model.safetensors")):
            found = sorted(f for f in os.listdir(text) if f.endswith((".safetensors", ".pt", ".pth", ".onnx")))[:3]
            if os.path.isfile(os.path.join(text, "config.json")):
                hint = " (a run still training, or stopped: resume it with `resnets train --resume`)"
            else:
                hint = f" (it holds {', '.join(map(repr, found))}: give the file)" if found else ""
            raise WeightsError(f"{text} is a folder without a model.safetensors{hint}")
        text = os.path.join(text, "model.safetensors")
    if (
        not os.path.exists(text)
        and os.sep not in text
        and not text.endswith((".safetensors", *PICKLE_SUFFIXES, *KERAS_SUFFIXES))
    ):
        if "." in text:
            close = difflib.get_close_matches(text, list_weights(), n=3, cutoff=0.6)
            hint = f"did you mean {', '.join(close)}?" if close else "see `resnets list --weights`"
            raise WeightsError(f"unknown weights {text!r}: neither a registered name nor a file; {hint}")
        get_entry(text)  # an unknown name: the error suggests close model names
        named = list_weights(f"{text}.*")
        raise WeightsError(
            f"{text} is an architecture, not weights: give a weight name"
            f"{' (' + ', '.join(named) + ')' if named else ''}, a model file or a run folder"
        )
    sd, meta = read_weights(text)
    return sd, meta, text


def _adapt_first_conv(w: torch.Tensor, in_chans: int) -> torch.Tensor:
    """(out, 3, k, k) -> (out, in_chans, k, k). One channel: the sum over RGB, so a grey image replicated to RGB
    and the single-channel net give the same response. Others: RGB repeated and scaled by 3/in_chans (timm)."""
    if in_chans == 1:
        return w.sum(dim=1, keepdim=True)
    reps = -(-in_chans // w.shape[1])
    return w.repeat(1, reps, 1, 1)[:, :in_chans] * (w.shape[1] / in_chans)


def _fmt_keys(keys: list[str]) -> str:
    more = f" (+{len(keys) - 3} more)" if len(keys) > 3 else ""
    return ", ".join(keys[:3]) + more


# what weights are stored as: anything else (int8, float8, bool, complex) would be cast silently into a float model
WEIGHT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def check_dtypes(state_dict: dict[str, torch.Tensor], source: str) -> None:
    """Refuse tensors that are not float weights (a quantised, foreign or damaged file); integer step counters
    (BatchNorm's num_batches_tracked) aside."""
    for k, v in state_dict.items():
        if not isinstance(v, torch.Tensor):
            raise WeightsError(f"weights {source}: {k} is a {type(v).__name__}, not a tensor")
        if v.dtype not in WEIGHT_DTYPES and not (
            k.endswith("num_batches_tracked") and v.dtype in (torch.int64, torch.int32)
        ):
            raise WeightsError(
                f"weights {source}: {k} is {str(v.dtype).replace('torch.', '')}, not float32/16 or "
                "bfloat16 (a quantised or damaged file: resnets reads float weights)"
            )


def apply_state_dict(model: nn.Module, state_dict: dict[str, torch.Tensor], source: str = "weights") -> None:
    """Load `state_dict` into `model`: drop a classifier of another size, adapt the first conv to the model's
    input channels, and refuse (one clear error) missing or unexpected keys and shape mismatches."""
    sd = ResNetV2.checkpoint_filter(dict(state_dict))
    check_dtypes(sd, source)
    target = model.state_dict()
    name = model.meta.architecture if isinstance(model, Backbone) and model.meta else type(model).__name__
    if "fc.weight" in sd:
        if "fc.weight" not in target:
            sd = {k: v for k, v in sd.items() if not k.startswith("fc.")}
        elif (
            sd["fc.weight"].shape != target["fc.weight"].shape
            and sd["fc.weight"].shape[1:] == target["fc.weight"].shape[1:]
        ):
            log.warning(
                "classifier dropped: the weights have %d classes, the model %d; fc is newly initialised",
                sd["fc.weight"].shape[0],
                target["fc.weight"].shape[0],
            )
            sd = {k: v for k, v in sd.items() if not k.startswith("fc.")}
            sd.update({k: v for k, v in target.items() if k.startswith("fc.")})
    for key in _FIRST_CONVS:
        if key in sd and key in target:
            src, dst = sd[key], target[key]
            if (
                src.ndim == 4
                and src.shape[1] != dst.shape[1]
                and src.shape[0] == dst.shape[0]
                and src.shape[2:] == dst.shape[2:]
            ):
                log.info("%s adapted from %d to %d input channels", key, src.shape[1], dst.shape[1])
                sd[key] = _adapt_first_conv(src, dst.shape[1])
    skip = "num_batches_tracked"
    missing = [k for k in target if k not in sd and not k.endswith(skip)]
    unexpected = [k for k in sd if k not in target and not k.endswith(skip)]
    shapes = [
        f"{k} {tuple(sd[k].shape)} vs {tuple(v.shape)}" for k, v in target.items() if k in sd and sd[k].shape != v.shape
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing keys {_fmt_keys(missing)}")
        if unexpected:
            parts.append(f"unexpected keys {_fmt_keys(unexpected)}")
        if shapes:
            parts.append(f"shape mismatch {_fmt_keys(shapes)}")
        raise WeightsError(f"weights {source} do not fit {name}: " + "; ".join(parts))
    model.load_state_dict({k: v for k, v in sd.items() if k in target}, strict=False)


def _build(name: str, options: dict[str, Any], sd: dict | None, meta: ModelMeta | None, source: str) -> nn.Module:
    entry = get_entry(name)
    check_options(entry, options)
    if meta is not None and meta.architecture != name:
        raise WeightsError(f"weights {source} are for {meta.architecture}, not {name}")
    opts = {k: v for k, v in (meta.options if meta else {}).items() if k in entry.options}
    try:  # what a file records is checked as strictly as what a user types
        check_options(entry, opts)
    except OptionError as e:
        raise WeightsError(f"{source}: its record is damaged ({e})") from None
    if sd is not None:
        sd = ResNetV2.checkpoint_filter(sd)  # timm's resnetv2 keys as ours, once
        if meta is not None:
            _check_record(sd, meta, options, source)
    opts.update(options)  # explicit options win over those recorded with the weights
    if sd is not None:
        fc = sd.get("fc.weight")
        if "num_classes" not in opts and fc is not None and fc.ndim == 2:
            opts["num_classes"] = int(fc.shape[0])
        first = next((sd[k] for k in _FIRST_CONVS if k in sd), None)
        if "in_chans" not in opts and first is not None and first.ndim == 4:
            opts["in_chans"] = int(first.shape[1])
        check_options(entry, opts)
    model = entry.fn(**opts)
    classes = meta.class_names if meta else None
    pre = meta.preprocessing if meta else None
    if sd is None:  # built by name: fed as its architecture is by default (the README's promise)
        pre = Preprocessing.default(entry.input_size, opts.get("in_chans", 3))
    task = entry.task
    if task.dense:  # a detector resizes and normalises its images itself (min_size, max_size); a segmenter: later
        pre = None  # and no classifier head: num_classes is the heads'
    num_classes = opts.get("num_classes", task.default_classes) if task.dense else model.num_classes
    if classes is None and sd is not None and num_classes == 1000:  # a 1000-class file (torchvision's, timm's)
        classes = class_list("imagenet")  # that records no names: ImageNet-1k's, not the indices
    model.meta = ModelMeta(
        name,
        opts,
        class_names=list(classes) if classes and len(classes) == num_classes else None,
        preprocessing=pre.for_channels(opts.get("in_chans", 3)) if pre else None,  # grey images, RGB statistics
        source=meta.source if meta and meta.source else (source or None),
        extra=dict(meta.extra) if meta else {},
    )
    if sd is not None:
        apply_state_dict(model, sd, source)
    return model


def _check_record(sd: dict, meta: ModelMeta, explicit: dict[str, Any], source: str) -> None:
    """A file whose record disagrees with its own tensors is damaged: refused, rather than a trained classifier
    dropped for a fresh one because the record says another class count. (What the user asks for explicitly,
    a new head or input channels, is another matter: that adapts the weights.)"""
    fc, first = sd.get("fc.weight"), next((sd[k] for k in _FIRST_CONVS if k in sd), None)
    recorded = meta.options
    if "num_classes" in recorded and "num_classes" not in explicit and fc is not None and fc.ndim == 2:
        if recorded["num_classes"] != fc.shape[0]:
            raise WeightsError(
                f"{source} is damaged: its record says {recorded['num_classes']} classes, its classifier "
                f"has {fc.shape[0]}"
            )
    if "in_chans" in recorded and "in_chans" not in explicit and first is not None and first.ndim == 4:
        if recorded["in_chans"] != first.shape[1]:
            raise WeightsError(
                f"{source} is damaged: its record says {recorded['in_chans']} input channels, its first "
                f"conv takes {first.shape[1]}"
            )
    n = recorded.get("num_classes")  # (a registry's record names classes, not a count: its table is ours)
    if meta.class_names is not None and n is not None and "num_classes" not in explicit and len(meta.class_names) != n:
        raise WeightsError(f"{source} is damaged: it names {len(meta.class_names)} classes for a classifier of {n}")


def create_model(
    name: str,
    *,
    weights: str | os.PathLike | None = None,
    pretrained: bool = False,
    download: bool = True,
    features_only: bool = False,
    out_indices: int | Sequence[int] | None = None,
    **options: Any,
) -> nn.Module:
    """Build a registered model, optionally with weights.

    name: a registered architecture ("resnet50"), or "<architecture>.<tag>" of registered weights
        ("resnet50.tv2_in1k"), which is the same as weights="resnet50.tv2_in1k", or a Hugging Face Hub repo in
        timm's layout ("hf-hub:timm/resnet50.a1_in1k", optionally "@REVISION").
    weights: a registered weight name (fetched into the cache, hash-checked, when missing and `download`),
        or a local .safetensors / .pth / .pt file (torchvision, timm or resnets layouts).
    pretrained: the architecture's default registered weights (its best ImageNet top-1), as timm and
        torch.hub users write it. Without weights the model is randomly initialised and its preprocessing is
        the architecture's default (`model.meta.preprocessing`).
    options: num_classes, in_chans, shortcut, stride_in_1x1, zero_init_residual, drop_path_rate, norm, as the
        architecture takes them. Unset num_classes/in_chans follow the weights; set ones adapt them.
    features_only: a `FeatureList` that returns the stage maps (`out_indices` picks stages; negative counts from
        the end), as timm's `features_only` does: the model's `forward_intermediates` as a module.
    """
    if out_indices is not None and not features_only:
        raise OptionError("out_indices picks the stage maps of features_only=True; pass both")
    if pretrained:
        if weights is not None or hub.is_hub(name) or "." in name:
            raise OptionError(
                "pretrained=True picks the architecture's default weights; it goes with a plain "
                "architecture name and no weights="
            )
        get_entry(name)
        weights = default_weights(name)
        if weights is None:
            raise OptionError(f"{name} has no registered weights (see `resnets list --weights`); pass weights= a file")
    if hub.is_hub(name):  # the architecture comes with the weights
        model = create_from_weights(name, download=download, **options)
    else:
        model = _create(name, weights, download, options)
    return FeatureList(model, out_indices) if features_only else model


def _create(name: str, weights: str | os.PathLike | None, download: bool, options: dict[str, Any]) -> nn.Module:
    if weights is None and "." in name and is_registered(name):
        name, weights = name.split(".", 1)[0], name
    get_entry(name)  # unknown names fail before any file is read
    if weights is None:
        return _build(name, options, None, None, "")
    sd, meta, source = _resolve(weights, download)
    return _build(name, options, sd, meta, source)


def infer_architecture(state_dict: dict[str, torch.Tensor]) -> str:
    """The registered architecture whose parameter names and shapes (head and input channels aside) are those of
    `state_dict`, for weight files that do not record it (torchvision and timm state dicts)."""
    sd = {
        k: tuple(v.shape)
        for k, v in ResNetV2.checkpoint_filter(dict(state_dict)).items()
        if not k.startswith("fc.") and not k.endswith("num_batches_tracked") and k not in _FIRST_CONVS
    }
    for name in list_models():
        with torch.device("meta"):
            model = get_entry(name).fn()
        target = {
            k: tuple(v.shape)
            for k, v in model.state_dict().items()
            if not k.startswith("fc.") and not k.endswith("num_batches_tracked") and k not in _FIRST_CONVS
        }
        if target == sd:
            return name
    raise WeightsError("cannot tell which architecture these weights are for; name it with --model")


def create_from_weights(
    weights: str | os.PathLike, name: str | None = None, *, download: bool = True, **options: Any
) -> nn.Module:
    """Build the model that `weights` are for: `name` when given (and checked against what the weights record),
    otherwise the architecture recorded in the file or registry, or inferred from the parameter shapes."""
    if name is not None:
        get_entry(name)
    sd, meta, source = _resolve(weights, download)
    if name is None:
        name = meta.architecture if meta else infer_architecture(sd)
    return _build(name, options, sd, meta, source)


def architecture_of(weights: str | os.PathLike) -> str:
    """The architecture `weights` are for: said by the registry, or recorded in a model file's header (its tensors
    not read: `--model ""` reads the weights once, to build the model), or in another file's record, or inferred
    from the shapes."""
    text = os.fspath(weights)
    if is_registered(text):
        return get_weights(text).architecture
    if os.path.isdir(text) and hub.timm_config_in(Path(text)) is None:
        text = os.path.join(text, "model.safetensors")  # a run folder's model file
    meta = record_of(text) if text.lower().endswith(".safetensors") and os.path.isfile(text) else None
    if meta is not None:
        return meta.architecture
    sd, meta, _ = _resolve(weights, True)
    return meta.architecture if meta else infer_architecture(sd)


def load(weights: str | os.PathLike, **options: Any) -> nn.Module:
    """The model `weights` describe, in eval mode: a self-describing model file (see `resnets.save`), a run
    directory (its model.safetensors), a registered weight name ("resnet50.tv2_in1k"), or a weights file of
    torchvision or timm (its architecture recognised from the parameter shapes), or an ONNX file `resnets export`
    wrote (run by ONNX Runtime: class scores only). What `--weights` takes."""
    if os.fspath(weights).lower().endswith(".onnx"):
        if options:
            raise OptionError("an ONNX file is a finished model: it takes no options")
        return read_onnx(weights).eval()
    return create_from_weights(weights, **options).eval()
