"""Shared bits of the ledger tests (tests/ledger is on sys.path: pytest's rootdir-less import)."""

from __future__ import annotations

import sqlite3
from contextlib import closing, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Iterator

from ocrd.ledger.store import Ledger

T0 = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)

# What a user's own client asks each engine; `?` placeholders work for both (see Db.raw).
_CATALOG = {
    "sqlite": dict(
        tables="SELECT name FROM sqlite_master WHERE type = 'table'",
        indexes="SELECT name FROM sqlite_master WHERE type = 'index'",
        columns="SELECT name FROM pragma_table_info(?)",
        schema=["PRAGMA schema_version",                       # bumps on any schema change
                "SELECT type, name, sql FROM sqlite_master ORDER BY name"]),
    "postgresql": dict(
        tables="SELECT tablename FROM pg_tables WHERE schemaname = 'public'",
        indexes="SELECT indexname FROM pg_indexes WHERE schemaname = 'public'",
        columns="SELECT column_name FROM information_schema.columns "
                "WHERE table_schema = 'public' AND table_name = ?",
        schema=["SELECT table_name, column_name, data_type, is_nullable, column_default "
                "FROM information_schema.columns WHERE table_schema = 'public' ORDER BY 1, 2",
                "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' ORDER BY 1",
                "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) "
                "FROM pg_constraint WHERE connamespace = 'public'::regnamespace ORDER BY 1, 2"]),
}


@dataclass(frozen=True)
class Db:
    """A test's database as a user's own client sees it (sqlite3 / psycopg, not the Ledger)."""
    dialect: str                 # "sqlite" or "postgresql"
    url: str                     # for Ledger(...)
    path: str | None = None      # SQLite: the file
    dsn: str | None = None       # PostgreSQL: a libpq connection string

    def connect(self) -> Any:
        """A plain connection in autocommit mode: BEGIN/COMMIT are the caller's to send."""
        if self.dialect == "sqlite":
            return sqlite3.connect(self.path, isolation_level=None)
        import psycopg
        return psycopg.connect(self.dsn, autocommit=True)

    def raw(self, sql: str, params: tuple = ()) -> list[tuple]:
        """Run one statement in its own transaction; `?` placeholders on both engines."""
        if self.dialect == "postgresql":
            sql = sql.replace("?", "%s")
        with closing(self.connect()) as conn:
            cursor = conn.execute(sql, params) if params else conn.execute(sql)
            return [tuple(r) for r in cursor.fetchall()] if cursor.description else []

    @contextmanager
    def hold_writes(self) -> Iterator[Any]:
        """Another client in an open write transaction that keeps every ledger write waiting
        while plain reads go on (SQLite's write lock; the PostgreSQL equivalent by table locks).
        The caller may COMMIT; anything left open is rolled back."""
        conn = self.connect()
        try:
            conn.execute("BEGIN IMMEDIATE" if self.dialect == "sqlite" else "BEGIN")
            if self.dialect == "postgresql":
                conn.execute("LOCK TABLE jobs, pages, workers, heartbeats, events, meta "
                             "IN EXCLUSIVE MODE")
            yield conn
        finally:
            if self.dialect == "sqlite" and conn.in_transaction:
                conn.execute("ROLLBACK")
            conn.close()                     # psycopg rolls back an open transaction on close

    def tables(self) -> set[str]:
        return {n for (n,) in self.raw(_CATALOG[self.dialect]["tables"])}

    def indexes(self) -> set[str]:
        return {n for (n,) in self.raw(_CATALOG[self.dialect]["indexes"])}

    def columns(self, table: str) -> set[str]:
        return {n for (n,) in self.raw(_CATALOG[self.dialect]["columns"], (table,))}

    def fingerprint(self) -> tuple:
        """The schema as the engine's catalog describes it, plus the migrations applied."""
        return (*(self.raw(q) for q in _CATALOG[self.dialect]["schema"]),
                self.raw("SELECT * FROM schema_version ORDER BY version"))


def add(ledger: Ledger, name: str = "a", pages: int = 3, *, sha: str | None = None,
        now: datetime = T0, **kw: Any) -> int:
    """Add a job with `pages` pages; returns its id."""
    return ledger.add_job(inbox="/in", source_path=f"/in/{name}.pdf", spool_path=f"/spool/{name}.pdf",
                          sha256=sha or f"sha-{name}", size_bytes=10, pages_total=pages, now=now,
                          **kw).job_id
