"""Several machines, one queue (issue 12): `ocrd run` daemons of different hosts share one
PostgreSQL ledger. Each "host" here is a daemon on this machine with its own state dir and
`[ledger] host` name; nothing is shared between them but the database (documents travel in it).

Leases are 8 s (the OCRD_TEST_LEASE_S seam, daemon/supervisor.py) where a test waits for a lost
worker's pages to come back; the clock-skew test keeps the real 60 s lease.
"""

from __future__ import annotations

import json
import os
import signal
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

import samples
from helpers import process_state, wait_for

from ocrd.ledger.clock import to_text

LEASE_S = "8"
A, B = "host-a", "host-b"


def _host(pg_ledger: tuple[str, str], make_daemon: Any, name: str, *, workers: int,
          inbox: bool = True, lease: bool = True, env: dict[str, str] | None = None,
          max_tokens: int = 12) -> Any:
    url, dsn = pg_ledger
    seams = {"OCRD_TEST_LEASE_S": LEASE_S} if lease else {}
    return make_daemon(workers=workers, has_inbox=inbox, pg_dsn=dsn, env={**seams, **(env or {})},
                       tables={"ledger": {"url": url, "host": name}}, max_tokens=max_tokens)


def _drop(d: Any, count: int, pdf_pages: int = 2, first: int = 0) -> dict[str, int]:
    """`count` documents in d's inbox (doc<first>...), every third one a PDF of `pdf_pages`
    pages, the rest PNGs; returns name -> pages."""
    docs = {}
    for n in range(first, first + count):
        if n % 3 == 2:
            samples.write_pdf(d.inbox / f"doc{n:02}.pdf", pdf_pages)
            docs[f"doc{n:02}.pdf"] = pdf_pages
        else:
            samples.write_image(d.inbox / f"doc{n:02}.png", "PNG", n=n)
            docs[f"doc{n:02}.png"] = 1
    return docs


def _alive(*daemons: Any) -> None:
    """Fail at once, not at a deadline, when a daemon that should run has exited."""
    for d in daemons:
        if d.proc.poll() is not None:
            raise AssertionError(f"{d.root.name} exited with {d.proc.returncode} (see {d.log})")


def _workers_loaded(count: int, *daemons: Any) -> None:
    d = daemons[0]
    wait_for(lambda: _alive(*daemons) or d.scalar(
        "SELECT COUNT(*) FROM workers WHERE state IN ('idle', 'busy')") >= count,
        150, 0.2, f"{count} workers to load the model")


def _settled(a: Any, count: int, *others: Any, timeout: float = 180) -> None:
    """A's `count` jobs ended, the ingest's last step included, while A and `others` run."""
    def ended() -> bool:
        _alive(a, *others)
        done = [s for s in a.job_states().values() if s in ("done", "failed", "duplicate")]
        intents = a.state / "spool" / ".intents"
        return len(done) >= count and not (intents.is_dir() and any(intents.iterdir()))

    wait_for(ended, timeout, 0.2, f"{count} jobs to settle ({a.log})")


def _assert_delivered_once(a: Any, docs: dict[str, int]) -> None:
    """One markdown per document in A's outbox (no `name (2).md`), each page in it once, every
    original in A's archive, nothing left in the queue or in the ledger's blobs."""
    outputs = sorted(p.relative_to(a.outbox).as_posix() for p in a.outbox.rglob("*") if p.is_file())
    assert outputs == sorted(f"{Path(name).stem}.md" for name in docs)
    for name, pages in docs.items():
        text = (a.outbox / f"{Path(name).stem}.md").read_text()
        assert text.count("<!-- page ") == pages, name
        assert all(text.count(f"<!-- page {k} of {pages} -->") == 1 for k in range(1, pages + 1)), name
    assert sorted(p.name for p in a.archive.rglob("*") if p.is_file()) == sorted(docs)
    assert a.spool_files() == []
    assert a.query("SELECT state, COUNT(*) FROM jobs GROUP BY state") == [("done", len(docs))]
    assert a.query("SELECT state, COUNT(*) FROM pages GROUP BY state") == [("done", sum(docs.values()))]
    assert a.query("SELECT COUNT(*) FROM blobs") == [(0,)]
    # each page stored once: a completion after a lost lease was refused, never counted
    assert a.query("SELECT job_id, page_no FROM events WHERE kind = 'page_done' "
                   "GROUP BY job_id, page_no HAVING COUNT(*) > 1") == []
    assert a.query("SELECT DISTINCT host FROM jobs") == [(A,)]


