"""The `resnets` command: a thin shell over the library. Bad input is one line on stderr and exit code 2."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Sequence

from .errors import ResnetsError

EXIT_USAGE = 2


def _add_model_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model options (only those the architecture takes)")
    g.add_argument("--num-classes", type=int, help="classifier size (default: the model's, or the weights')")
    g.add_argument("--in-chans", type=int, help="input channels (default 3, or the weights')")
    g.add_argument("--shortcut", choices=["A", "B", "C"], help="A: zero-pad identity, B: projection where the shape changes, C: projection everywhere")
    g.add_argument("--stride-in-1x1", action="store_true", default=None, help="the paper's v1 bottleneck (stride on the first 1x1)")
    g.add_argument("--norm", choices=["batch", "group", "frozen_batch"])


def _model_options(args: argparse.Namespace) -> dict:
    keys = ("num_classes", "in_chans", "shortcut", "stride_in_1x1", "norm")
    return {k: getattr(args, k) for k in keys if getattr(args, k, None) is not None}


def _cmd_list(args: argparse.Namespace) -> int:
    from . import weights as W
    from .models import get_entry, list_models

    if args.weights:
        names = W.list_weights(args.pattern)
        rows = [W.get_weights(n) for n in names]
        if args.json:
            print(json.dumps([{"name": s.name, "url": s.url, "top1": s.metrics.get("top1"), "top5": s.metrics.get("top5"),
                               "preprocessing": s.preprocessing.to_dict(), "source": s.source} for s in rows], indent=2))  # fmt: skip
        else:
            width = max((len(n) for n in names), default=4)
            print(f"{'weights'.ljust(width)}  top1    top5    eval       source")
            for s in rows:
                pre = f"{s.preprocessing.resize}->{s.preprocessing.crop}"
                print(f"{s.name.ljust(width)}  {s.metrics['top1']:6.3f}  {s.metrics['top5']:6.3f}  {pre:<9}  {s.source}")
        return 0
    names = list_models(args.pattern)
    if args.json:
        print(json.dumps([{"name": n, "family": get_entry(n).family, "options": list(get_entry(n).options),
                           "description": get_entry(n).doc} for n in names], indent=2))  # fmt: skip
    else:
        width = max((len(n) for n in names), default=5)
        for n in names:
            print(f"{n.ljust(width)}  {get_entry(n).doc}")
    if not names:
        print(f"no model matches {args.pattern!r}", file=sys.stderr)
        return 1
    return 0


def _cmd_summary(args: argparse.Namespace) -> int:
    from .factory import create_model, load
    from .models import get_entry
    from .summary import format_table, summarize

    options = _model_options(args)
    if os.path.isfile(args.model) or args.model.endswith((".safetensors", ".pth", ".pt")):
        if args.weights:
            raise ResnetsError("give either a model file or --weights, not both")
        model = load(args.model, **options)
        size = args.input_size or get_entry(model.arch_name).input_size
    else:
        model = create_model(args.model, weights=args.weights, **options)
        size = args.input_size or get_entry(model.arch_name).input_size
    in_chans = model.arch_options.get("in_chans", 3)
    if size < 32 and get_entry(model.arch_name).family == "imagenet":
        raise ResnetsError(f"--input-size {size} is too small for {model.arch_name} (at least 32)")
    s = summarize(model, size, in_chans)
    print(json.dumps(s, indent=2) if args.json else format_table(s))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="resnets", description="The ResNet family: models, weights and tools.")
    parser.add_argument("--version", action="version", version=f"resnets {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="more log output")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

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
    _add_model_options(p)
    p.set_defaults(func=_cmd_summary)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="resnets: %(message)s")
    try:
        return args.func(args)
    except ResnetsError as e:
        print(f"resnets: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:  # output piped into `head` and closed early
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("resnets: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
