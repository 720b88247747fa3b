"""Collections (issue 40): `embed --data` and `predict --data` in parts, resumable, spread over torchrun's
processes, merged into what `embed` and `predict` give for the same images."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import run_cli

from resnets import collection as C
from resnets.inference import load_index


def _index(path):
    emb, files, _ = load_index(path)
    return emb, files


def test_a_folder_in_parts_gives_what_embed_and_predict_give_for_its_files(photos, model_file, tmp_path):
    """Parts of 2 files: the merged index holds the rows `embed` gives (same files, same order), the merged
    predictions `predict --json`'s results (numbered across the parts); the unreadable file is listed, exit 1."""
    code, _, err = run_cli("embed", photos, "--weights", model_file, "--out", tmp_path / "one.safetensors")
    assert code == 1, err
    code, _, err = run_cli(
        "embed", "--data", photos, "--weights", model_file, "--out", tmp_path / "e", "--part-size", 2
    )
    assert code == 1 and "6 images in 3 parts, 0 written before" in err, err
    assert "1 image could not be read" in err and "truncated.jpg" in (tmp_path / "e" / C.UNREADABLE).read_text()
    (want, want_files), (got, got_files) = (
        _index(tmp_path / "one.safetensors"),
        _index(tmp_path / "e" / C.OUTPUT["embed"]),
    )
    assert got_files == want_files and len(got_files) == 5
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)  # batches of 2 and of 5 round alike, nearly
    assert sorted(p.name for p in (tmp_path / "e" / "parts").iterdir()) == [
        f"00000{i}-images.safetensors" for i in range(3)
    ]

    code, out, _ = run_cli("predict", photos, "--weights", model_file, "--json", "-k", 2)
    want = json.loads(out)
    code, out, err = run_cli(
        "predict", "--data", photos, "--weights", model_file, "--out", tmp_path / "p", "-k", 2, "--backend", "eager"
    )
    assert code == 1 and f"6 predictions -> {tmp_path / 'p' / C.OUTPUT['predict']}" in out, err
    got = [json.loads(line) for line in (tmp_path / "p" / C.OUTPUT["predict"]).read_text().splitlines()]
    assert [(r["input"], r["path"], "error" in r) for r in got] == [(r["input"], r["path"], "error" in r) for r in want]
    for g, w in zip(got, want):
        assert [t["class"] for t in g.get("top", [])] == [t["class"] for t in w.get("top", [])]
        assert [t["prob"] for t in g.get("top", [])] == pytest.approx([t["prob"] for t in w.get("top", [])], abs=1e-5)


def test_a_collection_continues_where_it_stopped_and_refuses_another_job(photos, model_file, tmp_path):
    """Run again, the parts written are skipped and a half-written one (a killed process's temporary file) is
    swept; the output is the same. A folder of another job, or of something else, is one line and exit 2."""
    out = tmp_path / "e"
    args = ["embed", "--data", photos, "--weights", model_file, "--out", out, "--part-size", 2, "--workers", 0]
    assert run_cli(*args)[0] == 1
    first = _index(out / C.OUTPUT["embed"])
    parts = sorted((out / "parts").iterdir())
    parts[1].unlink()
    (out / "parts" / f".{parts[1].name}.abc.tmp.safetensors").write_bytes(b"half")
    written = {p: p.stat().st_mtime_ns for p in (parts[0], parts[2])}
    code, _, err = run_cli(*args)
    assert code == 1 and "6 images in 3 parts, 2 written before (skipped)" in err, err
    assert "part 000001-images" in err and "part 000000-images" not in err
    assert {p: p.stat().st_mtime_ns for p in written} == written  # not written again
    assert sorted(p.name for p in (out / "parts").iterdir()) == [p.name for p in parts]  # the half one is gone
    again = _index(out / C.OUTPUT["embed"])
    assert again[1] == first[1] and torch.equal(again[0], first[0])

    for other, why in (
        (["--layer", "layer3"], "its layer is none, not layer3 (--layer)"),
        (["--part-size", 3], "its part_size is 2, not 3 (--part-size)"),
        (["--backend", "onnxruntime"], "its backend is eager, not onnxruntime (--backend)"),
    ):
        code, _, err = run_cli(*args, *other)
        assert code == 2 and f"holds a collection of another job ({why})" in err and "--force" in err, err
    code, _, err = run_cli(*args, "--part-size", 3, "--force")
    assert code == 1 and "6 images in 2 parts, 0 written before" in err, err
    assert len(list((out / "parts").iterdir())) == 2

    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("a user's file")
    given = ["embed", "--data", photos, "--weights", model_file]
    for bad, said in (
        ([*given, "--out", tmp_path / "mine"], "holds files"),
        ([*given, photos, "--out", tmp_path / "y"], "give image paths or --data, not both"),
        (given, "give its folder with --out DIR"),
    ):
        code, _, err = run_cli(*bad)
        assert code == 2 and said in err, (bad, err)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "a user's file" and not (tmp_path / "y").exists()
    code, _, err = run_cli(
        "embed", photos, "--weights", model_file, "--out", tmp_path / "z.safetensors", "--part-size", 2
    )
    assert code == 2 and "--part-size is for --data" in err
    code, _, err = run_cli("predict", photos, "--weights", model_file, "--out", tmp_path / "z")
    assert code == 2 and "--out and --force are for --data" in err
    code, _, err = run_cli("predict", "--weights", model_file)
    assert code == 2 and "give image files or folders, or --data" in err
    code, _, err = run_cli("predict", "--data", photos, "--weights", model_file, "--out", tmp_path / "q", "--json")
    assert code == 2 and "drop --format" in err and not (tmp_path / "q").exists()