def _done_by(d: Any, host: str) -> set[tuple[int, int]]:
    """Pages whose stored result came from a worker of `host` (worker ids start with it)."""
    return set(d.query("SELECT job_id, page_no FROM events WHERE kind = 'page_done' AND detail LIKE ?",
                       f"%worker {host}-%"))


def _claimed_by(d: Any, host: str, since: datetime) -> set[tuple[int, int]]:
    """Pages a worker of `host` claimed after `since` (the ledger's time)."""
    return set(d.query("SELECT job_id, page_no FROM events WHERE kind = 'page_running' AND detail LIKE ? "
                       "AND at > ?", f"%worker {host}-%", to_text(since)))


def _held_by(d: Any, worker_id: str) -> set[tuple[int, int]]:
    return set(d.query("SELECT job_id, page_no FROM pages WHERE state = 'running' AND lease_owner = ?",
                       worker_id))


def _log_events(d: Any, name: str) -> list[dict[str, Any]]:
    path = d.state / "logs" / "ocrd.log"
    lines = path.read_text(errors="replace").splitlines() if path.exists() else []
    events = []
    for line in lines:
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("event") == name:
            events.append(event)
    return events


def _server_now(d: Any) -> datetime:
    return d.query("SELECT clock_timestamp()")[0][0]


def test_an_ingest_only_host_and_a_worker_only_host_share_one_queue(pg_ledger, make_daemon) -> None:
    a = _host(pg_ledger, make_daemon, A, workers=0)            # inbox, ingest and delivery only
    b = _host(pg_ledger, make_daemon, B, workers=1, inbox=False)   # decodes only
    a.start()
    b.start()
    _workers_loaded(1, b, a)
    docs = _drop(a, 30)
    _settled(a, len(docs), b)
    _assert_delivered_once(a, docs)
    # every page decoded on B (A has no worker); B fetched the documents from the ledger
    assert _done_by(a, B) == set(a.query("SELECT job_id, page_no FROM pages"))
    assert list((b.state / "fetched").iterdir())
    # B has no inbox and delivers nothing: it never made A's folders, nor any of its own
    assert sorted(p.name for p in b.root.iterdir()) == ["daemon.out", "ocrd.toml", "state"]
    assert not {"outbox", "archive", "failed", "inbox", "ledger.db"} & {p.name for p in b.state.iterdir()}

    # the hosts table, and `ocrd status --json` on either host
    assert a.query("SELECT name, state, inboxes, workers FROM hosts ORDER BY name") == [
        (A, "running", 1, 0), (B, "running", 0, 1)]
    for d in (a, b):
        s = d.status()
        assert s["daemon"]["running"] and s["daemon"]["pid"] == d.proc.pid
        assert s["jobs"]["done"] == len(docs)
        assert {w["host"] for w in s["workers"]} == {B}
        assert sorted(h["name"] for h in s["hosts"]) == [A, B]

    # a second machine that takes A's name while A runs is refused at start: exit 78, one line
    twin = _host(pg_ledger, make_daemon, A, workers=0, inbox=False)
    twin.start()
    assert twin.proc.wait(timeout=120) == 78
    assert "runs as host 'host-a'" in twin.log.read_text()
    assert b.stop() == 0 and a.stop() == 0
    assert a.query("SELECT name, state FROM hosts ORDER BY name") == [(A, "stopped"), (B, "stopped")]


