"""Several hosts on one PostgreSQL ledger: which host a job belongs to, the documents' bytes, and
each daemon's heartbeat. On SQLite there is one host, and all of this is a no-op or a formality.

- Every job records the host that ingested it (`jobs.host`): only that host has the inbox, the
  outbox, archive and failed folders, so only it delivers the job (writes the markdown and moves
  the original). A worker on another host stores its pages; the owner's supervisor delivers.
- On PostgreSQL the original's bytes travel through `blobs` (chunks of CHUNK_BYTES written in the
  transaction that queues the job, deleted when it is done or failed), so a worker on any host can
  render any page without a shared filesystem. Documents over SHARED_MAX_BYTES are refused.
- `hosts` holds one row per daemon: its pid, role (inboxes, planned workers), device and when it
  was last seen; a running host not seen for HOST_DEAD_AFTER is dead.

A mixin of `Ledger` (store.py), which provides `_read`/`_write`, `_sqlite`, `host` and `clock`.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Callable

from sqlalchemy import Connection, delete, func, insert, or_, select, true, update

from ._engine import upsert
from .clock import from_text, to_text
from .schema import blobs, hosts, jobs
from .states import JobState

CHUNK_BYTES = 8 << 20                  # one blobs row
SHARED_MAX_BYTES = 1 << 30             # a bigger document fails at ingest on a PostgreSQL ledger
HOST_DEAD_AFTER = timedelta(seconds=60)


class HostNameTaken(RuntimeError):
    """A live daemon of another machine already uses this host name in the shared ledger."""


class HostBook:
    _read: Callable[[Callable[[Connection], Any]], Any]
    _write: Callable[[Callable[[Connection], Any]], Any]
    _sqlite: bool
    host: str
    clock: Callable[..., datetime]

    @property
    def shares_files(self) -> bool:
        """True on PostgreSQL: documents travel through the ledger, not a spool path."""
        return not self._sqlite

    def delivers(self, job_host: str | None) -> bool:
        """Whether this host writes the outbox file of a job ingested by `job_host`."""
        return self._sqlite or job_host is None or job_host == self.host

    def _mine(self) -> Any:
        """The jobs this host delivers (SQLite: all of them, whatever the host was called)."""
        return true() if self._sqlite else or_(jobs.c.host == self.host, jobs.c.host.is_(None))

    # -- the documents' bytes (PostgreSQL) ------------------------------------------------------
    def _share(self, conn: Connection, job_id: int, path: str | None) -> None:
        """Put the original's bytes into `blobs` inside the caller's transaction (PostgreSQL)."""
        if self._sqlite or not path or not os.path.isfile(path):
            return   # (no file: nothing to share; a worker elsewhere says the bytes are missing)
        conn.execute(delete(blobs).where(blobs.c.job_id == job_id))
        with open(path, "rb") as f:
            for chunk_no, chunk in enumerate(iter(lambda: f.read(CHUNK_BYTES), b"")):
                conn.execute(insert(blobs).values(job_id=job_id, chunk_no=chunk_no, data=chunk))

    def fetch_document(self, job_id: int, dest: Path) -> bool:
        """Write the job's original from the ledger to `dest` (atomically); False when the ledger
        does not hold it (SQLite, or the job is no longer queued or running)."""
        if self._sqlite:
            return False
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}.part")

        def tx(conn: Connection) -> int:
            n = 0   # chunk by chunk: a 1 GB document never sits in memory whole
            with open(tmp, "wb") as f:
                while (data := conn.execute(select(blobs.c.data).where(
                        blobs.c.job_id == job_id, blobs.c.chunk_no == n)).scalar_one_or_none()) is not None:
                    f.write(data)
                    n += 1
            return n

        try:
            if not self._read(tx):
                return False
            os.replace(tmp, dest)
            return True
        finally:
            tmp.unlink(missing_ok=True)

    def failed_in_spool(self, spool_dir: str, settled_s: float = 10.0) -> list[int]:
        """This host's failed jobs whose original still lies in its spool, unchanged for
        `settled_s` (a retry moves a file back into the spool before it requeues the job): their
        pages failed on another host, whose worker could not move the file to failed/."""
        settled = to_text(self.clock() - timedelta(seconds=settled_s))
        query = (select(jobs.c.id).where(jobs.c.state == JobState.FAILED, self._mine(),
                                         jobs.c.spool_path.startswith(spool_dir.rstrip("/") + "/", autoescape=True),
                                         jobs.c.updated_at < settled).order_by(jobs.c.id))
        return self._read(lambda conn: list(conn.execute(query).scalars()))

    # -- hosts ----------------------------------------------------------------------------------
    def take_host_name(self, instance: str) -> None:
        """At start, on a shared ledger: refuse a host name that a live daemon of another machine
        (another `instance`: its state dir's id) uses. Two hosts both called `raspberrypi` would
        release each other's pages and deliver each other's documents into the wrong folders."""
        if self._sqlite:
            return
        row = self._read(lambda conn: conn.execute(select(hosts).where(hosts.c.name == self.host)).first())
        if row is None or row.instance in (None, instance):
            return
        state, age = _liveness(row, self.clock())
        if state == "running":
            raise HostNameTaken(f"another machine's daemon runs as host {self.host!r} in this ledger "
                                f"(pid {row.pid}, seen {age:.0f} s ago): give each host its own "
                                "[ledger] host")

    def host_seen(self, *, pid: int, started_at: datetime, inboxes: int, workers: int,
                  backend: str = "", device_name: str = "", instance: str = "") -> None:
        """This daemon is alive (the supervisor calls it every few seconds)."""
        values = dict(name=self.host, pid=pid, state="running", started_at=to_text(started_at),
                      seen_at=to_text(self.clock()), inboxes=inboxes, workers=workers,
                      backend=backend, device_name=device_name, instance=instance or None)
        self._write(lambda conn: upsert(conn, hosts, "name", values))

    def host_stopped(self) -> None:
        stamp = to_text(self.clock())
        self._write(lambda conn: conn.execute(
            update(hosts).where(hosts.c.name == self.host).values(state="stopped", seen_at=stamp)))

    def hosts_status(self, now: datetime | None = None) -> list[dict[str, Any]]:
        """Every daemon that used this ledger: name, pid, state (running, stopped, or dead when a
        running one went unseen for HOST_DEAD_AFTER), seen_age_s, inboxes, workers, backend,
        device_name, and `delivering`: its documents queued or running."""
        now = self.clock(now)
        open_jobs = (select(jobs.c.host, func.count()).where(
            jobs.c.state.in_([JobState.QUEUED, JobState.RUNNING])).group_by(jobs.c.host))

        def tx(conn: Connection) -> list[dict[str, Any]]:
            delivering = dict(conn.execute(open_jobs).all())
            out = []
            for h in conn.execute(select(hosts).order_by(hosts.c.name)):
                state, age = _liveness(h, now)
                out.append(dict(name=h.name, pid=h.pid, state=state, seen_age_s=round(age, 1),
                                started_at=h.started_at, inboxes=h.inboxes, workers=h.workers,
                                backend=h.backend, device_name=h.device_name,
                                delivering=delivering.get(h.name, 0)))
            return out

        return self._read(tx)


def _liveness(host: Any, now: datetime) -> tuple[str, float]:
    """A `hosts` row's state as others see it, and seconds since it was seen: a running host
    unseen for HOST_DEAD_AFTER is dead."""
    age = (now - from_text(host.seen_at)).total_seconds()
    dead = host.state == "running" and age > HOST_DEAD_AFTER.total_seconds()
    return ("dead" if dead else host.state), age