def _class_folders(root, photos) -> None:
    """The readable photos as an image folder of two classes, three copies each (so several shards)."""
    good = sorted(p for p in photos.rglob("*") if p.suffix in (".jpg", ".png", ".webp") and "truncated" not in p.name)
    for i in range(3):
        for j, p in enumerate(good):
            folder = root / f"c{j % 2}"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{i}-{p.name}").write_bytes(p.read_bytes())


def test_shards_are_parts_a_shard_each_and_embed_as_their_files_do(photos, model_file, tmp_path):
    """Shards `resnets data shard` wrote: a part a shard, named after it; each image's row is the row of the
    same image read from its file (the 15 rows: 3 copies of each of 5 photos)."""
    from resnets.data import shards
    from resnets.data.datasets import image_folder

    _class_folders(tmp_path / "folder", photos)
    shards.write(
        {"train": image_folder(tmp_path / "folder")}, tmp_path / "shards", shard_bytes=600 << 10, progress=False
    )
    made = sorted(p.name for p in (tmp_path / "shards").glob("*.tar"))
    assert len(made) > 2
    code, _, err = run_cli("embed", "--data", tmp_path / "shards", "--weights", model_file, "--out", tmp_path / "e")
    assert code == 0 and f"15 images in {len(made)} parts" in err, err
    names = sorted(p.name for p in (tmp_path / "e" / "parts").iterdir())
    assert [n.split("-", 1)[1] for n in names] == [m.replace(".tar", ".safetensors") for m in made]
    rows, keys = _index(tmp_path / "e" / C.OUTPUT["embed"])
    code, out, err = run_cli("similar", photos / "coffee.png", "--index", tmp_path / "e", "-k", 3, "--json")
    hits = json.loads(out)  # its 3 copies in the shards, a collection's folder searched
    assert code == 0 and [h["similarity"] for h in hits] == pytest.approx([1.0] * 3, abs=1e-4), err
    assert len(keys) == 15 and all(k.split("/")[-2] in made for k in keys)
    code, _, err = run_cli("embed", tmp_path / "folder", "--weights", model_file, "--out", tmp_path / "f.safetensors")
    want, _ = _index(tmp_path / "f.safetensors")
    nearest = torch.cdist(rows, want).min(1)
    assert nearest.values.max() < 1e-3 and sorted(nearest.indices.tolist()) != [0] * 15  # each is one of the files
    assert sorted(torch.cdist(want, rows).min(1).values.tolist())[-1] < 1e-3  # and every file is among them


