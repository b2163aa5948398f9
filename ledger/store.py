"""The Ledger: the one API the daemon and the CLI share over the job database.

CONTRACT (other modules are written against exactly these names and signatures; keep them):
- Every method opens and commits its own short transaction; no transaction is held across calls.
- Every write transaction begins with BEGIN IMMEDIATE on SQLite (retry with jitter on SQLITE_BUSY).
  PostgreSQL runs writes at READ COMMITTED and reads at REPEATABLE READ (one snapshot); a state
  read before a conditional write takes the row lock the UPDATE would (FOR NO KEY UPDATE: a plain
  FOR UPDATE also blocks the foreign-key checks of event inserts, and two claims of one job then
  deadlock; SQLite's dialect renders nothing, BEGIN IMMEDIATE already made it the only writer).
  Deadlocks, serialization failures and lock timeouts are retried like SQLITE_BUSY.
- Every state change goes through `_transition_job` / `_transition_page` (conditional UPDATE ...
  WHERE state = :from) and appends an `events` row in the same transaction.
- `jobs.spool_path` always holds where the original lies NOW: the spool while queued/running, the
  archive path once done (None if deleted), the failed/ path once failed. Whoever moves the file
  calls `set_job_paths` right after the move; the supervisor reconciles at start.
- `now` parameters are timezone-aware UTC datetimes (default: datetime.now(UTC)); stored as ISO-8601.
"""

from __future__ import annotations

import itertools
import json
import random
import sys
import time
from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Callable, TypeVar

from sqlalchemy import (Connection, Engine, Row, and_, create_engine, delete, event, func, insert,
                        or_, select, text, update)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from . import migrations as _migrations
from .schema import events, heartbeats, jobs, meta, pages, workers
from .states import (ENDED_WORKER_STATES, JobState, ModelStatus, PageState, TransitionError,
                     WorkerState, check_job, check_page)

T = TypeVar("T")

BUSY_TIMEOUT_MS = 30_000
RETRY_FOR_S = 120.0                  # on top of busy_timeout: only a wedged writer gets this far
HEARTBEAT_RETENTION = timedelta(hours=24)
LIVE_WORKER_WINDOW = timedelta(minutes=10)
BACKOFF_BASE_S = 10.0
BACKOFF_MAX_S = 600.0
LEASE_LOST = "lease expired (worker lost)"
_KEEP: Any = object()                # set_job_paths: leave this column as it is
_SQLITE_BUSY, _SQLITE_LOCKED = 5, 6
# serialization_failure, deadlock_detected, lock_not_available (lock_timeout = busy_timeout)
_PG_RETRY = frozenset({"40001", "40P01", "55P03"})
_PG_INGEST_LOCK = 7262002            # pg_advisory_xact_lock key (migrations.py uses 7262001)


@dataclass(frozen=True)
class AddResult:
    job_id: int
    state: JobState              # queued, duplicate or failed
    duplicate_of: int | None     # the original job when state is duplicate


@dataclass(frozen=True)
class ClaimedPage:
    job_id: int
    page_no: int                 # 1-based
    attempts: int                # including this claim
    pages_total: int
    inbox: str                   # InboxConfig.key
    source_path: str
    spool_path: str


@dataclass(frozen=True)
class DaemonInfo:
    """What the running daemon recorded at start: its device and its pool plan (meta keys
    `device` and `pool_plan`), for `ocrd status` and `ocrd device`."""
    backend: str
    name: str
    memory_bytes: int
    workers: int
    batch: int
    reason: str


@dataclass(frozen=True)
class PageOutcome:
    state: PageState             # queued (will retry) or failed
    run_after: datetime | None   # when a queued page may be claimed again
    job_failed: bool             # the page's failure failed its job


# -- time -----------------------------------------------------------------------------------------
def utc_now(now: datetime | None = None) -> datetime:
    """`now` as an aware UTC datetime (naive values are taken as UTC)."""
    if now is None:
        return datetime.now(UTC)
    return now.replace(tzinfo=UTC) if now.tzinfo is None else now.astimezone(UTC)


def to_text(moment: datetime) -> str:
    """The one stored time format: fixed width, so text order is time order; sqlite3's date
    functions read it."""
    return utc_now(moment).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def from_text(value: str) -> datetime:
    return datetime.fromisoformat(value)


def backoff_s(attempts: int, rng: random.Random | None = None) -> float:
    """Delay before a failed page may run again: min(10 s * 2**attempts, 600 s) * U(0.8, 1.2)."""
    jitter = (rng or random).uniform(0.8, 1.2)
    return min(BACKOFF_BASE_S * 2 ** attempts, BACKOFF_MAX_S) * jitter


# -- engine -------------------------------------------------------------------------------------
def _make_engine(url: str, busy_timeout_ms: int, pool_size: int) -> Engine:
    parsed = make_url(url)
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")   # not SQLAlchemy's psycopg2 default
    if parsed.get_backend_name() != "sqlite":
        # lock_timeout plays busy_timeout's part: a wait past it is retried like SQLITE_BUSY
        options = f"{parsed.query.get('options', '')} -c lock_timeout={int(busy_timeout_ms)}"
        return create_engine(parsed, pool_size=pool_size, max_overflow=2, pool_pre_ping=True,
                             connect_args={"options": options.strip()})
    if parsed.database in (None, "", ":memory:"):
        raise ValueError("the ledger needs a SQLite file, not an in-memory database")
    Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
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

    def on_begin(conn: Connection) -> None:
        # A deferred write transaction that later needs the write lock fails with SQLITE_BUSY at
        # once (busy_timeout cannot help it); IMMEDIATE takes the lock up front and waits for it.
        # Pure reads stay deferred so `ocrd status` never queues behind the workers.
        read = conn.get_execution_options().get("ledger_read", False)
        conn.exec_driver_sql("BEGIN" if read else "BEGIN IMMEDIATE")

    event.listen(engine, "connect", on_connect)
    event.listen(engine, "begin", on_begin)
    return engine


