"""The package layout is the architecture: one subpackage per system, imports pointing down the
layers only, few loose modules, and the old flat import paths still load."""

import ast
import importlib
import sys
import warnings
from pathlib import Path

import pytest

import adaptsym

ROOT = Path(adaptsym.__file__).parent
# loose modules: the foundations every system uses, and the entry points
LOOSE = {"__init__", "config", "errors", "util", "progress", "protocols", "registry", "measure", "train"}
# each system may import from the systems (and foundations) below it, never from those above
LAYERS = [{"foundations"}, {"nets", "stats"}, {"storage", "curvature", "effective"}, {"observables"}, {"report"},
          {"entry", "planning"}]
FOUNDATIONS = {"config", "errors", "util", "progress", "protocols", "registry"}


def system_of(module: str) -> str:
    """'curvature.hvp' -> 'curvature'; 'config' -> 'foundations'; 'measure' -> 'entry'."""
    head = module.split(".")[0]
    if (ROOT / head).is_dir():
        return head
    return "foundations" if head in FOUNDATIONS else "entry"


def layer(system: str) -> int:
    return next(i for i, s in enumerate(LAYERS) if system in s)


def internal_imports(path: Path) -> list[tuple[str, int]]:
    """(imported module under adaptsym, line) of every relative import outside TYPE_CHECKING blocks."""
    tree = ast.parse(path.read_text())
    rel = path.relative_to(ROOT).with_suffix("")
    package = list(rel.parts[:-1])
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip |= {id(n) for n in ast.walk(node)}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level and id(node) not in skip:
            base = package[: len(package) - (node.level - 1)]
            target = ".".join(base + ([node.module] if node.module else []))
            names = [target] if node.module else [".".join(base + [a.name]) for a in node.names]
            out += [(t, node.lineno) for t in names]
    return out


def test_no_loose_modules_but_foundations_and_entry_points():
    loose = {p.stem for p in ROOT.glob("*.py")}
    assert loose <= LOOSE, sorted(loose - LOOSE)
    assert len(loose) <= 10


def test_imports_point_down_the_layers():
    upward = []
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT).with_suffix("")
        me = system_of(".".join(rel.parts))
        for target, line in internal_imports(path):
            them = system_of(target) if target else "foundations"
            if them != me and layer(them) > layer(me):
                upward.append(f"{rel}:{line} ({me}) imports {target} ({them})")
    assert not upward, "\n".join(upward)


def test_the_layer_check_sees_an_upward_import(tmp_path, monkeypatch):
    """The check above on a planted upward import: a stats module importing an observable."""
    fake = tmp_path / "adaptsym"
    (fake / "stats").mkdir(parents=True)
    (fake / "stats" / "bad.py").write_text("from ..observables.weights import measure\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", fake)
    (target, _), = internal_imports(fake / "stats" / "bad.py")
    assert target == "observables.weights" and layer(system_of(target)) > layer(system_of("stats.bad"))


@pytest.mark.parametrize("old", sorted(adaptsym.MOVED))
def test_old_flat_import_paths_still_load(old, monkeypatch):
    """`adaptsym.<old>` loads, with a DeprecationWarning, the module it became, or for a module split
    in several (`ensemble`) one module with all their names, the same objects."""
    target = adaptsym.MOVED[old]
    parts = [importlib.import_module(f"adaptsym.{t}") for t in ((target,) if isinstance(target, str) else target)]
    monkeypatch.delitem(sys.modules, f"adaptsym.{old}", raising=False)
    if old in vars(adaptsym):  # (getattr would import it: the package's __getattr__)
        monkeypatch.delattr(adaptsym, old)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = importlib.import_module(f"adaptsym.{old}")
    assert [w for w in caught if w.category is DeprecationWarning and f"adaptsym.{old} moved" in str(w.message)]
    if isinstance(target, str):
        assert module is parts[0]
    else:
        for part in parts:
            public = [n for n in vars(part) if not n.startswith("_")]
            assert public and all(getattr(module, n) is getattr(part, n) for n in public), part.__name__
    assert getattr(adaptsym, old) is module  # from adaptsym import <old>
    assert all(p.__spec__.name == p.__name__ for p in parts)  # the old name did not take over its spec


def test_the_report_package_keeps_the_old_modules_public_names():
    from adaptsym.report import FIGURES, MissingData, Report, render_report
    from adaptsym.report import render

    assert render_report is render.render_report and [f[0] for f in FIGURES] == [f.name for f, _ in render.figures()]
    assert MissingData is render.MissingData and Report is render.Report


def test_the_executor_seam_is_typed_without_method_strings():
    """Each task type names the `EntryBlocks` method it runs and returns that method's result type;
    no method name travels as a string through the executors (local, Ray) or their callers."""
    import typing

    from adaptsym.observables import entry_blocks
    from adaptsym.protocols import Task

    methods = {name for name, fn in vars(entry_blocks.EntryBlocks).items()
               if callable(fn) and not name.startswith("_") and name.endswith(("tile", "block"))}
    assert methods and len(entry_blocks.TASKS) == len(methods)
    for task in entry_blocks.TASKS:
        ret = typing.get_type_hints(task.run, vars(entry_blocks))["return"]
        called = [m for m in methods if f"blocks.{m}(" in __import__("inspect").getsource(task.run)]
        assert len(called) == 1, (task, called)
        assert typing.get_type_hints(getattr(entry_blocks.EntryBlocks, called[0]), vars(entry_blocks))["return"] is ret
        assert issubclass(task, tuple) and isinstance(task._make(range(len(task._fields))), Task)
    repo = ROOT.parent
    files = list(repo.glob("services/*.py")) + list(repo.glob("jobs/*.py")) + list(ROOT.rglob("*.py"))
    strings = []
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value in methods:
                strings.append(f"{path.relative_to(repo)}:{node.lineno}: {node.value!r}")
    assert not strings, strings