def _torchrun(n: int, *args, **kw) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(n)]
    cmd = (launcher if n > 1 else [sys.executable]) + ["-m", "resnets", *map(str, args)]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def test_a_killed_collection_continued_by_two_gloo_processes_gives_one_processs_index(photos, model_file, tmp_path):
    """A one-process run SIGKILLed after its first part, run again under torchrun with two processes (gloo, on the
    CPU): the parts written are skipped, each rank writes its share of the rest, and the index is the one an
    uninterrupted process writes, bit for bit."""
    many = tmp_path / "many"  # 24 parts of one image: a kill noticed late (a busy machine) still leaves some
    for i, f in enumerate(sorted(p for p in photos.rglob("*.*") if p.suffix != ".txt")):
        for copy in range(4):
            (many / f"{copy}").mkdir(parents=True, exist_ok=True)
            (many / f"{copy}" / f"{i}{f.suffix}").write_bytes(f.read_bytes())
    args = ["embed", "--data", many, "--weights", model_file, "--part-size", 1, "--workers", 0]
    p = _torchrun(1, *args, "--out", tmp_path / "one")
    _, err = p.communicate(timeout=300)
    assert p.returncode == 1 and "4 images could not be read" in err, err[-3000:]  # the truncated one's copies
    one = _index(tmp_path / "one" / C.OUTPUT["embed"])

    p = _torchrun(1, *args, "--out", tmp_path / "killed", start_new_session=True)
    parts = tmp_path / "killed" / "parts"
    deadline = time.monotonic() + 120
    while not (parts.is_dir() and any(f.suffix == ".safetensors" and f.name[0] != "." for f in parts.iterdir())):
        assert p.poll() is None and time.monotonic() < deadline, p.communicate()[1][-3000:]
        time.sleep(0.05)
    os.killpg(p.pid, signal.SIGKILL)
    p.communicate()
    kept = [f for f in parts.iterdir() if f.name[0] != "."]
    assert 1 <= len(kept) <= 20 and not (tmp_path / "killed" / C.OUTPUT["embed"]).exists()
    p = _torchrun(2, *args, "--out", tmp_path / "killed")
    _, err = p.communicate(timeout=300)
    assert p.returncode == 0 and f"{len(kept)} written before (skipped); 2 processes" in err, err[-3000:]
    assert "rank 0: part" in err and "rank 1: part" in err, err[-3000:]  # both took a share of the rest
    assert "4 images could not be read" in err  # and exit 0: torchrun would restart a group that exits 1
    again = _index(tmp_path / "killed" / C.OUTPUT["embed"])
    assert again[1] == one[1] and torch.equal(again[0], one[0])


def test_similar_refuses_a_model_other_than_the_one_that_made_the_index(photos, model_file, tmp_path):
    """The index records the sha256 of the model that made it: a query embedded by another model of the same width
    would compare features of two models, silently; it is one line and exit 2. A model moved away is named, with
    how to point at it."""
    import resnets

    code, _, _ = run_cli("embed", photos, "--weights", model_file, "--out", tmp_path / "i.safetensors")
    assert code == 1
    torch.manual_seed(1)
    other = resnets.create_model("resnet18", num_classes=4).eval()
    resnets.save(other, tmp_path / "other.safetensors", class_names=["a", "b", "c", "d"])
    code, _, err = run_cli("similar", photos / "coffee.png", "--index", tmp_path / "i.safetensors",
                           "--weights", tmp_path / "other.safetensors")  # fmt: skip
    assert code == 2 and "is not the model that made the index" in err, err
    moved = tmp_path / "moved.safetensors"
    moved.write_bytes(model_file.read_bytes())
    code, _, err = run_cli("similar", photos / "coffee.png", "--index", tmp_path / "i.safetensors", "--weights", moved)
    assert code == 0, err  # the same model, wherever it is
    index = tmp_path / "j.safetensors"
    code, _, _ = run_cli("embed", photos, "--weights", moved, "--out", index)
    moved.unlink()
    code, _, err = run_cli("similar", photos / "coffee.png", "--index", index)
    assert code == 2 and "give --weights where it is now" in err, err


