"""`resnets predict`, `embed`, `similar` and `explain`: a model used on image files."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import ResnetsError, Unreadable, printable
from .options import backend_help, count, load_for_inference, require_task


def _bar(total: int, shown: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="img", disable=not shown, leave=False)


def _exit_status(results: list[dict]) -> int:
    """1 when any file could not be read (said on stderr; the others' results are printed all the same), else 0."""
    errors = sum("error" in r for r in results)
    if errors:
        print(f"{errors} of {len(results)} files could not be read", file=sys.stderr)
    return 1 if errors else 0


def _maybe_gpu() -> bool:
    """Whether this machine may have a GPU PyTorch would use (asked without importing torch: NVIDIA's and AMD's
    device files); where it may, torch decides."""
    return Path("/proc/driver/nvidia/gpus").is_dir() or Path("/dev/nvidia0").exists() or Path("/dev/kfd").exists()


def _on_cpu_fp32(args: argparse.Namespace) -> bool:
    """Whether `predict` runs on the CPU at fp32 (where ONNX Runtime is the fastest runtime, benchmarks/)."""
    cpu = args.device == "cpu" or (args.device == "auto" and not _maybe_gpu())
    return cpu and args.precision == "fp32"


def _onnx_for(args: argparse.Namespace, export: bool):
    """The ONNX file `predict` classifies with, without PyTorch, or None: on a CPU at fp32, with the auto or
    onnxruntime backend, the file given, or the cached export of the model file given (`export`: made now, with
    torch, when there is none)."""
    from ..onnx_predict import cached

    if args.backend not in ("auto", "onnxruntime") or not _on_cpu_fp32(args):
        return None
    if str(args.weights).lower().endswith(".onnx"):
        return args.weights if Path(args.weights).is_file() else None  # missing: said by the loader, in one line
    return cached(args.weights) or (export and _export_now(args))


def _export_now(args: argparse.Namespace):
    from ..backends import export_for_file
    from ..onnx_predict import export_path, model_files

    files = model_files(args.weights)
    key = export_path(files) if files else None  # from the bytes before they are read: checked again after
    model = load_for_inference(args.weights, "cpu", classifier=True)
    print(f"exporting {args.weights} to ONNX once (later runs start without PyTorch)", file=sys.stderr)
    return export_for_file(model, args.weights, key)


def _images_or_data(args: argparse.Namespace) -> bool:
    """Whether the command runs as a collection (--data): image paths or --data, one of them; a collection
    writes to an --out folder."""
    if args.data is None:
        if not args.paths:
            raise ResnetsError(f"give image files or folders, or --data: `resnets {args.command} --help`")
        if args.part_size is not None:
            raise ResnetsError("--part-size is for --data (a collection's parts)")
        return False
    if args.paths:
        raise ResnetsError(f"give image paths or --data, not both (got {printable(args.paths[0])} and --data)")
    if args.out is None:
        raise ResnetsError("--data writes a collection: give its folder with --out DIR")
    return True


def _collection(args: argparse.Namespace, command: str) -> int:
    """`embed --data` or `predict --data`: collection.py, in this process's share of torchrun's."""
    from ..collection import PART_SIZE, Job, run

    local = Path(args.data)
    job = Job(
        command,
        str(local.resolve()) if local.exists() else args.data,  # the same job from any folder (its record)
        args.weights,
        Path(args.out),
        part_size=args.part_size or PART_SIZE,
        layer=getattr(args, "layer", None),
        top_k=getattr(args, "top_k", 5),
        batch_size=args.batch_size,
        workers=args.workers,
        backend=args.backend,  # auto: the fastest for the device (collection.run)
        precision=args.precision,
        device=args.device,
        force=args.force,
    )
    return run(job, lambda device: load_for_inference(args.weights, str(device), classifier=True))


def _cmd_predict(args: argparse.Namespace) -> int:
    import csv

    from ..onnx_predict import classify, find_images

    if _images_or_data(args):
        if args.json or args.format != "table":
            raise ResnetsError("--data writes predictions.jsonl (a line an image, as --json's results): drop --format")
        return _collection(args, "predict")
    if args.out is not None or args.force:
        raise ResnetsError("--out and --force are for --data (a collection); predict prints its results")
    onnx = _onnx_for(args, export=args.backend == "onnxruntime")
    if onnx:  # ONNX Runtime alone: numpy, Pillow and onnxruntime in this process
        files = find_images(args.paths)
        with _bar(len(files), sys.stderr.isatty()) as bar:
            stamp = None if str(onnx).lower() == str(args.weights).lower() else Path(onnx).stem  # the cache's
            results = classify(
                onnx, files, top_k=args.top_k, batch_size=args.batch_size, progress=bar.update, stamp=stamp
            )
    else:
        from ..inference import predict
        from ..onnx_predict import model_files

        model = load_for_inference(args.weights, args.device, classifier=True)
        hint = args.backend == "auto" and _on_cpu_fp32(args) and model_files(args.weights)
        if hint and sys.stderr.isatty():  # a person at a terminal (scripts keep their one line of errors)
            print(
                "resnets: running PyTorch; `--backend onnxruntime` once exports this model (10-30 s), and later "
                "runs classify with ONNX Runtime, without PyTorch (about 1 s to start)",
                file=sys.stderr,
            )
        results = predict(
            model,
            args.paths,
            top_k=args.top_k,
            batch_size=args.batch_size,
            workers=args.workers,
            progress=sys.stderr.isatty(),
            backend="eager" if args.backend == "auto" else args.backend,
            precision=args.precision,
        )
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
        rows = [
            [printable(r["path"])]
            + (
                [f"{printable(t['class'])} {100 * t['prob']:.1f}%" for t in r["top"]]
                if "top" in r
                else [f"ERROR: {printable(r['error'])}"]
            )
            for r in results
        ]
        head = ["file"] + [f"#{i}" for i in range(1, k + 1)]
        widths = [max(len(row[c]) for row in [head, *rows] if c < len(row)) for c in range(len(head))]
        for row in [head, *rows]:
            print("  ".join(cell.ljust(widths[c]) if c < len(row) - 1 else cell for c, cell in enumerate(row)))
    return _exit_status(results)


def _cmd_embed(args: argparse.Namespace) -> int:
    from ..inference import embed, index_for, save_index, search_kind
    from ..safe_io import check_output

    if _images_or_data(args):
        return _collection(args, "embed")
    if args.out is None:
        raise ResnetsError("embed writes an index: give its file with --out INDEX.safetensors")
    check_output(args.out, (".safetensors",), force=args.force, what="embedding index")
    model = load_for_inference(args.weights, args.device, classifier=True)
    emb, files, errors = embed(
        model,
        args.paths,
        layer=args.layer,
        batch_size=args.batch_size,
        workers=args.workers,
        progress=sys.stderr.isatty(),
        backend=args.backend,
        precision=args.precision,
    )
    save_index(args.out, emb, files, weights=str(Path(args.weights).resolve()), layer=args.layer)
    if search_kind("auto", len(emb)) == "approx":  # what `similar` will search: built now, once
        index_for(args.out, emb, "auto", said=lambda text: print(text, file=sys.stderr))
    for e in errors:
        print(f"{printable(e['path'])}: ERROR {printable(e['error'])}", file=sys.stderr)
    print(f"{len(files)} embeddings of shape {tuple(emb.shape[1:])} -> {args.out}")
    if errors:
        print(f"{len(errors)} of {len(files) + len(errors)} files could not be read", file=sys.stderr)
    return 1 if errors else 0


def _cmd_similar(args: argparse.Namespace) -> int:
    from ..inference import embed, index_for, load_index, neighbours

    where = Path(args.index)
    if where.is_dir() and (where / "embeddings.safetensors").is_file():  # a collection's folder (embed --data)
        args.index = str(where / "embeddings.safetensors")
    index, files, meta = load_index(args.index)
    weights = args.weights or meta["weights"]
    try:
        model = load_for_inference(weights, args.device, classifier=True)
    except ResnetsError as e:
        if args.weights:
            raise
        raise ResnetsError(f"{e} (the model the index records: give --weights where it is now)") from None
    q, _, errors = embed(model, [args.query], layer=meta.get("layer") or None, workers=0)
    if errors:
        raise Unreadable(f"cannot read {args.query}: {errors[0]['error']}")
    if q.shape[1:] != index.shape[1:]:
        raise ResnetsError(
            f"{args.index} holds embeddings of shape {tuple(index.shape[1:])} made by {meta['weights']}; "
            f"{weights} gives {tuple(q.shape[1:])}: query with the model that made the index"
        )
    _same_model(weights, meta)
    searched = index_for(args.index, index, args.search, said=lambda text: print(text, file=sys.stderr))
    scores, idx = neighbours(searched, q, args.k)
    rows = [{"path": files[i], "similarity": s} for s, i in zip(scores[0].tolist(), idx[0].tolist()) if i >= 0]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for r in rows:
            print(f"{r['similarity']:.4f}  {printable(r['path'])}")
    return 0


def _same_model(weights: str, meta: dict) -> None:
    """One line when the model file `weights` is not the one whose sha256 the index records: its rows and the
    query would be features of two models, and their similarities meaningless."""
    from ..onnx_predict import digest, model_files

    files = model_files(weights)
    recorded = meta.get("weights_sha256")
    if recorded and files and digest(files[0]) != recorded:
        raise ResnetsError(
            f"{weights} is not the model that made the index (its sha256 differs from the one the index records): "
            "embed the images again with it, or query with the model that made the index"
        )


def _cmd_explain(args: argparse.Namespace) -> int:
    from ..inference import explain
    from ..safe_io import check_output

    check_output(args.out, (".png",), force=args.force, what="Grad-CAM picture")
    model = load_for_inference(args.weights, args.device, classifier=True)
    r = explain(model, args.image, args.out, target=args.target, layer=args.layer)
    print(
        f"{printable(r['path'])}: {printable(r['class'])} ({100 * r['prob']:.1f}%); Grad-CAM -> {printable(str(r['out']))}"
    )
    return 0


def _drawn_names(paths: list[str]) -> list[str]:
    """One PNG name per image for --out: its stem, numbered where two images share one."""
    seen: dict[str, int] = {}
    names = []
    for p in paths:
        stem = Path(p).stem
        seen[stem] = seen.get(stem, 0) + 1
        names.append(f"{stem}.png" if seen[stem] == 1 else f"{stem}-{seen[stem]}.png")
    return names


def _cmd_detect(args: argparse.Namespace) -> int:
    import csv

    from ..detect import detect, drawn, input_size
    from ..safe_io import atomic_path, check_output_folder

    if args.out:
        check_output_folder(args.out, force=args.force, what="pictures of the boxes")
    model = load_for_inference(args.weights, args.device)
    require_task(model, args.weights, "detection")
    results = detect(model, args.paths, score=args.score, batch_size=args.batch_size, precision=args.precision)
    if args.format == "json":
        print(json.dumps([{k: v for k, v in r.items() if k != "masks"} for r in results], indent=2))
    elif args.format == "csv":
        w = csv.writer(sys.stdout)
        w.writerow(["path", "class", "score", "x0", "y0", "x1", "y1", "error"])
        for r in results:
            if "error" in r:
                w.writerow([r["path"], "", "", "", "", "", "", r["error"]])
            for b in r.get("boxes", []):
                w.writerow([r["path"], b["class"], f"{b['score']:.4f}", *b["box"], ""])
    else:
        for r in results:
            if "error" in r:
                print(f"{printable(r['path'])}: ERROR {printable(r['error'])}")
                continue
            below = f" ({r['below_score']} more under --score {args.score:g})" if r.get("below_score") else ""
            print(f"{printable(r['path'])}: {len(r['boxes'])} boxes{below}")
            for b in r["boxes"]:
                x0, y0, x1, y1 = b["box"]
                print(f"  {printable(b['class'])} {100 * b['score']:.1f}%  [{x0:.0f}, {y0:.0f}, {x1:.0f}, {y1:.0f}]")
    if args.out:
        from torchvision.io import write_png

        out = Path(args.out)
        out.mkdir(exist_ok=True)
        for r, name in zip(results, _drawn_names([r["path"] for r in results])):
            if "error" not in r:
                with atomic_path(out / name) as tmp:
                    write_png(drawn(r["path"], r, input_size(model)), str(tmp))
        print(f"pictures with the boxes drawn: {out}/", file=sys.stderr)
    return _exit_status(results)


def _cmd_segment(args: argparse.Namespace) -> int:
    from ..safe_io import atomic_path, check_output_folder
    from ..segment import class_names, coloured, overlaid, segment

    if args.out:
        check_output_folder(args.out, force=args.force, what="masks and overlays")
    model = load_for_inference(args.weights, args.device)
    require_task(model, args.weights, "segmentation")
    results = segment(model, args.paths, size=args.size, precision=args.precision)
    if args.format == "json":
        print(json.dumps([{k: v for k, v in r.items() if k != "mask"} for r in results], indent=2))
    else:
        for r in results:
            if "error" in r:
                print(f"{printable(r['path'])}: ERROR {printable(r['error'])}")
                continue
            shares = ", ".join(
                f"{printable(c)} {100 * v:.1f}%" for c, v in sorted(r["classes"].items(), key=lambda x: -x[1])
            )
            print(f"{printable(r['path'])}: {shares}")
    if args.out:
        from torchvision.io import write_png

        out, k = Path(args.out), len(class_names(model))
        out.mkdir(exist_ok=True)
        for r, name in zip(results, _drawn_names([r["path"] for r in results])):
            if "error" not in r:
                with atomic_path(out / name.replace(".png", "-mask.png")) as tmp:
                    write_png(coloured(r["mask"], k), str(tmp))
                with atomic_path(out / name.replace(".png", "-overlay.png")) as tmp:
                    write_png(overlaid(r["path"], r, k), str(tmp))
        print(f"masks and overlays: {out}/", file=sys.stderr)
    return _exit_status(results)


def _add_segment(sub) -> None:
    p = sub.add_parser(
        "segment",
        help="the class of every pixel of image files and folders (and coloured masks and overlays, --out)",
        description="Segment images with FCN or DeepLabV3 (torchvision's COCO-VOC weights: fcn_resnet50.tv_coco_voc, "
        "or a model trained by `resnets train` on a mask folder). Exit status: 0 when every image was read, 1 when "
        "any could not be, 2 for bad usage.",
    )
    _dense_args(p, "a segmentation model's file, run folder or registered name", ["table", "json"],
                "a folder for each image's coloured mask and overlay (PNG)")  # fmt: skip
    p.add_argument("--size", type=count(32), default=520, help="each image's shorter side for the model")
    p.set_defaults(func=_cmd_segment)


def _dense_args(p: argparse.ArgumentParser, weights: str, formats: list[str], out: str) -> None:
    """What detect and segment share: the images, the model, the device and precision, the output."""
    from ..backends import PRECISIONS

    p.add_argument("paths", nargs="+", help="image files or folders (searched recursively)")
    p.add_argument("--weights", required=True, help=weights)
    p.add_argument("--device", default="auto", help="auto (a GPU when there is one; the default), cpu, cuda, cuda:N")
    p.add_argument("--precision", default="fp32", choices=PRECISIONS, help="bf16/fp16 autocast (default fp32)")
    p.add_argument("--format", choices=formats, default="table", help="default table")
    p.add_argument("--out", help=out)
    p.add_argument("--force", action="store_true", help="write into --out even if it holds files")


def _add_detect(sub) -> None:
    p = sub.add_parser(
        "detect",
        help="find objects in image files and folders: boxes, classes and scores (and the pictures, --out)",
        description="Detect objects with a detector (Faster R-CNN, RetinaNet, Mask R-CNN) trained by `resnets "
        "train` on a COCO folder. Exit status: 0 when every image was read, 1 when any could not be (the rest "
        "are printed all the same), 2 for bad usage.",
    )
    _dense_args(p, "a detector's model file, run folder or registered name", ["table", "json", "csv"],
                "a folder for each image with its boxes drawn (PNG)")  # fmt: skip
    p.add_argument("--score", type=float, default=0.5, help="keep boxes scoring at least this (default 0.5)")
    p.add_argument("--batch-size", type=count(1), default=4, help="images per model batch (default 4)")
    p.set_defaults(func=_cmd_detect)


def _add_similar(sub) -> None:
    p = sub.add_parser("similar", help="nearest neighbours of an image in an embedding index (cosine)")
    p.add_argument("query")
    p.add_argument("--index", required=True, help="an index embed wrote, or a collection's folder (embed --data)")
    p.add_argument("--top-k", "-k", dest="k", type=count(1), default=5, help="how many neighbours")
    p.add_argument("--weights", help="default: the model the index was made with")
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--search",
        choices=["auto", "exact", "approx"],  # resnets.inference.SEARCHES (not imported here: it imports torch)
        default="auto",
        help="exact: the query compared with every vector; approx: a FAISS IVF index, built once and cached in "
        "$RESNETS_HOME/faiss; auto (the default): exact up to 100,000 vectors, approx above",
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_similar)


