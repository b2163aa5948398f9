"""Ingest benchmark: drop-to-queued latency and the time to queue a large drop.

    .venv/bin/python bench/ingest.py [--latency-files 200] [--bulk-files 10000] [--stable 2.0 0.3]

Runs the real IngestService (native observer: inotify/FSEvents) against a real SQLite ledger in a
temporary folder, prints a table and writes bench/results/ingest.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import structlog

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "bench")]

from ingest_runner import make_config, png_bytes  # noqa: E402
from ocrd.daemon.intake.service import IngestService  # noqa: E402
from ocrd.ledger.store import Ledger  # noqa: E402
from procs import machine  # noqa: E402


def _quiet_logs() -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))


def _wait_jobs(ledger: Ledger, n: int, timeout: float) -> list[dict]:
    """Poll a cheap count (not the rows: that would steal CPU from the ingest being measured)."""
    deadline = time.monotonic() + timeout
    while True:
        have = sum(ledger.counts()["jobs"].values())
        if have >= n:
            return ledger.list_jobs(limit=n + 10)
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {have} of {n} jobs after {timeout}s")
        time.sleep(0.05)


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def bench_latency(root: Path, files: int, stable_for_s: float, gap_s: float) -> dict:
    """Drop files one by one (gap_s apart); latency = job created_at - the file's rename in."""
    config = make_config(root, stable_for_s=stable_for_s)
    inbox = config.inboxes[0]
    inbox.path.mkdir(parents=True)
    staging = root / "staging"
    staging.mkdir()
    ledger = Ledger(config.db_url)
    svc = IngestService(config, rescan_s=60.0, empty_grace_s=60.0)
    svc.start()
    svc.reconciled.wait(30)
    dropped: dict[str, float] = {}
    try:
        for n in range(files):
            src = staging / f"l{n:05}.png"
            src.write_bytes(png_bytes(n))
            dropped[str(inbox.path / src.name)] = time.time()
            os.rename(src, inbox.path / src.name)
            time.sleep(gap_s)
        jobs = _wait_jobs(ledger, files, timeout=120 + files * stable_for_s)
    finally:
        svc.stop()
        ledger.close()
    lat = [datetime.fromisoformat(j["created_at"]).timestamp() - dropped[j["source_path"]] for j in jobs]
    return {"files": files, "stable_for_s": stable_for_s, "gap_s": gap_s,
            "p50_s": round(_pct(lat, 0.50), 3), "p95_s": round(_pct(lat, 0.95), 3),
            "max_s": round(max(lat), 3), "overhead_p50_s": round(_pct(lat, 0.50) - stable_for_s, 3)}


def bench_bulk(root: Path, files: int, stable_for_s: float) -> dict:
    """Rename `files` files into the inbox at once; time until the last one is queued."""
    config = make_config(root, stable_for_s=stable_for_s)
    inbox = config.inboxes[0]
    inbox.path.mkdir(parents=True)
    staging = root / "staging"
    staging.mkdir()
    for n in range(files):
        (staging / f"b{n:05}.png").write_bytes(png_bytes(n))
    ledger = Ledger(config.db_url)
    svc = IngestService(config, rescan_s=60.0, empty_grace_s=60.0)
    svc.start()
    svc.reconciled.wait(30)
    try:
        t0 = time.time()
        for name in os.listdir(staging):
            os.rename(staging / name, inbox.path / name)
        t_dropped = time.time()
        jobs = _wait_jobs(ledger, files, timeout=1800)
        t_done = time.time()
    finally:
        svc.stop()
        ledger.close()
    first = min(datetime.fromisoformat(j["created_at"]).timestamp() for j in jobs)
    return {"files": files, "stable_for_s": stable_for_s, "drop_s": round(t_dropped - t0, 3),
            "first_queued_s": round(first - t0, 3), "all_queued_s": round(t_done - t0, 3),
            "files_per_s": round(files / (t_done - first), 1) if t_done > first else None}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--latency-files", type=int, default=200)
    ap.add_argument("--gap", type=float, default=0.05, help="seconds between latency drops")
    ap.add_argument("--bulk-files", type=int, default=10_000)
    ap.add_argument("--stable", type=float, nargs="+", default=[2.0, 0.3])
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "ingest.json")
    args = ap.parse_args()
    _quiet_logs()
    results: dict = {"machine": machine(),
                     "latency": [], "bulk": None}
    with tempfile.TemporaryDirectory(prefix="ocrd-bench-") as tmp:
        for i, stable in enumerate(args.stable):
            results["latency"].append(bench_latency(Path(tmp) / f"lat{i}", args.latency_files, stable,
                                                    args.gap))
        results["bulk"] = bench_bulk(Path(tmp) / "bulk", args.bulk_files, min(args.stable))
    print(f"{'drop -> queued latency':<34}{'stable_for_s':>13}{'p50 s':>9}{'p95 s':>9}{'max s':>9}")
    for r in results["latency"]:
        print(f"{r['files']:>5} files, one every {r['gap_s']} s{'':<8}{r['stable_for_s']:>13}"
              f"{r['p50_s']:>9}{r['p95_s']:>9}{r['max_s']:>9}")
    b = results["bulk"]
    print(f"\n{b['files']} files renamed in at once (stable_for_s {b['stable_for_s']}): dropped in "
          f"{b['drop_s']} s, first queued after {b['first_queued_s']} s, all queued after "
          f"{b['all_queued_s']} s ({b['files_per_s']} files/s)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
