"""The `resnets` command: a thin shell over the library. Bad input is one line on stderr and exit code 2.

One module a group of commands (catalog, training, images, exporting, science, serving), each with its
`add_commands(sub)` and its commands; options.py what they share; main.py puts them together."""

from .main import build_parser, main

__all__ = ["build_parser", "main"]
