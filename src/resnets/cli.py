"""The `resnets` command: a thin shell over the library. Bad input is one line on stderr and exit code 2."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Sequence

from .errors import CheckFailed, ResnetsError, printable

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error as one line (like every other bad input) and exit code 2, and a misspelt
    option answered with the closest options of the command it was given to."""

    def error(self, message: str):
        prefix = "unrecognized arguments: "
        if message.startswith(prefix):
            import difflib

            command = self._subcommand() or self
            known = [o for a in command._actions for o in a.option_strings if o.startswith("--")]
            for word in message[len(prefix) :].split():
                close = difflib.get_close_matches(word.split("=")[0], known, n=2, cutoff=0.6) if word.startswith("--") else []
                if close:
                    message += f"; did you mean {' or '.join(close)}?"
                    break
        self.exit(EXIT_USAGE, f"resnets: error: {message} (see `{self.prog} --help`)\n")

    def _subcommand(self) -> "argparse.ArgumentParser | None":
        """The parser of the command named on the command line being parsed (set by `main`), if any."""
        subs = [a for a in self._actions if isinstance(a, argparse._SubParsersAction)]
        name = getattr(self, "command_given", None)
        return subs[0].choices.get(name) if subs and name else None


def _count(low: int, high: int = 2**31 - 1):
    """An argparse type: a whole number in [low, high] (no count a command takes is near 2**31)."""

    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number; got {text[:40]!r}") from None
        if not low <= v <= high:
            raise argparse.ArgumentTypeError(f"must be from {low:,} to {high:,}; got {text[:40]}")
        return v

    parse.__name__ = f"number >= {low}"
    return parse


def _real(low: float, high: float, *, low_open: bool = False):
    """An argparse type: a finite number in [low, high], or (low, high] with `low_open`."""
    import math

    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number; got {text[:40]!r}") from None
        if not math.isfinite(v) or v > high or v < low or (low_open and v == low):
            raise argparse.ArgumentTypeError(f"must be {'over' if low_open else 'at least'} {low:g} and at most {high:g}; got {text[:40]}")
        return v

    parse.__name__ = "number"
    return parse


def _add_model_options(p: argparse.ArgumentParser) -> None:
    """The architecture options, as the training config declares them (the same flags, help and values)."""
    import dataclasses

    from .config import MODEL_OPTIONS, TrainConfig

    g = p.add_argument_group("model options (only those the architecture takes)")
    g.add_argument("--num-classes", type=_count(0), metavar="N", help="classifier size (default: the model's, or the weights')")
    for f in dataclasses.fields(TrainConfig):
        if f.name in MODEL_OPTIONS:
            _add_key(g, f, f.name)


def _model_options(args: argparse.Namespace) -> dict:
    """The model options given on the command line, typed as the config types them."""
    from . import config as C

    given = {k: getattr(args, k) for k in ("num_classes", *C.MODEL_OPTIONS) if getattr(args, k, None) is not None}
    typed = C.apply(C.TrainConfig(), {k: v for k, v in given.items() if k != "num_classes"}, "the command line")
    return {k: getattr(typed, k) if k != "num_classes" else v for k, v in given.items()}


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
    if _is_architecture(args.model):
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


def _add_config_flags(p: argparse.ArgumentParser, recipe_help: str, recipe: str | None) -> None:
    """--recipe, --config, --set, --resume, and every TrainConfig field as a flag: --batch-size 64,
    --deterministic / --no-deterministic, --milestones 1,2. The defaults shown are `recipe`'s (None: the plain
    config's): those that apply to the command as typed."""
    import dataclasses

    from .config import RECIPES, TrainConfig

    p.add_argument("--recipe", help=recipe_help)
    p.add_argument("--config", help="a TOML or YAML file of config keys")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override any config key (repeatable)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last checkpoint")
    whose = f"recipe {recipe}'s" if recipe else "those without a recipe"
    g = p.add_argument_group(f"config keys (each overrides the recipe and the config file; the defaults shown are {whose})")
    values = RECIPES.get(recipe, {}) if recipe else {}
    for f in dataclasses.fields(TrainConfig):  # the help, default and values of each key come from the config
        _add_key(g, f, f"cfg__{f.name}", values)


def _add_key(g, f, dest: str, recipe: dict | None = None) -> None:
    """A config key (a TrainConfig field) as a flag: its help, default and values from the config. Values stay
    text; the config types and checks them."""
    import dataclasses
    import typing

    from .config import RULES, TrainConfig

    name, hint, rule = f.name, typing.get_type_hints(TrainConfig)[f.name], RULES[f.name]
    flag, neg = "--" + name.replace("_", "-"), "--no-" + name.replace("_", "-")
    recipe = recipe or {}
    default = recipe[name] if name in recipe else f.default if f.default is not dataclasses.MISSING else f.default_factory()
    shown = "the architecture's" if default is None else ",".join(map(str, default)) or "none" if isinstance(
        default, list) else default  # fmt: skip
    limits = "" if rule.choices or rule.describe() == "any value" else f"; {rule.describe()}"
    text = (f"{f.metadata.get('help', '')} (default: {shown}{limits})").replace("%", "%%").lstrip(" (").rstrip()
    if hint is bool:
        g.add_argument(flag, dest=dest, action="store_const", const="true", default=None, help=text)
        g.add_argument(neg, dest=dest, action="store_const", const="false", help=argparse.SUPPRESS)
    elif hint == bool | None:  # a switch that also takes a value: --channels-last, --channels-last auto
        metavar = "auto" if name == "channels_last" else "true|false"
        g.add_argument(flag, dest=dest, nargs="?", const="true", default=None, metavar=metavar, help=text)
        g.add_argument(neg, dest=dest, action="store_const", const="false", help=argparse.SUPPRESS)
    else:
        metavar = "{" + ",".join(map(str, rule.choices)) + "}" if rule.choices else _metavar(hint)
        g.add_argument(flag, dest=dest, metavar=metavar, default=None, help=text)


