"""`resnets export` and `resnets bench`."""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from ..backends import BACKENDS, auto_backend, bench, make_runner
from ..choices import PRECISIONS
from ..errors import ResnetsError
from ..meta import preprocessing_for
from ..safe_io import check_output, check_output_folder
from .options import (
    backend_help,
    check_classifier,
    count,
    is_architecture,
    model_name,
    output_beside,
    real,
    refuse_dense,
)

# what loads torch is imported inside the commands that use it: `resnets --help` answers without torch


def _cmd_export(args: argparse.Namespace) -> int:
    from ..export import FORMATS, SUFFIXES, export, export_int8, is_dense
    from ..factory import load

    if args.format == "hub":  # a folder: model.safetensors, timm's config.json, a model card
        from ..weights.publish import write_folder

        if not args.out:
            raise ResnetsError("--format hub writes a folder: name it with --out DIR")
        check_output_folder(args.out, force=args.force, what="Hub folder")  # before the model is loaded
        model = load(args.weights)
        refuse_dense(model, args.weights)
        where = Path(args.weights) if Path(args.weights).is_dir() else Path(args.weights).parent
        run_dir = where if (where / "eval.json").is_file() or (where / "metrics.jsonl").is_file() else None
        out = write_folder(model, args.out, run_dir=run_dir, force=args.force)
        files = "model.safetensors, config.json (timm's), README.md (model card)"
        files += ", curves.png" if (out / "curves.png").is_file() else ""
        print(
            f"wrote {out}/: {files}; timm loads it with timm.create_model('local-dir:{out}', pretrained=True); "
            f"`resnets push {out} --repo ORG/NAME` publishes it"
        )
        return 0
    if args.format == "triton":
        return _export_triton(args)
    if args.precision == "int8":
        if args.format != "onnx":
            raise ResnetsError("int8 export is ONNX (run by ONNX Runtime); use --format onnx")
        if not args.calib or not args.eval:
            raise ResnetsError("int8 needs --calib DATA (real images to calibrate on) and --eval DATA (to check top-1)")
        out = args.out or output_beside(args.weights, ".int8.onnx")
        check_output(out, (".onnx",), force=args.force, what="int8 ONNX file")
        model = load(args.weights)
        refuse_dense(model, args.weights)
        r = export_int8(
            model,
            out,
            calib=args.calib,
            eval_data=args.eval,
            max_drop=args.max_drop,
            calib_images=args.calib_images,
            eval_images=args.eval_images,
        )
        print(
            f"top-1 fp32 {r['fp32_top1']:.2f}%  int8 {r['int8_top1']:.2f}%  drop {r['drop']:.2f} points (max {args.max_drop})"
        )
        if not r["accepted"]:
            print(
                f"resnets: int8 refused: the drop of {r['drop']:.2f} points exceeds --max-drop {args.max_drop}; nothing written",
                file=sys.stderr,
            )
            return 1
        print(f"wrote {r['path']} ({r['bytes'] / 1e6:.1f} MB)")
        return 0
    out = args.out or output_beside(args.weights, FORMATS[args.format])
    check_output(out, SUFFIXES[args.format], force=args.force, what=f"{args.format} file")
    model = load(args.weights)
    if is_dense(model):  # a detector or segmenter: torchvision's ONNX path
        return _export_dense(model, args, out)
    r = export(
        model, out, args.format, dynamic_batch=not args.static_batch, fold=args.fold_bn, atol=args.atol, rtol=args.rtol
    )
    d = r["max_abs_diff"]
    print(
        f"max abs difference from eager PyTorch: {max(d.values()):.2e} (random inputs {d['random']:.2e}, real photos {d['real']:.2e})"
    )
    shape = " x ".join(map(str, r["input_shape"]))
    extra = "; class names and preprocessing in its metadata" if args.format == "onnx" else ""
    print(
        f"wrote {r['path']} ({r['bytes'] / 1e6:.1f} MB, {r['format']}, checked with {r['runtime']}): input "
        f"{shape} float32, normalised{extra}"
    )
    return 0


