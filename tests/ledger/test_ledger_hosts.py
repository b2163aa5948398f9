"""Several hosts on one ledger (issue 12), at the Ledger's level: whose clock "now" is, leases a
stale worker no longer holds, documents' bytes in `blobs`, who delivers a job, the `hosts` table
and per-host meta keys. On SQLite there is one host: the same calls are formalities there."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from datetime import timedelta
from pathlib import Path

import pytest
from helpers import process_state, wait_for
from ledger_testkit import T0, Db, add

from ocrd.ledger import clock as clock_module
from ocrd.ledger import hosts as hosts_module
from ocrd.ledger.clock import LedgerClock, utc_now
from ocrd.ledger.states import JobState, PageState
from ocrd.ledger.store import Ledger

S = timedelta(seconds=1)
SKEW = timedelta(minutes=10)


@pytest.fixture
def other(db_url: str):
    """A second host's Ledger on the same database ("host-b"; the `ledger` fixture's host is
    this machine's name)."""
    led = Ledger(db_url, host="host-b")
    yield led
    led.close()


def _server_now(db: Db):
    if db.dialect == "sqlite":
        return utc_now()
    return db.raw("SELECT clock_timestamp()")[0][0]


# -- the clock --------------------------------------------------------------------------------------
def test_the_clock_is_the_database_s_on_postgresql_and_the_host_s_on_sqlite(
        db_url: str, db: Db, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(clock_module, "_SKEW", SKEW)        # this host's clock: 10 minutes fast
    with Ledger(db_url, host="skewed") as led:
        if db.dialect == "sqlite":    # one host: its own clock is everyone's
            assert led.clock.offset_s == 0
            assert abs((led.clock() - utc_now()).total_seconds()) < 1
            return
        assert abs((led.clock() - _server_now(db)).total_seconds()) < 2   # measured at first use
        assert abs(led.clock.offset_s + SKEW.total_seconds()) < 2
        # the offset is measured again (every OFFSET_REFRESH_S): a wrong one is corrected
        led.clock._offset, led.clock._next = timedelta(hours=1), 0.0
        assert abs((led.clock() - _server_now(db)).total_seconds()) < 2
        # an explicit `now` is taken as given (the tests' seam), never shifted
        assert led.clock(T0) == T0


def test_a_clock_that_cannot_reach_the_database_keeps_its_last_offset() -> None:
    class Away:
        def connect(self):
            raise OSError("server away")

    clock = LedgerClock(Away())   # type: ignore[arg-type]
    clock._offset = timedelta(seconds=-3)
    assert abs((clock() - (utc_now() - 3 * S)).total_seconds()) < 1
    assert clock.offset_s == -3


@pytest.mark.postgresql_only
def test_a_host_ten_minutes_fast_does_not_take_a_live_lease(
        ledger: Ledger, db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    job_id = add(ledger, "a", 2, now=None)
    claimed = ledger.claim_pages("host-a-w", n=2, lease_s=60)   # a live lease, by the database's clock
    assert len(claimed) == 2
    monkeypatch.setattr(clock_module, "_SKEW", SKEW)
    with Ledger(db_url, host="host-b") as fast:
        assert fast.rescue_expired() == 0
        assert fast.claim_pages("host-b-w", n=2) == []
        # ...and the lease it takes itself is a minute long by the database's clock too
        add(fast, "b", 1, now=None)
        (mine,) = fast.claim_pages("host-b-w", n=1, lease_s=60)
        expires = fast.show_job(mine.job_id)["pages"][0]["lease_expires_at"]
    monkeypatch.setattr(clock_module, "_SKEW", timedelta(0))
    assert abs((ledger.clock() + 60 * S - clock_module.from_text(expires)).total_seconds()) < 5
    assert [p["state"] for p in ledger.show_job(job_id)["pages"]] == ["running", "running"]


# -- leases -----------------------------------------------------------------------------------------
def test_a_stale_worker_s_late_completion_is_refused(ledger: Ledger, db: Db) -> None:
    """A worker that slept past its lease: the page was rescued and claimed by another worker;
    the sleeper's completion (and failure, and lease renewal) changes nothing."""
    job_id = add(ledger, "a", 1)
    ledger.claim_pages("sleeper", n=1, lease_s=60, now=T0)
    assert ledger.rescue_expired(now=T0 + 61 * S) == 1
    assert [(p.job_id, p.page_no) for p in ledger.claim_pages("awake", n=1, lease_s=60, now=T0 + 62 * S)] == [(job_id, 1)]

    assert ledger.complete_page(job_id, 1, "sleeper", text="late", now=T0 + 63 * S) is None
    assert ledger.renew_leases("sleeper", lease_s=60, now=T0 + 63 * S) == 0
    outcome = ledger.fail_page(job_id, 1, "sleeper", "late failure", now=T0 + 63 * S)
    assert (outcome.state, outcome.job_failed) == (PageState.RUNNING, False)
    page = ledger.show_job(job_id)["pages"][0]
    assert (page["state"], page["lease_owner"]) == ("running", "awake")
    assert db.raw("SELECT text FROM pages WHERE job_id = ?", (job_id,)) == [(None,)]

    assert ledger.complete_page(job_id, 1, "awake", text="fresh", now=T0 + 64 * S) is True
    assert ledger.complete_page(job_id, 1, "sleeper", text="later still", now=T0 + 65 * S) is None
    assert ledger.page_texts(job_id) == ["fresh"]
    assert ledger.job(job_id).pages_done == 1
    assert db.raw("SELECT COUNT(*) FROM events WHERE kind = 'page_done'") == [(1,)]


# A worker's heartbeat renews its leases in a transaction, and its host goes to sleep right there.
_FROZEN_IN_A_WRITE = """
import os, signal, sys
from ocrd.ledger.store import Ledger
led, slept = Ledger(sys.argv[1], busy_timeout_ms=500), []
def renew(conn):
    renewed = led._renew(conn, "sleeper", 60, led.clock())
    if not slept:
        slept.append(1)
        print("renewed", renewed, flush=True)
        os.kill(os.getpid(), signal.SIGSTOP)
    return renewed
print("awake, renewed", led._write(renew), flush=True)
"""


@pytest.mark.postgresql_only
def test_a_host_asleep_inside_a_write_does_not_wedge_the_others(ledger: Ledger, db_url: str) -> None:
    """Its row locks would hold every other host's lease rescue (and any write to those pages)
    until it wakes, hours later maybe: the server ends a session idle inside a transaction for
    longer than a lock is waited for, and the sleeper, awake, runs its write again, which now
    finds its lease gone."""
    job_id = add(ledger, "a", 1, now=None)
    ledger.claim_pages("sleeper", n=1, lease_s=1)
    child = subprocess.Popen([sys.executable, "-c", _FROZEN_IN_A_WRITE, db_url],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().split() == ["renewed", "1"]
        wait_for(lambda: process_state(child.pid) == "T", 10, 0.01, "the sleeper to stop")
        rescued: list[int] = []
        rescue = threading.Thread(target=lambda: rescued.append(
            ledger.rescue_expired(now=ledger.clock() + 120 * S)), daemon=True)
        rescue.start()
        rescue.join(20)
        assert rescued == [1], "the lease rescue waited on a sleeping host's locks"
        (page,) = ledger.claim_pages("awake", n=1)
        os.kill(child.pid, signal.SIGCONT)
        assert child.stdout.readline().split() == ["awake,", "renewed", "0"]
        assert child.wait(10) == 0
        assert ledger.complete_page(job_id, 1, "awake", text="t")
    finally:
        if child.poll() is None:
            os.kill(child.pid, signal.SIGCONT)
            child.kill()
            child.wait(10)


# -- the documents' bytes -----------------------------------------------------------------------------
def _document(tmp_path: Path, name: str, size: int) -> Path:
    path = tmp_path / "spool" / name
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(os.urandom(size))
    return path


def _add_file(ledger: Ledger, path: Path, pages: int = 1) -> int:
    return ledger.add_job(inbox="/in", source_path=f"/in/{path.name}", spool_path=str(path),
                          sha256=f"sha-{path.name}", size_bytes=path.stat().st_size,
                          pages_total=pages).job_id


def test_a_document_travels_in_blobs_until_its_job_ends(
        ledger: Ledger, other: Ledger, db: Db, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hosts_module, "CHUNK_BYTES", 1000)        # several chunks
    done_doc, failed_doc = _document(tmp_path, "a.pdf", 4500), _document(tmp_path, "b.pdf", 10)
    done_id, failed_id = _add_file(ledger, done_doc), _add_file(ledger, failed_doc)
    copy = tmp_path / "fetched" / "a.pdf"
    copy.parent.mkdir()
    chunks = "SELECT COUNT(*) FROM blobs WHERE job_id = ?"
    if db.dialect == "sqlite":    # one host: workers read the spool file itself
        assert db.raw("SELECT COUNT(*) FROM blobs") == [(0,)]
        assert not other.fetch_document(done_id, copy) and not copy.exists()
        return
    assert db.raw(chunks, (done_id,)) == [(5,)] and db.raw(chunks, (failed_id,)) == [(1,)]
    assert other.fetch_document(done_id, copy)
    assert copy.read_bytes() == done_doc.read_bytes()
    assert [p.name for p in copy.parent.iterdir()] == ["a.pdf"]   # no temp file left behind

    (page,) = other.claim_pages("host-b-w", n=1)
    assert other.complete_page(page.job_id, page.page_no, "host-b-w", text="t")
    assert db.raw(chunks, (done_id,)) == [(5,)]                    # done pages: the job goes on
    assert ledger.finish_job(done_id, "/out/a.md")
    assert db.raw(chunks, (done_id,)) == [(0,)]
    assert not other.fetch_document(done_id, tmp_path / "fetched" / "again.pdf")

    assert ledger.fail_job(failed_id, "broken")
    assert db.raw("SELECT COUNT(*) FROM blobs") == [(0,)]
    assert ledger.retry_jobs([failed_id]) == [failed_id]           # a retry shares it again
    assert db.raw(chunks, (failed_id,)) == [(1,)]


# -- who delivers -----------------------------------------------------------------------------------
def test_only_the_ingesting_host_delivers_its_jobs(ledger: Ledger, other: Ledger, db: Db) -> None:
    mine = add(ledger, "mine", 1, now=None)
    theirs = add(other, "theirs", 1, now=None)
    assert [r for (r,) in db.raw("SELECT host FROM jobs ORDER BY id")] == [ledger.host, "host-b"]
    for job_id, worker in ((mine, "w1"), (theirs, "w2")):
        (page,) = ledger.claim_pages(worker, n=1)
        assert ledger.complete_page(page.job_id, page.page_no, worker, text="t")
    if db.dialect == "sqlite":
        assert ledger.delivers("host-b") and ledger.delivers(ledger.host) and ledger.delivers(None)
        assert ledger.completed_jobs_not_done() == [mine, theirs]
        return
    assert ledger.delivers(ledger.host) and ledger.delivers(None) and not ledger.delivers("host-b")
    assert other.delivers("host-b") and not other.delivers(ledger.host)
    assert ledger.completed_jobs_not_done() == [mine]
    assert other.completed_jobs_not_done() == [theirs]
    assert [j.id for j in other.jobs_in_states([JobState.RUNNING])] == [theirs]


def test_failed_jobs_still_in_the_spool_are_the_owner_s_to_move(ledger: Ledger, other: Ledger, db: Db) -> None:
    job_id = ledger.add_job(inbox="/in", source_path="/in/x.pdf", spool_path="/state/spool/x.pdf",
                            sha256="x", size_bytes=1, pages_total=1).job_id
    assert ledger.fail_job(job_id, "page 1: broken")
    assert ledger.failed_in_spool("/state/spool", settled_s=10) == []    # not settled yet
    assert ledger.failed_in_spool("/state/spool", settled_s=-10) == [job_id]
    assert ledger.failed_in_spool("/other/spool", settled_s=-10) == []
    expected = [job_id] if db.dialect == "sqlite" else []
    assert other.failed_in_spool("/state/spool", settled_s=-10) == expected


# -- hosts --------------------------------------------------------------------------------------------
def test_hosts_status_tells_running_stopped_and_dead(ledger: Ledger, other: Ledger) -> None:
    started = ledger.clock()
    ledger.host_seen(pid=11, started_at=started, inboxes=1, workers=0)
    other.host_seen(pid=22, started_at=started, inboxes=0, workers=2, backend="cuda", device_name="H200")
    add(ledger, "a", 1, now=None)
    now = ledger.clock()
    rows = {h["name"]: h for h in ledger.hosts_status(now)}
    assert set(rows) == {ledger.host, "host-b"}
    assert (rows["host-b"]["state"], rows["host-b"]["pid"], rows["host-b"]["workers"],
            rows["host-b"]["device_name"]) == ("running", 22, 2, "H200")
    assert (rows[ledger.host]["inboxes"], rows[ledger.host]["delivering"]) == (1, 1)
    # a running host unseen for more than HOST_DEAD_AFTER is dead
    later = now + hosts_module.HOST_DEAD_AFTER + S
    assert {h["name"]: h["state"] for h in ledger.hosts_status(later)} == {
        ledger.host: "dead", "host-b": "dead"}
    other.host_seen(pid=22, started_at=started, inboxes=0, workers=2)   # seen again: alive
    other.host_stopped()
    assert {h["name"]: h["state"] for h in ledger.hosts_status(later)} == {
        ledger.host: "dead", "host-b": "stopped"}


def test_meta_keys_are_each_host_s_own_on_postgresql(ledger: Ledger, other: Ledger, db: Db) -> None:
    ledger.set_meta("model_status", "ok here")
    other.set_meta("model_status", "loading there")
    if db.dialect == "sqlite":     # one host, one set of keys
        assert ledger.get_meta("model_status") == other.get_meta("model_status") == "loading there"
    else:
        assert ledger.get_meta("model_status") == "ok here"
        assert other.get_meta("model_status") == "loading there"
        with Ledger(db.url, host="host-c") as third:
            assert third.get_meta("model_status") is None
    # `ocrd pause` holds the whole queue, whichever host asked
    assert ledger.set_paused(True)
    assert other.paused_since() is not None


def test_a_host_name_another_machine_s_live_daemon_uses_is_refused(db_url: str, db: Db) -> None:
    """Two machines both called `raspberrypi` would release each other's pages and deliver each
    other's documents into the wrong folders: the second is refused at start while the first is
    alive. The same machine restarting (same state dir id), or a dead name, is fine."""
    with Ledger(db_url, host="raspberrypi") as first, Ledger(db_url, host="raspberrypi") as second:
        first.host_seen(pid=11, started_at=first.clock(), inboxes=1, workers=1, instance="machine-1")
        second.take_host_name("machine-1")               # the same machine, restarted
        if db.dialect == "sqlite":                       # one host by definition: nothing to check
            second.take_host_name("machine-2")
            return
        with pytest.raises(hosts_module.HostNameTaken, match="runs as host 'raspberrypi'"):
            second.take_host_name("machine-2")
        first.host_stopped()
        second.take_host_name("machine-2")               # stopped: the name is free
        first.host_seen(pid=11, started_at=first.clock(), inboxes=1, workers=1, instance="machine-1")
        db.raw("UPDATE hosts SET seen_at = '2000-01-01T00:00:00.000000Z'")   # unseen: dead
        second.take_host_name("machine-2")
