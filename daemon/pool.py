"""The worker pool: start worker processes, pump what they say, reap them, time them out, stop them.

The pool knows processes, not pages: `reap()` returns `Exit` records and the supervisor decides
what an exit means for the ledger (rq's worker_pool / StartedJobRegistry split). Each worker has
three pipes: its context, then nudges, go down stdin; its `Message`s and its log lines come back on
two pipes of their own; stdout/stderr carry whatever libraries print. Reader threads only enqueue
(or log); the supervisor's tick drains the queue, so pool state changes happen on one thread.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import re
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import IO, Callable

import structlog

from .lifeline import child_argv
from .protocol import Message, WorkerContext, WorkerEvent, nudge, send_context

log = structlog.get_logger()

PUMP_JOIN_S = 2.0        # a dead worker's pipes reach EOF at once; this bounds a stuck reader


@dataclass
class Backoff:
    """Exponential hold-off after failures: base_s, 2 x base_s, ... up to max_s."""

    base_s: float = 2.0
    max_s: float = 60.0
    failures: int = 0
    next_at: float = 0.0

    def failed(self, now: float) -> float:
        self.failures += 1
        delay = min(self.base_s * 2 ** (self.failures - 1), self.max_s)
        self.next_at = now + delay
        return delay

    def reset(self) -> None:
        self.failures, self.next_at = 0, 0.0


@dataclass(frozen=True)
class Exit:
    """A worker process that ended, and what the pool saw of it."""

    worker_id: str
    code: int
    timed_out: bool = False          # the pool killed it past the page timeout
    load_error: str | None = None    # its LOAD_FAILED reason

    @property
    def reason(self) -> str | None:
        """Why it ended, for the workers row; None for a clean exit."""
        if self.timed_out:
            return "killed: page timed out"
        if self.code == 0:
            return None
        return self.load_error or f"exit code {self.code}"


@dataclass
class _Slot:
    ctx: WorkerContext
    proc: subprocess.Popen
    pumps: list[threading.Thread] = field(default_factory=list)
    busy_since: float | None = None
    busy_pages: int = 1
    timed_out: bool = False
    load_error: str | None = None

    @property
    def worker_id(self) -> str:
        return self.ctx.worker_id


class WorkerPool:
    """Worker processes and the two backoffs that hold off starting new ones."""

    def __init__(self, wake: threading.Event | None = None) -> None:
        self.slots: list[_Slot] = []
        self.wake = wake    # set when a message can't wait for the next tick (a document ended)
        self.model_backoff = Backoff(base_s=5.0, max_s=300.0)   # the model would not load
        self.crash_backoff = Backoff()                           # a worker died
        self._replacements: list[float] = []                     # when each may start
        self._messages: queue.SimpleQueue[tuple[str, float, Message]] = queue.SimpleQueue()
        self._pending: list[tuple[str, Message]] = []

    def __len__(self) -> int:
        return len(self.slots)

    def free_gpu(self, gpus: int) -> int | None:
        """The lowest of `gpus` CUDA GPUs no live worker uses (None with fewer than two)."""
        if gpus < 2:
            return None
        used = {s.ctx.gpu for s in self.slots}
        return next((g for g in range(gpus) if g not in used), None)

    def held_off(self, now: float) -> bool:
        """The model would not load: no worker starts until its backoff has passed."""
        return now < self.model_backoff.next_at

    def crashed(self, now: float) -> float:
        """A worker died: its replacement waits (2 s, doubling per crash with no page stored
        between, up to 60 s: a worker that loads and dies at once does not loop every 2 s),
        the other workers' places are not held up by it. Returns the wait."""
        delay = self.crash_backoff.failed(now)
        self._replacements.append(now + delay)
        return delay

    def waiting(self, now: float) -> int:
        """Places of crashed workers whose replacement may not start yet."""
        self._replacements = [t for t in self._replacements if t > now]
        return len(self._replacements)

    # -- start ----------------------------------------------------------------------------------
    def start_worker(self, ctx: WorkerContext) -> int:
        """Spawn `python -m ocrd.daemon.worker`, tied to this process (lifeline.py); returns its
        pid. Called on the thread that runs the supervisor, which lives as long as the workers."""
        control_r, control_w = os.pipe()
        log_r, log_w = os.pipe()
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if ctx.gpu is not None:   # MLX takes the first GPU it sees: show each worker only its own
            env["CUDA_VISIBLE_DEVICES"] = str(ctx.gpu)
        try:
            proc = subprocess.Popen(
                child_argv("ocrd.daemon.worker", ctx.worker_id, str(control_w), str(log_w)),
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                pass_fds=(control_w, log_w), env=env)
        finally:
            os.close(control_w)
            os.close(log_w)
        slot = _Slot(ctx=ctx, proc=proc)
        worker_log = log.bind(worker_id=ctx.worker_id)
        slot.pumps = [
            _start_thread(f"messages-{ctx.worker_id}", self._pump_messages, _text(control_r), ctx.worker_id),
            _start_thread(f"log-{ctx.worker_id}", _pump_log, _text(log_r), worker_log),
            _start_thread(f"output-{ctx.worker_id}", _pump_lines, proc.stdout,
                          lambda line: worker_log.info("worker_output", line=line)),
        ]
        try:
            send_context(ctx, proc.stdin)
        except BrokenPipeError:
            pass  # it died at once; reap() reports its exit
        self.slots.append(slot)
        return proc.pid

    def nudge(self) -> None:
        """A document was queued: idle workers ask for pages now, not at their next poll."""
        for slot in self.slots:
            nudge(slot.proc.stdin)

    def _pump_messages(self, stream: IO[str], worker_id: str) -> None:
        with stream:
            for line in stream:
                try:
                    message = Message.decode(line)
                except ValueError:
                    log.warning("worker_message_unreadable", worker_id=worker_id, line=line[:200])
                    continue
                self._messages.put((worker_id, time.monotonic(), message))
                if message.event == WorkerEvent.DOCUMENT_ENDED and self.wake is not None:
                    self.wake.set()   # its outputs are written on the tick: now, not in up to 0.5 s

    # -- what the workers said ------------------------------------------------------------------
    def _collect(self) -> None:
        """Move queued messages to `_pending`, noting on their slots what the pool itself needs."""
        slots = {s.worker_id: s for s in self.slots}
        while True:
            try:
                worker_id, at, message = self._messages.get_nowait()
            except queue.Empty:
                return
            slot = slots.get(worker_id)
            if slot is not None:
                if message.event == WorkerEvent.BUSY:
                    slot.busy_since, slot.busy_pages = at, max(message.pages, 1)
                elif message.event == WorkerEvent.IDLE:
                    slot.busy_since = None
                elif message.event == WorkerEvent.LOAD_FAILED:
                    slot.load_error = message.reason
            self._pending.append((worker_id, message))

    def drain_events(self) -> list[tuple[str, Message]]:
        """Every message received since the last call, in order, as (worker_id, message)."""
        self._collect()
        out, self._pending = self._pending, []
        return out

    # -- end ------------------------------------------------------------------------------------
    def reap(self) -> list[Exit]:
        """Remove the workers that have exited and say how each ended."""
        exits = []
        for slot in [s for s in self.slots if s.proc.poll() is not None]:
            for pump in slot.pumps:   # its last messages (a load failure's reason) first
                pump.join(PUMP_JOIN_S)
            self._collect()
            try:
                slot.proc.stdin.close()
            except OSError:   # the context never reached it (it died at once)
                pass
            self.slots.remove(slot)
            exits.append(Exit(slot.worker_id, slot.proc.returncode, slot.timed_out, slot.load_error))
        return exits

    def enforce_timeout(self, now: float, page_timeout_s: float) -> list[str]:
        """Kill workers busy past page_timeout_s per page in hand (a hang inside native code
        can't be interrupted from within the worker); returns their ids. reap() reports them."""
        killed = []
        self._collect()
        for slot in self.slots:
            since = slot.busy_since
            if since is not None and not slot.timed_out and now - since > page_timeout_s * slot.busy_pages:
                log.error("page_timeout", worker_id=slot.worker_id, seconds=round(now - since, 1))
                slot.timed_out = True
                _signal(slot.proc, signal.SIGKILL)
                killed.append(slot.worker_id)
        return killed

    def signal_all(self, sig: int) -> None:
        for slot in self.slots:
            _signal(slot.proc, sig)

    def stop(self, deadline_s: float, cold: threading.Event | None = None) -> list[Exit]:
        """Warm stop: SIGTERM every worker and wait for them (they finish the page in hand);
        SIGKILL what is left at the deadline or once `cold` is set. Returns every exit."""
        self.signal_all(signal.SIGTERM)
        deadline = time.monotonic() + deadline_s
        while any(s.proc.poll() is None for s in self.slots):
            if time.monotonic() > deadline or (cold is not None and cold.is_set()):
                log.warning("cold_stop", workers=sum(s.proc.poll() is None for s in self.slots))
                self.signal_all(signal.SIGKILL)
                break
            time.sleep(0.05)
        for slot in self.slots:
            slot.proc.wait()
        return self.reap()