def _metavar(hint) -> str:
    """How a config key's value is written on the command line, from its type."""
    text = str(hint)
    return ("N,N" if "list[int]" in text else "A,B" if "list" in text else "N" if "int" in text
            else "X" if "float" in text else "TEXT")  # fmt: skip


def _parse_set(items: list[str] | None) -> dict:
    out = {}
    for item in items or []:
        if "=" not in item:
            raise ResnetsError(f"--set takes KEY=VALUE; got {item!r}")
        k, v = item.split("=", 1)
        out[k.strip()] = v
    return out


def _overrides(args: argparse.Namespace) -> dict:
    overrides = {k[5:]: v for k, v in vars(args).items() if k.startswith("cfg__") and v is not None}
    return overrides | _parse_set(args.set)


def _cmd_finetune(args: argparse.Namespace) -> int:
    overrides = _overrides(args)
    if not args.resume:
        missing = [f for f in ("data", "weights") if not overrides.get(f)]
        if missing and not args.config:
            raise ResnetsError(f"finetune needs --{' and --'.join(missing)} (a folder of images, one subfolder per class; "
                               "a registered weight name or a weights file)")  # fmt: skip
        args.recipe = args.recipe or "finetune"
    return _cmd_train(args, overrides)


def _cmd_train(args: argparse.Namespace, overrides: dict | None = None) -> int:
    from . import config as C
    from .engine import train
    from .evaluate import reports_top5

    overrides = _overrides(args) if overrides is None else overrides
    if args.resume:
        if args.recipe or args.config:
            raise ResnetsError("--resume continues a run with its saved config; --recipe and --config do not apply")
        result = train(resume=args.resume, overrides=overrides)
    else:
        result = train(C.resolve(args.recipe, args.config, overrides))
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    top5 = f"  top-5 {result['top5']:.2f}%" if reports_top5(len(result["classes"])) else ""
    line = f"top-1 {result['top1']:.2f}%{top5} on {result['n']} validation images"
    if "ten_crop" in result:
        line += f" (10-crop: top-1 {result['ten_crop']['top1']:.2f}%)"
    print(line)
    print(f"run directory: {result['run_dir']}")
    print(f"final model:   {result['model_path']}")
    print(f"plots:         {result['run_dir']}/curves.png, {result['run_dir']}/confusion.png")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from .evaluate import evaluate_model_file, reports_top5

    out = args.out or str(Path(args.weights).parent / "eval")
    amp = {"fp32": "none"}.get(args.precision, args.precision) if args.precision else args.amp
    res = evaluate_model_file(args.weights, dataset=args.dataset, data=args.data, ten_crop=args.ten_crop,
                              batch_size=args.batch_size, workers=args.workers, amp=amp, device=args.device,
                              download=args.download, limit=args.limit, out=out, progress=not args.json)  # fmt: skip
    if args.json:
        print(json.dumps({k: v for k, v in res.items() if k != "confusion"}, indent=2))
        return 0
    print(f"{res['weights']} on {res['dataset']} ({res['n']} images{', 10-crop' if res['ten_crop'] else ''}):")
    top5 = f"  top-5 {res['top5']:.2f}%" if reports_top5(len(res["classes"])) else ""
    print(f"top-1 {res['top1']:.2f}%{top5}  loss {res['loss']:.4f}")
    width = max(len(c) for c in res["classes"])
    for c, acc in zip(res["classes"], res["per_class"]):
        print(f"  {printable(c).ljust(width)}  {acc:6.2f}%")
    if res["bad_samples"]:
        for f in res.get("bad_files", []):
            print(f"skipped {printable(f['path'])}: {printable(f['error'])}", file=sys.stderr)
        print(f"skipped {res['bad_samples']} unreadable images")
    print(f"confusion matrix: {out}/confusion.png, {out}/confusion.json")
    return 0


def _is_architecture(text: str) -> bool:
    """A registered architecture name ("resnet50"), as opposed to weights: a file, a run folder or a registered
    weight name ("resnet50.tv2_in1k")."""
    from .models import list_models

    return text in list_models() and not os.path.exists(text)


def _load_for_inference(weights: str, device: str):
    from .distributed import pick_device
    from .factory import load

    dev = pick_device(device)  # an unavailable device is one line, before the model is read
    return load(weights).to(dev)


