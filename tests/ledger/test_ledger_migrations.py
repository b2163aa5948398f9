"""Migrations run on open, each recorded with the change it makes, and only once."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from ledger_testkit import T0, Db, add
from sqlalchemy import Connection, create_engine, inspect, text

from ocrd.ledger import schema
from ocrd.ledger.migrations import MIGRATIONS, Migration, SchemaTooNew
from ocrd.ledger.states import WorkerState
from ocrd.ledger.store import Ledger

TABLES = {"jobs", "pages", "workers", "heartbeats", "events", "schema_version", "meta"}


def test_new_file_gets_every_table_and_one_row_per_migration(ledger: Ledger, db: Db) -> None:
    assert TABLES <= db.tables()
    rows = db.raw("SELECT version, description FROM schema_version ORDER BY version")
    assert rows == [(m.version, m.description) for m in MIGRATIONS]
    assert {"ix_pages_claim", "ix_pages_finished_at", "ix_jobs_state", "ix_jobs_sha256",
            "ix_jobs_spool_path", "ix_heartbeats_worker_at"} <= db.indexes()


def test_reopening_an_up_to_date_file_changes_nothing(ledger: Ledger, db_url: str, db: Db) -> None:
    add(ledger)
    ledger.close()                                       # the last close checkpoints the WAL away
    file_bytes = Path(db.path).read_bytes() if db.path else None
    before = db.fingerprint()
    for _ in range(2):
        Ledger(db_url).close()
    assert db.fingerprint() == before
    if db.path:                                          # SQLite: not one byte was written
        assert Path(db.path).read_bytes() == file_bytes


def test_a_new_migration_applies_once_and_is_recorded(db_url: str, db: Db) -> None:
    Ledger(db_url).close()
    calls: list[int] = []

    def add_column(conn: Connection) -> None:
        calls.append(1)
        conn.execute(text("ALTER TABLE jobs ADD COLUMN note TEXT"))

    newer = MIGRATIONS + (Migration(len(MIGRATIONS) + 1, "jobs.note", add_column),)
    for _ in range(2):
        Ledger(db_url, migrations=newer).close()
    assert calls == [1]
    assert [v for (v,) in db.raw("SELECT version FROM schema_version")] == [m.version for m in newer]
    assert "note" in db.columns("jobs")
    with pytest.raises(SchemaTooNew):
        Ledger(db_url)                                   # this ocrd is older than the file


def test_a_failing_migration_leaves_no_trace(db_url: str, db: Db) -> None:
    Ledger(db_url).close()
    before = db.fingerprint()

    def half_done(conn: Connection) -> None:
        conn.execute(text("CREATE TABLE scratch (x INTEGER)"))
        raise RuntimeError("migration bug")

    bad = MIGRATIONS + (Migration(len(MIGRATIONS) + 1, "broken", half_done),)
    with pytest.raises(RuntimeError, match="migration bug"):
        Ledger(db_url, migrations=bad)
    assert db.fingerprint() == before                    # no table, no version row
    assert "scratch" not in db.tables()


def test_several_openers_of_a_new_database_migrate_it_once(db_url: str, db: Db) -> None:
    start, errors = threading.Barrier(4), []

    def open_it() -> None:
        try:
            start.wait(10)
            Ledger(db_url).close()
        except Exception as exc:  # noqa: BLE001 -- asserted below
            errors.append(exc)

    threads = [threading.Thread(target=open_it) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert db.raw("SELECT version FROM schema_version") == [(m.version,) for m in MIGRATIONS]


def test_the_migrations_build_what_schema_py_describes(ledger: Ledger, db_url: str) -> None:
    engine = create_engine(db_url)
    try:
        found = inspect(engine)
        for table in schema.metadata.sorted_tables:
            columns = {c["name"]: c["nullable"] for c in found.get_columns(table.name)}
            assert columns == {c.name: c.nullable for c in table.columns}, table.name
            indexes = {i["name"] for i in found.get_indexes(table.name)
                       if not i.get("duplicates_constraint")}   # PostgreSQL's UNIQUE index
            assert indexes == {i.name for i in table.indexes}, table.name
    finally:
        engine.dispose()


def test_v2_adds_batch_columns_to_a_v1_ledger_and_keeps_its_rows(db_url: str, db: Db) -> None:
    Ledger(db_url, migrations=MIGRATIONS[:1]).close()   # a ledger written before batching
    assert "batch" not in db.columns("workers") and "batch" not in db.columns("heartbeats")
    db.raw("INSERT INTO workers (id, host, pid, backend, device_name, state, started_at, "
           "last_heartbeat_at, pages_done) VALUES ('old', 'h', 7, 'cpu', 'cpu', 'busy', "
           "'2025-03-01T12:00:00.000000Z', '2025-03-01T12:00:00.000000Z', 3)")
    db.raw("INSERT INTO heartbeats (worker_id, at, backend, pages_done, tokens_per_s) "
           "VALUES ('old', '2025-03-01T12:00:00.000000Z', 'cpu', 3, 9.5)")
    with Ledger(db_url) as ledger:
        assert [v for (v,) in db.raw("SELECT version FROM schema_version ORDER BY version")] == \
            [m.version for m in MIGRATIONS]
        assert db.raw("SELECT id, pages_done, batch, pages_in_flight FROM workers") == [("old", 3, 1, 0)]
        assert db.raw("SELECT tokens_per_s, batch, pages_in_flight FROM heartbeats") == [(9.5, None, None)]
        [w] = ledger.workers_status(now=T0)
        assert (w["batch"], w["pages_in_flight"], w["tokens_per_s"]) == (1, 0, 9.5)
        ledger.record_heartbeat("old", backend="cpu", active_memory_bytes=1, peak_memory_bytes=1,
                                cache_memory_bytes=0, memory_limit_bytes=0, pages_done=4,
                                tokens_per_s=30.0, current_page=None, state=WorkerState.BUSY,
                                batch=4, pages_in_flight=3, now=T0)
        [w] = ledger.workers_status(now=T0)
        assert (w["batch"], w["pages_in_flight"], w["tokens_per_s"]) == (4, 3, 30.0)
