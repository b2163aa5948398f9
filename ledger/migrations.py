"""Schema migrations, applied when a Ledger opens.

Each migration runs in its own write transaction together with the `schema_version` row that
records it, so a crash leaves either both or neither (sqlite-utils' migrations.py). Opening an
up-to-date file only reads. Several processes may open a new file at once: the version is re-read
inside each write transaction, so a migration another process just applied is skipped.

Adding a migration: append one with the next version and explicit DDL (ALTER TABLE ...) and change
schema.py to match. `_create_v1` creates the frozen v1 tables (not schema.py's), so a new file
replays exactly the history an old file went through.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Callable

from sqlalchemy import (CheckConstraint, Column, Connection, Float, ForeignKey, Index, Integer,
                        LargeBinary, MetaData, Table, Text, UniqueConstraint, func, inspect, select, text)

from . import schema


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    apply: Callable[[Connection], None]


def _check(column: str, values: str) -> CheckConstraint:
    return CheckConstraint(f"{column} IN ({values})", name=f"ck_{column}_valid")


def _v1_metadata() -> MetaData:
    """The tables exactly as version 1 created them (frozen: schema.py is the newest version)."""
    v1, Bytes = MetaData(), schema.Bytes
    jobs = Table(
        "jobs", v1,
        Column("id", Integer, primary_key=True), Column("inbox", Text, nullable=False),
        Column("source_path", Text, nullable=False), Column("spool_path", Text),
        Column("sha256", Text), Column("size_bytes", Bytes), Column("state", Text, nullable=False),
        Column("pages_total", Integer, nullable=False, default=0),
        Column("pages_done", Integer, nullable=False, default=0),
        Column("attempts", Integer, nullable=False, default=1),
        Column("priority", Integer, nullable=False, default=0),
        Column("created_at", Text, nullable=False), Column("updated_at", Text, nullable=False),
        Column("finished_at", Text), Column("output_path", Text), Column("error", Text),
        Column("duplicate_of", Integer, ForeignKey("jobs.id")),
        _check("state", "'queued', 'running', 'done', 'failed', 'duplicate'"))
    pages = Table(
        "pages", v1,
        Column("id", Integer, primary_key=True),
        Column("job_id", Integer, ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
        Column("page_no", Integer, nullable=False), Column("state", Text, nullable=False),
        Column("attempts", Integer, nullable=False, default=0),
        Column("priority", Integer, nullable=False, default=0),
        *(Column(name, Text) for name in ("run_after", "lease_owner", "lease_expires_at",
                                          "started_at", "finished_at", "text")),
        Column("prompt_tokens", Integer), Column("generation_tokens", Integer),
        Column("seconds", Float), Column("finish_reason", Text), Column("error", Text),
        UniqueConstraint("job_id", "page_no", name="uq_pages_job_page"),
        _check("state", "'queued', 'running', 'done', 'failed'"))
    workers = Table(
        "workers", v1,
        Column("id", Text, primary_key=True), Column("host", Text, nullable=False),
        Column("pid", Integer, nullable=False), Column("backend", Text), Column("device_name", Text),
        Column("state", Text, nullable=False), Column("started_at", Text, nullable=False),
        Column("last_heartbeat_at", Text), Column("current_page", Text),
        Column("pages_done", Integer, nullable=False, default=0), Column("error", Text))
    heartbeats = Table(
        "heartbeats", v1,
        Column("id", Integer, primary_key=True), Column("worker_id", Text, nullable=False),
        Column("at", Text, nullable=False), Column("backend", Text),
        *(Column(name, Bytes) for name in ("active_memory_bytes", "peak_memory_bytes",
                                           "cache_memory_bytes", "memory_limit_bytes")),
        Column("pages_done", Integer), Column("tokens_per_s", Float))
    events = Table(
        "events", v1,
        Column("id", Integer, primary_key=True),
        Column("job_id", Integer, ForeignKey("jobs.id", ondelete="CASCADE")),
        Column("page_no", Integer), Column("at", Text, nullable=False),
        Column("kind", Text, nullable=False), Column("detail", Text, nullable=False, default=""))
    Table("meta", v1, Column("key", Text, primary_key=True), Column("value", Text, nullable=False))
    _v1_indexes(jobs, pages, workers, heartbeats, events)
    return v1


def _v1_indexes(jobs: Table, pages: Table, workers: Table, heartbeats: Table, events: Table) -> None:
    Index("ix_pages_claim", pages.c.state, pages.c.priority.desc(), pages.c.job_id,
          pages.c.page_no, pages.c.run_after)
    Index("ix_pages_finished_at", pages.c.finished_at)
    Index("ix_jobs_state", jobs.c.state)
    Index("ix_jobs_sha256", jobs.c.sha256)
    Index("ix_jobs_spool_path", jobs.c.spool_path)
    Index("ix_heartbeats_worker_at", heartbeats.c.worker_id, heartbeats.c.at)
    Index("ix_heartbeats_at", heartbeats.c.at)
    Index("ix_events_job_id", events.c.job_id)
    Index("ix_workers_host_pid", workers.c.host, workers.c.pid)


def _create_v1(conn: Connection) -> None:
    _v1_metadata().create_all(conn)


def _add_batch_columns(conn: Connection) -> None:
    """v2: each worker's in-flight limit and the pages in its batch, in its row and heartbeats."""
    for ddl in ("ALTER TABLE workers ADD COLUMN batch INTEGER NOT NULL DEFAULT 1",
                "ALTER TABLE workers ADD COLUMN pages_in_flight INTEGER NOT NULL DEFAULT 0",
                "ALTER TABLE heartbeats ADD COLUMN batch INTEGER",
                "ALTER TABLE heartbeats ADD COLUMN pages_in_flight INTEGER"):
        conn.execute(text(ddl))


