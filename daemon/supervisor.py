"""`ocrd run`: the supervisor that ties the ingest service, the ledger and the worker pool together.

Its tick: act on what the workers said (model loaded, pages stored), reap the workers that ended
(their pages go back with the attempt counted), kill a worker stuck on a page past page_timeout_s,
rescue expired leases, start workers up to the pool size. The pool (pool.py) owns the processes;
the supervisor decides what each exit means for the ledger, and writes it, on the tick's thread.
Signal handlers only set flags: the first SIGTERM/SIGINT is a warm stop (nothing new is claimed,
pages in flight finish or are released), a second one or the deadline is a cold stop. SIGHUP
reloads the inbox list without dropping work.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

import structlog

from ocrd.ledger import (BACKOFF_BASE_S, DaemonInfo, Ledger, LedgerCorrupt, LedgerUnreachable, ModelState,
                         ModelStatus, WorkerState)
from ocrd.ledger.hosts import HostNameTaken

from .config import Config, ConfigError, ModelConfig, load_config
from .device import (CPU_WARNING, DeviceInfo, PoolPlan, footprint_key, page_key, plan_for_config,
                     probe_device)
from .engines.weights import model_size_bytes
from .engines.choice import EngineChoice, choose_engine, fetch_model, name_of, warns_on_cpu
from .errors import OcrdError, PageTimeout, WorkerDied
from .files import make_private_dir
from .hooks import HookRunner
from .intake.service import IngestService
from .ledger_file import EXIT_LEDGER_UNREADABLE, BackupService, LedgerUnreadable, open_ledger
from .lockfile import AlreadyRunning, DaemonLock, pid_alive
from .logs import Outage, configure_logging
from .output.delivery import Delivery, instance_id
from .output.outbox import job_formats
from .output.writers import output_path, stem_of
from .pool import Exit, WorkerPool
from .protocol import (EXIT_LEDGER_CORRUPT, EXIT_MODEL_UNAVAILABLE, IDLE_WAIT_S, Message, WorkerContext,
                       WorkerEvent)
from .search_index import index_backlog

log = structlog.get_logger()

# A test seam (several-hosts e2e tests): OCRD_TEST_LEASE_S=8 gives pages 8 s leases, renewed by
# heartbeats every lease/4, so a lost worker's pages come back in seconds, not a minute.
_TEST_LEASE_S = float(os.environ.get("OCRD_TEST_LEASE_S") or 0)
WARM_STOP_S = 25.0                 # launchd's ExitTimeOut is 60 s, systemd's TimeoutStopSec 60 s


@dataclass(frozen=True)
class Settings:
    """The supervisor's knobs (seams for tests and benches); sizing comes from the pool plan."""

    engine_factory: str | None = None   # None: the config's [model] engine, chosen for the device
    rescan_s: float = 60.0           # the watcher's full rescan of every inbox
    empty_grace_s: float = 60.0      # an empty file waits this long before it fails
    lease_s: float = _TEST_LEASE_S or 60.0
    heartbeat_s: float = _TEST_LEASE_S / 4 if _TEST_LEASE_S else 5.0
    backoff_base_s: float = BACKOFF_BASE_S   # a failed page's retry delay base
    idle_wait_s: tuple[float, float] = IDLE_WAIT_S   # an idle worker's polls: first wait, longest


