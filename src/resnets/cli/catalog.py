"""`resnets list` and `resnets summary`: the catalogue (answered without torch) and one model's Table 1."""

from __future__ import annotations

import argparse
import json
import sys

from ..errors import ResnetsError
from ..models import get_entry, list_models
from ..weights import get_weights, list_weights
from .options import add_model_options, check_classifier, is_architecture, model_options

# what loads torch is imported inside the commands that use it: `resnets --help` answers without torch


def _cmd_list(args: argparse.Namespace) -> int:
    if args.weights:
        names = list_weights(args.pattern)
        rows = [get_weights(n) for n in names]
        if args.json:
            print(
                json.dumps(
                    [
                        {
                            "name": s.name,
                            "url": s.url,
                            "top1": s.metrics.get("top1"),
                            "top5": s.metrics.get("top5"),
                            **{k: v for k, v in s.metrics.items() if k not in ("top1", "top5")},
                            "preprocessing": s.preprocessing.to_dict() if s.preprocessing else None,
                            "source": s.source,
                        }
                        for s in rows
                    ],
                    indent=2,
                )
            )
        else:
            width = max((len(n) for n in names), default=4)
            print(f"{'weights'.ljust(width)}  top1    top5    eval       source")
            for s in rows:
                task = get_entry(s.architecture).task
                if task.dense:  # a detector's box (and mask) mAP, a segmenter's mIoU: the scores its task publishes
                    scores = ", ".join(f"{say} {s.metrics[k]:.1f}" for k, say in task.published if k in s.metrics)
                    print(f"{s.name.ljust(width)}  {scores:<31}  {s.source}")
                    continue
                pre = f"{s.preprocessing.resize}->{s.preprocessing.crop}"
                print(
                    f"{s.name.ljust(width)}  {s.metrics['top1']:6.3f}  {s.metrics['top5']:6.3f}  {pre:<9}  {s.source}"
                )
        return 0
    names = list_models(args.pattern)
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "name": n,
                        "family": get_entry(n).family,
                        "options": list(get_entry(n).options),
                        "description": get_entry(n).doc,
                    }
                    for n in names
                ],
                indent=2,
            )
        )
    else:
        width = max((len(n) for n in names), default=5)
        for n in names:
            print(f"{n.ljust(width)}  {get_entry(n).doc}")
    if not names:
        print(f"no model matches {args.pattern!r}", file=sys.stderr)
        return 1
    return 0


def _cmd_summary(args: argparse.Namespace) -> int:
    from ..factory import create_model, load
    from ..summary import format_table, summarize

    options = model_options(args)
    if is_architecture(args.model):
        check_classifier(args.model)
        model = create_model(args.model, weights=args.weights, **options)
    else:
        if args.weights:
            raise ResnetsError("give either a model (file, run folder or weight name) or --weights, not both")
        model = load(args.model, **options)
    meta = model.meta
    size = args.input_size or get_entry(meta.architecture).input_size
    in_chans = meta.in_chans
    if size < 32 and get_entry(meta.architecture).family == "imagenet":
        raise ResnetsError(f"--input-size {size} is too small for {meta.architecture} (at least 32)")
    s = summarize(model, size, in_chans)
    print(json.dumps(s, indent=2) if args.json else format_table(s))
    return 0


def add_commands(sub) -> None:
    """The subcommands of models: the catalogue and one model's Table 1."""
    p = sub.add_parser("list", help="list registered models (or weights with --weights)")
    p.add_argument("pattern", nargs="?", default="*", help="shell-style pattern, e.g. 'resnet*'")
    p.add_argument("--weights", action="store_true", help="list registered pretrained weights instead")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_list)

    p = sub.add_parser("summary", help="the paper's Table 1 for a model: stages, params, multiply-adds")
    p.add_argument("model", help="a model name (see `resnets list`) or a saved model file")
    p.add_argument("--input-size", type=int, help="square input side in pixels (default 224; 32 for CIFAR nets)")
    p.add_argument("--weights", help="registered weights name or a weights file to load (checked against the model)")
    p.add_argument("--json", action="store_true", help="one JSON object with params, macs, size_mb and stages")
    add_model_options(p)
    p.set_defaults(func=_cmd_summary)