def _cmd_predict(args: argparse.Namespace) -> int:
    import csv

    from .inference import predict

    model = _load_for_inference(args.weights, args.device)
    results = predict(model, args.paths, top_k=args.top_k, batch_size=args.batch_size, workers=args.workers,
                      progress=sys.stderr.isatty(), backend=args.backend, precision=args.precision)  # fmt: skip
    if args.format == "json" or args.json:
        print(json.dumps(results, indent=2))
    elif args.format == "csv":
        w = csv.writer(sys.stdout)
        w.writerow(["path", "rank", "class", "index", "prob", "error"])
        for r in results:
            if "error" in r:
                w.writerow([r["path"], "", "", "", "", r["error"]])
            for rank, t in enumerate(r.get("top", []), 1):
                w.writerow([r["path"], rank, t["class"], t["index"], f"{t['prob']:.6f}", ""])
    else:  # a table: one row per file, a column per rank ("class  prob")
        k = max((len(r.get("top", [])) for r in results), default=0)
        rows = [[printable(r["path"])] + ([f"{printable(t['class'])} {100 * t['prob']:.1f}%" for t in r["top"]]
                                           if "top" in r else [f"ERROR: {printable(r['error'])}"]) for r in results]  # fmt: skip
        head = ["file"] + [f"#{i}" for i in range(1, k + 1)]
        widths = [max(len(row[c]) for row in [head, *rows] if c < len(row)) for c in range(len(head))]
        for row in [head, *rows]:
            print("  ".join(cell.ljust(widths[c]) if c < len(row) - 1 else cell for c, cell in enumerate(row)))
    errors = sum("error" in r for r in results)
    if errors:
        print(f"{errors} of {len(results)} files could not be read", file=sys.stderr)
    return 1 if errors else 0


def _cmd_embed(args: argparse.Namespace) -> int:
    from .artifacts import check_output
    from .inference import embed, save_index

    check_output(args.out, (".safetensors",), force=args.force, what="embedding index")
    model = _load_for_inference(args.weights, args.device)
    emb, files, errors = embed(model, args.paths, layer=args.layer, batch_size=args.batch_size, workers=args.workers,
                               progress=sys.stderr.isatty(), backend=args.backend, precision=args.precision)  # fmt: skip
    save_index(args.out, emb, files, weights=str(Path(args.weights).resolve()), layer=args.layer)
    for e in errors:
        print(f"{printable(e['path'])}: ERROR {printable(e['error'])}", file=sys.stderr)
    print(f"{len(files)} embeddings of shape {tuple(emb.shape[1:])} -> {args.out}")
    if errors:
        print(f"{len(errors)} of {len(files) + len(errors)} files could not be read", file=sys.stderr)
    return 1 if errors else 0


def _cmd_similar(args: argparse.Namespace) -> int:
    from .inference import embed, load_index, nearest

    index, files, meta = load_index(args.index)
    weights = args.weights or meta["weights"]
    model = _load_for_inference(weights, args.device)
    q, _, errors = embed(model, [args.query], layer=meta.get("layer") or None, workers=0)
    if errors:
        raise ResnetsError(f"cannot read {args.query}: {errors[0]['error']}")
    if q.shape[1:] != index.shape[1:]:
        raise ResnetsError(f"{args.index} holds embeddings of shape {tuple(index.shape[1:])} made by {meta['weights']}; "
                           f"{weights} gives {tuple(q.shape[1:])}: query with the model that made the index")  # fmt: skip
    scores, idx = nearest(q, index, args.k)
    rows = [{"path": files[i], "similarity": float(s)} for s, i in zip(scores[0].tolist(), idx[0].tolist())]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for r in rows:
            print(f"{r['similarity']:.4f}  {printable(r['path'])}")
    return 0


