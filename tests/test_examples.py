"""Every example in the README and the guides runs (issue 38): page by page, each code block's `resnets` commands
and Python run in order in a folder that holds what they name (photos in class folders, new photos, a CIFAR-10
archive made here), so a renamed flag, a changed output file or a broken sequence fails the suite.

The marker just above a block says how to shrink it, as an HTML comment the site does not show:
`<!-- example: KEY: ARGS | KEY: skip REASON | skip REASON -->`. ARGS are added to the block's command lines that
hold the token KEY (its first entry that matches wins); `skip REASON` leaves such a line (or, without a KEY, the
block) unrun and says why: ImageNet in /data/imagenet, a GPU, a server that runs until stopped, torchrun's
processes (each has its own tests). Published weights, which cannot download here, are stood in for by a resnet18
file made here (STAND_INS); everything else runs as written."""

import contextlib
import io
import re
import shlex
import shutil
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import cifar_archive, run_cli
from PIL import Image

import resnets

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
STAND_INS = {"resnet50.tv2_in1k": "stand-in.safetensors", "~/cifar-10-python.tar.gz": "cifar-10-python.tar.gz"}
BLOCK = re.compile(r"(?:<!-- example: (?P<marker>.*?) -->\n[ \t]*)?```(?P<lang>[a-z]*)\n(?P<body>.*?)```", re.S)


def blocks(text: str):
    """(marker, language, lines) of a page's code blocks; a command's continuation lines joined."""
    for m in BLOCK.finditer(text):
        body = textwrap.dedent(m["body"])  # (a block inside a list item is indented)
        yield m["marker"] or "", m["lang"], body.replace("\\\n", " ").splitlines()


def rule_for(marker: str, argv: list[str]) -> str | None:
    """The marker's rule for a command line: extra arguments, "skip ...", or None (run as written)."""
    for entry in filter(None, (e.strip() for e in marker.split("|"))):
        if entry.startswith("skip"):
            return entry
        key, _, rule = entry.partition(":")
        if key.strip() in argv:
            return rule.strip()
    return None


def command_lines(lines: list[str]):
    """The `resnets ...` lines of a block as argv (comments dropped), torchrun's with its own words first."""
    for line in lines:
        found = re.match(r"((?:torchrun .*?-m )?)resnets (.*)", line.strip())
        if found and not any(c in line for c in ("[", "...", "|")):  # a synopsis ([OPTIONS], a|b) runs nothing
            yield found[1].split() + shlex.split(found[2], comments=True)


def _photo(seed: int, size=(160, 120)) -> Image.Image:
    from skimage import data as sk

    src = [sk.chelsea(), sk.coffee(), sk.astronaut(), sk.rocket()][seed % 4]
    noise = np.random.default_rng(seed).integers(-20, 21, src.shape)
    return Image.fromarray(np.clip(src.astype(int) + noise, 0, 255).astype(np.uint8)).resize(size)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """What the examples name: photos/ and my_photos/ (one subfolder per class), new_photos/, a CIFAR-10 archive
    and the stand-in for published weights."""
    root = tmp_path_factory.mktemp("examples")
    for name in ("photos", "my_photos"):
        for c, cls in enumerate(("cat", "dog")):
            (root / name / cls).mkdir(parents=True)
            for i in range(10):
                _photo(c + 2 * i).save(root / name / cls / f"IMG_{i:04d}.jpg")
    (root / "new_photos").mkdir()
    for i, name in enumerate(("cat.jpg", "IMG_0420.jpg")):
        _photo(100 + i).save(root / "new_photos" / name)
    cifar_archive(root / "cifar-10-python.tar.gz", n_per_batch=20)
    resnets.save(resnets.create_model("resnet18"), root / "stand-in.safetensors")
    return root


def run_page(page: Path, where: Path) -> list[str]:
    """Every block of `page` run in `where` (a copy of the folder); returns what was left unrun, with why."""
    skipped, names = [], {}  # the page's Python blocks share their names, as a notebook's cells do
    for marker, lang, lines in blocks(page.read_text()):
        if lang == "python":
            if marker.startswith("skip"):
                skipped.append(f"python: {marker}")
                continue
            with contextlib.redirect_stdout(io.StringIO()):
                exec(compile("\n".join(lines), str(page), "exec"), names)
            continue
        for argv in command_lines(lines):
            rule = rule_for(marker, argv)
            if rule is not None and rule.startswith("skip"):
                skipped.append(f"{' '.join(argv)}: {rule}")
                continue
            assert argv[0] != "torchrun", f"{page.name}: a torchrun line needs a marker: {' '.join(argv)}"
            target = argv[argv.index(">") + 1] if ">" in argv else None
            argv = [STAND_INS.get(a, a) for a in (argv[: argv.index(">")] if target else argv)]
            argv += shlex.split(rule or "")
            code, out, err = run_cli(*argv)
            assert code == 0, f"{page.name}: resnets {' '.join(argv)} -> {code}\n{err[-3000:]}"
            if target:
                (where / target).write_text(out)
    return skipped


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_the_pages_examples_run(page, folder, tmp_path, monkeypatch):
    where = tmp_path / "here"
    shutil.copytree(folder, where)
    monkeypatch.chdir(where)
    monkeypatch.setattr(resnets, "load", lambda w, _load=resnets.load, **k: _load(STAND_INS.get(w, w), **k))
    skipped = run_page(page, where)
    assert all(re.search(r"skip \S", s) for s in skipped)  # each says why


def test_a_broken_example_fails(folder, tmp_path, monkeypatch):
    """A block whose command no longer runs (a flag renamed) fails its page."""
    page = tmp_path / "page.md"
    page.write_text("```\nresnets predict new_photos/ --weights resnet50.tv2_in1k --top-kk 2\n```\n")
    monkeypatch.chdir(folder)
    with pytest.raises(AssertionError, match="--top-kk"):
        run_page(page, folder)


def test_markers_shrink_and_skip():
    argv = ["train", "--recipe", "tv2-imagenet", "--data", "/data/imagenet"]
    marker = "finetune: --epochs 1 | tv2-imagenet: skip ImageNet in /data/imagenet"
    assert rule_for(marker, argv) == "skip ImageNet in /data/imagenet"
    assert rule_for(marker, ["finetune", "--data", "photos"]) == "--epochs 1"
    assert rule_for(marker, ["predict", "photos/"]) is None
    assert rule_for("skip needs a GPU", argv) == "skip needs a GPU"
