"""One worker process: load the engine ONCE, then claim -> render -> infer -> store -> heartbeat.

The supervisor starts each worker as `python -m ocrd.daemon.worker` with a pickled
`WorkerContext`. The worker talks back over two channels: JSON log events on an inherited pipe
(the supervisor logs them and watches `page_start`/`page_end` to enforce the page timeout), and
stdout/stderr, where whatever mlx-vlm prints ends up in the log, never in a terminal.
"""

from __future__ import annotations

import base64
import json
import os
import pickle
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import structlog

from ..ledger.store import ClaimedPage, Ledger
from .config import Config
from .errors import EngineError, InputError, ModelUnavailable, OcrdError

DEFAULT_ENGINE = "ocrd.daemon.engine:MlxVlmEngine"
EXIT_MODEL_UNAVAILABLE = 3


@dataclass(frozen=True)
class WorkerContext:
    """Everything a worker process needs; small and picklable."""

    worker_id: str
    config: Config
    engine_factory: str = DEFAULT_ENGINE
    batch_size: int = 1
    lease_s: float = 60.0
    heartbeat_s: float = 5.0
    recycle_memory_bytes: int = 0     # exit (and be replaced) once active memory passes this; 0: never
    sys_path: tuple[str, ...] = ()    # the parent's sys.path, so test engines import in the child


def start_worker_process(ctx: WorkerContext, on_event: Callable[[dict], None],
                         on_output: Callable[[str], None]) -> subprocess.Popen:
    """Spawn a worker; two daemon threads feed its events and raw output to the callbacks."""
    read_fd, write_fd = os.pipe()
    payload = base64.b64encode(pickle.dumps(ctx)).decode()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ocrd.daemon.worker", payload, str(write_fd)],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            pass_fds=(write_fd,), env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    finally:
        os.close(write_fd)
    events = os.fdopen(read_fd, "r", encoding="utf-8", errors="replace")
    threading.Thread(target=_pump_events, args=(events, on_event, on_output),
                     name=f"events-{ctx.worker_id}", daemon=True).start()
    threading.Thread(target=_pump_lines, args=(proc.stdout, on_output),
                     name=f"output-{ctx.worker_id}", daemon=True).start()
    return proc


def _pump_events(stream, on_event: Callable[[dict], None], on_output: Callable[[str], None]) -> None:
    with stream:
        for line in stream:
            try:
                event = json.loads(line)
            except ValueError:
                on_output(line.rstrip("\n"))
                continue
            on_event(event)


def _pump_lines(stream, on_output: Callable[[str], None], progress_every_s: float = 2.0) -> None:
    """Raw output, line by line. Progress bars (a model download's tqdm) redraw with \\r and no
    newline: their states are logged too, at most one every `progress_every_s`."""
    pending, last_progress = b"", 0.0
    with stream:
        while chunk := stream.read1(65536):
            pending += chunk
            *parts, pending = re.split(rb"(\r|\n)", pending)
            for text, sep in zip(parts[::2], parts[1::2]):
                line = text.decode("utf-8", "replace").strip()
                if not line:
                    continue
                if sep == b"\r":
                    if time.monotonic() - last_progress < progress_every_s:
                        continue
                    last_progress = time.monotonic()
                on_output(line)
        if pending.strip():
            on_output(pending.decode("utf-8", "replace").strip())


