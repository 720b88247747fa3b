"""The task's hooks (`Task`), the batch the step takes (`Batch`), and the table of tasks by model family that
`register` fills (the rooms beside this module register themselves; tasks/__init__.py reads the table)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..config import MODEL_OPTIONS
from ..data import coco
from ..data.batching import leave_stops_to_the_run
from ..data.loader import TrainBatches
from ..data.registry import DATASETS
from ..devices import pick_device, resolve_amp
from ..errors import ResnetsError, Unreadable, printable
from ..models.registry import TASK_TRAITS, TaskTraits
from ..safe_io import atomic_path


@dataclass
class Batch:
    """One training batch as the task's step takes it: `inputs` and `targets` for the model (a tensor, or lists of
    images and their targets), `labels` the classes top-1 is counted against (None: no accuracy), `n` images, and
    the unreadable files set aside ([(path, reason)])."""

    inputs: Any
    targets: Any
    labels: torch.Tensor | None
    n: int
    bad: list


class Task:
    """The hooks the engine calls; each room overrides them. `traits` (models.registry.TASK_TRAITS) say what the
    task is to every floor; class attributes say what it reports."""

    traits: TaskTraits
    score = ""  # the evaluation's key that picks best.pt ("top1", "map", "miou")
    score_title = ""  # how it is shown ("val top-1")
    best_key = "best_score"  # the checkpoint's key for the best score so far (kept as each task's files had it)
    accuracy = False  # the training step counts top-1 hits (train_acc)
    stages = False  # the model trains by stages (engine/finetune.py's strategies)
    seeds_device = True  # the step draws random numbers on the device (seeded per step, as on the CPU)
    channels_last = False  # the model may take its input channels-last (where the config leaves it to the device)
    fixed_shapes = False  # every batch has one shape (cuDNN's timed algorithms and a CUDA graph pay off)

    def data_and_model(self, cfg, ctx) -> tuple[Any, nn.Module]:
        """The data (`.train`, `.val`, `.classes`) and the model for its classes."""
        raise NotImplementedError

    def parts(self, cfg, data) -> tuple[Any, Any, Any]:
        """(the loss module, the batch mixing, the normalisation) the step uses; None where the model holds them."""
        return None, None, None

    def loaders(self, cfg, data, ctx) -> tuple[Any, Any]:
        """The training loader (with `set_epoch(epoch, first)`, `kind`, a length in batches) and the evaluation one."""
        raise NotImplementedError

    def batch(self, run, raw) -> Batch:
        """A loader's batch as the step takes it, on the run's device."""
        raise NotImplementedError

    def forward(self, run, net: nn.Module, inputs, targets, labels) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """The named losses of a batch and its top-1 hits (a 0-d tensor; 0 where the task counts none)."""
        raise NotImplementedError

    def probe(self, run, n: int) -> tuple[Any, Any, Any]:
        """(inputs, targets, labels) of `n` random images of the run's shape, for timing the step before training."""
        raise NotImplementedError

    def evaluate(self, run, model: nn.Module, loader=None, tta: str = "none") -> dict:
        """The scores of `model` on the validation set (`loader`: another evaluation loader)."""
        raise NotImplementedError

    def final_scores(self, run, validate, final: nn.Module, ev: dict) -> dict:
        """The final evaluation `ev` of the weights kept (`final`) with the task's extras (`validate(run, model,
        loader, tta)` scores another way)."""
        return ev

    def curve_point(self, ev: dict) -> dict:
        """The validation side of a --curve-steps point of the paper's Figure 6 (a task that counts top-1 hits)."""
        raise NotImplementedError

    def record(self, ev: dict) -> dict:
        """The epoch record's validation keys from an evaluation."""
        raise NotImplementedError

    def epoch_line(self, run, record: dict) -> str:
        """The line printed at the end of an epoch."""
        raise NotImplementedError

    def result(self, run, ev: dict) -> dict:
        """The task's part of the run's result (and of eval.json)."""
        raise NotImplementedError

    def write(self, run, result: dict, ev: dict) -> None:
        """The task's files in the run folder beside model.safetensors (eval.json, pictures)."""
        raise NotImplementedError

    def header(self, run) -> str | None:
        """The line printed before training: what trains on what (None: nothing before the expected time)."""
        return None

    def evaluate_file(self, model: nn.Module, weights: str, data: str | None, **options) -> dict:
        """`resnets eval` of a saved model of this task on `data` (options: eval's dataset, ten_crop, tta, batch_size,
        workers, amp, device, download, limit, out, progress)."""
        raise NotImplementedError

    def trained_lines(self, result: dict) -> list[str]:
        """What `resnets train` prints at the end of a run (`result`: the engine's): its scores (run_line), the
        run folder, the model, the files to look at (files_line)."""
        d = result["run_dir"]
        return [self.run_line(result), f"run directory: {d}", f"final model:   {result['model_path']}",
                self.files_line(d)]  # fmt: skip

    def run_line(self, result: dict) -> str:
        """A finished run's scores, in one line."""
        raise NotImplementedError

    def files_line(self, run_dir: str) -> str:
        """The files of a finished run to look at, in one line."""
        raise NotImplementedError

    def eval_lines(self, res: dict, out: str | None, kept: str) -> tuple[list[str], list[str]]:
        """What `resnets eval` prints of `res` (evaluate_file's): (lines for stdout, lines for stderr). `out`: the
        folder the scores went to (None: none); `kept`: the line that says so."""
        raise NotImplementedError

    @property
    def name(self) -> str:
        return self.traits.name


