"""Collections: `resnets embed` and `resnets predict` over many images, spread over the processes torchrun starts,
and resumable.

    resnets embed --data SHARDS_OR_FOLDER --weights W --out DIR                    (one process)
    torchrun --nproc-per-node 4 -m resnets embed --data SHARDS_OR_FOLDER --weights W --out DIR
    torchrun --nnodes 8 --nproc-per-node 4 --rdzv-endpoint HOST:PORT -m resnets predict --data ... --out DIR

The images are cut into parts: a shard each (shards `resnets data shard` wrote: a folder holding index.json, shard
files, or shards to stream), or PART_SIZE files of a folder in sorted order. Rank r of W takes parts r, r + W,
r + 2W, ... and writes each one's output to DIR/parts/ whole (a temporary file, then a rename) as it finishes.
The same command run again (after a kill, a preemption or a requeue; with any number of processes) skips the parts
written: a kill costs at most the part in flight in each process. When every part is written, rank 0 merges them
in order into DIR/embeddings.safetensors (the index `resnets similar --index` searches; its approximate index is
built then when it is large) or DIR/predictions.jsonl (a line an image, as `predict --json`'s results). Unreadable
images are lines of DIR/unreadable.jsonl (embed) or of the predictions (predict), and make the exit status 1 in
one process (under torchrun 0, said: torchrun restarts a group on a worker's non-zero status).

DIR/collection.json says what the job is: the command, the model file's sha256, the backend and precision, the
data and each part's images (its count and a hash of their names, and of a folder's files' sizes and times of
change: a file replaced makes it another job). A folder of another job is refused, or with
--force started again. The processes meet twice on a gloo group (torchrun's store: no GPU collectives): once
for rank 0's check of DIR, once before the merge, with no time limit on the wait for the slowest rank.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from . import distributed
from .backends import auto_backend
from .data import jsonfile, remote, shards
from .errors import ResnetsError, Unreadable, printable
from .inference import APPROX_ABOVE, check_embed, embed, index_for, predict, runner_for, save_index
from .meta import preprocessing_for
from .onnx_predict import digest, find_images, model_files
from .safe_io import atomic_path, check_output_folder, is_run_folder

FORMAT = "resnets.collection/1"
PART_FORMAT = "resnets.collection-part/1"
MANIFEST = "collection.json"
PART_SIZE = 1024  # a folder's images a part: what a kill can cost a process
OUTPUT = {"embed": "embeddings.safetensors", "predict": "predictions.jsonl"}
SUFFIX = {"embed": ".safetensors", "predict": ".jsonl"}
UNREADABLE = "unreadable.jsonl"
MAX_RECORD_BYTES = 256 << 20  # collection.json: ~80 bytes a part (10 million images in parts of 1,024: 0.8 MB)


@dataclass
class Job:
    """What `embed --data` or `predict --data` was asked: the command, its images, its model and where it writes."""

    command: str  # embed or predict
    data: str
    weights: str
    out: Path
    part_size: int = PART_SIZE
    layer: str | None = None
    top_k: int = 5
    batch_size: int = 32
    workers: int = 2
    backend: str = "eager"
    precision: str = "fp32"
    device: str = "auto"
    force: bool = False


def parts_of(data: str, part_size: int = PART_SIZE, channels: int = 3) -> list[tuple[str, object]]:
    """(name, images) of each part of `data`, in order: a shard each (its images a shards.ShardDataset), or
    `part_size` image files of a folder (sorted, as `predict` lists them)."""
    if remote.is_remote(str(data)) or shards.holds_shards(data):
        return [
            (f"{i:06d}-{name.removesuffix('.tar')}", ds) for i, (name, ds) in enumerate(shards.by_shard(data, channels))
        ]
    if not Path(data).is_dir():
        raise ResnetsError(
            f"--data is a folder of images, or shards (a folder holding index.json, .tar files); got {data}"
        )
    files = find_images([data])
    return [(f"{i // part_size:06d}-images", files[i : i + part_size]) for i in range(0, len(files), part_size)]


def _names(images) -> list[str]:
    return [name for name, _ in images.samples] if isinstance(images, shards.ShardDataset) else list(images)


def manifest(job: Job, parts: list[tuple[str, object]]) -> dict:
    """The job as DIR/collection.json records it: what must be the same for a run to continue another's parts."""
    files = model_files(job.weights)
    model = {"weights": str(Path(job.weights).resolve()) if files else job.weights}
    if files:
        model["sha256"] = [digest(f) for f in files]
    rows = []
    for name, images in parts:
        names = _names(images)
        rows.append([name, len(names), _fingerprint(images, names)])
    asked = {"layer": job.layer} if job.command == "embed" else {"top_k": job.top_k}
    cut = {} if isinstance(parts[0][1] if parts else None, shards.ShardDataset) else {"part_size": job.part_size}
    return {
        "format": FORMAT,
        "command": job.command,
        **model,
        **asked,
        "backend": job.backend,
        "precision": job.precision,
        "data": job.data,
        **cut,
        "parts": rows,
    }


