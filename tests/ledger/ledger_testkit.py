"""Shared bits of the ledger tests (tests/ledger is on sys.path: pytest's rootdir-less import)."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from datetime import UTC, datetime
from typing import Any

from ocrd.ledger.store import Ledger

T0 = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)


def add(ledger: Ledger, name: str = "a", pages: int = 3, *, sha: str | None = None,
        now: datetime = T0, **kw: Any) -> int:
    """Add a job with `pages` pages; returns its id."""
    return ledger.add_job(inbox="/in", source_path=f"/in/{name}.pdf", spool_path=f"/spool/{name}.pdf",
                          sha256=sha or f"sha-{name}", size_bytes=10, pages_total=pages, now=now,
                          **kw).job_id


def raw(path: str, sql: str, params: tuple = ()) -> list[tuple]:
    """Run one statement on a separate plain sqlite3 connection (a user's view of the file)."""
    with closing(sqlite3.connect(path)) as conn, conn:
        return conn.execute(sql, params).fetchall()
