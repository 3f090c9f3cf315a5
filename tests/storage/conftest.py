"""Fixtures shared by the storage tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from minikv_core.storage.engine import Engine


@pytest.fixture
def engines() -> Iterator[list[Engine]]:
    """Engines a test opens, closed even when it fails."""
    opened: list[Engine] = []
    yield opened
    for engine in opened:
        engine.close()