def _export_triton(args: argparse.Namespace) -> int:
    """A model of a Triton model repository (export.export_triton): a classifier, a detector or a segmenter."""
    from ..export import export_triton
    from ..factory import load

    if not args.out:
        raise ResnetsError("--format triton writes into a model repository: name its folder with --out REPO")
    weights = Path(args.weights)
    name = args.model_name or (weights.name if weights.is_dir() else weights.stem if weights.suffix else str(weights))
    name = re.sub(r"[^A-Za-z0-9._-]", "-", name).lstrip("._-") or "model"
    if (Path(args.out) / name).exists():  # before the model is loaded
        raise ResnetsError(f"{Path(args.out) / name} exists: give another --model-name, or remove it")
    model = load(args.weights)
    r = export_triton(model, args.out, name, max_batch=args.max_batch)
    d = r["max_abs_diff"]
    print(f"max abs difference from eager PyTorch: {max(d.values()) if isinstance(d, dict) else d:.2e}")
    if r["task"] == "classification":
        what = (
            f"max_batch_size {r['max_batch']}, dynamic batching, input {' x '.join(map(str, r['input']))} float32 "
            f"normalised, {r['classes']} logits"
        )
    else:  # a detector's or segmenter's file, as `export --format onnx` writes it
        what = f"max_batch_size 0, input {r['input']}"
    print(
        f"wrote {r['path']}/: 1/model.onnx, config.pbtxt (onnxruntime_onnx, {what}), labels.txt, "
        f"preprocessing.json; tritonserver --model-repository {args.out} serves it"
    )
    return 0


def _export_dense(model, args: argparse.Namespace, out: str) -> int:
    from ..export import export_dense, is_dense

    if args.format != "onnx":
        raise ResnetsError(f"a {is_dense(model)} model exports to ONNX (--format onnx); got --format {args.format}")
    r = export_dense(model, out)
    print(f"max abs difference from eager PyTorch: {r['max_abs_diff']:.2e} (two photos and a random image)")
    print(f"wrote {r['path']} ({r['bytes'] / 1e6:.1f} MB, onnx, checked with onnxruntime): input {r['input']}")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    import torch

    from ..devices import check_precision, pick_device
    from ..export import example_inputs
    from ..factory import create_model, load

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
    if is_architecture(args.model):  # random weights, the same every time (so an ONNX export is cached once)
        check_classifier(args.model)
        with torch.random.fork_rng():
            torch.manual_seed(0)
            model = create_model(args.model)
        model.meta.preprocessing = model.meta.eval_preprocessing()[0]  # the architecture's default input, as meant
    else:
        model = load(args.model)
        refuse_dense(model, args.model)
    if model.num_features is None and args.backend == "all":  # an ONNX file: ONNX Runtime is what runs it
        backends = ["onnxruntime"]
    pre = preprocessing_for(model)
    size = args.input_size or pre.crop
    rows = []
    calib = [example_inputs(model)] if size == pre.crop else [torch.randn(4, len(pre.mean), size, size)]
    for backend in backends:
        run = make_runner(
            model, backend, calib=calib, channels_last=args.channels_last, precision=args.precision, device=dev
        )
        for bs in sizes:
            # model-only: the input already where the runner computes (the ONNX runners take host tensors)
            x = torch.randn(bs, len(pre.mean), size, size, device=dev if backend in ("eager", "compile") else "cpu")
            r = bench(run, x, seconds=args.seconds)
            r.update(backend=backend, precision=args.precision, device=str(dev))
            rows.append(r)
            if not args.json:
                print(
                    f"{backend:<17} {'int8' if backend.endswith('int8') else args.precision} batch {bs:>4}  {r['images_per_s']:9.1f} img/s  "
                    f"p50 {r['p50_ms']:8.2f} ms  p95 {r['p95_ms']:8.2f} ms",
                    flush=True,
                )
    best = max(rows, key=lambda r: r["images_per_s"])
    if args.json:
        name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
        print(
            json.dumps(
                {
                    "model": model.meta.architecture,
                    "input": size,
                    "device": name,
                    "threads": torch.get_num_threads(),
                    "best": best,
                    "results": rows,
                },
                indent=2,
            )
        )
    elif len(rows) > 1:
        print(f"fastest: {best['backend']} at batch {best['batch']} ({best['images_per_s']:.1f} img/s)")
    return 0


