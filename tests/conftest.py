"""Loads every fixture module in tests/fixtures (one per area, so areas never collide)."""

from pathlib import Path

import pytest

# Fixture modules import each other; rewrite their asserts whichever is imported first.
pytest.register_assert_rewrite("tests.fixtures", "tests.support", "tests.media", "tests.walkthrough")

pytest_plugins = sorted(
    f"tests.fixtures.{path.stem}"
    for path in (Path(__file__).parent / "fixtures").glob("*.py")
    if path.stem != "__init__"
)
