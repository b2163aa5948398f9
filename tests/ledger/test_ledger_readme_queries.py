"""The sqlite3 queries the README's "The ledger" section gives users work on a real ledger."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from ledger_testkit import Db, add

from ocrd.ledger.store import Ledger

pytestmark = pytest.mark.sqlite_only        # the README gives sqlite3 queries

WHAT_FAILED = """
SELECT id, source_path, finished_at, error FROM jobs
WHERE state = 'failed' ORDER BY finished_at DESC LIMIT 20;
"""

PAGES_PER_HOUR_TODAY = """
SELECT strftime('%H:00', finished_at, 'localtime') AS hour, COUNT(*) AS pages FROM pages
WHERE state = 'done'
  AND finished_at >= strftime('%Y-%m-%dT%H:%M:%SZ', 'now', 'localtime', 'start of day', 'utc')
GROUP BY hour ORDER BY hour;
"""

STUCK_WORKERS = """
SELECT w.id, w.pid, w.state, w.current_page,
       CAST((julianday('now') - julianday(w.last_heartbeat_at)) * 86400 AS INTEGER) AS silent_s,
       MIN(p.started_at) AS oldest_page_started
FROM workers w LEFT JOIN pages p ON p.lease_owner = w.id AND p.state = 'running'
WHERE w.state NOT IN ('stopped', 'dead')
GROUP BY w.id ORDER BY silent_s DESC;
"""

BATCH_LAST_HOUR = """
SELECT worker_id, MAX(batch) AS batch, ROUND(AVG(pages_in_flight), 1) AS avg_in_flight,
       ROUND(AVG(tokens_per_s)) AS tokens_per_s FROM heartbeats
WHERE at >= strftime('%Y-%m-%dT%H:%M:%SZ', 'now', '-1 hour') AND pages_in_flight > 0
GROUP BY worker_id ORDER BY worker_id;
"""

PAGES_WITH_WORDS = """
SELECT p.job_id, p.page_no, j.source_path,
       snippet(pages_fts, 0, '[', ']', '…', 12) AS snippet
FROM pages_fts JOIN pages p ON p.id = pages_fts.rowid JOIN jobs j ON j.id = p.job_id
WHERE pages_fts MATCH 'harbour AND bridge' ORDER BY pages_fts.rowid DESC LIMIT 20;
"""


def test_readme_queries(ledger: Ledger, db: Db) -> None:
    now = datetime.now(UTC)
    bad, good = add(ledger, "bad", 1, now=now), add(ledger, "good", 3, now=now)
    ledger.register_worker("fresh", host="h", pid=11, backend="cpu", device_name="cpu", now=now)
    ledger.register_worker("stuck", host="h", pid=12, backend="cpu", device_name="cpu",
                           now=now - timedelta(minutes=30))
    [page] = ledger.claim_pages("fresh", now=now)
    ledger.fail_page(bad, page.page_no, "fresh", "image too small", retryable=False, now=now)
    for _ in range(2):
        [page] = ledger.claim_pages("fresh", now=now)
        ledger.complete_page(good, page.page_no, "fresh", text="x", now=now)
    ledger.claim_pages("stuck", now=now - timedelta(minutes=29))

    assert db.raw(WHAT_FAILED) == [(bad, "/in/bad.pdf", ledger.job(bad).finished_at,
                                    "page 1: image too small")]
    [(hour, n)] = db.raw(PAGES_PER_HOUR_TODAY)
    assert n == 2 and hour == now.astimezone().strftime("%H:00")
    stuck, fresh = db.raw(STUCK_WORKERS)
    assert (stuck[0], stuck[3], fresh[0]) == ("stuck", f"{good}:3", "fresh")
    assert 1790 <= stuck[4] <= 1900 and stuck[5] is not None and fresh[5] is None


def test_readme_batch_query(ledger: Ledger, db: Db) -> None:
    now = datetime.now(UTC)
    ledger.register_worker("g0", host="h", pid=1, backend="cuda", device_name="H200", now=now)
    beats = [(-90, 16, 16, 999.0), (-50, 16, 12, 1000.0), (-20, 32, 30, 2000.0), (-10, 32, 0, 0.0)]
    for minutes, batch, flying, rate in beats:    # an old beat, two in the hour, an idle one
        ledger.record_heartbeat("g0", backend="cuda", active_memory_bytes=1, peak_memory_bytes=1,
                                cache_memory_bytes=0, memory_limit_bytes=0, pages_done=0,
                                tokens_per_s=rate, current_page=None, batch=batch,
                                pages_in_flight=flying, now=now + timedelta(minutes=minutes))
    assert db.raw(BATCH_LAST_HOUR) == [("g0", 32, 21.0, 1500.0)]


def test_readme_search_query(ledger: Ledger, db: Db) -> None:
    job = add(ledger, "river", 2)
    for page in ledger.claim_pages("w", n=2):
        words = ["the harbour bridge fell", "the harbour was calm"][page.page_no - 1]
        ledger.complete_page(job, page.page_no, "w", text=words, search_text=words)
    assert db.raw(PAGES_WITH_WORDS) == [(job, 1, "/in/river.pdf", "the [harbour] [bridge] fell")]


def test_the_readme_gives_these_queries_verbatim() -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    for query in (WHAT_FAILED, PAGES_PER_HOUR_TODAY, BATCH_LAST_HOUR, PAGES_WITH_WORDS):
        assert query.strip() in readme
