"""Typed, closed training configs and the named recipes.

A config is a dataclass: unknown keys are errors, values are checked against the field's type, and every run
saves its resolved config beside its checkpoints. Precedence: recipe < config file (TOML/YAML) < command line.
A value that runs a command (`pipe:`), fetches a URL or writes outside the working folder is taken only from the
command line: a config file, a recipe or a run's config.json naming one is refused (`only_from_command_line`).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from .choices import (
    AMPS,
    AUGMENTS,
    AUTO_AUGMENTS,
    BN_POLICIES,
    CUDA_GRAPHS,
    INTERPOLATIONS,
    LOADERS,
    NORMS,
    OPTIMIZERS,
    OUTPUT_STRIDES,
    SCHEDULES,
    SHORTCUTS,
    STRATEGIES,
    TTAS,
)
from .data import remote
from .data.registry import DATASETS
from .errors import ResnetsError, printable
from .models.registry import TASK_TRAITS, get_entry, list_models

# the config keys that are architecture options (create_model's), and become the model's flags in every command
MODEL_OPTIONS = (
    "in_chans",
    "norm",
    "shortcut",
    "stride_in_1x1",
    "zero_init_residual",
    "drop_path_rate",
    "backbone",
    "trainable_layers",
    "min_size",
    "max_size",
    "box_batch_size_per_image",
    "output_stride",
)

# `resnets reproduce --budget`: iterations of batch 128 (the paper trains its CIFAR nets for 64k)
BUDGETS = {"tiny": 200, "short": 1500, "medium": 8000, "paper": 64_000}


@dataclass(frozen=True)
class Rule:
    """The values a config key takes, beside the type its annotation gives: a set of choices, or a range
    [low, high] whose ends are open where said. Numbers must be finite."""

    choices: tuple = ()
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    device: bool = False

    def describe(self) -> str:
        if self.choices:
            return "one of " + ", ".join(str(c) for c in self.choices)

        def num(v: float) -> str:
            return f"{int(v):,}" if float(v).is_integer() else f"{v:g}"

        lo = "" if self.low is None else f"{'>' if self.low_open else '>='} {num(self.low)}"
        hi = "" if self.high is None else f"{'<' if self.high_open else '<='} {num(self.high)}"
        return " and ".join(x for x in (lo, hi) if x) or "any value"

    def check(self, key: str, value: Any) -> None:
        values = value if isinstance(value, list) else [value]
        for v in values:
            if v is None:
                continue
            if self.device:
                _check_device(v)
            elif self.choices and v not in self.choices:
                raise ResnetsError(f"{key} must be {self.describe()}; got {v!r}")
            elif isinstance(v, (int, float)) and not isinstance(v, bool):
                bad = not math.isfinite(v)
                bad = bad or (self.low is not None and (v <= self.low if self.low_open else v < self.low))
                bad = bad or (self.high is not None and (v >= self.high if self.high_open else v > self.high))
                if bad:
                    raise ResnetsError(f"{key} must be {self.describe()}; got {v!r}")

    def outside(self) -> list:
        """Values just outside the rule (for the tests)."""
        if self.device:
            return ["tpu", "cuda:x"]
        if self.choices:
            return ["not-a-choice"]
        out = []
        if self.low is not None:
            out.append(self.low if self.low_open else self.low - (1 if float(self.low).is_integer() else 1e-6))
        if self.high is not None:
            out.append(self.high if self.high_open else self.high + (1 if float(self.high).is_integer() else 1e-6))
        return out + [float("nan")] if out else []


def _check_device(value: str) -> None:
    """A device this machine has (one line if not, before a run folder is made)."""
    if not isinstance(value, str):
        raise ResnetsError(f"device must be auto, cpu, cuda or cuda:N; got {value!r}")
    if value != "auto":
        from .devices import pick_device

        pick_device(value)


def _ge(low: float, high: float | None = None) -> Rule:
    return Rule(low=low, high=high)


def _gt(low: float, high: float | None = None) -> Rule:
    return Rule(low=low, high=high, low_open=True)


# the bounds every number has: what can run on any machine (an epoch count of 1e400 or a weight decay of 1e308
# was a traceback; 1e9 synthetic classes allocated 23 GB), far past any real setting
COUNT = 2**31 - 1  # steps, images, epochs
SEED = 2**32 - 1  # numpy's and every library's seed range
SIZE = 1024  # pixels of a crop (the eval resize: twice that); meta.MAX_INPUT_SIZE
ANY = Rule()
FRACTION = Rule(low=0, high=1, high_open=True)  # [0, 1)
UNIT = Rule(low=0, high=1)  # [0, 1]


def key(
    default: Any = dataclasses.MISSING, help: str = "", *, factory: Any = dataclasses.MISSING, rule: Rule = ANY
) -> Any:
    """A config key: its default, the one line `--help` shows for it, and the values it takes beyond its type."""
    return field(default=default, default_factory=factory, metadata={"help": help, "rule": rule})


@dataclass
class ModelKeys:
    """Model: the architecture and its options (--model's; a model takes only those it has)."""

    SECTION: ClassVar[str] = "model"
    model: str = key("resnet20", 'architecture (see `resnets list`); "": the one the weights are for')
    weights: str | None = key(None, "registered name or file to start from (its head is replaced for new classes)")
    in_chans: int = key(0, "0: the dataset's (1 for Fashion-MNIST), else the weights', else 3", rule=_ge(0, 64))
    norm: str | None = key(
        None, "normalisation: batch, group (GroupNorm, 32 groups) or frozen_batch", rule=Rule(choices=NORMS)
    )
    shortcut: str | None = key(
        None,
        "the paper's shortcut: A zero-pad, B projection where the shape changes, C all",
        rule=Rule(choices=SHORTCUTS),
    )
    stride_in_1x1: bool | None = key(
        None, "the paper's v1 bottleneck: stride on the 1st 1x1 (default v1.5: on the 3x3)"
    )
    zero_init_residual: bool | None = key(None, "start each residual branch's last norm at zero")
    drop_path_rate: float | None = key(None, "stochastic depth: the deepest block's drop probability", rule=FRACTION)
    output_stride: int | None = key(
        None,
        "ImageNet nets and segmenters: 8 or 16 dilate the last stages (32: none)",
        rule=Rule(choices=OUTPUT_STRIDES),
    )


@dataclass
class DataKeys:
    """Data: what trains and validates, and how images are read."""

    SECTION: ClassVar[str] = "data"
    dataset: str = key(
        "fashion-mnist", "a registered dataset (see `resnets data --list`)", rule=Rule(choices=tuple(DATASETS))
    )
    data: str | None = key(None, "folder (imagefolder: DIR/train, DIR/val), CSV file, or archive/IDX folder")
    val_data: str | None = key(None, "CSV of the validation images (dataset=csv), or their shards (dataset=wds)")
    download: bool = key(False, "fetch Fashion-MNIST / CIFAR from the official site when not found locally")
    val_split: float = key(
        0.0,
        "validate on this fraction of the training set (stratified, seeded), not the test set; 0: the data's own "
        "validation set, or a tenth of each class where it has none (the run records 0.1)",
        rule=FRACTION,
    )
    classes: list[str] = key(factory=list, help="keep only these classes (names or indices), in this order")
    per_class: int = key(0, "keep at most N training images per class (seeded choice; 0: all)", rule=_ge(0, COUNT))
    balanced: bool = key(False, "class-balanced sampling (each class equally likely per draw)")
    limit_train: int = key(0, "use only the first N training images (0: all); for smoke runs", rule=_ge(0, COUNT))
    limit_val: int = key(0, "use only the first N validation images (0: all)", rule=_ge(0, COUNT))
    synthetic_samples: int = key(4096, "dataset=synthetic: how many random images", rule=_ge(1, 10**6))
    synthetic_classes: int = key(1000, "dataset=synthetic: how many classes", rule=_ge(2, 100_000))
    train_crop: int = key(0, "0: the dataset's native size (28 / 32) or 224", rule=_ge(0, SIZE))
    augment: str = key(
        "paper-cifar",
        "a classifier's: none | paper-cifar | crop-flip | paper-imagenet | rrc | strong (rrc on image files: "
        "imagefolder, csv, wds, hf, unless said); a detector's: hflip | ssd | none; a segmenter's: hflip | scale | none "
        "(hflip unless said)",
        rule=Rule(choices=AUGMENTS),
    )
    interpolation: str = key(
        "bilinear", "bilinear | bicubic | nearest, for every resize", rule=Rule(choices=INTERPOLATIONS)
    )
    workers: int = key(2, "data loading processes (0: in the training process)", rule=_ge(0, 256))
    loader: str = key(
        "auto",
        "auto | host (per-image, CPU workers) | device (whole batches on the training device)",
        rule=Rule(choices=LOADERS),
    )
    strict_data: bool = key(False, "an unreadable image stops the run instead of being skipped")
    max_pixels: int = key(
        0,
        "refuse images of more pixels, from their header (0: the default, 89,478,485; the decode budget is 3 bytes "
        "a pixel of it: width x height x channels x bytes per sample)",
        rule=_ge(0, 2**40),
    )
    exact_decode: bool = key(
        False,
        "decode every image at full size (default: an image over twice what the transforms need is decoded "
        "smaller, a JPEG by DCT scaling); for bit-exact reproduction",
    )


@dataclass
class DenseKeys:
    """Detection and segmentation: the options of a detector's or a segmenter's model (a classifier takes none of
    them; the model registry checks each against the architecture)."""

    SECTION: ClassVar[str] = "detection and segmentation"
    backbone: str | None = key(None, "detection: the classification net under the heads (default resnet50)")
    trainable_layers: int | None = key(
        None, "detection: how many of the backbone's stages train, from the top (0-5)", rule=_ge(0, 5)
    )
    min_size: int | None = key(
        None, "detection: each image's shorter side resized to this (default 800)", rule=_ge(32, 8192)
    )
    max_size: int | None = key(
        None, "detection: ... and its longer side to at most this (default 1333)", rule=_ge(32, 8192)
    )
    box_batch_size_per_image: int | None = key(
        None, "R-CNNs: proposals per image the box head trains on (default 512)", rule=_ge(1, 4096)
    )


@dataclass
class ClassificationKeys:
    """Classification: a classifier's crops, augmentation beyond --augment, loss and final evaluation."""

    SECTION: ClassVar[str] = "classification"
    eval_resize: int = key(
        0, "evaluation: shorter side resized to this (0: crop / 0.875, or the weights')", rule=_ge(0, 2 * SIZE)
    )
    eval_crop: int = key(0, "evaluation: centre crop (0: the training crop, or the weights')", rule=_ge(0, SIZE))
    pad: int = key(4, "padding of the paper-cifar / crop-flip random crop, pixels", rule=_ge(0, SIZE))
    auto_augment: str = key("none", "none | trivial | randaugment", rule=Rule(choices=AUTO_AUGMENTS))
    random_erasing: float = key(0.0, "probability of erasing a random rectangle of each training image", rule=UNIT)
    mixup: float = key(0.0, "alpha", rule=_ge(0, 100))
    cutmix: float = key(0.0, "alpha", rule=_ge(0, 100))
    label_smoothing: float = key(0.0, "cross-entropy label smoothing", rule=FRACTION)
    ten_crop: bool = key(False, "final evaluation with the paper's 10-crop testing")
    tta: str = key(
        "none",
        "final evaluation also with test-time augmentation (flip: each image averaged with its "
        "mirror), reported beside the plain top-1",
        rule=Rule(choices=TTAS),
    )


@dataclass
class FinetuneKeys:
    """Transfer learning: resnets finetune: what trains when, and when to stop."""

    SECTION: ClassVar[str] = "transfer learning"
    strategy: str = key("full", "full | linear-probe | partial | gradual", rule=Rule(choices=STRATEGIES))
    unfreeze_stages: int = key(0, "partial: how many stages below the head train", rule=_ge(0, 16))
    unfreeze_every: int = key(1, "gradual: epochs between unfreezing the next stage down", rule=_ge(1, COUNT))
    layer_decay: float = key(
        1.0,
        "each stage's lr is this times the lr of the stage above it (1: one lr)",
        rule=Rule(low=0, high=1, low_open=True),
    )
    bn: str = key(
        "train",
        "train | freeze (keep statistics) | frozen (FrozenBatchNorm) | group (GroupNorm)",
        rule=Rule(choices=BN_POLICIES),
    )
    early_stop: int = key(
        0, "stop after N evaluations without a better val top-1, keep the best weights (0: off)", rule=_ge(0, COUNT)
    )


@dataclass
class OptimKeys:
    """Optimisation: the optimizer, the schedule and the numerics, every task's."""

    SECTION: ClassVar[str] = "optimisation"
    optimizer: str = key("sgd", "sgd | adamw", rule=Rule(choices=OPTIMIZERS))
    lr: float = key(0.1, "peak learning rate (per lr_reference_batch images when that is set)", rule=_gt(0, 1e6))
    lr_reference_batch: int = key(
        0, ">0: lr is per this many images and scales with the global batch", rule=_ge(0, COUNT)
    )
    momentum: float = key(0.9, "SGD momentum", rule=FRACTION)
    nesterov: bool = key(False, "Nesterov momentum")
    weight_decay: float = key(1e-4, "L2 penalty (decoupled for adamw)", rule=_ge(0, 10))
    norm_weight_decay: float | None = key(None, "for norm weights and biases (unset: weight_decay)", rule=_ge(0, 10))
    batch_size: int = key(128, "global, over all processes", rule=_ge(1, 2**20))
    epochs: float = key(
        10, "passes over the training set (fractions allowed: 2.5 ends halfway through the third)", rule=_ge(0, 100_000)
    )
    iterations: int = key(
        0, ">0: train this many steps instead of `epochs` (the paper's CIFAR schedule)", rule=_ge(0, COUNT)
    )
    schedule: str = key("cosine", "cosine | step | onecycle | plateau | constant", rule=Rule(choices=SCHEDULES))
    milestones: list[int] = key(factory=list, help="step schedule: steps at which lr *= gamma", rule=_ge(1, COUNT))
    gamma: float = key(0.1, "step and plateau schedules: the lr factor", rule=_gt(0, 10))
    plateau_patience: int = key(
        3, "plateau schedule: epochs without a better val loss before lr *= gamma", rule=_ge(0, COUNT)
    )
    warmup_epochs: float = key(
        0.0, "linear warmup from warmup_start * lr, epochs (fractions allowed)", rule=_ge(0, 100_000)
    )
    warmup_start: float = key(0.01, "warmup starts at this fraction of lr", rule=Rule(low=0, high=1, low_open=True))
    ema: bool = key(False, "keep an exponential moving average of the weights and evaluate it too")
    ema_decay: float = key(0.9999, "EMA decay per update", rule=UNIT)
    ema_every: int = key(1, "update the EMA every N steps", rule=_ge(1, COUNT))
    accum_steps: int = key(1, "gradient accumulation", rule=_ge(1, 65_536))
    clip_grad: float = key(0.0, "max gradient norm (0: off)", rule=_ge(0, 1e6))
    amp: str = key(
        "none",
        "none | bf16 | fp16 | auto (bf16 where the device computes it natively, else none)",
        rule=Rule(choices=AMPS),
    )
    channels_last: bool | None = key(False, "on, off, or auto: on a GPU and a CPU (oneDNN's layout: faster on both)")
    compile: bool = key(False, "torch.compile the model")
    cuda_graph: str = key(
        "auto",
        "auto | on | off: the whole training step as one CUDA graph where it can be",
        rule=Rule(choices=CUDA_GRAPHS),
    )
    sync_bn: bool = key(False, "distributed: BatchNorm statistics over all processes")


@dataclass
class RunKeys:
    """Run: where the run is written, its seed, checkpoints, logs and device."""

    SECTION: ClassVar[str] = "run"
    out: str = key("runs", "folder that holds the run folders")
    name: str = key("", "run folder name (default: <model>-<dataset>-<time>)")
    seed: int = key(0, "seed of every random choice", rule=_ge(0, SEED))
    deterministic: bool = key(False, "bit-exact resumes: deterministic kernels, every random choice seeded per step")
    eval_every: int = key(1, "evaluate every N epochs", rule=_ge(1, COUNT))
    curve_steps: int = key(
        0, "also every N steps: training error over those steps and validation error (curve.jsonl)", rule=_ge(0, COUNT)
    )
    checkpoint_steps: int = key(0, "also checkpoint every N steps (0: each epoch only)", rule=_ge(0, COUNT))
    tensorboard: bool = key(
        False, "also log each epoch to TensorBoard (RUN/tensorboard; pip install 'resnets[tensorboard]')"
    )
    device: str = key("auto", "auto | cpu | cuda | cuda:N", rule=Rule(device=True))
    progress: bool = key(True, "a progress bar")


@dataclass
class TrainConfig(RunKeys, OptimKeys, FinetuneKeys, ClassificationKeys, DenseKeys, DataKeys, ModelKeys):
    """A run's whole config: every section's keys, flat (config files, config.json and the flags name them
    without their section). Each key's rule (Rule) is written beside it; `validate` checks them, then the rules
    between keys."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def run_steps(self, per_epoch: int) -> int:
        """The steps of the whole run at `per_epoch` steps an epoch: --iterations, else --epochs of them (a fraction
        ends the last epoch early: 2.5 epochs are 3, the last stopped halfway)."""
        return self.iterations or max(round(self.epochs * per_epoch), 1)

    def validate(self) -> "TrainConfig":
        """Every key against its rule in RULES (type, range or choices), then the rules between keys. Runs before
        anything is written."""
        for key, rule in RULES.items():
            rule.check(key, getattr(self, key))
        if self.epochs <= 0 and self.iterations < 1:
            raise ResnetsError("set epochs above 0 or iterations to at least 1")
        for k in ("mixup", "cutmix"):  # a Beta(alpha, alpha) draw underflows for a tiny alpha
            if 0 < getattr(self, k) < 0.01:
                raise ResnetsError(f"{k} must be 0 (off) or at least 0.01; got {getattr(self, k)!r}")
        if DATASETS[self.dataset].kind == "synthetic":  # held in memory, uint8
            side = self.train_crop or 224
            size = self.synthetic_samples * max(self.in_chans, 3) * side * side
            if size > 8 << 30:
                raise ResnetsError(
                    f"{self.synthetic_samples:,} synthetic images of {side}x{side} take {size / 2**30:.0f} "
                    "GiB; at most 8 GiB: fewer --synthetic-samples or a smaller --train-crop"
                )
        if not self.model and not self.weights:
            raise ResnetsError("name a --model, or give --weights to take the architecture from")
        self.check_task()
        if DATASETS[self.dataset].needs_data and not self.data:
            raise ResnetsError(f"dataset {self.dataset} needs --data")
        if self.name and (os.sep in self.name or self.name in (".", "..")):
            raise ResnetsError(f"--name is a folder name inside --out, not a path; got {self.name!r}")
        if self.tensorboard and importlib.util.find_spec("tensorboard") is None:
            raise ResnetsError("--tensorboard needs the tensorboard package: pip install 'resnets[tensorboard]'")
        return self

    def check_task(self, model: str | None = None) -> None:
        """A model trains on its task's datasets (a detector on boxes, a segmenter on class maps, a classifier on
        labels) with its task's augmentations (models.registry.TASK_TRAITS; the default --augment is each task's
        own). `model`: the architecture when --model leaves it to the weights (read from them by the engine)."""
        model = model or self.model
        data = TASK_TRAITS[DATASETS[self.dataset].task]
        if self.augment == TrainConfig.augment and data.augment:  # the config's default where no one said one (a
            self.augment = data.augment  # config made in Python, or recorded before resolve said the task's own)
        if model not in list_models():
            return  # unknown names are refused where the model is built; weights bring their own
        task = get_entry(model).task
        if data is not task:
            theirs = [d for d, spec in DATASETS.items() if spec.task == task.name]
            named = " or ".join(", ".join(theirs).rsplit(", ", 1))
            where = f"train it on --dataset {named}" if theirs else f"no registered dataset holds {task.holds}"
            raise ResnetsError(
                f"{model} is a {task.noun}: {where} (--dataset {self.dataset} holds {data.holds}: train a "
                f"{data.noun} on it)"
            )
        refuse_foreign_augment(self)  # (the model's task is its data's, checked above)
        if task.dense:  # a classifier's keys (mixup, label smoothing, 10 crops, ...) would be kept and not applied
            said = [f.name for f in dataclasses.fields(ClassificationKeys) if getattr(self, f.name) != f.default]
            if said:
                flags = ", ".join("--" + k.replace("_", "-") for k in said)
                raise ResnetsError(f"{flags}: a classifier's option; {model} is a {task.noun}")


# every key's rule, from beside the key (the command line's flags and the tests read it here)
RULES: dict[str, Rule] = {f.name: f.metadata["rule"] for f in dataclasses.fields(TrainConfig)}
SECTIONS = (ModelKeys, DataKeys, DenseKeys, ClassificationKeys, FinetuneKeys, OptimKeys, RunKeys)


# `make run`'s recipe, the fastest to 92% top-1 of benchmarks/time_to_accuracy.py's study on a 2-core CPU
# (issue 23): the paper's family at n=2 (resnet14), 2.5 epochs (the one-cycle schedule ends halfway through the
# third), no weight decay on the norms' weights and biases (with it, 2.5 epochs scattered around 92.0-92.6%, one
# run of four at 91.99%; 3 epochs with it reached 92.5-92.7% in 1.2x the time), no augmentation at all (a short run
# underfits: crops and flips cost 0.9 points at 3 epochs, random erasing 0.1-0.2 more), flip TTA reported beside
# the plain top-1 (lower here: the net never saw a mirrored image). resnet14 for 4 epochs with crops and flips was
# the recipe before (92.0-92.2% in 1.5x the time), resnet20 5 epochs with erasing 0.25 the one before that.
_FASHION = dict(
    model="resnet14",
    dataset="fashion-mnist",
    augment="none",
    random_erasing=0.0,
    lr=0.2,
    momentum=0.9,
    nesterov=True,
    weight_decay=5e-4,
    norm_weight_decay=0.0,
    batch_size=128,
    epochs=2.5,
    schedule="onecycle",
    label_smoothing=0.05,
    amp="auto",
    channels_last=None,
    workers=0,
    tta="flip",
)
# the recipe before issue 23, for the long runs below that keep its regularisation
_FASHION_R20 = dict(
    _FASHION,
    model="resnet20",
    epochs=5,
    augment="crop-flip",
    pad=2,
    random_erasing=0.25,
    norm_weight_decay=None,
    tta="none",
)

# ours, what the small-folder recipes of detectors and segmenters share: SGD 0.01 for 8 images, flips, a warmup
# epoch then cosine, 12 epochs, scored every third
_DENSE = dict(
    augment="hflip",
    lr=0.01,
    momentum=0.9,
    weight_decay=1e-4,
    batch_size=8,
    epochs=12,
    schedule="cosine",
    warmup_epochs=1,
    warmup_start=0.001,
    eval_every=3,
    amp="auto",
    workers=2,
)

# what a recipe reached, printed before a run of it unchanged (`resnets train` says the expected time and this);
# measured by benchmarks/time_to_accuracy.py, see benchmarks/RESULTS.md
RECIPE_RESULTS: dict[str, str] = {
    "fashion-mnist": "92.1-92.3% on the 10,000 test images (two seeds, fp32 and bf16; 91.0-91.7% with flip TTA)",
    "fashion-mnist-long": "94.6% (two runs, seed 0: 94.50% and 94.63%)",
}

RECIPES: dict[str, dict[str, Any]] = {
    # section 3.4: SGD 0.1, momentum 0.9, wd 1e-4, batch 256, lr /10 when the error plateaus, 60e4 iterations
    # (~120 epochs of ImageNet); scale augmentation 256-480, 224 crops, flips, colour; 10-crop testing
    "paper-imagenet": dict(
        model="resnet50",
        dataset="imagefolder",
        augment="paper-imagenet",
        train_crop=224,
        eval_resize=256,
        eval_crop=224,
        lr=0.1,
        momentum=0.9,
        weight_decay=1e-4,
        batch_size=256,
        epochs=120,
        schedule="plateau",
        gamma=0.1,
        plateau_patience=5,
        ten_crop=True,
        workers=8,
    ),
    # section 4.2: lr 0.1, /10 at 32k and 48k iterations, stop at 64k, wd 1e-4, momentum 0.9, batch 128,
    # 4-pixel padding, 32 crops, flips
    "paper-cifar": dict(
        model="resnet20",
        dataset="cifar10",
        augment="paper-cifar",
        pad=4,
        lr=0.1,
        momentum=0.9,
        weight_decay=1e-4,
        batch_size=128,
        iterations=64_000,
        schedule="step",
        milestones=[32_000, 48_000],
        gamma=0.1,
    ),
    # torchvision's ResNet-50 recipe for 80.858% (IMAGENET1K_V2)
    "tv2-imagenet": dict(
        model="resnet50",
        dataset="imagefolder",
        augment="rrc",
        train_crop=176,
        eval_resize=232,
        eval_crop=224,
        lr=0.5,
        lr_reference_batch=1024,
        batch_size=1024,
        momentum=0.9,
        weight_decay=2e-5,
        norm_weight_decay=0.0,
        epochs=600,
        schedule="cosine",
        warmup_epochs=5,
        warmup_start=0.01,
        label_smoothing=0.1,
        mixup=0.2,
        cutmix=1.0,
        auto_augment="trivial",
        random_erasing=0.1,
        ema=True,
        ema_decay=0.99998,
        ema_every=32,
        amp="auto",
        channels_last=None,
        workers=8,
    ),
    # ours, `make run`'s: resnet14 on Fashion-MNIST for 2.5 epochs (see _FASHION), a few minutes on a laptop CPU (amp
    # auto: bf16 where the CPU has bf16 units, 1.7x the fp32 speed; fp32 where bf16 would be emulated; channels_last
    # on both)
    "fashion-mnist": _FASHION,
    # the long run: the recipe before issue 23 for 35 epochs, 94.50% and 94.63% (benchmarks/RESULTS.md: 37 min on
    # 2 threads with bf16 units, 64 min on 1 thread)
    "fashion-mnist-long": dict(_FASHION_R20, epochs=35),
    # ours, for one GPU: the data held on the GPU, augmented there, and each step one CUDA graph replay (about
    # 1 s an epoch for resnet20 on an H100). Time to accuracy, the whole command: fashion-mnist-gpu aims at 94.5%
    # within 60 s (resnet20, 40 epochs), fashion-mnist-gpu-long at 95.0% within 3 minutes (resnet56, 60 epochs)
    "fashion-mnist-gpu": dict(_FASHION_R20, epochs=40, eval_every=10),
    "fashion-mnist-gpu-long": dict(_FASHION_R20, model="resnet56", epochs=60, eval_every=10),
    # ours: fine-tuning a pretrained net on a small folder of images (`resnets finetune`): the architecture and
    # preprocessing come from the weights, a new head, discriminative learning rates (0.7 per stage), warmup,
    # strong augmentation, 10% of each class held out when there is no val/ folder, early stopping on it
    "finetune": dict(
        model="",
        dataset="imagefolder",
        augment="strong",
        random_erasing=0.25,
        lr=0.01,
        momentum=0.9,
        nesterov=True,
        weight_decay=1e-4,
        norm_weight_decay=0.0,
        batch_size=32,
        epochs=15,
        schedule="cosine",
        warmup_epochs=1,
        label_smoothing=0.1,
        strategy="full",
        layer_decay=0.7,
        early_stop=5,
        amp="auto",
        channels_last=None,
        workers=2,
    ),
    # torchvision's detection reference for Faster R-CNN R50-FPN on COCO (37.0 box mAP): SGD 0.02 for 16 images,
    # momentum 0.9, wd 1e-4, 26 epochs, lr /10 after epochs 16 and 22 (train2017's 117,266 images with boxes are
    # 7,329 steps of 16), 1000 warmup steps from 0.001 x lr; the backbone from torchvision's ImageNet ResNet-50
    # with frozen BatchNorm and its top 3 stages trained; horizontal flips
    "coco-fasterrcnn": dict(
        model="fasterrcnn_resnet50_fpn",
        weights="resnet50.tv_in1k",
        dataset="coco",
        augment="hflip",
        lr=0.02,
        momentum=0.9,
        weight_decay=1e-4,
        batch_size=16,
        epochs=26,
        schedule="step",
        milestones=[16 * 7329, 22 * 7329],
        gamma=0.1,
        warmup_epochs=1000 / 7329,
        warmup_start=0.001,
        amp="auto",
        workers=8,
    ),
    # ours: a detector for a small COCO folder (`resnets data shapes` makes one): Faster R-CNN, flips, cosine with a
    # warmup epoch; 10% of the images held out when there is no val/ folder; the backbone from --weights when given
    "finetune-detection": dict(_DENSE, model="fasterrcnn_resnet50_fpn", dataset="coco", val_split=0.1),
    # ours: a segmenter for a small mask folder (`resnets data shapes` makes one): DeepLabV3, flips, cosine after a
    # warmup epoch (torchvision's reference for COCO-VOC: SGD 0.02 for 32 images, 30 epochs, random scale and crop)
    "finetune-segmentation": dict(_DENSE, model="deeplabv3_resnet50", dataset="masks"),
}


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """Turn `value` (from TOML/YAML, or a command-line string) into the field's type, or raise."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)) and type(None) in args:
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "", "auto")):
            return None
        return _coerce(key, value, next(a for a in args if a is not type(None)))
    try:
        if hint is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on", "false", "0", "no", "off"):
                return value.lower() in ("true", "1", "yes", "on")
            raise ValueError
        if hint is int:
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(float(value)) if isinstance(value, str) and "e" in value.lower() else int(value)
        if hint is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if hint is str:
            if isinstance(value, os.PathLike):
                return os.fspath(value)
            if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                raise ValueError
            return str(value)
        if origin is list:
            items = value.split(",") if isinstance(value, str) else value
            if not isinstance(items, (list, tuple)):
                raise ValueError
            return [_coerce(key, v, args[0]) for v in items if v != ""]
    except (TypeError, ValueError, OverflowError):  # OverflowError: int("1e400") is int(inf)
        pass
    raise ResnetsError(f"config key {key!r} expects {getattr(hint, '__name__', hint)}; got {value!r}")


