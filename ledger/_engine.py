"""How the Ledger talks to its database: the SQLAlchemy engine (SQLite's pragmas and BEGIN kind,
PostgreSQL's lock timeout), one short transaction retried whole on a lock conflict, and the
dialect's upsert. Nothing here knows about jobs or pages."""

from __future__ import annotations

import os

import itertools
import random
import sys
import time
from pathlib import Path
from typing import Any, Callable, TypeVar

from sqlalchemy import Connection, Engine, Table, create_engine, event
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DatabaseError, InternalError, OperationalError

from .integrity import is_corruption

T = TypeVar("T")

BUSY_TIMEOUT_MS = 30_000
RETRY_FOR_S = 120.0                  # on top of busy_timeout: only a wedged writer gets this far
RECONNECT_FOR_S = 10.0               # a lost server connection is retried this long (a killed
                                     # backend, a restart), then LedgerUnreachable: callers back off
CONNECT_TIMEOUT_S = 10               # a frozen server must not hang `ocrd status`
_SQLITE_BUSY, _SQLITE_LOCKED, _SQLITE_FULL = 5, 6, 13
_PG_DISK_FULL = "53100"
# serialization_failure, deadlock_detected, lock_not_available (lock_timeout = busy_timeout),
# idle_in_transaction_session_timeout (the server ended a session that slept mid-transaction: it
# was rolled back whole, and runs again on a new connection)
_PG_RETRY = frozenset({"40001", "40P01", "55P03", "25P03"})
# admin_shutdown (pg_terminate_backend, a fast stop), crash_shutdown, cannot_connect_now (starting)
_PG_GONE = frozenset({"57P01", "57P02", "57P03"})


class LedgerUnreachable(Exception):
    """The database server can't be reached (down, restarting, the connection lost) for longer
    than RECONNECT_FOR_S. Not the data's fault: whoever gets it waits and tries again."""


class LedgerFull(LedgerUnreachable):
    """The ledger's disk is full (SQLITE_FULL; PostgreSQL's disk_full): the transaction was
    rolled back whole. Like an unreachable server it is nobody's fault and passes by itself, so
    it is one: whoever gets it keeps what it holds, waits and tries again."""


class LedgerCorrupt(Exception):
    """SQLite says the ledger file is damaged (SQLITE_CORRUPT, SQLITE_NOTADB): a bad page from a
    failing disk, a sync tool or a torn copy. Nothing retries it and nothing may write on: the
    daemon stops (exit 78) and every command says this one line, naming the file and the fix."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"the ledger {path} is damaged ({reason}): restore a backup with `ocrd "
                         "ledger restore PATH` once ocrd is stopped (README: When the ledger is damaged)")
        self.path, self.reason = path, reason


def make_sql_engine(url: str, busy_timeout_ms: int, pool_size: int) -> Engine:
    """The engine for a ledger URL; a SQLite file's folder is created, an in-memory one refused."""
    parsed = make_url(url)
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")   # not SQLAlchemy's psycopg2 default
    if parsed.get_backend_name() != "sqlite":
        # lock_timeout plays busy_timeout's part: a wait past it is retried like SQLITE_BUSY.
        # A session idle inside a transaction that long is a frozen process (a laptop asleep
        # mid-write): the server ends it, so its row locks don't hold up every other host.
        options = (f"{parsed.query.get('options', '')} -c lock_timeout={int(busy_timeout_ms)}"
                   f" -c idle_in_transaction_session_timeout={int(busy_timeout_ms)}")
        return create_engine(parsed, pool_size=pool_size, max_overflow=2, pool_pre_ping=True,
                             connect_args={"options": options.strip(),
                                           "connect_timeout": CONNECT_TIMEOUT_S})
    if parsed.database in (None, "", ":memory:"):
        raise ValueError("the ledger needs a SQLite file, not an in-memory database")
    _private_file(Path(parsed.database).expanduser())
    engine = create_engine(
        parsed, pool_size=pool_size, max_overflow=2,
        # the worker's heartbeat thread shares the Ledger with its main thread; each checkout is
        # used by one thread at a time, which is all sqlite3 needs
        connect_args={"check_same_thread": False, "timeout": busy_timeout_ms / 1000})

    def on_connect(dbapi_conn: Any, _record: Any) -> None:
        # sqlite3 must not emit its own (deferred) BEGIN: `on_begin` decides the kind
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")   # first: WAL may wait
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = FULL")
        cursor.execute("PRAGMA foreign_keys = ON")
        if sys.platform == "darwin":
            # plain fsync on macOS does not reach the platter; F_FULLFSYNC does
            cursor.execute("PRAGMA fullfsync = ON")
        cursor.close()

    event.listen(engine, "connect", on_connect)
    event.listen(engine, "begin", _on_begin)
    return engine


