"""Fixtures for the ledger tests: a real SQLite file per test, closed and checked afterwards."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from ocrd.ledger.store import Ledger


@pytest.fixture
def db_path(tmp_path: Path) -> str:
    return str(tmp_path / "ledger.db")


@pytest.fixture
def db_url(db_path: str) -> str:
    return f"sqlite:///{db_path}"


@pytest.fixture
def ledger(db_url: str) -> Iterator[Ledger]:
    led = Ledger(db_url)
    yield led
    # a connection still checked out means a transaction leaked out of a method
    assert led._engine.pool.checkedout() == 0
    led.close()
