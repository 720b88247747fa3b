"""Models by name: `register_model` entrypoints, `list_models`, and option checking."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from ..choices import (
    CLASSIFICATION_AUGMENTS,
    DETECTION_AUGMENTS,
    NORMS,
    OUTPUT_STRIDES,
    SEGMENTATION_AUGMENTS,
    SHORTCUTS,
)
from ..errors import OptionError, UnknownModelError
from ..registry import Registry

if TYPE_CHECKING:
    from torch import nn

# the most classes and input channels a model may have: far above any real one (ImageNet-21k has 21,841 classes,
# hyperspectral inputs a few dozen bands), low enough that a number from a foreign file cannot make a model of
# gigabytes (num_classes 1,000,000 is a 2048 x 1e6 classifier: 8 GB)
MAX_CLASSES = 100_000
MAX_IN_CHANS = 64

# Options a user may pass to create_model; each entrypoint says which of them it takes.
HEAD = ("num_classes", "in_chans", "norm")
RESIDUAL = HEAD + ("zero_init_residual", "drop_path_rate")
SHORTCUT = RESIDUAL + ("shortcut",)
BOTTLENECK = SHORTCUT + ("stride_in_1x1",)
# the ImageNet nets also: stages past this stride dilated instead (8, 16; 32: none), for DeepLabV3 and FCN
DILATED = ("output_stride",)
# a backbone by name, its top layers trained; the images' shorter side resized to min_size (longer at most max_size)
DETECTION = ("num_classes", "backbone", "trainable_layers", "norm", "min_size", "max_size", "norm_eps")
# the R-CNNs also: how many proposals per image the box head trains on (torchvision's 512; fewer train faster)
RCNN = DETECTION + ("box_batch_size_per_image",)
# a segmenter: its backbone by name, dilated to output_stride, and an auxiliary head on layer3 (aux_loss)
SEGMENTATION = ("num_classes", "backbone", "norm", "output_stride", "aux_loss")
MAX_SIDE = 8192  # the largest side a detector may resize its images to


@dataclass(frozen=True)
class TaskTraits:
    """What a task is, as every floor needs to know it (the floors below tasks/ read it here; a task's room there
    holds its behaviour and reads its traits): the model families it covers, what its model is called and the
    command that runs one on images, what its datasets hold, its --augment values, the class count of a model made
    without one, and whether it is dense: a model that takes images of any size, resizes and normalises them
    itself (no preprocessing recorded) and answers per box or per pixel (ONNX by torchvision's path, served eagerly)."""

    name: str
    families: tuple[str, ...]
    noun: str  # "a detector"
    command: str  # `resnets predict`, `resnets detect`: runs its model on images
    holds: str  # what its datasets hold: "labels", "boxes"
    augments: tuple[str, ...]
    default_classes: int = 0  # a model made without num_classes: the architecture's own (0), else this
    dense: bool = False
    input_size: int = 224  # the side it is fed by default (a family's own where TaskTraits.sizes says)
    sizes: tuple[tuple[str, int], ...] = ()  # (family, its input side) where a family differs
    kinds: tuple[str, ...] = ()  # the classes (module.name) of its models built elsewhere: torchvision's own
    augment: str = ""  # its --augment when none is said ("": the config's own default)
    # how its model is called: "batch", a normalised (N, C, H, W) tensor in; "images", a list of [0, 1] (C, H, W)
    # images of any sizes in, one dict of outputs per image out (torchvision's detectors)
    calling: str = "batch"
    # the scores published weights of a dense task record (WeightSpec.metrics' key, as `resnets list` names it)
    published: tuple[tuple[str, str], ...] = ()


# every task by name: the one table of "which task is this?" below tasks/ (tasks/ registers a room for each)
TASK_TRAITS: dict[str, TaskTraits] = {
    t.name: t
    for t in (
        TaskTraits(
            "classification",
            ("imagenet", "cifar"),
            "classifier",
            "predict",
            "labels",
            CLASSIFICATION_AUGMENTS,
            sizes=(("cifar", 32),),
        ),
        TaskTraits(
            "detection",
            ("detection",),
            "detector",
            "detect",
            "boxes",
            DETECTION_AUGMENTS,
            91,
            True,
            800,
            kinds=(
                "torchvision.models.detection.generalized_rcnn.GeneralizedRCNN",
                "torchvision.models.detection.retinanet.RetinaNet",
            ),
            augment="hflip",
            calling="images",
            published=(("box_map", "box mAP"), ("mask_map", "mask mAP")),
        ),
        TaskTraits(
            "segmentation",
            ("segmentation",),
            "segmentation model",
            "segment",
            "class maps",
            SEGMENTATION_AUGMENTS,
            21,
            True,
            520,
            kinds=("torchvision.models.segmentation.fcn.FCN", "torchvision.models.segmentation.deeplabv3.DeepLabV3"),
            augment="hflip",
            published=(("miou", "mIoU"), ("pixel_acc", "pixel acc")),
        ),
    )  # fmt: skip
}
_TASK_OF_FAMILY = {f: t for t in TASK_TRAITS.values() for f in t.families}


def add_task(traits: TaskTraits) -> TaskTraits:
    """A new task's traits (its room in tasks/ registers its behaviour); a name or a family taken is an error."""
    taken = [f for f in traits.families if f in _TASK_OF_FAMILY]
    if traits.name in TASK_TRAITS or taken:
        raise ValueError(f"task {traits.name!r} or its families {taken} are already registered")
    TASK_TRAITS[traits.name] = traits
    _TASK_OF_FAMILY.update({f: traits for f in traits.families})
    return traits


@dataclass(frozen=True)
class ModelEntry:
    name: str
    fn: Callable[..., "nn.Module"]
    options: tuple[str, ...]
    family: str  # "imagenet", "cifar", "detection" or "segmentation": its task and its default input size

    @property
    def task(self) -> TaskTraits:
        """The task its family is for."""
        return _TASK_OF_FAMILY[self.family]

    @property
    def input_size(self) -> int:
        """The classification crop (a detector resizes its images itself: the shorter side to 800)."""
        return dict(self.task.sizes).get(self.family, self.task.input_size)

    @property
    def doc(self) -> str:
        return (self.fn.__doc__ or "").strip().splitlines()[0] if self.fn.__doc__ else ""


_MODELS: Registry[ModelEntry] = Registry("model", UnknownModelError, "see `resnets list`")


def register_model(*, options: tuple[str, ...], family: str = "imagenet"):
    """Register an entrypoint under its function name with the user options it takes."""

    if family not in _TASK_OF_FAMILY:
        raise ValueError(f"family {family!r} belongs to no task (models.registry.TASK_TRAITS)")

    def deco(fn: Callable[..., "nn.Module"]) -> Callable[..., "nn.Module"]:
        _MODELS.add(fn.__name__, ModelEntry(fn.__name__, fn, options, family))
        return fn

    return deco


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style pattern, in registration order."""
    return _MODELS.names(pattern)


def get_entry(name: str) -> ModelEntry:
    return _MODELS.find(name)


def check_options(entry: ModelEntry, options: dict[str, Any]) -> None:
    """An option a model cannot take is an error, not silently ignored; so is a value out of range."""
    for key, value in options.items():
        if key not in entry.options:
            raise OptionError(
                f"model {entry.name!r} does not take option {key!r} (it takes: {', '.join(entry.options)})"
            )
        if key == "shortcut" and value not in SHORTCUTS:
            raise OptionError(f"shortcut must be one of {', '.join(SHORTCUTS)}, got {value!r}")
        if key == "norm" and value not in NORMS:
            raise OptionError(f"norm must be one of {', '.join(NORMS)}, got {value!r}")
        if key in ("num_classes", "in_chans"):
            low, high = (0, MAX_CLASSES) if key == "num_classes" else (1, MAX_IN_CHANS)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise OptionError(f"{key} must be a whole number from {low} to {high:,}; got {value!r}")
        if key == "drop_path_rate" and not (isinstance(value, (int, float)) and 0.0 <= value < 1.0):
            raise OptionError(f"drop_path_rate must be in [0, 1), got {value!r}")
        if key == "backbone" and (not isinstance(value, str) or get_entry(value).family != "imagenet"):
            raise OptionError(
                f"backbone must be an ImageNet-family model name (resnet50, resnext50_32x4d, ...); got {value!r}"
            )
        if key == "backbone" and "norm" not in get_entry(value).options:  # detection trains with frozen statistics
            raise OptionError(f"backbone {value!r} has a fixed norm; it cannot be a detection backbone")
        if key == "trainable_layers" and (isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 5):
            raise OptionError(f"trainable_layers must be a whole number from 0 to 5; got {value!r}")
        if key == "output_stride" and (isinstance(value, bool) or value not in OUTPUT_STRIDES):
            raise OptionError(f"output_stride must be 8, 16 or 32; got {value!r}")
        if key == "norm_eps" and (isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1):
            raise OptionError(f"norm_eps must be a number in [0, 1); got {value!r}")
        if key == "box_batch_size_per_image" and (
            isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 4096
        ):
            raise OptionError(f"box_batch_size_per_image must be a whole number from 1 to 4096; got {value!r}")
        if key in ("min_size", "max_size") and (
            isinstance(value, bool) or not isinstance(value, int) or not 32 <= value <= MAX_SIDE
        ):
            raise OptionError(f"{key} must be a whole number of pixels from 32 to {MAX_SIDE}; got {value!r}")
        if key in ("zero_init_residual", "stride_in_1x1", "aux_loss") and not isinstance(value, bool):
            raise OptionError(f"{key} must be True or False, got {value!r}")
