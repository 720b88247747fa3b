"""`resnets reproduce` (the paper's tables and figures) and `resnets data` (the data sets)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..config import BUDGETS
from ..data.registry import DATASETS, get_dataset
from ..errors import ResnetsError
from .options import count, parse_set

# what loads torch is imported inside the commands that use it: `resnets --help` answers without torch


def _cmd_reproduce(args: argparse.Namespace) -> int:
    from .. import reproduce

    extra = parse_set(args.set)
    out = Path(args.out)
    if args.what == "table1":
        r = reproduce.table1(out)
    else:
        setup = reproduce.Setup(
            args.dataset,
            args.budget,
            out,
            args.seed,
            args.data,
            args.device,
            not args.no_progress,
            extra,
            jobs=args.jobs,
        )
        if args.what == "degradation":
            r = reproduce.degradation(setup)
        elif args.what == "layer-responses":
            r = reproduce.layer_responses(setup)
        elif args.what == "gradient-flow":
            r = reproduce.gradient_flow(setup)
        else:
            seeds = [int(x) for x in args.seeds.split(",") if x.strip()]
            depths = [int(x) for x in args.depths.split(",") if x.strip()]
            r = reproduce.cifar_table(setup, depths, seeds)
    print(Path(r["report"]).read_text())
    print(f"report: {r['report']}" + (f"\nfigure: {r['figure']}" if "figure" in r else ""))
    return 0


def _cmd_shard(args: argparse.Namespace) -> int:
    """`resnets data shard SRC --out DIR`: an image folder (train/ and val/ inside, or one class folder each), a
    CSV manifest, a registered in-memory dataset (fashion-mnist, cifar10, ...) or a Hugging Face image dataset (a
    save_to_disk folder, or hf:DIR_OR_NAME) as tar shards and their index."""
    from ..data import shards

    if not args.source or not args.out:
        raise ResnetsError("data shard needs SRC (an image folder, a CSV manifest or a dataset's name) and --out DIR")
    src, size = Path(args.source), shards.parse_size(args.shard_size)
    if not src.exists() and args.source in DATASETS and DATASETS[args.source].tensors is not None:
        spec, data = DATASETS[args.source], args.path  # a registered dataset held in memory
    elif args.source.startswith("hf:") or any((src / f).is_file() for f in ("dataset_dict.json", "state.json")):
        spec, data = get_dataset("hf"), args.source.removeprefix("hf:")  # a Hugging Face dataset: folder or name
    else:  # the splits training reads from the same files: DIR/train (or DIR) and DIR/val, or the CSV
        spec, data = get_dataset("csv" if src.is_file() else "imagefolder"), str(src)
    splits = {"train": spec.load("train", data, args.download)}
    held = None if spec.name == "csv" else spec.load("test", data, args.download, classes=splits["train"].classes)
    if held is not None:
        splits["val"] = held
    index = shards.write(splits, Path(args.out), shard_bytes=size, progress=not args.no_progress)
    written = shards.read_index(Path(args.out))["splits"]  # what was written: unreadable images left out
    counts = ", ".join(f"{sum(len(s['samples']) for s in written.get(n, []))} {n}" for n in splits)
    print(f"{counts} images in {len(list(Path(args.out).glob('*.tar')))} shards; index: {index}")
    return 0


def _cmd_shapes(args: argparse.Namespace) -> int:
    """`resnets data shapes --out DIR`: the generated detection and segmentation set."""
    from ..data.shapes import generate

    if not args.out:
        raise ResnetsError("data shapes needs --out DIR (a new or empty folder)")
    counts = generate(
        args.out,
        train=args.train,
        val=args.val,
        size=args.size,
        seed=args.seed,
        crops=args.crops,
        progress=not args.no_progress,
    )
    for split, c in counts.items():
        print(f"{split}: {c['images']} images, {c['boxes']} shapes -> {Path(args.out) / split}/instances.json")
    if args.crops:
        print(
            f"pretrain a backbone on the shapes cut out: resnets train --model resnet18 --dataset imagefolder "
            f"--data {Path(args.out) / 'crops'} --train-crop {args.crops} --eval-resize {args.crops} "
            f"--eval-crop {args.crops} --augment none --optimizer adamw --lr 0.003 --weight-decay 0.05"
        )
    print(f"train a detector: resnets train --recipe finetune-detection --data {args.out}")
    print(f"or a segmenter:   resnets train --recipe finetune-segmentation --data {args.out}")
    return 0


def _cmd_data(args: argparse.Namespace) -> int:
    if args.name == "shard":
        return _cmd_shard(args)
    if args.name == "shapes":
        return _cmd_shapes(args)

    if args.list or not args.name:
        width = max(map(len, DATASETS))
        for name, spec in DATASETS.items():
            size = f"{spec.native}x{spec.native}x{spec.channels}" if spec.native else "any size"
            print(f"{name.ljust(width)}  {spec.kind:<9}  {size:<10}  {spec.doc}")
        return 0
    from ..data import sources

    if args.name == "fashion-mnist":
        folder = sources.fetch_fashion_mnist(download=args.download)
        print(folder)
    else:
        for split in ("train", "test"):
            sources.load_cifar(args.name, split, args.path, download=args.download)
        print(args.path or sources.data_home())
    return 0


def add_commands(sub) -> None:
    """The subcommands of the paper's experiments and the data sets."""
    p = sub.add_parser(
        "reproduce",
        help="the paper's tables and figures from real training runs",
        description="degradation (Figure 6), layer-responses (Figure 7), gradient-flow, table1, "
        "cifar-table (Table 6). Runs are kept in OUT/runs and reused.",
    )
    p.add_argument("what", choices=["degradation", "layer-responses", "gradient-flow", "table1", "cifar-table"])
    p.add_argument("--dataset", default="fashion-mnist", help="fashion-mnist (default) or cifar10")
    p.add_argument("--data", help="the CIFAR-10 archive (cifar-10-python.tar.gz) or the folder holding it")
    p.add_argument(
        "--budget", default="short", help=f"{' | '.join(f'{k} ({v:,} it)' for k, v in BUDGETS.items())} | N iterations"
    )
    p.add_argument("--seed", type=count(0), default=0)
    p.add_argument("--seeds", default="0", help="cifar-table: comma-separated seeds (mean +- std over them)")
    p.add_argument("--depths", default="20,32,44,56,110", help="cifar-table: ResNet depths")
    p.add_argument("--out", default="runs/reproduce", help="reports, figures and runs/ go here")
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--jobs",
        type=count(1),
        default=1,
        help="runs trained at once, each in its own process (several fit "
        "on one GPU); a stopped command resumes unfinished runs when run again",
    )
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="a training config key for every run")
    p.set_defaults(func=_cmd_reproduce)

    p = sub.add_parser(
        "data",
        help="find a dataset locally, download it (checksummed) with --download, write shards (data shard SRC) or "
        "make the shapes detection set (data shapes)",
        description="resnets data NAME [--download]: find or fetch a dataset. resnets data shard SRC --out DIR: "
        "an image folder or CSV manifest as WebDataset tar shards with an index (train with --dataset wds --data "
        "DIR). resnets data shapes --out DIR: coloured shapes on textured backgrounds in COCO's format (boxes, "
        "polygons) with semantic masks, to train and test detectors on (--dataset coco --data DIR)",
    )
    p.add_argument("name", nargs="?", choices=[*(n for n, s in DATASETS.items() if s.downloadable), "shard", "shapes"])
    p.add_argument(
        "source",
        nargs="?",
        metavar="SRC",
        help="data shard: an image folder, a CSV manifest, a dataset (fashion-mnist) or a Hugging Face dataset "
        "(hf:DIR_OR_NAME)",
    )
    p.add_argument("--list", action="store_true", help="every dataset the training config and eval take")
    p.add_argument("--path", help="CIFAR archive or folder holding it")
    p.add_argument("--download", action="store_true")
    p.add_argument("--out", help="data shard: the folder for the shards and index.json (new or empty)")
    p.add_argument("--shard-size", default="512MB", help="data shard: at most this much per shard (default 512MB)")
    p.add_argument("--train", type=count(1), default=400, help="data shapes: training images (default 400)")
    p.add_argument("--val", type=count(1), default=100, help="data shapes: validation images (default 100)")
    p.add_argument("--size", type=count(32), default=128, help="data shapes: image side, pixels (default 128)")
    p.add_argument("--seed", type=count(0), default=0, help="data shapes: the same seed writes the same files")
    p.add_argument(
        "--crops",
        type=count(0),
        default=0,
        metavar="PX",
        help="data shapes: also each shape cut out at PX x PX into DIR/crops/{train,val}/CLASS/ (an image folder "
        "to pretrain a classifier on; default 0: none)",
    )
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_cmd_data)
