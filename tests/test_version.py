"""resnets.version: one version, the installed distribution's, printed by `resnets --version` and served."""

from importlib.metadata import version

from conftest import run_cli

import resnets
from resnets.version import __version__


def test_one_version_everywhere():
    assert __version__ == resnets.__version__ == version("resnets")
    code, out, _ = run_cli("--version")
    assert code == 0 and __version__ in out