def _target_options(p) -> None:
    """export's --format and the options of its folder formats."""
    p.add_argument(
        "--format",
        choices=["onnx", "torchscript", "exported-program", "hub", "triton"],
        default="onnx",
        help="hub: a folder in timm's layout with a model card, for the Hugging Face Hub; triton: a model in a "
        "Triton model repository (--out REPO: REPO/NAME/1/model.onnx, config.pbtxt, labels.txt)",
    )
    p.add_argument(
        "--model-name",
        type=model_name,
        help="triton: the model's name in the repository (default: the run folder's or model file's name)",
    )
    p.add_argument("--max-batch", type=count(1), default=32, help="triton: max_batch_size, Triton batching up to it")


def add_commands(sub) -> None:
    """The subcommands of export and bench."""
    p = sub.add_parser(
        "export", help="ONNX / TorchScript / torch.export, checked against eager; int8 ONNX with an accuracy gate"
    )
    p.add_argument("--weights", required=True)
    _target_options(p)
    p.add_argument(
        "--out",
        help="output file (default: model.EXT in a run folder given, beside a model file, in the working directory "
        "for a registered or Hub name)",
    )
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.add_argument(
        "--static-batch", action="store_true", help="fix the batch at 2 (default: any batch size at run time)"
    )
    p.add_argument("--dynamic-batch", action="store_true", help=argparse.SUPPRESS)  # the default now; still accepted
    p.add_argument("--fold-bn", action="store_true", help="fold BatchNorm into the preceding convolutions")
    p.add_argument(
        "--atol",
        type=real(0, 1),
        default=1e-4,
        help="the export must match eager PyTorch within atol + "
        "rtol x |eager| on every output (default 1e-4; exit 1 when it does not)",
    )
    p.add_argument("--rtol", type=real(0, 1), default=1e-4, help="see --atol (default 1e-4)")
    p.add_argument(
        "--precision",
        choices=["fp32", "int8"],
        default="fp32",
        help="fp32 as trained, or int8: quantised with --calib images, and kept only when --eval loses at most --max-drop",
    )
    p.add_argument("--calib", help="int8: real images to calibrate on (an image folder, or fashion-mnist:train)")
    p.add_argument("--eval", help="int8: data to compare fp32 and int8 top-1 on (an image folder, or fashion-mnist)")
    p.add_argument(
        "--max-drop",
        type=real(-100, 100),
        default=1.0,
        help="int8: refuse if top-1 drops by more points (default 1; negative: int8 must gain)",
    )
    p.add_argument(
        "--calib-images", type=count(1), default=512, metavar="N",
        help="int8: calibrate the activation ranges on this many images of --calib",
    )  # fmt: skip
    p.add_argument(
        "--eval-images", type=count(0), default=0, metavar="N",
        help="int8: evaluate the accuracy gate on this many images of --eval (0: all)",
    )  # fmt: skip
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("bench", help="inference speed per backend and batch size: images/s, p50/p95 latency")
    p.add_argument("model", nargs="?", help="a model name (random weights), or weights as --weights takes them")
    p.add_argument("--weights", help="the same as the positional MODEL: a model file, run folder or weight name")
    p.add_argument(
        "--batch-size",
        "--batch-sizes",
        dest="batch_sizes",
        default="1,16",
        help="batch sizes to measure, comma-separated (default 1,16)",
    )
    p.add_argument("--backend", default="auto", help=f"all, or comma-separated names; {backend_help()}")
    p.add_argument("--device", default="auto", help="auto (a GPU when there is one), cpu, cuda, cuda:N")
    p.add_argument("--precision", default="fp32", choices=PRECISIONS)
    p.add_argument("--input-size", type=count(8), help="default: the model's crop size")
    p.add_argument(
        "--seconds", type=real(0, 3600, low_open=True), default=3.0, help="time per measurement (after warm-up)"
    )
    p.add_argument(
        "--channels-last",
        action="store_true",
        default=None,
        help="default: where it is faster (a GPU, or reduced precision)",
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_bench)
