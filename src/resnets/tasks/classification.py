"""Classification (every ImageNet- and CIFAR-family ResNet): trained on any registered dataset (image folders,
shards, CSV, Hugging Face, in-memory sets), the model made for the data's classes (its head replaced when pretrained
weights' classes differ), batches normalised and mixed (MixUp/CutMix) on the device, cross-entropy as the loss, and
top-1, top-5, per-class accuracy and the confusion matrix (evaluate.py) as the scores, with flip TTA and 10 crops."""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from ..config import TrainConfig
from ..data import DataBundle, build, get_dataset
from ..data.loader import make_eval_loader, make_train_loader
from ..data.preprocessing import Preprocessing
from ..data.transforms import batch_mix, normalizer
from ..errors import printable
from ..evaluate import evaluate, evaluate_model_file, reports_top5, write_evaluation
from ..factory import create_from_weights, create_model
from ..models.registry import TASK_TRAITS
from ..reports import plot_curves
from .base import Batch, Task, model_options, register

log = logging.getLogger("resnets")


def data_and_model(cfg: TrainConfig) -> tuple[DataBundle, nn.Module]:
    """The data and the model to train on it. Pretrained weights bring their architecture (when --model is not
    given), input channels and preprocessing for image files; their head is replaced when the classes differ."""
    options = model_options(cfg)
    fixed_chans = get_dataset(cfg.dataset).channels or cfg.in_chans or None  # in-memory data has its own
    if fixed_chans:
        options["in_chans"] = fixed_chans
    if not cfg.weights:
        bundle = build(cfg)
        options.pop("in_chans", None)  # the data's
        return bundle, create_model(cfg.model, num_classes=len(bundle.classes), in_chans=bundle.in_chans, **options)
    model = create_from_weights(cfg.weights, cfg.model or None, **options)
    bundle = build(cfg, in_chans=model.meta.in_chans, preprocessing=model.meta.preprocessing)
    if model.num_classes != len(bundle.classes) or (
        model.meta.class_names and model.meta.class_names != bundle.classes
    ):
        log.warning(
            "new head: %d classes (%s%s); the weights' classifier is dropped",
            len(bundle.classes),
            ", ".join(bundle.classes[:5]),
            ", ..." if len(bundle.classes) > 5 else "",
        )
        model.reset_classifier(len(bundle.classes))
        model.meta.options["num_classes"] = len(bundle.classes)
    return bundle, model


