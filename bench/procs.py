"""What the bench scripts share: start N bench processes together and collect what each reports
(bench/ledger.py, bench/hosts.py), `git` in the checkout (the commit a result was measured on) and
`machine()` (what a result was measured on), `log_entries` (a daemon's JSON log, entry by entry).

Each child runs `target(*args, ready, start, done)`: it sets itself up, puts anything on `ready`,
waits for `start`, works, and puts its report on `done`. A child that dies is an error at once,
not a hang.
"""

from __future__ import annotations

import multiprocessing
import os
import platform
import queue
import subprocess
import json
import time
from pathlib import Path
from typing import Any, Callable, Iterator


def run_together(target: Callable[..., None], args: list[tuple], what: str = "bench process") -> tuple[float, list[Any]]:
    """(time.monotonic() at the start signal, the children's reports)."""
    ctx = multiprocessing.get_context("spawn")
    ready, start, done = ctx.Queue(), ctx.Event(), ctx.Queue()
    children = [ctx.Process(target=target, args=(*a, ready, start, done)) for a in args]
    for c in children:
        c.start()
    try:
        for _ in children:
            ready.get(timeout=120)
        t0 = time.monotonic()
        start.set()
        reports: list[Any] = []
        while len(reports) < len(children):
            try:
                reports.append(done.get(timeout=1))
            except queue.Empty:
                dead = [c.exitcode for c in children if c.exitcode not in (None, 0)]
                if dead:
                    raise RuntimeError(f"a {what} died (exit codes {dead})") from None
        for c in children:
            c.join(60)
        return t0, reports
    finally:
        for c in children:
            if c.is_alive():
                c.kill()
                c.join()


def git(*args: str) -> str | None:
    """git's answer in the checkout (None where there is no git, as on the GPU machine: say the
    commit by hand there)."""
    try:
        return subprocess.run(["git", *args], cwd=Path(__file__).resolve().parent.parent,
                              capture_output=True, text=True, timeout=10).stdout.strip() or None
    except OSError:
        return None


def machine(device: bool = False) -> dict:
    """The machine a result was measured on; `device` adds ocrd's description of its accelerator."""
    found = {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count()}
    if device:
        from ocrd.daemon.device import describe, detect_device

        found["device"] = describe(detect_device())
    return found


def log_entries(path: Path) -> Iterator[dict]:
    """The entries of a daemon's log (structlog JSON lines, `<state_dir>/logs/ocrd.log`); lines
    that are not a JSON object are skipped, a missing file has none."""
    for line in path.read_text(errors="replace").splitlines() if path.exists() else []:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict):
            yield entry
