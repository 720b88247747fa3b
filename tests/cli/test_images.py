"""`resnets predict`, `embed`, `similar` and `explain` on the command line (cli/images.py): what they print and write,
and bad input in one line."""

import json

import pytest
from conftest import run_cli

import resnets
from resnets import inference as I
from resnets.onnx_predict import digest


def test_cli_predict_embed_similar_explain(photos, model_file, tmp_path):
    code, out, err = run_cli("predict", photos, "--weights", model_file, "--format", "json", "--top-k", 2)
    assert code == 1, err  # one file could not be read: the rest are answered, the exit status says so
    rows = json.loads(out)
    assert len(rows) == 6 and sum("error" in r for r in rows) == 1 and "1 of 6 files" in err
    code, out, _ = run_cli("predict", photos / "coffee.png", "--weights", model_file, "--format", "csv")
    assert code == 0 and out.splitlines()[0] == "path,rank,class,index,prob,error" and len(out.splitlines()) == 5
    code, out, err = run_cli("embed", photos, "--weights", model_file, "--out", tmp_path / "idx.safetensors")
    assert code == 1 and "5 embeddings of shape (512,)" in out and "1 of 6 files could not be read" in err, err
    code, out, err = run_cli(
        "similar", photos / "coffee.png", "--index", tmp_path / "idx.safetensors", "-k", 2, "--json"
    )
    assert code == 0, err
    hits = json.loads(out)
    assert hits[0]["path"].endswith("coffee.png") and hits[0]["similarity"] == pytest.approx(1.0, abs=1e-4)
    code, _, err = run_cli("similar", photos / "notes.txt", "--index", tmp_path / "idx.safetensors")
    assert code == 1 and "no image could be read" in err and len(err.strip().splitlines()) == 1, err  # not misuse
    code, out, err = run_cli(
        "explain",
        photos / "sub" / "chelsea.jpg",
        "--weights",
        model_file,
        "--class",
        "cat",
        "--out",
        tmp_path / "cam.png",
    )
    assert code == 0, err
    from PIL import Image

    with Image.open(tmp_path / "cam.png") as im:
        assert im.format == "PNG" and im.size[0] > 300


@pytest.mark.parametrize(
    "args, needle, status",
    [
        (["predict", "/nonexistent.jpg"], "no such file", 2),
        # an image that cannot be read: 1, as predict's exit status says of its images (2 is bad usage)
        (["explain", "NOTES", "--out", "x.png"], "cannot read", 1),
        (["explain", "PHOTO", "--out", "/nonexistent/dir/x.png"], "does not exist", 2),
        (["explain", "PHOTO", "--class", "dog", "--out", "OUT"], "unknown class", 2),
        (["similar", "PHOTO", "--index", "MODEL"], "not an embedding index", 2),
    ],
)
def test_cli_bad_input(photos, model_file, tmp_path, args, needle, status):
    subst = {
        "NOTES": photos / "notes.txt",
        "PHOTO": photos / "coffee.png",
        "MODEL": model_file,
        "OUT": tmp_path / "o.png",
    }
    args = [subst.get(a, a) for a in args]
    if "--weights" not in args and args[0] != "similar":
        args += ["--weights", model_file]
    code, _, err = run_cli(*args)
    assert code == status and "Traceback" not in err and needle in err and len(err.strip().splitlines()) == 1, err