def _on_begin(conn: Connection) -> None:
    # A deferred write transaction that later needs the write lock fails with SQLITE_BUSY at
    # once (busy_timeout cannot help it); IMMEDIATE takes the lock up front and waits for it.
    # Pure reads stay deferred so `ocrd status` never queues behind the workers.
    read = conn.get_execution_options().get("ledger_read", False)
    conn.exec_driver_sql("BEGIN" if read else "BEGIN IMMEDIATE")


def is_busy(exc: OperationalError | InternalError) -> bool:
    """A transient lock conflict: retry the whole transaction."""
    if getattr(exc.orig, "sqlstate", None) in _PG_RETRY:
        return True
    code = getattr(exc.orig, "sqlite_errorcode", None)
    if code is not None and code & 0xFF in (_SQLITE_BUSY, _SQLITE_LOCKED):
        return True
    message = str(exc.orig).lower()
    return "database is locked" in message or "database table is locked" in message


def is_full(exc: OperationalError | InternalError) -> bool:
    """No room on the ledger's disk: SQLite's SQLITE_FULL, PostgreSQL's disk_full."""
    code = getattr(exc.orig, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF == _SQLITE_FULL
    return getattr(exc.orig, "sqlstate", None) == _PG_DISK_FULL


def is_disconnect(exc: OperationalError | InternalError) -> bool:
    """PostgreSQL's connection is gone or can't be made (server down, restarting, the backend
    killed): the transaction was rolled back, or never began. SQLite has no connection to lose."""
    if exc.connection_invalidated:
        return True
    state = getattr(exc.orig, "sqlstate", "")
    if type(exc.orig).__module__.split(".")[0] != "psycopg":
        return False
    # no SQLSTATE: libpq's own (connection refused, server closed the connection, timeout)
    return state is None or state.startswith("08") or state in _PG_GONE


def run_transaction(engine: Engine, fn: Callable[[Connection], T], *, read: bool = False) -> T:
    """Run `fn` in one short transaction: committed if it returns, rolled back if it raises.
    A lock conflict past busy_timeout is retried (whole transaction) with jittered backoff, so a
    "database is locked" only reaches the caller after RETRY_FOR_S more seconds. A lost server
    connection is retried the same way for RECONNECT_FOR_S, then raised as LedgerUnreachable.
    A full disk is LedgerFull at once, a damaged SQLite file LedgerCorrupt.
    (Every transaction here is safe to run again: state changes are conditional, inserts keyed.)
    A callable, not a context manager: only a callable can be run again whole."""
    deadline = time.monotonic() + RETRY_FOR_S
    reconnect_by = time.monotonic() + RECONNECT_FOR_S
    sqlite = engine.dialect.name == "sqlite"
    for attempt in itertools.count():
        try:
            with engine.connect() as conn:
                if read and sqlite:
                    conn.execution_options(ledger_read=True)
                elif read:
                    # one snapshot for the whole read, as SQLite's deferred transaction has
                    conn.execution_options(isolation_level="REPEATABLE READ",
                                           postgresql_readonly=True)
                with conn.begin():
                    return fn(conn)
        except (OperationalError, InternalError) as exc:   # 25P03 is an InternalError
            if sqlite and is_corruption(exc.orig):
                raise _corrupt(engine, exc) from exc
            if is_full(exc):
                raise LedgerFull(f"no room to write the ledger: {_first_line(exc)}") from exc
            if is_disconnect(exc):
                if time.monotonic() >= reconnect_by:
                    raise LedgerUnreachable(f"the ledger's server is unreachable: {_first_line(exc)}") from exc
            elif not is_busy(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(min(0.05 * 2 ** attempt, 2.0) * random.uniform(0.5, 1.5))
        except DatabaseError as exc:   # sqlite3.DatabaseError: "database disk image is malformed"
            if sqlite and is_corruption(exc.orig):
                raise _corrupt(engine, exc) from exc
            raise
    raise AssertionError("unreachable")


def _corrupt(engine: Engine, exc: DatabaseError) -> LedgerCorrupt:
    return LedgerCorrupt(str(engine.url.database), _first_line(exc))


def _first_line(exc: DatabaseError) -> str:
    return (str(exc.orig).strip().splitlines() or [type(exc.orig).__name__])[0]


class Transactions:
    """What the Ledger and its parts (workers.py, reports.py, hosts.py) run every transaction
    through. Once one of them met a damaged file, every later call raises LedgerCorrupt without
    touching the file: a write that misses the bad page would succeed, and bury the damage under
    new commits. `on_corrupt` hears of it first, from whichever thread met it (the daemon's
    threads live on through most errors, so the one that must stop them all is told here)."""

    _engine: Engine
    corrupt: LedgerCorrupt | None = None
    on_corrupt: Callable[[LedgerCorrupt], None] | None = None

    def _write(self, fn: Callable[[Connection], T]) -> T:
        return self._run(fn, read=False)

    def _read(self, fn: Callable[[Connection], T]) -> T:
        return self._run(fn, read=True)

    def refuse(self, exc: LedgerCorrupt) -> None:
        """Refuse every later call from now on: another part of this process (or a worker) met
        the damage, and nothing more may be written to the file."""
        if self.corrupt is None:
            self.corrupt = exc

    def _run(self, fn: Callable[[Connection], T], *, read: bool) -> T:
        if self.corrupt is not None:
            raise LedgerCorrupt(self.corrupt.path, self.corrupt.reason)
        try:
            return run_transaction(self._engine, fn, read=read)
        except LedgerCorrupt as exc:
            first, self.corrupt = self.corrupt is None, exc
            if first and self.on_corrupt is not None:
                self.on_corrupt(exc)
            raise


def upsert(conn: Connection, table: Table, key: str, values: dict[str, Any]) -> None:
    """Insert a row, or update every other column of the row with the same `key`."""
    insert = sqlite_insert if conn.dialect.name == "sqlite" else pg_insert
    stmt = insert(table).values(**values)
    conn.execute(stmt.on_conflict_do_update(
        index_elements=[table.c[key]],
        set_={k: stmt.excluded[k] for k in values if k != key}))


def _private_file(db: Path) -> None:
    """The ledger holds every page's text: its folder 0700 when we make it, the file 0600 (SQLite
    gives its -wal and -shm the database file's mode)."""
    if not db.parent.exists():
        db.parent.mkdir(parents=True, mode=0o700)
    # Only when missing: closing any descriptor of a file drops every POSIX lock this process
    # holds on it, so re-opening the ledger of a live Ledger (the ingest thread, a second Ledger in
    # the daemon) would silently release SQLite's locks and hide its commits from other processes.
    if not db.exists():
        os.close(os.open(db, os.O_RDWR | os.O_CREAT, 0o600))
    if db.stat().st_mode & 0o077:
        os.chmod(db, 0o600)   # a ledger made before ocrd kept it private