def _cmd_explain(args: argparse.Namespace) -> int:
    from .artifacts import check_output
    from .inference import explain

    check_output(args.out, (".png",), force=args.force, what="Grad-CAM picture")
    model = _load_for_inference(args.weights, args.device)
    r = explain(model, args.image, args.out, target=args.target, layer=args.layer)
    print(f"{printable(r['path'])}: {printable(r['class'])} ({100 * r['prob']:.1f}%); Grad-CAM -> {printable(str(r['out']))}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from .artifacts import check_output, check_output_folder
    from .export import FORMATS, SUFFIXES, export, export_int8
    from .factory import load

    if args.format == "hub":  # a folder: model.safetensors, timm's config.json, a model card
        from .hub import write_folder

        if not args.out:
            raise ResnetsError("--format hub writes a folder: name it with --out DIR")
        check_output_folder(args.out, force=args.force, what="Hub folder")  # before the model is loaded
        model = load(args.weights)
        where = Path(args.weights) if Path(args.weights).is_dir() else Path(args.weights).parent
        run_dir = where if (where / "eval.json").is_file() or (where / "metrics.jsonl").is_file() else None
        out = write_folder(model, args.out, run_dir=run_dir, force=args.force)
        files = "model.safetensors, config.json (timm's), README.md (model card)"
        files += ", curves.png" if (out / "curves.png").is_file() else ""
        print(f"wrote {out}/: {files}; timm loads it with timm.create_model('local-dir:{out}', pretrained=True); "
              f"`resnets push {out} --repo ORG/NAME` publishes it")  # fmt: skip
        return 0
    if args.precision == "int8":
        if args.format != "onnx":
            raise ResnetsError("int8 export is ONNX (run by ONNX Runtime); use --format onnx")
        if not args.calib or not args.eval:
            raise ResnetsError("int8 needs --calib DATA (real images to calibrate on) and --eval DATA (to check top-1)")
        out = args.out or str(Path(args.weights).with_suffix("")) + ".int8.onnx"
        check_output(out, (".onnx",), force=args.force, what="int8 ONNX file")
        model = load(args.weights)
        r = export_int8(model, out, calib=args.calib, eval_data=args.eval, max_drop=args.max_drop,
                        calib_images=args.calib_images, eval_images=args.eval_images)  # fmt: skip
        print(f"top-1 fp32 {r['fp32_top1']:.2f}%  int8 {r['int8_top1']:.2f}%  drop {r['drop']:.2f} points (max {args.max_drop})")
        if not r["accepted"]:
            print(f"resnets: int8 refused: the drop of {r['drop']:.2f} points exceeds --max-drop {args.max_drop}; nothing written",
                  file=sys.stderr)  # fmt: skip
            return 1
        print(f"wrote {r['path']} ({r['bytes'] / 1e6:.1f} MB)")
        return 0
    base = Path(args.weights) / "model" if Path(args.weights).is_dir() else Path(args.weights)
    out = args.out or str(base.with_suffix(FORMATS[args.format]))
    check_output(out, SUFFIXES[args.format], force=args.force, what=f"{args.format} file")
    model = load(args.weights)
    r = export(model, out, args.format, dynamic_batch=not args.static_batch, fold=args.fold_bn, atol=args.atol,
               rtol=args.rtol)  # fmt: skip
    d = r["max_abs_diff"]
    print(f"max abs difference from eager PyTorch: {max(d.values()):.2e} (random inputs {d['random']:.2e}, real photos {d['real']:.2e})")
    shape = " x ".join(map(str, r["input_shape"]))
    extra = "; class names and preprocessing in its metadata" if args.format == "onnx" else ""
    print(f"wrote {r['path']} ({r['bytes'] / 1e6:.1f} MB, {r['format']}, checked with {r['runtime']}): input "
          f"{shape} float32, normalised{extra}")  # fmt: skip
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    import torch

    from .backends import BACKENDS, auto_backend, bench, check_precision, make_runner
    from .distributed import pick_device
    from .export import example_inputs
    from .factory import create_model, load
    from .meta import preprocessing_for

    dev = pick_device(args.device)
    check_precision(args.precision, dev)
    if args.backend == "all":  # every backend that runs at this precision on this device
        on_cpu_fp32 = dev.type == "cpu" and args.precision == "fp32"
        backends = [b for b in BACKENDS if on_cpu_fp32 or b in ("eager", "compile")]
    else:
        backends = [auto_backend(dev, args.precision) if b == "auto" else b for b in args.backend.split(",") if b]
    for b in backends:
        if b not in BACKENDS:
            raise ResnetsError(f"unknown backend {b!r}; choose from auto, all, {', '.join(BACKENDS)}")
    if bool(args.model) == bool(args.weights):
        raise ResnetsError("bench takes one model: a name, or --weights W")
    args.model = args.model or args.weights
    try:
        sizes = [int(s) for s in str(args.batch_sizes).split(",") if s]
    except ValueError:
        raise ResnetsError(f"--batch-size takes numbers, comma-separated; got {args.batch_sizes!r}") from None
    if not sizes or min(sizes) < 1:
        raise ResnetsError(f"--batch-sizes takes positive numbers; got {args.batch_sizes!r}")
    if _is_architecture(args.model):  # random weights, the same every time (so an ONNX export is cached once)
        with torch.random.fork_rng():
            torch.manual_seed(0)
            model = create_model(args.model)
        model.meta.preprocessing = model.meta.eval_preprocessing()[0]  # the architecture's default input, as meant
    else:
        model = load(args.model)
    if model.num_features is None and args.backend == "all":  # an ONNX file: ONNX Runtime is what runs it
        backends = ["onnxruntime"]
    pre = preprocessing_for(model)
    size = args.input_size or pre.crop
    rows = []
    calib = [example_inputs(model)] if size == pre.crop else [torch.randn(4, len(pre.mean), size, size)]
    for backend in backends:
        run = make_runner(model, backend, calib=calib, channels_last=args.channels_last, precision=args.precision,
                          device=dev)  # fmt: skip
        for bs in sizes:
            # model-only: the input already where the runner computes (the ONNX runners take host tensors)
            x = torch.randn(bs, len(pre.mean), size, size, device=dev if backend in ("eager", "compile") else "cpu")
            r = bench(run, x, seconds=args.seconds)
            r.update(backend=backend, precision=args.precision, device=str(dev))
            rows.append(r)
            if not args.json:
                print(f"{backend:<17} {args.precision} batch {bs:>4}  {r['images_per_s']:9.1f} img/s  "
                      f"p50 {r['p50_ms']:8.2f} ms  p95 {r['p95_ms']:8.2f} ms", flush=True)  # fmt: skip
    best = max(rows, key=lambda r: r["images_per_s"])
    if args.json:
        name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
        print(json.dumps({"model": model.meta.architecture, "input": size, "device": name,
                          "threads": torch.get_num_threads(), "best": best, "results": rows}, indent=2))  # fmt: skip
    elif len(rows) > 1:
        print(f"fastest: {best['backend']} at batch {best['batch']} ({best['images_per_s']:.1f} img/s)")
    return 0


def _cmd_push(args: argparse.Namespace) -> int:
    from .hub import push

    url = push(args.folder, args.repo, private=args.private, message=args.message)
    print(f"pushed {args.folder} to {args.repo}: {url}")
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from .serve import Limits, app, check_listen, run

    check_listen(args.host, args.port)  # before the model is loaded: a busy port is one line, at once
    limits = Limits(max_upload_mb=args.max_upload_mb, max_files=args.max_files, max_queue=args.max_queue,
                    timeout_s=args.timeout_s, max_pixels=args.max_pixels)  # fmt: skip
    api = app(args.weights, backend=args.backend, precision=args.precision, device=args.device,
              max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, decode_workers=args.workers_decode, token=args.token, limits=limits,
              calib=args.calib)  # fmt: skip
    svc = api.state.service
    where = f"http://{'[' + args.host + ']' if ':' in args.host else args.host}:{args.port}"
    print(f"serving {svc.meta.architecture} ({svc.model.num_classes} classes, {svc.backend} at {svc.precision} on "
          f"{svc.device}) at {where}: the page at /, the API at /docs{'; a bearer token is required' if svc.token else ''}",
          flush=True)  # fmt: skip
    run(api, args.host, args.port, log_level="debug" if args.verbose else args.log_level,
        header_timeout_s=args.header_timeout_s)  # fmt: skip
    return 0


def _cmd_cache(args: argparse.Namespace) -> int:
    from .backends import onnx_cache, trim_onnx_cache
    from .home import cache_dir, onnx_cache_dir

    weights = sorted(p for p in cache_dir().glob("*") if p.is_file()) if cache_dir().is_dir() else []
    if args.clear in ("onnx", "all"):
        gone = trim_onnx_cache(0)
        print(f"removed {len(gone)} ONNX exports")
    if args.clear in ("weights", "all"):
        for p in weights:
            p.unlink(missing_ok=True)
        print(f"removed {len(weights)} weight files")
        weights = []
    if args.clear:
        return 0
    for title, files in (("weights", weights), ("onnx", onnx_cache())):
        folder = cache_dir() if title == "weights" else onnx_cache_dir()
        size = sum(p.stat().st_size for p in files)
        print(f"{title}: {folder} ({len(files)} files, {size / 1e6:.1f} MB)")
        for p in files:
            print(f"  {printable(p.name)}  {p.stat().st_size / 1e6:.1f} MB")
    print("the ONNX cache keeps the most recently used exports within $RESNETS_ONNX_CACHE_MB (default 2048 MB); "
          "`resnets cache --clear onnx|weights|all` empties it")  # fmt: skip
    return 0


def _cmd_data(args: argparse.Namespace) -> int:
    from .data.registry import DATASETS

    if args.list or not args.name:
        width = max(map(len, DATASETS))
        for name, spec in DATASETS.items():
            size = f"{spec.native}x{spec.native}x{spec.channels}" if spec.native else "any size"
            print(f"{name.ljust(width)}  {spec.kind:<9}  {size:<10}  {spec.doc}")
        return 0
    from .data import sources

    if args.name == "fashion-mnist":
        folder = sources.fetch_fashion_mnist(download=args.download)
        print(folder)
    else:
        for split in ("train", "test"):
            sources.load_cifar(args.name, split, args.path, download=args.download)
        print(args.path or sources.data_home())
    return 0


def _cmd_reproduce(args: argparse.Namespace) -> int:
    from . import reproduce as R

    extra = _parse_set(args.set)
    out = Path(args.out)
    if args.what == "table1":
        r = R.table1(out)
    else:
        setup = R.Setup(args.dataset, args.budget, out, args.seed, args.data, args.device, not args.no_progress, extra,
                        jobs=args.jobs)  # fmt: skip
        if args.what == "degradation":
            r = R.degradation(setup)
        elif args.what == "layer-responses":
            r = R.layer_responses(setup)
        elif args.what == "gradient-flow":
            r = R.gradient_flow(setup)
        else:
            seeds = [int(x) for x in args.seeds.split(",") if x.strip()]
            depths = [int(x) for x in args.depths.split(",") if x.strip()]
            r = R.cifar_table(setup, depths, seeds)
    print(Path(r["report"]).read_text())
    print(f"report: {r['report']}" + (f"\nfigure: {r['figure']}" if "figure" in r else ""))
    return 0


def build_parser(recipe: str | None = None) -> argparse.ArgumentParser:
    """The command line; `recipe`: the --recipe given, whose defaults train's and finetune's help then show."""
    from . import __version__

    parser = _Parser(prog="resnets", description="The ResNet family: models, weights and tools.")
    parser.add_argument("--version", action="version", version=f"resnets {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="more log output")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    _add_model_commands(sub)
    _add_training_commands(sub, recipe)
    _add_inference_commands(sub)
    _add_export_commands(sub)
    _add_science_commands(sub)
    _add_serving_commands(sub)
    for name in ("predict", "embed", "similar", "explain", "eval", "train", "finetune", "export", "reproduce", "serve"):
        sub.choices[name].add_argument("--max-pixels", type=_count(1), metavar="N",
                                       help="refuse images of more pixels, from their header (default 89,478,485)")
    for command in sub.choices.values():
        _say_defaults(command)
    return parser


def _backend_help() -> str:
    from .backends import BACKENDS

    return "; ".join(["auto: the fastest for the device and precision"] + [f"{b.name}: {b.doc}" for b in BACKENDS.values()])


def _add_model_commands(sub) -> None:
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
    _add_model_options(p)
    p.set_defaults(func=_cmd_summary)


def _add_training_commands(sub, recipe: str | None) -> None:
    """The subcommands of training, fine-tuning and evaluation."""
    from .backends import PRECISIONS
    from .config import RECIPES
    from .data.registry import DATASETS

    p = sub.add_parser("train", help="train a model (recipes: " + ", ".join(RECIPES) + ")",
                       description="Train with a named recipe, a TOML/YAML config file and any key overridden by a flag. "
                                   "Distributed: torchrun --nproc_per_node N -m resnets train ...")  # fmt: skip
    _add_config_flags(p, f"one of {', '.join(RECIPES)}", recipe if recipe in RECIPES else None)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("finetune", help="fine-tune pretrained weights on a folder of your images (one subfolder per class)",
                       description="Fine-tune: `resnets finetune --data DIR --weights W`. DIR holds one subfolder per class "
                                   "(or train/ and val/ with them; without val/, 10% of each class is held out). The "
                                   "architecture comes from the weights unless --model names it. Strategies: full "
                                   "(layer-wise lr, --layer-decay), linear-probe, partial --unfreeze-stages K, gradual "
                                   "--unfreeze-every N; BatchNorm: --bn train|freeze|frozen|group. The recipe "
                                   "'finetune' holds the defaults; every config key can be set.")  # fmt: skip
    _add_config_flags(p, "start from another recipe than 'finetune'", recipe if recipe in RECIPES else "finetune")
    p.set_defaults(func=_cmd_finetune)


    p = sub.add_parser("eval", help="evaluate a saved model: top-1/top-5, per-class accuracy, confusion matrix")
    p.add_argument("--weights", required=True, help="a model file written by training (model.safetensors, best.pt)")
    p.add_argument("--dataset", choices=[n for n, s in DATASETS.items() if s.kind != "synthetic"],
                   help="default: imagefolder for a folder given with --data, csv for a file")
    p.add_argument("--data", help="image folder (DIR or DIR/val), CSV manifest, or dataset files")
    p.add_argument("--ten-crop", action="store_true", help="the paper's 10-crop testing")
    p.add_argument("--batch-size", type=_count(1), default=256)
    p.add_argument("--workers", type=_count(0), default=2, help="decoding processes for image files (0: in this process)")
    p.add_argument("--precision", choices=PRECISIONS, help="autocast precision (default fp32)")
    p.add_argument("--amp", choices=["none", "bf16", "fp16", "auto"], default="none", help="the same as --precision, "
                   "in the training config's words (auto: bf16 where the device computes it natively)")
    p.add_argument("--device", default="auto")
    p.add_argument("--download", action="store_true")
    p.add_argument("--limit", type=_count(0), default=0, help="evaluate the first N images only")
    p.add_argument("--out", help="folder for eval.json and the confusion matrix (default: beside the weights)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_eval)


def _add_inference_commands(sub) -> None:
    """The subcommands of using a model on images: predict, embed, similar, explain."""
    from .backends import BACKENDS, PRECISIONS

    backend_help = _backend_help()

    def inference_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--weights", required=True, help="a resnets model file or run folder, registered weights "
                       "(resnets list --weights), hf-hub:ORG/NAME, or a torchvision, timm or Keras file")
        p.add_argument("--batch-size", type=_count(1), default=32, help="images per model batch (default 32)")
        p.add_argument("--workers", type=_count(0), default=2, help="decoding processes (0: decode in this process; "
                       "default 2)")  # fmt: skip
        p.add_argument("--device", default="auto", help="auto (a GPU when there is one; the default), cpu, cuda, cuda:N")
        p.add_argument("--backend", default="eager", choices=["auto", *BACKENDS], help=backend_help)
        p.add_argument("--precision", default="fp32", choices=PRECISIONS,
                       help="eager/compile: bf16 or fp16 weights on a GPU, bf16 autocast on a CPU")

    p = sub.add_parser("predict", help="classify image files and folders", description="Classify image files and "
                       "folders. Exit status: 0 when every image was classified, 1 when any could not be read (the "
                       "results of the rest are printed all the same), 2 for bad usage.")  # fmt: skip
    p.add_argument("paths", nargs="+", help="image files or folders (searched recursively)")
    inference_args(p)
    p.add_argument("--top-k", "-k", type=_count(1), default=5, help="classes shown per image (default 5)")
    p.add_argument("--format", choices=["table", "json", "csv"], default="table", help="default table")
    p.add_argument("--json", action="store_true", help="the same as --format json")
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser("embed", help="pooled features (or a stage's maps) of images, saved as an index")
    p.add_argument("paths", nargs="+")
    inference_args(p)
    p.add_argument("--out", required=True, help="index file (.safetensors)")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.add_argument("--layer", help="a stage (layer1..layer4) instead of the pooled pre-logit features")
    p.set_defaults(func=_cmd_embed)

    p = sub.add_parser("similar", help="nearest neighbours of an image in an embedding index (cosine)")
    p.add_argument("query")
    p.add_argument("--index", required=True)
    p.add_argument("--top-k", "-k", dest="k", type=_count(1), default=5, help="how many neighbours")
    p.add_argument("--weights", help="default: the model the index was made with")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_similar)

    p = sub.add_parser("explain", help="Grad-CAM heatmap of what the model looks at, as a PNG")
    p.add_argument("image")
    p.add_argument("--weights", required=True)
    p.add_argument("--class", dest="target", help="class name or index (default: the top prediction)")
    p.add_argument("--layer", help="stage to explain (default: the last)")
    p.add_argument("--out", required=True, help="output .png")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=_cmd_explain)