def _is_busy(exc: OperationalError) -> bool:
    """A transient lock conflict: retry the whole transaction."""
    if getattr(exc.orig, "sqlstate", None) in _PG_RETRY:
        return True
    code = getattr(exc.orig, "sqlite_errorcode", None)
    if code is not None and code & 0xFF in (_SQLITE_BUSY, _SQLITE_LOCKED):
        return True
    message = str(exc.orig).lower()
    return "database is locked" in message or "database table is locked" in message


# -- the one writer of state ----------------------------------------------------------------------
def _add_event(conn: Connection, job_id: int | None, page_no: int | None, now: datetime, kind: str,
               detail: str = "") -> None:
    conn.execute(insert(events).values(job_id=job_id, page_no=page_no, at=to_text(now), kind=kind,
                                       detail=detail))


def _describe(src: str, dst: str, detail: str) -> str:
    return f"{src} -> {dst}" + (f": {detail}" if detail else "")


def _transition_job(conn: Connection, job_id: int, dst: JobState, now: datetime, *,
                    src: Collection[JobState] | None = None, detail: str = "",
                    **values: Any) -> JobState:
    """Move one job to `dst` (from its current state, which must be in `src` when given) with a
    conditional UPDATE, set `values` and append an event. Raises TransitionError when the table
    forbids it, the job is not in `src`, or the row moved on meanwhile. Returns the old state."""
    current = conn.execute(select(jobs.c.state).where(jobs.c.id == job_id)
                           .with_for_update(key_share=True)).scalar_one_or_none()
    if current is None:
        raise TransitionError(f"job {job_id} does not exist")
    current = JobState(current)
    if src is not None and current not in src:
        raise TransitionError(f"job {job_id} is {current}, not {'/'.join(sorted(src))}")
    check_job(current, dst)
    result = conn.execute(update(jobs).where(jobs.c.id == job_id, jobs.c.state == current)
                          .values(state=dst, updated_at=to_text(now), **values))
    if result.rowcount != 1:
        raise TransitionError(f"job {job_id} moved on from {current} (lost a race)")
    _add_event(conn, job_id, None, now, f"job_{dst}", _describe(current, dst, detail))
    return current


def _transition_page(conn: Connection, src: PageState, dst: PageState, now: datetime, *,
                     where: Any, detail: str = "", values: dict[str, Any] | None = None,
                     one: bool = False) -> list[Row]:
    """Move every page that matches `where` AND is in `src` to `dst` in one conditional UPDATE,
    set `values`, and append one event per page moved. Returns the moved rows (id, job_id,
    page_no, attempts). With `one`, moving nothing raises TransitionError (lost the race)."""
    check_page(src, dst)
    stmt = (update(pages).where(pages.c.state == src, where)
            .values(state=dst, **(values or {}))
            .returning(pages.c.id, pages.c.job_id, pages.c.page_no, pages.c.attempts))
    rows = conn.execute(stmt).all()
    if one and len(rows) != 1:
        raise TransitionError(f"page transition {src} -> {dst}: no such {src} page (lost a race)")
    if rows:
        at, text_ = to_text(now), _describe(src, dst, detail)
        conn.execute(insert(events), [dict(job_id=r.job_id, page_no=r.page_no, at=at,
                                           kind=f"page_{dst}", detail=text_) for r in rows])
    return rows


def _fail_job(conn: Connection, job_id: int, error: str, now: datetime) -> bool:
    """queued/running -> failed, with the job's unfinished pages; False if it was neither."""
    state = conn.execute(select(jobs.c.state).where(jobs.c.id == job_id)
                         .with_for_update(key_share=True)).scalar_one_or_none()
    if state not in (JobState.QUEUED, JobState.RUNNING):
        return False
    _transition_job(conn, job_id, JobState.FAILED, now, detail=error, error=error,
                    finished_at=to_text(now))
    for src in (PageState.QUEUED, PageState.RUNNING):
        _transition_page(conn, src, PageState.FAILED, now, where=pages.c.job_id == job_id,
                         detail="its job failed",
                         values=dict(error=f"job failed: {error}", lease_expires_at=None))
    return True


def _page_key(job_id: int, page_no: int) -> Any:
    return and_(pages.c.job_id == job_id, pages.c.page_no == page_no)


def _row(row: Row | None) -> dict[str, Any] | None:
    return None if row is None else dict(row._mapping)


_MEMORY_KEYS = ("active_memory_bytes", "peak_memory_bytes", "cache_memory_bytes",
                "memory_limit_bytes", "tokens_per_s")


def _workers_status(conn: Connection, now: datetime) -> list[dict[str, Any]]:
    query = (select(workers)
             .where(or_(workers.c.state.not_in(["stopped", "dead"]),
                        workers.c.last_heartbeat_at >= to_text(now - LIVE_WORKER_WINDOW)))
             .order_by(workers.c.started_at, workers.c.id))
    out = []
    for w in conn.execute(query).all():
        latest = conn.execute(
            select(*(heartbeats.c[k] for k in _MEMORY_KEYS))
            .where(heartbeats.c.worker_id == w.id)
            .order_by(heartbeats.c.at.desc(), heartbeats.c.id.desc()).limit(1)).first()
        age = (now - from_text(w.last_heartbeat_at)).total_seconds() if w.last_heartbeat_at else None
        out.append(dict(id=w.id, host=w.host, pid=w.pid, backend=w.backend,
                        device_name=w.device_name, state=w.state, started_at=w.started_at,
                        heartbeat_age_s=age, current_page=w.current_page, pages_done=w.pages_done,
                        error=w.error,
                        **{k: (latest._mapping[k] if latest else None) for k in _MEMORY_KEYS}))
    return out


