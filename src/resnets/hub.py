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

from .errors import WeightsError
from .meta import IMAGENET_MEAN, IMAGENET_STD, ModelMeta, Preprocessing

PREFIX = "hf-hub:"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")


def is_hub(text: str) -> bool:
    return text.startswith(PREFIX)


def parse(text: str) -> tuple[str, str | None]:
    """"hf-hub:ORG/NAME@REV" -> ("ORG/NAME", "REV")."""
    repo, _, revision = text[len(PREFIX):].partition("@")
    if repo.count("/") != 1 or not all(repo.split("/")):
        raise WeightsError(f"{text!r}: a Hub name is hf-hub:ORG/NAME[@REVISION]")
    return repo, revision or None


def _offline() -> bool:
    """Ours (RESNETS_OFFLINE) or huggingface_hub's own switch."""
    from .weights import offline

    return offline() or os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")


def fetch(text: str, *, download: bool = True) -> Path:
    """The local folder of a Hub repo (config.json and its weights), downloaded into huggingface_hub's cache
    when online (and `download`) and not there yet."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    repo, revision = parse(text)
    try:
        return Path(snapshot_download(repo, revision=revision, local_files_only=_offline() or not download,
                                      cache_dir=os.environ.get("HF_HUB_CACHE") or None,  # read now, not at import
                                      allow_patterns=["config.json", *WEIGHT_FILES]))  # fmt: skip
    except LocalEntryNotFoundError:
        raise WeightsError(f"{text} is not in the Hugging Face cache and downloads are off; fetch it once online "
                           f"(`hf download {repo}`), or unset HF_HUB_OFFLINE / RESNETS_OFFLINE") from None
    except (RepositoryNotFoundError, RevisionNotFoundError, HFValidationError) as e:
        raise WeightsError(f"{text}: {str(e).splitlines()[0]}") from None
    except OSError as e:  # no network
        raise WeightsError(f"cannot download {text} ({e}); check the network, or use a cached copy") from None


def timm_config_in(folder: Path) -> dict | None:
    """The config.json of a folder in timm's layout (one naming an `architecture`, not a resnets run's config),
    or None."""
    try:
        cfg = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return cfg if isinstance(cfg, dict) and isinstance(cfg.get("architecture"), str) and "model" not in cfg else None


def preprocessing(pretrained_cfg: dict) -> Preprocessing:
    """timm's eval transform as ours: the shorter side (crop_mode "squash": both sides) to floor(size / crop_pct),
    a centre crop of `size`."""
    size = int((pretrained_cfg.get("test_input_size") or pretrained_cfg.get("input_size") or (3, 224, 224))[-1])
    crop_pct = float(pretrained_cfg.get("test_crop_pct") or pretrained_cfg.get("crop_pct") or 0.875)
    return Preprocessing.from_dict({
        "resize": math.floor(size / crop_pct), "crop": size,
        "interpolation": pretrained_cfg.get("interpolation", "bilinear"),
        "crop_mode": pretrained_cfg.get("crop_mode") or "center",
        "mean": list(pretrained_cfg.get("mean", IMAGENET_MEAN)),
        "std": list(pretrained_cfg.get("std", IMAGENET_STD)),
    })  # fmt: skip


def read_timm_folder(folder: Path, cfg: dict, source: str) -> tuple[dict, ModelMeta]:
    """(state_dict, metadata) of a folder in timm's layout (what timm's push_to_hf_hub writes), `cfg` its
    config.json."""
    from .artifacts import read_weights
    from .models import list_models

    weights = next((folder / f for f in WEIGHT_FILES if (folder / f).is_file()), None)
    if weights is None:
        raise WeightsError(f"{source} holds no weights ({', '.join(WEIGHT_FILES)})")
    arch = cfg["architecture"]
    if arch not in list_models():
        raise WeightsError(f"{source} is a timm {arch}, which resnets does not build (see `resnets list`)")
    sd, _ = read_weights(weights)
    pre = cfg.get("pretrained_cfg") or {}
    names = cfg.get("label_names") or pre.get("label_names")
    num_classes = cfg.get("num_classes", pre.get("num_classes"))
    meta = ModelMeta(arch, {"num_classes": int(num_classes)} if num_classes else {},
                     class_names=list(names) if names else None, preprocessing=preprocessing(pre), source=source)  # fmt: skip
    return sd, meta


# ---- publishing: a folder the Hub and timm both take

def timm_name(model) -> str:
    """The timm architecture a model of ours is (the same parameter names), or a WeightsError saying why not."""
    from .models import get_entry

    arch = model.meta.architecture
    if get_entry(arch).family != "imagenet" or arch.startswith(("resnetv2", "plain")):
        raise WeightsError(f"timm has no {arch}; a Hub folder in timm's layout is written for the ImageNet ResNets, "
                           "ResNeXts, Wide ResNets and ResNet-Ds")  # fmt: skip
    return arch


def timm_config(model) -> dict:
    """timm's config.json for `model`: its architecture, head, label names and eval transform (pretrained_cfg).
    crop_pct is set so that timm's floor(crop / crop_pct) gives exactly our resize."""
    from torch import nn

    from .meta import preprocessing_for

    pre = preprocessing_for(model)
    names = model.meta.names(model.num_classes)
    return {
        "architecture": timm_name(model), "num_classes": model.num_classes, "num_features": model.num_features,
        "global_pool": "avg", "label_names": names,
        "pretrained_cfg": {
            "input_size": [model.meta.in_chans, pre.crop, pre.crop], "fixed_input_size": False,
            "interpolation": pre.interpolation, "crop_pct": pre.crop / (pre.resize + 0.01), "crop_mode": pre.crop_mode,
            "mean": list(pre.mean), "std": list(pre.std), "num_classes": model.num_classes,
            "first_conv": "conv1.0" if isinstance(model.conv1, nn.Sequential) else "conv1", "classifier": "fc",
        },
    }  # fmt: skip


