"""Evaluation: top-1, top-5, loss, per-class accuracy and the confusion matrix, exact across processes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from .data import get_dataset
from .data.loader import make_eval_loader
from .data.shards import holds_shards
from .devices import autocast, native_bf16, pick_device, resolve_amp  # noqa: F401  (also resnets.evaluate's, as before)
from .distributed import Context, all_reduce_sum
from .errors import ResnetsError
from .factory import load
from .meta import preprocessing_for, traits_of
from .models.fold import folded
from .safe_io import atomic_path


def reports_top5(num_classes: int) -> bool:
    """Top-5 is shown only above 5 classes (with 5 or fewer it is 100% by definition)."""
    return num_classes > 5


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader,
    normalize: Callable[[torch.Tensor], torch.Tensor],
    num_classes: int,
    ctx: Context,
    *,
    amp: str = "none",
    channels_last: bool = False,
    progress: bool = False,
    tta: str = "none",
) -> dict:
    """Batches of uint8 images (B, C, H, W), or (B, 10, C, H, W) for 10-crop testing (softmax averaged).
    Unreadable images are skipped: counted over all processes (bad_samples) and named (bad_files, this process's).
    `tta="flip"` also scores each image averaged with its mirror image (softmax averaged), reported as "tta"
    beside the plain scores, which stay those of the images as given. The model runs with its batch norms folded
    into its convolutions where they can be (resnets.models.fold: the same scores up to float rounding)."""
    was_training = model.training
    model.eval()
    net = folded(model)  # each batch norm taken into its convolution: one pass over the activations fewer
    dev = ctx.device
    loss_sum = torch.zeros((), dtype=torch.float64, device=dev)
    counts = torch.zeros(3, dtype=torch.float64, device=dev)  # n, top-1 hits, top-5 hits
    tta_counts = torch.zeros(3, dtype=torch.float64, device=dev)  # the same for the flip-averaged scores
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.float64, device=dev)  # [true, predicted]
    bad = 0
    bad_files: list[dict] = []  # this process's unreadable images, named
    it = loader
    if progress and ctx.is_main:
        it = tqdm(loader, desc="eval", leave=False, dynamic_ncols=True)
    for batch in it:
        bad += len(batch.bad)
        bad_files += [{"path": str(p), "error": str(r)} for p, r in batch.bad]
        if batch.images.numel() == 0:
            continue
        x = batch.images.to(dev, non_blocking=True)
        y = batch.labels.to(dev, non_blocking=True)
        probs, flip_averaged = _scores(net, x, normalize, amp=amp, channels_last=channels_last, tta=tta)
        if flip_averaged is not None:
            tta_counts += _hits(flip_averaged, y)
        loss_sum += F.nll_loss(probs.clamp_min(1e-12).log(), y, reduction="sum").double()
        top1 = probs.argmax(1)
        counts += _hits(probs, y)
        confusion.index_put_((y, top1), torch.ones_like(y, dtype=torch.float64), accumulate=True)
    for t in (loss_sum, counts, tta_counts, confusion):
        all_reduce_sum(t, ctx)
    bad_t = all_reduce_sum(torch.tensor(float(bad), device=dev), ctx)
    model.train(was_training)
    n = int(counts[0].item())
    per_class_n = confusion.sum(1)
    per_class = (confusion.diag() / per_class_n.clamp_min(1)).mul(100).tolist()
    scores = {
        "n": n,
        "loss": loss_sum.item() / max(n, 1),
        "top1": 100.0 * counts[1].item() / max(n, 1),
        "top5": 100.0 * counts[2].item() / max(n, 1),
        "per_class": per_class,
        "confusion": confusion.long().tolist(),
        "bad_samples": int(bad_t.item()),
        "bad_files": bad_files,
    }
    if tta == "flip":
        scores["tta"] = {
            "kind": "flip",
            "top1": 100.0 * tta_counts[1].item() / max(n, 1),
            "top5": 100.0 * tta_counts[2].item() / max(n, 1),
            "n": n,
        }
    return scores


def _scores(model, x, normalize, *, amp: str, channels_last: bool, tta: str):
    """Softmax scores of a batch (10-crop batches averaged over their crops) and, with tta="flip", the scores of
    each image averaged with its mirror image's (else None)."""
    crops = x.shape[1] if x.ndim == 5 else 1
    if crops > 1:
        x = x.flatten(0, 1)  # (B, 10, C, H, W) -> (B*10, C, H, W)
    elif tta == "flip":
        x = torch.stack([x, x.flip(-1)], 1).flatten(0, 1)  # each image, then its mirror
    x = normalize(x)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with autocast(x.device, amp):
        probs = model(x).float().softmax(1)
    if crops > 1:
        return probs.view(-1, crops, probs.shape[-1]).mean(1), None
    if tta == "flip":
        views = probs.view(-1, 2, probs.shape[-1])
        return views[:, 0], views.mean(1)
    return probs, None


def _hits(probs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(images, top-1 hits, top-5 hits) of one batch, as float64 for exact sums across processes."""
    top = probs.topk(min(5, probs.shape[1]), dim=1).indices
    return torch.stack(
        [
            torch.full((), len(y), device=y.device, dtype=torch.float64),
            (top[:, 0] == y).sum().double(),
            (top == y[:, None]).any(1).sum().double(),
        ]
    )


def _dataset_of(data: str | None) -> str:
    """The dataset kind a --data path holds: shards, a saved Hugging Face dataset, an image folder or a CSV."""
    if not data:
        raise ResnetsError("say which data to evaluate on: --dataset NAME or --data PATH")
    if holds_shards(data):
        return "wds"
    if any((Path(data) / f).is_file() for f in ("dataset_dict.json", "state.json")):
        return "hf"
    return "imagefolder" if Path(data).is_dir() else "csv"


def evaluate_model_file(
    weights: str,
    *,
    dataset: str | None = None,
    data: str | None = None,
    ten_crop: bool = False,
    tta: str = "none",
    batch_size: int = 256,
    workers: int = 0,
    amp: str = "none",
    device: str = "auto",
    download: bool = False,
    limit: int = 0,
    out: str | None = None,
    progress: bool = True,
    model=None,
) -> dict:
    """`resnets eval` of a classifier: a saved model (or checkpoint; `model`: it, loaded already) on a dataset's
    evaluation split, with the preprocessing its file records. Writes eval.json, confusion.json and confusion.png
    to `out` when given. A detector's or a segmenter's is its task's (`tasks.task_of(model).evaluate_file`)."""
    model = load(weights) if model is None else model
    task = traits_of(model)
    if task.dense:
        raise ResnetsError(f"{weights} is a {task.noun}: `resnets eval` scores it (tasks.task_of(model).evaluate_file)")
    meta = model.meta
    if not meta.class_names:
        raise ResnetsError(f"{weights} records no class names to compare with the dataset's; save it with resnets.save")
    pre = preprocessing_for(model)
    classes = list(meta.class_names)
    dataset = dataset or _dataset_of(data)
    ds = get_dataset(dataset).evaluation(data, download, channels=meta.in_chans, classes=classes)
    if ds.classes != classes:
        raise ResnetsError(f"the model's {len(classes)} classes do not match the dataset's {len(ds.classes)}")
    if limit:
        ds = ds.subset(list(range(min(limit, len(ds)))))
    ctx = Context(device=pick_device(device))
    loader = make_eval_loader(
        ds,
        kind="auto",
        device=ctx.device,
        batch_size=batch_size,
        resize=pre.resize,
        crop=pre.crop,
        interpolation=pre.interpolation,
        crop_mode=pre.crop_mode,
        ten_crop=ten_crop,
        workers=workers,
    )
    model.to(ctx.device)
    if ctx.device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    amp = resolve_amp(amp, ctx.device)
    res = evaluate(
        model,
        loader,
        pre.normalizer(),
        len(classes),
        ctx,
        amp=amp,
        progress=progress,
        channels_last=ctx.device.type == "cuda",
        tta="none" if ten_crop else tta,  # the 10 crops hold their mirrors already
    )
    res.update(weights=str(weights), dataset=dataset, ten_crop=ten_crop, classes=classes, amp=amp)
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        title = f"{meta.architecture} on {dataset}{' (10-crop)' if ten_crop else ''}: top-1 {res['top1']:.2f}%"
        write_evaluation(
            Path(out), {k: v for k, v in res.items() if k != "confusion"}, classes, res["confusion"], title
        )
    return res


def write_evaluation(folder: Path, record: dict, classes: list[str], matrix: list, title: str) -> None:
    """An evaluation's files in `folder`, each written atomically: eval.json (`record`), confusion.json (the
    matrix with its class names) and confusion.png (`title` above it). The training run's and `resnets eval`'s."""
    from .reports import plot_confusion  # matplotlib, only where a figure is drawn

    with atomic_path(folder / "eval.json") as tmp:
        tmp.write_text(json.dumps(record, indent=2))
    with atomic_path(folder / "confusion.json") as tmp:
        tmp.write_text(json.dumps({"classes": classes, "matrix": matrix}))
    plot_confusion(matrix, classes, folder / "confusion.png", title)
