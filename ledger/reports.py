"""Read-only reports for `ocrd status`, `ocrd jobs` and `ocrd show`: functions of a Connection,
run by the Ledger in one read transaction (see its thin methods of the same names)."""

from __future__ import annotations

import json

from datetime import datetime, timedelta
from typing import Any, Callable

from sqlalchemy import Connection, func, or_, select, text, true

from .clock import from_text, to_text
from .schema import events, heartbeats, jobs, pages, workers
from .states import ENDED_WORKER_STATES, JobState, PageState, WorkerState

RECENT_PAGES = 20                            # the rate is the pace of the last 20 pages...
RECENT_WINDOW = timedelta(minutes=10)        # ...finished in the last 10 minutes
LIVE_WORKER_WINDOW = timedelta(minutes=10)   # an ended worker stays listed this long
_MEMORY_KEYS = ("active_memory_bytes", "peak_memory_bytes", "cache_memory_bytes",
                "memory_limit_bytes", "tokens_per_s")


def counts(conn: Connection) -> dict[str, dict[str, int]]:
    """{"jobs": {state: n for every JobState}, "pages": {state: n for every PageState}}."""
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


def workers_status(conn: Connection, now: datetime) -> list[dict[str, Any]]:
    """Workers not ended, or ended within LIVE_WORKER_WINDOW of their last heartbeat, each with
    keys id, host, pid, backend, device_name, state, started_at, heartbeat_age_s, current_page,
    pages_done, error, batch (its in-flight limit), pages_in_flight (0 once ended), and from its
    latest heartbeat: active_memory_bytes, peak_memory_bytes, cache_memory_bytes,
    memory_limit_bytes, tokens_per_s (aggregate over the pages in flight)."""
    query = (select(workers)
             .where(or_(workers.c.state.not_in(list(ENDED_WORKER_STATES)),
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
                        error=w.error, batch=w.batch, pages_in_flight=w.pages_in_flight,
                        **{k: (latest._mapping[k] if latest else None) for k in _MEMORY_KEYS}))
    return out


def throughput(conn: Connection, now: datetime) -> dict[str, float | None]:
    """{"pages_per_min_5": ..., "pages_per_min_60": ..., "eta_s": queued+running pages / rate
    (rate: the 5-min figure, else the 60-min one; None when no rate; 0 when nothing is left)}."""
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
    rate = _recent_rate(conn, now)
    if rate is None:
        rate = per_min_5 or per_min_60 or None
    eta = 0.0 if left == 0 else (left / rate * 60 if rate else None)
    return {"pages_per_min": rate, "pages_per_min_5": per_min_5, "pages_per_min_60": per_min_60,
            "eta_s": eta}


def _recent_rate(conn: Connection, now: datetime) -> float | None:
    """Pages/min over the last RECENT_PAGES completions (within RECENT_WINDOW): the pace of the
    work now, not diluted by a minute's floor or by the idle time before a burst."""
    stamps = [from_text(t) for (t,) in conn.execute(
        select(pages.c.finished_at).where(pages.c.finished_at >= to_text(now - RECENT_WINDOW),
                                          pages.c.finished_at <= to_text(now))
        .order_by(pages.c.finished_at.desc()).limit(RECENT_PAGES))]
    if len(stamps) < 2:
        return None
    span_s = max((stamps[0] - stamps[-1]).total_seconds(), 1.0)
    return (len(stamps) - 1) / span_s * 60


def in_flight(workers_: list[dict[str, Any]]) -> dict[str, Any]:
    """Over the workers not ended: {"pages_in_flight": pages being decoded now (sum),
    "tokens_per_s": aggregate generated tokens/s of the workers at work (busy or with pages in
    flight: an idle worker's last rate is history), None when none reported one}."""
    live = [w for w in workers_ if w["state"] not in ENDED_WORKER_STATES]
    rates = [w["tokens_per_s"] for w in live if w["tokens_per_s"] is not None
             and (w["pages_in_flight"] or w["state"] == WorkerState.BUSY)]
    return {"pages_in_flight": sum(w["pages_in_flight"] or 0 for w in live),
            "tokens_per_s": sum(rates) if rates else None}


def status(conn: Connection, now: datetime) -> dict[str, Any]:
    """{"counts": ..., "workers": ..., "throughput": ..., "in_flight": ...}; in one transaction
    they agree. The ledger's `running` pages are the claimed ones: in flight (decoding now) or
    claimed ahead (rendered, waiting for a slot in a worker's batch)."""
    workers_ = workers_status(conn, now)
    return {"counts": counts(conn), "workers": workers_, "throughput": throughput(conn, now),
            "in_flight": in_flight(workers_)}


def running_jobs(conn: Connection, now: datetime, limit: int = 20) -> list[dict[str, Any]]:
    """Jobs being worked on (state running), oldest first, each with id, inbox, source_path,
    pages_done, pages_total, pages_claimed (its running pages), started_at (when its first page
    was claimed) and pages_per_min: its own pace since then (None before a page is done)."""
    started = func.min(pages.c.started_at)
    claimed = func.count().filter(pages.c.state == PageState.RUNNING)
    query = (select(jobs.c.id, jobs.c.inbox, jobs.c.source_path, jobs.c.pages_done, jobs.c.pages_total,
                    started.label("started_at"), claimed.label("pages_claimed"))
             .join(pages, pages.c.job_id == jobs.c.id)
             .where(jobs.c.state == JobState.RUNNING)
             .group_by(jobs.c.id, jobs.c.inbox, jobs.c.source_path, jobs.c.pages_done, jobs.c.pages_total)
             .order_by(jobs.c.id).limit(limit))
    out = []
    for r in conn.execute(query):
        row = dict(r._mapping)
        elapsed = (now - from_text(r.started_at)).total_seconds() if r.started_at else 0.0
        row["pages_per_min"] = r.pages_done / elapsed * 60 if r.pages_done and elapsed > 0 else None
        out.append(row)
    return out


def job_started_at(conn: Connection, job_id: int) -> str | None:
    """When the job's first page was claimed (ISO text); None before any was."""
    return conn.execute(select(func.min(pages.c.started_at)).where(pages.c.job_id == job_id)).scalar_one()


def list_jobs(conn: Connection, state: JobState | None = None, limit: int = 50,
              since: datetime | None = None) -> list[dict[str, Any]]:
    """jobs rows (all columns), newest first; `since`: only those changed at or after it."""
    query = select(jobs).order_by(jobs.c.id.desc()).limit(limit)
    if state is not None:
        query = query.where(jobs.c.state == state)
    if since is not None:
        query = query.where(jobs.c.updated_at >= to_text(since))
    return [dict(r._mapping) for r in conn.execute(query)]


def show_job(conn: Connection, job_id: int) -> dict[str, Any] | None:
    """The jobs row plus "pages": [pages rows without text], "events": [events rows]."""
    row = conn.execute(select(jobs).where(jobs.c.id == job_id)).first()
    if row is None:
        return None
    job = dict(row._mapping)
    page_cols = [c for c in pages.c if c.name != "text"]
    job["pages"] = [dict(r._mapping) for r in conn.execute(
        select(*page_cols).where(pages.c.job_id == job_id).order_by(pages.c.page_no))]
    for page in job["pages"]:   # stored as JSON text; a list here (and in `ocrd show --json`)
        page["blocks"] = json.loads(page["blocks"]) if page["blocks"] else []
    job["events"] = [dict(r._mapping) for r in conn.execute(
        select(events).where(events.c.job_id == job_id).order_by(events.c.id))]
    return job


ENDING_EVENTS = ("job_done", "job_failed")


def job_endings(conn: Connection, after: int, limit: int = 100, mine: Any = true()) -> list[dict[str, Any]]:
    """Jobs that ended (done or failed, at ingest too) after event id `after`, oldest first, one
    per ending (a job retried and failed again ends twice): event_id, kind, job_id, and the job's
    state, source_path, output_path, error and options now (hooks: daemon/hooks.py). `mine`:
    the jobs of this host (hosts.py), whose hooks it runs."""
    query = (select(events.c.id.label("event_id"), events.c.kind, events.c.job_id, jobs.c.state,
                    jobs.c.source_path, jobs.c.output_path, jobs.c.error, jobs.c.inbox, jobs.c.options)
             .join(jobs, jobs.c.id == events.c.job_id)
             .where(events.c.id > after, events.c.kind.in_(ENDING_EVENTS), events.c.page_no.is_(None),
                    mine)
             .order_by(events.c.id).limit(limit))
    return [dict(r._mapping) for r in conn.execute(query)]


def last_event_id(conn: Connection) -> int:
    return conn.execute(select(func.coalesce(func.max(events.c.id), 0))).scalar_one()


def page_totals(conn: Connection, buckets: tuple[float, ...]) -> dict[str, Any]:
    """For /metrics: generated tokens over every page, and the done pages' seconds as cumulative
    histogram buckets ({"tokens": n, "count": n, "sum": s, "buckets": [(le, n), ...]}), one pass."""
    done = pages.c.state == PageState.DONE
    timed = done & pages.c.seconds.is_not(None)
    cols = [func.coalesce(func.sum(pages.c.generation_tokens), 0),
            func.count().filter(timed), func.coalesce(func.sum(pages.c.seconds).filter(timed), 0.0),
            *(func.count().filter(timed & (pages.c.seconds <= le)) for le in buckets)]
    row = conn.execute(select(*cols)).one()
    return {"tokens": int(row[0]), "count": int(row[1]), "sum": float(row[2]),
            "buckets": list(zip(buckets, (int(n) for n in row[3:])))}


class Reports:
    """The Ledger's read-only side (a mixin of `Ledger`): each report in one read transaction."""

    _read: Callable[[Callable[[Connection], Any]], Any]
    _sqlite: bool
    clock: Callable[..., datetime]           # store.py: the ledger's now (clock.py)
    _mine: Callable[[], Any]                 # hosts.py

    def counts(self) -> dict[str, dict[str, int]]:
        return self._read(counts)

    def workers_status(self, now: datetime | None = None) -> list[dict[str, Any]]:
        now = self.clock(now)
        return self._read(lambda conn: workers_status(conn, now))

    def throughput(self, now: datetime | None = None) -> dict[str, float | None]:
        now = self.clock(now)
        return self._read(lambda conn: throughput(conn, now))

    def status(self, now: datetime | None = None) -> dict[str, Any]:
        """counts, workers_status and throughput read together, so the three agree."""
        now = self.clock(now)
        return self._read(lambda conn: status(conn, now))

    def running_jobs(self, now: datetime | None = None, limit: int = 20) -> list[dict[str, Any]]:
        now = self.clock(now)
        return self._read(lambda conn: running_jobs(conn, now, limit))

    def job_started_at(self, job_id: int) -> str | None:
        return self._read(lambda conn: job_started_at(conn, job_id))

    def list_jobs(self, state: JobState | None = None, limit: int = 50,
                  since: datetime | None = None) -> list[dict[str, Any]]:
        return self._read(lambda conn: list_jobs(conn, state, limit, since))

    def show_job(self, job_id: int) -> dict[str, Any] | None:
        return self._read(lambda conn: show_job(conn, job_id))

    def job_endings(self, after: int, limit: int = 100) -> list[dict[str, Any]]:
        return self._read(lambda conn: job_endings(conn, after, limit, self._mine()))

    def last_event_id(self) -> int:
        return self._read(last_event_id)

    def page_totals(self, buckets: tuple[float, ...]) -> dict[str, Any]:
        return self._read(lambda conn: page_totals(conn, buckets))

    def integrity_check(self) -> str:
        """'ok' or SQLite's complaint."""
        if not self._sqlite:
            return "ok"
        rows = self._read(lambda c: [r[0] for r in c.execute(text("PRAGMA integrity_check"))])
        return "ok" if rows == ["ok"] else "\n".join(rows)