def _throughput(conn: Connection, now: datetime) -> dict[str, float | None]:
    def per_min(minutes: int) -> float:
        # Pages over the time the window really held work (at least a minute): right after a
        # start, 500 pages in 8 s is not "100 pages/min over 5 min". Bounded above too, so a
        # `now` in the past (tests, replays) reads like a live one.
        count, first = conn.execute(select(func.count(), func.min(pages.c.finished_at)).where(
            pages.c.finished_at >= to_text(now - timedelta(minutes=minutes)),
            pages.c.finished_at <= to_text(now))).one()
        if not count:
            return 0.0
        span_min = (now - from_text(first)).total_seconds() / 60
        return count / min(max(span_min, 1.0), minutes)

    per_min_5 = per_min(5)
    per_min_60 = per_min(60)
    left = conn.execute(select(func.count()).select_from(pages).where(
        pages.c.state.in_([PageState.QUEUED, PageState.RUNNING]))).scalar_one()
    rate = per_min_5 or per_min_60
    eta = 0.0 if left == 0 else (left / rate * 60 if rate else None)
    return {"pages_per_min_5": per_min_5, "pages_per_min_60": per_min_60, "eta_s": eta}


class Ledger:
    def __init__(self, url: str, *, busy_timeout_ms: int = BUSY_TIMEOUT_MS, pool_size: int = 2,
                 migrations: tuple[_migrations.Migration, ...] = _migrations.MIGRATIONS) -> None:
        """Open (creating and migrating as needed) the ledger at a SQLAlchemy URL
        ("sqlite:////abs/path/ledger.db" or "postgresql+psycopg://...")."""
        self.url = url
        self._engine = _make_engine(url, busy_timeout_ms, pool_size)
        self._sqlite = self._engine.dialect.name == "sqlite"
        try:
            self._migrate(migrations)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Close every pooled connection. Safe to call twice."""
        self._engine.dispose()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transactions ---------------------------------------------------------------------------
    def _run(self, fn: Callable[[Connection], T], *, read: bool = False) -> T:
        """Run `fn` in one short transaction: committed if it returns, rolled back if it raises.
        SQLITE_BUSY past busy_timeout is retried (whole transaction) with jittered backoff, so a
        "database is locked" only reaches the caller after RETRY_FOR_S more seconds."""
        deadline = time.monotonic() + RETRY_FOR_S
        for attempt in itertools.count():
            try:
                with self._engine.connect() as conn:
                    if read and self._sqlite:
                        conn.execution_options(ledger_read=True)
                    elif read:
                        # one snapshot for the whole read, as SQLite's deferred transaction has
                        conn.execution_options(isolation_level="REPEATABLE READ",
                                               postgresql_readonly=True)
                    with conn.begin():
                        return fn(conn)
            except OperationalError as exc:
                if not _is_busy(exc) or time.monotonic() >= deadline:
                    raise
                time.sleep(min(0.05 * 2 ** attempt, 2.0) * random.uniform(0.5, 1.5))
        raise AssertionError("unreachable")

    def _write(self, fn: Callable[[Connection], T]) -> T:
        return self._run(fn)

    def _read(self, fn: Callable[[Connection], T]) -> T:
        return self._run(fn, read=True)

    def _migrate(self, migrations: tuple[_migrations.Migration, ...]) -> None:
        for migration in self._read(lambda conn: _migrations.pending(conn, migrations)):
            self._write(lambda conn: _migrations.apply_one(conn, migration, utc_now(), to_text))

    def _upsert(self, conn: Connection, table: Any, key: str, values: dict[str, Any]) -> None:
        stmt = (sqlite_insert if self._sqlite else pg_insert)(table).values(**values)
        conn.execute(stmt.on_conflict_do_update(
            index_elements=[table.c[key]],
            set_={k: stmt.excluded[k] for k in values if k != key}))

    # -- jobs -----------------------------------------------------------------------------------
    def add_job(self, *, inbox: str, source_path: str, spool_path: str, sha256: str, size_bytes: int,
                pages_total: int, priority: int = 0, on_duplicate: str = "skip",
                now: datetime | None = None) -> AddResult:
        """Insert a job and its `pages_total` page rows in one transaction.
        If on_duplicate == "skip" and a queued/running/done job has the same sha256, insert a
        `duplicate` job instead (no pages, error = "duplicate of job N") and return duplicate_of=N.
        Idempotent on spool_path: if a job with this spool_path exists, return it unchanged."""
        if pages_total < 1:
            raise ValueError("a job needs at least one page; record empty files with add_failed_job")
        now = utc_now(now)
        stamp = to_text(now)
        common = dict(inbox=inbox, source_path=source_path, spool_path=spool_path, sha256=sha256,
                      size_bytes=size_bytes, priority=priority, created_at=stamp, updated_at=stamp)

        def tx(conn: Connection) -> AddResult:
            self._lock_ingest(conn)
            existing = self._by_spool_path(conn, spool_path)
            if existing is not None:
                return AddResult(existing["id"], JobState(existing["state"]), existing["duplicate_of"])
            original = None
            if on_duplicate == "skip" and sha256:
                original = conn.execute(
                    select(jobs.c.id).where(jobs.c.sha256 == sha256,
                                            jobs.c.state.in_([JobState.QUEUED, JobState.RUNNING,
                                                              JobState.DONE]))
                    .order_by(jobs.c.id).limit(1)).scalar_one_or_none()
            if original is not None:
                error = f"duplicate of job {original}"
                job_id = conn.execute(insert(jobs).values(
                    **common, state=JobState.DUPLICATE, pages_total=0, duplicate_of=original,
                    error=error, finished_at=stamp)).inserted_primary_key[0]
                _add_event(conn, job_id, None, now, "job_duplicate", error)
                return AddResult(job_id, JobState.DUPLICATE, original)
            job_id = conn.execute(insert(jobs).values(
                **common, state=JobState.QUEUED, pages_total=pages_total)).inserted_primary_key[0]
            self._insert_pages(conn, job_id, pages_total, priority)
            _add_event(conn, job_id, None, now, "job_added", f"{pages_total} pages from {source_path}")
            return AddResult(job_id, JobState.QUEUED, None)

        return self._write(tx)

    def _lock_ingest(self, conn: Connection) -> None:
        """PostgreSQL: one ingest at a time across hosts, so the spool_path and sha256 look-ups
        that decide an insert stay true until it commits (SQLite: BEGIN IMMEDIATE did this)."""
        if not self._sqlite:
            conn.execute(select(func.pg_advisory_xact_lock(_PG_INGEST_LOCK)))

    @staticmethod
    def _insert_pages(conn: Connection, job_id: int, pages_total: int, priority: int) -> None:
        conn.execute(insert(pages), [dict(job_id=job_id, page_no=n, state=PageState.QUEUED,
                                          attempts=0, priority=priority)
                                     for n in range(1, pages_total + 1)])

    @staticmethod
    def _by_spool_path(conn: Connection, spool_path: str) -> dict[str, Any] | None:
        return _row(conn.execute(select(jobs).where(jobs.c.spool_path == spool_path)
                                 .order_by(jobs.c.id.desc()).limit(1)).first())

    def add_failed_job(self, *, inbox: str, source_path: str, spool_path: str, sha256: str,
                       size_bytes: int, error: str, now: datetime | None = None) -> int:
        """Record a file that failed at ingest (unsupported, corrupt, empty...) as a `failed` job
        with no pages; spool_path is where the original now lies (the failed/ folder).
        Idempotent on spool_path like add_job."""
        now = utc_now(now)
        stamp = to_text(now)

        def tx(conn: Connection) -> int:
            self._lock_ingest(conn)
            existing = self._by_spool_path(conn, spool_path)
            if existing is not None:
                return existing["id"]
            job_id = conn.execute(insert(jobs).values(
                inbox=inbox, source_path=source_path, spool_path=spool_path, sha256=sha256,
                size_bytes=size_bytes, state=JobState.FAILED, pages_total=0, created_at=stamp,
                updated_at=stamp, finished_at=stamp, error=error)).inserted_primary_key[0]
            _add_event(conn, job_id, None, now, "job_failed", f"at ingest: {error}")
            return job_id

        return self._write(tx)

    def job(self, job_id: int) -> dict[str, Any] | None:
        """One jobs row as a dict (all columns), or None."""
        return self._read(lambda c: _row(c.execute(select(jobs).where(jobs.c.id == job_id)).first()))

    def job_by_spool_path(self, spool_path: str) -> dict[str, Any] | None:
        """The newest job whose original lies at spool_path, or None."""
        return self._read(lambda c: self._by_spool_path(c, spool_path))

    def jobs_in_states(self, states: list[JobState]) -> list[dict[str, Any]]:
        """All jobs rows in these states (for reconciling spool and ledger at start)."""
        query = select(jobs).where(jobs.c.state.in_(list(states))).order_by(jobs.c.id)
        return self._read(lambda c: [dict(r._mapping) for r in c.execute(query)])

    def set_job_paths(self, job_id: int, *, spool_path: str | None = _KEEP,
                      output_path: str | None = _KEEP) -> None:
        """Record where a job's original / output lives (no state change). An omitted argument
        leaves its column alone; an explicit None clears it (the original was deleted)."""
        values = {k: v for k, v in (("spool_path", spool_path), ("output_path", output_path))
                  if v is not _KEEP}
        if not values:
            return
        stamp = to_text(utc_now())
        self._write(lambda c: c.execute(update(jobs).where(jobs.c.id == job_id)
                                        .values(**values, updated_at=stamp)))

    def finish_job(self, job_id: int, output_path: str, now: datetime | None = None) -> bool:
        """running -> done with output_path and finished_at; False if it was not running, or if
        some of its pages are not done. A queued job whose pages are all done (retried after a
        failure past its last page) goes queued -> running -> done."""
        now = utc_now(now)

        def tx(conn: Connection) -> bool:
            if not self._all_pages_done(conn, job_id):
                return False
            try:
                state = conn.execute(select(jobs.c.state).where(jobs.c.id == job_id)).scalar_one()
                if state == JobState.QUEUED:
                    # a retried job whose failure came after its last page (the outbox write):
                    # nothing is left to claim, so it never went running again
                    _transition_job(conn, job_id, JobState.RUNNING, now, src={JobState.QUEUED},
                                    detail="every page was already done")
                _transition_job(conn, job_id, JobState.DONE, now, src={JobState.RUNNING},
                                detail=output_path, output_path=output_path,
                                finished_at=to_text(now), error=None)
            except TransitionError:
                return False
            return True

        return self._write(tx)

    def fail_job(self, job_id: int, error: str, now: datetime | None = None) -> bool:
        """queued/running -> failed with error (its queued/running pages -> failed too)."""
        now = utc_now(now)
        return self._write(lambda conn: _fail_job(conn, job_id, error, now))

    def completed_jobs_not_done(self) -> list[int]:
        """Jobs in running/queued whose pages are all done (a finisher died before the outbox
        write or before finish_job): the supervisor finalises these at start."""
        unfinished = select(pages.c.id).where(pages.c.job_id == jobs.c.id,
                                              pages.c.state != PageState.DONE)
        query = (select(jobs.c.id)
                 .where(jobs.c.state.in_([JobState.QUEUED, JobState.RUNNING]),
                        jobs.c.pages_total > 0, ~unfinished.exists())
                 .order_by(jobs.c.id))
        return self._read(lambda c: list(c.execute(query).scalars()))

    def page_texts(self, job_id: int) -> list[str]:
        """Texts of a job's pages in page order (all pages must be done: ValueError if not)."""
        query = select(pages.c.state, pages.c.text).where(pages.c.job_id == job_id).order_by(pages.c.page_no)
        rows = self._read(lambda c: c.execute(query).all())
        if not rows or any(r.state != PageState.DONE for r in rows):
            raise ValueError(f"job {job_id} has pages that are not done")
        return [r.text or "" for r in rows]

    def retry_jobs(self, job_ids: list[int] | None = None, now: datetime | None = None) -> list[int]:
        """failed -> queued for these jobs (None: every failed job); only their failed pages go back
        to queued with attempts reset to 0 and error cleared; jobs.attempts += 1. Jobs that
        failed at ingest (no pages) are returned in the list too, left failed, with an event
        `retry_ingest` so the caller can move the original back into its inbox. Returns the ids
        that were requeued or need re-ingest."""
        now = utc_now(now)

        def tx(conn: Connection) -> list[int]:
            query = (select(jobs.c.id).where(jobs.c.state == JobState.FAILED).order_by(jobs.c.id)
                     .with_for_update(key_share=True))
            if job_ids is not None:
                query = query.where(jobs.c.id.in_(list(job_ids)))
            picked = list(conn.execute(query).scalars())
            for job_id in picked:
                has_pages = conn.execute(select(pages.c.id).where(pages.c.job_id == job_id)
                                         .limit(1)).first() is not None
                if not has_pages:
                    _add_event(conn, job_id, None, now, "retry_ingest",
                               "failed at ingest: the original goes back to its inbox")
                    continue
                _transition_job(conn, job_id, JobState.QUEUED, now, src={JobState.FAILED},
                                detail="retry", error=None, finished_at=None,
                                attempts=jobs.c.attempts + 1)
                _transition_page(conn, PageState.FAILED, PageState.QUEUED, now,
                                 where=pages.c.job_id == job_id, detail="retry",
                                 values=dict(attempts=0, error=None, run_after=None,
                                             lease_expires_at=None))
            return picked

        return self._write(tx)

    def reopen_job(self, job_id: int, *, spool_path: str, sha256: str, size_bytes: int,
                   pages_total: int, now: datetime | None = None) -> bool:
        """A job that failed at ingest (no pages) was fixed and re-checked: failed -> queued with
        `pages_total` new page rows, in one transaction. False if it was not failed (or has pages:
        use retry_jobs for those)."""
        if pages_total < 1:
            raise ValueError("a job needs at least one page")
        now = utc_now(now)

        def tx(conn: Connection) -> bool:
            row = conn.execute(select(jobs.c.state, jobs.c.priority).where(jobs.c.id == job_id)
                               .with_for_update(key_share=True)).first()
            has_pages = conn.execute(select(pages.c.id).where(pages.c.job_id == job_id)
                                     .limit(1)).first() is not None
            if row is None or row.state != JobState.FAILED or has_pages:
                return False
            _transition_job(conn, job_id, JobState.QUEUED, now, src={JobState.FAILED},
                            detail="reopened after a new ingest", spool_path=spool_path,
                            sha256=sha256, size_bytes=size_bytes, pages_total=pages_total,
                            pages_done=0, error=None, finished_at=None, output_path=None,
                            attempts=jobs.c.attempts + 1)
            self._insert_pages(conn, job_id, pages_total, row.priority)
            return True

        return self._write(tx)

    @staticmethod
    def _all_pages_done(conn: Connection, job_id: int) -> bool:
        total = conn.execute(select(jobs.c.pages_total).where(jobs.c.id == job_id)).scalar_one_or_none()
        if not total:
            return False
        open_page = conn.execute(select(pages.c.id).where(pages.c.job_id == job_id,
                                                          pages.c.state != PageState.DONE)
                                 .limit(1)).first()
        return open_page is None

    # -- pages ----------------------------------------------------------------------------------
    def claim_pages(self, worker_id: str, n: int = 1, lease_s: float = 60.0,
                    now: datetime | None = None) -> list[ClaimedPage]:
        """Atomically claim up to n queued pages whose run_after has passed (oldest job first,
        priority desc, then page_no): page -> running, lease_owner = worker_id,
        lease_expires_at = now + lease_s, attempts += 1; their jobs queued -> running;
        workers.current_page set. SQLite: BEGIN IMMEDIATE; UPDATE ... WHERE rowid IN (SELECT ...
        LIMIT n) RETURNING. PostgreSQL: SELECT ... FOR UPDATE SKIP LOCKED."""
        if n < 1:
            return []
        now = utc_now(now)
        stamp = to_text(now)
        # Walks ix_pages_claim in this order, so the claim costs the same with a million pages.
        pick = (select(pages.c.id)
                .where(pages.c.state == PageState.QUEUED,
                       or_(pages.c.run_after.is_(None), pages.c.run_after <= stamp))
                .order_by(pages.c.priority.desc(), pages.c.job_id, pages.c.page_no)
                .limit(n))
        if not self._sqlite:
            # SQLite needs nothing more: BEGIN IMMEDIATE already made this the only writer.
            # Concurrent claimers skip each other's rows instead of queueing on them; a
            # MATERIALIZED CTE runs the locking pick once (an IN (subquery) may be re-run).
            pick = select(pick.with_for_update(key_share=True, skip_locked=True).cte("picked")
                          .prefix_with("MATERIALIZED").c.id)

        def tx(conn: Connection) -> list[ClaimedPage]:
            claimed = _transition_page(
                conn, PageState.QUEUED, PageState.RUNNING, now,
                where=pages.c.id.in_(pick), detail=f"worker {worker_id}",
                values=dict(lease_owner=worker_id, lease_expires_at=to_text(now + timedelta(seconds=lease_s)),
                            attempts=pages.c.attempts + 1, started_at=stamp, run_after=None))
            if not claimed:
                return []
            job_ids = sorted({r.job_id for r in claimed})
            # locked in id order: a concurrent claim of another page of a job waits here and
            # then reads it running
            info = {r.id: r for r in conn.execute(
                select(jobs.c.id, jobs.c.state, jobs.c.pages_total, jobs.c.inbox,
                       jobs.c.source_path, jobs.c.spool_path).where(jobs.c.id.in_(job_ids))
                .order_by(jobs.c.id).with_for_update(key_share=True))}
            for job_id in job_ids:
                if info[job_id].state == JobState.QUEUED:
                    _transition_job(conn, job_id, JobState.RUNNING, now, src={JobState.QUEUED},
                                    detail=f"first page claimed by worker {worker_id}")
            claimed = sorted(claimed, key=lambda r: (r.job_id, r.page_no))
            conn.execute(update(workers).where(workers.c.id == worker_id).values(
                current_page=",".join(f"{r.job_id}:{r.page_no}" for r in claimed)))
            return [ClaimedPage(job_id=r.job_id, page_no=r.page_no, attempts=r.attempts,
                                pages_total=info[r.job_id].pages_total, inbox=info[r.job_id].inbox,
                                source_path=info[r.job_id].source_path,
                                spool_path=info[r.job_id].spool_path)
                    for r in claimed]

        return self._write(tx)

    def renew_leases(self, worker_id: str, lease_s: float = 60.0, now: datetime | None = None) -> int:
        """Push out the lease of every page this worker holds; returns how many."""
        now = utc_now(now)
        return self._write(lambda conn: self._renew(conn, worker_id, lease_s, now))

    @staticmethod
    def _renew(conn: Connection, worker_id: str, lease_s: float, now: datetime) -> int:
        return conn.execute(
            update(pages).where(pages.c.state == PageState.RUNNING, pages.c.lease_owner == worker_id)
            .values(lease_expires_at=to_text(now + timedelta(seconds=lease_s)))).rowcount

    def complete_page(self, job_id: int, page_no: int, worker_id: str, *, text: str,
                      prompt_tokens: int = 0, generation_tokens: int = 0, seconds: float = 0.0,
                      finish_reason: str = "stop", now: datetime | None = None) -> bool:
        """running -> done (only if this worker still holds the lease); pages_done += 1;
        workers.pages_done += 1. Returns True when this completion made every page of the job
        done (the caller then assembles the outbox). False if the lease was lost or the job is
        not yet complete -- use `job_complete` to tell apart if needed."""
        now = utc_now(now)
        stamp = to_text(now)

        def tx(conn: Connection) -> bool:
            moved = _transition_page(
                conn, PageState.RUNNING, PageState.DONE, now,
                where=and_(_page_key(job_id, page_no), pages.c.lease_owner == worker_id),
                detail=f"worker {worker_id}",
                values=dict(text=text, prompt_tokens=prompt_tokens,
                            generation_tokens=generation_tokens, seconds=seconds,
                            finish_reason=finish_reason, finished_at=stamp,
                            lease_expires_at=None, error=None))
            if not moved:
                return False
            done, total = conn.execute(
                update(jobs).where(jobs.c.id == job_id)
                .values(pages_done=jobs.c.pages_done + 1, updated_at=stamp)
                .returning(jobs.c.pages_done, jobs.c.pages_total)).one()
            conn.execute(update(workers).where(workers.c.id == worker_id)
                         .values(pages_done=workers.c.pages_done + 1))
            return done == total

        return self._write(tx)

    def job_complete(self, job_id: int) -> bool:
        """Every page of the job is done."""
        return self._read(lambda conn: self._all_pages_done(conn, job_id))

    def fail_page(self, job_id: int, page_no: int, worker_id: str | None, error: str, *,
                  retryable: bool = True, max_attempts: int = 3,
                  now: datetime | None = None) -> PageOutcome:
        """A page's attempt failed. worker_id None: the supervisor fails it on a dead worker's
        behalf (page timeout). Retryable and attempts < max_attempts: back to queued with
        run_after = now + min(10 s * 2**attempts, 600 s) * jitter(0.8..1.2). Otherwise the page
        -> failed and its job -> failed with error "page N: <error>".
        A page no longer running under this worker (its lease was rescued, its job failed through
        another page) is left alone: the outcome then reports its current state, job_failed False.
        TransitionError only if there is no such page."""
        now = utc_now(now)

        def tx(conn: Connection) -> PageOutcome:
            where = _page_key(job_id, page_no)
            page = conn.execute(select(pages.c.state, pages.c.attempts, pages.c.lease_owner,
                                       pages.c.run_after).where(where)
                                .with_for_update(key_share=True)).first()
            if page is None:
                raise TransitionError(f"page {job_id}:{page_no} does not exist")
            if page.state != PageState.RUNNING or worker_id not in (None, page.lease_owner):
                # the loser of a race reports, it does not act (like complete_page's False)
                return PageOutcome(PageState(page.state),
                                   from_text(page.run_after) if page.run_after else None, False)
            attempts = page.attempts
            if retryable and attempts < max_attempts:
                run_after = now + timedelta(seconds=backoff_s(attempts))
                _transition_page(conn, PageState.RUNNING, PageState.QUEUED, now, where=where,
                                 one=True, detail=error,
                                 values=dict(error=error, run_after=to_text(run_after),
                                             lease_expires_at=None))
                return PageOutcome(PageState.QUEUED, run_after, False)
            _transition_page(conn, PageState.RUNNING, PageState.FAILED, now, where=where, one=True,
                             detail=error, values=dict(error=error, lease_expires_at=None))
            job_failed = _fail_job(conn, job_id, f"page {page_no}: {error}", now)
            return PageOutcome(PageState.FAILED, None, job_failed)

        return self._write(tx)

    def release_pages(self, worker_id: str, now: datetime | None = None) -> int:
        """Warm stop: running pages of this worker -> queued, attempts -= 1 (not its fault)."""
        now = utc_now(now)
        return self._write(lambda conn: len(_transition_page(
            conn, PageState.RUNNING, PageState.QUEUED, now, where=pages.c.lease_owner == worker_id,
            detail=f"released by worker {worker_id}",
            values=dict(attempts=pages.c.attempts - 1, lease_expires_at=None, run_after=None))))

    def rescue_expired(self, max_attempts: int = 3, now: datetime | None = None) -> int:
        """Pages whose lease expired -> queued (the attempt stays counted); a page already at
        max_attempts fails with "lease expired (worker lost)" instead. Returns pages touched."""
        now = utc_now(now)
        expired = pages.c.lease_expires_at < to_text(now)

        def tx(conn: Connection) -> int:
            failed = _transition_page(conn, PageState.RUNNING, PageState.FAILED, now,
                                      where=and_(expired, pages.c.attempts >= max_attempts),
                                      detail=LEASE_LOST,
                                      values=dict(error=LEASE_LOST, lease_expires_at=None))
            for r in failed:
                _fail_job(conn, r.job_id, f"page {r.page_no}: {LEASE_LOST}", now)
            requeued = _transition_page(conn, PageState.RUNNING, PageState.QUEUED, now, where=expired,
                                        detail=LEASE_LOST,
                                        values=dict(error=LEASE_LOST, lease_expires_at=None,
                                                    run_after=None))
            return len(failed) + len(requeued)

        return self._write(tx)

    def pages_of_worker(self, worker_id: str) -> list[tuple[int, int]]:
        """(job_id, page_no) of the pages this worker holds (running)."""
        query = (select(pages.c.job_id, pages.c.page_no)
                 .where(pages.c.state == PageState.RUNNING, pages.c.lease_owner == worker_id)
                 .order_by(pages.c.job_id, pages.c.page_no))
        return self._read(lambda c: [(r.job_id, r.page_no) for r in c.execute(query)])

    # -- workers and heartbeats -----------------------------------------------------------------
    def register_worker(self, worker_id: str, *, host: str, pid: int, backend: str,
                        device_name: str, state: str = "starting", now: datetime | None = None) -> None:
        """Insert or reset the workers row (a restarted worker may reuse its id)."""
        stamp = to_text(utc_now(now))
        self._write(lambda conn: self._upsert(conn, workers, "id", dict(
            id=worker_id, host=host, pid=pid, backend=backend, device_name=device_name, state=state,
            started_at=stamp, last_heartbeat_at=stamp, current_page=None, pages_done=0, error=None)))

    def set_worker_state(self, worker_id: str, state: str, now: datetime | None = None, *,
                         error: str | None = None) -> None:
        """Worker states are free text: starting, loading, idle, busy, stopping, stopped, dead,
        load_failed. `error` (optional) records why, e.g. the load failure."""
        values: dict[str, Any] = {"state": state}
        if error is not None:
            values["error"] = error
        if state in ("stopped", "dead"):
            values["current_page"] = None
        self._write(lambda c: c.execute(update(workers).where(workers.c.id == worker_id).values(**values)))

    def record_heartbeat(self, worker_id: str, *, backend: str, active_memory_bytes: int,
                         peak_memory_bytes: int, cache_memory_bytes: int, memory_limit_bytes: int,
                         pages_done: int, tokens_per_s: float, current_page: str | None,
                         state: str | None = None, lease_s: float = 60.0,
                         now: datetime | None = None) -> None:
        """One transaction: insert a heartbeats row, update the workers row (last_heartbeat_at,
        current_page, pages_done, state if given), renew this worker's leases, and delete
        heartbeats older than 24 h."""
        now = utc_now(now)
        stamp = to_text(now)

        def tx(conn: Connection) -> None:
            conn.execute(insert(heartbeats).values(
                worker_id=worker_id, at=stamp, backend=backend,
                active_memory_bytes=active_memory_bytes, peak_memory_bytes=peak_memory_bytes,
                cache_memory_bytes=cache_memory_bytes, memory_limit_bytes=memory_limit_bytes,
                pages_done=pages_done, tokens_per_s=tokens_per_s))
            values: dict[str, Any] = dict(last_heartbeat_at=stamp, current_page=current_page,
                                          pages_done=pages_done)
            if state is not None:
                values["state"] = state
            # pages before workers, the order complete_page locks them in (PostgreSQL deadlocks)
            self._renew(conn, worker_id, lease_s, now)
            conn.execute(update(workers).where(workers.c.id == worker_id).values(**values))
            conn.execute(delete(heartbeats).where(heartbeats.c.at < to_text(now - HEARTBEAT_RETENTION)))

        self._write(tx)

    def mark_workers_dead(self, host: str, alive_ids: list[str], now: datetime | None = None) -> int:
        """Workers of this host not in alive_ids and not stopped/dead -> dead."""
        stmt = (update(workers)
                .where(workers.c.host == host, workers.c.id.not_in(list(alive_ids)),
                       workers.c.state.not_in(["stopped", "dead"]))
                .values(state="dead", current_page=None))
        return self._write(lambda c: c.execute(stmt).rowcount)

    def add_event(self, job_id: int | None, kind: str, detail: str = "",
                  now: datetime | None = None, *, page_no: int | None = None) -> None:
        """Append an events row that is not a state change (e.g. ingest notes, outbox written)."""
        now = utc_now(now)
        self._write(lambda c: _add_event(c, job_id, page_no, now, kind, detail))

    # -- small key/value store (pool sizing memory, model load status) ----------------------------
    def get_meta(self, key: str) -> str | None:
        return self._read(lambda c: c.execute(select(meta.c.value).where(meta.c.key == key))
                          .scalar_one_or_none())

    def set_meta(self, key: str, value: str | None) -> None:
        """Set a value; None deletes the key."""
        if value is None:
            self._write(lambda c: c.execute(delete(meta).where(meta.c.key == key)))
        else:
            self._write(lambda c: self._upsert(c, meta, "key", dict(key=key, value=value)))

    def set_model_status(self, status: ModelStatus) -> None:
        self.set_meta("model_status", status.dumps())

    def model_status(self) -> ModelStatus | None:
        text_ = self.get_meta("model_status")
        return None if text_ is None else ModelStatus.loads(text_)

    def set_daemon_info(self, info: DaemonInfo) -> None:
        self.set_meta("device", json.dumps({"backend": info.backend, "name": info.name,
                                            "memory_bytes": info.memory_bytes}))
        self.set_meta("pool_plan", json.dumps({"count": info.workers, "batch": info.batch,
                                               "reason": info.reason}))

    def daemon_info(self) -> DaemonInfo | None:
        try:
            device = json.loads(self.get_meta("device") or "null")
            plan = json.loads(self.get_meta("pool_plan") or "null") or {}
            if device is None:
                return None
            return DaemonInfo(backend=device["backend"], name=device["name"],
                              memory_bytes=int(device["memory_bytes"]), workers=int(plan.get("count", 0)),
                              batch=int(plan.get("batch", 1)), reason=plan.get("reason", ""))
        except (ValueError, KeyError, TypeError):
            return None

    # -- queries for the CLI --------------------------------------------------------------------
    def counts(self) -> dict[str, dict[str, int]]:
        """{"jobs": {state: n for every JobState}, "pages": {state: n for every PageState}}."""
        return self._read(self._counts)

    @staticmethod
    def _counts(conn: Connection) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {"jobs": {s.value: 0 for s in JobState},
                                          "pages": {s.value: 0 for s in PageState}}
        for state, n in conn.execute(select(jobs.c.state, func.count()).group_by(jobs.c.state)):
            out["jobs"][state] = n
        # Done pages are most of a big ledger and counting them walks a million index entries
        # (~70 ms); jobs.pages_done counts them too, in the same transaction as every page's
        # running -> done, and done is final, so its sum is exact and costs one pass over jobs.
        unfinished = [PageState.QUEUED, PageState.RUNNING, PageState.FAILED]
        for state, n in conn.execute(select(pages.c.state, func.count())
                                     .where(pages.c.state.in_(unfinished)).group_by(pages.c.state)):
            out["pages"][state] = n
        out["pages"][PageState.DONE.value] = conn.execute(
            select(func.coalesce(func.sum(jobs.c.pages_done), 0))).scalar_one()
        return out

    def workers_status(self, now: datetime | None = None) -> list[dict[str, Any]]:
        """Live-ish workers (not stopped/dead, or heartbeat within 10 min), each with keys id, host,
        pid, backend, device_name, state, started_at, heartbeat_age_s, current_page, pages_done,
        and from its latest heartbeat: active_memory_bytes, peak_memory_bytes, cache_memory_bytes,
        memory_limit_bytes, tokens_per_s."""
        now = utc_now(now)
        return self._read(lambda conn: _workers_status(conn, now))

    def throughput(self, now: datetime | None = None) -> dict[str, float | None]:
        """{"pages_per_min_5": ..., "pages_per_min_60": ..., "eta_s": queued+running pages /
        rate (rate: 5-min figure, else 60-min; None when no rate; 0 when nothing is left)}."""
        now = utc_now(now)
        return self._read(lambda conn: _throughput(conn, now))

    def status(self, now: datetime | None = None) -> dict[str, Any]:
        """{"counts": counts(), "workers": workers_status(), "throughput": throughput()} read in
        one transaction, so the three agree with each other."""
        now = utc_now(now)
        return self._read(lambda conn: {"counts": self._counts(conn),
                                        "workers": _workers_status(conn, now),
                                        "throughput": _throughput(conn, now)})

    def list_jobs(self, state: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        """Newest first."""
        query = select(jobs).order_by(jobs.c.id.desc()).limit(limit)
        if state is not None:
            query = query.where(jobs.c.state == state)
        return self._read(lambda c: [dict(r._mapping) for r in c.execute(query)])

    def show_job(self, job_id: int) -> dict[str, Any] | None:
        """The jobs row plus "pages": [pages rows without text], "events": [events rows]."""
        page_cols = [c for c in pages.c if c.name != "text"]

        def tx(conn: Connection) -> dict[str, Any] | None:
            job = _row(conn.execute(select(jobs).where(jobs.c.id == job_id)).first())
            if job is None:
                return None
            job["pages"] = [dict(r._mapping) for r in conn.execute(
                select(*page_cols).where(pages.c.job_id == job_id).order_by(pages.c.page_no))]
            job["events"] = [dict(r._mapping) for r in conn.execute(
                select(events).where(events.c.job_id == job_id).order_by(events.c.id))]
            return job

        return self._read(tx)

    def integrity_check(self) -> str:
        """'ok' or SQLite's complaint."""
        if not self._sqlite:
            return "ok"
        rows = self._read(lambda c: [r[0] for r in c.execute(text("PRAGMA integrity_check"))])
        return "ok" if rows == ["ok"] else "\n".join(rows)