class Supervisor:
    """start() plans the pool, recovers the last run and starts ingest; tick() supervises once;
    stop() stops the workers (warm, then cold) and gives their pages back."""

    def __init__(self, config: Config, settings: Settings = Settings(),
                 device: DeviceInfo | None = None) -> None:
        self.config = config
        self.settings = settings
        self.device = device             # None: detect through MLX at start
        self.host = config.host_name
        self.wake = threading.Event()    # run_daemon's loop: a signal, the ledger found damaged, a job
                                         # queued, a document ended (its outputs are due)
        self.pool = WorkerPool(wake=self.wake)
        self.ledger: Ledger | None = None
        self.delivery: Delivery | None = None
        self.ingest: IngestService | None = None
        self.plan: PoolPlan | None = None
        self.engine: EngineChoice | None = None
        self.recycle_bytes = 0
        self.model_ok: bool | None = None
        self.ready = threading.Event()   # set once the model loaded, or its first load failed
        self._model_fetched = threading.Event()   # DeepSeek-OCR downloaded behind an interim engine
        self.weights_bytes = 0           # a loaded worker's memory before any page
        self.peak_seen = 0               # the one-page footprint measured on real pages
        self.page_seen = 0               # memory per page in flight, measured
        self._saved = (0, 0)
        self._admitted: dict[str, set[str]] = {}   # worker id -> pages it gave its engine, not stored
        self._serial = 0
        self._next_rescue = 0.0
        self.hooks = HookRunner(config.hooks)
        self.hooks.outputs_of = self._outputs_of
        self.metrics = None              # a MetricsServer while [metrics] listen is set
        self.backups: BackupService | None = None
        self.corrupt: LedgerCorrupt | None = None   # the ledger is damaged: stop, writing nothing
        self.queued = threading.Event()  # a job was queued since the last tick: nudge idle workers
        self.api = None                  # an ApiServer while [api] listen is set
        self._unindexed_after: int | None = 0   # pages done before the search index: from this id

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        make_private_dir(self.config.state_dir)   # 0700: the ledger, spool and logs are private
        self.config.spool_dir.mkdir(exist_ok=True)
        if not self.config.ledger_url and not self.config.ledger_path.exists():
            spooled = [p for p in self.config.spool_dir.iterdir() if not p.name.startswith(".")]
            if spooled:   # a lost ledger: say so loudly; reconcile queues them again by name
                log.error("new_ledger_started", ledger=str(self.config.ledger_path), spool_files=len(spooled),
                          note="the ledger was missing: a new one is started and the spool's files "
                               "are queued again under their original names")
        self.ledger, checked = open_ledger(self.config, backoff_base_s=self.settings.backoff_base_s,
                                           on_corrupt=self._on_corrupt)
        self.backups = BackupService(self.config, self._on_corrupt, check_first=not checked)
        instance = instance_id(self.config)
        self.ledger.take_host_name(instance)   # before writing this host's rows
        # detected in a child process: probing in this one would hold a GPU context all its life
        device = self.device = self.device or probe_device()
        engine = self.engine = self._choose_engine(device)
        log.info("engine_chosen", engine=engine.name, reason=engine.reason, factory=engine.factory)
        if engine.interim:   # tick() rolls the workers over to DeepSeek-OCR once it is here
            fetch_model(self.config.model.path, self._model_fetched)
        if device.backend == "cpu" and warns_on_cpu(engine.name):
            log.warning("cpu_mode", warning=CPU_WARNING, device=device.name)
        plan = self.plan = plan_for_config(device, self.config, *self._measured(), engine=engine.name)
        self.recycle_bytes = plan.recycle_bytes
        log.info("pool_planned", workers=plan.count, reason=plan.reason, batch=plan.batch,
                 batch_reason=plan.batch_reason, recycle_bytes=plan.recycle_bytes,
                 recycle_reason=plan.recycle_reason, backend=device.backend, device=device.name,
                 memory_bytes=device.memory_bytes)
        self.ledger.set_daemon_info(DaemonInfo(
            backend=device.backend, name=device.name, memory_bytes=device.memory_bytes,
            workers=plan.count, batch=plan.batch, reason=plan.reason,
            batch_reason=plan.batch_reason, engine=engine.name, engine_reason=engine.reason))
        self.ledger.set_model_status(ModelStatus(ModelState.LOADING))
        self.delivery = Delivery(self.config, self.ledger, workers=plan.count, instance=instance,
                                 backend=device.backend, device_name=device.name)
        if not plan.count:   # [workers] count = 0: this host ingests and delivers; others decode
            self.ready.set()
        self._recover_previous_run()
        self.delivery.start()
        self.hooks.start(self.ledger)
        from .metrics import MetricsServer   # prometheus_client: only the daemon needs it
        self.metrics = MetricsServer(self.config.metrics, self.ledger)
        self.metrics.start()
        self.ingest = IngestService(self.config, rescan_s=self.settings.rescan_s,
                                    empty_grace_s=self.settings.empty_grace_s, on_corrupt=self._on_corrupt,
                                    on_queued=self._job_queued)
        self.ingest.start()
        self.backups.start()
        from .api.server import ApiServer   # FastAPI and uvicorn: only the daemon needs them
        self.api = ApiServer(self.config, self.ledger, on_queued=self._job_queued)
        self.api.start()

    def tick(self, now: float | None = None) -> None:
        """One round of supervision; `now` is time.monotonic() (a seam for tests)."""
        now = time.monotonic() if now is None else now
        if self.corrupt is not None:
            return
        if self.queued.is_set():         # first: a drop's first page should not wait on the rest
            self.queued.clear()
            self.pool.nudge()
        exits = self.pool.reap()
        for worker_id, message in self.pool.drain_events():
            self._on_message(worker_id, message)
        for ended in exits:
            self._on_exit(ended, now)
        self.pool.enforce_timeout(now, self.config.model.page_timeout_s)
        if now >= self._next_rescue:  # a write transaction: not every tick (leases last lease_s)
            self._next_rescue = now + min(5.0, self.settings.lease_s / 4)
            rescued = self.ledger.rescue_expired(max_attempts=self.config.workers.max_attempts,
                                                 settle_s=2 * self.settings.heartbeat_s + 1.0)
            if rescued:
                log.warning("leases_rescued", pages=rescued)
            self._save_footprint()
        self.hooks.tick(now)
        if self._model_fetched.is_set():
            self._take_downloaded_model()
        self._spawn(now)
        if self._unindexed_after is not None:   # pages done before ledger v5: a batch a tick
            self._unindexed_after = index_backlog(self.ledger, self._unindexed_after)

    def after_outage(self, now: float | None = None) -> None:
        """The ledger's server is back: leases ran on while no worker could renew them, so
        rescue none before every worker has had two heartbeats to renew its own."""
        now = time.monotonic() if now is None else now
        self._next_rescue = now + 2 * self.settings.heartbeat_s + 1.0

    def stop(self, deadline_s: float = WARM_STOP_S, cold: threading.Event | None = None) -> None:
        """Warm stop: every worker finishes the page in hand and exits; at the deadline, or when
        `cold` is set, what is left is killed. Pages still held go back to the queue."""
        if self.api is not None:           # first: no upload is taken while stopping
            self.api.stop()
        if self.ingest is not None:
            self.ingest.stop()
        if self.ledger is None:
            return
        if self.corrupt is not None:
            self._stop_without_writing()
            return
        if self.backups is not None:
            self.backups.stop()
        for ended in self.pool.stop(deadline_s, cold):
            released = self.ledger.release_pages(ended.worker_id)
            if released:
                log.info("pages_released", worker_id=ended.worker_id, pages=released)
            self.ledger.set_worker_state(ended.worker_id, WorkerState.STOPPED)
        for worker_id, message in self.pool.drain_events():
            self._on_message(worker_id, message)
        if self.delivery is not None:
            self.delivery.stop()           # after the workers: the documents they just ended
        self._save_footprint()
        if self.metrics is not None:
            self.metrics.stop()
        try:
            self.hooks.tick(float("inf"))    # the jobs that ended during the stop
        except Exception:  # the next start runs them (the cursor is in the ledger)
            log.exception("hooks_check_failed")
        self.hooks.stop()
        try:
            if self.delivery is not None:
                self.delivery.stopped()
        except Exception:  # an unreachable ledger: other hosts see this one go dead instead
            log.exception("host_stop_failed")
        self.ledger.close()

    def _job_queued(self) -> None:
        """Ingest or the API queued a job (on their threads): the next tick, at once, nudges the
        workers (pool.nudge), so an idle one claims it now rather than at its next poll."""
        self.queued.set()
        self.wake.set()

    def _on_corrupt(self, exc: LedgerCorrupt) -> None:
        """The ledger is damaged (found by any thread here, a worker, or the backup thread's
        check): run_daemon stops at once, and nothing more is written."""
        if self.corrupt is None:
            self.corrupt = exc
            log.error("ledger_corrupt", error=str(exc), note="stopping: nothing more is written to it")
        for ledger in (self.ledger, self.ingest and self.ingest.ledger):
            if ledger is not None:
                ledger.refuse(exc)     # hooks, metrics, ingest: not one more write
        self.wake.set()

    def _stop_without_writing(self) -> None:
        """Stop on a damaged ledger: workers are killed at once (a warm stop would store their
        pages), no page is given back and no worker marked; a restored ledger's next start gets
        their pages back (_recover_previous_run)."""
        self.pool.stop(0.0)
        if self.backups is not None:
            self.backups.stop()
        if self.metrics is not None:
            self.metrics.stop(clear_url=False)
        self.hooks.stop(wait_s=0.0)
        self.ledger.close()

    def reload(self, config: Config) -> None:
        """SIGHUP: a new inbox list for the watcher, new settings for the workers (they re-read the
        config between pages: a mode or prompt applies to the next page). A new model (path or
        engine) rolls the workers over instead: each finishes its pages in flight and exits, and
        new workers load the new model; the queue is kept and status says "loading" meanwhile."""
        old = self.config.model
        self.config = config
        self.hooks.reload(config.hooks)
        self.backups.reload(config)
        self.delivery.reload(config, self.plan.count)
        if self.ingest is not None:
            self.ingest.reload(config)
        if self.api is not None:
            self.api.reload(config)
        log.info("config_reloaded", inboxes=[str(i.path) for i in config.inboxes])
        if _model_of(config.model) == _model_of(old):
            self.pool.signal_all(signal.SIGHUP)
            return
        log.warning("model_changed", old=old.path, new=config.model.path, engine=config.model.engine,
                    served=config.model.name or None,
                    note="workers finish their pages in flight, then restart with the new model")
        self.engine = self._choose_engine(self.device)
        self.plan = plan_for_config(self.device, config, *self._measured(), engine=self.engine.name)
        self.recycle_bytes = self.plan.recycle_bytes   # the new model's bound, not the old one's
        self.model_ok = None               # one probe worker first, as at start
        self.pool.model_backoff.reset()    # a fixed model (or server) is tried at once
        self.ledger.set_model_status(ModelStatus(ModelState.LOADING))
        self.pool.signal_all(signal.SIGTERM)

    # -- what the workers said and how they ended ------------------------------------------------
    def _on_message(self, worker_id: str, message: Message) -> None:
        if message.event == WorkerEvent.LEDGER_CORRUPT:
            self._on_corrupt(LedgerCorrupt(str(self.config.ledger_path), message.reason))
        elif self.corrupt is not None:
            return                       # nothing more is written
        elif message.event == WorkerEvent.LOADED:
            if not self.model_ok:
                self.model_ok = True
                self.pool.model_backoff.reset()
                self.ledger.set_model_status(ModelStatus(ModelState.OK))
            self.ready.set()
            self.weights_bytes = max(self.weights_bytes, message.weights_bytes)
        elif message.event == WorkerEvent.ADMITTED:
            self._admitted.setdefault(worker_id, set()).add(message.page)
        elif message.event == WorkerEvent.PAGE_STORED:
            # a worker that works ends a run of crashes (one that loads, then dies, does not)
            self.pool.crash_backoff.reset()
            self._admitted.get(worker_id, set()).discard(message.page)
            if message.peak_memory_bytes:
                self._measure(message.peak_memory_bytes, max(message.pages, 1))
        elif message.event == WorkerEvent.DOCUMENT_ENDED:
            self.delivery.wake(message.job)

    def _measure(self, peak: int, pages: int) -> None:
        """Real pages say what a worker needs. Its peak while up to `pages` were in flight is the
        weights plus that many pages (each charged a share of the transients too: an
        overestimate, which errs safe); the one-page footprint is the weights plus one page."""
        if self.weights_bytes and peak > self.weights_bytes:
            page = (peak - self.weights_bytes) // pages
            self.page_seen = max(self.page_seen, page)
            self.peak_seen = max(self.peak_seen, self.weights_bytes + page)
        elif pages == 1:
            self.peak_seen = max(self.peak_seen, peak)

    def _on_exit(self, ended: Exit, now: float) -> None:
        if ended.code == EXIT_LEDGER_CORRUPT:   # its LEDGER_CORRUPT message said why
            self._on_corrupt(LedgerCorrupt(str(self.config.ledger_path), "a worker found it damaged"))
        if self.corrupt is not None:
            return
        if ended.timed_out:
            limit = self.config.model.page_timeout_s
            self._fail_held_pages(ended.worker_id, PageTimeout(f"page timed out after {limit:g} s"))
        elif ended.code == EXIT_MODEL_UNAVAILABLE:   # the worker gave its pages back, uncharged
            self._model_unavailable(ended.load_error or "model could not be loaded", now)
            self.ledger.forget_worker(ended.worker_id)   # the model status tells it; no dead rows
            self._admitted.pop(ended.worker_id, None)
            return
        elif ended.code != 0:
            delay = self.pool.crashed(now)
            log.error("worker_died", worker_id=ended.worker_id, exit_code=ended.code, restart_in_s=delay)
            self._fail_held_pages(ended.worker_id, WorkerDied(f"worker died (exit code {ended.code})"))
        self._admitted.pop(ended.worker_id, None)
        state = WorkerState.STOPPED if ended.code == 0 else WorkerState.DEAD
        self.ledger.set_worker_state(ended.worker_id, state, error=ended.reason)

    def _model_unavailable(self, reason: str, now: float) -> None:
        delay = self.pool.model_backoff.failed(now)
        status = ModelStatus(ModelState.UNAVAILABLE, reason, delay)
        previous = self.ledger.model_status()
        if previous is None or previous.describe() != status.describe():
            log.error("model_unavailable", reason=reason, model=self.config.model.path,
                      retry_in_s=delay, note="pages stay queued until the model loads")
        self.ledger.set_model_status(status)
        self.model_ok = False
        self.ready.set()

    def _fail_held_pages(self, worker_id: str, exc: OcrdError) -> None:
        """A worker killed or dead: the pages it had given its engine are charged an attempt (one
        of them may be why); pages it had only claimed ahead go back uncharged."""
        admitted = self._admitted.pop(worker_id, set())
        for job_id, page_no in self.ledger.pages_of_worker(worker_id):
            if f"{job_id}:{page_no}" not in admitted:
                continue
            outcome = self.ledger.fail_page(job_id, page_no, None, str(exc), retryable=exc.retryable,
                                            max_attempts=self.config.workers.max_attempts)
            log.warning("page_failed", job_id=job_id, page=page_no, reason=str(exc),
                        kind=exc.kind, outcome=str(outcome.state))
            if outcome.job_failed:
                self.delivery.wake(job_id)
        released = self.ledger.release_pages(worker_id)
        if released:
            log.info("pages_released", worker_id=worker_id, pages=released, note="claimed ahead, not started")

    def _outputs_of(self, inbox_key: str, output: str, options: str | None = None) -> list[str]:
        """A done job's files, one per format it was written in (hooks' OCRD_OUTPUTS)."""
        formats = job_formats(self.config, inbox_key, options)
        stem = stem_of(Path(output))
        return [str(output_path(stem, fmt)) for fmt in formats]

    # -- the tick's other parts -----------------------------------------------------------------
    def _recover_previous_run(self) -> None:
        """Pages held by workers of an earlier run on this host go back at once, not after their
        lease. We hold the daemon lock, so those workers are dead or orphans about to exit (they
        die with the supervisor, or notice it is gone within a heartbeat); an orphan's late
        completion is refused by its lost lease. Documents whose finisher died are finished."""
        for worker in self.ledger.workers_status():
            if worker["host"] == self.host:
                released = self.ledger.release_pages(worker["id"])
                if released:
                    log.warning("pages_recovered", worker_id=worker["id"], pages=released,
                                pid_alive=pid_alive(worker["pid"]))
        self.ledger.mark_workers_dead(self.host, alive_ids=[])
        self.delivery.tick(force=True)

    def _choose_engine(self, device: DeviceInfo) -> EngineChoice:
        """Settings' factory when given (tests, benches), else the config's engine for the device."""
        factory = self.settings.engine_factory
        if factory:
            return EngineChoice(name_of(factory), factory, "given by the caller (Settings.engine_factory)")
        return choose_engine(self.config.model.engine, device.backend,
                             model_local=lambda: model_size_bytes(self.config.model.path) is not None)

    def _take_downloaded_model(self) -> None:
        """The interim engine's workers finish their pages and exit; new ones load DeepSeek-OCR."""
        self._model_fetched.clear()
        self.engine = self._choose_engine(self.device)
        if self.engine.interim:
            return
        self.plan = plan_for_config(self.device, self.config, *self._measured(), engine=self.engine.name)
        info = self.ledger.daemon_info()
        if info is not None:
            self.ledger.set_daemon_info(replace(info, engine=self.engine.name, engine_reason=self.engine.reason,
                                                workers=self.plan.count, batch=self.plan.batch))
        self.model_ok = None
        self.ledger.set_model_status(ModelStatus(ModelState.LOADING))
        self.pool.signal_all(signal.SIGTERM)

    def _measured(self) -> tuple[int | None, int | None]:
        """The footprint and memory per page in flight measured by earlier runs, if any."""
        values = (self.ledger.get_meta(footprint_key(self.config.model)),
                  self.ledger.get_meta(page_key(self.config.model)))
        return tuple(int(v) if v and v.isdigit() else None for v in values)  # type: ignore[return-value]

    def _save_footprint(self) -> None:
        """What real pages needed sizes the pool and the batch at the next start."""
        if (self.peak_seen, self.page_seen) > self._saved:
            if self.peak_seen > self._saved[0]:
                self.ledger.set_meta(footprint_key(self.config.model), str(self.peak_seen))
            if self.page_seen > self._saved[1]:
                self.ledger.set_meta(page_key(self.config.model), str(self.page_seen))
            self._saved = (max(self.peak_seen, self._saved[0]), max(self.page_seen, self._saved[1]))

    def _spawn(self, now: float) -> None:
        # one probe until the model is known to load
        target = self.plan.count if self.model_ok else min(1, self.plan.count)
        if self.pool.held_off(now):
            return
        while len(self.pool) + self.pool.waiting(now) < target:
            self._serial += 1
            ctx = WorkerContext(
                worker_id=f"{self.host.split('.')[0]}-{os.getpid()}-{self._serial}-{secrets.token_hex(2)}",
                config=self.config, engine_factory=self.engine.factory,
                batch_size=self.plan.batch, tune_batch=self.plan.tune_batch,
                batch_start=self.plan.batch_start, lease_s=self.settings.lease_s,
                heartbeat_s=self.settings.heartbeat_s, recycle_memory_bytes=self.recycle_bytes,
                backoff_base_s=self.settings.backoff_base_s, idle_wait_s=self.settings.idle_wait_s,
                sys_path=tuple(sys.path),
                gpu=self.pool.free_gpu(self.device.gpus if self.device.backend == "cuda" else 0))
            pid = self.pool.start_worker(ctx)
            log.info("worker_started", worker_id=ctx.worker_id, pid=pid)