class Worker:
    def __init__(self, ctx: WorkerContext, stop: threading.Event,
                 reload: threading.Event | None = None) -> None:
        self.ctx = ctx
        self.config: Config = ctx.config
        self.stop = stop
        self.reload = reload or threading.Event()
        self._done = threading.Event()  # the loop has ended: heartbeats stop
        self.pages_done = 0
        self.claimed = 0
        self.tokens_per_s = 0.0
        self.current_page: str | None = None
        self.log = structlog.get_logger().bind(worker_id=ctx.worker_id)

    def run(self) -> int:
        from .device import detect_device
        from .engine import make_engine

        ledger = Ledger(self.config.db_url)
        try:
            device = detect_device()
            self.backend = device.backend
            ledger.register_worker(self.ctx.worker_id, host=socket.gethostname(), pid=os.getpid(),
                                   backend=device.backend, device_name=device.name, state="loading")
            started = time.monotonic()
            try:
                engine = make_engine(self.ctx.engine_factory, self.config.model)
                engine.load()
            except Exception as exc:  # any load failure means: no model yet; pages stay queued
                reason = str(exc) if isinstance(exc, ModelUnavailable) else f"{type(exc).__name__}: {exc}"
                self.log.error("model_unavailable", reason=reason, model=self.config.model.path)
                ledger.set_worker_state(self.ctx.worker_id, "load_failed")
                return EXIT_MODEL_UNAVAILABLE
            seconds = time.monotonic() - started
            ledger.add_event(None, "model_loaded",
                             f"worker={self.ctx.worker_id} pid={os.getpid()} seconds={seconds:.2f}")
            self.log.info("model_loaded", seconds=round(seconds, 2), model=self.config.model.path,
                          backend=device.backend)
            ledger.set_worker_state(self.ctx.worker_id, "idle")
            beat = threading.Thread(target=self._heartbeats, args=(ledger,), daemon=True)
            beat.start()
            try:
                self._loop(ledger, engine)
            finally:
                self.stop.set()
                self._done.set()
                beat.join(timeout=10)
                released = ledger.release_pages(self.ctx.worker_id)
                if released:
                    self.log.info("pages_released", count=released)
                ledger.set_worker_state(self.ctx.worker_id, "stopped")
            return 0
        finally:
            ledger.close()

    def _loop(self, ledger: Ledger, engine) -> None:
        """Infer on this thread; on one helper thread, in order, claim and render the next batch
        and store the last one's results, so the model never waits on SQLite's fsync or on pdfium
        (bench/workers.py measures what this buys). Leaving the `with` waits for both."""
        from .engine import memory_stats

        budget = self.config.workers.max_pages_per_worker
        idle = 0.1
        with ThreadPoolExecutor(1, thread_name_prefix="io") as io:
            self._io = io
            ahead: Future | None = None
            while not self.stop.is_set():
                if self.claimed >= budget and ahead is None:
                    self.log.info("worker_recycle", reason="page budget", pages=self.claimed)
                    return
                if self.reload.is_set():
                    self._reload_config()
                batch = ahead.result() if ahead else self._claim_and_render(ledger)
                ahead = None
                if batch is None:
                    self.stop.wait(idle)
                    idle = min(idle * 2, 1.0)
                    continue
                idle = 0.1
                if self.claimed < budget and not self.stop.is_set():
                    ahead = io.submit(self._claim_and_render, ledger)
                self._infer(ledger, engine, batch)
                limit = self.ctx.recycle_memory_bytes
                if limit and memory_stats()["active_memory_bytes"] > limit:
                    self.log.info("worker_recycle", reason="memory growth", limit_bytes=limit)
                    return  # a page claimed ahead is released by run()

    def _claim_and_render(self, ledger: Ledger) -> list[tuple[ClaimedPage, object]] | None:
        """Claim up to batch_size pages and render them; None when the queue is empty. A page that
        can't be rendered is failed here and left out of the batch."""
        from .render import render_page

        n = min(self.ctx.batch_size, self.config.workers.max_pages_per_worker - self.claimed)
        pages = ledger.claim_pages(self.ctx.worker_id, n=max(n, 1), lease_s=self.ctx.lease_s)
        if not pages:
            return None
        self.claimed += len(pages)
        batch = []
        for page in pages:
            try:
                batch.append((page, render_page(Path(page.spool_path), page.page_no, self.config.pdf.dpi)))
            except OcrdError as exc:
                self._fail(ledger, page, exc)
            except Exception as exc:  # a renderer bug is this page's problem, not the worker's
                self._fail(ledger, page, InputError(f"cannot render page: {type(exc).__name__}: {exc}"))
        return batch

    def _infer(self, ledger: Ledger, engine, batch: list[tuple[ClaimedPage, object]]) -> None:
        groups: dict[tuple[str, str], list[tuple[ClaimedPage, object]]] = {}
        for page, image in batch:  # pages of different inboxes may want other prompts or modes
            if self.config.inbox_for(page.inbox) is None:
                self._reload_config()  # an inbox added by a SIGHUP reload after this worker started
            inbox = self.config.inbox_for(page.inbox)
            groups.setdefault((self.config.prompt_for(inbox), self.config.mode_for(inbox)), []).append(
                (page, image))
        for (prompt, mode), group in groups.items():
            pages = [page for page, _ in group]
            self.current_page = ",".join(f"{p.job_id}:{p.page_no}" for p in pages)
            self.log.info("page_start", pages=self.current_page, count=len(pages),
                          attempts=max(p.attempts for p in pages))
            try:
                results = engine.generate([image for _, image in group], prompt, mode=mode,
                                          max_tokens=self.config.model.max_tokens)
            except Exception as exc:
                error = exc if isinstance(exc, OcrdError) else EngineError(f"{type(exc).__name__}: {exc}")
                results = []
                for page in pages:
                    self._fail(ledger, page, error)
            for page, result in zip(pages, results):
                self._io.submit(self._store_logged, ledger, page, result)
            self.log.info("page_end", pages=self.current_page)
            self.current_page = None

    def _reload_config(self) -> None:
        """SIGHUP (forwarded by the supervisor, which has validated the file already)."""
        from .config import ConfigError, load_config

        self.reload.clear()
        if self.config.source is None:
            return
        try:
            self.config = load_config(self.config.source)
        except ConfigError as exc:
            self.log.error("config_reload_refused", error=str(exc))
            return
        self.log.info("config_reloaded", inboxes=len(self.config.inboxes))

    def _store_logged(self, ledger: Ledger, page: ClaimedPage, result) -> None:
        try:
            self._store(ledger, page, result)
        except Exception as exc:  # on the io thread nothing else would see it; the lease, once
            # lost, brings the page back (or the supervisor finishes a complete document)
            self.log.error("store_failed", job_id=page.job_id, page=page.page_no,
                           error=f"{type(exc).__name__}: {exc}")

    def _store(self, ledger: Ledger, page: ClaimedPage, result) -> None:
        from .outbox import finish_document

        complete = ledger.complete_page(
            page.job_id, page.page_no, self.ctx.worker_id, text=result.text,
            prompt_tokens=result.prompt_tokens, generation_tokens=result.generation_tokens,
            seconds=result.seconds, finish_reason=result.finish_reason)
        self.pages_done += 1
        if result.seconds > 0:
            self.tokens_per_s = result.generation_tokens / result.seconds
        self.log.info("page_done", job_id=page.job_id, page=page.page_no, seconds=round(result.seconds, 3),
                      tokens=result.generation_tokens, finish_reason=result.finish_reason,
                      peak_memory_bytes=result.peak_memory_bytes)
        if complete:
            finish_document(self.config, ledger, page.job_id)

    def _fail(self, ledger: Ledger, page: ClaimedPage, exc: OcrdError) -> None:
        from .outbox import fail_document

        outcome = ledger.fail_page(page.job_id, page.page_no, self.ctx.worker_id, str(exc),
                                   retryable=exc.retryable, max_attempts=self.config.workers.max_attempts)
        self.log.warning("page_failed", job_id=page.job_id, page=page.page_no, reason=str(exc),
                         kind=exc.kind, outcome=str(outcome.state))
        if outcome.job_failed:
            fail_document(self.config, ledger, page.job_id, str(exc), exc.details)

    def _heartbeats(self, ledger: Ledger) -> None:
        from .device import CPU_WARNING
        from .engine import memory_stats

        parent = os.getppid()
        while True:
            stats = memory_stats()
            state = "busy" if self.current_page else ("stopping" if self.stop.is_set() else "idle")
            try:
                ledger.record_heartbeat(
                    self.ctx.worker_id, backend=self.backend, pages_done=self.pages_done,
                    tokens_per_s=self.tokens_per_s, current_page=self.current_page, state=state,
                    lease_s=self.ctx.lease_s, **stats)
            except Exception as exc:  # a missed beat must not kill the worker; the next one retries
                self.log.warning("heartbeat_failed", error=str(exc))
            extra = {"warning": CPU_WARNING} if self.backend == "cpu" else {}
            self.log.info("device_heartbeat", backend=self.backend, pages_done=self.pages_done,
                          tokens_per_s=round(self.tokens_per_s, 1), current_page=self.current_page,
                          **stats, **extra)
            if os.getppid() != parent:  # the supervisor died (macOS has no PDEATHSIG)
                self.log.error("supervisor_gone")
                os._exit(1)
            # Beats go on through a warm stop, so the lease of the page in hand stays renewed.
            if self._done.wait(self.ctx.heartbeat_s):
                return


def _die_with_parent() -> None:
    """Linux: SIGKILL this worker when the supervisor dies, even by kill -9. (The "parent" is the
    thread that spawned the worker: the supervisor spawns from the thread that runs it, always.)"""
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except OSError:
            pass


def main(argv: list[str] | None = None) -> int:
    from .logs import configure_worker_logging

    argv = sys.argv if argv is None else argv
    ctx: WorkerContext = pickle.loads(base64.b64decode(argv[1]))
    channel = os.fdopen(int(argv[2]), "w", buffering=1, encoding="utf-8")
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the supervisor, which decides
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())  # warm stop: finish the page in hand
    reload = threading.Event()
    signal.signal(signal.SIGHUP, lambda *_: reload.set())  # re-read the config between pages
    _die_with_parent()
    for entry in ctx.sys_path:
        if entry not in sys.path:
            sys.path.append(entry)
    configure_worker_logging(channel)
    return Worker(ctx, stop, reload).run()


if __name__ == "__main__":
    sys.exit(main())