def _predict_backend_help(backends_help: str) -> str:
    return (
        "auto (the default): on a CPU at fp32, ONNX Runtime with no PyTorch in the process when the model has an "
        "export (an .onnx file `resnets export` wrote, or the cached export that a first `--backend onnxruntime` "
        "run of the same model file made), else eager. "
        + backends_help.split("; ", 1)[1]
        + "; onnxruntime with a model file: exported once into the cache, then as auto"
    )


def collection_args(p: argparse.ArgumentParser, output: str, out: str | None = None) -> None:
    """The image paths, or --data, --out, --force and --part-size: the command over a collection (collection.py)."""
    p.add_argument("paths", nargs="*", help="image files or folders (searched recursively)")
    p.add_argument(
        "--data",
        help="a collection instead of paths: a folder of images, or shards (a folder holding index.json, .tar "
        "files, URLs); run under torchrun to spread it over processes and machines; run again to continue it",
    )
    where = f"{out}; with --data: " if out else "with --data: "
    p.add_argument("--out", required=False, help=f"{where}the collection's folder: its parts, then {output}")
    p.add_argument("--force", action="store_true", help="replace --out if it holds files (another collection's)")
    p.add_argument(
        "--part-size",
        type=count(1),
        help="with --data: a folder's images a part, written whole as it is done: what a kill can cost a process "
        "(default 1024; shards: a shard a part)",
    )


