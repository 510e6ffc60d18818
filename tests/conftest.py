"""The fixture modules of tests/fixtures, and the layer of each test (unit, integration, system).

A test's layer is derived from what it uses, so a new test needs no marker:

- ``system``: it lives in a ``test_system_*.py`` or ``test_*_system.py`` module or uses the
  ``system`` fixture (the whole system: as processes, from the image, in a cluster);
- ``integration``: it uses the ``infra`` fixture, directly or through another fixture (any of
  the real servers: MariaDB, FerretDB, RabbitMQ);
- ``unit``: anything else — it needs no server and runs under ``make unit``.

An explicit ``@pytest.mark.unit/integration/system`` overrides the derived layer (for a test
that reaches a server without the fixtures, as the benchmarks' system sections do).
"""

import pytest

# Fixture modules import each other; rewrite their asserts whichever is imported first.
pytest.register_assert_rewrite("tests.fixtures", "tests.walkthrough", "testing")

# Listed, not globbed: a fixture module is loaded because it is named here.
pytest_plugins = [
    "tests.fixtures.infra",
    "tests.fixtures.auth",
    "tests.fixtures.storage",
    "tests.fixtures.faulty_storage",
    "tests.fixtures.storage_gateway",
    "tests.fixtures.converter",
    "tests.fixtures.notifier",
    "tests.fixtures.system",
]

LAYERS = ("unit", "integration", "system")
SYSTEM_FIXTURES = frozenset({"system"})
INFRA_FIXTURES = frozenset({"infra"})


def layer_of(item: pytest.Item) -> str:
    explicit = [name for name in LAYERS if item.get_closest_marker(name) is not None]
    if len(explicit) > 1:
        raise pytest.UsageError(f"{item.nodeid} is marked as more than one layer: {explicit}")
    if explicit:
        return explicit[0]
    fixtures = set(getattr(item, "fixturenames", ()))
    stem = item.path.stem
    if stem.startswith("test_system_") or stem.endswith("_system") or fixtures & SYSTEM_FIXTURES:
        return "system"
    if fixtures & INFRA_FIXTURES:
        return "integration"
    return "unit"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        layer = layer_of(item)
        if item.get_closest_marker(layer) is None:
            item.add_marker(layer)