def _add_export_commands(sub) -> None:
    """The subcommands of export and bench."""
    from .backends import PRECISIONS

    p = sub.add_parser("export", help="ONNX / TorchScript / torch.export, checked against eager; int8 ONNX with an accuracy gate")
    p.add_argument("--weights", required=True)
    p.add_argument("--format", choices=["onnx", "torchscript", "exported-program", "hub"], default="onnx",
                   help="hub: a folder in timm's layout with a model card, for the Hugging Face Hub")
    p.add_argument("--out", help="output file (default: beside the weights)")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.add_argument("--static-batch", action="store_true", help="fix the batch at 2 (default: any batch size at run time)")
    p.add_argument("--dynamic-batch", action="store_true", help=argparse.SUPPRESS)  # the default now; still accepted
    p.add_argument("--fold-bn", action="store_true", help="fold BatchNorm into the preceding convolutions")
    p.add_argument("--atol", type=_real(0, 1), default=1e-4, help="the export must match eager PyTorch within atol + "
                   "rtol x |eager| on every output (default 1e-4; exit 1 when it does not)")  # fmt: skip
    p.add_argument("--rtol", type=_real(0, 1), default=1e-4, help="see --atol (default 1e-4)")
    p.add_argument("--precision", choices=["fp32", "int8"], default="fp32")
    p.add_argument("--calib", help="int8: real images to calibrate on (an image folder, or fashion-mnist:train)")
    p.add_argument("--eval", help="int8: data to compare fp32 and int8 top-1 on (an image folder, or fashion-mnist)")
    p.add_argument("--max-drop", type=_real(-100, 100), default=1.0, help="int8: refuse if top-1 drops by more "
                   "points (default 1; negative: int8 must gain)")  # fmt: skip
    p.add_argument("--calib-images", type=_count(1), default=512)
    p.add_argument("--eval-images", type=_count(0), default=0, help="int8: evaluate on this many images (0: all)")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("bench", help="inference speed per backend and batch size: images/s, p50/p95 latency")
    p.add_argument("model", nargs="?", help="a model name (random weights), or weights as --weights takes them")
    p.add_argument("--weights", help="the same as the positional MODEL: a model file, run folder or weight name")
    p.add_argument("--batch-size", "--batch-sizes", dest="batch_sizes", default="1,16",
                   help="batch sizes to measure, comma-separated (default 1,16)")
    p.add_argument("--backend", default="auto", help=f"all, or comma-separated names; {_backend_help()}")
    p.add_argument("--device", default="auto", help="auto (a GPU when there is one), cpu, cuda, cuda:N")
    p.add_argument("--precision", default="fp32", choices=PRECISIONS)
    p.add_argument("--input-size", type=_count(8), help="default: the model's crop size")
    p.add_argument("--seconds", type=_real(0, 3600, low_open=True), default=3.0, help="time per measurement (after warm-up)")
    p.add_argument("--channels-last", action="store_true", default=None,
                   help="default: where it is faster (a GPU, or reduced precision)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_bench)


def _add_science_commands(sub) -> None:
    """The subcommands of the paper's experiments and the data sets."""
    from .config import BUDGETS
    from .data.registry import DATASETS

    p = sub.add_parser("reproduce", help="the paper's tables and figures from real training runs",
                       description="degradation (Figure 6), layer-responses (Figure 7), gradient-flow, table1, "
                                   "cifar-table (Table 6). Runs are kept in OUT/runs and reused.")  # fmt: skip
    p.add_argument("what", choices=["degradation", "layer-responses", "gradient-flow", "table1", "cifar-table"])
    p.add_argument("--dataset", default="fashion-mnist", help="fashion-mnist (default) or cifar10")
    p.add_argument("--data", help="the CIFAR-10 archive (cifar-10-python.tar.gz) or the folder holding it")
    p.add_argument("--budget", default="short", help=f"{' | '.join(f'{k} ({v:,} it)' for k, v in BUDGETS.items())} | N iterations")
    p.add_argument("--seed", type=_count(0), default=0)
    p.add_argument("--seeds", default="0", help="cifar-table: comma-separated seeds (mean +- std over them)")
    p.add_argument("--depths", default="20,32,44,56,110", help="cifar-table: ResNet depths")
    p.add_argument("--out", default="runs/reproduce", help="reports, figures and runs/ go here")
    p.add_argument("--device", default="auto")
    p.add_argument("--jobs", type=_count(1), default=1, help="runs trained at once, each in its own process (several fit "
                   "on one GPU); a stopped command resumes unfinished runs when run again")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="a training config key for every run")
    p.set_defaults(func=_cmd_reproduce)

    p = sub.add_parser("data", help="find a dataset locally, or download it (checksummed) with --download")
    p.add_argument("name", nargs="?", choices=[n for n, s in DATASETS.items() if s.downloadable])
    p.add_argument("--list", action="store_true", help="every dataset the training config and eval take")
    p.add_argument("--path", help="CIFAR archive or folder holding it")
    p.add_argument("--download", action="store_true")
    p.set_defaults(func=_cmd_data)