def add_commands(sub) -> None:
    """The subcommands of using a model on images: predict, embed, similar, explain."""
    from ..backends import BACKENDS, PRECISIONS

    backends_help = backend_help()

    def inference_args(p: argparse.ArgumentParser, backend: tuple[str, str] = ("eager", backends_help)) -> None:
        p.add_argument(
            "--weights",
            required=True,
            help="a resnets model file or run folder, registered weights "
            "(resnets list --weights), hf-hub:ORG/NAME, or a torchvision, timm or Keras file",
        )
        p.add_argument("--batch-size", type=count(1), default=32, help="images per model batch (default 32)")
        p.add_argument(
            "--workers",
            type=count(0),
            default=2,
            help="loader processes (0: none; every image is decoded in the sandbox's capped processes, one per core, "
            "either way; default 2)",
        )
        p.add_argument(
            "--device", default="auto", help="auto (a GPU when there is one; the default), cpu, cuda, cuda:N"
        )
        p.add_argument("--backend", default=backend[0], choices=["auto", *BACKENDS], help=backend[1])
        p.add_argument(
            "--precision",
            default="fp32",
            choices=PRECISIONS,
            help="eager/compile: bf16 or fp16 weights on a GPU, bf16 autocast on a CPU",
        )

    p = sub.add_parser(
        "predict",
        help="classify image files and folders",
        description="Classify image files and "
        "folders; with --data, a collection in parts (spread over torchrun's processes, resumable). Exit status: 0 "
        "when every image was classified, 1 when any could not be read (the results of the rest are printed all the "
        "same; under torchrun 0, said: torchrun restarts a group that exits 1), 2 for bad usage.",
    )
    collection_args(p, "predictions.jsonl (a line an image, as --json's results)")
    inference_args(p, ("auto", _predict_backend_help(backends_help)))
    p.add_argument("--top-k", "-k", type=count(1), default=5, help="classes shown per image (default 5)")
    p.add_argument("--format", choices=["table", "json", "csv"], default="table", help="default table")
    p.add_argument("--json", action="store_true", help="the same as --format json")
    p.set_defaults(func=_cmd_predict)

    _add_detect(sub)
    _add_segment(sub)

    p = sub.add_parser(
        "embed",
        help="pooled features (or a stage's maps) of images, saved as an index",
        description="Pooled features (or a stage's maps) of image files and folders, saved as an index that "
        "`resnets similar` searches; with --data, a collection in parts (spread over torchrun's processes, "
        "resumable). Exit status: 0 when every image was embedded, 1 when any could not be read (listed; the rest "
        "are embedded all the same; under torchrun 0, said), 2 for bad usage.",
    )
    collection_args(p, "embeddings.safetensors (the index similar --index reads)", out="the index file (.safetensors)")
    inference_args(p)
    p.add_argument("--layer", help="a stage (layer1..layer4) instead of the pooled pre-logit features")
    p.set_defaults(func=_cmd_embed)

    _add_similar(sub)

    p = sub.add_parser("explain", help="Grad-CAM heatmap of what the model looks at, as a PNG")
    p.add_argument("image")
    p.add_argument("--weights", required=True)
    p.add_argument("--class", dest="target", help="class name or index (default: the top prediction)")
    p.add_argument("--layer", help="stage to explain (default: the last)")
    p.add_argument("--out", required=True, help="output .png")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=_cmd_explain)
