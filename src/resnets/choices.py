"""The allowed values of every enumerated option, declared once (standard library only, on the bottom floor): the
config's rules, the command line's choices and the modules that implement each option all read them here."""

NORMS = ("batch", "group", "frozen_batch")  # models: BatchNorm, GroupNorm (32 groups), FrozenBatchNorm
SHORTCUTS = ("A", "B", "C")  # the paper's: zero-padding, projection where the shape changes, projection everywhere
# each task's --augment values: a classifier's; a detector's (on boxes and masks: hflip, or SSD's colour, zoom-out,
# IoU crop and flip); a segmenter's (scale: random 0.5-2x, flip, a --train-crop crop). AUGMENTS: all of them
CLASSIFICATION_AUGMENTS = ("none", "paper-cifar", "crop-flip", "paper-imagenet", "rrc", "strong")
DETECTION_AUGMENTS = ("none", "hflip", "ssd")
SEGMENTATION_AUGMENTS = ("none", "hflip", "scale")
AUGMENTS = tuple(dict.fromkeys(CLASSIFICATION_AUGMENTS + DETECTION_AUGMENTS + SEGMENTATION_AUGMENTS))
OUTPUT_STRIDES = (8, 16, 32)  # ImageNet nets: the last stages dilated past this stride (32: none)
AUTO_AUGMENTS = ("none", "trivial", "randaugment")
INTERPOLATIONS = ("bilinear", "bicubic", "nearest")
CROP_MODES = ("center", "squash")  # the shorter side to `resize`, or both sides
LOADERS = ("auto", "host", "device")
STRATEGIES = ("full", "linear-probe", "partial", "gradual")  # fine-tuning: what trains when
BN_POLICIES = ("train", "freeze", "frozen", "group")  # fine-tuning: what BatchNorm does
OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "step", "onecycle", "plateau", "constant")
AMPS = ("none", "bf16", "fp16", "auto")
CUDA_GRAPHS = ("auto", "on", "off")
TTAS = ("none", "flip")  # test-time augmentation: none, or each image averaged with its mirror
PRECISIONS = ("fp32", "bf16", "fp16")  # inference: eager and compile at any, ONNX Runtime at fp32
