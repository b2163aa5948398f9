"""What a PostgreSQL server does to a running daemon (issue 22): its backends killed, the server
stopped for longer than a reconnect, then started again. The daemon rides through: no document
stranded, none twice, no page charged an attempt, files dropped meanwhile kept safe, one line
for the outage instead of a traceback a tick.

The stop test runs a server of its own (it stops it); the kill test shares the session's."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Iterator

import pytest

import samples
from helpers import wait_for
from pgserver import find_bin_dir, start_server, stop_server

LEASE = {"OCRD_TEST_LEASE_S": "8"}


@pytest.fixture
def own_pg() -> Iterator[tuple[Any, str, str]]:
    """A PostgreSQL server for one test, which the test may stop and start: (server, url, dsn)."""
    bin_dir = find_bin_dir()
    if bin_dir is None:
        pytest.skip("PostgreSQL server binaries not found")
    psycopg = pytest.importorskip("psycopg")
    server = start_server(bin_dir, durable=True)   # stopped -m immediate, it must keep its commits
    try:
        with psycopg.connect(server.dsn("postgres"), autocommit=True) as admin:
            admin.execute("CREATE DATABASE ocrd")
        yield server, server.url("ocrd"), server.dsn("ocrd")
    finally:
        stop_server(server)


def _drop(d: Any, prefix: str, count: int, first: int = 0) -> set[str]:
    """`count` documents of distinct content (numbered from `first`), every third a 2-page PDF."""
    names = set()
    for n in range(first, first + count):
        name = f"{prefix}{n:02}." + ("pdf" if n % 3 == 2 else "png")
        if name.endswith(".pdf"):
            samples.write_pdf(d.inbox / name, 2 + n // 3)
        else:
            samples.write_image(d.inbox / name, "PNG", n=n)
        names.add(name)
    return names


def _every_document_once(d: Any, names: set[str]) -> None:
    states = d.wait_settled(len(names), timeout=240)
    assert {n: s for n, s in states.items()} == dict.fromkeys(names, "done"), d.log
    outputs = sorted(p.name for p in d.outbox.rglob("*.md"))
    assert outputs == sorted(Path(n).with_suffix(".md").name for n in names)
    assert d.scalar("SELECT COUNT(*) FROM pages WHERE state <> 'done'") == 0


@pytest.mark.parametrize("stop", ["fast", "immediate"])   # a clean shutdown; a crash (recovery on start)
def test_a_server_stopped_mid_run_strands_nothing_and_charges_no_attempt(own_pg, make_daemon, stop) -> None:
    server, url, dsn = own_pg
    d = make_daemon(workers=1, pg_dsn=dsn, env=LEASE, max_tokens=40, tables={"ledger": {"url": url}})
    d.start()
    before = _drop(d, "a", 9)
    wait_for(lambda: d.scalar("SELECT COUNT(*) FROM pages WHERE state = 'done'") >= 2, 120,
             message="the first pages done")
    server.stop(stop)
    during = _drop(d, "b", 6, first=9)
    # ingest meets the outage with a file dropped meanwhile, after the 10 s a transaction
    # retries a lost connection: by then the worker's claims and stores have met it too
    wait_for(lambda: any(e.get("event") == "ingest_failed_will_retry" and "/b" in e.get("path", "")
                         for e in d.events()), 90, interval=0.5,
             message=f"ingest to meet the outage ({d.log})")
    # and the worker (its lines carry its id; the supervisor's do not): a transaction that began
    # late in the outage may still be retrying
    wait_for(lambda: any(e.get("event") == "ledger_unreachable" and "worker_id" in e for e in d.events()),
             60, interval=0.5,
             message=f"the worker to meet the outage ({d.log})")
    spooled = {p.name.split("-", 1)[1] for p in d.spool_files()}
    inbox = {p.name for p in d.inbox.iterdir()}
    assert during <= inbox | spooled, "a file dropped during the outage is neither in the inbox nor the spool"
    server.resume()

    _every_document_once(d, before | during)
    charged = d.query("SELECT e.job_id, e.page_no, e.at, e.kind, e.detail FROM events e JOIN pages p "
                      "ON p.job_id = e.job_id AND p.page_no = e.page_no WHERE p.attempts > 1 ORDER BY e.id")
    assert not charged, f"a page was charged for the outage: {charged} ({d.log})"
    kinds = [e.get("event") for e in d.events()]
    assert "worker_died" not in kinds and "tick_failed" not in kinds and "store_failed" not in kinds
    # said once when it began (and at most once a minute), not every tick
    assert kinds.count("ledger_unreachable") <= 6
    assert "ledger_reachable" in kinds


def test_killed_backends_strand_no_document(pg_ledger, make_daemon) -> None:
    import psycopg

    url, dsn = pg_ledger
    d = make_daemon(workers=1, pg_dsn=dsn, env=LEASE, max_tokens=24, tables={"ledger": {"url": url}})
    d.start()
    names = _drop(d, "k", 21)
    wait_for(lambda: d.scalar("SELECT COUNT(*) FROM pages WHERE state = 'done'") >= 1, 120,
             message="the first page done")
    kills = 0
    with psycopg.connect(dsn, autocommit=True) as admin:
        until = time.monotonic() + 8
        while time.monotonic() < until and d.scalar("SELECT COUNT(*) FROM pages WHERE state <> 'done'"):
            kills += admin.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()").fetchone()[0]
            time.sleep(0.3)
    assert kills > 0
    _every_document_once(d, names)
    kinds = [e.get("event") for e in d.events()]
    assert "worker_died" not in kinds and "store_failed" not in kinds


def test_status_says_one_line_while_the_server_is_frozen(own_pg, make_daemon) -> None:
    """A frozen server (SIGSTOP: a VM paused, a wedged host) accepts no connection: `ocrd status`
    gives up after the connect timeout and the reconnect window with one line, never hangs."""
    import os
    import signal as signals

    server, url, dsn = own_pg
    d = make_daemon(pg_dsn=dsn, tables={"ledger": {"url": url}})
    assert d.cli("status", check=False).returncode == 3          # the ledger is made, no daemon
    postmaster = int((server.root / "data" / "postmaster.pid").read_text().split()[0])
    os.kill(postmaster, signals.SIGSTOP)
    try:
        started = time.monotonic()
        result = d.cli("status", check=False)
        took = time.monotonic() - started
    finally:
        os.kill(postmaster, signals.SIGCONT)
    assert result.returncode == 1 and took < 60, (result.returncode, took)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "unreachable" in lines[0], result.stderr