def _fields() -> dict[str, Any]:
    return typing.get_type_hints(TrainConfig)


def apply(cfg: TrainConfig, values: dict[str, Any], source: str) -> TrainConfig:
    hints = _fields()
    for key, value in values.items():
        k = key.replace("-", "_")
        if k not in hints:
            import difflib

            close = difflib.get_close_matches(k, hints, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ResnetsError(f"unknown config key {key!r} in {source}{hint}")
        setattr(cfg, k, _coerce(k, value, hints[k]))
    return cfg


def read_file(path: str | os.PathLike) -> dict[str, Any]:
    """A TOML (.toml) or YAML (.yaml/.yml) or JSON file of config keys."""
    p = Path(path)
    if not p.is_file():
        raise ResnetsError(f"config file not found: {p}")
    try:
        if p.suffix == ".toml":
            try:
                import tomllib
            except ModuleNotFoundError:  # Python 3.10
                import tomli as tomllib  # type: ignore[no-redef]
            data = tomllib.loads(p.read_text(encoding="utf-8"))
        elif p.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        elif p.suffix == ".json":
            data = json.loads(p.read_text(encoding="utf-8"))
        else:
            raise ResnetsError(f"config files are .toml, .yaml or .json; got {p.name}")
    except ResnetsError:
        raise
    except Exception as e:  # parse errors of any of the three formats
        raise ResnetsError(f"cannot parse {p}: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ResnetsError(f"{p} must hold a table of config keys")
    return data


def reaches(key: str, value: Any, dataset: str | None = None) -> str | None:
    """What a config value does beyond reading this machine's files and writing its run, or None: "runs a command"
    (pipe:), "fetches a URL" (any scheme://, but file://; data/remote.py's rule), "fetches from the Hugging Face
    Hub" (hf-hub:ORG/NAME weights, or the data of `dataset` hf that is a Hub name, not a local folder), or, for
    `out`, "writes outside the working folder" (an absolute path, one that climbs out with .., or one whose
    symbolic links lead out)."""
    if not isinstance(value, str):
        return None
    if key == "out":
        here = Path.cwd().resolve()
        path = Path(value)
        if path.is_absolute() or ".." in path.parts or not (here / path).resolve().is_relative_to(here):
            return "writes outside the working folder"
    if value.lower().startswith("hf-hub:") or (key == "data" and dataset == "hf" and remote.hub_dataset(value)):
        return "fetches from the Hugging Face Hub"
    return remote.reaches(value)


def only_from_command_line(values: dict[str, Any], source: str, said: Any) -> None:
    """The rule for every source of config values but the command line (a recipe, a --config file, a run's
    config.json): a value that runs a command, fetches a URL or writes outside the working folder (`reaches`) is
    taken only from the command line. A key the command line gives (`said`: its keys) replaces the value of
    `source`, which is then never used; any other such value is refused in one line, before anything runs."""
    given = {k.replace("-", "_") for k in said}
    dataset = said.get("dataset") if isinstance(said, dict) and "dataset" in said else values.get("dataset")
    for key, value in values.items():
        k = key.replace("-", "_")
        for v in value if isinstance(value, list) else [value]:
            what = reaches(k, v, dataset)
            if what is not None and k not in given:
                raise ResnetsError(
                    f"{source}'s {k} {what} ({printable(str(v))[:60]}); that is taken only from the command line: "
                    f"give --{k.replace('_', '-')} there to use it"
                )


def resolve(
    recipe: str | None = None, file: str | os.PathLike | None = None, overrides: dict[str, Any] | None = None
) -> TrainConfig:
    """recipe defaults, then the file, then explicit overrides (the command line); validated. A command, a URL or
    a folder outside the working one comes only from the overrides (`only_from_command_line`). Image files
    (imagefolder, csv, wds, hf) whose augment none of them says train with rrc."""
    cfg = TrainConfig()
    said = overrides or {}
    if recipe is not None:
        if recipe not in RECIPES:
            raise ResnetsError(f"unknown recipe {recipe!r} (choose from {', '.join(RECIPES)})")
        only_from_command_line(RECIPES[recipe], f"recipe {recipe}", said)
        apply(cfg, RECIPES[recipe], f"recipe {recipe}")
    values = read_file(file) if file is not None else {}
    if file is not None:
        only_from_command_line(values, str(file), said)
        apply(cfg, values, str(file))
    if overrides:
        apply(cfg, overrides, "the command line")
    _augment_for_task(cfg, any("augment" in layer for layer in (RECIPES.get(recipe or "", {}), values, said)))
    return cfg.validate()


def _augment_for_task(cfg: TrainConfig, said: bool) -> None:
    """An --augment that was said is one of its dataset's task's (a detector's paper-cifar was taken as the
    default and trained with flips); unsaid, it is the task's own (check_task: a detector's and a segmenter's
    flips), or for a classifier on image files rrc (photos of any size: a random resized crop, not paper-cifar's
    padded crop of the whole)."""
    if cfg.dataset not in DATASETS:
        return  # refused by validate
    if said:
        refuse_foreign_augment(cfg)
    elif DATASETS[cfg.dataset].kind == "files":
        cfg.augment = "rrc"


def refuse_foreign_augment(cfg: TrainConfig) -> None:
    """An --augment said for a run must be one of its dataset's task's (check_task takes the config's default,
    unsaid, as the task's own)."""
    task = TASK_TRAITS[DATASETS[cfg.dataset].task] if cfg.dataset in DATASETS else None
    if task is not None and cfg.augment not in task.augments:
        raise ResnetsError(f"--augment for a {task.noun} is one of {', '.join(task.augments)}; got {cfg.augment}")


def to_toml(cfg: TrainConfig) -> str:
    """`cfg` as a TOML config file, section by section, that `--config` reads back to the same config (an unset key
    is written "none", which every optional key reads as unset)."""

    def value(v: Any) -> str:
        if v is None:
            return '"none"'
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return json.dumps(v, ensure_ascii=False)  # a TOML basic string: JSON's escapes are TOML's

    lines = ["# a resolved `resnets train` config (recipe < file < flags); `--config FILE` reads it back"]
    for section in SECTIONS:
        lines.append(f"\n# ---- {section.SECTION}")
        lines += [f"{f.name} = {value(getattr(cfg, f.name))}" for f in dataclasses.fields(section)]
    return "\n".join(lines) + "\n"


def from_dict(values: dict[str, Any]) -> TrainConfig:
    return apply(TrainConfig(), values, "saved config").validate()
