"""resnets.errors: one base class for what a user did wrong (the command line makes each one line and exit code
2; CheckFailed exits 1), each also the built-in kind a Python caller catches, and text from elsewhere printable."""

import pytest
from conftest import run_cli

from resnets import errors
from resnets.errors import CheckFailed, OptionError, ResnetsError, UnknownModelError, WeightsError, printable


def test_each_error_is_a_resnets_error_and_the_builtin_kind():
    assert issubclass(UnknownModelError, KeyError) and issubclass(OptionError, TypeError)
    assert issubclass(WeightsError, ValueError) and issubclass(CheckFailed, ResnetsError)
    for kind in (UnknownModelError, OptionError, WeightsError, CheckFailed):
        assert issubclass(kind, ResnetsError)


@pytest.mark.parametrize(
    "text, shown",
    [
        ("plain name", "plain name"),
        ("two\nlines", "two\\nlines"),
        ("\x1b[2Jclear", "\\x1b[2Jclear"),
        ("bell\a", "bell\\x07"),
    ],
)
def test_printable_shows_control_characters_as_escapes(text, shown):
    assert printable(text) == shown and "\n" not in printable(text)


def test_the_command_line_maps_them_to_exit_codes():
    code, _, err = run_cli("summary", "resnet5")
    assert code == 2 and "did you mean" in err and "resnet50" in err and len(err.strip().splitlines()) == 1
    assert errors.__name__ == "resnets.errors"
