"""One worker process: load the engine ONCE, then claim -> render -> infer -> store, with heartbeats.

The pool (pool.py) starts it as `python -m ocrd.daemon.worker WORKER_ID CONTROL_FD LOG_FD` and
writes its `WorkerContext` to stdin. It answers with `Message`s on CONTROL_FD (protocol.py), logs
JSON lines on LOG_FD, and whatever mlx-vlm prints on stdout ends up in the log, never in a terminal.
`main()` drives a `Worker` through start / tick / stop, the way huey drives its consumer processes.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import structlog
from PIL import Image

from ocrd.ledger import ClaimedPage, Ledger, WorkerState

from .config import ConfigError, load_config
from .device import CPU_WARNING, detect_device
from .engine import Engine, PageResult, make_engine, memory_stats
from .errors import EngineError, InputError, ModelUnavailable, OcrdError, first_line
from .logs import configure_worker_logging
from .outbox import fail_document, finish_document
from .protocol import EXIT_MODEL_UNAVAILABLE, Message, WorkerContext, WorkerEvent, read_context
from .render import render_page

Batch = list[tuple[ClaimedPage, Image.Image]]
IDLE_WAIT_S = (0.1, 1.0)   # an empty queue is polled at 0.1 s, backing off to 1 s


class Worker:
    """start() registers the worker and loads the model once; tick() takes one batch through
    claim -> render -> infer -> store; stop() lets stores finish, gives back pages still held
    and marks the worker stopped. `send` carries protocol messages to the supervisor."""

    def __init__(self, ctx: WorkerContext, *, send: Callable[[Message], None] = lambda m: None,
                 stop: threading.Event | None = None, reload: threading.Event | None = None) -> None:
        self.ctx = ctx
        self.config = ctx.config
        self.send = send
        self.stopping = stop or threading.Event()
        self.reload = reload or threading.Event()
        self.log = structlog.get_logger().bind(worker_id=ctx.worker_id)
        self.ledger: Ledger | None = None
        self.engine: Engine | None = None
        self.backend = "cpu"
        self.claimed = 0               # pages claimed, against max_pages_per_worker
        self.pages_done = 0
        self.tokens_per_s = 0.0
        self.current_page: str | None = None
        self.exit_reason: str | None = None
        self._idle_s = IDLE_WAIT_S[0]
        self._ahead: Future[Batch | None] | None = None
        self._io: ThreadPoolExecutor | None = None
        self._beat: threading.Thread | None = None
        self._done = threading.Event()     # set by stop(): heartbeats end

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> bool:
        """Register and load the model; False when it can't be loaded (pages stay queued)."""
        self.ledger = Ledger(self.config.db_url, backoff_base_s=self.ctx.backoff_base_s)
        device = detect_device()
        self.backend = device.backend
        self.ledger.register_worker(self.ctx.worker_id, host=socket.gethostname(), pid=os.getpid(),
                                    backend=device.backend, device_name=device.name,
                                    state=WorkerState.LOADING)
        started = time.monotonic()
        try:
            self.engine = make_engine(self.ctx.engine_factory, self.config.model)
            self.engine.load()
        except Exception as exc:  # any load failure means: no model yet; pages stay queued
            reason = str(exc) if isinstance(exc, ModelUnavailable) else first_line(exc, with_type=True)
            self.log.error("model_unavailable", reason=reason, model=self.config.model.path)
            self.ledger.set_worker_state(self.ctx.worker_id, WorkerState.LOAD_FAILED)
            self.send(Message(WorkerEvent.LOAD_FAILED, reason=reason))
            return False
        seconds = time.monotonic() - started
        self.ledger.add_event(None, "model_loaded",
                              f"worker={self.ctx.worker_id} pid={os.getpid()} seconds={seconds:.2f}")
        self.log.info("model_loaded", seconds=round(seconds, 2), model=self.config.model.path,
                      backend=device.backend)
        self.ledger.set_worker_state(self.ctx.worker_id, WorkerState.IDLE)
        self.send(Message(WorkerEvent.LOADED, seconds=seconds))
        self._io = ThreadPoolExecutor(1, thread_name_prefix="io")
        self._beat = threading.Thread(target=self._heartbeats, name="heartbeats", daemon=True)
        self._beat.start()
        return True

    def tick(self) -> bool:
        """One batch. Inference runs on this thread; the io thread claims and renders the next
        batch and stores the last one's pages meanwhile, so the model never waits on SQLite's
        fsync or on pdfium (bench/workers.py measures what this buys). False: time to exit."""
        if self.reload.is_set():
            self._reload_config()
        budget = self.config.workers.max_pages_per_worker
        if self._ahead is None and self.claimed >= budget:
            self.exit_reason = "page budget"
        if self.exit_reason:
            self.log.info("worker_recycle", reason=self.exit_reason, pages=self.claimed)
            return False
        batch = self._ahead.result() if self._ahead else self._claim_and_render()
        self._ahead = None
        if batch is None:
            self.stopping.wait(self._idle_s)
            self._idle_s = min(self._idle_s * 2, IDLE_WAIT_S[1])
            return True
        self._idle_s = IDLE_WAIT_S[0]
        if self.claimed < budget and not self.stopping.is_set():
            self._ahead = self._io.submit(self._claim_and_render)
        self._process(batch)
        limit = self.ctx.recycle_memory_bytes
        if limit and memory_stats()["active_memory_bytes"] > limit:
            self.exit_reason = "memory growth"   # a page claimed ahead is released by stop()
        return True

    def stop(self) -> None:
        """Let the claim ahead and the stores in flight finish, give back what is still held
        (not the pages' fault: no attempt counted), mark the worker stopped."""
        self.stopping.set()
        if self._io is not None:
            self._io.shutdown(wait=True)
        self._done.set()
        if self._beat is not None:
            self._beat.join(timeout=10)
        if self.ledger is None:
            return
        try:
            if self.engine is not None and self._io is not None:
                released = self.ledger.release_pages(self.ctx.worker_id)
                if released:
                    self.log.info("pages_released", count=released)
                self.ledger.set_worker_state(self.ctx.worker_id, WorkerState.STOPPED)
        finally:
            self.ledger.close()

    # -- one batch: claim -> render -> infer -> store --------------------------------------------
    def _claim_and_render(self) -> Batch | None:
        """Claim up to batch_size pages and render them; None when the queue is empty. A page that
        can't be rendered is failed here and left out of the batch."""
        n = min(self.ctx.batch_size, self.config.workers.max_pages_per_worker - self.claimed)
        pages = self.ledger.claim_pages(self.ctx.worker_id, n=max(n, 1), lease_s=self.ctx.lease_s)
        if not pages:
            return None
        self.claimed += len(pages)
        batch = []
        for page in pages:
            try:
                batch.append((page, render_page(Path(page.spool_path), page.page_no, self.config.pdf.dpi)))
            except OcrdError as exc:
                self._fail(page, exc)
            except Exception as exc:  # a renderer bug is this page's problem, not the worker's
                self._fail(page, InputError(f"cannot render page: {first_line(exc, with_type=True)}"))
        return batch

    def _process(self, batch: Batch) -> None:
        """Infer each group of pages that share a prompt and mode (pages of different inboxes may
        want others); the io thread stores the results, in order."""
        groups: dict[tuple[str, str], Batch] = {}
        for page, image in batch:
            if self.config.inbox_for(page.inbox) is None:
                self._reload_config()  # an inbox added by a SIGHUP reload after this worker started
            inbox = self.config.inbox_for(page.inbox)
            key = (self.config.prompt_for(inbox), self.config.mode_for(inbox))
            groups.setdefault(key, []).append((page, image))
        for (prompt, mode), group in groups.items():
            pages = [page for page, _ in group]
            for page, result in zip(pages, self._infer(pages, [im for _, im in group], prompt, mode)):
                self._io.submit(self._store_logged, page, result)

    def _infer(self, pages: list[ClaimedPage], images: list[Image.Image], prompt: str,
               mode: str) -> list[PageResult]:
        """Run the engine on one group; on failure every page of it fails and [] comes back."""
        self.current_page = ",".join(f"{p.job_id}:{p.page_no}" for p in pages)
        self.send(Message(WorkerEvent.BUSY, pages=len(pages)))
        self.log.info("page_start", pages=self.current_page, count=len(pages),
                      attempts=max(p.attempts for p in pages))
        try:
            return self.engine.generate(images, prompt, mode=mode, max_tokens=self.config.model.max_tokens)
        except Exception as exc:
            error = exc if isinstance(exc, OcrdError) else EngineError(first_line(exc, with_type=True))
            for page in pages:
                self._fail(page, error)
            return []
        finally:
            self.send(Message(WorkerEvent.IDLE))
            self.log.info("page_end", pages=self.current_page)
            self.current_page = None

    def _store_logged(self, page: ClaimedPage, result: PageResult) -> None:
        try:
            self._store(page, result)
        except Exception as exc:  # on the io thread nothing else would see it; the lease, once
            # lost, brings the page back (or the supervisor finishes a complete document)
            self.log.error("store_failed", job_id=page.job_id, page=page.page_no,
                           error=first_line(exc, with_type=True))

    def _store(self, page: ClaimedPage, result: PageResult) -> None:
        complete = self.ledger.complete_page(
            page.job_id, page.page_no, self.ctx.worker_id, text=result.text,
            prompt_tokens=result.prompt_tokens, generation_tokens=result.generation_tokens,
            seconds=result.seconds, finish_reason=result.finish_reason)
        self.pages_done += 1
        if result.seconds > 0:
            self.tokens_per_s = result.generation_tokens / result.seconds
        self.log.info("page_done", job_id=page.job_id, page=page.page_no, seconds=round(result.seconds, 3),
                      tokens=result.generation_tokens, finish_reason=result.finish_reason,
                      peak_memory_bytes=result.peak_memory_bytes)
        self.send(Message(WorkerEvent.PAGE_STORED, peak_memory_bytes=result.peak_memory_bytes))
        if complete:
            finish_document(self.config, self.ledger, page.job_id)

    def _fail(self, page: ClaimedPage, exc: OcrdError) -> None:
        outcome = self.ledger.fail_page(page.job_id, page.page_no, self.ctx.worker_id, str(exc),
                                        retryable=exc.retryable, max_attempts=self.config.workers.max_attempts)
        self.log.warning("page_failed", job_id=page.job_id, page=page.page_no, reason=str(exc),
                         kind=exc.kind, outcome=str(outcome.state))
        if outcome.job_failed:
            fail_document(self.config, self.ledger, page.job_id, str(exc), exc.details)

    def _reload_config(self) -> None:
        """SIGHUP (forwarded by the supervisor, which has validated the file already)."""
        self.reload.clear()
        if self.config.source is None:
            return
        try:
            self.config = load_config(self.config.source)
        except ConfigError as exc:
            self.log.error("config_reload_refused", error=str(exc))
            return
        self.log.info("config_reloaded", inboxes=len(self.config.inboxes))

    # -- heartbeats -----------------------------------------------------------------------------
    def _heartbeats(self) -> None:
        parent = os.getppid()
        while True:
            self._beat_once()
            if os.getppid() != parent:  # the supervisor died (macOS has no PDEATHSIG)
                self.log.error("supervisor_gone")
                os._exit(1)
            # Beats go on through a warm stop, so the lease of the page in hand stays renewed.
            if self._done.wait(self.ctx.heartbeat_s):
                return

    def _beat_once(self) -> None:
        stats = memory_stats()
        state = (WorkerState.BUSY if self.current_page
                 else WorkerState.STOPPING if self.stopping.is_set() else WorkerState.IDLE)
        try:
            self.ledger.record_heartbeat(
                self.ctx.worker_id, backend=self.backend, pages_done=self.pages_done,
                tokens_per_s=self.tokens_per_s, current_page=self.current_page, state=state,
                lease_s=self.ctx.lease_s, **stats)
        except Exception as exc:  # a missed beat must not kill the worker; the next one retries
            self.log.warning("heartbeat_failed", error=str(exc))
        extra = {"warning": CPU_WARNING} if self.backend == "cpu" else {}
        self.log.info("device_heartbeat", backend=self.backend, pages_done=self.pages_done,
                      tokens_per_s=round(self.tokens_per_s, 1), current_page=self.current_page,
                      **stats, **extra)


