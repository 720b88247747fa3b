"""The `resnets` command put together: the parser from each group's `add_commands`, and bad input mapped to one line
and an exit code (2 bad usage, 1 a failed check or an environment error, 130 interrupted)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from typing import Sequence

from ..errors import CheckFailed, ResnetsError, Stopped, printable
from ..version import __version__
from . import catalog, exporting, images, science, serving, training
from .options import EXIT_USAGE, Parser, count, fill_help, say_defaults

# what loads torch is imported inside the commands that use it: `resnets --help` answers without torch


def build_parser(recipe: str | None = None) -> argparse.ArgumentParser:
    """The command line; `recipe`: the --recipe given, whose defaults train's and finetune's help then show."""
    parser = Parser(prog="resnets", description="The ResNet family: models, weights and tools.")
    parser.add_argument("--version", action="version", version=f"resnets {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="more log output")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    catalog.add_commands(sub)
    training.add_commands(sub, recipe)
    images.add_commands(sub)
    exporting.add_commands(sub)
    science.add_commands(sub)
    serving.add_commands(sub)
    for name in (
        "predict",
        "detect",
        "segment",
        "embed",
        "similar",
        "explain",
        "eval",  # train and finetune take them as config keys (max_pixels, exact_decode: kept in config.json)
        "export",
        "reproduce",
        "serve",
        "data",
    ):
        sub.choices[name].add_argument(
            "--max-pixels",
            type=count(1),
            metavar="N",
            help="refuse images of more pixels, from their header (default 89,478,485; the decode budget is 3 "
            "bytes a pixel of it: width x height x channels x bytes per sample)",
        )
        sub.choices[name].add_argument(
            "--exact-decode",
            action="store_true",
            help="decode every image at full size (default: an image over twice the model's input is decoded "
            "smaller, a JPEG by DCT scaling: faster, nearly the same result); for bit-exact reproduction",
        )
    for command in sub.choices.values():
        fill_help(command)
        say_defaults(command)
    parser.commands = sub.choices
    return parser


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"resnets: warning: {printable(str(message))}", file=sys.stderr if file is None else file)


class _PrintableFormatter(logging.Formatter):
    """Log lines with control characters escaped: a file named with ESC and BEL cannot drive the terminal."""

    def format(self, record: logging.LogRecord) -> str:
        return printable(super().format(record))


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    given = [
        a.split("=", 1)[1] if "=" in a else argv[i + 1] if i + 1 < len(argv) else ""
        for i, a in enumerate(argv)
        if a == "--recipe" or a.startswith("--recipe=")
    ]
    parser = build_parser(given[-1] if given else None)
    parser.command_given = next((a for a in argv if not a.startswith("-")), None)
    for p in (parser, *parser.commands.values()):  # a misspelt option gets a suggestion, whatever error comes first
        p.argv_given = argv
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
    if getattr(args, "exact_decode", False):
        os.environ["RESNETS_EXACT_DECODE"] = "1"
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
    except Stopped as e:  # SIGTERM or SIGUSR1 from a scheduler: 143 or 138, as the signal itself would end it
        if os.environ.get("RANK", "0") == "0":  # under torchrun: one line for the job
            print(f"resnets: {e}", file=sys.stderr)
        return 128 + e.signum
    except Exception as e:
        from ..engine import TrainingError

        if isinstance(e, TrainingError):
            print(f"resnets: {e}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
