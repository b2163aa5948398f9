"""Fixtures shared by every test folder."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from pgserver import PgServer, find_bin_dir, start_server, stop_server
from tinymodel import build_tiny_deepseekocr


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight DeepSeek-OCR checkpoint directory, built once per session (~1 s)."""
    return build_tiny_deepseekocr(tmp_path_factory.mktemp("models") / "tiny-deepseekocr")


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """A throwaway PostgreSQL server for the session (~1 s to start), stopped and deleted at the
    end: the ledger contract suite's second backend and the several-hosts tests' shared ledger.
    Skipped, with the reason, where no server binaries or no psycopg are found."""
    bin_dir = find_bin_dir()
    if bin_dir is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl, postgres) not found on PATH, in "
                    "/usr/lib/postgresql/*/bin or $OCRD_TEST_PG_BIN")
    pytest.importorskip("psycopg", reason="psycopg not installed (pip install 'ocrd[postgres]')")
    server = start_server(bin_dir)
    try:
        yield server
    finally:
        stop_server(server)
