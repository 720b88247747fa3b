"""How the code is held together (the team's style notes, points 14-18): imports that run one way (no circle,
counting every import), functions that fit on a screen, the linter passing, metadata read from the one declared
object, and no module importing another's private names."""

import ast
import importlib
import shutil
import textwrap
from pathlib import Path

import pytest

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
                found += [
                    f"{rel}: {a.name}" for a in node.names if a.name.startswith("_") and not a.name.startswith("__")
                ]
    assert not found, found


def test_model_metadata_is_never_read_with_getattr_fallbacks():
    found = []
    for rel, tree in _trees():
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id in ("getattr", "hasattr")
                and len(node.args) >= 2
                and isinstance(node.args[1], ast.Constant)
                and node.args[1].value in OLD_METADATA
            ):
                found.append(f"{rel}:{node.lineno}")
    allowed = {"meta.py"}  # meta_of: the one place a plain torch module (no .meta) is told apart
    assert [f for f in found if f.split(":")[0] not in allowed] == [], found


def _tables(tree: ast.Module) -> dict[str, dict | tuple]:
    """The module-level tables written as literals (`_EXPORTS = {...}`, `_MODULES = (...)`): {name: value}."""
    tables = {}
    for node in tree.body:
        if isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            try:
                value = ast.literal_eval(node.value)
            except ValueError:
                continue
            if isinstance(value, (dict, tuple, list, set, frozenset)):
                tables.update({t.id: value for t in targets if isinstance(t, ast.Name)})
    return tables


def _dynamic_names(arg: ast.expr, tree: ast.Module, tables: dict) -> list[str] | None:
    """The names a call `importlib.import_module(arg, ...)` can import: a literal, or an f-string (or a plain name)
    whose one changing part takes its values from a literal table of the module (`f".{_EXPORTS[name]}"`; `name`
    where the module asks `name in _MODULES`). None: not read."""
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
        return [arg.value]
    parts = arg.values if isinstance(arg, ast.JoinedStr) else [ast.FormattedValue(arg, -1)]
    holes = [p for p in parts if isinstance(p, ast.FormattedValue)]
    if len(holes) != 1 or not all(isinstance(p, (ast.Constant, ast.FormattedValue)) for p in parts):
        return None
    hole = holes[0].value
    if isinstance(hole, ast.Subscript) and isinstance(hole.value, ast.Name):  # TABLE[key]: its values
        table = tables.get(hole.value.id)
        values = list(table.values()) if isinstance(table, dict) else None
    elif isinstance(hole, ast.Name):  # the tables the module tests `name in` or loops `for name in`
        values = [
            v
            for node in ast.walk(tree)
            for name, where in (
                [(node.left, node.comparators[0])]
                if isinstance(node, ast.Compare) and isinstance(node.ops[0], ast.In)
                else [(node.target, node.iter)]
                if isinstance(node, (ast.For, ast.comprehension))
                else []
            )
            if isinstance(name, ast.Name) and name.id == hole.id and isinstance(where, ast.Name)
            for v in tables.get(where.id, ())
        ] or None
    else:
        values = None
    if not values or not all(isinstance(v, str) for v in values):
        return None
    return ["".join(str(v) if p is holes[0] else p.value for p in parts) for v in values]


def _is_import_call(node: ast.AST) -> bool:
    """`importlib.import_module(...)`, `import_module(...)` or `__import__(...)`."""
    if not isinstance(node, ast.Call) or not node.args:
        return False
    f = node.func
    name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
    return name in ("import_module", "__import__")


def _imports(src: Path, unread: list[str] | None = None) -> dict[str, set[str]]:
    """Every import between the modules under `src` (a package folder): module level, inside functions and under
    TYPE_CHECKING alike (a lazy import is still an import), `importlib.import_module` with a literal name or one
    from a literal table of the module, and a name imported from a package resolved through the package's PEP 562
    tables (`_EXPORTS`: name -> module, `_MODULES`: submodules) to the module that defines it.
    {module: modules it imports}. `unread` collects the `import_module` calls whose name could not be read."""
    pkg = src.name
    files = {
        ".".join(p.relative_to(src.parent).with_suffix("").parts).removesuffix(".__init__"): p
        for p in src.rglob("*.py")
    }
    trees = {mod: ast.parse(path.read_text(), str(path)) for mod, path in files.items()}
    tables = {mod: _tables(tree) for mod, tree in trees.items()}

    def module_of(name: str) -> str:
        """The module that `name` (a module, or a module's attribute) is read from; lazy exports followed."""
        while name not in files and "." in name:
            parent, attr = name.rsplit(".", 1)
            if parent in files and files[parent].name == "__init__.py":
                lazy = tables[parent]
                if attr in lazy.get("_EXPORTS", {}):
                    return module_of(f"{parent}.{lazy['_EXPORTS'][attr]}")
            name = parent
        return name

    graph: dict[str, set[str]] = {}
    for mod, path in files.items():
        here = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
        deps = set()
        for node in ast.walk(trees[mod]):
            if isinstance(node, ast.ImportFrom):
                base = ".".join(here.split(".")[: len(here.split(".")) - node.level + 1]) if node.level else ""
                target = ".".join(x for x in (base, node.module) if x)
                names = [f"{target}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif _is_import_call(node):
                found = _dynamic_names(node.args[0], trees[mod], tables[mod])
                if found is None:
                    if unread is not None:
                        unread.append(f"{path.relative_to(src)}:{node.lineno} {ast.unparse(node)}")
                    continue
                anchor = ast.unparse(node.args[1]) if len(node.args) > 1 else ""
                package = {"__name__": mod, "__package__": here, "__spec__.parent": here}.get(anchor, anchor)
                names = []
                for name in found:
                    level = len(name) - len(name.lstrip("."))
                    if level:  # importlib's rule: the package, less one part for each dot after the first
                        base = package.rsplit(".", level - 1)[0] if package else ""
                        name = ".".join(x for x in (base, name[level:]) if x)
                    names.append(name)
            else:
                continue
            for name in names:
                name = module_of(name)
                if name in files and name != mod and name.startswith(pkg):
                    deps.add(name)
        graph[mod] = deps
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan): each is an import circle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_imports_run_one_way():
    """No import circle in the package, counting every import (issue 21: four had grown behind imports inside
    functions and under TYPE_CHECKING)."""
    assert _cycles(_imports(SRC)) == []


