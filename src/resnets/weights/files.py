"""Weights and checkpoints, read and written: weights in any published layout (safetensors, pickles read with
`weights_only=True` after a scan for pickled code, Keras files through keras.py), self-describing model files
(the weights and their `ModelMeta`, so the file alone rebuilds its model: `resnets.load`), and training checkpoints.
Writing itself (atomic, checked outputs) is safe_io's.
"""

from __future__ import annotations

import os
import pickletools
import warnings
import zipfile
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from safetensors import safe_open

from ..errors import ResnetsError, WeightsError
from ..meta import ModelMeta, Preprocessing, meta_of
from ..safe_io import RUN_FILES, atomic_path, check_output, check_output_folder, is_run_folder  # noqa: F401  (as before)
from .keras import read_keras

PICKLE_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".tar")
KERAS_SUFFIXES = (".keras", ".h5", ".hdf5")  # keras.applications' ResNets (weights/keras.py)
# containers that training scripts wrap a state_dict in (torchvision references, timm, Lightning, ours)
_WRAPPERS = ("model_ema", "state_dict_ema", "state_dict", "model", "model_state", "model_state_dict", "module")


def strip_prefixes(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove DataParallel/DDP (`module.`) and torch.compile (`_orig_mod.`) prefixes."""
    out = {}
    for k, v in state_dict.items():
        while k.startswith(("module.", "_orig_mod.")):
            k = k.split(".", 1)[1]
        out[k] = v
    return out


def _is_state_dict(obj: Any) -> bool:
    return (
        isinstance(obj, dict)
        and bool(obj)
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    )


def _unwrap(obj: Any, path: Path) -> tuple[dict[str, torch.Tensor], dict | None]:
    if _is_state_dict(obj):
        return obj, None
    if isinstance(obj, dict):
        meta = obj.get("resnets") if isinstance(obj.get("resnets"), dict) else None
        for key in _WRAPPERS:
            if _is_state_dict(obj.get(key)):
                return obj[key], meta
    raise WeightsError(f"{path} holds no state_dict (a mapping of parameter names to tensors)")


def read_weights(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], ModelMeta | None]:
    """Read a weights file: (state_dict with prefixes stripped, its checked ModelMeta, or None for files not
    written by resnets)."""
    p = Path(path)
    if not p.exists():
        raise WeightsError(f"weights file not found: {p}")
    if not p.is_file():
        raise WeightsError(f"not a weights file: {p}")
    suffix = p.suffix.lower()
    if suffix == ".safetensors":
        try:
            with safe_open(str(p), framework="pt", device="cpu") as f:
                raw = f.metadata()
                sd = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as e:  # safetensors raises its own error types for truncated or foreign files
            raise WeightsError(f"cannot read {p}: not a valid safetensors file ({_first_line(e)})") from None
        if not sd:
            raise WeightsError(f"{p} holds no tensors")
        meta = ModelMeta.from_record(raw, str(p))
    elif suffix in PICKLE_SUFFIXES:
        try:
            with warnings.catch_warnings():  # "Detected pickle protocol 4": the refusal below says what matters
                warnings.simplefilter("ignore")
                obj = torch.load(p, map_location="cpu", weights_only=True)
        except Exception:
            raise _unreadable(p, "PyTorch checkpoint") from None
        sd, record = _unwrap(obj, p)
        meta = ModelMeta.from_plain(record, str(p)) if record is not None else None  # a training checkpoint's
    elif suffix in KERAS_SUFFIXES:  # keras.applications.ResNet50/101/152, converted as it is read
        return read_keras(p)
    else:
        raise WeightsError(
            f"unsupported weights file type {suffix or '(none)'!r} for {p}; use .safetensors, .pth "
            "or a Keras .keras / .h5 file"
        )
    return strip_prefixes(sd), meta


def record_of(path: str | os.PathLike) -> ModelMeta | None:
    """The record a safetensors model file carries, read from its header alone (its tensors are not read); None
    for a file with none or one that cannot be read (read_weights says why)."""
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            raw = f.metadata()
        return ModelMeta.from_record(raw, str(path)) if raw else None
    except Exception:  # safetensors' own error types for foreign files; a record that does not check
        return None


def _first_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0][:200]


def save(
    model: torch.nn.Module,
    path: str | os.PathLike,
    *,
    class_names: list[str] | None = None,
    preprocessing: dict | Preprocessing | None = None,
    extra: dict | None = None,
) -> Path:
    """Save a model made by `resnets.create_model` as a self-describing .safetensors file (atomically): its
    weights and its `model.meta`. class_names, preprocessing and extra replace the model's own in the file."""
    meta = meta_of(model)
    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        raise ResnetsError(f"model files are .safetensors; got {path.name}")
    if class_names is not None:
        meta = meta.replace(class_names=list(class_names))
    if preprocessing is not None:
        pre = preprocessing if isinstance(preprocessing, Preprocessing) else Preprocessing.from_dict(preprocessing)
        meta = meta.replace(preprocessing=pre)
    if extra:
        meta = meta.replace(extra=dict(extra))
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        safetensors.torch.save_file(tensors, str(tmp), metadata=meta.to_record())
    return path


def save_checkpoint(state: dict, path: str | os.PathLike) -> Path:
    """torch.save of tensors and plain containers only (loadable with weights_only=True), atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return path


# what a torch.save file may reference: the functions that rebuild tensors and storages
_TORCH_REFS = ("torch.", "collections.OrderedDict", "builtins.set", "builtins.frozenset", "builtins.slice")


def pickled_code(path: Path) -> list[str]:
    """The functions and classes a pickle (a raw one, or the data.pkl of a torch.save zip) would call on loading,
    other than torch's own tensor rebuilders: read from its opcodes with pickletools, which runs nothing."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                name = next((n for n in z.namelist() if n.endswith("data.pkl")), None)
                data = z.read(name) if name else b""
        else:
            data = path.read_bytes()
    except (OSError, zipfile.BadZipFile, KeyError):
        return []
    refs, strings = [], []
    try:
        for op, arg, _ in pickletools.genops(data):
            if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "BINUNICODE8"):
                strings.append(arg)
            elif op.name in ("GLOBAL", "INST"):
                refs.append(arg.replace(" ", "."))
            elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                refs.append(f"{strings[-2]}.{strings[-1]}")
    except Exception:  # a truncated or foreign stream: what was read so far
        pass
    return sorted({r for r in refs if not r.startswith(_TORCH_REFS)})


def _unreadable(path: Path, what: str) -> ResnetsError:
    """Why a pickle-based file could not be loaded with weights_only: code it would run, or damage."""
    code = pickled_code(path)
    if code:
        return WeightsError(
            f"refusing to load {path}: it holds pickled code ({', '.join(code[:3])}), which would run on "
            "loading; only files of tensors and plain values are accepted (convert it to .safetensors)"
        )
    return WeightsError(f"cannot read {path}: not a valid {what} (corrupt or truncated)")


def load_checkpoint(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ResnetsError(f"checkpoint not found: {path}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        raise _unreadable(path, "resnets checkpoint") from None
    if not isinstance(state, dict) or "model" not in state:
        raise ResnetsError(f"{path} is not a resnets training checkpoint")
    return state