def test_predict_prints_a_table_goes_on_past_a_missing_path_and_agrees_on_names(photos, model_file, tmp_path, caplog):
    code, out, err = run_cli(
        "predict",
        photos / "coffee.png",
        tmp_path / "gone.jpg",
        photos / "sub" / "chelsea.jpg",
        "--weights",
        model_file,
        "--top-k",
        2,
        "--workers",
        0,
    )
    assert code == 1 and "1 of 3 files could not be read" in err, err
    lines = out.splitlines()
    assert lines[0].split() == ["file", "#1", "#2"] and len(lines) == 4
    assert lines[2].startswith(str(tmp_path / "gone.jpg")) and "ERROR: no such file" in lines[2]
    col = lines[0].index("#1")  # the columns line up
    assert all(line[col - 2 : col] == "  " for line in (lines[1], lines[3]))
    code, out_json, _ = run_cli("predict", photos / "coffee.png", "--weights", model_file, "--json", "--workers", 0)
    code2, out_fmt, _ = run_cli(
        "predict", photos / "coffee.png", "--weights", model_file, "--format", "json", "--workers", 0
    )
    assert code == code2 == 0 and json.loads(out_json) == json.loads(out_fmt)
    code, out, err = run_cli("similar", photos / "coffee.png", "--index", tmp_path / "none.safetensors", "--top-k", 2)
    assert code == 2 and "--top-k" not in err  # the same flag name as predict's
    model = resnets.load(model_file)
    with caplog.at_level("WARNING", logger="resnets"):
        I.predict(model, [photos / "coffee.png"], workers=0, backend="onnxruntime-int8")
    assert "too few for a reliable int8 model" in caplog.text


def test_explain_suggests_close_class_names(photos, model_file, tmp_path):
    code, _, err = run_cli(
        "explain", photos / "coffee.png", "--weights", model_file, "--class", "cofee", "--out", tmp_path / "c.png"
    )
    assert code == 2 and "did you mean 'coffee'" in err and not (tmp_path / "c.png").exists()
    code, _, err = run_cli(
        "explain", photos / "coffee.png", "--weights", model_file, "--class", 9, "--out", tmp_path / "c.png"
    )
    assert code == 2 and "out of range: the model has 4 classes" in err


def test_similar_with_another_models_index_names_both(photos, model_file, tmp_path):
    """An index made by one model queried with another was a matrix-shape traceback."""
    code, _, err = run_cli(
        "embed", photos / "coffee.png", "--weights", model_file, "--out", tmp_path / "idx.safetensors", "--workers", 0
    )
    assert code == 0, err
    other = resnets.save(resnets.create_model("resnet20", num_classes=3), tmp_path / "r20.safetensors")
    code, _, err = run_cli(
        "similar", photos / "coffee.png", "--index", tmp_path / "idx.safetensors", "--weights", other
    )
    assert code == 2 and "holds embeddings of shape (512,)" in err and "gives (64,)" in err, err
    assert str(model_file) in err and len(err.strip().splitlines()) == 1


def test_detect_prints_boxes_as_a_table_json_and_csv_and_draws_them(tiny_detector, shapes_set, tmp_path):
    import csv
    import io

    images = shapes_set / "val" / "images"
    code, out, err = run_cli("detect", images, "--weights", tiny_detector, "--score", "0", "--format", "json")
    assert code == 0, err
    rows = json.loads(out)
    assert [r["path"] for r in rows] == sorted(str(p) for p in images.iterdir())
    assert all({"box", "class", "score", "label"} <= set(b) for r in rows for b in r["boxes"])
    code, out, _ = run_cli("detect", images, "--weights", tiny_detector, "--score", "0", "--format", "csv")
    table = list(csv.reader(io.StringIO(out)))
    assert table[0] == ["path", "class", "score", "x0", "y0", "x1", "y1", "error"]
    assert len(table) - 1 == sum(len(r["boxes"]) for r in rows)
    code, out, err = run_cli(
        "detect", images / "000000.jpg", "--weights", tiny_detector, "--score", "0", "--out", tmp_path / "drawn"
    )
    assert code == 0 and out.startswith(str(images / "000000.jpg")) and "boxes" in out.splitlines()[0]
    assert [p.name for p in (tmp_path / "drawn").iterdir()] == ["000000.png"]
    n = int(out.split(": ")[1].split()[0])
    code, out, err = run_cli("detect", images / "000000.jpg", "--weights", tiny_detector, "--score", "1.01")
    assert code == 0 and f": 0 boxes ({n} more under --score 1.01)" in out, out  # why none were kept
    from PIL import Image

    assert Image.open(tmp_path / "drawn" / "000000.png").size == (64, 64)
    # nothing written over unasked; a classifier is sent to predict; an unreadable file is exit 1, the rest printed
    code, _, err = run_cli("detect", images / "000000.jpg", "--weights", tiny_detector, "--out", tmp_path / "drawn")
    assert code == 2 and "--force" in err
    (tmp_path / "bad.jpg").write_bytes(b"nope")
    code, out, err = run_cli("detect", tmp_path / "bad.jpg", images / "000001.jpg", "--weights", tiny_detector)
    assert code == 1 and "bad.jpg: ERROR" in out and "000001.jpg:" in out and "1 of 2 files" in err


