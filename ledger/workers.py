"""The Ledger's bookkeeping beside the queue: worker rows, heartbeats, audit events and the meta
key/value store (model status, the daemon's device and pool plan, measured footprints).

A mixin of `Ledger` (store.py), which provides `_read`/`_write` (one short transaction each) and
`_renew` (a heartbeat renews the worker's leases in the same transaction).
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any, Callable, Collection

from sqlalchemy import Connection, delete, insert, select, update

from ._engine import upsert
from .clock import to_text
from .records import DaemonInfo
from .schema import heartbeats, meta, workers
from .states import ENDED_WORKER_STATES, ModelStatus, WorkerState
from .transitions import append_event

HEARTBEAT_RETENTION = timedelta(hours=24)
PAUSED_KEY = "paused"        # meta: set (to when) while `ocrd pause` holds claiming


class WorkerBook:
    _read: Callable[[Callable[[Connection], Any]], Any]
    clock: Callable[..., datetime]           # store.py: the ledger's now (clock.py)
    _sqlite: bool
    host: str
    _write: Callable[[Callable[[Connection], Any]], Any]
    _renew: Callable[..., int]

    def register_worker(self, worker_id: str, *, host: str, pid: int, backend: str,
                        device_name: str, state: WorkerState = WorkerState.STARTING,
                        batch: int = 1, now: datetime | None = None) -> None:
        """Insert or reset the workers row (a restarted worker may reuse its id); `batch` is its
        in-flight limit (heartbeats update it as the worker tunes it)."""
        stamp = to_text(self.clock(now))
        state = WorkerState(state)
        self._write(lambda conn: upsert(conn, workers, "id", dict(
            id=worker_id, host=host, pid=pid, backend=backend, device_name=device_name, state=state,
            started_at=stamp, last_heartbeat_at=stamp, current_page=None, pages_done=0, error=None,
            batch=batch, pages_in_flight=0)))

    def set_worker_state(self, worker_id: str, state: WorkerState, now: datetime | None = None, *,
                         error: str | None = None) -> None:
        """The one writer of a worker's state (heartbeats may repeat it). `error` (optional)
        records why, e.g. the load failure."""
        values: dict[str, Any] = {"state": WorkerState(state)}
        if error is not None:
            values["error"] = error
        if state in ENDED_WORKER_STATES:
            values.update(current_page=None, pages_in_flight=0)
        self._write(lambda c: c.execute(update(workers).where(workers.c.id == worker_id).values(**values)))

    def forget_worker(self, worker_id: str) -> None:
        """Drop a worker that never worked (its model did not load): the model status says why,
        and a row per retry would only pile up dead workers in `ocrd status`."""
        def tx(conn: Connection) -> None:
            conn.execute(delete(heartbeats).where(heartbeats.c.worker_id == worker_id))
            conn.execute(delete(workers).where(workers.c.id == worker_id))

        self._write(tx)

    def record_heartbeat(self, worker_id: str, *, backend: str, active_memory_bytes: int,
                         peak_memory_bytes: int, cache_memory_bytes: int, memory_limit_bytes: int,
                         pages_done: int, tokens_per_s: float, current_page: str | None,
                         state: WorkerState | None = None, lease_s: float = 60.0,
                         batch: int = 1, pages_in_flight: int = 0,
                         held: Collection[tuple[int, int]] | None = None,
                         now: datetime | None = None) -> None:
        """One transaction: insert a heartbeats row, update the workers row (last_heartbeat_at,
        current_page, pages_done, batch, pages_in_flight, state if given), renew this worker's
        leases (only of the pages in `held`, when given), and delete heartbeats older than HEARTBEAT_RETENTION.

        `tokens_per_s` is the worker's aggregate: generated tokens per second over all the pages
        in its batch. `batch` is its in-flight limit now; `pages_in_flight` the pages in its batch
        being decoded now (not the ones claimed ahead and waiting for a slot: the ledger counts
        those as running too, and `ocrd status` shows the difference)."""
        now = self.clock(now)
        stamp = to_text(now)

        def tx(conn: Connection) -> None:
            conn.execute(insert(heartbeats).values(
                worker_id=worker_id, at=stamp, backend=backend,
                active_memory_bytes=active_memory_bytes, peak_memory_bytes=peak_memory_bytes,
                cache_memory_bytes=cache_memory_bytes, memory_limit_bytes=memory_limit_bytes,
                pages_done=pages_done, tokens_per_s=tokens_per_s, batch=batch,
                pages_in_flight=pages_in_flight))
            values: dict[str, Any] = dict(last_heartbeat_at=stamp, current_page=current_page,
                                          pages_done=pages_done, batch=batch,
                                          pages_in_flight=pages_in_flight)
            if state is not None:
                values["state"] = WorkerState(state)
            # pages before workers, the order complete_page locks them in (PostgreSQL deadlocks)
            self._renew(conn, worker_id, lease_s, now, held)
            conn.execute(update(workers).where(workers.c.id == worker_id).values(**values))
            conn.execute(delete(heartbeats).where(heartbeats.c.at < to_text(now - HEARTBEAT_RETENTION)))

        self._write(tx)

    def mark_workers_dead(self, host: str, alive_ids: list[str], now: datetime | None = None) -> int:
        """Workers of this host not in alive_ids and not ended -> dead."""
        stmt = (update(workers)
                .where(workers.c.host == host, workers.c.id.not_in(list(alive_ids)),
                       workers.c.state.not_in(list(ENDED_WORKER_STATES)))
                .values(state=WorkerState.DEAD, current_page=None, pages_in_flight=0))
        return self._write(lambda c: c.execute(stmt).rowcount)

    def add_event(self, job_id: int | None, kind: str, detail: str = "",
                  now: datetime | None = None, *, page_no: int | None = None) -> None:
        """Append an events row that is not a state change (e.g. ingest notes, outbox written)."""
        now = self.clock(now)
        self._write(lambda c: append_event(c, job_id, page_no, now, kind, detail))

    # -- small key/value store (pool sizing memory, model load status) ----------------------------
    def _meta_key(self, key: str) -> str:
        """Meta keys are each host's own in a shared (PostgreSQL) ledger: `key@host`; `paused`
        holds the whole queue."""
        return key if self._sqlite or key == PAUSED_KEY else f"{key}@{self.host}"

    def get_meta(self, key: str) -> str | None:
        key = self._meta_key(key)
        return self._read(lambda c: c.execute(select(meta.c.value).where(meta.c.key == key))
                          .scalar_one_or_none())

    def set_meta(self, key: str, value: str | None) -> None:
        """Set a value; None deletes the key."""
        key = self._meta_key(key)
        if value is None:
            self._write(lambda c: c.execute(delete(meta).where(meta.c.key == key)))
        else:
            self._write(lambda c: upsert(c, meta, "key", dict(key=key, value=value)))

    def set_paused(self, paused: bool, now: datetime | None = None) -> bool:
        """`ocrd pause` / `ocrd resume`: workers claim no new page while paused (ingest goes on);
        kept in meta, so it survives restarts. Returns whether this changed anything."""
        stamp = to_text(self.clock(now))

        def tx(conn: Connection) -> bool:
            was = conn.execute(select(meta.c.value).where(meta.c.key == PAUSED_KEY)).scalar_one_or_none()
            if (was is not None) == paused:
                return False
            if paused:
                upsert(conn, meta, "key", dict(key=PAUSED_KEY, value=stamp))
            else:
                conn.execute(delete(meta).where(meta.c.key == PAUSED_KEY))
            append_event(conn, None, None, self.clock(now), "paused" if paused else "resumed", "")
            return True

        return self._write(tx)

    def paused_since(self) -> str | None:
        """When `ocrd pause` paused claiming (UTC text), or None when not paused."""
        return self.get_meta(PAUSED_KEY)

    def set_model_status(self, status: ModelStatus) -> None:
        self.set_meta("model_status", status.dumps())

    def model_status(self) -> ModelStatus | None:
        text_ = self.get_meta("model_status")
        return None if text_ is None else ModelStatus.loads(text_)

    def set_daemon_info(self, info: DaemonInfo) -> None:
        self.set_meta("device", json.dumps({"backend": info.backend, "name": info.name,
                                            "memory_bytes": info.memory_bytes}))
        self.set_meta("pool_plan", json.dumps({"count": info.workers, "batch": info.batch,
                                               "reason": info.reason,
                                               "batch_reason": info.batch_reason,
                                               "engine": info.engine,
                                               "engine_reason": info.engine_reason}))

    def daemon_info(self) -> DaemonInfo | None:
        try:
            device = json.loads(self.get_meta("device") or "null")
            plan = json.loads(self.get_meta("pool_plan") or "null") or {}
            if device is None:
                return None
            return DaemonInfo(backend=device["backend"], name=device["name"],
                              memory_bytes=int(device["memory_bytes"]), workers=int(plan.get("count", 0)),
                              batch=int(plan.get("batch", 1)), reason=plan.get("reason", ""),
                              batch_reason=plan.get("batch_reason", ""), engine=plan.get("engine", ""),
                              engine_reason=plan.get("engine_reason", ""))
        except (ValueError, KeyError, TypeError):
            return None