def _add_hosts(conn: Connection) -> None:
    """v3, several hosts on one PostgreSQL ledger: who delivers each job and with which mode and
    prompt, the documents' bytes, and each daemon's heartbeat."""
    for ddl in ("ALTER TABLE jobs ADD COLUMN host TEXT", "ALTER TABLE jobs ADD COLUMN mode TEXT",
                "ALTER TABLE jobs ADD COLUMN prompt TEXT",
                "CREATE INDEX ix_jobs_host_state ON jobs (host, state)"):
        conn.execute(text(ddl))
    v3 = MetaData()
    Table("jobs", v3, Column("id", Integer, primary_key=True))
    Table("blobs", v3,
          Column("job_id", Integer, ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True),
          Column("chunk_no", Integer, primary_key=True, autoincrement=False),
          Column("data", LargeBinary, nullable=False))
    Table("hosts", v3,
          Column("name", Text, primary_key=True), Column("pid", Integer, nullable=False),
          Column("state", Text, nullable=False), Column("started_at", Text, nullable=False),
          Column("seen_at", Text, nullable=False), Column("inboxes", Integer, nullable=False),
          Column("workers", Integer, nullable=False), Column("backend", Text),
          Column("device_name", Text), Column("instance", Text))
    v3.tables["blobs"].create(conn)
    v3.tables["hosts"].create(conn)


def _add_page_layout(conn: Connection) -> None:
    """v4, searchable PDFs: each page's text blocks with their boxes (JSON), the size in pixels
    of the image its boxes refer to, and the engine that read it. Older pages have none."""
    for ddl in ("ALTER TABLE pages ADD COLUMN blocks TEXT", "ALTER TABLE pages ADD COLUMN width INTEGER",
                "ALTER TABLE pages ADD COLUMN height INTEGER", "ALTER TABLE pages ADD COLUMN engine TEXT"):
        conn.execute(text(ddl))


def _add_search(conn: Connection) -> None:
    """v5, full-text search and per-job choices: `pages.search_text` (a done page's words, clean
    of markup; NULL for pages done before v5 until the daemon indexes them at start), its index
    (SQLite: the FTS5 table `pages_fts` over that column, kept in step by triggers; PostgreSQL: a
    generated tsvector column with a GIN index), and `jobs.options` (an API upload's own mode,
    prompt and formats, JSON; NULL: its inbox's)."""
    conn.execute(text("ALTER TABLE jobs ADD COLUMN options TEXT"))
    conn.execute(text("ALTER TABLE pages ADD COLUMN search_text TEXT"))
    for ddl in schema.SEARCH_DDL[conn.dialect.name]:
        conn.execute(text(ddl))


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "jobs, pages, workers, heartbeats, events, meta and their indexes", _create_v1),
    Migration(2, "workers and heartbeats: batch, pages_in_flight", _add_batch_columns),
    Migration(3, "several hosts: jobs.host/mode/prompt, blobs, hosts", _add_hosts),
    Migration(4, "pages: blocks, width, height, engine", _add_page_layout),
    Migration(5, "full-text search: pages.search_text and its index; jobs.options", _add_search),
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
