"""Ledger benchmark: claim+complete throughput with 1, 2 and 4 processes, and the time of the
`ocrd status` queries (counts + workers_status + throughput) on a ledger of 1,000,000 pages.

    /work/main/.venv/bin/python bench/ledger.py [--quick] [--pages N] [--big-pages N]

Writes bench/results/ledger.json. Runs the real Ledger with its production settings (WAL,
synchronous=FULL, BEGIN IMMEDIATE); only the 1M-page ledger is filled with raw executemany in big
transactions (synchronous=OFF while building), since going through the API would take an hour.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from ocrd.ledger import Ledger, WorkerState
from ocrd.ledger.clock import to_text
from procs import run_together   # bench/procs.py (this script's folder is on sys.path)

RESULTS = Path(__file__).resolve().parent / "results" / "ledger.json"


# -- claim + complete throughput ------------------------------------------------------------------
def _worker(url: str, worker_id: str, batch: int, ready, start, done) -> None:
    ledger = Ledger(url)
    try:
        ledger.register_worker(worker_id, host="bench", pid=os.getpid(), backend="cpu",
                               device_name="cpu", state=WorkerState.IDLE)
        ready.put(worker_id)
        start.wait()
        n = 0
        while pages := ledger.claim_pages(worker_id, n=batch):
            for p in pages:
                if ledger.complete_page(p.job_id, p.page_no, worker_id, text="x" * 200, seconds=0.0):
                    ledger.finish_job(p.job_id, f"/out/{p.job_id}.md")
                n += 1
        done.put((worker_id, n, time.monotonic()))
    finally:
        ledger.close()


def run_throughput(procs: int, batch: int, pages: int, workdir: Path) -> float:
    """Pages per second for `procs` processes claiming `batch` pages at a time."""
    url = f"sqlite:///{workdir / f'tp-{procs}-{batch}.db'}"
    with Ledger(url) as ledger:
        per_job = 50
        for j in range(pages // per_job):
            ledger.add_job(inbox="/in", source_path=f"/in/{j}.pdf", spool_path=f"/spool/{j}.pdf",
                           sha256=f"sha{j}", size_bytes=1, pages_total=per_job)
    t0, reports = run_together(_worker, [(url, f"w{i}", batch) for i in range(procs)], "bench worker")
    assert sum(n for _, n, _ in reports) == pages, reports
    return pages / (max(t for _, _, t in reports) - t0)


# -- the big ledger -------------------------------------------------------------------------------
def build_big_ledger(path: Path, total_pages: int, now: datetime, per_job: int = 100,
                     text: str = "# page\n" + "lorem ipsum " * 8) -> dict:
    """A ledger that looks like months of use: mostly done pages finished over the last 48 h
    (so the pages/min windows hold real rows), some failed, a running front, a queued tail, and
    24 h of heartbeats from 4 workers. `text` is every done page's text (bench/ledger_check.py
    gives them a real page's length). Returns what it made."""
    Ledger(f"sqlite:///{path}").close()                    # schema through the real migrations
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA synchronous = OFF")
    rng = random.Random(7)
    n_jobs = total_pages // per_job
    done_jobs, failed_jobs, running_jobs = int(n_jobs * 0.94), int(n_jobs * 0.005), 8
    span_s = 48 * 3600
    stamp = to_text(now)
    job_rows, page_rows = [], []
    for j in range(1, n_jobs + 1):
        if j <= done_jobs:
            state = "done"
        elif j <= done_jobs + failed_jobs:
            state = "failed"
        elif j <= done_jobs + failed_jobs + running_jobs:
            state = "running"
        else:
            state = "queued"
        finished = now - timedelta(seconds=span_s * (1 - j / n_jobs))
        job_rows.append((j, "/in", f"/in/{j}.pdf", f"/spool/{j}.pdf", f"{j:064x}", 1000, state,
                         per_job, per_job if state == "done" else 0, 1, 0, stamp, stamp,
                         to_text(finished) if state in ("done", "failed") else None,
                         f"/out/{j}.md" if state == "done" else None,
                         "page 3: bad page" if state == "failed" else None))
        for p in range(1, per_job + 1):
            if state == "done" or (state == "failed" and p != 3) or (state == "running" and p <= 60):
                pstate = "done"
            elif state == "failed":
                pstate = "failed"
            elif state == "running" and p <= 62:
                pstate = "running"
            else:
                pstate = "queued"
            at = finished - timedelta(seconds=rng.uniform(0, 600))
            page_rows.append((j, p, pstate, 1 if pstate != "queued" else 0, 0,
                              "w1" if pstate != "queued" else None,
                              to_text(now + timedelta(seconds=60)) if pstate == "running" else None,
                              to_text(at) if pstate != "queued" else None,
                              to_text(at) if pstate == "done" else None,
                              text if pstate == "done" else None,
                              "bad page" if pstate == "failed" else None))
        if len(page_rows) >= 200_000 or j == n_jobs:
            conn.execute("BEGIN")
            conn.executemany(
                "INSERT INTO jobs (id, inbox, source_path, spool_path, sha256, size_bytes, state,"
                " pages_total, pages_done, attempts, priority, created_at, updated_at, finished_at,"
                " output_path, error) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", job_rows)
            conn.executemany(
                "INSERT INTO pages (job_id, page_no, state, attempts, priority, lease_owner,"
                " lease_expires_at, started_at, finished_at, text, error)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?)", page_rows)
            conn.execute("COMMIT")
            job_rows, page_rows = [], []
    conn.execute("BEGIN")
    for w in range(1, 5):
        conn.execute("INSERT INTO workers (id, host, pid, backend, device_name, state, started_at,"
                     " last_heartbeat_at, current_page, pages_done) VALUES (?,?,?,?,?,?,?,?,?,?)",
                     (f"w{w}", "bench", 1000 + w, "metal", "Apple M4 Pro", WorkerState.BUSY.value,
                      to_text(now - timedelta(hours=24)), stamp, f"{n_jobs}:1", 1000))
        conn.executemany(
            "INSERT INTO heartbeats (worker_id, at, backend, active_memory_bytes, peak_memory_bytes,"
            " cache_memory_bytes, memory_limit_bytes, pages_done, tokens_per_s)"
            " VALUES (?,?,?,?,?,?,?,?,?)",
            [(f"w{w}", to_text(now - timedelta(seconds=s)), "metal", 5 << 30, 6 << 30, 1 << 30,
              24 << 30, 1000, 200.0) for s in range(0, 24 * 3600, 5)])
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.execute("ANALYZE")
    conn.close()
    return {"jobs": n_jobs, "pages": n_jobs * per_job, "heartbeats": 4 * 24 * 3600 // 5}


def time_status(path: Path, now: datetime, repeats: int) -> dict:
    """Milliseconds for counts + workers_status + throughput as three reads, and as the one read
    transaction of Ledger.status (what `ocrd status` calls)."""
    with Ledger(f"sqlite:///{path}") as ledger:
        times, single = [], []
        for i in range(repeats + 2):
            t0 = time.perf_counter()
            ledger.counts()
            ledger.workers_status(now=now)
            ledger.throughput(now=now)
            t1 = time.perf_counter()
            ledger.status(now=now)
            t2 = time.perf_counter()
            if i >= 2:                                   # the first two warm the page cache
                times.append((t1 - t0) * 1000)
                single.append((t2 - t1) * 1000)
        parts = {}
        for name, fn in (("counts", ledger.counts), ("workers_status", lambda: ledger.workers_status(now=now)),
                         ("throughput", lambda: ledger.throughput(now=now))):
            samples = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                fn()
                samples.append((time.perf_counter() - t0) * 1000)
            parts[name] = round(statistics.median(samples), 2)
        claim = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            [p] = ledger.claim_pages("bench", n=1, now=now)
            ledger.complete_page(p.job_id, p.page_no, "bench", text="x", now=now)
            claim.append((time.perf_counter() - t0) * 1000)
    return {"status_ms_median": round(statistics.median(times), 2),
            "status_ms_max": round(max(times), 2),
            "status_one_tx_ms_median": round(statistics.median(single), 2),
            "parts_ms_median": parts,
            "claim_plus_complete_ms_median": round(statistics.median(claim), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--pages", type=int, help="pages per throughput run")
    parser.add_argument("--big-pages", type=int, help="pages in the status ledger")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    pages = args.pages or (400 if args.quick else 2000)
    big = args.big_pages or (100_000 if args.quick else 1_000_000)

    results: dict = {
        "when": to_text(datetime.now(UTC)), "quick": args.quick, "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version, "platform": platform.platform(), "cpus": os.cpu_count(),
        "settings": "WAL, synchronous=FULL, BEGIN IMMEDIATE, busy_timeout=30000",
        "throughput": [],
    }
    with tempfile.TemporaryDirectory(prefix="ocrd-bench-") as tmp:
        workdir = Path(tmp)
        print(f"claim + complete throughput, {pages} pages per run (pages/s)")
        print(f"{'processes':>9} {'batch 1':>9} {'batch 4':>9}")
        for procs in (1, 2, 4):
            row = {"processes": procs}
            for batch in (1, 4):
                row[f"batch_{batch}"] = round(run_throughput(procs, batch, pages, workdir), 1)
            results["throughput"].append(row)
            print(f"{procs:>9} {row['batch_1']:>9} {row['batch_4']:>9}", flush=True)

        now = datetime.now(UTC)
        path = workdir / "big.db"
        t0 = time.monotonic()
        made = build_big_ledger(path, big, now)
        build_s = time.monotonic() - t0
        status = time_status(path, now, repeats=10 if args.quick else 20)
        results["status"] = {**made, "build_s": round(build_s, 1),
                             "file_mb": round(path.stat().st_size / 1e6, 1), **status}
    s = results["status"]
    print(f"\nstatus queries on {s['pages']:,} pages / {s['jobs']:,} jobs / {s['heartbeats']:,} "
          f"heartbeats ({s['file_mb']} MB, built in {s['build_s']} s)")
    print(f"  counts + workers_status + throughput: median {s['status_ms_median']} ms, "
          f"max {s['status_ms_max']} ms (target < 50 ms)")
    print(f"  the same in one read transaction (Ledger.status): {s['status_one_tx_ms_median']} ms")
    print(f"  parts: {s['parts_ms_median']}")
    print(f"  claim + complete of one page on this ledger: {s['claim_plus_complete_ms_median']} ms")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    sys.exit(main())