def _add_serving_commands(sub) -> None:
    """The subcommands of serving, publishing and the caches."""
    from .backends import BACKENDS, PRECISIONS

    p = sub.add_parser("serve", help="serve a model over HTTP (FastAPI on uvicorn): an API with dynamic batching, "
                       "and a web page to try it")  # fmt: skip
    p.add_argument("--weights", required=True, help="what the other commands take: a model file or run folder, "
                   "registered weights, hf-hub:ORG/NAME, a torchvision, timm or Keras file")  # fmt: skip
    p.add_argument("--host", default="127.0.0.1", help="the address to listen on (default only this machine; 0.0.0.0 "
                   "for every interface)")  # fmt: skip
    p.add_argument("--port", type=_count(1, 65535), default=8000, help="the TCP port (default 8000)")
    p.add_argument("--device", default="auto", help="auto (a GPU when there is one), cpu, cuda, cuda:N")
    p.add_argument("--backend", default="auto", choices=["auto", *BACKENDS], help="as predict's; onnxruntime-int8 "
                   "is calibrated on the images of --calib")  # fmt: skip
    p.add_argument("--calib", nargs="+", metavar="PATH", help="images (files or folders) to calibrate int8 on")
    p.add_argument("--precision", default="fp32", choices=list(PRECISIONS))
    p.add_argument("--max-batch", type=_count(1), default=32, help="images per model batch at most")
    p.add_argument("--max-wait-ms", type=_real(0, 60_000), default=5.0, help="how long the first image of a batch "
                   "waits for others (default 5)")  # fmt: skip
    p.add_argument("--workers-decode", type=_count(1), default=4, help="threads decoding uploads")
    p.add_argument("--token", default=None, help="require this bearer token (better: $RESNETS_SERVE_TOKEN, which ps "
                   "does not show); printable ASCII without spaces")  # fmt: skip
    p.add_argument("--max-upload-mb", type=_real(0, 4096, low_open=True), default=20.0, help="a larger request body "
                   "is 413 (default 20)")  # fmt: skip
    p.add_argument("--max-files", type=_count(1), default=64, help="images in one request at most")
    p.add_argument("--max-queue", type=_count(1), default=256, help="images waiting at most; then 503 with Retry-After")
    p.add_argument("--timeout-s", type=_real(0, 3600, low_open=True), default=30.0, help="a request not answered in "
                   "this time is 504 (default 30)")  # fmt: skip
    p.add_argument("--header-timeout-s", type=_real(0, 600, low_open=True), default=10.0, help="a connection whose "
                   "request headers take longer is closed (slow-header clients; default 10)")  # fmt: skip
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"],
                   help="the server's log; info (the default) logs each request (client, request line, status; "
                   "never the token)")  # fmt: skip
    p.set_defaults(func=_cmd_serve)
    p = sub.add_parser("push", help="upload a folder written by `export --format hub` to the Hugging Face Hub")
    p.add_argument("folder", help="the folder `resnets export --format hub --out DIR` wrote")
    p.add_argument("--repo", required=True, help="ORG/NAME on the Hub (created if missing); the token is the one "
                   "`hf auth login` stored, or $HF_TOKEN")  # fmt: skip
    p.add_argument("--private", action="store_true", help="a new repo is private")
    p.add_argument("--message", help="the commit message")
    p.set_defaults(func=_cmd_push)
    p = sub.add_parser("cache", help="the downloaded weights and cached ONNX exports: where, how large; --clear empties")
    p.add_argument("--clear", choices=["onnx", "weights", "all"], help="remove the ONNX exports, the weights, or both")
    p.set_defaults(func=_cmd_cache)


