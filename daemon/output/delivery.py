"""The one finisher: a host's own documents, whoever decoded their pages, on a thread of the
supervisor's. A worker that stores a document's last page (or fails it) says so (protocol's
DOCUMENT_ENDED) and `wake` has it written at once: every format of its inbox (writers.py), the
original archived, the job done; or the original moved to failed/. Every DELIVER_EVERY_S it also asks:

- which of this host's jobs have every page done but no outbox files: the daemon died between a
  last page and its outputs, the outbox was full or read-only (tried again with backoff), or, on
  a PostgreSQL ledger shared by several hosts, a worker of another host stored the last page (only
  the host that owns a job's inbox writes its outbox and moves its original);
- which of this host's failed jobs still have their original in the spool: a worker (here or
  elsewhere) failed them; the original goes to failed/ with its reason.

It also keeps this host's `hosts` row fresh (ledger/hosts.py) and the cache of documents fetched
from the ledger small. Finishing is idempotent and runs under the finishers' lock (outbox.py).
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from pathlib import Path

import structlog

from ocrd.ledger import JobState, Ledger, LedgerUnreachable

from ..config import Config
from ..files import PRIVATE, atomic_write_text
from ..logs import Outage
from .outbox import OutputDelayed, fail_document, finish_document

log = structlog.get_logger("ocrd.delivery")

DELIVER_EVERY_S = 1.0              # shared ledger: other hosts' workers finish this host's pages
LOCAL_EVERY_S = 5.0                # SQLite: only a dead finisher or a full outbox leaves work here
HOST_BEAT_S = 5.0                  # hosts.seen_at; a host unseen for 60 s is dead (hosts.py)
SWEEP_FETCHED_S = 60.0
OUTPUT_RETRY_S, OUTPUT_RETRY_MAX_S = 5.0, 300.0   # a full outbox is tried again after 5 s, doubling


def fetched_dir(config: Config) -> Path:
    """Where a worker keeps the documents of other hosts it fetched from the ledger."""
    return config.state_dir / "fetched"


def instance_id(config: Config) -> str:
    """This machine's daemon, told apart from another host's that took the same name: a random
    id kept in the state dir (made once)."""
    path = config.state_dir / "host-id"
    if not path.exists():
        atomic_write_text(path, uuid.uuid4().hex + "\n", mode=PRIVATE)
    return path.read_text().strip()


class Delivery:
    def __init__(self, config: Config, ledger: Ledger, *, workers: int, instance: str,
                 backend: str = "", device_name: str = "") -> None:
        self.config = config
        self.ledger = ledger
        self._host = dict(pid=os.getpid(), started_at=ledger.clock(), workers=workers,
                          backend=backend, device_name=device_name, instance=instance)
        self._every_s = DELIVER_EVERY_S if ledger.shares_files else LOCAL_EVERY_S
        self._waits: dict[int, tuple[int, float]] = {}   # job -> (tries, next try) full outbox
        self._next = self._next_beat = self._next_sweep = 0.0
        self._ended: set[int] = set()      # jobs workers said ended, not yet delivered
        self._lock = threading.Lock()
        self._wake, self._stop = threading.Event(), threading.Event()
        self._thread: threading.Thread | None = None
        self.outage = Outage(log)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="ocrd-delivery", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 60.0) -> None:
        """Stop after the document in hand (its files are written whole or not at all)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        try:
            self.tick(force=True)          # what the workers ended while they stopped
        except Exception as exc:  # the next start delivers them (their pages are in the ledger)
            log.warning("delivery_deferred", error=str(exc))

    def wake(self, job_id: int) -> None:
        """A worker stored this job's last page, or failed it: deliver it now."""
        with self._lock:
            self._ended.add(job_id)
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
                self.outage.up()
            except LedgerUnreachable as exc:   # the documents wait in the ledger
                self.outage.down(exc)
            except Exception:  # one bad round must never stop delivery
                log.exception("delivery_failed")
            self._wake.wait(min(self._every_s, 0.5))
            self._wake.clear()

    def tick(self, now: float | None = None, *, force: bool = False) -> None:
        now = time.monotonic() if now is None else now
        with self._lock:
            ended, self._ended = self._ended, set()
        for job_id in sorted(ended):
            self._deliver(job_id, now)
        if now < self._next and not force:
            return
        self._next = now + self._every_s
        if now >= self._next_beat:
            self._next_beat = now + HOST_BEAT_S
            self.ledger.host_seen(inboxes=len(self.config.inboxes), **self._host)
        for job_id in self.ledger.completed_jobs_not_done():
            self._finish(job_id, now)
        for job_id in self.ledger.failed_in_spool(str(self.config.spool_dir)):
            # the job's own error goes into failed/<name>.error.txt; this only stands in for none
            fail_document(self.config, self.ledger, job_id, "failed while the daemon stopped")
        if self.ledger.shares_files:
            if now >= self._next_sweep:
                self._next_sweep = now + SWEEP_FETCHED_S
                self._sweep_fetched()

    def reload(self, config: Config, workers: int) -> None:
        self.config = config
        self._host["workers"] = workers

    def stopped(self) -> None:
        self.ledger.host_stopped()

    def _deliver(self, job_id: int, now: float) -> None:
        """A job a worker said ended: its outputs, or its original to failed/."""
        job = self.ledger.job(job_id)
        if job is not None and job.state == JobState.FAILED:
            fail_document(self.config, self.ledger, job_id, job.error or "failed")
        else:
            self._finish(job_id, now)

    def _finish(self, job_id: int, now: float) -> None:
        tries, next_at = self._waits.get(job_id, (0, 0.0))
        if now < next_at:
            return
        try:
            finish_document(self.config, self.ledger, job_id)
            self._waits.pop(job_id, None)
        except OutputDelayed as exc:
            delay = min(OUTPUT_RETRY_S * 2 ** tries, OUTPUT_RETRY_MAX_S)
            self._waits[job_id] = (tries + 1, now + delay)
            log.error("output_waits", job_id=job_id, error=str(exc), retry_in_s=delay)
        except Exception:  # one document must never stop the supervisor
            log.exception("finish_failed", job_id=job_id)

    def _sweep_fetched(self) -> None:
        """Fetched documents of jobs no longer queued or running go (a worker fetches again)."""
        folder = fetched_dir(self.config)
        names = [p for p in folder.iterdir() if p.name.split("-", 1)[0].isdigit()] if folder.is_dir() else []
        for path in names:
            job = self.ledger.job(int(path.name.split("-", 1)[0]))
            if job is None or job.state not in (JobState.QUEUED, JobState.RUNNING):
                path.unlink(missing_ok=True)
