"""The README and the documentation site (issue 38): the README short, its first command on the first screen; the
site builds with `mkdocs build --strict` (a broken link fails it); every `resnets` command in a code block of the
README and the guides parses with the command's own parser (a renamed flag fails the suite: planted below);
tests/test_examples.py runs them, and the pages' Python."""

import contextlib
import functools
import io
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from resnets.cli.main import build_parser

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def commands(text: str):
    """The `resnets ...` command lines of the code blocks of a page (continuations joined; a synopsis with [OPTIONS],
    alternatives a|b or ... is not a command)."""
    for block in re.findall(r"```[^\n]*\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            found = re.match(r"(?:torchrun .*?-m )?resnets (.*)", line.strip())
            if found and not any(c in line for c in ("[", "...", "|")):
                yield found.group(1)


@functools.cache
def parser():
    return build_parser()  # (one for every line: building it takes a fifth of a second)


def refused(command: str) -> str | None:
    """Why the parser refuses a command line (None: it parses)."""
    argv = shlex.split(command, comments=True)
    for stop in (">", "&&", ";", "2>&1"):
        argv = argv[: argv.index(stop)] if stop in argv else argv
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            parser().parse_args(argv)
    except SystemExit as e:
        return err.getvalue().strip() if e.code else None
    return None


def test_the_readme_is_short_and_starts_with_the_two_commands():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 150
    assert any(line.startswith("make run") for line in lines[:25]) and any(
        line.startswith("make test") for line in lines
    )


def test_every_command_in_the_readme_and_the_guides_parses():
    found = {page.relative_to(ROOT).as_posix(): list(commands(page.read_text())) for page in PAGES}
    assert sum(map(len, found.values())) >= 40 and found["README.md"]  # the pages do hold commands
    bad = [(page, c, refused(c)) for page, cs in found.items() for c in cs if refused(c)]
    assert bad == []


def test_a_renamed_flag_in_a_docs_block_is_caught():
    text = (ROOT / "README.md").read_text().replace("--weights resnet50.tv2_in1k", "--weight-file resnet50.tv2_in1k")
    assert any(refused(c) and "--weight-file" in refused(c) for c in commands(text))


def test_the_site_builds_strictly_and_a_broken_link_fails_it(tmp_path):
    copy = tmp_path / "repo"
    shutil.copytree(ROOT / "docs", copy / "docs")
    for name in ("mkdocs.yml", "README.md"):
        shutil.copy(ROOT / name, copy / name)
    shutil.copytree(ROOT / "src", copy / "src", ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "benchmarks").mkdir()
    shutil.copy(ROOT / "benchmarks" / "RESULTS.md", copy / "benchmarks" / "RESULTS.md")
    env = {"NO_MKDOCS_2_WARNING": "1", "PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin"}
    build = [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")]
    done = subprocess.run(build, cwd=copy, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    reference = (tmp_path / "site" / "reference" / "index.html").read_text()
    assert "resnets train" in reference and "--print-config" in reference  # the help, from the parser
    assert "Decoding at the model" in (tmp_path / "site" / "benchmarks" / "index.html").read_text()
    api = (tmp_path / "site" / "api" / "index.html").read_text()  # the API from the docstrings
    assert all(name in api for name in ("create_model", "predict", "top_k", "transforms", "train"))
    (copy / "docs" / "use.md").write_text((copy / "docs" / "use.md").read_text() + "\n\nSee [this](nope.md).\n")
    done = subprocess.run(build, cwd=copy, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode != 0 and "nope.md" in done.stderr


@pytest.mark.parametrize("page", [p for p in PAGES if p.name != "README.md"], ids=lambda p: p.name)
def test_every_page_is_in_the_site(page):
    nav = (ROOT / "mkdocs.yml").read_text()
    rel = page.relative_to(ROOT / "docs").as_posix()
    assert rel in nav or rel.startswith("reproduce/"), rel  # reproduce/: the report's own pages, linked from paper.md
