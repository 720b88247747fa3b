"""The package version (also in pyproject.toml), on the bottom floor: the server and the command line report it."""

__version__ = "0.1.0"
