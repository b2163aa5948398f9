"""The allowed-transitions tables are enforced by the one writer of state, on both backends."""

from __future__ import annotations

import itertools

import pytest
from ledger_testkit import T0, Db, add
from sqlalchemy import insert

from ocrd.ledger.schema import events
from ocrd.ledger.states import JOB_TRANSITIONS, PAGE_TRANSITIONS, JobState, PageState, TransitionError
from ocrd.ledger.store import Ledger
from ocrd.ledger.transitions import page_key, transition_job, transition_page

JOB_PAIRS = list(itertools.product(JobState, JobState))
PAGE_PAIRS = list(itertools.product(PageState, PageState))


def _job_row(db: Db, job_id: int) -> tuple:
    return db.raw("SELECT * FROM jobs WHERE id = ?", (job_id,))[0]


def _page_row(db: Db, job_id: int, page_no: int) -> tuple:
    return db.raw("SELECT * FROM pages WHERE job_id = ? AND page_no = ?", (job_id, page_no))[0]


def _n_events(db: Db) -> int:
    return db.raw("SELECT COUNT(*) FROM events")[0][0]


@pytest.mark.parametrize(("src", "dst"), JOB_PAIRS, ids=[f"{a}->{b}" for a, b in JOB_PAIRS])
def test_job_transition_table(ledger: Ledger, db: Db, src: JobState, dst: JobState) -> None:
    job_id = add(ledger)
    db.raw("UPDATE jobs SET state = ? WHERE id = ?", (src.value, job_id))   # seam: any start
    before, n_events = _job_row(db, job_id), _n_events(db)
    move = lambda conn: transition_job(conn, job_id, dst, T0, detail="test")  # noqa: E731
    if dst in JOB_TRANSITIONS[src]:
        assert ledger._write(move) == src
        assert ledger.job(job_id).state == dst
        kinds = db.raw("SELECT kind, detail FROM events ORDER BY id DESC LIMIT 1")
        assert kinds == [(f"job_{dst}", f"{src} -> {dst}: test")]
    else:
        with pytest.raises(TransitionError):
            ledger._write(move)
        assert _job_row(db, job_id) == before
        assert _n_events(db) == n_events


@pytest.mark.parametrize(("src", "dst"), PAGE_PAIRS, ids=[f"{a}->{b}" for a, b in PAGE_PAIRS])
def test_page_transition_table(ledger: Ledger, db: Db, src: PageState, dst: PageState) -> None:
    job_id = add(ledger)
    db.raw("UPDATE pages SET state = ? WHERE job_id = ? AND page_no = 2", (src.value, job_id))
    before, n_events = _page_row(db, job_id, 2), _n_events(db)
    move = lambda conn: transition_page(conn, src, dst, T0, where=page_key(job_id, 2),  # noqa: E731
                                        one=True, values={"error": "x"})
    if dst in PAGE_TRANSITIONS[src]:
        assert [(r.job_id, r.page_no) for r in ledger._write(move)] == [(job_id, 2)]
        assert db.raw("SELECT state, error FROM pages WHERE job_id = ? AND page_no = 2",
                   (job_id,)) == [(dst.value, "x")]
        assert _n_events(db) == n_events + 1
    else:
        with pytest.raises(TransitionError):
            ledger._write(move)
        assert _page_row(db, job_id, 2) == before
        assert _n_events(db) == n_events


def test_job_transition_from_the_wrong_state_is_a_lost_race(ledger: Ledger, db: Db) -> None:
    job_id = add(ledger)                                  # queued; caller believes it is running
    before = _job_row(db, job_id)
    with pytest.raises(TransitionError, match="is queued"):
        ledger._write(lambda c: transition_job(c, job_id, JobState.DONE, T0, src={JobState.RUNNING}))
    assert _job_row(db, job_id) == before


def test_page_transition_from_the_wrong_state_is_a_lost_race(ledger: Ledger, db: Db) -> None:
    job_id = add(ledger)                                  # page 1 is queued, not running
    before = _page_row(db, job_id, 1)
    with pytest.raises(TransitionError, match="lost a race"):
        ledger._write(lambda c: transition_page(c, PageState.RUNNING, PageState.DONE, T0,
                                                where=page_key(job_id, 1), one=True))
    assert _page_row(db, job_id, 1) == before


def test_a_refused_transition_rolls_back_the_whole_transaction(ledger: Ledger, db: Db) -> None:
    job_id = add(ledger)
    n_events = _n_events(db)

    def tx(conn):
        conn.execute(insert(events).values(job_id=job_id, at="x", kind="note", detail="written first"))
        transition_job(conn, job_id, JobState.DONE, T0)          # queued -> done: refused

    with pytest.raises(TransitionError):
        ledger._write(tx)
    assert _n_events(db) == n_events
    assert ledger.job(job_id).state == JobState.QUEUED


def test_missing_job_is_refused(ledger: Ledger) -> None:
    with pytest.raises(TransitionError, match="does not exist"):
        ledger._write(lambda c: transition_job(c, 999, JobState.RUNNING, T0))
