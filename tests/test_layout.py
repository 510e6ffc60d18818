"""The layout of the test code: tests and benchmarks share testing/ and do not import each
other (the one exception is the benchmarks' own smoke test, whose subject they are)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from testing.processes import ROOT
from tests import conftest
from tests.conftest import layer_of

# The test of the benchmarks imports what it tests; no other test, and no helper, may.
BENCHMARK_TESTS = {"tests/test_bench_smoke.py"}


def imported_packages(path: Path) -> set[str]:
    """The top-level packages a module imports (also inside functions)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


def python_files(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


def test_the_scan_sees_imports_inside_functions(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text(
        "import os\n\ndef f():\n    from tests.fixtures import infra\n    import benchmarks.media\n"
    )
    assert imported_packages(module) == {"os", "tests", "benchmarks"}


@pytest.mark.parametrize("folder", ["benchmarks", "testing"])
def test_benchmarks_and_the_support_package_never_import_the_tests(folder: str) -> None:
    offenders = [str(p.relative_to(ROOT)) for p in python_files(folder) if "tests" in imported_packages(p)]
    assert offenders == []


def test_the_support_package_never_imports_the_benchmarks() -> None:
    offenders = [
        str(p.relative_to(ROOT)) for p in python_files("testing") if "benchmarks" in imported_packages(p)
    ]
    assert offenders == []


def test_only_the_benchmarks_smoke_test_imports_the_benchmarks() -> None:
    importing = {
        str(p.relative_to(ROOT)) for p in python_files("tests") if "benchmarks" in imported_packages(p)
    }
    assert importing <= BENCHMARK_TESTS


def test_every_fixture_module_is_listed_in_conftest() -> None:
    modules = {
        f"tests.fixtures.{p.stem}" for p in (ROOT / "tests/fixtures").glob("*.py") if p.stem != "__init__"
    }
    assert set(conftest.pytest_plugins) == modules, "list each tests/fixtures module in pytest_plugins"


class FakeItem:
    """What ``layer_of`` reads of a collected test."""

    def __init__(self, name: str, fixtures: tuple[str, ...], marks: tuple[str, ...] = ()) -> None:
        self.path = ROOT / "tests" / name
        self.fixturenames = list(fixtures)
        self.nodeid = f"tests/{name}::test_x"
        self.marks = marks

    def get_closest_marker(self, name: str) -> object | None:
        return name if name in self.marks else None


@pytest.mark.parametrize(
    ("name", "fixtures", "marks", "layer"),
    [
        ("test_x.py", ("tmp_path",), (), "unit"),
        ("test_x.py", ("tmp_path", "storage_service", "infra"), (), "integration"),
        ("test_x.py", ("system", "infra"), (), "system"),
        ("test_system_x.py", ("tmp_path",), (), "system"),
        ("test_image_system.py", ("tmp_path",), (), "system"),
        ("test_x.py", ("tmp_path",), ("system",), "system"),  # an explicit marker wins
        ("test_x.py", ("infra",), ("unit",), "unit"),
    ],
)
def test_the_layer_follows_the_fixtures_unless_marked(
    name: str, fixtures: tuple[str, ...], marks: tuple[str, ...], layer: str
) -> None:
    assert layer_of(FakeItem(name, fixtures, marks)) == layer  # type: ignore[arg-type]


def test_two_layers_on_one_test_are_refused() -> None:
    with pytest.raises(pytest.UsageError, match="more than one layer"):
        layer_of(FakeItem("test_x.py", (), ("unit", "system")))  # type: ignore[arg-type]


def test_this_test_is_a_unit(request: pytest.FixtureRequest) -> None:
    assert request.node.get_closest_marker("unit") is not None