def _say_defaults(p: argparse.ArgumentParser) -> None:
    """Every option with a default that its help does not state gets "(default X)": one rule for every command
    (several options lacked it while the README promised it)."""
    for a in p._actions:
        if not a.option_strings or a.help == argparse.SUPPRESS or a.default in (None, False, argparse.SUPPRESS):
            continue
        if isinstance(a, (argparse._HelpAction, argparse._VersionAction)) or "default" in (a.help or ""):
            continue
        shown = ",".join(map(str, a.default)) if isinstance(a.default, (list, tuple)) else a.default
        a.help = f"{a.help} (default {shown})" if a.help else f"default {shown}"


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"resnets: warning: {printable(str(message))}", file=sys.stderr if file is None else file)


class _PrintableFormatter(logging.Formatter):
    """Log lines with control characters escaped: a file named with ESC and BEL cannot drive the terminal."""

    def format(self, record: logging.LogRecord) -> str:
        return printable(super().format(record))


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    given = [a.split("=", 1)[1] if "=" in a else argv[i + 1] if i + 1 < len(argv) else ""
             for i, a in enumerate(argv) if a == "--recipe" or a.startswith("--recipe=")]  # fmt: skip
    parser = build_parser(given[-1] if given else None)
    parser.command_given = next((a for a in argv if not a.startswith("-")), None)
    args = parser.parse_args(argv)
    # the package's logger writes to the stderr of this call (main may run more than once in a process)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_PrintableFormatter("resnets: %(message)s"))
    log = logging.getLogger("resnets")
    log.handlers = [handler]
    warnings.showwarning = _show_warning  # libraries' warnings (matplotlib's of a missing glyph, ...) escaped too
    log.setLevel(logging.INFO if args.verbose else logging.WARNING)
    if getattr(args, "max_pixels", None):  # the environment carries it to the loader workers
        os.environ["RESNETS_MAX_PIXELS"] = str(args.max_pixels)
    try:
        return args.func(args)
    except CheckFailed as e:  # it ran and did not pass: 1, like a failed test
        print(f"resnets: {printable(str(e))}", file=sys.stderr)
        return 1
    except ResnetsError as e:
        print(f"resnets: error: {printable(str(e))}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:  # output piped into `head` (or `true`) and closed early: not an error
        try:
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115  (nothing more may be written to the closed pipe)
        except OSError:
            pass
        return 0
    except OSError as e:  # the environment: permissions, a full disk, a path of the wrong kind
        where = f": {e.filename}" if getattr(e, "filename", None) else ""
        print(f"resnets: error: {e.strerror or e}{where}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("resnets: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        from .engine import TrainingError

        if isinstance(e, TrainingError):
            print(f"resnets: {e}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