def test_the_circle_finder_finds_a_hidden_circle(tmp_path):
    """The check above is not vacuous: a circle closed by an import inside a function, or under TYPE_CHECKING,
    is found."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .sub import b\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    from ..c import g\n")
    (pkg / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .a import x\n")
    (pkg / "d.py").write_text("from . import a\n")
    assert _cycles(_imports(pkg)) == [["pkg.a", "pkg.c", "pkg.sub.b"]]


MAX_FUNCTION_LINES = 80


def _long_functions(src: Path) -> list[str]:
    return [
        f"{path.relative_to(src)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for path in sorted(src.rglob("*.py"))
        for node in ast.walk(ast.parse(path.read_text(), str(path)))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]


def test_no_function_is_longer_than_a_screen(tmp_path):
    """Issue 21: functions fit on a screen (cli.build_parser was 203 lines, serve.app 158, train_one_epoch 86);
    no list of exceptions. And the check is not vacuous: an 81-line function is found."""
    assert _long_functions(SRC) == []
    (tmp_path / "m.py").write_text("def f():\n" + "    x = 1\n" * 80)
    assert _long_functions(tmp_path) == ["m.py:1 f (81 lines)"]


@pytest.mark.parametrize("check", [["check"], ["format", "--check"]], ids=["lint", "format"])
def test_the_linter_and_formatter_pass(check):
    """ruff (configured in pyproject.toml) over the code, the tests and the benchmarks: its linter (unused and
    undefined names, pycodestyle's errors) and its formatter (the layout of every line), so neither can drift
    from `make lint`."""
    import subprocess
    import sys

    pytest.importorskip("ruff")
    root = SRC.parents[1]
    p = subprocess.run(
        [sys.executable, "-m", "ruff", *check, "--no-cache", "src", "tests", "benchmarks", "hubconf.py"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, p.stdout + p.stderr


def test_every_enumerated_config_key_takes_its_values_from_the_one_declaration():
    """The allowed values of an option are declared once (resnets.choices); the config's rule is that very tuple,
    not a copy that can drift from the module that implements the option."""
    from resnets import choices as CH
    from resnets import config as C

    declared = {id(v) for k, v in vars(CH).items() if k.isupper()}
    enumerated = {k: r.choices for k, r in C.RULES.items() if r.choices and k not in ("dataset",)}
    assert enumerated and all(id(v) in declared for v in enumerated.values()), enumerated


# The floors of the house, bottom first: a module imports only from its own floor or below (with no circle, as
# test_imports_run_one_way checks), so small facts live low and high-level modules never import each other for
# them. "data.*" is every module of that package; a package's own name is its __init__.
FLOORS = [
    ["version", "errors", "registry", "choices", "home"],
    ["safe_io", "models.registry"],
    ["data", "data.*"],
    ["models", "models.*"],
    ["meta", "devices", "distributed", "onnx_predict"],
    ["weights", "weights.*", "export", "onnx_file", "factory", "summary", "reports", "backends"],
    ["config", "detect", "segment", "evaluate", "inference", "collection"],
    ["tasks", "tasks.*"],
    ["engine", "engine.*", "reproduce", "serve", "serve.*"],
    ["cli", "cli.*", "__main__", ""],
]


def _floor(module: str) -> int | None:
    name = module.partition(".")[2]
    for i, names in enumerate(FLOORS):
        if any(n == name or (n.endswith(".*") and name.startswith(n[:-1])) for n in names):
            return i
    return None


def _upward(graph: dict[str, set[str]]) -> list[str]:
    """The imports that climb a floor."""
    return [f"{m} -> {d}" for m, deps in sorted(graph.items()) for d in sorted(deps) if _floor(d) > _floor(m)]


def test_every_import_runs_down_the_floors():
    """data/ never imports the models or their metadata, the models never import data or weights, the bottom
    floor imports nothing of ours above it, ... (issue 21's order, written down once here)."""
    graph = _imports(SRC)
    assert [m for m in graph if _floor(m) is None] == []  # every module has its floor
    assert _upward(graph) == []


def test_every_import_module_call_is_read():
    """An `importlib.import_module` whose name the graph cannot read would be an edge it does not see: each takes
    a literal, or an f-string whose changing part comes from a literal table of its module (issue 37)."""
    unread: list[str] = []
    _imports(SRC, unread)
    assert unread == []


def _planted(tmp_path: Path, rel: str, code: str) -> dict[str, set[str]]:
    """The graph of a copy of the package with `code` added at the end of its module `rel`."""
    copy = tmp_path / SRC.name
    shutil.copytree(SRC, copy, ignore=shutil.ignore_patterns("__pycache__"))
    path = copy / rel
    path.write_text(path.read_text() + "\n\n" + textwrap.dedent(code))
    return _imports(copy)


def test_a_circle_through_a_packages_lazy_exports_is_found(tmp_path):
    """Issue 37 (a): `build` is a PEP 562 export of resnets.data, defined in bundle.py, which imports datasets;
    datasets importing it from the package closes a circle the package's __init__ does not show."""
    graph = _planted(tmp_path, "data/datasets.py", "def _later():\n    from . import build\n")
    assert "resnets.data.bundle" in graph["resnets.data.datasets"]
    assert any({"resnets.data.bundle", "resnets.data.datasets"} <= set(c) for c in _cycles(graph))


def test_data_importing_the_models_climbs_a_floor(tmp_path):
    """Issue 37 (b): data/ sits below models/ (the two shared a floor, so an import between them passed)."""
    graph = _planted(tmp_path, "data/registry.py", "def _later():\n    from ..models import list_models\n")
    assert "resnets.data.registry -> resnets.models" in _upward(graph)


@pytest.mark.parametrize(
    "code",
    [
        'import importlib\n\ndef _later():\n    return importlib.import_module("resnets.engine.run")\n',
        'import importlib\n\n_HOOKS = {"a": "..engine.run"}\n\n'
        'def _later(name):\n    return importlib.import_module(f"{_HOOKS[name]}", __package__)\n',
        'from importlib import import_module\n\n_PARTS = ("run", "loop")\n\n'
        'def _later(name):\n    if name in _PARTS:\n        return import_module(f"..engine.{name}", __package__)\n',
    ],
    ids=["literal", "table", "relative-f-string"],
)
def test_an_import_module_call_is_an_import(tmp_path, code):
    """Issue 37 (c): importlib.import_module with a literal name, or a name from a literal table of the module,
    is an edge like an import statement."""
    graph = _planted(tmp_path, "models/resnet.py", code)
    assert [e for e in _upward(graph) if e.startswith("resnets.models.resnet -> resnets.engine")], graph[
        "resnets.models.resnet"
    ]


def test_every_lazy_export_imports_and_resolves():
    """Each name in the PEP 562 tables of a package's __init__ (`_EXPORTS`: name -> module, `_MODULES`: its
    submodules) imports and is the object its module defines (resnets.data listed a `device` module that had
    been renamed device_loader)."""
    broken = []
    for path in sorted(SRC.rglob("__init__.py")):
        package = ".".join(path.parent.relative_to(SRC.parent).parts)
        lazy = _tables(ast.parse(path.read_text(), str(path)))
        mod = importlib.import_module(package)
        for name, where in lazy.get("_EXPORTS", {}).items():
            try:
                ok = getattr(mod, name) is getattr(importlib.import_module(f"{package}.{where}"), name)
            except (ImportError, AttributeError) as e:
                ok = repr(e)
            if ok is not True:
                broken.append(f"{package}.{name} ({where}): {ok}")
        for name in lazy.get("_MODULES", ()):
            try:
                ok = getattr(mod, name).__name__ == f"{package}.{name}"
            except (ImportError, AttributeError) as e:
                ok = repr(e)
            if ok is not True:
                broken.append(f"{package}.{name}: {ok}")
    assert broken == []


def test_every_module_has_a_test_file_of_its_own():
    """tests/ mirrors the package: src/resnets/<pkg>/<name>.py is tested in tests/<pkg>/test_<name>.py (or a file
    whose name ends in _<name>.py there, where a basename would repeat: test_data_registry.py), and a top-level
    module in tests/test_<name>.py."""
    tests = SRC.parents[1] / "tests"
    missing = []
    for path in sorted(SRC.rglob("*.py")):
        if path.name == "__init__.py":
            continue
        rel = path.relative_to(SRC)
        folder = tests.joinpath(*rel.parts[:-1])
        if not ((folder / f"test_{path.stem}.py").is_file() or any(folder.glob(f"test_*_{path.stem}.py"))):
            missing.append(str(rel))
    assert not missing, f"modules without a test file of their own: {', '.join(missing)}"