def _fingerprint(images, names: list[str]) -> str:
    """A part's images, named: a folder's files by name, size and time of change (a file replaced makes its part
    another job's), a shard's samples by name (the shard's size is checked against its index)."""
    if isinstance(images, shards.ShardDataset):
        return hashlib.sha256("\n".join(names).encode()).hexdigest()[:32]
    h = hashlib.sha256()
    for f in names:
        try:
            st = os.stat(f)
            h.update(f"{f}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{f}\tmissing\n".encode())
    return h.hexdigest()[:32]


def _differs(old: dict, new: dict) -> str | None:
    """What makes the collection recorded (`old`) another job than `new`, in a few words; None: the same job."""
    for key in ("format", "command", "weights", "sha256", "layer", "top_k", "backend", "precision", "part_size"):
        if old.get(key) != new.get(key):
            flag = (
                f" (--{key.replace('_', '-')})"
                if key in ("layer", "top_k", "backend", "precision", "part_size")
                else ""
            )
            return f"its {key} is {_shown(old.get(key))}, not {_shown(new.get(key))}{flag}"
    if old.get("parts") != new.get("parts"):
        there = old.get("parts")
        held = f"{len(there)} parts there" if isinstance(there, list) else "no parts recorded"
        return f"its images differ ({held}, {len(new['parts'])} now)"
    return None


def _shown(value) -> str:
    return "none" if value is None else printable(str(value))[:60]


def prepare(job: Job, record: dict) -> int:
    """Rank 0's check of DIR before any work: a new collection is started (its manifest written), one of the
    same job continued; the number of parts already written. Refused in one line: a training run's folder (even
    with --force), a folder of another job (without --force), or of something else; a parts/ that is not a folder
    of its own (a link, a file)."""
    out = job.out
    recorded = out / MANIFEST
    if out.is_dir() and is_run_folder(out):
        raise ResnetsError(f"{out} is a training run's folder; write the collection elsewhere")
    if recorded.is_file():
        why = _differs(_recorded(recorded), record)
        if why and not job.force:
            raise ResnetsError(
                f"{out} holds a collection of another job ({why}): give another --out, or --force to start it again"
            )
        if why:
            _clear(out)
    else:
        check_output_folder(out, force=job.force, what="collection")
    parts = out / "parts"
    if parts.is_symlink() or (parts.exists() and not parts.is_dir()):
        raise ResnetsError(f"{parts} is not a folder of this collection's own (a link or a file): remove it")
    try:
        parts.mkdir(parents=True, exist_ok=True)
        for left in parts.glob(".*.tmp*"):  # a killed process's half-written part (unlink: never what a link names)
            left.unlink(missing_ok=True)
        with atomic_path(recorded) as tmp:
            tmp.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    except OSError as e:
        raise ResnetsError(f"cannot prepare {out}: {e.strerror or e}") from None
    return sum(_part_path(job, name).is_file() for name, _, _ in record["parts"])


def _recorded(path: Path) -> dict:
    """A folder's collection.json, or {} (another job's, then) when it is not one we could have written."""
    try:
        if path.stat().st_size > MAX_RECORD_BYTES:
            return {}
        old = jsonfile.loads(path.read_bytes(), str(path), max_depth=4)
    except (OSError, ResnetsError):
        return {}
    return old if isinstance(old, dict) else {}


