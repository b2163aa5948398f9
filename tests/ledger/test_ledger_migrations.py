"""Migrations run on open, each recorded with the change it makes, and only once."""

from __future__ import annotations

from pathlib import Path

import pytest
from ledger_testkit import add, raw
from sqlalchemy import Connection, text

from ocrd.ledger.migrations import MIGRATIONS, Migration, SchemaTooNew
from ocrd.ledger.store import Ledger

TABLES = {"jobs", "pages", "workers", "heartbeats", "events", "schema_version", "meta"}


def _fingerprint(db_path: str) -> tuple:
    return (raw(db_path, "PRAGMA schema_version"),                  # bumps on any schema change
            raw(db_path, "SELECT type, name, sql FROM sqlite_master ORDER BY name"),
            raw(db_path, "SELECT * FROM schema_version ORDER BY version"))


def test_new_file_gets_every_table_and_one_row_per_migration(ledger: Ledger, db_path: str) -> None:
    names = {n for (n,) in raw(db_path, "SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert TABLES <= names
    rows = raw(db_path, "SELECT version, description FROM schema_version ORDER BY version")
    assert rows == [(m.version, m.description) for m in MIGRATIONS]
    indexes = {n for (n,) in raw(db_path, "SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert {"ix_pages_claim", "ix_pages_finished_at", "ix_jobs_state", "ix_jobs_sha256",
            "ix_jobs_spool_path", "ix_heartbeats_worker_at"} <= indexes


def test_reopening_an_up_to_date_file_changes_nothing(ledger: Ledger, db_url: str, db_path: str) -> None:
    add(ledger)
    ledger.close()                                       # the last close checkpoints the WAL away
    before, file_bytes = _fingerprint(db_path), Path(db_path).read_bytes()
    for _ in range(2):
        Ledger(db_url).close()
    assert _fingerprint(db_path) == before
    assert Path(db_path).read_bytes() == file_bytes


def test_a_new_migration_applies_once_and_is_recorded(db_url: str, db_path: str) -> None:
    Ledger(db_url).close()
    calls: list[int] = []

    def add_column(conn: Connection) -> None:
        calls.append(1)
        conn.execute(text("ALTER TABLE jobs ADD COLUMN note TEXT"))

    newer = MIGRATIONS + (Migration(len(MIGRATIONS) + 1, "jobs.note", add_column),)
    for _ in range(2):
        Ledger(db_url, migrations=newer).close()
    assert calls == [1]
    assert [v for (v,) in raw(db_path, "SELECT version FROM schema_version")] == [m.version for m in newer]
    assert "note" in {r[1] for r in raw(db_path, "PRAGMA table_info(jobs)")}
    with pytest.raises(SchemaTooNew):
        Ledger(db_url)                                   # this ocrd is older than the file


def test_a_failing_migration_leaves_no_trace(db_url: str, db_path: str) -> None:
    Ledger(db_url).close()
    before = _fingerprint(db_path)

    def half_done(conn: Connection) -> None:
        conn.execute(text("CREATE TABLE scratch (x INTEGER)"))
        raise RuntimeError("migration bug")

    bad = MIGRATIONS + (Migration(len(MIGRATIONS) + 1, "broken", half_done),)
    with pytest.raises(RuntimeError, match="migration bug"):
        Ledger(db_url, migrations=bad)
    assert _fingerprint(db_path) == before               # no table, no version row
