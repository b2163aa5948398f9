"""`[hooks]`: run a command after a job ends (`on_done`, `on_failed`), the way a user's script
would want it: an argv list (no shell), the job in its environment (OCRD_JOB_ID, OCRD_STATE,
OCRD_SOURCE, OCRD_OUTPUT, OCRD_ERROR), a timeout, its output in the daemon's log.

The supervisor notices ended jobs in the ledger's events (`job_done` / `job_failed`, written by
whichever process ended the job: a worker, the supervisor, ingest, `ocrd submit`), so a hook runs
once per ending whoever ended it. Hooks run one at a time on their own thread, never on the
supervisor's tick; a hook that fails, hangs or cannot start is logged and never fails its job.
The cursor (the last event handled) is kept in the ledger's meta, so a restart neither repeats
nor skips an ending (a hook cut off by a stop or a crash runs again at the next start).
"""

from __future__ import annotations

import os
import queue
import subprocess
import threading
import time
from typing import Any, Callable

import structlog

from ocrd.ledger import Ledger

from .config import HooksConfig

log = structlog.get_logger()

CURSOR_KEY = "hooks_cursor"      # meta: id of the last job_done/job_failed event handled
POLL_S = 1.0                     # how often the supervisor's tick looks for ended jobs
OUTPUT_LIMIT = 4000              # characters of a hook's output kept in the log
STOP_WAIT_S = 5.0                # at stop, hooks still queued get this long to finish

_STOP = object()


def hook_env(ending: dict[str, Any]) -> dict[str, str]:
    """The environment a hook runs with: the daemon's own plus the job's OCRD_* variables (a name
    that is not UTF-8 arrives as its own bytes: os.fsencode of the surrogates the ledger gives)."""
    return {**os.environ,
            "OCRD_JOB_ID": str(ending["job_id"]),
            "OCRD_STATE": "done" if ending["kind"] == "job_done" else "failed",
            "OCRD_SOURCE": ending.get("source_path") or "",
            "OCRD_OUTPUT": ending.get("output_path") or "",
            "OCRD_OUTPUTS": "\n".join(ending.get("outputs") or []),
            "OCRD_ERROR": ending.get("error") or ""}


class HookRunner:
    """start() picks up the cursor; tick() queues the endings seen since; stop() lets queued
    hooks finish (up to STOP_WAIT_S). The ledger is the supervisor's (thread-safe)."""

    def __init__(self, config: HooksConfig) -> None:
        self.config = config
        # every output file of a done job (one per format): the supervisor knows its formats
        self.outputs_of: Callable[[str, str, str | None], list[str]] = lambda _inbox, out, _options: [out]
        self.ledger: Ledger | None = None
        self._cursor = 0
        self._next_poll = 0.0
        self._queue: queue.Queue[Any] = queue.Queue()
        self._thread: threading.Thread | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.config.on_done or self.config.on_failed)

    def start(self, ledger: Ledger) -> None:
        self.ledger = ledger
        saved = ledger.get_meta(CURSOR_KEY)
        # First time hooks are on: start from now, not from every job the ledger ever ended.
        self._cursor = int(saved) if saved and saved.isdigit() else ledger.last_event_id()
        if saved is None:
            ledger.set_meta(CURSOR_KEY, str(self._cursor))
        self._thread = threading.Thread(target=self._run, name="hooks", daemon=True)
        self._thread.start()

    def tick(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        if self.ledger is None or now < self._next_poll:
            return
        self._next_poll = now + POLL_S
        if not self.enabled:   # nothing to run: keep the cursor current for when hooks are added
            last = self.ledger.last_event_id()
            if last != self._cursor:
                self._cursor = last
                self.ledger.set_meta(CURSOR_KEY, str(last))
            return
        for ending in self.ledger.job_endings(self._cursor):
            self._cursor = ending["event_id"]
            out = ending.get("output_path")
            ending["outputs"] = (self.outputs_of(ending["inbox"], out, ending.get("options"))
                                 if out and ending["kind"] == "job_done" else [])
            self._queue.put(ending)

    def reload(self, config: HooksConfig) -> None:
        self.config = config

    def stop(self, wait_s: float = STOP_WAIT_S) -> None:
        if self._thread is None:
            return
        self._queue.put(_STOP)
        self._thread.join(wait_s)
        if self._thread.is_alive():
            log.warning("hooks_cut_off", note="hooks still queued run at the next start")

    # -- the hooks thread -----------------------------------------------------------------------
    def _run(self) -> None:
        while (ending := self._queue.get()) is not _STOP:
            argv = self.config.on_done if ending["kind"] == "job_done" else self.config.on_failed
            if argv:
                run_hook(list(argv), ending, self.config.timeout_s)
            try:
                self.ledger.set_meta(CURSOR_KEY, str(ending["event_id"]))
            except Exception as exc:  # the hook ran; at worst it runs again after a restart
                log.warning("hook_cursor_not_saved", error=str(exc))


def run_hook(argv: list[str], ending: dict[str, Any], timeout_s: float) -> int | None:
    """Run one hook; returns its exit code (None: it could not start or timed out). Never raises."""
    fields = dict(job_id=ending["job_id"], hook=argv[0],
                  state="done" if ending["kind"] == "job_done" else "failed")
    started = time.monotonic()
    try:
        done = subprocess.run(argv, env=hook_env(ending), stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, errors="replace", timeout=timeout_s)
    except subprocess.TimeoutExpired as exc:
        log.error("hook_timed_out", timeout_s=timeout_s, output=_tail(exc.stdout, exc.stderr), **fields)
        return None
    except OSError as exc:   # not found, not executable
        log.error("hook_failed", error=f"cannot run: {exc.strerror or exc}", **fields)
        return None
    seconds = round(time.monotonic() - started, 2)
    output = _tail(done.stdout, done.stderr)
    if done.returncode == 0:
        log.info("hook_done", seconds=seconds, output=output, **fields)
    else:
        log.error("hook_failed", exit_code=done.returncode, seconds=seconds, output=output, **fields)
    return done.returncode


def _tail(stdout: Any, stderr: Any) -> str:
    parts = [p.decode(errors="replace") if isinstance(p, bytes) else p for p in (stdout, stderr) if p]
    text = "".join(parts).strip()
    return text[-OUTPUT_LIMIT:]
