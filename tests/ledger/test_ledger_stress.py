"""Real processes against one ledger (a SQLite file, a PostgreSQL database): concurrent claims,
and a worker killed with SIGKILL."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from helpers import wait_for
from ledger_procs import claim_and_complete
from ledger_testkit import Db, add

from ocrd.ledger.states import JobState, PageState
from ocrd.ledger.store import Ledger

PROCS = 4
# (jobs, pages per job): SQLite ~7 s, PostgreSQL ~3 s on 2 shared cores (its server processes
# share them too); the load is the point, the smaller PostgreSQL count keeps the suite short
SIZES = {"sqlite": (50, 100), "postgresql": (20, 100)}


@pytest.mark.timeout(180)
def test_four_processes_claim_every_page_once(ledger: Ledger, db_url: str, db: Db) -> None:
    JOBS, PAGES_PER_JOB = SIZES[db.dialect]  # noqa: N806
    for j in range(JOBS):
        add(ledger, f"doc{j}", PAGES_PER_JOB)

    ctx = multiprocessing.get_context("spawn")
    # the race starts when all four have spawned and registered: a slow spawn must not find the
    # pages already gone (CI saw one process claim nothing when they started on an Event)
    start, results = ctx.Barrier(PROCS + 1), ctx.Queue()
    procs = [ctx.Process(target=claim_and_complete, args=(db_url, f"w{i}", 4, i, start, results))
             for i in range(PROCS)]
    for p in procs:
        p.start()
    try:
        start.wait(120)
        started = time.monotonic()
        reports = [results.get(timeout=120) for _ in procs]
        elapsed = time.monotonic() - started
        for p in procs:
            p.join(30)
            assert p.exitcode == 0
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join()

    errors = [e for _, _, _, errs in reports for e in errs]
    assert errors == [], errors[0]                      # no "database is locked" reached a caller
    claims = Counter(c for _, cl, _, _ in reports for c in cl)
    assert [c for c, n in claims.items() if n > 1] == []          # nobody claimed a page twice
    assert len(claims) == JOBS * PAGES_PER_JOB                    # and none was lost
    assert all(len(cl) > 0 for _, cl, _, _ in reports)            # all four really took part
    finishers = Counter(j for _, _, fin, _ in reports for j in fin)
    assert sorted(finishers) == list(range(1, JOBS + 1)) and set(finishers.values()) == {1}
    counts = ledger.counts()
    assert counts["pages"] == {"queued": 0, "running": 0, "done": JOBS * PAGES_PER_JOB, "failed": 0}
    assert counts["jobs"]["done"] == JOBS
    # counts() takes done pages from jobs.pages_done: it must agree with the rows
    assert db.raw("SELECT state, COUNT(*) FROM pages GROUP BY state") == [("done", JOBS * PAGES_PER_JOB)]
    assert sum(w["pages_done"] for w in ledger.workers_status()) == JOBS * PAGES_PER_JOB
    assert ledger.integrity_check() == "ok"
    if db.dialect == "sqlite":
        assert db.raw("PRAGMA integrity_check") == [("ok",)]
    print(f"stress ({db.dialect}): {JOBS * PAGES_PER_JOB} pages in {elapsed:.1f}s with {PROCS} processes")


@pytest.mark.timeout(60)
def test_killed_worker_pages_come_back_after_the_lease(ledger: Ledger, db_url: str) -> None:
    job_id = add(ledger, "doc", 3)
    code = ("import sys; sys.path.insert(0, %r); from ledger_procs import claim_then_hang; "
            "claim_then_hang(%r, 'doomed', 2, 1.0)" % (str(Path(__file__).parent), db_url))
    child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        line = child.stdout.readline().split()
        assert line == [f"{job_id}:1", f"{job_id}:2"]
        os.kill(child.pid, signal.SIGKILL)
        assert child.wait(10) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        child.stdin.close()
        child.stdout.close()

    assert ledger.pages_of_worker("doomed") == [(job_id, 1), (job_id, 2)]
    # a live lease is left alone (a minute ago every lease was still in the future)
    assert ledger.rescue_expired(now=datetime.now(UTC) - timedelta(minutes=1)) == 0
    wait_for(lambda: ledger.rescue_expired() == 2, timeout=15, message="the 1 s lease to expire")
    assert ledger.pages_of_worker("doomed") == []
    pages = ledger.show_job(job_id)["pages"]
    assert [(p["state"], p["attempts"]) for p in pages] == [
        (PageState.QUEUED, 1), (PageState.QUEUED, 1), (PageState.QUEUED, 0)]
    again = ledger.claim_pages("heir", n=3)
    assert [(p.page_no, p.attempts) for p in again] == [(1, 2), (2, 2), (3, 1)]
    assert ledger.job(job_id).state == JobState.RUNNING
