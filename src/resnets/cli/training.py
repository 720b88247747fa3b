"""`resnets train`, `finetune` and `eval`."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from ..choices import PRECISIONS, TTAS
from ..config import RECIPES, resolve, to_toml
from ..data.registry import DATASETS
from ..errors import ResnetsError
from .options import add_config_flags, count, folder_beside, overrides_of, writable_folder

# what loads torch is imported inside the commands that use it: `resnets --help` answers without torch


def _cmd_finetune(args: argparse.Namespace) -> int:
    overrides = overrides_of(args)
    if args.resume in (None, "auto"):  # a new run, or the whole command again (auto)
        what = {"data": "a folder of images, one subfolder per class", "weights": "a registered weights name or file"}
        missing = [f for f in what if not overrides.get(f)]
        if missing and not args.config:
            said = "; ".join(f"--{f}: {what[f]}" for f in missing)
            raise ResnetsError(f"finetune needs --{' and --'.join(missing)} ({said})")
        args.recipe = args.recipe or "finetune"
    return _cmd_train(args, overrides)


def _cmd_train(args: argparse.Namespace, overrides: dict | None = None) -> int:
    from ..engine import train
    from ..tasks import TASKS

    overrides = overrides_of(args) if overrides is None else overrides
    if args.print_config:  # what would run, and nothing else
        if args.resume and args.resume != "auto":
            from ..engine.rundir import load_resume

            cfg = load_resume(Path(args.resume), overrides)[0]
        else:
            cfg = resolve(args.recipe, args.config, overrides)
        print(to_toml(cfg), end="")
        return 0
    if args.resume == "auto":  # the whole command line again: continue the run if it is there, else start it
        result = train(resolve(args.recipe, args.config, overrides), resume="auto")
    elif args.resume:
        if args.recipe or args.config:
            raise ResnetsError("--resume continues a run with its saved config; --recipe and --config do not apply")
        result = train(resume=args.resume, overrides=overrides)
    else:
        result = train(resolve(args.recipe, args.config, overrides))
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    print("\n".join(TASKS[result["task"]].trained_lines(result)))
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from ..factory import load
    from ..tasks import task_of

    out = args.out or folder_beside(args.weights, "eval")
    if out:  # before the evaluation (it was found unwritable after it)
        writable_folder(out, "--out")
    kept = f"scores: {out}/eval.json" if out else "scores not written (--out FOLDER keeps them)"
    amp = {"fp32": "none"}.get(args.precision, args.precision) if args.precision else args.amp
    model = load(args.weights)
    room = task_of(model)
    res = room.evaluate_file(
        model,
        args.weights,
        args.data,
        dataset=args.dataset,
        ten_crop=args.ten_crop,
        tta=args.tta,
        batch_size=args.batch_size,
        workers=args.workers,
        amp=amp,
        device=args.device,
        download=args.download,
        limit=args.limit,
        out=out,
        progress=not args.json,
    )
    if args.json:
        print(json.dumps({k: v for k, v in res.items() if k != "confusion"}, indent=2))
        return 0
    lines, errors = room.eval_lines(res, out, kept)
    for line in errors:
        print(line, file=sys.stderr)
    print("\n".join(lines))
    return 0


def add_commands(sub, recipe: str | None) -> None:
    """The subcommands of training, fine-tuning and evaluation."""
    p = sub.add_parser(
        "train",
        help="train a model (recipes: " + ", ".join(RECIPES) + ")",
        description="Train with a named recipe, a TOML/YAML config file and any key overridden by a flag. "
        "Distributed: torchrun --nproc_per_node N -m resnets train ...",
    )
    add_config_flags(p, f"one of {', '.join(RECIPES)}", recipe if recipe in RECIPES else None)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser(
        "finetune",
        help="fine-tune pretrained weights on a folder of your images (one subfolder per class)",
        description="Fine-tune: `resnets finetune --data DIR --weights W`. DIR holds one subfolder per class "
        "(or train/ and val/ with them; without val/, 10% of each class is held out). The "
        "architecture comes from the weights unless --model names it. Strategies: full "
        "(layer-wise lr, --layer-decay), linear-probe, partial --unfreeze-stages K, gradual "
        "--unfreeze-every N; BatchNorm: --bn train|freeze|frozen|group. The recipe "
        "'finetune' holds the defaults; every config key can be set.",
    )
    add_config_flags(p, "start from another recipe than 'finetune'", recipe if recipe in RECIPES else "finetune")
    p.set_defaults(func=_cmd_finetune)

    p = sub.add_parser("eval", help="evaluate a saved model: top-1/top-5, per-class accuracy, confusion matrix")
    p.add_argument(
        "--weights", required=True, help="a model file (model.safetensors, a checkpoint), run folder or registered name"
    )
    p.add_argument(
        "--dataset",
        choices=[n for n, s in DATASETS.items() if s.kind != "synthetic"],
        help="default: imagefolder for a folder given with --data, csv for a file",
    )
    p.add_argument("--data", help="image folder (DIR or DIR/val), CSV manifest, or dataset files")
    p.add_argument("--ten-crop", action="store_true", help="the paper's 10-crop testing")
    p.add_argument(
        "--tta",
        choices=TTAS,
        default="none",
        help="test-time augmentation, reported beside the plain scores: flip averages each image with its mirror",
    )
    p.add_argument("--batch-size", type=count(1), default=256)
    p.add_argument(
        "--workers",
        type=count(0),
        default=2,
        help="loader processes for image files (0: none; the images are decoded in the sandbox's capped processes "
        "either way)",
    )
    p.add_argument("--precision", choices=PRECISIONS, help="autocast precision (default fp32)")
    p.add_argument(
        "--amp",
        choices=["none", "bf16", "fp16", "auto"],
        default="none",
        help="the same as --precision, "
        "in the training config's words (auto: bf16 where the device computes it natively)",
    )
    p.add_argument("--device", default="auto")
    p.add_argument("--download", action="store_true")
    p.add_argument("--limit", type=count(0), default=0, help="evaluate the first N images only")
    p.add_argument(
        "--out",
        help="folder for eval.json and the confusion matrix (default: eval/ in the run folder or beside the model "
        "file; for a registered name, none)",
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_eval)