def test_a_host_killed_mid_run_its_pages_are_finished_by_the_other(pg_ledger, make_daemon) -> None:
    a = _host(pg_ledger, make_daemon, A, workers=1)
    b = _host(pg_ledger, make_daemon, B, workers=1, inbox=False)
    a.start()
    b.start()
    _workers_loaded(2, a, b)
    (b_worker,) = b.query("SELECT id FROM workers WHERE host = ?", B)[0]
    docs = _drop(a, 15, pdf_pages=3)
    # B mid-run: it has stored pages and holds others
    wait_for(lambda: _done_by(a, B) and _held_by(a, b_worker), 120, 0.05, "host-b mid-run")
    b.kill()                                          # kill -9 of B's daemon and of its workers
    for (pid,) in a.query("SELECT pid FROM workers WHERE host = ?", B):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    wait_for(lambda: all(process_state(pid) in "ZX"
                         for (pid,) in a.query("SELECT pid FROM workers WHERE host = ?", B)),
             10, 0.05, "host-b's workers gone")
    held = _held_by(a, b_worker)                      # frozen now: nobody renews these leases
    assert held, "host-b held no page when it was killed"

    _settled(a, len(docs))
    _assert_delivered_once(a, docs)
    # A took B's pages once their leases expired, and stored them itself
    assert held <= _done_by(a, A)
    for job_id, page_no in held:
        assert a.query("SELECT COUNT(*) FROM events WHERE job_id = ? AND page_no = ? AND kind = "
                       "'page_queued' AND detail LIKE '%lease expired%'", job_id, page_no) == [(1,)]
    assert _log_events(a, "leases_rescued")
    assert a.stop() == 0


