"""Schema migrations, applied when a Ledger opens.

Each migration runs in its own write transaction together with the `schema_version` row that
records it, so a crash leaves either both or neither (sqlite-utils' migrations.py). Opening an
up-to-date file only reads. Several processes may open a new file at once: the version is re-read
inside each write transaction, so a migration another process just applied is skipped.

Adding a migration: append one with the next version and explicit DDL (ALTER TABLE ...), change
schema.py to match, and at the same time freeze `_create_v1` to the v1 table definitions so that a
new file replays exactly the history an old file went through.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Callable

from sqlalchemy import Connection, func, inspect, select, text

from . import schema


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    apply: Callable[[Connection], None]


def _create_v1(conn: Connection) -> None:
    tables = [t for t in schema.metadata.sorted_tables if t is not schema.schema_version]
    schema.metadata.create_all(conn, tables=tables)


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "jobs, pages, workers, heartbeats, events, meta and their indexes", _create_v1),
)


class SchemaTooNew(RuntimeError):
    """The file was written by a newer ocrd than this one."""


def current_version(conn: Connection) -> int:
    """The newest applied migration (0 for an empty file)."""
    if not inspect(conn).has_table("schema_version"):
        return 0
    return conn.execute(select(func.coalesce(func.max(schema.schema_version.c.version), 0))).scalar_one()


def pending(conn: Connection, migrations: tuple[Migration, ...] = MIGRATIONS) -> list[Migration]:
    version = current_version(conn)
    newest = max((m.version for m in migrations), default=0)
    if version > newest:
        raise SchemaTooNew(f"ledger schema version {version} is newer than this ocrd knows ({newest})")
    return [m for m in migrations if m.version > version]


def apply_one(conn: Connection, migration: Migration, now: datetime, stamp: Callable[[datetime], str]) -> bool:
    """Apply one migration inside the caller's write transaction, unless another process already
    did; record it in the same transaction. True when it was applied here."""
    if conn.dialect.name == "postgresql":
        # SQLite's BEGIN IMMEDIATE already serialises this; PostgreSQL needs a lock of its own
        conn.execute(text("SELECT pg_advisory_xact_lock(7262001)"))
    schema.schema_version.create(conn, checkfirst=True)
    if current_version(conn) >= migration.version:
        return False
    migration.apply(conn)
    conn.execute(schema.schema_version.insert().values(
        version=migration.version, applied_at=stamp(now), description=migration.description))
    return True
