"""MkDocs hooks (mkdocs.yml): pages made from one source each, so the site cannot say other than the repository.
index.md is the README; reference.md every command's `--help`, from the parser itself; benchmarks.md
benchmarks/RESULTS.md. Links are rewritten to where the pages are on the site."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _readme() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    text = text.replace("](docs/", "](").replace("](benchmarks/RESULTS.md)", "](benchmarks.md)")
    return text


def _help() -> str:
    from resnets.cli.main import build_parser

    parser = build_parser()
    out = ["# Every command's help", "", "What `resnets COMMAND --help` prints, made from the parser as the site is built."]
    out.append("")
    for name, command in parser.commands.items():
        out += [f"## resnets {name}", "", "```text", command.format_help().rstrip(), "```", ""]
    return "\n".join(out)


def _results() -> str:
    text = (ROOT / "benchmarks" / "RESULTS.md").read_text(encoding="utf-8")
    text = text.replace("](../docs/", "](")
    # the figures beside the results stay in the repository: named, not linked
    return re.sub(r"\[([^\]]*)\]\((results/[^)]*)\)", r"\1 (benchmarks/\2)", text)


def on_page_markdown(markdown: str, page, config, files) -> str:
    return (
        markdown.replace("<!-- README.md -->", _readme())
        .replace("<!-- cli-help -->", _help())
        .replace("<!-- benchmarks/RESULTS.md -->", _results())
    )
