"""What checking and backing up a big ledger costs: PRAGMA quick_check and integrity_check (as
`ocrd run` and `ocrd ledger check` run them, ledger/integrity.py) and an online backup (as
`ocrd ledger backup` and `[ledger] backup_every` make one), on a ledger of 1,000,000 OCR pages
whose done pages hold a real page's worth of text (~3.5 KB), so the file has about a million
4 KB database pages too.

    .venv/bin/python bench/ledger_check.py [--pages N] [--text-bytes N] [--keep DIR]

Each check runs warm (the file in the OS page cache) and cold (the file's cached pages dropped
with posix_fadvise DONTNEED first, as after a reboot). Writes bench/results/ledger-check.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sqlite3
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from ledger import build_big_ledger   # bench/ledger.py: one builder for the big ledger
from ocrd.ledger.clock import to_text
from ocrd.ledger.integrity import backup_file, check_file

RESULTS = Path(__file__).resolve().parent / "results" / "ledger-check.json"


def drop_cache(path: Path) -> None:
    """Evict the file's pages from the OS page cache (no root needed), as a cold start finds it."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def timed(fn, *args, **kwargs) -> tuple[float, object]:
    t0 = time.perf_counter()
    result = fn(*args, **kwargs)
    return round(time.perf_counter() - t0, 2), result


def measure(path: Path, workdir: Path) -> dict:
    """Seconds for each check, warm and cold, and for a backup."""
    out: dict = {}
    for name, quick in (("quick_check", True), ("integrity_check", False)):
        drop_cache(path)
        cold, problems = timed(check_file, path, quick=quick)
        assert problems == [], problems
        warm, _ = timed(check_file, path, quick=quick)
        out[name] = {"cold_s": cold, "warm_s": warm}
        print(f"  {name:<16} cold {cold:>7.2f} s   warm {warm:>7.2f} s", flush=True)
    drop_cache(path)
    copy = workdir / "backup.db"
    seconds, _ = timed(backup_file, path, copy)
    out["backup"] = {"cold_s": seconds, "bytes": copy.stat().st_size}
    quick, _ = timed(check_file, copy, quick=True)
    out["backup"]["quick_check_of_copy_s"] = quick
    print(f"  backup           cold {seconds:>7.2f} s   (then quick_check of the copy {quick:.2f} s)")
    copy.unlink()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=1_000_000, help="OCR pages in the ledger")
    parser.add_argument("--text-bytes", type=int, default=3500, help="text of each done page")
    parser.add_argument("--keep", type=Path, help="build (or reuse) the ledger in this folder")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ocrd-bench-") as tmp:
        workdir = args.keep or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        path = workdir / f"big-{args.pages}.db"
        build_s = None
        if not path.exists():
            text = ("# A page\n\n" + "Lorem ipsum dolor sit amet, consectetur adipiscing elit. " * 200)
            t0 = time.monotonic()
            build_big_ledger(path, args.pages, datetime.now(UTC), text=text[:args.text_bytes])
            build_s = round(time.monotonic() - t0, 1)
        con = sqlite3.connect(path)
        db_pages, page_size = (con.execute(f"PRAGMA {p}").fetchone()[0] for p in ("page_count", "page_size"))
        con.close()
        size = path.stat().st_size
        print(f"ledger: {args.pages:,} OCR pages, {db_pages:,} database pages of {page_size} B "
              f"({size / 1e9:.2f} GB){'' if build_s is None else f', built in {build_s} s'}")
        results = {"when": to_text(datetime.now(UTC)), "python": platform.python_version(),
                   "sqlite": sqlite3.sqlite_version, "platform": platform.platform(),
                   "cpus": os.cpu_count(), "ocr_pages": args.pages, "text_bytes": args.text_bytes,
                   "db_pages": db_pages, "page_size": page_size, "file_bytes": size,
                   "build_s": build_s, **measure(path, workdir)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    sys.exit(main())
