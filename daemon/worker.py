"""One worker process: load the engine ONCE, then keep a batch of pages decoding, with heartbeats.

The pool (pool.py) starts it as `python -m ocrd.daemon.worker WORKER_ID CONTROL_FD LOG_FD` (tied
to the supervisor by lifeline.py) and writes its `WorkerContext` to stdin. It answers with
`Message`s on CONTROL_FD (protocol.py), logs JSON lines on LOG_FD, and whatever mlx-vlm prints on stdout ends up in the log, never in a terminal.
`main()` drives a `Worker` through start / tick / stop, the way huey drives its consumer processes.

A page's way through: claimed with a lease (up to CLAIM_MAX at a time, one claim at a time) and
rendered on the io threads, two pages at once; waiting in `ready`, in claim order; admitted to the
decode session when a slot is free; decoded with its batch-mates; stored on the store thread as
soon as it ends (the worker that stores a document's last page finishes it). Nothing but decoding
runs on the main thread, and stores never wait behind renders (nor renders behind stores).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Callable

import structlog
from PIL import Image

from ocrd.ledger import ClaimedPage, Ledger, LedgerCorrupt, LedgerUnreachable, WorkerState

from .batching import InFlightTuner, open_session
from .config import ConfigError, load_config
from .device import CPU_WARNING, detect_device
from .engines.choice import name_of
from .output.blocks import parse_grounding, to_dicts
from .diskspace import RoomWatch
from .output.delivery import fetched_dir
from .engines.base import Engine, Finished, PageResult, Session, make_engine
from .engines.mlxvlm import memory_stats, take_peak_memory
from . import files
from .errors import InputError, ModelUnavailable, OcrdError, first_line
from .logs import Outage, configure_worker_logging
from .protocol import (EXIT_LEDGER_CORRUPT, EXIT_MODEL_UNAVAILABLE, Message, WorkerContext, WorkerEvent,
                       read_context, sender)
from .render import render_page
from .search_index import search_text

Rendering = Future[Image.Image | None]    # None: the page could not be rendered (failed already)
IDLE_WAIT_S = (0.1, 1.0)   # an empty queue is polled at 0.1 s, backing off to 1 s
READY_AHEAD = 4            # rendered pages kept waiting for a free slot (more only hold leases)
CLAIM_MAX = 16             # pages claimed at once when that many slots are free; each renders on
                           # its own, so the first joins the batch while the others still render
RENDER_THREADS = 2         # claims and renders (PDF pages one at a time: pdfium is not thread-safe);
                           # two keep ahead of admission (~50 ms a page each), more only contend
                           # with the decode loop for the GIL. Stores have a thread of their own.
BUSY_EVERY_S = 1.0         # while decoding, BUSY restarts the supervisor's page timeout this often
WARM_FINISH_S = 20.0       # a warm stop lets pages in flight finish this long (supervisor: 25 s)
PAUSE_CHECK_S = 1.0        # `ocrd pause` is read from the ledger at most this often
LEDGER_RETRY_S = 2.0       # an unreachable ledger is asked again this often (claims, stores)


class Worker:
    """start() registers the worker and loads the model once; tick() claims, admits and decodes
    one step; stop() gives back pages still held and marks the worker stopped. `send` carries
    protocol messages to the supervisor. A stop request or a recycle reason winds the batch down:
    nothing new is admitted, pages in flight may finish (up to WARM_FINISH_S), then tick() is False."""

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
        self.session: Session | None = None
        self.tuner = InFlightTuner(ctx.batch_start if ctx.tune_batch else ctx.batch_size,
                                   ctx.batch_size, fixed=not ctx.tune_batch)
        self.backend = "cpu"
        self.claimed = 0               # pages claimed, against max_pages_per_worker
        self.pages_done = 0
        self.tokens_per_s = 0.0        # aggregate over the pages in flight, between heartbeats
        self.current_page: str | None = None    # the oldest page in flight, "+N" for the others
        self.in_flight = 0
        self.exit_reason: str | None = None
        self._held: dict[tuple[int, int], ClaimedPage] = {}   # in the session
        self._sizes: dict[tuple[int, int], tuple[int, int]] = {}   # the images they were given
        self._ready: deque[tuple[ClaimedPage, Rendering]] = deque()
        self._claim: Future[list[tuple[ClaimedPage, Rendering]]] | None = None
        self._generated = 0            # tokens generated, for tokens/s
        self._most_in_flight = 0       # since the last page ended (memory per page in flight)
        self._last_beat: tuple[float, int] | None = None
        self._busy_at: float | None = None
        self._winding_since: float | None = None
        self._idle_s = IDLE_WAIT_S[0]
        self._claim_after = 0.0        # an empty queue is not asked again before this
        self._io: ThreadPoolExecutor | None = None       # claims and renders
        self._stores: ThreadPoolExecutor | None = None
        self._fetching = threading.Lock()
        self._leased: set[tuple[int, int]] = set()   # claimed and not yet stored or failed: the
        self._leased_lock = threading.Lock()          # only pages whose leases heartbeats renew
        self.outage = Outage(self.log)
        self._beat: threading.Thread | None = None
        self._done = threading.Event()     # set by stop(): heartbeats end
        self._wake = threading.Event()     # a beat now (the batch emptied: say idle at once), or the end
        self.peak_bytes = 0                # the most memory any stretch of decoding took
        self._worked = False               # decoded since it last had nothing in hand
        self._paused: tuple[float, bool] = (float("-inf"), False)   # (checked at, paused)
        self.room = RoomWatch(self.config.state_dir, self.log)      # no claims on a full disk

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> bool:
        """Register and load the model; False when it can't be loaded (pages stay queued)."""
        self.ledger = Ledger(self.config.db_url, backoff_base_s=self.ctx.backoff_base_s,
                             host=self.config.host_name, pool_size=RENDER_THREADS + 1,
                             on_corrupt=self._ledger_corrupt)
        device = detect_device()
        self.backend = device.backend
        self.ledger.register_worker(self.ctx.worker_id, host=self.ledger.host, pid=os.getpid(),
                                    backend=device.backend, device_name=device.name,
                                    state=WorkerState.LOADING, batch=self.tuner.limit)
        started = time.monotonic()
        try:
            self.engine = make_engine(self.ctx.engine_factory, self.config.model)
            self.engine.load()
            self.session = self._open_session()
        except Exception as exc:  # any load failure means: no model yet; pages stay queued
            reason = str(exc) if isinstance(exc, ModelUnavailable) else first_line(exc, with_type=True)
            # the supervisor logs it (once per new status): one error line per failed load, not two
            self.log.info("model_load_failed", reason=reason, model=self.config.model.path)
            self.ledger.set_worker_state(self.ctx.worker_id, WorkerState.LOAD_FAILED)
            self.send(Message(WorkerEvent.LOAD_FAILED, reason=reason))
            return False
        seconds = time.monotonic() - started
        self.ledger.add_event(None, "model_loaded",
                              f"worker={self.ctx.worker_id} pid={os.getpid()} seconds={seconds:.2f}")
        self.log.info("model_loaded", seconds=round(seconds, 2), model=self.config.model.path,
                      backend=device.backend, batch=self.tuner.limit, batch_cap=self.tuner.cap,
                      tuning=not self.tuner.settled)
        self.ledger.set_worker_state(self.ctx.worker_id, WorkerState.IDLE)
        self.send(Message(WorkerEvent.LOADED, seconds=seconds,
                          weights_bytes=memory_stats()["active_memory_bytes"]))
        self._io = ThreadPoolExecutor(RENDER_THREADS, thread_name_prefix="io")
        self._stores = ThreadPoolExecutor(1, thread_name_prefix="store")
        self._beat = threading.Thread(target=self._heartbeats, name="heartbeats", daemon=True)
        self._beat.start()
        return True

    def tick(self) -> bool:
        """Claim (ahead, on the io threads), admit pages to free slots, decode one step and hand
        the pages that ended to the store thread. False: time to exit."""
        if self.reload.is_set():
            self._reload_config()
        if not len(self.session) and not self._ready and self._claim is None and not self._winding():
            self._claim_ahead()            # nothing in hand: claim now and wait for it
        self._collect_claim(wait=not len(self.session) and not self._ready)
        if not len(self.session) and self._ready:
            wait([self._ready[0][1]])      # nothing decoding: wait for the next page's render
        if self._winding():
            if not len(self.session) or time.monotonic() - self._winding_since > WARM_FINISH_S:
                return False
        else:
            self._admit()
            self._claim_ahead()
        if len(self.session):
            self._step()
            self._worked = True
        elif not self._ready:
            if self._worked:           # just ran out of work: status says idle now, not a beat later
                self._worked = False
                self._wake.set()
            self._idle()
        return True

    def stop(self) -> None:
        """Give back what is still held (pages in flight, ready or claimed ahead: not their fault,
        no attempt counted), let stores in flight finish, mark the worker stopped."""
        self.stopping.set()
        if self._claim is not None:
            self._collect_claim(wait=True)
        if self.session is not None:
            self.session.close()
        for pool in (self._io, self._stores):
            if pool is not None:
                pool.shutdown(wait=True)
        self._done.set()
        self._wake.set()
        if self._beat is not None:
            self._beat.join(timeout=10)
        if self.ledger is None:
            return
        try:
            if self._io is not None:
                released = self.ledger.release_pages(self.ctx.worker_id)
                if released:
                    self.log.info("pages_released", count=released)
                self.ledger.set_worker_state(self.ctx.worker_id, WorkerState.STOPPED)
        finally:
            self.ledger.close()

    # -- claim and render (io threads) -> ready -> admitted -----------------------------------------
    def _claim_ahead(self) -> None:
        """Keep the session full and READY_AHEAD pages rendered behind it."""
        if self._is_paused() or self.room.problem() is not None:
            return
        if self._claim is not None or time.monotonic() < self._claim_after:
            return                     # one claim at a time; an empty queue is asked again later
        budget = self.config.workers.max_pages_per_worker - self.claimed
        want = (self.tuner.limit - len(self.session) + min(self.tuner.limit, READY_AHEAD)
                - len(self._ready))
        if min(want, budget) > 0:
            self._claim = self._io.submit(self._claim_and_render, min(want, budget, CLAIM_MAX))

    def _is_paused(self, now: float | None = None) -> bool:
        """`ocrd pause` holds new claims (pages in hand finish); read from the ledger's meta at
        most every PAUSE_CHECK_S, so an idle worker's poll costs no more than it did."""
        now = time.monotonic() if now is None else now
        if now - self._paused[0] >= PAUSE_CHECK_S:
            try:
                paused = self.ledger.paused_since() is not None
            except Exception as exc:  # a busy ledger: keep the last answer, ask again next time
                self.log.warning("pause_check_failed", error=str(exc))
                paused = self._paused[1]
            if paused != self._paused[1]:
                self.log.info("claims_paused" if paused else "claims_resumed")
            self._paused = (now, paused)
        return self._paused[1]

    def _ledger_corrupt(self, exc: LedgerCorrupt) -> None:
        """The ledger is damaged (met on any thread): tell the supervisor and exit at once, so
        that nothing more is written to it (stop() would release pages and mark this worker)."""
        self.log.error("ledger_corrupt", error=str(exc))
        self.send(Message(WorkerEvent.LEDGER_CORRUPT, reason=exc.reason))
        os._exit(EXIT_LEDGER_CORRUPT)

    def _collect_claim(self, *, wait: bool) -> None:
        if self._claim is not None and (wait or self._claim.done()):
            claim, self._claim = self._claim, None
            try:
                got = claim.result()
            except LedgerUnreachable as exc:   # a server restarting: not the pages' fault, nor ours
                self.outage.down(exc)
                self._claim_after = time.monotonic() + LEDGER_RETRY_S
                return
            self.outage.up()
            self._ready.extend(got)
            if got:
                self._idle_s, self._claim_after = IDLE_WAIT_S[0], 0.0
            else:   # the queue is empty: ask again after 0.1 s, backing off to 1 s
                self._claim_after = time.monotonic() + self._idle_s
                self._idle_s = min(self._idle_s * 2, IDLE_WAIT_S[1])

    def _claim_and_render(self, n: int) -> list[tuple[ClaimedPage, Rendering]]:
        """Claim up to n pages and start rendering each (RENDER_THREADS at a time)."""
        pages = self.ledger.claim_pages(self.ctx.worker_id, n=n, lease_s=self.ctx.lease_s)
        with self._leased_lock:
            self._leased.update((p.job_id, p.page_no) for p in pages)
        self.claimed += len(pages)
        return [(page, self._io.submit(self._render, page)) for page in pages]

    def _render(self, page: ClaimedPage) -> Image.Image | None:
        """The page's image; None when it can't be rendered (the page is failed here)."""
        try:
            return render_page(self._source(page), page.page_no, self.config.pdf.dpi)
        except OcrdError as exc:
            self._fail(page, exc)
        except LedgerUnreachable as exc:   # another host's document not fetched: its lease runs out
            self.outage.down(exc, job_id=page.job_id, page=page.page_no)
            self._let_go(page)
        except Exception as exc:  # a renderer bug is this page's problem, not the worker's
            self._fail(page, InputError(f"cannot render page: {first_line(exc, with_type=True)}"))
        return None

    def _source(self, page: ClaimedPage) -> Path:
        """The page's document: the spool file of a job of this host, else (a PostgreSQL ledger
        shared by several hosts) a copy fetched from the ledger once per job."""
        if self.ledger.delivers(page.host):
            return Path(page.spool_path)
        folder = fetched_dir(self.config)
        copy = folder / files.fit_name(f"{page.job_id}-{Path(page.spool_path).name}", 120)
        with self._fetching:           # pages of one document render side by side: fetch it once
            if not copy.exists():
                folder.mkdir(mode=0o700, exist_ok=True)
                if not self.ledger.fetch_document(page.job_id, copy):
                    raise InputError(f"the document is not in the ledger (host {page.host} holds it)")
        return copy

    def _admit(self) -> None:
        """Ready pages join the session while it has free slots, each with its inbox's prompt
        and mode."""
        while self._ready and self._ready[0][1].done() and len(self.session) < self.tuner.limit:
            page, rendering = self._ready.popleft()
            image = rendering.result()
            if image is None:
                continue
            prompt, mode = self._prompt_and_mode(page)
            key = (page.job_id, page.page_no)
            self._held[key] = page
            self._sizes[key] = image.size
            # before the engine sees it: a crash while preparing it is this page's too
            self.send(Message(WorkerEvent.ADMITTED, page=f"{page.job_id}:{page.page_no}"))
            refused = self.session.add(key, image, prompt=prompt, mode=mode,
                                       max_tokens=self.config.model.max_tokens)
            if refused is not None:
                self._finish(refused)
        self._show_in_flight()

    def _prompt_and_mode(self, page: ClaimedPage) -> tuple[str, str]:
        """The job's own (an API upload's choice), else its inbox's prompt and mode: from this
        host's config for its own inboxes (a SIGHUP's change applies to the next page), else as
        the host that has the inbox recorded them."""
        if not self.ledger.delivers(page.host):
            return page.prompt or self.config.model.prompt, page.mode or self.config.model.mode
        if self.config.inbox_for(page.inbox) is None:
            self._reload_config()   # an inbox added by a SIGHUP after this worker started
        inbox, chosen = self.config.inbox_for(page.inbox), page.chosen
        return chosen.prompt or self.config.prompt_for(inbox), chosen.mode or self.config.mode_for(inbox)

    def _show_in_flight(self) -> None:
        # Plain attributes the heartbeat thread reads (it must not iterate a dict in motion).
        self.in_flight = len(self.session)
        first = next(iter(self._held), None)
        self.current_page = None if first is None else (
            f"{first[0]}:{first[1]}" + (f" +{len(self._held) - 1}" if len(self._held) > 1 else ""))

    # -- decode ---------------------------------------------------------------------------------
    def _step(self) -> None:
        in_flight = len(self.session)
        self._most_in_flight = max(self._most_in_flight, in_flight)
        now = time.monotonic()
        if self._busy_at is None or now - self._busy_at >= BUSY_EVERY_S:
            self.send(Message(WorkerEvent.BUSY, pages=1))
            self._busy_at = now
        before = self.session.generated
        try:
            finished = self.session.step()
            produced = self.session.generated - before
        except OcrdError as exc:     # the batch itself failed: each page in it is failed
            self.log.error("batch_failed", error=str(exc), pages=in_flight)
            finished, produced = [Finished(key, error=exc) for key in self._held], 0
            self.session.close()
            self.session = self._open_session()
        self._generated += produced
        self.tuner.observe(produced, in_flight)
        for f in finished:
            self._finish(f)
        self._show_in_flight()
        if not len(self.session):
            self.send(Message(WorkerEvent.IDLE))
            self._busy_at = None
        self._check_memory()

    def _finish(self, finished: Finished) -> None:
        page = self._held.pop(finished.key)
        size = self._sizes.pop(finished.key)
        if finished.error is not None:
            self._fail(page, finished.error)
            return
        # The peak since the last page ended, with at most this many pages in flight meanwhile:
        # the supervisor sizes the batch from it.
        peak, most = take_peak_memory(), self._most_in_flight
        self.peak_bytes = max(self.peak_bytes, peak)
        self._most_in_flight = len(self.session)
        self._hand_over(page, self._store, finished.result, size, peak, max(most, 1))

    def _check_memory(self) -> None:
        limit = self.ctx.recycle_memory_bytes
        active = memory_stats()["active_memory_bytes"] if limit else 0
        if limit and active > limit * 0.8:
            self.tuner.hold()          # near the bound: grow no further
        if limit and active > limit and self.exit_reason is None:
            self._wind_down("memory growth", limit_bytes=limit)

    def _winding(self) -> bool:
        if self.exit_reason is None:
            if self.stopping.is_set():
                self._wind_down("stop requested")
            elif (self.claimed >= self.config.workers.max_pages_per_worker and self._claim is None
                  and not self._ready):
                self._wind_down("page budget")
        return self.exit_reason is not None

    def _wind_down(self, reason: str, **fields: object) -> None:
        self.exit_reason = reason
        self._winding_since = time.monotonic()
        self.log.info("worker_recycle" if reason != "stop requested" else "worker_stopping",
                      reason=reason, pages=self.claimed, in_flight=len(self.session), **fields)

    def _idle(self) -> None:
        """Nothing in hand: wait until the queue may be asked again (or a stop)."""
        self.stopping.wait(max(self._claim_after - time.monotonic(), 0.0))

    def _open_session(self) -> Session:
        return open_session(self.engine, capacity=self.tuner.cap,
                            page_budget_s=self.config.model.page_timeout_s)

    # -- store and fail -------------------------------------------------------------------------
    def _hand_over(self, page: ClaimedPage, record: Callable[..., None], *args: object) -> None:
        """A page's end (its result, or its failure) is written on the store thread, never on the
        decode thread, and tried again while the ledger is unreachable."""
        self._stores.submit(self._record, page, record, *args)

    def _record(self, page: ClaimedPage, record: Callable[..., None], *args: object) -> None:
        """Write a page's end; a server that went away is waited for (its result is worth it;
        once the server is back a lost lease refuses it), while stopping for one lease at most.
        A page whose end can't be written is let go: no heartbeat renews it, its lease runs out
        and it comes back (or the supervisor finishes a document whose pages all got stored)."""
        started = time.monotonic()
        while True:
            try:
                record(page, *args)
                self.outage.up()
                break
            except LedgerUnreachable as exc:
                self.outage.down(exc, job_id=page.job_id, page=page.page_no)
                if not self.stopping.is_set() or time.monotonic() - started < self.ctx.lease_s:
                    time.sleep(LEDGER_RETRY_S)
                    continue
                self.log.error("store_failed", job_id=page.job_id, page=page.page_no, error=str(exc))
                break
            except Exception as exc:  # on the store thread nothing else would see it
                self.log.error("store_failed", job_id=page.job_id, page=page.page_no,
                               error=first_line(exc, with_type=True))
                break
        self._let_go(page)

    def _let_go(self, page: ClaimedPage) -> None:
        with self._leased_lock:
            self._leased.discard((page.job_id, page.page_no))

    def _store(self, page: ClaimedPage, result: PageResult, size: tuple[int, int], peak: int,
               in_flight: int) -> None:
        """The page's text and its blocks (a line engine's lines, or DeepSeek-OCR's grounding
        boxes) with the size of the image they refer to, and its words for the search index; the
        supervisor finishes the document."""
        blocks = result.blocks or parse_grounding(result.text, *size)[0]
        complete = self.ledger.complete_page(
            page.job_id, page.page_no, self.ctx.worker_id, text=result.text,
            prompt_tokens=result.prompt_tokens, generation_tokens=result.generation_tokens,
            seconds=result.seconds, finish_reason=result.finish_reason,
            blocks=json.dumps(to_dicts(blocks, *size), ensure_ascii=False) if blocks else None,
            width=size[0], height=size[1], engine=name_of(self.ctx.engine_factory),
            search_text=search_text(result.text))
        if complete is None:   # its lease ran out (this host slept): another worker has the page
            self.log.warning("page_result_refused", job_id=page.job_id, page=page.page_no,
                             reason="lease lost: the page went to another worker")
        else:
            self.pages_done += 1
            self.log.info("page_done", job_id=page.job_id, page=page.page_no, seconds=round(result.seconds, 3),
                          tokens=result.generation_tokens, finish_reason=result.finish_reason,
                          peak_memory_bytes=peak, in_flight=in_flight)
        self.send(Message(WorkerEvent.PAGE_STORED, pages=in_flight, peak_memory_bytes=peak,
                          page=f"{page.job_id}:{page.page_no}"))
        if complete:
            self.send(Message(WorkerEvent.DOCUMENT_ENDED, job=page.job_id))

    def _fail(self, page: ClaimedPage, exc: OcrdError) -> None:
        self._hand_over(page, self._record_failure, exc)

    def _record_failure(self, page: ClaimedPage, exc: OcrdError) -> None:
        outcome = self.ledger.fail_page(page.job_id, page.page_no, self.ctx.worker_id, str(exc),
                                        retryable=exc.retryable, max_attempts=self.config.workers.max_attempts)
        self.log.warning("page_failed", job_id=page.job_id, page=page.page_no, reason=str(exc),
                         kind=exc.kind, outcome=str(outcome.state))
        if outcome.job_failed:
            self.send(Message(WorkerEvent.DOCUMENT_ENDED, job=page.job_id))

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
            if os.getppid() != parent:  # the supervisor died (macOS has no PDEATHSIG: lifeline.py)
                self.log.error("supervisor_gone")
                os._exit(1)
            # Beats go on through a warm stop, so the lease of the page in hand stays renewed.
            self._wake.wait(self.ctx.heartbeat_s)
            self._wake.clear()
            if self._done.is_set():
                return

    def _beat_once(self) -> None:
        stats = memory_stats()
        # MLX's peak restarts at every page that ends (batch sizing); a heartbeat shows the worker's
        stats["peak_memory_bytes"] = max(stats["peak_memory_bytes"], self.peak_bytes)
        now, generated = time.monotonic(), self._generated
        if self._last_beat is not None and now > self._last_beat[0]:
            self.tokens_per_s = (generated - self._last_beat[1]) / (now - self._last_beat[0])
        self._last_beat = (now, generated)
        state = (WorkerState.BUSY if self.in_flight
                 else WorkerState.STOPPING if self.stopping.is_set() else WorkerState.IDLE)
        with self._leased_lock:
            held = list(self._leased)
        try:
            self.ledger.record_heartbeat(
                self.ctx.worker_id, backend=self.backend, pages_done=self.pages_done,
                tokens_per_s=self.tokens_per_s, current_page=self.current_page, state=state,
                lease_s=self.ctx.lease_s, batch=self.tuner.limit, pages_in_flight=self.in_flight,
                held=held, **stats)
        except LedgerUnreachable as exc:   # leases the server keeps: renewed once it is back
            self.outage.down(exc)
        except Exception as exc:  # a missed beat must not kill the worker; the next one retries
            self.log.warning("heartbeat_failed", error=str(exc))
        extra = {"warning": CPU_WARNING} if self.backend == "cpu" else {}
        self.log.info("device_heartbeat", backend=self.backend, pages_done=self.pages_done,
                      tokens_per_s=round(self.tokens_per_s, 1), current_page=self.current_page,
                      batch=self.tuner.limit, pages_in_flight=self.in_flight, **stats, **extra)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv if argv is None else argv
    _worker_id, control_fd, log_fd = argv[1:4]
    ctx = read_context(sys.stdin.buffer)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the supervisor, which decides
    stop, reload = threading.Event(), threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())  # warm stop: finish the page in hand
    signal.signal(signal.SIGHUP, lambda *_: reload.set())  # re-read the config between pages
    sys.path.extend(p for p in ctx.sys_path if p not in sys.path)
    log, control = (os.fdopen(int(fd), "w", buffering=1, encoding="utf-8") for fd in (log_fd, control_fd))
    configure_worker_logging(log)
    worker = Worker(ctx, send=sender(control), stop=stop, reload=reload)
    try:
        if not worker.start():
            return EXIT_MODEL_UNAVAILABLE
        while worker.tick():   # a SIGTERM winds the batch down; tick() says when it is done
            pass
        return 0
    finally:
        worker.stop()


if __name__ == "__main__":
    sys.exit(main())