def _text(fd: int) -> IO[str]:
    return os.fdopen(fd, "r", encoding="utf-8", errors="replace")


def _start_thread(name: str, target: Callable[..., None], *args: object) -> threading.Thread:
    thread = threading.Thread(target=target, args=args, name=name, daemon=True)
    thread.start()
    return thread


def _pump_log(stream: IO[str], worker_log: structlog.BoundLogger) -> None:
    """The worker's structlog events (JSON lines), logged here with the worker bound."""
    with stream:
        for line in stream:
            try:
                event = json.loads(line)
                name = str(event.pop("event"))
            except (ValueError, KeyError, AttributeError, TypeError):
                worker_log.info("worker_output", line=line.rstrip("\n"))
                continue
            level = event.pop("level", "info")
            event.pop("timestamp", None)
            number = logging.getLevelName(str(level).upper())
            worker_log.log(number if isinstance(number, int) else logging.INFO, name, **event)


def _pump_lines(stream: IO[bytes], on_line: Callable[[str], None], progress_every_s: float = 2.0) -> None:
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
                on_line(line)
        if pending.strip():
            on_line(pending.decode("utf-8", "replace").strip())


def _signal(proc: subprocess.Popen, sig: int) -> None:
    if proc.poll() is None:
        try:
            proc.send_signal(sig)
        except ProcessLookupError:
            pass

