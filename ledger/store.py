"""The Ledger: the one API the daemon and the CLI share over the job database.

CONTRACT (other modules are written against exactly these names and signatures; keep them):
- Every method opens and commits its own short transaction; no transaction is held across calls.
- Every write transaction begins with BEGIN IMMEDIATE on SQLite (retry with jitter on SQLITE_BUSY).
  PostgreSQL runs writes at READ COMMITTED and reads at REPEATABLE READ (one snapshot); a state
  read before a conditional write takes the row lock the UPDATE would (FOR NO KEY UPDATE: a plain
  FOR UPDATE also blocks the foreign-key checks of event inserts, and two claims of one job then
  deadlock; SQLite's dialect renders nothing, BEGIN IMMEDIATE already made it the only writer).
  Deadlocks, serialization failures and lock timeouts are retried like SQLITE_BUSY.
- Every state change goes through transitions.py's `transition_job` / `transition_page`
  (conditional UPDATE ... WHERE state = :from) and appends an `events` row in the same transaction.
- Engine set-up and the transaction runner live in _engine.py, the read-only reports in reports.py,
  full-text search in search.py.
- `jobs.spool_path` always holds where the original lies NOW: the spool while queued/running, the
  archive path once done (None if deleted), the failed/ path once failed. Whoever moves the file
  calls `set_job_paths` right after the move; the supervisor reconciles at start.
- `now` parameters are aware UTC datetimes (default: `self.clock()`, clock.py); stored as ISO-8601.
"""

from __future__ import annotations

import random
import socket
from datetime import datetime, timedelta
from typing import Any, Callable, Collection

from sqlalchemy import Connection, and_, func, insert, or_, select, tuple_, update

from . import migrations as _migrations
from ._engine import BUSY_TIMEOUT_MS, LedgerCorrupt, Transactions, make_sql_engine
from .clock import LedgerClock, from_text, to_text, utc_now
from .hosts import HostBook
from .records import AddResult, ClaimedPage, DonePage, Job, PageOutcome
from .reports import Reports
from .schema import jobs, pages, workers
from .search import Search
from .states import JobState, OnDuplicate, PageState, TransitionError
from .transitions import (append_event, fail_job_with_pages, page_key, transition_job,
                          transition_page)
from .workers import WorkerBook


BACKOFF_BASE_S = 10.0                # backoff_s doubles it per attempt
BACKOFF_MAX_S = 600.0
LEASE_LOST = "lease expired (worker lost)"
_KEEP: Any = object()                # set_job_paths: leave this column as it is
_PG_INGEST_LOCK = 7262002            # pg_advisory_xact_lock key (migrations.py uses 7262001)


def backoff_s(attempts: int, base_s: float = BACKOFF_BASE_S, rng: random.Random | None = None) -> float:
    """Delay before a failed page may run again: `base_s` doubled per attempt so far, capped at
    BACKOFF_MAX_S, jittered so that pages failed together do not come back together."""
    jitter = (rng or random).uniform(0.8, 1.2)
    return min(base_s * 2 ** attempts, BACKOFF_MAX_S) * jitter