TASKS: dict[str, Task] = {}  # task name -> its room


def register(task: Task) -> Task:
    """The room of a task whose traits are registered (models.registry.TASK_TRAITS, add_task); a task given two
    rooms is an error."""
    if TASK_TRAITS.get(task.name) is not task.traits:
        raise ResnetsError(f"task {task.name!r} has no traits in models.registry.TASK_TRAITS (add_task)")
    if task.name in TASKS:
        raise ResnetsError(f"the {task.name} task already has its room ({type(TASKS[task.name]).__name__})")
    TASKS[task.name] = task
    return task


@dataclass
class Sets:
    """A dense task's data: its training and validation sets and their classes (background not counted)."""

    train: Any
    val: Any
    classes: list[str]

    @classmethod
    def checked(cls, cfg, train, val) -> "Sets":
        if len(train) < cfg.batch_size:
            raise ResnetsError(f"the training set ({len(train)} images) is smaller than one batch ({cfg.batch_size})")
        return cls(train, val, train.classes)


class ListLoader:
    """A dense task's training batches: (images, targets, unreadable) lists, this rank's share of each global batch,
    dealt in the seeded order classification's loaders deal (data.loader.TrainBatches)."""

    kind = "host"

    def __init__(self, dataset, cfg, ctx, collate):
        self.batches = len(dataset) // cfg.batch_size
        self.sampler = TrainBatches(len(dataset), cfg.batch_size, seed=cfg.seed, rank=ctx.rank, world=ctx.world)
        self.loader = DataLoader(
            coco.Safe(dataset), batch_sampler=self.sampler, num_workers=cfg.workers, collate_fn=collate,
            persistent_workers=False, worker_init_fn=leave_stops_to_the_run,
        )  # fmt: skip

    def set_epoch(self, epoch: int, first: int = 0) -> None:
        self.sampler.set_epoch(epoch, first)

    def __len__(self) -> int:
        return self.batches

    def __iter__(self):
        return iter(self.loader)


def model_options(cfg) -> dict[str, Any]:
    """The config's model options that are set (the input channels follow the data or the weights)."""
    return {k: getattr(cfg, k) for k in MODEL_OPTIONS if k != "in_chans" and getattr(cfg, k) is not None}


def shown_name(architecture: str, options: dict[str, Any]) -> str:
    """An architecture's name as printed: with its backbone when that is not the one the name says
    (fasterrcnn_resnet50_fpn built on a resnet18 is "fasterrcnn_resnet50_fpn (backbone resnet18)")."""
    backbone = options.get("backbone")
    if backbone is None or f"_{backbone}_" in f"_{architecture}_":  # the name says its default backbone
        return architecture
    return f"{architecture} (backbone {backbone})"


def class_count(n: int, background: bool) -> str:
    """`n` classes as printed, saying where the background is: a class beside them ("3 classes + background", a
    detector's 4 outputs) or one of them ("4 classes, background counted", a segmenter's 4 outputs)."""
    return f"{n} class{'es' * (n != 1)}" + (" + background" if background else ", background counted")


def say(run, msg: str) -> None:
    """A line printed under the progress bar (or plainly without one)."""
    if run.bar is not None:
        run.bar.write(msg)
    else:
        print(msg, flush=True)