def _die_with_parent() -> None:
    """Linux: SIGKILL this worker when the supervisor dies, even by kill -9. (The "parent" is the
    thread that spawned the worker: the supervisor spawns from the thread that runs it, always.)"""
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except OSError:
            pass


def _sender(fd: int) -> Callable[[Message], None]:
    """Messages go out whole from two threads (inference, io); a supervisor gone mid-write is
    noticed by the heartbeats, not here."""
    channel = os.fdopen(fd, "w", buffering=1, encoding="utf-8")
    lock = threading.Lock()

    def send(message: Message) -> None:
        with lock:
            try:
                channel.write(message.encode())
            except (OSError, ValueError):
                pass

    return send


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv if argv is None else argv
    _worker_id, control_fd, log_fd = argv[1:4]
    ctx = read_context(sys.stdin.buffer)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the supervisor, which decides
    stop, reload = threading.Event(), threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())  # warm stop: finish the page in hand
    signal.signal(signal.SIGHUP, lambda *_: reload.set())  # re-read the config between pages
    _die_with_parent()
    sys.path.extend(p for p in ctx.sys_path if p not in sys.path)
    configure_worker_logging(os.fdopen(int(log_fd), "w", buffering=1, encoding="utf-8"))
    worker = Worker(ctx, send=_sender(int(control_fd)), stop=stop, reload=reload)
    try:
        if not worker.start():
            return EXIT_MODEL_UNAVAILABLE
        while not stop.is_set() and worker.tick():
            pass
        return 0
    finally:
        worker.stop()


if __name__ == "__main__":
    sys.exit(main())
