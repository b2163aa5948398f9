"""The Ledger API on real databases (SQLite and PostgreSQL): jobs, pages, leases, retries,
workers, queries, and each engine's own locking."""

from __future__ import annotations

import threading
from contextlib import closing
from datetime import timedelta

import pytest
from helpers import wait_for
from ledger_testkit import T0, Db, add
from sqlalchemy import event

from ocrd.ledger.clock import from_text, to_text
from ocrd.ledger.states import JobState, PageState, TransitionError, WorkerState
from ocrd.ledger.store import Ledger, PageOutcome

S = timedelta(seconds=1)


def _pages(ledger: Ledger, job_id: int) -> list[tuple]:
    return [(p["page_no"], p["state"], p["attempts"]) for p in ledger.show_job(job_id)["pages"]]


def _run_to_done(ledger: Ledger, job_id: int, worker: str = "w", now=T0) -> None:
    while page := ledger.claim_pages(worker, n=1, now=now):
        ledger.complete_page(page[0].job_id, page[0].page_no, worker, text=f"p{page[0].page_no}",
                             now=now)


# -- jobs -------------------------------------------------------------------------------------------
def test_add_job_inserts_job_pages_and_event(ledger: Ledger) -> None:
    job_id = add(ledger, "a", 3, priority=2)
    job = ledger.job(job_id)
    assert (job.state, job.pages_total, job.pages_done, job.priority) == ("queued", 3, 0, 2)
    assert job.created_at == to_text(T0) == "2025-03-01T12:00:00.000000Z"
    assert _pages(ledger, job_id) == [(1, "queued", 0), (2, "queued", 0), (3, "queued", 0)]
    assert [e["kind"] for e in ledger.show_job(job_id)["events"]] == ["job_added"]
    with pytest.raises(ValueError):
        add(ledger, "empty", 0)


def test_add_job_is_idempotent_on_spool_path(ledger: Ledger, db: Db) -> None:
    first = ledger.add_job(inbox="/in", source_path="/in/a.pdf", spool_path="/spool/a.pdf",
                           sha256="s1", size_bytes=1, pages_total=2)
    again = ledger.add_job(inbox="/in", source_path="/in/a.pdf", spool_path="/spool/a.pdf",
                           sha256="other", size_bytes=1, pages_total=5)
    assert again == first
    assert db.raw("SELECT COUNT(*) FROM pages") == [(2,)]
    failed = ledger.add_failed_job(inbox="/in", source_path="/in/b.txt", spool_path="/failed/b.txt",
                                   sha256="s2", size_bytes=1, error="unsupported file type")
    assert ledger.add_failed_job(inbox="/in", source_path="/in/b.txt", spool_path="/failed/b.txt",
                                 sha256="s2", size_bytes=1, error="again") == failed
    row = ledger.job(failed)
    assert (row.state, row.error, row.pages_total) == ("failed", "unsupported file type", 0)
    assert ledger.job_by_spool_path("/failed/b.txt").id == failed
    assert ledger.job_by_spool_path("/nowhere") is None


@pytest.mark.parametrize("original_state", ["queued", "running", "done", "failed", "duplicate"])
def test_duplicate_rule(ledger: Ledger, db: Db, original_state: str) -> None:
    original = add(ledger, "a", 2, sha="same")
    db.raw("UPDATE jobs SET state = ? WHERE id = ?", (original_state, original))
    result = ledger.add_job(inbox="/in", source_path="/in/b.pdf", spool_path="/spool/b.pdf",
                            sha256="same", size_bytes=1, pages_total=2)
    if original_state in ("queued", "running", "done"):
        assert (result.state, result.duplicate_of) == (JobState.DUPLICATE, original)
        job = ledger.show_job(result.job_id)
        assert (job["error"], job["pages"], job["duplicate_of"]) == (f"duplicate of job {original}", [], original)
    else:
        assert (result.state, result.duplicate_of) == (JobState.QUEUED, None)
    processed = ledger.add_job(inbox="/in", source_path="/in/c.pdf", spool_path="/spool/c.pdf",
                               sha256="same", size_bytes=1, pages_total=2, on_duplicate="process")
    assert processed.state == JobState.QUEUED


