"""Publishing: a folder the Hugging Face Hub and timm both take (timm's parameter names and config.json, a model
card made from the run), and `resnets push` of it, every network call with a timeout."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path

from safetensors.torch import save_file
from torch import nn

from ..errors import WeightsError
from ..meta import preprocessing_for
from ..models import get_entry
from ..safe_io import atomic_path, check_output_folder
from .hub import PREFIX, WEIGHT_FILES, downloads_off, parse, timm_config_in


def timm_name(model) -> str:
    """The timm architecture a model of ours is (the same parameter names), or a WeightsError saying why not."""
    arch = model.meta.architecture
    if get_entry(arch).family != "imagenet" or arch.startswith(("resnetv2", "plain")):
        raise WeightsError(
            f"timm has no {arch}; a Hub folder in timm's layout is written for the ImageNet ResNets, "
            "ResNeXts, Wide ResNets and ResNet-Ds"
        )
    return arch


def timm_config(model) -> dict:
    """timm's config.json for `model`: its architecture, head, label names and eval transform (pretrained_cfg).
    crop_pct is set so that timm's floor(crop / crop_pct) gives exactly our resize."""
    pre = preprocessing_for(model)
    names = model.meta.names(model.num_classes)
    return {
        "architecture": timm_name(model),
        "num_classes": model.num_classes,
        "num_features": model.num_features,
        "global_pool": "avg",
        "label_names": names,
        "pretrained_cfg": {
            "input_size": [model.meta.in_chans, pre.crop, pre.crop],
            "fixed_input_size": False,
            "interpolation": pre.interpolation,
            "crop_pct": pre.crop / (pre.resize + 0.01),
            "crop_mode": pre.crop_mode,
            "mean": list(pre.mean),
            "std": list(pre.std),
            "num_classes": model.num_classes,
            "first_conv": "conv1.0" if isinstance(model.conv1, nn.Sequential) else "conv1",
            "classifier": "fc",
        },
    }


_RECIPE_KEYS = (
    "recipe",
    "dataset",
    "epochs",
    "batch_size",
    "optimizer",
    "lr",
    "weight_decay",
    "schedule",
    "augment",
    "label_smoothing",
    "mixup",
    "cutmix",
    "amp",
    "seed",
)


def model_card(
    model, config: dict, run: dict | None = None, train_config: dict | None = None, curves: bool = False
) -> str:
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
        "---",
        "library_name: timm",
        "tags:",
        "- image-classification",
        "- timm",
        "- resnets",
        "---",
        "",
        f"# {config['architecture']}: {len(config['label_names'])} classes",
        "",
        f'A {config["architecture"]} (He et al., "Deep Residual Learning for Image Recognition", 2015) written by '
        "[resnets](https://github.com/) in timm's layout: `model.safetensors` and `config.json`.",
        "",
        "## Training and results",
        "",
        f"- Data: {extra.get('dataset', 'not recorded')}",
        f"- Validation top-1: {top1:.2f}%" if isinstance(top1, (int, float)) else "- Validation top-1: not recorded",
    ]
    if isinstance(extra.get("top5"), (int, float)) and len(config["label_names"]) > 5:
        lines.append(f"- Validation top-5: {extra['top5']:.2f}%")
    if extra.get("n"):
        lines.append(f"- Validation images: {extra['n']}")
    lines.append(
        f"- Classes: {', '.join(config['label_names'][:20])}{', ...' if len(config['label_names']) > 20 else ''}"
    )
    if train_config:
        lines += ["", "Training recipe (the run's config.json):", ""]
        lines += [f"- {k}: {train_config[k]}" for k in _RECIPE_KEYS if train_config.get(k) not in (None, "")]
    if curves:
        lines += ["", "![Training loss and accuracy by epoch](curves.png)"]
    lines += [
        "",
        "## Preprocessing",
        "",
        f"Resize {'both sides' if pre['crop_mode'] == 'squash' else 'the shorter side'} to "
        f"{round(pre['input_size'][-1] / pre['crop_pct'])} ({pre['interpolation']}), "
        f"centre-crop {pre['input_size'][-1]}, scale to [0, 1], normalise with mean {pre['mean']} and std {pre['std']}.",
        "",
        "## Use",
        "",
        "```python",
        "import timm",
        "",
        'model = timm.create_model("hf-hub:ORG/NAME", pretrained=True)',
        "",
        "import resnets",
        "",
        'model = resnets.create_model("hf-hub:ORG/NAME")  # the same weights and preprocessing',
        "```",
        "",
        "## Intended use and limits",
        "",
        "Classifying images like those it was trained on, into the classes above. It knows no other classes and gives "
        "one of them for any image; accuracy on other kinds of images, sizes or domains is not measured here.",
        "",
    ]
    return "\n".join(lines)


def write_folder(
    model, out: str | os.PathLike, *, run_dir: str | os.PathLike | None = None, force: bool = False
) -> Path:
    """`out`/: model.safetensors (timm's parameter names), config.json (timm's), README.md (a model card) and,
    from a training run (`run_dir`: its eval.json, config.json and curves.png), curves.png; for `resnets push`,
    `huggingface_hub.upload_folder` or timm's `local-dir:` route."""
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


def push(
    folder: str | os.PathLike,
    repo: str,
    *,
    private: bool = False,
    message: str | None = None,
    timeout_s: float = PUSH_TIMEOUT_S,
) -> str:
    """Upload a folder written by `write_folder` to the Hub repo `repo` (ORG/NAME; created if missing) with the
    token of `hf auth login` or $HF_TOKEN ($HF_ENDPOINT: another Hub). Returns the commit's URL. Everything that
    can be checked here is checked before the network is touched; every network call gives up after
    `timeout_s` without an answer, saying which."""
    folder = Path(folder)
    cfg = timm_config_in(folder) if folder.is_dir() else None
    if cfg is None or not any((folder / f).is_file() for f in WEIGHT_FILES):
        raise WeightsError(
            f"{folder} is not a Hub folder (config.json in timm's layout and model.safetensors); "
            "write one with `resnets export --weights W --format hub --out DIR`"
        )
    parse(PREFIX + repo)  # ORG/NAME
    if downloads_off():
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
            info = api.upload_folder(
                repo_id=repo,
                folder_path=str(folder),
                commit_message=message or f"{cfg['architecture']} written by resnets",
            )
    except HfHubHTTPError as e:
        raise WeightsError(f"pushing to {repo} failed: {str(e).splitlines()[0]}") from None
    except Exception as e:  # no network, a refused connection: the HTTP client's own error types (httpx's)
        if "timeout" in type(e).__name__.lower():
            raise WeightsError(
                f"the Hub did not answer within {timeout_s:g} s while {step} ({repo}); try again later"
            ) from None
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