def test_detect_refuses_a_classifier(model_file):
    code, _, err = run_cli("detect", __file__, "--weights", model_file)
    assert code == 2 and "is a classifier: this command takes detectors (`resnets predict` runs it)" in err


def test_similar_searches_exactly_or_approximately_and_embed_builds_the_approximate_index(
    photos, model_file, tmp_path, monkeypatch
):
    """Issue 40: `similar --search approx` on a small index gives the neighbours exact search gives; above
    APPROX_ABOVE (lowered here) `embed` builds the approximate index once, and `similar` (auto) reads it."""
    monkeypatch.setenv("RESNETS_HOME", str(tmp_path / "home"))
    index = tmp_path / "idx.safetensors"
    code, _, err = run_cli("embed", photos, "--weights", model_file, "--out", index, "--workers", 0)
    assert code == 1 and "approximate" not in err, err  # 5 rows: nothing to build
    hits = {}
    for search in ("exact", "approx"):
        code, out, err = run_cli(
            "similar", photos / "coffee.png", "--index", index, "-k", 3, "--json", "--search", search
        )
        assert code == 0, err
        hits[search] = json.loads(out)
    assert [h["path"] for h in hits["approx"]] == [h["path"] for h in hits["exact"]]
    assert hits["approx"][0]["path"].endswith("coffee.png")
    assert [h["similarity"] for h in hits["approx"]] == pytest.approx(
        [h["similarity"] for h in hits["exact"]], abs=1e-6
    )
    monkeypatch.setattr(I, "APPROX_ABOVE", 4)
    # the approximate index `similar --search approx` built is kept under RESNETS_HOME, named by the index file's
    # sha256: the same bytes written again (safetensors orders the metadata as it likes: now and then) reuse it
    # and embed builds nothing; an empty home makes it build
    written = digest(index)
    code, _, err = run_cli("embed", photos, "--weights", model_file, "--out", index, "--workers", 0, "--force")
    assert code == 1 and ("building" not in err) == (digest(index) == written), err
    monkeypatch.setenv("RESNETS_HOME", str(tmp_path / "home2"))
    code, _, err = run_cli("embed", photos, "--weights", model_file, "--out", index, "--workers", 0, "--force")
    assert code == 1 and "building the approximate search index of 5 rows" in err, err
    code, out, err = run_cli("similar", photos / "coffee.png", "--index", index, "-k", 3, "--json")
    assert code == 0 and "building" not in err, err
    assert [h["path"] for h in json.loads(out)] == [h["path"] for h in hits["approx"]]
    code, _, err = run_cli("similar", photos / "coffee.png", "--index", index, "--search", "fast")
    assert code == 2 and "invalid choice" in err


def test_similars_search_choices_and_help_say_what_the_library_does():
    """The parser names the choices and the threshold without importing torch: they must be the library's."""
    from resnets.cli.main import build_parser

    sub = next(a for a in build_parser()._actions if a.choices and "similar" in a.choices).choices["similar"]
    search = next(a for a in sub._actions if a.dest == "search")
    assert tuple(search.choices) == I.SEARCHES and f"{I.APPROX_ABOVE:,} vectors" in search.help