def _clear(out: Path) -> None:
    """A collection's own files removed (its parts, outputs and record), nothing else of the folder's; a parts/
    that is a link is refused, not followed."""
    parts = out / "parts"
    if parts.is_symlink() or (parts.exists() and not parts.is_dir()):
        raise ResnetsError(f"{parts} is not a folder of this collection's own (a link or a file): remove it")
    try:
        if parts.exists():
            shutil.rmtree(parts)
        for name in (*OUTPUT.values(), UNREADABLE, MANIFEST):
            (out / name).unlink(missing_ok=True)
    except OSError as e:
        raise ResnetsError(f"cannot clear the collection in {out}: {e.strerror or e}") from None


def _part_path(job: Job, name: str) -> Path:
    return job.out / "parts" / f"{name}{SUFFIX[job.command]}"


def run(job: Job, load) -> int:
    """The collection `job` asks for, in this process's share (one process: all of it); rank 0 merges it. `load`:
    the model on a device (`load(device)`, refusing what is not a classifier in one line), before anything is
    written. Exit status: 0, or 1 when any image could not be read."""
    ctx = distributed.setup(job.device, collectives="gloo", timeout_s=None)
    try:
        if job.backend == "auto":  # the fastest for this device (ONNX Runtime for fp32 on a CPU); stage maps: eager
            job.backend = "eager" if job.layer else auto_backend(ctx.device, job.precision)
        model = load(ctx.device).eval()
        if job.command == "embed":  # what embed refuses, refused before the folder is touched
            check_embed(model, job.layer, job.backend, job.precision)
        parts = parts_of(job.data, job.part_size, channels=len(preprocessing_for(model).mean))
        record = manifest(job, parts)
        verdict = None
        if ctx.is_main:
            try:
                verdict = prepare(job, record)
            except Exception as e:  # every rank stops with rank 0's line, not only rank 0 (the others wait on it)
                verdict = str(e) if isinstance(e, ResnetsError) else f"cannot prepare {job.out}: {e}"
        verdict = distributed.broadcast_object(verdict, ctx)
        if isinstance(verdict, str):
            raise ResnetsError(verdict)
        if ctx.is_main:
            n = sum(r[1] for r in record["parts"])
            print(
                f"collection: {n:,} images in {len(parts)} parts, {verdict} written before (skipped); "
                f"{ctx.world} process{'es' if ctx.world > 1 else ''}",
                file=sys.stderr,
                flush=True,
            )
        _work(job, model, parts, [count for _, count, _ in record["parts"]], ctx)
        distributed.barrier(ctx)
        status = _merge(job, record) if ctx.is_main else 0
        # under torchrun a worker's non-zero status is a failure: the group is restarted (--max-restarts), to
        # skip every part and merge again; unreadable images are said and listed, and the job succeeded
        return 0 if ctx.distributed else status
    finally:
        distributed.cleanup(ctx)


def _work(job: Job, model, parts: list[tuple[str, object]], counts: list[int], ctx) -> None:
    """This rank's parts that are not written yet, each written whole as it is done (`counts`: each part's
    images, as the record holds them)."""
    todo = [
        (i, name, images)
        for i, (name, images) in enumerate(parts)
        if i % ctx.world == ctx.rank and not _part_path(job, name).is_file()
    ]
    if not todo:
        return
    output = "features" if job.command == "embed" else "logits"
    runner = None
    if job.command == "predict" or job.layer is None:  # made once (an export, a compilation), used by every part
        runner = runner_for(model, job.backend, todo[0][2], output, job.batch_size, job.precision, ctx.device)
    offsets = [0]
    for count in counts:
        offsets.append(offsets[-1] + count)
    where = f"rank {ctx.rank}: " if ctx.distributed else ""
    for done, (i, name, images) in enumerate(todo, 1):
        bad = _part(job, model, runner, name, images, offsets[i])
        said = f" ({bad} unreadable)" if bad else ""
        print(
            f"{where}part {name}: {offsets[i + 1] - offsets[i]:,} images{said} [{done}/{len(todo)}]",
            file=sys.stderr,
            flush=True,
        )