_RECIPE_KEYS = ("recipe", "dataset", "epochs", "batch_size", "optimizer", "lr", "weight_decay", "schedule", "augment",
                "label_smoothing", "mixup", "cutmix", "amp", "seed")  # fmt: skip


def model_card(model, config: dict, run: dict | None = None, train_config: dict | None = None,
               curves: bool = False) -> str:  # fmt: skip
    """README.md for the Hub: what the model is, what it was trained on and how (`train_config`: the run's
    config.json), how well it did (`run`: its eval.json), its training curves (`curves`: curves.png is beside
    it), how to use it, and its limits."""
    meta, pre = model.meta, config["pretrained_cfg"]
    extra = dict(meta.extra)
    if run:
        extra.update({k: run[k] for k in ("top1", "top5", "n", "dataset") if k in run})
    if train_config and "dataset" not in extra and train_config.get("dataset"):
        extra["dataset"] = train_config["dataset"]
    top1 = extra.get("top1", extra.get("val_top1"))
    lines = [
        "---", "library_name: timm", "tags:", "- image-classification", "- timm", "- resnets", "---", "",
        f"# {config['architecture']}: {len(config['label_names'])} classes", "",
        f"A {config['architecture']} (He et al., \"Deep Residual Learning for Image Recognition\", 2015) written by "
        "[resnets](https://github.com/) in timm's layout: `model.safetensors` and `config.json`.", "",
        "## Training and results", "",
        f"- Data: {extra.get('dataset', 'not recorded')}",
        f"- Validation top-1: {top1:.2f}%" if isinstance(top1, (int, float)) else "- Validation top-1: not recorded",
    ]  # fmt: skip
    if isinstance(extra.get("top5"), (int, float)) and len(config["label_names"]) > 5:
        lines.append(f"- Validation top-5: {extra['top5']:.2f}%")
    if extra.get("n"):
        lines.append(f"- Validation images: {extra['n']}")
    lines.append(f"- Classes: {', '.join(config['label_names'][:20])}{', ...' if len(config['label_names']) > 20 else ''}")
    if train_config:
        lines += ["", "Training recipe (the run's config.json):", ""]
        lines += [f"- {k}: {train_config[k]}" for k in _RECIPE_KEYS if train_config.get(k) not in (None, "")]
    if curves:
        lines += ["", "![Training loss and accuracy by epoch](curves.png)"]
    lines += [
        "",
        "## Preprocessing", "",
        f"Resize {'both sides' if pre['crop_mode'] == 'squash' else 'the shorter side'} to "
        f"{round(pre['input_size'][-1] / pre['crop_pct'])} ({pre['interpolation']}), "
        f"centre-crop {pre['input_size'][-1]}, scale to [0, 1], normalise with mean {pre['mean']} and std {pre['std']}.",
        "", "## Use", "", "```python", "import timm", "", 'model = timm.create_model("hf-hub:ORG/NAME", pretrained=True)',
        "", "import resnets", "", 'model = resnets.create_model("hf-hub:ORG/NAME")  # the same weights and preprocessing',
        "```", "", "## Intended use and limits", "",
        "Classifying images like those it was trained on, into the classes above. It knows no other classes and gives "
        "one of them for any image; accuracy on other kinds of images, sizes or domains is not measured here.", "",
    ]  # fmt: skip
    return "\n".join(lines)


