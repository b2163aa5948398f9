"""The one writer of state (DESIGN.md invariant 3): every job or page state change is a
conditional UPDATE ... WHERE state = :from, checked against states.py's table, with its `events`
row appended in the same transaction. The Ledger's methods call these inside their transaction."""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Row, and_, delete, insert, select, update

from .clock import to_text
from .schema import blobs, events, jobs, pages
from .states import JobState, PageState, TransitionError, check_job, check_page


def append_event(conn: Connection, job_id: int | None, page_no: int | None, now: datetime,
                 kind: str, detail: str = "") -> None:
    conn.execute(insert(events).values(job_id=job_id, page_no=page_no, at=to_text(now), kind=kind,
                                       detail=detail))


def _describe(src: str, dst: str, detail: str) -> str:
    return f"{src} -> {dst}" + (f": {detail}" if detail else "")


def page_key(job_id: int, page_no: int) -> Any:
    return and_(pages.c.job_id == job_id, pages.c.page_no == page_no)


def transition_job(conn: Connection, job_id: int, dst: JobState, now: datetime, *,
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
    if dst in (JobState.DONE, JobState.FAILED, JobState.DUPLICATE):   # no worker reads it again
        conn.execute(delete(blobs).where(blobs.c.job_id == job_id))
    append_event(conn, job_id, None, now, f"job_{dst}", _describe(current, dst, detail))
    return current


def transition_page(conn: Connection, src: PageState, dst: PageState, now: datetime, *,
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


def fail_job_with_pages(conn: Connection, job_id: int, error: str, now: datetime) -> bool:
    """queued/running -> failed, with the job's unfinished pages; False if it was neither."""
    state = conn.execute(select(jobs.c.state).where(jobs.c.id == job_id)
                         .with_for_update(key_share=True)).scalar_one_or_none()
    if state not in (JobState.QUEUED, JobState.RUNNING):
        return False
    transition_job(conn, job_id, JobState.FAILED, now, detail=error, error=error,
                   finished_at=to_text(now))
    for src in (PageState.QUEUED, PageState.RUNNING):
        transition_page(conn, src, PageState.FAILED, now, where=pages.c.job_id == job_id,
                        detail="its job failed",
                        values=dict(error=f"job failed: {error}", lease_expires_at=None))
    return True
