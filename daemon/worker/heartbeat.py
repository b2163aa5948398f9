"""The worker's heartbeat: a thread that writes the device's status to the ledger and the log.

Every `heartbeat_s` (at once when woken: the batch just emptied, so status says idle now) it reads
one `Snapshot` of the worker, MLX's memory figures and the leases still held, and renews those
leases. Beats go on through a warm stop, so the pages in hand keep their leases. It is also how a
worker notices its supervisor died (macOS has no PDEATHSIG: lifeline.py).
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from ocrd.ledger import Ledger, LedgerUnreachable, WorkerState

from ..device import CPU_WARNING
from ..engines.mlxvlm import memory_stats
from ..logs import Outage


@dataclass(frozen=True)
class Snapshot:
    """What a beat says of the worker, read from the decode thread's plain attributes."""
    pages_done: int
    generated: int              # tokens generated so far: tokens/s between beats
    current_page: str | None    # the oldest page in flight, "+N" for the others
    batch: int                  # the in-flight limit
    in_flight: int
    peak_bytes: int             # the most memory any stretch of decoding took
    stopping: bool


class Heartbeat:
    def __init__(self, *, worker_id: str, ledger: Ledger, backend: str, slow_on_cpu: bool, every_s: float,
                 lease_s: float, snapshot: Callable[[], Snapshot], held: Callable[[], list[tuple[int, int]] | None],
                 outage: Outage, log: Any) -> None:
        self.worker_id, self.ledger, self.backend = worker_id, ledger, backend
        self.warning = CPU_WARNING if backend == "cpu" and slow_on_cpu else None   # on every beat
        self.every_s, self.lease_s = every_s, lease_s
        self.snapshot, self.held, self.outage, self.log = snapshot, held, outage, log
        self.tokens_per_s = 0.0
        self._last: tuple[float, int] | None = None
        self._wake, self._done = threading.Event(), threading.Event()
        self._thread = threading.Thread(target=self._run, name="heartbeats", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        """A beat now."""
        self._wake.set()

    def stop(self) -> None:
        self._done.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def _run(self) -> None:
        try:
            self._beats()
        except BaseException:   # without beats its leases run out under it: go down loudly
            self.log.exception("heartbeat_died")
            os._exit(1)

    def _beats(self) -> None:
        parent = os.getppid()
        while True:
            self.beat()
            if os.getppid() != parent:
                self.log.error("supervisor_gone")
                os._exit(1)
            self._wake.wait(self.every_s)
            self._wake.clear()
            if self._done.is_set():
                return

    def beat(self) -> None:
        s = self.snapshot()
        stats = memory_stats()
        # MLX's peak restarts at every page that ends (batch sizing); a beat shows the worker's
        stats["peak_memory_bytes"] = max(stats["peak_memory_bytes"], s.peak_bytes)
        now = time.monotonic()
        if self._last is not None and now > self._last[0]:
            self.tokens_per_s = (s.generated - self._last[1]) / (now - self._last[0])
        self._last = (now, s.generated)
        state = (WorkerState.BUSY if s.in_flight
                 else WorkerState.STOPPING if s.stopping else WorkerState.IDLE)
        try:
            self.ledger.record_heartbeat(
                self.worker_id, backend=self.backend, pages_done=s.pages_done,
                tokens_per_s=self.tokens_per_s, current_page=s.current_page, state=state,
                lease_s=self.lease_s, batch=s.batch, pages_in_flight=s.in_flight,
                held=self.held(), **stats)
        except LedgerUnreachable as exc:   # leases the server keeps: renewed once it is back
            self.outage.down(exc)
        except Exception as exc:  # a missed beat must not kill the worker; the next one retries
            self.log.warning("heartbeat_failed", error=str(exc))
        extra = {"warning": self.warning} if self.warning else {}
        self.log.info("device_heartbeat", backend=self.backend, pages_done=s.pages_done,
                      tokens_per_s=round(self.tokens_per_s, 1), current_page=s.current_page,
                      batch=s.batch, pages_in_flight=s.in_flight, **stats, **extra)