def write_folder(model, out: str | os.PathLike, *, run_dir: str | os.PathLike | None = None, force: bool = False) -> Path:
    """`out`/: model.safetensors (timm's parameter names), config.json (timm's), README.md (a model card) and,
    from a training run (`run_dir`: its eval.json, config.json and curves.png), curves.png; for `resnets push`,
    `huggingface_hub.upload_folder` or timm's `local-dir:` route."""
    import shutil

    from safetensors.torch import save_file

    from .artifacts import atomic_path

    out = Path(out)
    config = timm_config(model)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not force)):
        raise WeightsError(f"{out} exists; give a new folder for the Hub files, or --force to replace them")

    def read(name: str) -> dict | None:
        try:
            value = json.loads((Path(run_dir) / name).read_text()) if run_dir else None
        except (OSError, ValueError):
            return None
        return value if isinstance(value, dict) else None

    run, train_config = read("eval.json"), read("config.json")
    curves = Path(run_dir) / "curves.png" if run_dir else None
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(out / "model.safetensors") as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt"})
    with atomic_path(out / "config.json") as tmp:
        tmp.write_text(json.dumps(config, indent=2))
    has_curves = curves is not None and curves.is_file()
    if has_curves:
        with atomic_path(out / "curves.png") as tmp:
            shutil.copyfile(curves, tmp)
    with atomic_path(out / "README.md") as tmp:
        tmp.write_text(model_card(model, config, run, train_config, has_curves))
    return out


def push(folder: str | os.PathLike, repo: str, *, private: bool = False, message: str | None = None) -> str:
    """Upload a folder written by `write_folder` to the Hub repo `repo` (ORG/NAME; created if missing) with the
    token of `hf auth login` or $HF_TOKEN. Returns the commit's URL. Everything that can be checked here is
    checked before the network is touched."""
    folder = Path(folder)
    cfg = timm_config_in(folder) if folder.is_dir() else None
    if cfg is None or not any((folder / f).is_file() for f in WEIGHT_FILES):
        raise WeightsError(f"{folder} is not a Hub folder (config.json in timm's layout and model.safetensors); "
                           "write one with `resnets export --weights W --format hub --out DIR`")  # fmt: skip
    parse(PREFIX + repo)  # ORG/NAME
    if _offline():
        raise WeightsError("the Hub is off (HF_HUB_OFFLINE or RESNETS_OFFLINE is set); unset it to push")
    from huggingface_hub import HfApi, get_token
    from huggingface_hub.errors import HfHubHTTPError

    token = get_token()  # $HF_TOKEN, else the one `hf auth login` stored
    if not token:
        raise WeightsError("pushing needs a Hugging Face token with write access: `hf auth login`, or set HF_TOKEN")
    api = HfApi(token=token)
    try:
        api.create_repo(repo, private=private, exist_ok=True)
        info = api.upload_folder(repo_id=repo, folder_path=str(folder),
                                 commit_message=message or f"{cfg['architecture']} written by resnets")  # fmt: skip
    except HfHubHTTPError as e:
        raise WeightsError(f"pushing to {repo} failed: {str(e).splitlines()[0]}") from None
    except Exception as e:  # no network, a refused connection: the HTTP client's own error types (httpx's)
        why = (str(e).splitlines() or [""])[0][:200] or type(e).__name__
        raise WeightsError(f"cannot reach the Hugging Face Hub to push to {repo} ({type(e).__name__}: {why})") from None
    return str(getattr(info, "commit_url", None) or f"https://huggingface.co/{repo}")
