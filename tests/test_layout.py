"""How the code is held together (STYLE.md 14-16): metadata read from the one declared object, no module importing
another's private names, and the command line's help answered without torch."""
import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "resnets"
OLD_METADATA = {"arch_name", "arch_options", "class_names", "preprocessing", "meta"}


def _trees():
    for path in sorted(SRC.rglob("*.py")):
        yield path.relative_to(SRC), ast.parse(path.read_text(), str(path))


def test_no_module_imports_another_modules_private_names():
    found = []
    for rel, tree in _trees():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level > 0:
                found += [f"{rel}: {a.name}" for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
    assert not found, found


def test_model_metadata_is_never_read_with_getattr_fallbacks():
    found = []
    for rel, tree in _trees():
        for node in ast.walk(tree):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("getattr", "hasattr")
                    and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant)
                    and node.args[1].value in OLD_METADATA):  # fmt: skip
                found.append(f"{rel}:{node.lineno}")
    allowed = {"meta.py"}  # meta_of: the one place a plain torch module (no .meta) is told apart
    assert [f for f in found if f.split(":")[0] not in allowed] == [], found
