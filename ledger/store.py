"""The Ledger: the one API the daemon and the CLI share over the job database.

CONTRACT (other modules are written against exactly these names and signatures; keep them):
- Every method opens and commits its own short transaction; no transaction is held across calls.
- Every write transaction begins with BEGIN IMMEDIATE on SQLite (retry with jitter on SQLITE_BUSY).
- Every state change goes through `_transition_job` / `_transition_page` (conditional UPDATE ...
  WHERE state = :from) and appends an `events` row in the same transaction.
- `jobs.spool_path` always holds where the original lies NOW: the spool while queued/running, the
  archive path once done (None if deleted), the failed/ path once failed. Whoever moves the file
  calls `set_job_paths` right after the move; the supervisor reconciles at start.
- `now` parameters are timezone-aware UTC datetimes (default: datetime.now(UTC)); stored as ISO-8601.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .states import JobState, PageState


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
class PageOutcome:
    state: PageState             # queued (will retry) or failed
    run_after: datetime | None   # when a queued page may be claimed again
    job_failed: bool             # the page's failure failed its job


class Ledger:
    def __init__(self, url: str) -> None:
        """Open (creating and migrating as needed) the ledger at a SQLAlchemy URL
        ("sqlite:////abs/path/ledger.db" or "postgresql+psycopg://...")."""
        raise NotImplementedError

    def close(self) -> None: ...

    # -- jobs -----------------------------------------------------------------------------------
    def add_job(self, *, inbox: str, source_path: str, spool_path: str, sha256: str, size_bytes: int,
                pages_total: int, priority: int = 0, on_duplicate: str = "skip",
                now: datetime | None = None) -> AddResult:
        """Insert a job and its `pages_total` page rows in one transaction.
        If on_duplicate == "skip" and a queued/running/done job has the same sha256, insert a
        `duplicate` job instead (no pages, error = "duplicate of job N") and return duplicate_of=N.
        Idempotent on spool_path: if a job with this spool_path exists, return it unchanged."""
        raise NotImplementedError

    def add_failed_job(self, *, inbox: str, source_path: str, spool_path: str, sha256: str,
                       size_bytes: int, error: str, now: datetime | None = None) -> int:
        """Record a file that failed at ingest (unsupported, corrupt, empty...) as a `failed` job
        with no pages; spool_path is where the original now lies (the failed/ folder).
        Idempotent on spool_path like add_job."""
        raise NotImplementedError

    def job(self, job_id: int) -> dict[str, Any] | None:
        """One jobs row as a dict (all columns), or None."""
        raise NotImplementedError

    def job_by_spool_path(self, spool_path: str) -> dict[str, Any] | None:
        raise NotImplementedError

    def jobs_in_states(self, states: list[JobState]) -> list[dict[str, Any]]:
        """All jobs rows in these states (for reconciling spool and ledger at start)."""
        raise NotImplementedError

    def set_job_paths(self, job_id: int, *, spool_path: str | None = None,
                      output_path: str | None = None) -> None:
        """Record where a job's original / output lives (no state change)."""
        raise NotImplementedError

    def finish_job(self, job_id: int, output_path: str, now: datetime | None = None) -> bool:
        """running -> done with output_path and finished_at; False if it was not running."""
        raise NotImplementedError

    def fail_job(self, job_id: int, error: str, now: datetime | None = None) -> bool:
        """queued/running -> failed with error (its queued/running pages -> failed too)."""
        raise NotImplementedError

    def completed_jobs_not_done(self) -> list[int]:
        """Jobs in running/queued whose pages are all done (a finisher died before the outbox
        write or before finish_job): the supervisor finalises these at start."""
        raise NotImplementedError

    def page_texts(self, job_id: int) -> list[str]:
        """Texts of a job's pages in page order (all pages must be done)."""
        raise NotImplementedError

    def retry_jobs(self, job_ids: list[int] | None = None, now: datetime | None = None) -> list[int]:
        """failed -> queued for these jobs (None: every failed job); only their failed pages go back
        to queued with attempts reset to 0 and error cleared; jobs.attempts += 1. Jobs that
        failed at ingest (no pages) are returned in the list too, left failed, with an event
        `retry_ingest` so the caller can move the original back into its inbox. Returns the ids
        that were requeued or need re-ingest."""
        raise NotImplementedError

    def reopen_job(self, job_id: int, *, spool_path: str, sha256: str, size_bytes: int,
                   pages_total: int, now: datetime | None = None) -> bool:
        """A job that failed at ingest (no pages) was fixed and re-checked: failed -> queued with
        `pages_total` new page rows, in one transaction. False if it was not failed."""
        raise NotImplementedError

    # -- pages ----------------------------------------------------------------------------------
    def claim_pages(self, worker_id: str, n: int = 1, lease_s: float = 60.0,
                    now: datetime | None = None) -> list[ClaimedPage]:
        """Atomically claim up to n queued pages whose run_after has passed (oldest job first,
        priority desc, then page_no): page -> running, lease_owner = worker_id,
        lease_expires_at = now + lease_s, attempts += 1; their jobs queued -> running;
        workers.current_page set. SQLite: BEGIN IMMEDIATE; UPDATE ... WHERE rowid IN (SELECT ...
        LIMIT n) RETURNING. PostgreSQL: SELECT ... FOR UPDATE SKIP LOCKED."""
        raise NotImplementedError

    def renew_leases(self, worker_id: str, lease_s: float = 60.0, now: datetime | None = None) -> int:
        raise NotImplementedError

    def complete_page(self, job_id: int, page_no: int, worker_id: str, *, text: str,
                      prompt_tokens: int = 0, generation_tokens: int = 0, seconds: float = 0.0,
                      finish_reason: str = "stop", now: datetime | None = None) -> bool:
        """running -> done (only if this worker still holds the lease); pages_done += 1;
        workers.pages_done += 1. Returns True when this completion made every page of the job
        done (the caller then assembles the outbox). False if the lease was lost or the job is
        not yet complete -- use `job_complete` to tell apart if needed."""
        raise NotImplementedError

    def job_complete(self, job_id: int) -> bool:
        """Every page of the job is done."""
        raise NotImplementedError

    def fail_page(self, job_id: int, page_no: int, worker_id: str | None, error: str, *,
                  retryable: bool = True, max_attempts: int = 3,
                  now: datetime | None = None) -> PageOutcome:
        """A page's attempt failed. worker_id None: the supervisor fails it on a dead worker's
        behalf (page timeout). Retryable and attempts < max_attempts: back to queued with
        run_after = now + min(10 s * 2**attempts, 600 s) * jitter(0.8..1.2). Otherwise the page
        -> failed and its job -> failed with error "page N: <error>"."""
        raise NotImplementedError

    def release_pages(self, worker_id: str, now: datetime | None = None) -> int:
        """Warm stop: running pages of this worker -> queued, attempts -= 1 (not its fault)."""
        raise NotImplementedError

    def rescue_expired(self, max_attempts: int = 3, now: datetime | None = None) -> int:
        """Pages whose lease expired -> queued (the attempt stays counted); a page already at
        max_attempts fails with "lease expired (worker lost)" instead. Returns pages touched."""
        raise NotImplementedError

    def pages_of_worker(self, worker_id: str) -> list[tuple[int, int]]:
        """(job_id, page_no) of the pages this worker holds (running)."""
        raise NotImplementedError

    # -- workers and heartbeats -----------------------------------------------------------------
    def register_worker(self, worker_id: str, *, host: str, pid: int, backend: str,
                        device_name: str, state: str = "starting", now: datetime | None = None) -> None:
        raise NotImplementedError

    def set_worker_state(self, worker_id: str, state: str, now: datetime | None = None) -> None:
        """Worker states are free text: starting, loading, idle, busy, stopping, stopped, dead,
        load_failed."""
        raise NotImplementedError

    def record_heartbeat(self, worker_id: str, *, backend: str, active_memory_bytes: int,
                         peak_memory_bytes: int, cache_memory_bytes: int, memory_limit_bytes: int,
                         pages_done: int, tokens_per_s: float, current_page: str | None,
                         state: str | None = None, lease_s: float = 60.0,
                         now: datetime | None = None) -> None:
        """One transaction: insert a heartbeats row, update the workers row (last_heartbeat_at,
        current_page, pages_done, state if given), renew this worker's leases, and delete
        heartbeats older than 24 h."""
        raise NotImplementedError

    def mark_workers_dead(self, host: str, alive_ids: list[str], now: datetime | None = None) -> int:
        """Workers of this host not in alive_ids and not stopped/dead -> dead."""
        raise NotImplementedError

    def add_event(self, job_id: int | None, kind: str, detail: str = "",
                  now: datetime | None = None) -> None:
        """Append an events row that is not a state change (e.g. ingest notes, outbox written)."""
        raise NotImplementedError

    # -- small key/value store (pool sizing memory, model load status) ----------------------------
    def get_meta(self, key: str) -> str | None:
        raise NotImplementedError

    def set_meta(self, key: str, value: str | None) -> None:
        raise NotImplementedError

    # -- queries for the CLI --------------------------------------------------------------------
    def counts(self) -> dict[str, dict[str, int]]:
        """{"jobs": {state: n for every JobState}, "pages": {state: n for every PageState}}."""
        raise NotImplementedError

    def workers_status(self, now: datetime | None = None) -> list[dict[str, Any]]:
        """Live-ish workers (not stopped/dead, or heartbeat within 10 min), each with keys id, host,
        pid, backend, device_name, state, started_at, heartbeat_age_s, current_page, pages_done,
        and from its latest heartbeat: active_memory_bytes, peak_memory_bytes, cache_memory_bytes,
        memory_limit_bytes, tokens_per_s."""
        raise NotImplementedError

    def throughput(self, now: datetime | None = None) -> dict[str, float | None]:
        """{"pages_per_min_5": ..., "pages_per_min_60": ..., "eta_s": queued+running pages /
        rate (rate: 5-min figure, else 60-min; None when no rate)}."""
        raise NotImplementedError

    def list_jobs(self, state: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        """Newest first."""
        raise NotImplementedError

    def show_job(self, job_id: int) -> dict[str, Any] | None:
        """The jobs row plus "pages": [pages rows without text], "events": [events rows]."""
        raise NotImplementedError

    def integrity_check(self) -> str:
        """'ok' or SQLite's complaint."""
        raise NotImplementedError
