"""resnets.choices: each enumerated option's allowed values declared once, torch-free (tests/test_home.py checks
the import), read by the config's rules and by the command line's flags."""

import pytest

from resnets import choices
from resnets import config as C

DECLARED = {k: v for k, v in vars(choices).items() if k.isupper()}


@pytest.mark.parametrize("name", sorted(DECLARED))
def test_each_declaration_is_a_tuple_of_distinct_names(name):
    values = DECLARED[name]
    assert isinstance(values, tuple) and values and len(set(values)) == len(values)
    # names, or whole numbers where the option is one (OUTPUT_STRIDES)
    assert all((isinstance(v, str) and v and v == v.strip()) or type(v) is int for v in values)
    assert len({type(v) for v in values}) == 1


def test_the_config_and_the_command_line_take_exactly_the_declared_values():
    assert C.RULES["tta"].choices == choices.TTAS and C.RULES["amp"].choices == choices.AMPS
    from conftest import run_cli

    code, _, err = run_cli("eval", "--weights", "x.safetensors", "--dataset", "fashion-mnist", "--tta", "rotate")
    assert code == 2 and "invalid choice: 'rotate'" in err and all(v in err for v in choices.TTAS)