class Dense(Task):
    """What detection and segmentation share: lists of images of any size and their targets, the scores of a
    library's metric on the validation set itself, eval.json as the run's report."""

    background = True  # a background class beside the data's (label 0)
    collate: Any = None  # the loader's collate function: (images, targets, unreadable)
    scores: Any = None  # the scores of a model on a set: (model, dataset, device, amp=, batch_size=, ...) -> dict

    eval_data = "folder"  # what `resnets eval --data` names: "COCO or VOC folder"

    def eval_set(self, model: nn.Module, data: str, limit: int) -> tuple[Any, dict]:
        """`resnets eval`'s set in the folder `data` for `model` (its classes must be the model's): (the dataset,
        at most `limit` images when set; what eval.json says of it: dataset, data, classes)."""
        raise NotImplementedError

    def evaluate_file(self, model: nn.Module, weights: str, data: str | None, **options) -> dict:
        """The scores of training's evaluation (`scores`) on the room's set in `data` (eval_set), written to
        options' out/eval.json when given (no dataset name, 10 crops or TTA here)."""
        noun = self.traits.noun
        if not data:
            raise ResnetsError(f"say which {self.eval_data} to evaluate the {noun} on: --data DIR")
        dataset = options.get("dataset")
        if dataset and DATASETS[dataset].task != self.name:
            theirs = ", ".join(d for d, spec in DATASETS.items() if spec.task == self.name)
            raise ResnetsError(f"--dataset {dataset} is not a {noun}'s ({theirs}: the folder says which)")
        if options.get("ten_crop") or options.get("tta", "none") != "none":
            raise ResnetsError(f"--ten-crop and --tta are a classifier's; a {noun} is scored on each image as it is")
        ds, said = self.eval_set(model, data, options.get("limit", 0))
        if len(ds) == 0:
            raise ResnetsError(f"no images to evaluate the {noun} on in {data}")
        dev = pick_device(options.get("device", "auto"))
        amp = resolve_amp(options.get("amp", "none"), dev)
        batch = min(options.get("batch_size", 8), 8)  # images of any size: a few at a time
        model.to(dev)
        with tqdm(
            total=-(-len(ds) // batch), unit="batch", disable=not options.get("progress", True), desc="eval"
        ) as bar:
            res = self.scores(model, ds, dev, amp=amp, batch_size=batch, workers=options.get("workers", 0), bar=bar)
        if res["n"] == 0:
            first = res["bad_files"][0] if res.get("bad_files") else {"path": data, "error": "unreadable"}
            raise Unreadable(
                f"none of the {len(ds)} images could be read (the first: {first['path']}: {first['error']})"
            )
        res.update(task=self.name, weights=str(weights), **said, amp=amp)
        if options.get("out"):
            Path(options["out"]).mkdir(parents=True, exist_ok=True)
            with atomic_path(Path(options["out"]) / "eval.json") as tmp:
                tmp.write_text(json.dumps(res, indent=2))
        return res

    def loaders(self, cfg, sets: Sets, ctx) -> tuple[ListLoader, None]:
        return ListLoader(sets.train, cfg, ctx, self.collate), None  # evaluation reads the set itself

    def batch(self, run, raw) -> Batch:
        images, targets, bad = raw
        if bad and run.cfg.strict_data:
            raise ResnetsError(f"unreadable image {bad[0][0]}: {bad[0][1]} (strict data is on)")
        return Batch(images, targets, None, len(images), bad)

    def evaluate(self, run, model: nn.Module, loader=None, tta: str = "none") -> dict:
        cfg, ctx = run.cfg, run.ctx
        return self.scores(
            model, run.bundle.val, ctx.device, amp=run.amp, batch_size=max(cfg.batch_size // ctx.world, 1),
            rank=ctx.rank, world=ctx.world, workers=min(cfg.workers, 2),
        )  # fmt: skip

    def epoch_line(self, run, record: dict) -> str:
        msg = f"epoch {record['epoch']}: train loss {record['train_loss']:.4f}"
        if f"val_{self.score}" in record:
            msg += ", " + self.scores_line(record)
        return msg + f", {record['images_per_s']:.1f} img/s"

    def scores_line(self, record: dict) -> str:
        """The epoch line's validation scores, from a record that has them."""
        raise NotImplementedError

    per_class_score = "score"  # what eval's per-class lines show: "AP", "IoU"

    def score_line(self, res: dict) -> str:
        """The final scores of a run or of `resnets eval`, in one line."""
        raise NotImplementedError

    def run_line(self, result: dict) -> str:
        return self.score_line(result)

    def files_line(self, run_dir: str) -> str:
        return f"scores:        {run_dir}/eval.json"

    def eval_lines(self, res: dict, out: str | None, kept: str) -> tuple[list[str], list[str]]:
        lines = [f"{res['weights']} on {res['data']}:", self.score_line(res)]
        lines += [f"  {printable(c)}  {self.per_class_score} {v:6.2f}" if v >= 0 else  # COCO's -1: none in the set
                  f"  {printable(c)}  {self.per_class_score}    n/a (none in the set)"
                  for c, v in res.get("per_class", {}).items()]  # fmt: skip
        return lines + [kept], [f"skipped {printable(f['path'])}: {printable(f['error'])}" for f in res["bad_files"]]

    def result(self, run, ev: dict) -> dict:
        return {k: v for k, v in ev.items() if k not in ("bad_samples", "bad_files")}

    def write(self, run, result: dict, ev: dict) -> None:
        with atomic_path(run.run_dir / "eval.json") as tmp:
            tmp.write_text(json.dumps({k: v for k, v in result.items() if k not in ("history", "curve")}, indent=2))

    def header(self, run) -> str:
        cfg, meta = run.cfg, run.core.meta
        return (
            f"{shown_name(meta.architecture, meta.options)} on {len(run.bundle.train)} images "
            f"({class_count(len(run.classes), self.background)}, {len(run.bundle.val)} to validate): "
            f"{run.total_steps} steps of {cfg.batch_size}, {run.amp if run.amp != 'none' else 'fp32'}"
        )
