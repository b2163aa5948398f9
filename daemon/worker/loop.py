"""One worker process: load the engine ONCE, then keep a batch of pages decoding.

The pool (pool.py) starts it as `python -m ocrd.daemon.worker WORKER_ID CONTROL_FD LOG_FD` (tied
to the supervisor by lifeline.py) and writes its `WorkerContext` to stdin. It answers with
`Message`s on CONTROL_FD (protocol.py) and logs JSON lines on LOG_FD. `main()` drives a `Worker`
through start / tick / stop, the way huey drives its consumer processes.

The parts, each owning its threads (a thread that dies takes the worker down loudly):
- the loop (this module, the main thread): admits prepared pages to the decode session while it
  has free slots, steps it, hands each page that ends to the recorder, winds down on a stop;
- the feeder (feeder.py, the front pool): claims ahead, renders and preprocesses pages on the CPU
  so that the decoder never waits for a page's CPU work;
- the recorder (recorder.py, the store thread): a page's result or failure into the ledger;
- the heartbeat (heartbeat.py): device status and lease renewal;
- the tuner (tuner.py): the in-flight limit, by measurement when `batch = "auto"`.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from typing import Callable

import structlog

from ocrd.ledger import ClaimedPage, Ledger, LedgerCorrupt, WorkerState

from ..config import ConfigError, load_config
from ..device import detect_device, keep_compiled_kernels, performance_cores
from ..engines.base import ENGINE_MODELS, Engine, Finished, Session, make_engine, open_session
from ..engines.choice import name_of, warns_on_cpu
from ..engines.mlxvlm import memory_stats, take_peak_memory
from ..errors import ModelUnavailable, OcrdError, first_line
from ..logs import Outage, configure_worker_logging
from ..protocol import (EXIT_LEDGER_CORRUPT, EXIT_MODEL_UNAVAILABLE, Message, WorkerContext, WorkerEvent,
                        read_context, read_nudges, sender)
from .feeder import Feeder, front_threads
from .heartbeat import Heartbeat, Snapshot
from .recorder import Recorder
from .tuner import InFlightTuner

BUSY_EVERY_S = 1.0         # while decoding, BUSY restarts the supervisor's page timeout this often
WARM_FINISH_S = 20.0       # a warm stop lets pages in flight finish this long (supervisor: 25 s)
GIL_SWITCH_S = 0.001       # the decode thread, back from a device step, waits at most this for the
                           # GIL held by a front thread (Python's default, 5 ms, is most of a step)


class Worker:
    """start() registers the worker and loads the model once; tick() admits and decodes one
    step; stop() gives back pages still held and marks the worker stopped. `send` carries
    protocol messages to the supervisor. A stop request or a recycle reason winds the batch down:
    nothing new is admitted, pages in flight may finish (up to WARM_FINISH_S), then tick() is False."""

    def __init__(self, ctx: WorkerContext, *, send: Callable[[Message], None] = lambda m: None,
                 stop: threading.Event | None = None, reload: threading.Event | None = None,
                 wake: threading.Event | None = None) -> None:
        self.ctx = ctx
        self.config = ctx.config
        self.send = send
        self.stopping = stop or threading.Event()
        self.reload = reload or threading.Event()
        self.wake = wake or threading.Event()   # ends an idle wait: a nudge (protocol.py) or a stop
        self.log = structlog.get_logger().bind(worker_id=ctx.worker_id)
        self.ledger: Ledger | None = None
        self.engine: Engine | None = None
        self.session: Session | None = None
        self.feeder: Feeder | None = None
        self.recorder: Recorder | None = None
        self.heartbeat: Heartbeat | None = None
        self.tuner = InFlightTuner(ctx.batch_start if ctx.tune_batch else ctx.batch_size,
                                   ctx.batch_size, fixed=not ctx.tune_batch)
        self.outage = Outage(self.log)
        self.exit_reason: str | None = None
        self.unavailable: str | None = None     # the model went away mid-run (a server engine's server)
        self.current_page: str | None = None    # plain attributes the heartbeat reads
        self.in_flight = 0
        self.peak_bytes = 0                     # the most memory any stretch of decoding took
        self._held: dict[tuple[int, int], ClaimedPage] = {}       # in the session
        self._sizes: dict[tuple[int, int], tuple[int, int]] = {}  # the images they were given
        self._generated = 0            # tokens generated, for tokens/s
        self._most_in_flight = 0       # since the last page ended (memory per page in flight)
        self._busy_at: float | None = None
        self._winding_since: float | None = None
        self._worked = False           # decoded since it last had nothing in hand
        self._timed = {"add_s": 0.0, "step_s": 0.0, "steps": 0}   # the decode thread's time in the engine

    @property
    def claimed(self) -> int:
        return self.feeder.claimed if self.feeder is not None else 0

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> bool:
        """Register and load the model; False when it can't be loaded (pages stay queued)."""
        device = detect_device()
        keep_compiled_kernels(self.config.state_dir, device)
        threads = front_threads(performance_cores())
        self.ledger = Ledger(self.config.db_url, backoff_base_s=self.ctx.backoff_base_s,
                             host=self.config.host_name, pool_size=threads + 1,
                             on_corrupt=self._ledger_corrupt)
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
        # a line engine names its own models (RapidOCR's); [model] path and mode are DeepSeek-OCR's
        reads = getattr(self.engine, "models", "")
        self.ledger.set_meta(ENGINE_MODELS, reads)
        self.log.info("model_loaded", seconds=round(seconds, 2), model=reads or self.config.model.path,
                      backend=device.backend, batch=self.tuner.limit, batch_cap=self.tuner.cap,
                      tuning=not self.tuner.settled, front_threads=threads)
        self.ledger.set_worker_state(self.ctx.worker_id, WorkerState.IDLE)
        self.send(Message(WorkerEvent.LOADED, seconds=seconds,
                          weights_bytes=memory_stats()["active_memory_bytes"]))
        common = dict(worker_id=self.ctx.worker_id, ledger=self.ledger, outage=self.outage, log=self.log)
        self.recorder = Recorder(engine_name=name_of(self.ctx.engine_factory), lease_s=self.ctx.lease_s,
                                 max_attempts=lambda: self.config.workers.max_attempts, send=self.send,
                                 stopping=self.stopping, **common)
        self.feeder = Feeder(engine=self.engine, recorder=self.recorder, config=lambda: self.config,
                             prompt_and_mode=self._prompt_and_mode, lease_s=self.ctx.lease_s,
                             threads=threads, idle_wait_s=self.ctx.idle_wait_s, **common)
        self.heartbeat = Heartbeat(backend=device.backend, every_s=self.ctx.heartbeat_s,
                                   slow_on_cpu=warns_on_cpu(name_of(self.ctx.engine_factory)),
                                   lease_s=self.ctx.lease_s, snapshot=self._snapshot,
                                   held=self._leases, **common)
        self.heartbeat.start()
        return True

    def tick(self) -> bool:
        """Admit prepared pages to free slots, keep the feeder claiming ahead, decode one step.
        False: time to exit."""
        if self.unavailable is not None:
            return False
        if self.reload.is_set():
            self._reload_config()
        feeder = self.feeder
        if not len(self.session) and not feeder.in_hand and not self._winding():
            self._fill()                   # nothing in hand: claim now and wait for it
        feeder.collect(wait_for_it=not len(self.session) and not feeder.ready)
        if self._winding():
            if not len(self.session) or time.monotonic() - self._winding_since > WARM_FINISH_S:
                return False
        else:
            self._admit()
            self._fill()
        if len(self.session):
            self._step()
            self._worked = True
        elif not feeder.ready:
            if self._worked:           # just ran out of work: status says idle now, not a beat later
                self._worked = False
                self.heartbeat.wake()
            if self.wake.wait(max(feeder.claim_after - time.monotonic(), 0.0)):   # idle backoff
                self.wake.clear()
                feeder.nudged()        # a document was queued here: ask now
        return True

    def stop(self) -> None:
        """Give back what is still held (pages in flight, prepared or claimed ahead: not their
        fault, no attempt counted), let stores in flight finish, mark the worker stopped."""
        self.stopping.set()
        if self._timed["steps"]:   # where the decode thread's time went (bench/pipelined.py reads it)
            self.log.info("decode_time", pages=self.recorder.pages_done if self.recorder else 0,
                          **{k: round(v, 6) for k, v in self._timed.items()})
        for part in (self.feeder, self.session, self.recorder):
            if part is not None:
                part.close()
        if self.heartbeat is not None:
            self.heartbeat.stop()
        if self.ledger is None:
            return
        try:
            if self.feeder is not None:
                released = self.ledger.release_pages(self.ctx.worker_id)
                if released:
                    self.log.info("pages_released", count=released)
                self.ledger.set_worker_state(self.ctx.worker_id, WorkerState.STOPPED)
        finally:
            self.ledger.close()

    def _ledger_corrupt(self, exc: LedgerCorrupt) -> None:
        """The ledger is damaged (met on any thread): tell the supervisor and exit at once, so
        that nothing more is written to it (stop() would release pages and mark this worker)."""
        self.log.error("ledger_corrupt", error=str(exc))
        self.send(Message(WorkerEvent.LEDGER_CORRUPT, reason=exc.reason))
        os._exit(EXIT_LEDGER_CORRUPT)

    # -- admit and decode ---------------------------------------------------------------------------
    def _room(self) -> int:
        """Pages the session takes: the in-flight limit and the few it starts ahead (`ahead`)."""
        return self.tuner.limit + self.session.ahead

    def _fill(self) -> None:
        self.feeder.fill(self._room() - len(self.session), self.tuner.limit)

    def _admit(self) -> None:
        """Prepared pages join the session while it has room (waiting for the next one's
        preparation only when nothing is decoding)."""
        self.session.limit = self.tuner.limit
        while len(self.session) < self._room():
            prepared = self.feeder.take(block=not len(self.session))
            if prepared is None:
                break
            page = prepared.page
            key = (page.job_id, page.page_no)
            self._held[key] = page
            self._sizes[key] = prepared.size
            # before the engine sees it: a crash while admitting it is this page's too
            self.send(Message(WorkerEvent.ADMITTED, page=f"{page.job_id}:{page.page_no}"))
            t = time.perf_counter()
            refused = self.session.add(key, prepared.input, prompt=prepared.prompt, mode=prepared.mode,
                                       max_tokens=self.config.model.max_tokens)
            self._timed["add_s"] += time.perf_counter() - t
            if refused is not None:
                self._finish(refused)
        self._show_in_flight()

    def _leases(self) -> list[tuple[int, int]] | None:
        """What a heartbeat renews: the pages held; or, while a claim's answer may have been lost
        to an outage, every page leased to this worker (None), so that the lost claim's pages
        don't run out before the next claim adopts them (ledger.claim_pages)."""
        return None if self.feeder.claim_lost else self.recorder.held()

    def _prompt_and_mode(self, page: ClaimedPage) -> tuple[str, str]:
        """The job's own (an API upload's choice), else its inbox's prompt and mode: from this
        host's config for its own inboxes (a SIGHUP's change applies to the next page), else as
        the host that has the inbox recorded them. Runs on the feeder's threads."""
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

    def _snapshot(self) -> Snapshot:
        return Snapshot(pages_done=self.recorder.pages_done, generated=self._generated,
                        current_page=self.current_page, batch=self.tuner.limit, in_flight=self.in_flight,
                        peak_bytes=self.peak_bytes, stopping=self.stopping.is_set())

    def _step(self) -> None:
        in_flight = len(self.session)
        self._most_in_flight = max(self._most_in_flight, in_flight)
        now = time.monotonic()
        if self._busy_at is None or now - self._busy_at >= BUSY_EVERY_S:
            self.send(Message(WorkerEvent.BUSY, pages=1))
            self._busy_at = now
        before = self.session.generated
        t = time.perf_counter()
        try:
            finished = self.session.step()
            produced = self.session.generated - before
            self._timed["step_s"] += time.perf_counter() - t
            self._timed["steps"] += 1
        except OcrdError as exc:     # the batch itself failed: each page in it is failed
            self.log.error("batch_failed", error=str(exc), pages=in_flight)
            finished, produced = [Finished(key, error=exc) for key in self._held], 0
            self.session.close()
            self.session = self._open_session()
        self._generated += produced
        self.tuner.observe(produced, min(in_flight, self.tuner.limit))
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
        if isinstance(finished.error, ModelUnavailable):
            self._lose_model(str(finished.error))   # not the page's fault: stop() gives it back
            return
        if finished.error is not None:
            self.recorder.fail(page, finished.error)
            return
        # The peak since the last page ended, with at most this many pages in flight meanwhile:
        # the supervisor sizes the batch from it.
        peak, most = take_peak_memory(), self._most_in_flight
        self.peak_bytes = max(self.peak_bytes, peak)
        self._most_in_flight = len(self.session)
        self.recorder.stored(page, finished.result, size, peak, max(most, 1))

    def _lose_model(self, reason: str) -> None:
        """The model went away mid-run (engine = "openai": the server is down, or refuses every
        page). Exit as a worker whose model would not load: stop() gives every page in hand back
        uncharged, and the supervisor shows the reason and probes again with backoff."""
        if self.unavailable is None:
            self.unavailable = reason
            self.log.info("model_lost", reason=reason, in_flight=len(self.session))
            self.send(Message(WorkerEvent.LOAD_FAILED, reason=reason))

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
            elif self.feeder.exhausted:
                self._wind_down("page budget")
        return self.exit_reason is not None

    def _wind_down(self, reason: str, **fields: object) -> None:
        self.exit_reason = reason
        self._winding_since = time.monotonic()
        self.log.info("worker_recycle" if reason != "stop requested" else "worker_stopping",
                      reason=reason, pages=self.claimed, in_flight=len(self.session), **fields)

    def _open_session(self) -> Session:
        return open_session(self.engine, capacity=self.tuner.cap,
                            page_budget_s=self.config.model.page_timeout_s)

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


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv if argv is None else argv
    _worker_id, control_fd, log_fd = argv[1:4]
    ctx = read_context(sys.stdin.buffer)
    sys.setswitchinterval(GIL_SWITCH_S)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the supervisor, which decides
    stop, reload, wake = threading.Event(), threading.Event(), threading.Event()

    def warm_stop(*_: object) -> None:   # SIGTERM: finish the pages in hand
        stop.set()
        wake.set()

    signal.signal(signal.SIGTERM, warm_stop)
    signal.signal(signal.SIGHUP, lambda *_: reload.set())  # re-read the config between pages
    sys.path.extend(p for p in ctx.sys_path if p not in sys.path)
    log, control = (os.fdopen(int(fd), "w", buffering=1, encoding="utf-8") for fd in (log_fd, control_fd))
    configure_worker_logging(log)
    worker = Worker(ctx, send=sender(control), stop=stop, reload=reload, wake=wake)
    threading.Thread(target=read_nudges, args=(sys.stdin.fileno(), wake.set), name="nudges", daemon=True).start()
    try:
        if not worker.start():
            return EXIT_MODEL_UNAVAILABLE
        while worker.tick():   # a SIGTERM winds the batch down; tick() says when it is done
            pass
        return EXIT_MODEL_UNAVAILABLE if worker.unavailable is not None else 0
    finally:
        worker.stop()