def test_concurrent_ingests_of_one_file_make_one_job_and_one_duplicate(db_url: str, db: Db) -> None:
    # several hosts' ingests at once: the look-ups that decide an insert must hold until it commits
    start, results, errors = threading.Barrier(6), [], []

    def ingest(i: int) -> None:
        try:
            with Ledger(db_url) as mine:
                start.wait(10)
                results.append(mine.add_job(inbox="/in", source_path="/in/a.pdf",
                                            spool_path=f"/spool/{i % 2}.pdf", sha256="same",
                                            size_bytes=1, pages_total=2))
        except Exception as exc:  # noqa: BLE001 -- asserted below
            errors.append(exc)

    threads = [threading.Thread(target=ingest, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert sorted(db.raw("SELECT state, duplicate_of IS NULL FROM jobs")) == [("duplicate", False), ("queued", True)]
    assert db.raw("SELECT COUNT(*) FROM pages") == [(2,)]
    assert len({r.job_id for r in results}) == 2


def test_set_job_paths_keeps_omitted_and_clears_explicit_none(ledger: Ledger) -> None:
    job_id = add(ledger)
    ledger.set_job_paths(job_id, output_path="/out/a.md")
    assert (ledger.job(job_id).spool_path, ledger.job(job_id).output_path) == ("/spool/a.pdf", "/out/a.md")
    ledger.set_job_paths(job_id, spool_path=None)
    assert (ledger.job(job_id).spool_path, ledger.job(job_id).output_path) == (None, "/out/a.md")


def test_jobs_in_states_list_jobs_and_show_job(ledger: Ledger) -> None:
    ids = [add(ledger, f"d{i}", 2) for i in range(4)]
    ledger.fail_job(ids[1], "broken")
    assert [j.id for j in ledger.jobs_in_states([JobState.QUEUED])] == [ids[0], ids[2], ids[3]]
    assert [j["id"] for j in ledger.list_jobs()] == ids[::-1]
    assert [j["id"] for j in ledger.list_jobs(limit=2)] == ids[:1:-1]
    assert [j["id"] for j in ledger.list_jobs(state="failed")] == [ids[1]]
    shown = ledger.show_job(ids[1])
    assert set(shown) >= {"id", "state", "error", "pages", "events", "sha256", "finished_at"}
    assert "text" not in shown["pages"][0] and shown["pages"][0]["error"] == "job failed: broken"
    assert [e["kind"] for e in shown["events"]] == ["job_added", "job_failed", "page_failed", "page_failed"]
    assert ledger.show_job(999) is None and ledger.job(999) is None


# -- claims and leases ------------------------------------------------------------------------------
def test_claim_order_fields_and_job_follows(ledger: Ledger) -> None:
    low = add(ledger, "low", 2)
    high = add(ledger, "high", 2, priority=5)
    ledger.register_worker("w", host="h", pid=1, backend="cpu", device_name="cpu")
    got = ledger.claim_pages("w", n=3, lease_s=30, now=T0)
    assert [(p.job_id, p.page_no) for p in got] == [(low, 1), (high, 1), (high, 2)]
    assert got[1] == type(got[1])(job_id=high, page_no=1, attempts=1, pages_total=2, inbox="/in",
                                  source_path="/in/high.pdf", spool_path="/spool/high.pdf",
                                  host=ledger.host)
    assert ledger.job(high).state == ledger.job(low).state == JobState.RUNNING
    page = ledger.show_job(high)["pages"][0]
    assert (page["lease_owner"], from_text(page["lease_expires_at"])) == ("w", T0 + 30 * S)
    assert ledger.workers_status(now=T0)[0]["current_page"] == f"{low}:1,{high}:1,{high}:2"
    assert ledger.pages_of_worker("w") == [(low, 1), (high, 1), (high, 2)]
    assert ledger.claim_pages("w", n=0) == []


def test_a_heartbeat_renews_only_the_pages_its_worker_still_holds(ledger: Ledger) -> None:
    """A page whose result could not be stored (the server went away) is no longer held: its
    lease runs out and it comes back, instead of staying running, renewed, forever."""
    job_id = add(ledger, "a", 3)
    ledger.claim_pages("w", n=3, lease_s=60, now=T0)
    held = [(job_id, 1), (job_id, 3)]
    ledger.record_heartbeat("w", backend="cpu", active_memory_bytes=0, peak_memory_bytes=0,
                            cache_memory_bytes=0, memory_limit_bytes=0, pages_done=0, tokens_per_s=0,
                            current_page=None, lease_s=60, held=held, now=T0 + 50 * S)
    assert ledger.rescue_expired(now=T0 + 61 * S) == 1
    assert [p[:2] for p in _pages(ledger, job_id)] == [(1, "running"), (2, "queued"), (3, "running")]
    assert ledger.renew_leases("w", lease_s=60, held=[], now=T0 + 62 * S) == 0
    assert ledger.renew_leases("w", lease_s=60, now=T0 + 62 * S) == 2   # no list: all it owns


def test_a_claim_retried_after_its_commit_gets_its_own_pages_again(ledger: Ledger, monkeypatch) -> None:
    """The server went after the claim's commit, before its answer: the transaction runs again
    (ledger/_engine.py) and must answer with the pages it took, not take more."""
    job_id = add(ledger, "a", 4)
    write = ledger._write
    monkeypatch.setattr(ledger, "_write", lambda fn: (write(fn), write(fn))[1])
    got = ledger.claim_pages("w", n=2, lease_s=60, now=T0)
    monkeypatch.undo()
    assert [(p.page_no, p.attempts) for p in got] == [(1, 1), (2, 1)]
    assert [p[:2] for p in _pages(ledger, job_id)] == [(1, "running"), (2, "running"), (3, "queued"), (4, "queued")]


def test_the_claim_after_a_lost_answer_adopts_its_pages_uncharged(ledger: Ledger) -> None:
    """A claim that raised LedgerUnreachable may have committed: the worker's next claim says
    what it holds (`adopt`) and gets the pages it never heard of, charged once, their leases new."""
    job_id = add(ledger, "a", 5)
    ledger.claim_pages("w", n=2, lease_s=60, now=T0)          # its answer lost
    ledger.claim_pages("v", n=1, lease_s=60, now=T0)          # another worker's page is not adopted
    got = ledger.claim_pages("w", n=1, lease_s=60, now=T0 + 30 * S, adopt=[])
    assert [(p.page_no, p.attempts) for p in got] == [(1, 1), (2, 1)]
    assert ledger.rescue_expired(now=T0 + 61 * S) == 1        # v's; w's leases run from T0 + 30 s
    got = ledger.claim_pages("w", n=2, lease_s=60, now=T0 + 31 * S, adopt=[(job_id, 1), (job_id, 2)])
    assert [(p.page_no, p.attempts) for p in got] == [(3, 2), (4, 1)]   # what it holds is not returned


def test_lease_expiry_through_the_now_seam(ledger: Ledger) -> None:
    job_id = add(ledger, "a", 2)
    ledger.claim_pages("w", n=1, lease_s=60, now=T0)
    assert ledger.rescue_expired(now=T0 + 59 * S) == 0
    assert ledger.renew_leases("w", lease_s=60, now=T0 + 50 * S) == 1
    assert ledger.rescue_expired(now=T0 + 100 * S) == 0
    assert ledger.rescue_expired(now=T0 + 111 * S) == 1
    assert _pages(ledger, job_id)[0] == (1, "queued", 1)
    assert ledger.pages_of_worker("w") == []
    # the old holder comes back too late: its result is refused
    assert ledger.complete_page(job_id, 1, "w", text="late", now=T0 + 112 * S) is None
    # two more lost leases reach max_attempts: the page and its job fail
    for k in (2, 3):
        claimed = ledger.claim_pages(f"w{k}", n=1, lease_s=60, now=T0 + k * 1000 * S)
        assert (claimed[0].page_no, claimed[0].attempts) == (1, k)
        assert ledger.rescue_expired(max_attempts=3, now=T0 + (k * 1000 + 61) * S) == 1
    job = ledger.job(job_id)
    assert (job.state, job.error) == ("failed", "page 1: lease expired (worker lost)")
    assert _pages(ledger, job_id) == [(1, "failed", 3), (2, "failed", 0)]


def test_release_pages_gives_back_the_attempt(ledger: Ledger) -> None:
    job_id = add(ledger, "a", 2)
    ledger.claim_pages("w", n=2, now=T0)
    assert ledger.release_pages("w", now=T0) == 2
    assert _pages(ledger, job_id) == [(1, "queued", 0), (2, "queued", 0)]
    assert [p.attempts for p in ledger.claim_pages("v", n=2, now=T0)] == [1, 1]
    assert ledger.release_pages("nobody") == 0


# -- completion ---------------------------------------------------------------------------------------
def test_complete_page_reports_the_last_page_and_finish_job(ledger: Ledger) -> None:
    job_id = add(ledger, "a", 3)
    ledger.register_worker("w", host="h", pid=1, backend="cpu", device_name="cpu")
    got = ledger.claim_pages("w", n=3, now=T0)
    assert ledger.finish_job(job_id, "/out/a.md") is False             # pages not done yet
    assert ledger.complete_page(job_id, 1, "other", text="x") is None  # not its lease
    results = [ledger.complete_page(p.job_id, p.page_no, "w", text=f"t{p.page_no}",
                                    prompt_tokens=5, generation_tokens=7, seconds=1.5, now=T0)
               for p in reversed(got)]
    assert results == [False, False, True]
    assert ledger.complete_page(job_id, 1, "w", text="again") is None  # done is final
    assert ledger.job_complete(job_id) and ledger.page_texts(job_id) == ["t1", "t2", "t3"]
    assert ledger.job(job_id).pages_done == 3
    assert ledger.completed_jobs_not_done() == [job_id]
    assert ledger.finish_job(job_id, "/out/a.md", now=T0) is True
    assert ledger.finish_job(job_id, "/out/a.md") is False
    job = ledger.job(job_id)
    assert (job.state, job.output_path, job.finished_at) == ("done", "/out/a.md", to_text(T0))
    assert ledger.completed_jobs_not_done() == []
    assert ledger.workers_status(now=T0)[0]["pages_done"] == 3
    page = ledger.show_job(job_id)["pages"][1]
    assert (page["prompt_tokens"], page["generation_tokens"], page["seconds"], page["finish_reason"],
            page["finished_at"]) == (5, 7, 1.5, "stop", to_text(T0))


def test_page_texts_refuses_an_unfinished_job(ledger: Ledger) -> None:
    job_id = add(ledger, "a", 2)
    assert not ledger.job_complete(job_id)
    with pytest.raises(ValueError):
        ledger.page_texts(job_id)


# -- failures, backoff, retry ---------------------------------------------------------------------
@pytest.mark.parametrize(("attempts", "base_s"), [(1, 20), (2, 40), (5, 320), (6, 600), (9, 600)])
def test_backoff_bounds(ledger: Ledger, db: Db, attempts: int, base_s: float) -> None:
    job_id = add(ledger, "a", 1)
    ledger.claim_pages("w", now=T0)
    db.raw("UPDATE pages SET attempts = ?", (attempts,))
    outcome = ledger.fail_page(job_id, 1, "w", "engine hiccup", max_attempts=10, now=T0)
    assert (outcome.state, outcome.job_failed) == (PageState.QUEUED, False)
    assert T0 + 0.8 * base_s * S <= outcome.run_after <= T0 + 1.2 * base_s * S
    page = ledger.show_job(job_id)["pages"][0]
    assert (page["state"], page["error"], from_text(page["run_after"])) == ("queued", "engine hiccup", outcome.run_after)
    assert ledger.claim_pages("w", now=outcome.run_after - S) == []
    assert [p.page_no for p in ledger.claim_pages("w", now=outcome.run_after)] == [1]


def test_backoff_base_is_the_ledgers_to_set(db_url: str) -> None:
    with Ledger(db_url, backoff_base_s=0.5) as ledger:            # the seam the daemon tests use
        job_id = add(ledger, "a", 1)
        ledger.claim_pages("w", now=T0)
        outcome = ledger.fail_page(job_id, 1, "w", "engine hiccup", now=T0)
        assert T0 + 0.8 * S <= outcome.run_after <= T0 + 1.2 * S  # 0.5 s x 2**1, +-20%


def test_max_attempts_fails_page_and_job(ledger: Ledger) -> None:
    job_id = add(ledger, "a", 3)
    now = T0
    for attempt in (1, 2):
        ledger.claim_pages("w", n=1, now=now)
        outcome = ledger.fail_page(job_id, 1, "w", "bad page", max_attempts=3, now=now)
        assert outcome.state == PageState.QUEUED
        now = outcome.run_after
    [p1, p2] = ledger.claim_pages("w", n=2, now=now)
    assert (p1.page_no, p1.attempts, p2.page_no) == (1, 3, 2)
    outcome = ledger.fail_page(job_id, 1, "w", "bad page", max_attempts=3, now=now)
    assert (outcome.state, outcome.run_after, outcome.job_failed) == (PageState.FAILED, None, True)
    job = ledger.job(job_id)
    assert (job.state, job.error) == ("failed", "page 1: bad page")
    assert [s for _, s, _ in _pages(ledger, job_id)] == ["failed", "failed", "failed"]
    assert ledger.complete_page(job_id, 2, "w", text="too late") is None
    assert ledger.claim_pages("w", n=5, now=now + 3600 * S) == []


def test_non_retryable_and_supervisor_failures(ledger: Ledger) -> None:
    a, b = add(ledger, "a", 1), add(ledger, "b", 1)
    ledger.claim_pages("w", n=2, now=T0)
    # not its lease: nothing changes, the outcome says where the page is
    assert ledger.fail_page(a, 1, "someone-else", "x", now=T0) == PageOutcome(PageState.RUNNING, None, False)
    assert ledger.pages_of_worker("w") == [(a, 1), (b, 1)]
    assert ledger.fail_page(a, 1, "w", "encrypted", retryable=False, now=T0).state == PageState.FAILED
    outcome = ledger.fail_page(b, 1, None, "page timeout", now=T0)       # on a dead worker's behalf
    assert outcome.state == PageState.QUEUED
    again = ledger.fail_page(b, 1, None, "not running any more", now=T0)
    assert again == PageOutcome(PageState.QUEUED, outcome.run_after, False)
    assert ledger.fail_page(a, 1, "w", "late", now=T0) == PageOutcome(PageState.FAILED, None, False)
    with pytest.raises(TransitionError):
        ledger.fail_page(a, 99, "w", "no such page", now=T0)


def test_retry_requeues_only_failed_pages(ledger: Ledger) -> None:
    job_id = add(ledger, "a", 3)
    ingest_failed = ledger.add_failed_job(inbox="/in", source_path="/in/x.pdf", spool_path="/failed/x.pdf",
                                          sha256="x", size_bytes=1, error="corrupt")
    untouched = add(ledger, "b", 1)
    claimed = ledger.claim_pages("w", n=2, now=T0)
    ledger.complete_page(job_id, claimed[0].page_no, "w", text="one", now=T0)
    ledger.fail_page(job_id, 2, "w", "boom", retryable=False, now=T0)
    assert _pages(ledger, job_id) == [(1, "done", 1), (2, "failed", 1), (3, "failed", 0)]

    assert ledger.retry_jobs(now=T0) == [job_id, ingest_failed]
    assert _pages(ledger, job_id) == [(1, "done", 1), (2, "queued", 0), (3, "queued", 0)]
    job = ledger.job(job_id)
    assert (job.state, job.error, job.attempts, job.pages_done) == ("queued", None, 2, 1)
    assert all(p["error"] is None for p in ledger.show_job(job_id)["pages"])
    assert ledger.job(ingest_failed).state == "failed"
    assert ledger.show_job(ingest_failed)["events"][-1]["kind"] == "retry_ingest"
    assert ledger.job(untouched).state == "queued"
    assert ledger.retry_jobs([job_id, untouched]) == []                 # neither is failed now
    _run_to_done(ledger, job_id)
    assert ledger.page_texts(job_id) == ["one", "p2", "p3"]
    assert ledger.completed_jobs_not_done() == [job_id, untouched]


def test_concurrent_retries_requeue_each_job_once(ledger: Ledger, db_url: str) -> None:
    ids = [add(ledger, f"d{i}", 2) for i in range(5)]
    for job_id in ids:
        ledger.fail_job(job_id, "broken")
    start, picked, errors = threading.Barrier(4), [], []

    def retry() -> None:
        try:
            with Ledger(db_url) as mine:
                start.wait(10)
                picked.extend(mine.retry_jobs())
        except Exception as exc:  # noqa: BLE001 -- asserted below
            errors.append(exc)

    threads = [threading.Thread(target=retry) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == [] and sorted(picked) == ids
    assert {ledger.job(j).attempts for j in ids} == {2}


def test_reopen_job_after_a_fixed_ingest(ledger: Ledger) -> None:
    failed = ledger.add_failed_job(inbox="/in", source_path="/in/x.pdf", spool_path="/failed/x.pdf",
                                   sha256="old", size_bytes=1, error="locked pdf")
    assert ledger.reopen_job(failed, spool_path="/spool/x.pdf", sha256="new", size_bytes=2,
                             pages_total=2, now=T0) is True
    job = ledger.job(failed)
    assert (job.state, job.pages_total, job.spool_path, job.sha256, job.error) == \
        ("queued", 2, "/spool/x.pdf", "new", None)
    assert _pages(ledger, failed) == [(1, "queued", 0), (2, "queued", 0)]
    assert ledger.reopen_job(failed, spool_path="/s", sha256="n", size_bytes=1, pages_total=1) is False
    paged = add(ledger, "p", 1)
    ledger.fail_job(paged, "x")
    assert ledger.reopen_job(paged, spool_path="/s", sha256="n", size_bytes=1, pages_total=1) is False


def test_fail_job(ledger: Ledger) -> None:
    job_id = add(ledger, "a", 2)
    ledger.claim_pages("w", n=1, now=T0)
    assert ledger.fail_job(job_id, "outbox not writable", now=T0) is True
    assert _pages(ledger, job_id) == [(1, "failed", 1), (2, "failed", 0)]
    assert ledger.fail_job(job_id, "again") is False
    done = add(ledger, "b", 1)
    _run_to_done(ledger, done)
    ledger.finish_job(done, "/out/b.md")
    assert ledger.fail_job(done, "late") is False


# -- workers, heartbeats, status --------------------------------------------------------------------
def _beat(ledger: Ledger, worker: str, now, **kw) -> None:
    args = dict(backend="cpu", active_memory_bytes=100, peak_memory_bytes=200, cache_memory_bytes=5,
                memory_limit_bytes=1000, pages_done=0, tokens_per_s=12.5, current_page=None)
    ledger.record_heartbeat(worker, **{**args, **kw}, now=now)


def test_heartbeat_updates_worker_renews_leases_and_keeps_24h(ledger: Ledger, db: Db) -> None:
    job_id = add(ledger, "a", 1)
    ledger.register_worker("w", host="h", pid=7, backend="cpu", device_name="cpu", now=T0)
    ledger.claim_pages("w", lease_s=60, now=T0)
    _beat(ledger, "w", T0 + 50 * S, current_page=f"{job_id}:1", state=WorkerState.BUSY, pages_done=4, lease_s=60)
    assert ledger.rescue_expired(now=T0 + 100 * S) == 0          # the heartbeat renewed the lease
    [w] = ledger.workers_status(now=T0 + 60 * S)
    assert (w["state"], w["current_page"], w["pages_done"], w["heartbeat_age_s"]) == (WorkerState.BUSY, f"{job_id}:1", 4, 10.0)
    for hours in (1, 23, 25):
        _beat(ledger, "w", T0 + timedelta(hours=hours))
    kept = [from_text(a) for (a,) in db.raw("SELECT at FROM heartbeats ORDER BY at")]
    assert kept == [T0 + timedelta(hours=h) for h in (1, 23, 25)]
    _beat(ledger, "w", T0 + timedelta(hours=26))
    assert len(db.raw("SELECT at FROM heartbeats")) == 3


def test_workers_status_shape_and_liveness(ledger: Ledger) -> None:
    for wid in ("live", "stopped", "dead"):
        ledger.register_worker(wid, host="h", pid=1, backend="metal", device_name="M4", now=T0)
    _beat(ledger, "live", T0 + 20 * S, peak_memory_bytes=300)
    ledger.set_worker_state("stopped", WorkerState.STOPPED)
    ledger.set_worker_state("dead", WorkerState.LOAD_FAILED, error="no network")
    ledger.set_worker_state("dead", WorkerState.DEAD)
    # stopped/dead workers stay listed while their last heartbeat is under 10 minutes old
    status = ledger.workers_status(now=T0 + 11 * 60 * S)
    assert [w["id"] for w in status] == ["live"]
    status = ledger.workers_status(now=T0 + 5 * 60 * S)
    assert [w["id"] for w in status] == ["dead", "live", "stopped"]
    expected_keys = {"id", "host", "pid", "backend", "device_name", "state", "started_at",
                     "heartbeat_age_s", "current_page", "pages_done", "active_memory_bytes",
                     "peak_memory_bytes", "cache_memory_bytes", "memory_limit_bytes", "tokens_per_s",
                     "batch", "pages_in_flight"}
    assert expected_keys <= set(status[0])
    by_id = {w["id"]: w for w in status}
    assert (by_id["live"]["peak_memory_bytes"], by_id["live"]["tokens_per_s"]) == (300, 12.5)
    assert by_id["stopped"]["active_memory_bytes"] is None           # never sent a heartbeat
    assert by_id["dead"]["error"] == "no network"


def test_heartbeat_records_batch_and_pages_in_flight(ledger: Ledger, db: Db) -> None:
    ledger.register_worker("w", host="h", pid=1, backend="cuda", device_name="H200", batch=32, now=T0)
    [w] = ledger.workers_status(now=T0)
    assert (w["batch"], w["pages_in_flight"]) == (32, 0)
    _beat(ledger, "w", T0 + 5 * S, batch=48, pages_in_flight=40, tokens_per_s=2100.0,
          state=WorkerState.BUSY)
    [w] = ledger.workers_status(now=T0 + 6 * S)
    assert (w["batch"], w["pages_in_flight"], w["tokens_per_s"]) == (48, 40, 2100.0)
    assert db.raw("SELECT batch, pages_in_flight, tokens_per_s FROM heartbeats") == [(48, 40, 2100.0)]
    _beat(ledger, "w", T0 + 10 * S)                      # an older caller: one page, none in flight
    assert db.raw("SELECT batch, pages_in_flight FROM workers") == [(1, 0)]
    ledger.register_worker("w", host="h", pid=2, backend="cuda", device_name="H200", now=T0)
    assert db.raw("SELECT batch, pages_in_flight FROM workers") == [(1, 0)]


def test_an_ended_worker_has_nothing_in_flight(ledger: Ledger) -> None:
    for wid in ("stopped", "dead"):
        ledger.register_worker(wid, host="h", pid=1, backend="cpu", device_name="cpu", now=T0)
        _beat(ledger, wid, T0, batch=8, pages_in_flight=8, state=WorkerState.BUSY)
    ledger.set_worker_state("stopped", WorkerState.STOPPED)
    ledger.mark_workers_dead("h", ["stopped"])
    assert {(w["id"], w["batch"], w["pages_in_flight"]) for w in ledger.workers_status(now=T0)} == \
        {("stopped", 8, 0), ("dead", 8, 0)}


def test_status_splits_running_pages_into_in_flight(ledger: Ledger) -> None:
    job_id = add(ledger, "a", 12)
    for wid, n, flying, rate in (("a", 5, 4, 900.0), ("b", 4, 4, 700.0), ("idle", 0, 0, 50.0)):
        ledger.register_worker(wid, host="h", pid=1, backend="cuda", device_name="H200", now=T0)
        if n:
            ledger.claim_pages(wid, n=n, now=T0)
        _beat(ledger, wid, T0, batch=8, pages_in_flight=flying, tokens_per_s=rate,
              state=WorkerState.BUSY if n else WorkerState.IDLE)
    ledger.register_worker("gone", host="h", pid=1, backend="cuda", device_name="H200", now=T0)
    ledger.claim_pages("gone", n=2, now=T0)
    _beat(ledger, "gone", T0, batch=8, pages_in_flight=2, tokens_per_s=300.0, state=WorkerState.BUSY)
    ledger.mark_workers_dead("h", ["a", "b", "idle"])    # its 2 pages stay running until rescued
    report = ledger.status(now=T0 + S)
    assert report["counts"]["pages"]["running"] == 11 and job_id
    # the idle worker's last rate and the dead worker's pages are history, not work in progress
    assert report["in_flight"] == {"pages_in_flight": 8, "tokens_per_s": 1600.0}
    ledger.set_worker_state("a", WorkerState.STOPPED)
    ledger.set_worker_state("b", WorkerState.STOPPED)
    assert ledger.status(now=T0 + S)["in_flight"] == {"pages_in_flight": 0, "tokens_per_s": None}


def test_mark_workers_dead(ledger: Ledger) -> None:
    for wid, host in (("a", "h"), ("b", "h"), ("c", "other"), ("d", "h")):
        ledger.register_worker(wid, host=host, pid=1, backend="cpu", device_name="cpu")
    ledger.set_worker_state("d", WorkerState.STOPPED)
    assert ledger.mark_workers_dead("h", ["a"]) == 1
    states = {w["id"]: w["state"] for w in ledger.workers_status()}
    assert states == {"a": WorkerState.STARTING, "b": WorkerState.DEAD, "c": WorkerState.STARTING,
                      "d": WorkerState.STOPPED}
    assert ledger.mark_workers_dead("h", []) == 1


def test_counts_and_throughput(ledger: Ledger) -> None:
    empty = ledger.counts()
    assert empty == {"jobs": {"queued": 0, "running": 0, "done": 0, "failed": 0, "duplicate": 0},
                     "pages": {"queued": 0, "running": 0, "done": 0, "failed": 0}}
    assert ledger.throughput(now=T0) == {"pages_per_min": None, "pages_per_min_5": 0.0,
                                         "pages_per_min_60": 0.0, "eta_s": 0.0}
    job_id = add(ledger, "a", 10)
    for minutes_ago in (2, 30, 90):
        [p] = ledger.claim_pages("w", now=T0 - minutes_ago * 60 * S)
        ledger.complete_page(job_id, p.page_no, "w", text="", now=T0 - minutes_ago * 60 * S)
    ledger.claim_pages("w", now=T0)
    counts = ledger.counts()
    assert counts["pages"] == {"queued": 6, "running": 1, "done": 3, "failed": 0}
    assert counts["jobs"]["running"] == 1
    tp = ledger.throughput(now=T0)
    # A rate is over the part of the window that held work: 1 page in the 2 minutes since it
    # finished; 2 pages in the 30 minutes since the first of them.
    assert tp["pages_per_min_5"] == pytest.approx(1 / 2)
    assert tp["pages_per_min_60"] == pytest.approx(2 / 30)
    # one page in the last 10 minutes is no pace: the rate falls back to the 5-min figure
    assert tp["pages_per_min"] == pytest.approx(1 / 2)
    assert tp["eta_s"] == pytest.approx(7 / (1 / 2) * 60)
    later = ledger.throughput(now=T0 + 10 * 60 * S)                  # only the 60-min figure
    assert later["pages_per_min_5"] == 0 and later["eta_s"] == pytest.approx(7 / (2 / 40) * 60)
    assert ledger.throughput(now=T0 + 5 * 3600 * S)["eta_s"] is None  # no rate at all
    status = ledger.status(now=T0)
    assert set(status) == {"counts", "workers", "throughput", "in_flight"} and status["counts"] == counts


def test_throughput_right_after_a_start_is_not_diluted(ledger: Ledger) -> None:
    job_id = add(ledger, "burst", 40)
    for n in range(40):  # 40 pages in the 8 s before T0
        [p] = ledger.claim_pages("w", now=T0 - (8 - n * 0.2) * S)
        ledger.complete_page(job_id, p.page_no, "w", text="", now=T0 - (8 - n * 0.2) * S)
    tp = ledger.throughput(now=T0)
    assert tp["pages_per_min_5"] == pytest.approx(40.0)  # over the one-minute floor, not 5 min
    assert tp["pages_per_min"] == pytest.approx(19 / 3.8 * 60)   # the pace of the last 20 pages
    assert tp["eta_s"] == 0.0


def test_the_rate_and_eta_follow_the_pace_of_the_last_pages(ledger: Ledger) -> None:
    # The hostile trial's case: a burst of 10 pages in 6 s, 5 left. The old figure divided by
    # at least a minute (10 pages/min, ETA 30 s); the pace is 90 pages/min, ETA ~3 s.
    job_id = add(ledger, "burst", 15)
    for n in range(10):
        at = T0 - (6 - n * 6 / 9) * S
        [p] = ledger.claim_pages("w", now=at)
        ledger.complete_page(job_id, p.page_no, "w", text="", now=at)
    tp = ledger.throughput(now=T0)
    assert tp["pages_per_min"] == pytest.approx(90.0)
    assert tp["eta_s"] == pytest.approx(5 / 90 * 60)


def test_meta_and_events(ledger: Ledger) -> None:
    assert ledger.get_meta("pool") is None
    ledger.set_meta("pool", "3")
    ledger.set_meta("pool", "4")
    assert ledger.get_meta("pool") == "4"
    ledger.set_meta("pool", None)
    assert ledger.get_meta("pool") is None
    job_id = add(ledger)
    ledger.add_event(job_id, "outbox_written", "/out/a.md", now=T0, page_no=None)
    ledger.add_event(None, "daemon_started")
    assert ledger.show_job(job_id)["events"][-1]["kind"] == "outbox_written"


# a user's query reads the stored text as a time
_SAME_MOMENT = {
    "sqlite": "julianday(created_at) = julianday('2025-03-01 12:00:00')",
    "postgresql": "created_at::timestamptz = '2025-03-01 12:00:00+00'",
}


def test_times_are_utc_iso_text_the_engine_can_read(ledger: Ledger, db: Db) -> None:
    add(ledger, now=T0)
    assert db.raw(f"SELECT created_at, {_SAME_MOMENT[db.dialect]} FROM jobs") == \
        [("2025-03-01T12:00:00.000000Z", True)]


def test_byte_counts_past_32_bits(ledger: Ledger) -> None:
    big = 48 * 2**30                                   # a 48 GB unified-memory Mac
    job_id = ledger.add_job(inbox="/in", source_path="/in/huge.pdf", spool_path="/spool/huge.pdf",
                            sha256="h", size_bytes=5 * 2**30, pages_total=1).job_id
    ledger.register_worker("w", host="h", pid=1, backend="metal", device_name="M4", now=T0)
    _beat(ledger, "w", T0, active_memory_bytes=big, peak_memory_bytes=big, cache_memory_bytes=big,
          memory_limit_bytes=big)
    [w] = ledger.workers_status(now=T0)
    assert (w["active_memory_bytes"], w["memory_limit_bytes"]) == (big, big)
    assert ledger.job(job_id).size_bytes == 5 * 2**30


# -- engine behaviour -------------------------------------------------------------------------------
@pytest.mark.sqlite_only
def test_connection_pragmas(ledger: Ledger) -> None:
    with ledger._engine.connect() as conn:
        get = lambda name: conn.exec_driver_sql(f"PRAGMA {name}").scalar()  # noqa: E731
        assert (get("journal_mode"), get("synchronous"), get("foreign_keys")) == ("wal", 2, 1)
        assert get("busy_timeout") >= 30000


_BUSY = {"sqlite": "database is locked", "postgresql": "lock timeout"}


def test_write_waits_for_the_lock_and_retries_past_busy_timeout(db_url: str, db: Db) -> None:
    ledger = Ledger(db_url, busy_timeout_ms=20)    # PostgreSQL: lock_timeout = 20 ms
    busy_errors: list[str] = []
    event.listen(ledger._engine, "handle_error", lambda ctx: busy_errors.append(str(ctx.original_exception)))
    outcome: list[object] = []
    writer = threading.Thread(target=lambda: outcome.append(ledger.set_meta("k", "v") or "ok"))
    try:
        with db.hold_writes() as holder:           # another process holds the write lock
            writer.start()
            wait_for(lambda: len(busy_errors) >= 2, timeout=20, message="the writer to time out twice")
            assert outcome == [] and all(_BUSY[db.dialect] in e for e in busy_errors)
            holder.execute("COMMIT")
        writer.join(20)
        assert outcome == ["ok"] and ledger.get_meta("k") == "v"
    finally:
        writer.join(20)
        ledger.close()


def test_reads_do_not_wait_for_a_writer(ledger: Ledger, db: Db) -> None:
    add(ledger)
    with db.hold_writes() as holder:
        holder.execute("UPDATE jobs SET state = 'running'")
        assert ledger.counts()["jobs"]["queued"] == 1     # the read sees the last commit


def test_two_threads_share_one_ledger(ledger: Ledger) -> None:
    job_id = add(ledger, "a", 200)
    ledger.register_worker("w", host="h", pid=1, backend="cpu", device_name="cpu")
    stop, errors = threading.Event(), []

    def heartbeat() -> None:
        try:
            while not stop.is_set():
                _beat(ledger, "w", None)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    beater = threading.Thread(target=heartbeat)
    beater.start()
    try:
        _run_to_done(ledger, job_id, now=None)
    finally:
        stop.set()
        beater.join(10)
    assert errors == [] and ledger.job_complete(job_id)


def test_in_memory_database_is_refused() -> None:
    with pytest.raises(ValueError):
        Ledger("sqlite:///:memory:")


def test_retried_job_with_every_page_done_can_still_finish(ledger: Ledger) -> None:
    job_id = add(ledger, "a", 2)
    _run_to_done(ledger, job_id)
    ledger.fail_job(job_id, "outbox not writable")          # failed after its last page
    assert ledger.retry_jobs([job_id]) == [job_id]
    assert ledger.job(job_id).state == "queued" and ledger.claim_pages("w") == []
    assert ledger.completed_jobs_not_done() == [job_id]
    assert ledger.finish_job(job_id, "/out/a.md") is True
    kinds = [e["kind"] for e in ledger.show_job(job_id)["events"] if e["page_no"] is None]
    assert kinds[-3:] == ["job_queued", "job_running", "job_done"]


@pytest.mark.sqlite_only
def test_writes_take_the_write_lock_at_begin_and_reads_do_not(ledger: Ledger, db: Db) -> None:
    import sqlite3

    def other_writer_can_begin() -> bool:
        other = sqlite3.connect(db.path, timeout=0, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")
            other.execute("ROLLBACK")
            return True
        except sqlite3.OperationalError as exc:
            assert "locked" in str(exc)
            return False
        finally:
            other.close()

    # nothing written yet inside either transaction: only BEGIN IMMEDIATE can hold the lock
    assert ledger._write(lambda conn: other_writer_can_begin()) is False
    assert ledger._read(lambda conn: other_writer_can_begin()) is True


# -- PostgreSQL's own machinery ---------------------------------------------------------------------
@pytest.mark.postgresql_only
def test_postgresql_sessions(ledger: Ledger, db: Db) -> None:
    def show(conn) -> tuple:
        return tuple(conn.exec_driver_sql(f"SHOW {name}").scalar()
                     for name in ("transaction_isolation", "transaction_read_only", "lock_timeout"))

    # reads: one snapshot for the whole transaction (status() agrees with itself), and read-only
    for _ in range(2):                       # the pooled connection is reset after each read
        assert ledger._write(show) == ("read committed", "off", "30s")
        assert ledger._read(show) == ("repeatable read", "on", "30s")
    # a bare postgresql:// would mean SQLAlchemy's psycopg2 driver, which ocrd does not install;
    # the user's own session options are kept next to lock_timeout
    url = db.url.replace("postgresql+psycopg://", "postgresql://") + "&options=-c%20work_mem%3D8MB"
    with Ledger(url, busy_timeout_ms=5000) as other:
        assert other._read(lambda c: (c.exec_driver_sql("SHOW work_mem").scalar(),
                                      c.exec_driver_sql("SHOW lock_timeout").scalar())) == ("8MB", "5s")


@pytest.mark.postgresql_only
@pytest.mark.timeout(30)
def test_a_claim_skips_pages_another_claim_holds(ledger: Ledger, db: Db) -> None:
    job_id = add(ledger, "a", 3)
    with closing(db.connect()) as other:
        other.execute("BEGIN")
        other.execute("SELECT id FROM pages WHERE page_no = 1 FOR UPDATE")   # a claim in flight
        # without SKIP LOCKED this would wait on page 1 (30 s lock_timeout, then retries)
        got = ledger.claim_pages("w", n=2, now=T0)
        assert [(p.job_id, p.page_no) for p in got] == [(job_id, 2), (job_id, 3)]
        other.execute("ROLLBACK")
    assert [p.page_no for p in ledger.claim_pages("v", n=3, now=T0)] == [1]