def _model_of(model: ModelConfig) -> tuple:
    """What a worker loads: a change rolls the workers over (a server engine's server, key and
    concurrency too; mode, prompt and max_tokens apply to the next page)."""
    return (model.path, model.engine, model.url, model.name, model.api_key_file, model.concurrency,
            repr(model.extra_body))


def sd_notify(message: str) -> None:
    """Tell systemd (Type=notify) about readiness; a no-op elsewhere."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(address)
            sock.sendall(message.encode())
        except OSError:
            pass


def run_daemon(config: Config, *, settings: Settings = Settings(), tick_s: float = 0.5) -> int:
    """Run the supervisor in the foreground until SIGTERM/SIGINT; the exit code for `ocrd run`:
    78 (EXIT_LEDGER_UNREADABLE) when the ledger is found damaged, at start or at any later moment."""
    configure_logging(config.log_dir)
    lock = DaemonLock(config.lock_path)
    try:
        lock.acquire()
    except AlreadyRunning as exc:
        print(f"ocrd: {exc}", file=sys.stderr)
        return 1
    supervisor = Supervisor(config, settings)
    wake, cold, reload = supervisor.wake, threading.Event(), threading.Event()
    stops = []

    def on_stop(signum: int, _frame: object) -> None:
        stops.append(signum)
        if len(stops) > 1:
            cold.set()
        wake.set()

    def on_hup(_signum: int, _frame: object) -> None:
        reload.set()
        wake.set()

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    signal.signal(signal.SIGHUP, on_hup)
    log.info("daemon_starting", pid=os.getpid(), config=str(config.source), state_dir=str(config.state_dir),
             log=str(config.log_dir / "ocrd.log"))
    try:
        try:
            supervisor.start()
        except (LedgerUnreadable, HostNameTaken, LedgerCorrupt) as exc:   # a restart won't help either
            log.error("host_name_taken" if isinstance(exc, HostNameTaken) else "ledger_unreadable",
                      error=str(exc), note="nothing is ingested until it is fixed")
            print(f"ocrd: {exc}", file=sys.stderr)
            return EXIT_LEDGER_UNREADABLE
        _supervise(supervisor, stops, reload, tick_s)
        sd_notify("STOPPING=1")
        if supervisor.corrupt is not None:
            print(f"ocrd: {supervisor.corrupt}", file=sys.stderr)
            return EXIT_LEDGER_UNREADABLE
        log.info("daemon_stopping", signal=signal.Signals(stops[0]).name)
    finally:
        supervisor.stop(cold=cold)
        lock.release()
        log.info("daemon_stopped")
    return 0


def _supervise(supervisor: Supervisor, stops: list[int], reload: threading.Event, tick_s: float) -> None:
    """Tick until a stop signal, or until the ledger is found damaged."""
    notified, outage = False, Outage(log)
    while not stops and supervisor.corrupt is None:
        try:
            supervisor.tick()
            if outage.up():
                supervisor.after_outage()
        except LedgerCorrupt:    # said by Supervisor._on_corrupt; the loop ends
            continue
        except LedgerUnreachable as exc:   # a server restarting, a full disk: said once, not every tick
            outage.down(exc)
            supervisor.after_outage()
        except Exception:  # log and go on: the daemon outlives any one bad tick
            log.exception("tick_failed")
        if not notified and supervisor.ready.is_set():
            _announce_ready(supervisor)
            notified = True
        if reload.is_set():
            reload.clear()
            _reload(supervisor)
        supervisor.wake.wait(tick_s)
        supervisor.wake.clear()


def _announce_ready(supervisor: Supervisor) -> None:
    """The model loaded (or could not be): tell systemd, and the person at the terminal which
    inboxes are watched and where their output goes."""
    ok = bool(supervisor.model_ok)
    sd_notify("READY=1\nSTATUS=workers " + ("loaded the model" if ok else "could not load the model; queueing"))
    log.info("daemon_ready", model_ok=ok, workers=supervisor.plan.count if supervisor.plan else 0,
             inboxes=[{"inbox": str(i.path), "outbox": str(i.outbox)} for i in supervisor.config.inboxes])


def _reload(supervisor: Supervisor) -> None:
    try:
        config = load_config(supervisor.config.source)
    except ConfigError as exc:
        log.error("config_reload_refused", error=str(exc), note="keeping the running config")
        return
    supervisor.reload(config)