class Ledger(Transactions, WorkerBook, Reports, HostBook, Search):
    """The job database's one API: open it (creating and migrating as needed), call its methods
    (each one short transaction, from any thread or process), close it (or use it as a context)."""

    def __init__(self, url: str, *, busy_timeout_ms: int = BUSY_TIMEOUT_MS, pool_size: int = 2,
                 migrations: tuple[_migrations.Migration, ...] = _migrations.MIGRATIONS,
                 backoff_base_s: float = BACKOFF_BASE_S, host: str | None = None,
                 on_corrupt: Callable[[LedgerCorrupt], None] | None = None) -> None:
        """Open the ledger at a SQLAlchemy URL ("sqlite:////abs/path/ledger.db" or
        "postgresql+psycopg://..."). `backoff_base_s` scales fail_page's retry delay (tests
        shorten it); `host` names this host in a shared ledger (default: the host name);
        `on_corrupt` hears of a damaged file, from whichever thread met it, before it is raised."""
        self.url = url
        self.on_corrupt = on_corrupt
        self.backoff_base_s = backoff_base_s
        self._engine = make_sql_engine(url, busy_timeout_ms, pool_size)
        self._sqlite = self._engine.dialect.name == "sqlite"
        self.host = host or socket.gethostname()
        self.clock = LedgerClock(None if self._sqlite else self._engine)   # hosts.py, clock.py
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

    # -- transactions: _write and _read (_engine.Transactions: BEGIN IMMEDIATE for writes,
    # retried when busy; a damaged file refused from then on) -------------------------------------
    def _migrate(self, migrations: tuple[_migrations.Migration, ...]) -> None:
        for migration in self._read(lambda conn: _migrations.pending(conn, migrations)):
            self._write(lambda conn: _migrations.apply_one(conn, migration, utc_now(), to_text))

    # -- jobs -----------------------------------------------------------------------------------
    def add_job(self, *, inbox: str, source_path: str, spool_path: str, sha256: str, size_bytes: int,
                pages_total: int, priority: int = 0, on_duplicate: OnDuplicate = OnDuplicate.SKIP,
                mode: str | None = None, prompt: str | None = None, options: str | None = None,
                now: datetime | None = None) -> AddResult:
        """Insert a job and its `pages_total` page rows in one transaction (`options`: the
        JobOptions JSON its submitter chose, None: its inbox's).
        If on_duplicate is SKIP and a queued/running/done job has the same sha256, insert a
        `duplicate` job instead (no pages, error = "duplicate of job N") and return duplicate_of=N.
        Idempotent on spool_path: if a job with this spool_path exists, return it unchanged.
        The job is this host's; on PostgreSQL the file's bytes go into the ledger (hosts.py)."""
        if pages_total < 1:
            raise ValueError("a job needs at least one page; record empty files with add_failed_job")
        now = self.clock(now)
        stamp = to_text(now)
        common = dict(inbox=inbox, source_path=source_path, spool_path=spool_path, sha256=sha256,
                      size_bytes=size_bytes, priority=priority, created_at=stamp, updated_at=stamp,
                      host=self.host, mode=mode, prompt=prompt, options=options)

        def tx(conn: Connection) -> AddResult:
            self._lock_ingest(conn)
            existing = self._by_spool_path(conn, spool_path)
            if existing is not None:
                return AddResult(existing.id, existing.state, existing.duplicate_of)
            original = None
            if on_duplicate == OnDuplicate.SKIP and sha256:
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
                append_event(conn, job_id, None, now, "job_duplicate", error)
                return AddResult(job_id, JobState.DUPLICATE, original)
            job_id = conn.execute(insert(jobs).values(
                **common, state=JobState.QUEUED, pages_total=pages_total)).inserted_primary_key[0]
            self._insert_pages(conn, job_id, pages_total, priority)
            self._share(conn, job_id, spool_path)
            append_event(conn, job_id, None, now, "job_added", f"{pages_total} pages from {source_path}")
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
    def _by_spool_path(conn: Connection, spool_path: str) -> Job | None:
        row = conn.execute(select(jobs).where(jobs.c.spool_path == spool_path)
                           .order_by(jobs.c.id.desc()).limit(1)).first()
        return None if row is None else Job.from_row(row)

    def add_failed_job(self, *, inbox: str, source_path: str, spool_path: str, sha256: str,
                       size_bytes: int, error: str, now: datetime | None = None) -> int:
        """Record a file that failed at ingest (unsupported, corrupt, empty...) as a `failed` job
        with no pages; spool_path is where the original now lies (the failed/ folder).
        Idempotent on spool_path like add_job."""
        now = self.clock(now)
        stamp = to_text(now)

        def tx(conn: Connection) -> int:
            self._lock_ingest(conn)
            existing = self._by_spool_path(conn, spool_path)
            if existing is not None:
                return existing.id
            job_id = conn.execute(insert(jobs).values(
                inbox=inbox, source_path=source_path, spool_path=spool_path, sha256=sha256,
                size_bytes=size_bytes, state=JobState.FAILED, pages_total=0, created_at=stamp,
                updated_at=stamp, finished_at=stamp, error=error, host=self.host)).inserted_primary_key[0]
            append_event(conn, job_id, None, now, "job_failed", f"at ingest: {error}")
            return job_id

        return self._write(tx)

    def job(self, job_id: int) -> Job | None:
        """One jobs row, or None."""
        row = self._read(lambda c: c.execute(select(jobs).where(jobs.c.id == job_id)).first())
        return None if row is None else Job.from_row(row)

    def job_by_spool_path(self, spool_path: str) -> Job | None:
        """The newest job whose original lies at spool_path, or None."""
        return self._read(lambda c: self._by_spool_path(c, spool_path))

    def jobs_in_states(self, states: list[JobState]) -> list[Job]:
        """This host's jobs rows in these states, oldest first."""
        query = select(jobs).where(jobs.c.state.in_(list(states)), self._mine()).order_by(jobs.c.id)
        return self._read(lambda c: [Job.from_row(r) for r in c.execute(query)])

    def set_job_paths(self, job_id: int, *, spool_path: str | None = _KEEP,
                      output_path: str | None = _KEEP) -> None:
        """Record where a job's original / output lives (no state change). An omitted argument
        leaves its column alone; an explicit None clears it (the original was deleted)."""
        values = {k: v for k, v in (("spool_path", spool_path), ("output_path", output_path))
                  if v is not _KEEP}
        if not values:
            return
        stamp = to_text(self.clock())
        self._write(lambda c: c.execute(update(jobs).where(jobs.c.id == job_id)
                                        .values(**values, updated_at=stamp)))

    def finish_job(self, job_id: int, output_path: str, now: datetime | None = None) -> bool:
        """running -> done with output_path and finished_at; False if it was not running, or if
        some of its pages are not done. A queued job whose pages are all done (retried after a
        failure past its last page) goes queued -> running -> done."""
        now = self.clock(now)

        def tx(conn: Connection) -> bool:
            if not self._all_pages_done(conn, job_id):
                return False
            try:
                state = conn.execute(select(jobs.c.state).where(jobs.c.id == job_id)).scalar_one()
                if state == JobState.QUEUED:
                    # a retried job whose failure came after its last page (the outbox write):
                    # nothing is left to claim, so it never went running again
                    transition_job(conn, job_id, JobState.RUNNING, now, src={JobState.QUEUED},
                                    detail="every page was already done")
                transition_job(conn, job_id, JobState.DONE, now, src={JobState.RUNNING},
                                detail=output_path, output_path=output_path,
                                finished_at=to_text(now), error=None)
            except TransitionError:
                return False
            return True

        return self._write(tx)

    def fail_job(self, job_id: int, error: str, now: datetime | None = None) -> bool:
        """queued/running -> failed with error (its queued/running pages -> failed too)."""
        now = self.clock(now)
        return self._write(lambda conn: fail_job_with_pages(conn, job_id, error, now))

    def completed_jobs_not_done(self) -> list[int]:
        """Jobs in running/queued whose pages are all done (a finisher died before the outbox
        write or before finish_job): the supervisor finalises these at start."""
        unfinished = select(pages.c.id).where(pages.c.job_id == jobs.c.id,
                                              pages.c.state != PageState.DONE)
        query = (select(jobs.c.id)
                 .where(jobs.c.state.in_([JobState.QUEUED, JobState.RUNNING]),
                        jobs.c.pages_total > 0, ~unfinished.exists(), self._mine())
                 .order_by(jobs.c.id))
        return self._read(lambda c: list(c.execute(query).scalars()))

    def page_texts(self, job_id: int) -> list[str]:
        """Texts of a job's pages in page order (all pages must be done: ValueError if not)."""
        return [p.text for p in self.done_pages(job_id)]

    def done_pages(self, job_id: int) -> list[DonePage]:
        """A job's pages in page order, as its outputs are made of them (all must be done:
        ValueError if not)."""
        cols = [pages.c[name] for name in DonePage.__dataclass_fields__]
        query = select(pages.c.state, *cols).where(pages.c.job_id == job_id).order_by(pages.c.page_no)
        rows = self._read(lambda c: c.execute(query).all())
        if not rows or any(r.state != PageState.DONE for r in rows):
            raise ValueError(f"job {job_id} has pages that are not done")
        return [DonePage(**{k: v for k, v in r._mapping.items() if k != "state"} | {"text": r.text or ""})
                for r in rows]

    def retry_jobs(self, job_ids: list[int] | None = None, now: datetime | None = None) -> list[int]:
        """failed -> queued for these jobs (None: every failed job); only their failed pages go back
        to queued with attempts reset to 0 and error cleared; jobs.attempts += 1. Jobs that
        failed at ingest (no pages) are returned in the list too, left failed, with an event
        `retry_ingest` so the caller can move the original back into its inbox. Returns the ids
        that were requeued or need re-ingest."""
        now = self.clock(now)

        def tx(conn: Connection) -> list[int]:
            query = (select(jobs.c.id, jobs.c.spool_path).where(jobs.c.state == JobState.FAILED)
                     .order_by(jobs.c.id).with_for_update(key_share=True))
            if job_ids is not None:
                query = query.where(jobs.c.id.in_(list(job_ids)))
            picked = dict(conn.execute(query).all())
            for job_id, spool_path in picked.items():
                has_pages = conn.execute(select(pages.c.id).where(pages.c.job_id == job_id)
                                         .limit(1)).first() is not None
                if not has_pages:
                    append_event(conn, job_id, None, now, "retry_ingest",
                               "failed at ingest: the original goes back to its inbox")
                    continue
                transition_job(conn, job_id, JobState.QUEUED, now, src={JobState.FAILED},
                                detail="retry", error=None, finished_at=None,
                                attempts=jobs.c.attempts + 1)
                transition_page(conn, PageState.FAILED, PageState.QUEUED, now,
                                 where=pages.c.job_id == job_id, detail="retry",
                                 values=dict(attempts=0, error=None, run_after=None,
                                             lease_expires_at=None))
                self._share(conn, job_id, spool_path)
            return list(picked)

        return self._write(tx)

    def reopen_job(self, job_id: int, *, spool_path: str, sha256: str, size_bytes: int,
                   pages_total: int, now: datetime | None = None) -> bool:
        """A job that failed at ingest (no pages) was fixed and re-checked, or a duplicate is
        forced through: failed/duplicate -> queued with `pages_total` new page rows, in one
        transaction. False if it was neither (or has pages: use retry_jobs for those)."""
        if pages_total < 1:
            raise ValueError("a job needs at least one page")
        now = self.clock(now)

        def tx(conn: Connection) -> bool:
            row = conn.execute(select(jobs.c.state, jobs.c.priority).where(jobs.c.id == job_id)
                               .with_for_update(key_share=True)).first()
            has_pages = conn.execute(select(pages.c.id).where(pages.c.job_id == job_id)
                                     .limit(1)).first() is not None
            if row is None or row.state not in (JobState.FAILED, JobState.DUPLICATE) or has_pages:
                return False
            transition_job(conn, job_id, JobState.QUEUED, now, src={row.state},
                            detail="reopened after a new ingest", spool_path=spool_path,
                            sha256=sha256, size_bytes=size_bytes, pages_total=pages_total,
                            pages_done=0, error=None, finished_at=None, output_path=None,
                            attempts=jobs.c.attempts + 1)
            self._insert_pages(conn, job_id, pages_total, row.priority)
            self._share(conn, job_id, spool_path)
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
                    now: datetime | None = None,
                    adopt: Collection[tuple[int, int]] | None = None) -> list[ClaimedPage]:
        """Atomically claim up to n queued pages whose run_after has passed (oldest job first,
        priority desc, then page_no): page -> running, lease_owner = worker_id,
        lease_expires_at = now + lease_s, attempts += 1; their jobs queued -> running;
        workers.current_page set. SQLite: BEGIN IMMEDIATE; UPDATE ... WHERE rowid IN (SELECT ...
        LIMIT n) RETURNING. PostgreSQL: SELECT ... FOR UPDATE SKIP LOCKED.

        A claim whose answer was lost (the server went after its commit) left pages running under
        this worker that it never heard of. They come back first, charged once only: in the
        transaction's own retry (pages started at this call's stamp), and in the next call when
        the worker says so with `adopt`, the (job_id, page_no) pairs it does hold."""
        if n < 1:
            return []
        now = self.clock(now)
        stamp = to_text(now)
        tries = 0

        def pick(k: int):
            # Walks ix_pages_claim in this order, so the claim costs the same with a million pages.
            picked = (select(pages.c.id)
                      .where(pages.c.state == PageState.QUEUED,
                             or_(pages.c.run_after.is_(None), pages.c.run_after <= stamp))
                      .order_by(pages.c.priority.desc(), pages.c.job_id, pages.c.page_no)
                      .limit(k))
            if self._sqlite:   # BEGIN IMMEDIATE already made this the only writer
                return picked
            # Concurrent claimers skip each other's rows instead of queueing on them; a
            # MATERIALIZED CTE runs the locking pick once (an IN (subquery) may be re-run).
            return select(picked.with_for_update(key_share=True, skip_locked=True).cte("picked")
                          .prefix_with("MATERIALIZED").c.id)

        def tx(conn: Connection) -> list[ClaimedPage]:
            nonlocal tries
            tries += 1
            lost = []
            if adopt is not None or tries > 1:
                mine = (select(pages.c.id, pages.c.job_id, pages.c.page_no, pages.c.attempts)
                        .where(pages.c.state == PageState.RUNNING, pages.c.lease_owner == worker_id))
                if adopt is None:
                    mine = mine.where(pages.c.started_at == stamp)
                known = set(adopt or ())
                lost = [r for r in conn.execute(mine) if (r.job_id, r.page_no) not in known]
                if lost:
                    conn.execute(update(pages).where(pages.c.id.in_([r.id for r in lost])).values(
                        lease_expires_at=to_text(now + timedelta(seconds=lease_s))))
            claimed = lost + (transition_page(
                conn, PageState.QUEUED, PageState.RUNNING, now,
                where=pages.c.id.in_(pick(n - len(lost))), detail=f"worker {worker_id}",
                values=dict(lease_owner=worker_id, lease_expires_at=to_text(now + timedelta(seconds=lease_s)),
                            attempts=pages.c.attempts + 1, started_at=stamp, run_after=None))
                if n > len(lost) else [])
            if not claimed:
                return []
            job_ids = sorted({r.job_id for r in claimed})
            # locked in id order: a concurrent claim of another page of a job waits here and
            # then reads it running
            info = {r.id: r for r in conn.execute(
                select(jobs.c.id, jobs.c.state, jobs.c.pages_total, jobs.c.inbox, jobs.c.source_path,
                       jobs.c.spool_path, jobs.c.host, jobs.c.mode, jobs.c.prompt, jobs.c.options)
                .where(jobs.c.id.in_(job_ids))
                .order_by(jobs.c.id).with_for_update(key_share=True))}
            for job_id in job_ids:
                if info[job_id].state == JobState.QUEUED:
                    transition_job(conn, job_id, JobState.RUNNING, now, src={JobState.QUEUED},
                                    detail=f"first page claimed by worker {worker_id}")
            claimed = sorted(claimed, key=lambda r: (r.job_id, r.page_no))
            conn.execute(update(workers).where(workers.c.id == worker_id).values(
                current_page=",".join(f"{r.job_id}:{r.page_no}" for r in claimed)))
            return [ClaimedPage.of(r.job_id, r.page_no, r.attempts, info[r.job_id]) for r in claimed]

        return self._write(tx)

    def renew_leases(self, worker_id: str, lease_s: float = 60.0, now: datetime | None = None,
                     held: Collection[tuple[int, int]] | None = None) -> int:
        """Push out the lease of every page this worker holds (only those in `held`, (job_id,
        page_no) pairs, when given); returns how many."""
        now = self.clock(now)
        return self._write(lambda conn: self._renew(conn, worker_id, lease_s, now, held))

    @staticmethod
    def _renew(conn: Connection, worker_id: str, lease_s: float, now: datetime,
               held: Collection[tuple[int, int]] | None = None) -> int:
        """A worker renews only the pages it still has in hand: a page whose result it could not
        store (the server went away) must run out its lease and come back, not stay running."""
        where = [pages.c.state == PageState.RUNNING, pages.c.lease_owner == worker_id]
        if held is not None:
            if not held:
                return 0
            where.append(tuple_(pages.c.job_id, pages.c.page_no).in_(list(held)))
        return conn.execute(update(pages).where(*where)
                            .values(lease_expires_at=to_text(now + timedelta(seconds=lease_s)))).rowcount

    def complete_page(self, job_id: int, page_no: int, worker_id: str, *, text: str,
                      prompt_tokens: int = 0, generation_tokens: int = 0, seconds: float = 0.0,
                      finish_reason: str = "stop", blocks: str | None = None,
                      width: int | None = None, height: int | None = None, engine: str | None = None,
                      search_text: str | None = None, now: datetime | None = None) -> bool | None:
        """running -> done (only if this worker still holds the lease), with its text and its
        blocks (JSON) where the engine gave boxes, and `search_text`: its words as the search
        index holds them (the caller cleans the text: the ledger knows no markup; None: indexed
        later, see unindexed_pages); pages_done += 1; workers.pages_done += 1. Returns True when this completion made every page of the job
        done (the caller then assembles the outbox), False when other pages are still open, and
        None when it was refused: the lease was lost (the page is another worker's or done)."""
        now = self.clock(now)
        stamp = to_text(now)

        def tx(conn: Connection) -> bool:
            moved = transition_page(
                conn, PageState.RUNNING, PageState.DONE, now,
                where=and_(page_key(job_id, page_no), pages.c.lease_owner == worker_id),
                detail=f"worker {worker_id}",
                values=dict(text=text, prompt_tokens=prompt_tokens,
                            generation_tokens=generation_tokens, seconds=seconds,
                            finish_reason=finish_reason, finished_at=stamp,
                            lease_expires_at=None, error=None, blocks=blocks, width=width,
                            height=height, engine=engine, search_text=search_text))
            if not moved:
                return None
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
        run_after = now + backoff_s(attempts, self.backoff_base_s). Otherwise the page
        -> failed and its job -> failed with error "page N: <error>".
        A page no longer running under this worker (its lease was rescued, its job failed through
        another page) is left alone: the outcome then reports its current state, job_failed False.
        TransitionError only if there is no such page."""
        now = self.clock(now)

        def tx(conn: Connection) -> PageOutcome:
            where = page_key(job_id, page_no)
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
                run_after = now + timedelta(seconds=backoff_s(attempts, self.backoff_base_s))
                transition_page(conn, PageState.RUNNING, PageState.QUEUED, now, where=where,
                                 one=True, detail=error,
                                 values=dict(error=error, run_after=to_text(run_after),
                                             lease_expires_at=None))
                return PageOutcome(PageState.QUEUED, run_after, False)
            transition_page(conn, PageState.RUNNING, PageState.FAILED, now, where=where, one=True,
                             detail=error, values=dict(error=error, lease_expires_at=None))
            job_failed = fail_job_with_pages(conn, job_id, f"page {page_no}: {error}", now)
            return PageOutcome(PageState.FAILED, None, job_failed)

        return self._write(tx)

    def release_pages(self, worker_id: str, now: datetime | None = None) -> int:
        """Warm stop: running pages of this worker -> queued, attempts -= 1 (not its fault)."""
        now = self.clock(now)
        return self._write(lambda conn: len(transition_page(
            conn, PageState.RUNNING, PageState.QUEUED, now, where=pages.c.lease_owner == worker_id,
            detail=f"released by worker {worker_id}",
            values=dict(attempts=pages.c.attempts - 1, lease_expires_at=None, run_after=None))))

    def rescue_expired(self, max_attempts: int = 3, now: datetime | None = None,
                       settle_s: float = 0.0) -> int:
        """Pages whose lease expired -> queued (the attempt stays counted); a page already at
        max_attempts fails with "lease expired (worker lost)" instead. Returns pages touched.
        `settle_s` (PostgreSQL): nothing is rescued until the server has been up that long. A
        server that restarted cut every worker's connection; the leases that ran out meanwhile
        are theirs to renew at their next heartbeat, not lost pages to charge an attempt."""
        now = self.clock(now)
        expired = pages.c.lease_expires_at < to_text(now)

        def tx(conn: Connection) -> int:
            if settle_s and not self._sqlite and conn.execute(select(
                    func.extract("epoch", func.now() - func.pg_postmaster_start_time()))).scalar() < settle_s:
                return 0
            failed = transition_page(conn, PageState.RUNNING, PageState.FAILED, now,
                                      where=and_(expired, pages.c.attempts >= max_attempts),
                                      detail=LEASE_LOST,
                                      values=dict(error=LEASE_LOST, lease_expires_at=None))
            for r in failed:
                fail_job_with_pages(conn, r.job_id, f"page {r.page_no}: {LEASE_LOST}", now)
            requeued = transition_page(conn, PageState.RUNNING, PageState.QUEUED, now, where=expired,
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
