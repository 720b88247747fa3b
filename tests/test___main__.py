"""`python -m resnets` (__main__.py): the same command as the console script, its exit status passed on."""

import subprocess
import sys

import resnets


def _module(*args):
    return subprocess.run([sys.executable, "-m", "resnets", *args], capture_output=True, text=True, timeout=120)


def test_python_m_resnets_is_the_command_with_its_exit_status():
    p = _module("--version")
    assert p.returncode == 0 and p.stdout.split() == ["resnets", resnets.__version__], p.stdout + p.stderr
    p = _module("summary", "no-such-net")
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1 and "Traceback" not in p.stderr
    assert "no-such-net" in p.stderr