def _sleep_between_transactions(d: Any, pid: int, worker_id: str,
                                refill: Callable[[], Any]) -> set[tuple[int, int]]:
    """SIGSTOP a worker at a moment it holds pages but no transaction open, and return its pages.
    (Asleep inside a transaction, its session is ended by the server after busy_timeout (30 s)
    and the worker, awake, may die of its dropped connection and be restarted: that case is
    tests/ledger's test_a_host_asleep_inside_a_write_does_not_wedge_the_others.)
    `refill()` drops more documents when the drop was all read (or held by the other host)
    before the worker was caught: on a slow machine a few tries can outlast it."""
    def holding() -> set[tuple[int, int]]:
        held = _held_by(d, worker_id)
        if not held and not any(d.inbox.iterdir()) and not d.query(
                "SELECT 1 FROM pages WHERE state = 'queued' LIMIT 1"):
            refill()
        return held

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        wait_for(holding, 60, 0.02, f"{worker_id} to hold pages")
        os.kill(pid, signal.SIGSTOP)
        wait_for(lambda: process_state(pid) == "T", 10, 0.01, f"{worker_id} to stop")
        since, held = _server_now(d), _held_by(d, worker_id)
        # a transaction begun before the stop and still open a second later is the sleeper's
        # (the others last milliseconds)
        settle = time.monotonic() + 1.0
        while held and time.monotonic() < settle:
            if not d.query("SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                           "AND pid <> pg_backend_pid() AND xact_start < ?", since):
                return held
            time.sleep(0.02)
        os.kill(pid, signal.SIGCONT)   # asleep mid-transaction (or holding nothing): again
    raise AssertionError(f"{worker_id} was never caught between transactions")


def test_a_host_whose_clock_is_ten_minutes_fast_takes_no_live_lease(pg_ledger, make_daemon) -> None:
    # the real 60 s lease: a host that believed its own clock would find every lease of the
    # other host 10 minutes expired, and take its pages while its worker decodes them
    # slow pages (300 tokens), so that B's lease rescue (every 5 s) runs a few times while A's
    # worker holds pages
    a = _host(pg_ledger, make_daemon, A, workers=1, lease=False, max_tokens=300)
    b = _host(pg_ledger, make_daemon, B, workers=1, inbox=False, lease=False, max_tokens=300,
              env={"OCRD_TEST_CLOCK_SKEW_S": "600"})
    a.start()
    b.start()
    _workers_loaded(2, a, b)
    docs = _drop(a, 15, pdf_pages=4)
    _settled(a, len(docs), b)
    _assert_delivered_once(a, docs)
    assert _done_by(a, A) and _done_by(a, B)          # both hosts held leases at once
    # no page was ever taken back: no rescue, no requeue, one attempt each
    assert a.query("SELECT COUNT(*) FROM events WHERE kind = 'page_queued'") == [(0,)]
    assert a.query("SELECT MAX(attempts) FROM pages") == [(1,)]
    assert a.query("SELECT COUNT(*) FROM pages WHERE error IS NOT NULL") == [(0,)]
    assert not _log_events(a, "leases_rescued") and not _log_events(b, "leases_rescued")
    # B wrote the database's time, not its own: nothing in the ledger is 10 minutes ahead
    now = _server_now(a)
    latest = max(datetime.fromisoformat(at) for (at,) in a.query("SELECT at FROM events"))
    assert (latest - now).total_seconds() < 5
    seen = {name: datetime.fromisoformat(at) for name, at in a.query("SELECT name, seen_at FROM hosts")}
    assert all(abs((at - now).total_seconds()) < 30 for at in seen.values()), seen
    assert b.stop() == 0 and a.stop() == 0


def test_a_sleeping_host_s_late_results_are_refused(pg_ledger, make_daemon) -> None:
    """A laptop that sleeps (SIGSTOP) past its lease: the other host's worker takes its pages; when
    it wakes (SIGCONT) and stores them, the ledger refuses them. A decodes 300 tokens a page, B
    12: B, awake, stores what it held while A is still decoding those pages (the lease owner
    check refuses them, not just the page being done already), and which result the ledger kept
    shows in its token count."""
    a = _host(pg_ledger, make_daemon, A, workers=1, max_tokens=300)
    b = _host(pg_ledger, make_daemon, B, workers=1, inbox=False)
    a.start()
    b.start()
    _workers_loaded(2, a, b)
    (a_worker,) = a.query("SELECT id FROM workers WHERE host = ?", A)[0]
    (b_worker, b_pid) = b.query("SELECT id, pid FROM workers WHERE host = ?", B)[0]
    docs = _drop(a, 15, pdf_pages=3)
    wait_for(lambda: _done_by(a, B), 120, 0.05, "host-b to store a page")
    held = _sleep_between_transactions(a, b_pid, b_worker,
                                       lambda: docs.update(_drop(a, 6, pdf_pages=3, first=len(docs))))
    asleep = _server_now(a)
    try:
        # past their leases, A's worker takes those pages (a page B claimed ahead later may
        # still be B's when it wakes: B stores that one, rightly)
        wait_for(lambda: _alive(a, b) or _claimed_by(a, A, asleep) & held, 60, 0.05,
                 "host-a to take host-b's pages")
        taken = _claimed_by(a, A, asleep) & held
    finally:
        os.kill(b_pid, signal.SIGCONT)
    # awake, B's worker finishes decoding what it held and tries to store it: refused
    wait_for(lambda: {(e["job_id"], e["page"]) for e in _log_events(b, "page_result_refused")} & taken,
             60, 0.1, "host-b's late results refused")
    _settled(a, len(docs), b)
    _assert_delivered_once(a, docs)
    assert taken <= _done_by(a, A) and not taken & _done_by(a, B)
    kept = {(j, p): (owner, tokens) for j, p, owner, tokens in a.query(
        "SELECT job_id, page_no, lease_owner, generation_tokens FROM pages")}
    assert {kept[k] for k in taken} == {(a_worker, 300)}
    assert b.stop() == 0 and a.stop() == 0