def test_a_collections_folder_from_elsewhere_is_checked_not_believed(photos, model_file, tmp_path):
    """What a hostile review did to a collection's folder: a parts/ that links elsewhere (--force clearing it once
    followed the link and deleted there, and kept another model's parts), a part with fewer rows than names
    (merged into an index whose rows and names disagreed, exit 0), malformed parts and records (tracebacks), a
    training run's folder with a record planted, a file replaced between runs (its old result kept), a bad
    --layer (a folder left that the corrected command then refused), every image unreadable (exit 2, not 1), a
    pattern of a billion shards (gigabytes before a line). Each is one line, and nothing outside DIR is touched."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    args = ["embed", "--data", photos, "--weights", model_file, "--part-size", 2, "--workers", 0]
    out = tmp_path / "e"
    assert run_cli(*args, "--out", out)[0] == 1
    elsewhere = tmp_path / "elsewhere"
    (out / "parts").rename(elsewhere)
    (out / "parts").symlink_to(elsewhere)
    (elsewhere / ".victim.tmp").write_text("a file of someone else's")
    for extra in ([], ["--force", "--layer", "layer4"]):
        code, _, err = run_cli(*args, "--out", out, *extra)
        assert code == 2 and "not a folder of this collection's own" in err, err
    assert (elsewhere / ".victim.tmp").exists() and len(list(elsewhere.iterdir())) == 4
    (out / "parts").unlink()
    elsewhere.rename(out / "parts")

    first = sorted(p for p in (out / "parts").iterdir() if p.suffix == ".safetensors")[0]
    tensors = load_file(str(first))
    with safe_open(str(first), "pt") as f:
        meta = f.metadata()
    save_file({"embeddings": tensors["embeddings"][:1]}, str(first), metadata=meta)  # 1 row, 2 names
    (out / C.OUTPUT["embed"]).unlink()
    code, _, err = run_cli(*args, "--out", out)
    assert code == 2 and f"{first} is not the part of 2 images" in err and "remove it" in err, err
    first.write_bytes(b"not a safetensors file")
    code, _, err = run_cli(*args, "--out", out)
    assert code == 2 and f"{first} is not the part of 2 images" in err, err
    (out / C.MANIFEST).write_text('{"format": "resnets.collection/1", "command": "embed", "parts": 5}')
    code, _, err = run_cli(*args, "--out", out)
    assert code == 2 and "holds a collection of another job" in err, err

    p = tmp_path / "p"
    assert run_cli("predict", "--data", photos, "--weights", model_file, "--out", p, "--backend", "eager")[0] == 1
    (p / "parts" / "000000-images.jsonl").write_text("not json\n5\n")
    code, _, err = run_cli("predict", "--data", photos, "--weights", model_file, "--out", p, "--backend", "eager")
    assert code == 2 and "000000-images.jsonl is not the part of" in err, err

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text('{"model": "resnet18"}')
    (run / C.MANIFEST).write_text("{}")
    code, _, err = run_cli(*args, "--out", run, "--force")
    assert (
        code == 2
        and "training run's folder" in err
        and sorted(p.name for p in run.iterdir())
        == [
            C.MANIFEST,
            "config.json",
        ]
    )

    changing = tmp_path / "changing"
    changing.mkdir()
    for name in ("a.jpg", "b.png"):
        (changing / name).write_bytes(next(photos.glob(f"*{name[-4:]}")).read_bytes())
    assert run_cli(*args[:2], changing, *args[3:], "--out", tmp_path / "c")[0] == 0
    (changing / "a.jpg").write_bytes((photos / "sub" / "chelsea.jpg").read_bytes())  # the same name, a new image
    code, _, err = run_cli(*args[:2], changing, *args[3:], "--out", tmp_path / "c")
    assert code == 2 and "its images differ" in err, err
    code, _, err = run_cli(*args[:2], changing, *args[3:], "--out", tmp_path / "c", "--force")
    assert code == 0 and "0 written before" in err, err

    code, _, err = run_cli(*args, "--out", tmp_path / "L", "--layer", "bogus")
    assert code == 2 and "unknown layer" in err and not (tmp_path / "L").exists()
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.jpg").write_bytes(b"nope")
    code, _, err = run_cli(*args[:2], bad, *args[3:], "--out", tmp_path / "b")
    assert code == 1 and "no image of" in err and (tmp_path / "b" / C.UNREADABLE).is_file(), err
    started = time.monotonic()
    code, _, err = run_cli(*args[:2], f"{tmp_path}/s-{{000000..999999999}}.tar", *args[3:], "--out", tmp_path / "s")
    assert code == 2 and "names more than 1,000,000 shards" in err and time.monotonic() - started < 30, err
