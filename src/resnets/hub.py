"""Weights from the Hugging Face Hub and from timm's folders: `hf-hub:ORG/NAME[@REVISION]` wherever weights are
named, fetched with huggingface_hub into its own cache (offline mode honoured: a cached repo loads with no
network), and timm's `config.json` (architecture, classes, `pretrained_cfg`: input size, interpolation,
crop_pct, mean, std, label names) read as the model's metadata, so a timm model is fed as timm feeds it.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
from pathlib import Path

from .errors import WeightsError
from .meta import IMAGENET_MEAN, IMAGENET_STD, ModelMeta, Preprocessing

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
    """"hf-hub:ORG/NAME@REV" -> ("ORG/NAME", "REV")."""
    repo, _, revision = text[len(PREFIX):].partition("@")
    if repo.count("/") != 1 or not all(repo.split("/")):
        raise WeightsError(f"{text!r}: a Hub name is hf-hub:ORG/NAME[@REVISION]")
    return repo, revision or None


def _offline() -> bool:
    """Ours (RESNETS_OFFLINE) or huggingface_hub's own switch."""
    from .home import offline

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
    from .choices import CROP_MODES, INTERPOLATIONS
    from .data.preprocessing import MAX_INPUT_SIZE
    from .models.registry import MAX_CLASSES

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
        if not isinstance(v, list) or len(v) != channels or not all(
                not isinstance(x, bool) and isinstance(x, (int, float)) and math.isfinite(x) and abs(x) <= 1e4 for x in v):  # fmt: skip
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
    meta = ModelMeta(arch, options,
                     class_names=list(names) if names else None, preprocessing=timm_preprocessing(pre), source=source)  # fmt: skip
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

    from .safe_io import atomic_path, check_output_folder

    config = timm_config(model)
    out = check_output_folder(out, force=force, what="Hub folder")

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


# how long a push waits for the Hub to connect, or to answer between two pieces of data (huggingface_hub's own
# client waits forever: an endpoint that accepts and never answers would hang the command)
PUSH_TIMEOUT_S = 60.0


def push(folder: str | os.PathLike, repo: str, *, private: bool = False, message: str | None = None,
         timeout_s: float = PUSH_TIMEOUT_S) -> str:  # fmt: skip
    """Upload a folder written by `write_folder` to the Hub repo `repo` (ORG/NAME; created if missing) with the
    token of `hf auth login` or $HF_TOKEN ($HF_ENDPOINT: another Hub). Returns the commit's URL. Everything that
    can be checked here is checked before the network is touched; every network call gives up after
    `timeout_s` without an answer, saying which."""
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
    api = HfApi(token=token, endpoint=os.environ.get("HF_ENDPOINT") or None)  # read now, not at import
    step = "creating the repo"
    try:
        with _hub_timeout(timeout_s):
            api.create_repo(repo, private=private, exist_ok=True)
            step = "uploading"
            info = api.upload_folder(repo_id=repo, folder_path=str(folder),
                                     commit_message=message or f"{cfg['architecture']} written by resnets")  # fmt: skip
    except HfHubHTTPError as e:
        raise WeightsError(f"pushing to {repo} failed: {str(e).splitlines()[0]}") from None
    except Exception as e:  # no network, a refused connection: the HTTP client's own error types (httpx's)
        if "timeout" in type(e).__name__.lower():
            raise WeightsError(f"the Hub did not answer within {timeout_s:g} s while {step} ({repo}); try again "
                               "later") from None  # fmt: skip
        why = (str(e).splitlines() or [""])[0][:200] or type(e).__name__
        raise WeightsError(f"cannot reach the Hugging Face Hub to push to {repo} ({type(e).__name__}: {why})") from None
    return str(getattr(info, "commit_url", None) or f"https://huggingface.co/{repo}")


@contextlib.contextmanager
def _hub_timeout(seconds: float):
    """huggingface_hub's HTTP client with a timeout (connect, and each read and write), for the calls inside;
    its own client is given back after."""
    try:
        from huggingface_hub.utils import _http
    except ImportError:  # an older huggingface_hub (requests-based): its own timeouts
        yield
        return
    before = getattr(_http, "_GLOBAL_CLIENT_FACTORY", _http.default_client_factory)  # the user's own, if set

    def with_timeout():
        client = before()
        client.timeout = seconds
        return client

    _http.set_client_factory(with_timeout)
    try:
        yield
    finally:
        _http.set_client_factory(before)