def _part(job: Job, model, runner, name: str, images, first: int) -> int:
    """One part computed and written whole; the number of its images that could not be read."""
    common = dict(batch_size=job.batch_size, workers=job.workers, backend=job.backend, precision=job.precision)
    path = _part_path(job, name)
    if job.command == "embed":
        emb, kept, errors = embed(model, images, layer=job.layer, runner=runner, none_read=True, **common)
        meta = {"format": PART_FORMAT, "files": json.dumps(kept), "errors": json.dumps(errors)}
        with atomic_path(path) as tmp:
            save_file({"embeddings": emb.contiguous()} if kept else {}, str(tmp), metadata=meta)
        return len(errors)
    results = predict(model, images, top_k=job.top_k, runner=runner, **common)
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for r in results:
            f.write(json.dumps({**r, "input": first + r["input"]}) + "\n")
    return sum("error" in r for r in results)


def _read_part(job: Job, name: str, count: int):
    """A written part: (embeddings or None, files, errors) for embed; the result rows for predict. One that is not
    what this collection writes (its `count` images, as many rows as files, well-formed) is refused, naming it."""
    path = _part_path(job, name)
    bad = ResnetsError(f"{path} is not the part of {count} images this collection wrote: remove it, and run again")
    try:
        if job.command == "predict":
            rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
            if len(rows) != count or not all(isinstance(r, dict) and ("top" in r or "error" in r) for r in rows):
                raise bad
            return rows
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
            emb = f.get_tensor("embeddings") if "embeddings" in f.keys() else None
        files, errors = json.loads(meta["files"]), json.loads(meta["errors"])
    except Exception:  # (safetensors' own error among them): a part that cannot be read is not ours
        raise bad from None
    listed = isinstance(files, list) and isinstance(errors, list) and all(isinstance(f, str) for f in files)
    rows = 0 if emb is None else emb.shape[0]
    if not listed or len(files) + len(errors) != count or rows != len(files):
        raise bad
    return emb, files, errors


def _merge(job: Job, record: dict) -> int:
    """Every part, in order, into the collection's output (written whole); the exit status."""
    out = job.out / OUTPUT[job.command]
    bad = 0
    if job.command == "predict":
        with atomic_path(out) as tmp, open(tmp, "w", encoding="utf-8") as f:
            for name, count, _ in record["parts"]:
                rows = _read_part(job, name, count)
                bad += sum("error" in r for r in rows)
                f.writelines(json.dumps(r) + "\n" for r in rows)
        print(f"{sum(r[1] for r in record['parts']):,} predictions -> {out}", flush=True)
    else:
        rows, files, errors = [], [], []
        for name, count, _ in record["parts"]:
            emb, kept, unread = _read_part(job, name, count)
            rows += [emb] if emb is not None else []
            files += kept
            errors += unread
        unreadable = job.out / UNREADABLE
        if errors:
            with atomic_path(unreadable) as tmp:
                tmp.write_text("".join(json.dumps(e) + "\n" for e in errors), encoding="utf-8")
        else:
            unreadable.unlink(missing_ok=True)
        if not rows:
            raise Unreadable(f"no image of {job.data} could be read (listed in {unreadable})")
        if len({r.shape[1:] for r in rows}) > 1:
            raise ResnetsError(
                f"the parts in {job.out / 'parts'} hold rows of different shapes: remove them, run again"
            )
        embeddings = torch.cat(rows)
        save_index(out, embeddings, files, weights=record.get("weights", job.weights), layer=job.layer)
        if len(files) > APPROX_ABOVE:  # what `similar` will search: built now, once
            index_for(out, embeddings, "auto", said=lambda text: print(text, file=sys.stderr))
        bad = len(errors)
        print(f"{len(files):,} embeddings of shape {tuple(embeddings.shape[1:])} -> {out}", flush=True)
    if bad:
        where = "their lines in the predictions" if job.command == "predict" else f"listed in {job.out / UNREADABLE}"
        print(f"{bad:,} image{'s' if bad > 1 else ''} could not be read ({where})", file=sys.stderr)
    return 1 if bad else 0
