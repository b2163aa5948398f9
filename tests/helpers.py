"""Small helpers shared by the tests (importable as `helpers`: tests/ is on pythonpath)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable, TypeVar

T = TypeVar("T")


def wait_for(condition: Callable[[], T], timeout: float = 30.0, interval: float = 0.05,
             message: str = "condition") -> T:
    """Poll `condition` until it returns something truthy; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


def process_state(pid: int) -> str:
    """A process's state letter as ps shows it: R running, S sleeping, T stopped (SIGSTOP),
    Z zombie; "X" when there is no such process."""
    import subprocess
    from pathlib import Path

    if Path("/proc/self/stat").exists():
        try:
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return "X"
    out = subprocess.run(["ps", "-o", "stat=", "-p", str(pid)], capture_output=True, text=True).stdout
    return out.strip()[:1] or "X"


def damage_table(db: Path, table: str = "jobs") -> int:
    """Overwrite the root page of `table` in a SQLite ledger with junk, as a failing disk or a
    half-written sync would: the header and the other tables stay readable. The WAL is
    checkpointed first, so that the page on disk is the one SQLite reads. Returns the page number."""
    import sqlite3

    con = sqlite3.connect(db, timeout=30, isolation_level=None)
    try:
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        page_size = con.execute("PRAGMA page_size").fetchone()[0]
        (root,) = con.execute("SELECT rootpage FROM sqlite_master WHERE type = 'table' AND name = ?",
                              (table,)).fetchone()
    finally:
        con.close()
    with open(db, "r+b") as f:
        f.seek((root - 1) * page_size)
        f.write(b"\xa5" * page_size)
        f.flush()
        os.fsync(f.fileno())
    return root
