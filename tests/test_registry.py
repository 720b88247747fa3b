"""resnets.registry: the one name -> entry table the models, weights and datasets registries are: registration
order kept, a name registered once, shell patterns, and an unknown name's error suggesting close names."""

import pytest

from resnets.errors import ResnetsError, UnknownModelError
from resnets.registry import Registry


def test_names_patterns_duplicates_and_suggestions():
    r = Registry("gizmo", UnknownModelError, "see the catalogue")
    for name in ("resnet50", "resnet101", "plain18"):
        r.add(name, name.upper())
    assert r.names() == ["resnet50", "resnet101", "plain18"] and r.names("resnet*") == ["resnet50", "resnet101"]
    assert r.find("plain18") == "PLAIN18"
    with pytest.raises(ValueError, match="gizmo 'plain18' is registered twice"):
        r.add("plain18", "again")
    with pytest.raises(UnknownModelError, match="unknown gizmo 'resnet5'; did you mean resnet50"):
        r.find("resnet5")
    with pytest.raises(UnknownModelError, match="unknown gizmo 'zzz'; see the catalogue"):
        r.find("zzz")
    assert issubclass(UnknownModelError, ResnetsError)