class Classification(Task):
    traits = TASK_TRAITS["classification"]

    def evaluate_file(self, model: nn.Module, weights: str, data: str | None, **options) -> dict:
        return {"task": self.name} | evaluate_model_file(weights, data=data, model=model, **options)

    score = "top1"
    score_title = "val top-1"
    best_key = "best_top1"
    accuracy = True
    stages = True
    seeds_device = False  # only stochastic depth draws on the device (engine/loop.py seeds it then)
    channels_last = True
    fixed_shapes = True

    def data_and_model(self, cfg: TrainConfig, ctx) -> tuple[DataBundle, nn.Module]:
        """The data and the model, which records its classes and the preprocessing to evaluate it with."""
        bundle, model = data_and_model(cfg)
        preprocessing = Preprocessing(bundle.eval_resize, bundle.eval_crop, cfg.interpolation, bundle.mean, bundle.std)
        model.meta = model.meta.replace(class_names=list(bundle.classes), preprocessing=preprocessing)
        return bundle, model

    def parts(self, cfg: TrainConfig, bundle: DataBundle) -> tuple[Any, Any, Any]:
        """(the loss, the batch mixing, the normalisation) of the step."""
        criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
        return criterion, batch_mix(len(bundle.classes), cfg.mixup, cfg.cutmix), normalizer(bundle.mean, bundle.std)

    def loaders(self, cfg: TrainConfig, bundle: DataBundle, ctx) -> tuple[Any, Any]:
        """The training loader (this rank's share, augmented) and the evaluation loader."""
        world = ctx.world
        loader_args = dict(
            kind=cfg.loader, device=ctx.device, rank=ctx.rank, world=world, workers=cfg.workers, strict=cfg.strict_data
        )
        train_loader = make_train_loader(
            bundle.train,
            batch_size=cfg.batch_size,
            seed=cfg.seed,
            augment=cfg.augment,
            crop=bundle.train_crop,
            mean=bundle.mean,
            pad=cfg.pad,
            auto_augment=cfg.auto_augment,
            random_erasing=cfg.random_erasing,
            interpolation=cfg.interpolation,
            balanced=cfg.balanced,
            **loader_args,
        )
        val_loader = make_eval_loader(
            bundle.val,
            batch_size=max(cfg.batch_size // world, 1) * 2,
            resize=bundle.eval_resize,
            crop=bundle.eval_crop,
            interpolation=cfg.interpolation,
            **loader_args,
        )
        return train_loader, val_loader

    def batch(self, run, raw) -> Batch:
        dev = run.ctx.device
        x = raw.images.to(dev, non_blocking=True)
        y = raw.labels.to(dev, non_blocking=True)
        if x.numel():
            x = run.normalize(x)
            if run.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
        target = y
        if run.mix is not None and x.numel():
            x, target = run.mix(x, y)
        return Batch(x, target, y, len(y), raw.bad)

    def forward(self, run, net, inputs, targets, labels) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        logits = net(inputs)
        return {"classification": run.criterion(logits.float(), targets)}, (logits.detach().argmax(1) == labels).sum()

    def probe(self, run, n: int) -> tuple[Any, Any, Any]:
        """Random images of the run's crop and random labels."""
        dev, size = run.ctx.device, run.bundle.train_crop
        x = torch.randn(n, run.core.meta.in_chans, size, size, device=dev)
        if run.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, len(run.classes), (n,), device=dev)
        return x, y, y

    def evaluate(self, run, model: nn.Module, loader=None, tta: str = "none") -> dict:
        return evaluate(
            model,
            run.val_loader if loader is None else loader,
            run.normalize,
            len(run.classes),
            run.ctx,
            amp=run.amp,
            channels_last=run.channels_last,
            tta=tta,
        )

    def record(self, ev: dict) -> dict:
        return {"val_loss": ev["loss"], "val_top1": ev["top1"], "val_top5": ev["top5"]}

    def epoch_line(self, run, record: dict) -> str:
        msg = f"epoch {record['epoch']}: train loss {record['train_loss']:.4f} acc {record['train_acc']:.2f}%"
        if "val_top1" in record:
            msg += f", val top-1 {record['val_top1']:.2f}%"
            msg += f" top-5 {record['val_top5']:.2f}%" if reports_top5(len(run.classes)) else ""
        return msg + f", {record['images_per_s']:.0f} img/s"

    def final_scores(self, run, validate, final: nn.Module, ev: dict) -> dict:
        """The final evaluation's extras: the chosen EMA weights' TTA scores, and the paper's 10 crops."""
        cfg, ctx, bundle = run.cfg, run.ctx, run.bundle
        if run.ema is not None and cfg.tta != "none":
            ev["tta"] = validate(run, final, tta=cfg.tta)["tta"]
        if cfg.ten_crop:
            tc_loader = make_eval_loader(
                bundle.val,
                kind="host",
                device=ctx.device,
                batch_size=32,
                resize=bundle.eval_resize,
                crop=bundle.eval_crop,
                interpolation=cfg.interpolation,
                ten_crop=True,
                rank=ctx.rank,
                world=ctx.world,
                workers=cfg.workers,
            )
            ev["ten_crop"] = {k: v for k, v in validate(run, final, tc_loader).items() if k in ("top1", "top5", "n")}
        return ev

    def result(self, run, ev: dict) -> dict:
        out = {k: ev[k] for k in ("top1", "top5", "loss", "n", "per_class")}
        out.update(channels_last=run.channels_last, loader=run.train_loader.kind, cuda_graph=run.graph)
        out.update({k: ev[k] for k in ("ten_crop", "tta") if k in ev})
        return out

    def write(self, run, result: dict, ev: dict) -> None:
        title = f"{run.core.meta.architecture} on {run.cfg.dataset}"
        write_evaluation(
            run.run_dir,
            {k: v for k, v in result.items() if k not in ("history", "curve")},
            run.classes,
            ev["confusion"],
            f"{title}: top-1 {ev['top1']:.2f}%",
        )
        if run.history:
            plot_curves(run.history, run.run_dir / "curves.png", title)

    def run_line(self, result: dict) -> str:
        top5 = f"  top-5 {result['top5']:.2f}%" if reports_top5(len(result["classes"])) else ""
        line = f"top-1 {result['top1']:.2f}%{top5} on {result['n']} validation images"
        if "ten_crop" in result:
            line += f" (10-crop: top-1 {result['ten_crop']['top1']:.2f}%)"
        if "tta" in result:
            line += f" (with flip TTA: top-1 {result['tta']['top1']:.2f}%)"
        if result.get("kept_epoch", len(result["history"])) < len(result["history"]):
            line += f" (the weights of epoch {result['kept_epoch']} of {len(result['history'])})"
        return line

    def files_line(self, run_dir: str) -> str:
        return f"plots:         {run_dir}/curves.png, {run_dir}/confusion.png"

    def eval_lines(self, res: dict, out: str | None, kept: str) -> tuple[list[str], list[str]]:
        five = reports_top5(len(res["classes"]))
        lines = [
            f"{res['weights']} on {res['dataset']} ({res['n']} images{', 10-crop' if res['ten_crop'] else ''}):",
            f"top-1 {res['top1']:.2f}%" + (f"  top-5 {res['top5']:.2f}%" if five else "") + f"  loss {res['loss']:.4f}",
        ]
        if "tta" in res:
            tta5 = f"  top-5 {res['tta']['top5']:.2f}%" if five else ""
            lines.append(f"with {res['tta']['kind']} TTA: top-1 {res['tta']['top1']:.2f}%{tta5}")
        width = max(len(c) for c in res["classes"])
        lines += [f"  {printable(c).ljust(width)}  {acc:6.2f}%" for c, acc in zip(res["classes"], res["per_class"])]
        errors = [f"skipped {printable(f['path'])}: {printable(f['error'])}" for f in res.get("bad_files", [])]
        if res["bad_samples"]:
            lines.append(f"skipped {res['bad_samples']} unreadable images")
        lines.append(f"confusion matrix: {out}/confusion.png, {out}/confusion.json" if out else kept)
        return lines, errors

    def curve_point(self, ev: dict) -> dict:
        """A point of the paper's Figure 6 from an evaluation (the training side is the loop's)."""
        return {"val_err": 100 - ev["top1"], "val_loss": ev["loss"]}


register(Classification())
