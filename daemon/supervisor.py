"""`ocrd run`: the supervisor that ties the watcher, the ledger and the worker pool together.

Its tick: reap dead workers (their pages go back with the attempt counted), kill a worker stuck on
a page past page_timeout_s, rescue expired leases, start workers up to the pool size. Signal
handlers only set flags: the first SIGTERM/SIGINT is a warm stop (nothing new is claimed, pages in
flight finish or are released), a second one or the deadline is a cold stop. SIGHUP reloads the
inbox list without dropping work.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

import structlog

from ..ledger.store import Ledger
from .config import Config, ConfigError, load_config
from .lockfile import AlreadyRunning, DaemonLock
from .worker import DEFAULT_ENGINE, EXIT_MODEL_UNAVAILABLE, WorkerContext, start_worker_process

log = structlog.get_logger()

WARM_STOP_S = 25.0                 # launchd's ExitTimeOut is 60 s, systemd's TimeoutStopSec 60 s
MODEL_RETRY_MAX_S = 300.0


@dataclass
class _Slot:
    ctx: WorkerContext
    proc: subprocess.Popen
    busy_since: float | None = None
    busy_count: int = 1
    timed_out: bool = False
    load_error: str | None = None


@dataclass
class _Backoff:
    failures: int = 0
    next_at: float = 0.0
    base_s: float = 2.0
    max_s: float = 60.0

    def failed(self, now: float) -> float:
        self.failures += 1
        delay = min(self.base_s * 2 ** (self.failures - 1), self.max_s)
        self.next_at = now + delay
        return delay

    def reset(self) -> None:
        self.failures, self.next_at = 0, 0.0


@dataclass
class Supervisor:
    config: Config
    engine_factory: str = DEFAULT_ENGINE
    rescan_s: float = 60.0
    empty_grace_s: float = 60.0
    lease_s: float = 60.0
    heartbeat_s: float = 5.0
    device: object | None = None          # a DeviceInfo; None: detect through MLX
    slots: list[_Slot] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.host = socket.gethostname()
        self.ledger: Ledger | None = None
        self.ingest = None
        self.pool_size = 1
        self.batch_size = 1
        self.recycle_bytes = 0
        self.model_ok: bool | None = None
        self.model_backoff = _Backoff(base_s=5.0, max_s=MODEL_RETRY_MAX_S)
        self.crash_backoff = _Backoff()
        self.ready = threading.Event()   # set once the model loaded, or its first load failed
        self._serial = 0
        self._next_rescue = 0.0
        self.peak_seen = 0               # highest peak memory a worker reported on real pages
        self._peak_saved = 0

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        from .device import CPU_WARNING, detect_device, footprint_key, plan_for_config
        from .ingest import IngestService

        for folder in (self.config.state_dir, self.config.spool_dir):
            folder.mkdir(parents=True, exist_ok=True)
        self.ledger = Ledger(self.config.db_url)
        device = self.device or detect_device()
        self.device = device
        if device.backend == "cpu":
            log.warning("cpu_mode", warning=CPU_WARNING, device=device.name)
        measured = self.ledger.get_meta(footprint_key(self.config.model))
        plan = plan_for_config(device, self.config, int(measured) if measured else None)
        self.pool_size = plan.count
        self.recycle_bytes = int(plan.footprint_bytes * 2)
        log.info("pool_planned", workers=plan.count, reason=plan.reason, backend=device.backend,
                 device=device.name, memory_bytes=device.memory_bytes)
        self.ledger.set_meta("device", json.dumps({"backend": device.backend, "name": device.name,
                                                   "memory_bytes": device.memory_bytes}))
        self.ledger.set_meta("pool_plan", json.dumps({"count": plan.count, "reason": plan.reason}))
        self.ledger.set_meta("model_status", "loading")
        self._recover_previous_run()
        self.ingest = IngestService(self.config, rescan_s=self.rescan_s, empty_grace_s=self.empty_grace_s)
        self.ingest.start()

    def tick(self, now: float | None = None) -> None:
        """One round of supervision; `now` is time.monotonic() (a seam for tests)."""
        now = time.monotonic() if now is None else now
        self._reap(now)
        self._enforce_page_timeout(now)
        if now >= self._next_rescue:  # a write transaction: not every tick (leases last lease_s)
            self._next_rescue = now + min(5.0, self.lease_s / 4)
            rescued = self.ledger.rescue_expired(max_attempts=self.config.workers.max_attempts)
            if rescued:
                log.warning("leases_rescued", pages=rescued)
            self._finish_orphaned_documents()
            self._save_footprint()
        self._spawn(now)

    def stop(self, deadline_s: float = WARM_STOP_S, cold: threading.Event | None = None) -> None:
        """Warm stop: SIGTERM every worker, wait until they exit (they finish the page in hand),
        SIGKILL what is left at the deadline or when `cold` is set, and give their pages back."""
        if self.ingest is not None:
            self.ingest.stop()
        if self.ledger is None:
            return
        for slot in self.slots:
            _signal(slot.proc, signal.SIGTERM)
        deadline = time.monotonic() + deadline_s
        while any(s.proc.poll() is None for s in self.slots):
            if time.monotonic() > deadline or (cold is not None and cold.is_set()):
                log.warning("cold_stop", workers=sum(s.proc.poll() is None for s in self.slots))
                for slot in self.slots:
                    _signal(slot.proc, signal.SIGKILL)
                break
            time.sleep(0.05)
        for slot in self.slots:
            slot.proc.wait()
            released = self.ledger.release_pages(slot.ctx.worker_id)
            if released:
                log.info("pages_released", worker_id=slot.ctx.worker_id, pages=released)
            self.ledger.set_worker_state(slot.ctx.worker_id, "stopped")
        self.slots.clear()
        self._save_footprint()
        self.ledger.close()

    def reload(self, config: Config) -> None:
        """SIGHUP: new inbox list for the watcher and for workers started from now on."""
        self.config = config
        if self.ingest is not None:
            self.ingest.reload(config)
        for slot in self.slots:  # running workers re-read it between pages; new ones get it
            _signal(slot.proc, signal.SIGHUP)
        log.info("config_reloaded", inboxes=[str(i.path) for i in config.inboxes])

    # -- the tick's parts -----------------------------------------------------------------------
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
                                pid_alive=_pid_alive(worker["pid"]))
        self.ledger.mark_workers_dead(self.host, alive_ids=[])
        self._finish_orphaned_documents()

    def _finish_orphaned_documents(self) -> None:
        """Jobs with every page done but no outbox file: their finisher died in between (a worker
        killed right after its last page). Finishing is idempotent, so racing a live finisher is safe."""
        from .outbox import finish_document

        for job_id in self.ledger.completed_jobs_not_done():
            try:
                if finish_document(self.config, self.ledger, job_id):
                    log.warning("job_finished_for_lost_worker", job_id=job_id)
            except Exception:  # one document must never stop the supervisor
                log.exception("finish_failed", job_id=job_id)

    def _reap(self, now: float) -> None:
        for slot in [s for s in self.slots if s.proc.poll() is not None]:
            self.slots.remove(slot)
            code = slot.proc.returncode
            worker_id = slot.ctx.worker_id
            if slot.timed_out:
                self._fail_held_pages(worker_id, f"page timed out after {self.config.model.page_timeout_s:g} s")
            elif code == EXIT_MODEL_UNAVAILABLE:
                delay = self.model_backoff.failed(now)
                reason = slot.load_error or "model could not be loaded"
                status = f"unavailable: {reason} (retrying in {delay:.0f} s)"
                if self.ledger.get_meta("model_status") != status:
                    log.error("model_unavailable", reason=reason, model=self.config.model.path,
                              retry_in_s=delay, note="pages stay queued until the model loads")
                self.ledger.set_meta("model_status", status)
                self.model_ok = False
                self.ready.set()
            elif code != 0:
                delay = self.crash_backoff.failed(now)
                log.error("worker_died", worker_id=worker_id, exit_code=code, restart_in_s=delay)
                self._fail_held_pages(worker_id, f"worker died (exit code {code})")
            error = None if code == 0 else (slot.load_error or ("killed: page timed out" if slot.timed_out
                                                                else f"exit code {code}"))
            self.ledger.set_worker_state(worker_id, "stopped" if code == 0 else "dead", error=error)

    def _save_footprint(self) -> None:
        """The peak memory measured on real pages sizes the pool at the next start."""
        from .device import footprint_key

        if self.peak_seen > self._peak_saved:
            self.ledger.set_meta(footprint_key(self.config.model), str(self.peak_seen))
            self._peak_saved = self.peak_seen

    def _fail_held_pages(self, worker_id: str, reason: str) -> None:
        from .outbox import fail_document

        for job_id, page_no in self.ledger.pages_of_worker(worker_id):
            outcome = self.ledger.fail_page(job_id, page_no, None, reason, retryable=True,
                                            max_attempts=self.config.workers.max_attempts)
            log.warning("page_failed", job_id=job_id, page=page_no, reason=reason, outcome=str(outcome.state))
            if outcome.job_failed:
                fail_document(self.config, self.ledger, job_id, reason)

    def _enforce_page_timeout(self, now: float) -> None:
        # A hang inside native code can't be interrupted from within the worker: kill it.
        limit = self.config.model.page_timeout_s
        for slot in self.slots:
            since = slot.busy_since
            if since is not None and not slot.timed_out and now - since > limit * slot.busy_count:
                log.error("page_timeout", worker_id=slot.ctx.worker_id, seconds=round(now - since, 1))
                slot.timed_out = True
                _signal(slot.proc, signal.SIGKILL)

    def _spawn(self, now: float) -> None:
        target = self.pool_size if self.model_ok else 1   # one probe until the model is known to load
        if now < max(self.model_backoff.next_at, self.crash_backoff.next_at):
            return
        while len(self.slots) < target:
            self._serial += 1
            ctx = WorkerContext(
                worker_id=f"{self.host.split('.')[0]}-{os.getpid()}-{self._serial}-{secrets.token_hex(2)}",
                config=self.config, engine_factory=self.engine_factory, batch_size=self.batch_size,
                lease_s=self.lease_s, heartbeat_s=self.heartbeat_s,
                recycle_memory_bytes=self.recycle_bytes, sys_path=tuple(sys.path))
            slot = _Slot(ctx=ctx, proc=None)  # type: ignore[arg-type]
            slot.proc = start_worker_process(ctx, lambda e, s=slot: self._on_event(s, e),
                                             lambda line, w=ctx.worker_id: log.info("worker_output", worker_id=w, line=line))
            self.slots.append(slot)
            log.info("worker_started", worker_id=ctx.worker_id, pid=slot.proc.pid)

    def _on_event(self, slot: _Slot, event: dict) -> None:
        """Runs on a reader thread: note what the supervisor needs, then log the event."""
        name = event.pop("event", "worker_event")
        level = event.pop("level", "info")
        event.pop("timestamp", None)
        if name == "page_start":
            slot.busy_count = int(event.get("count", 1))
            slot.busy_since = time.monotonic()
        elif name == "page_end":
            slot.busy_since = None
        elif name == "model_unavailable":
            slot.load_error = event.get("reason")
        elif name == "model_loaded":
            self._model_loaded()
        elif name == "page_done":  # measured on a real page: what a worker really needs
            self.peak_seen = max(self.peak_seen, int(event.get("peak_memory_bytes") or 0))
        log.log(logging.getLevelName(level.upper()) if isinstance(level, str) else logging.INFO, name, **event)

    def _model_loaded(self) -> None:
        if not self.model_ok:
            self.model_ok = True
            self.model_backoff.reset()
            self._set_meta_from_thread("model_status", "ok")
        self.crash_backoff.reset()
        self.ready.set()

    def _set_meta_from_thread(self, key: str, value: str) -> None:
        # Reader threads must not share the supervisor's connection mid-transaction: use a short one.
        ledger = Ledger(self.config.db_url)
        try:
            ledger.set_meta(key, value)
        finally:
            ledger.close()


def _signal(proc: subprocess.Popen, sig: int) -> None:
    if proc.poll() is None:
        try:
            proc.send_signal(sig)
        except ProcessLookupError:
            pass


def _pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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


def run_daemon(config: Config, *, engine_factory: str = DEFAULT_ENGINE, tick_s: float = 0.5) -> int:
    """Run the supervisor in the foreground until SIGTERM/SIGINT; the exit code for `ocrd run`."""
    from .logs import configure_logging

    configure_logging(config.log_dir)
    lock = DaemonLock(config.lock_path)
    try:
        lock.acquire()
    except AlreadyRunning as exc:
        print(f"ocrd: {exc}", file=sys.stderr)
        return 1
    wake, cold, reload = threading.Event(), threading.Event(), threading.Event()
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
    supervisor = Supervisor(config, engine_factory=engine_factory)
    log.info("daemon_starting", pid=os.getpid(), config=str(config.source), state_dir=str(config.state_dir))
    try:
        supervisor.start()
        notified = False
        while not stops:
            try:
                supervisor.tick()
            except Exception:  # log and go on: the daemon outlives any one bad tick
                log.exception("tick_failed")
            if not notified and supervisor.ready.is_set():
                sd_notify("READY=1\nSTATUS=workers " + ("loaded the model" if supervisor.model_ok
                                                        else "could not load the model; queueing"))
                notified = True
            if reload.is_set():
                reload.clear()
                _reload(supervisor)
            wake.wait(tick_s)
            wake.clear()
        log.info("daemon_stopping", signal=signal.Signals(stops[0]).name)
        sd_notify("STOPPING=1")
    finally:
        supervisor.stop(cold=cold)
        lock.release()
        log.info("daemon_stopped")
    return 0


def _reload(supervisor: Supervisor) -> None:
    try:
        config = load_config(supervisor.config.source)
    except ConfigError as exc:
        log.error("config_reload_refused", error=str(exc), note="keeping the running config")
        return
    supervisor.reload(config)
