"""What a worker process and the supervisor say to each other.

Parent -> child: a `WorkerContext`, pickled onto the child's stdin once at start (never on its
command line: it carries the ledger URL, which may hold a password, and `ps` shows argv to all);
then, on the same pipe, a byte (`NUDGE`) each time a document was queued here, so that an idle
worker asks for pages now instead of at its next poll (up to a second later).
Child -> parent: `Message`s, one JSON line each, on a pipe of their own. The supervisor's page
timeout, model backoff and footprint measurement act on these and nothing else; the worker's log
lines travel on a second pipe and are only ever logged, so renaming a log event changes no logic.
"""

from __future__ import annotations

import json
import os
import pickle
import threading
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import IO, Callable

from ocrd.ledger import BACKOFF_BASE_S

from .config import Config
from .engines.base import DEFAULT_ENGINE

EXIT_MODEL_UNAVAILABLE = 3     # the worker's exit status when the model could not be loaded
EXIT_LEDGER_CORRUPT = 78       # ... when it found the ledger damaged (it wrote nothing more)
IDLE_WAIT_S = (0.1, 1.0)       # an idle worker polls an empty queue after 0.1 s, backing off to 1 s


@dataclass(frozen=True)
class WorkerContext:
    """Everything a worker process needs; small and picklable."""

    worker_id: str
    config: Config
    engine_factory: str = DEFAULT_ENGINE
    batch_size: int = 1               # the in-flight limit, or its cap when tune_batch
    tune_batch: bool = False          # `batch = "auto"`: grow the limit while it pays (worker/tuner.py)
    batch_start: int = 1              # where tuning starts
    lease_s: float = 60.0
    heartbeat_s: float = 5.0
    recycle_memory_bytes: int = 0     # exit (and be replaced) once active memory passes this; 0: never
    backoff_base_s: float = BACKOFF_BASE_S   # a failed page's retry delay base (a seam for tests)
    idle_wait_s: tuple[float, float] = IDLE_WAIT_S   # an idle worker's polls of the queue: first
                                      # wait, longest (worker/feeder.py; a seam for tests)
    gpu: int | None = None            # on a host of several CUDA GPUs: the one this worker uses
    sys_path: tuple[str, ...] = ()    # the parent's sys.path, so test engines import in the child


NUDGE = b"!"


def send_context(ctx: WorkerContext, stream: IO[bytes]) -> None:
    """The context, then the pipe stays open for nudges (`nudge`), written without blocking."""
    stream.write(pickle.dumps(ctx))
    stream.flush()
    os.set_blocking(stream.fileno(), False)


def nudge(stream: IO[bytes]) -> None:
    """One nudge; none where the pipe is full (the worker has nudges unread) or closed (it exited)."""
    try:
        os.write(stream.fileno(), NUDGE)
    except (OSError, ValueError):
        pass


def read_context(stream: IO[bytes]) -> WorkerContext:
    ctx = pickle.load(stream)   # exactly the pickle: the nudges after it stay in the stream
    if not isinstance(ctx, WorkerContext):
        raise TypeError(f"expected a WorkerContext on stdin, got {type(ctx).__name__}")
    return ctx


def read_nudges(fd: int, wake: Callable[[], None]) -> None:
    """The worker's side (a thread of its own): `wake()` per read of nudges, until the pipe ends.
    It reads the file descriptor itself: a thread blocked in a read of sys.stdin holds its buffer's
    lock, which the interpreter then can't take as it exits (a fatal error instead of the exit code)."""
    try:
        while os.read(fd, 4096):
            wake()
    except OSError:
        pass


class WorkerEvent(StrEnum):
    LOADED = "loaded"              # the model is loaded: the worker is ready for pages
    LOAD_FAILED = "load_failed"    # the model could not be loaded (reason); the worker exits 3
    BUSY = "busy"                  # inside the engine on `pages` pages: the page timeout (re)starts
    IDLE = "idle"                  # nothing in the engine any more
    ADMITTED = "admitted"          # `page` ("job:page") entered the engine: a crash now is its fault
    PAGE_STORED = "page_stored"    # a page's result is in the ledger: the worker's peak memory
                                   # with `pages` pages in flight
    DOCUMENT_ENDED = "document_ended"  # job `job`'s last page was stored, or a page failed it:
                                   # the supervisor's delivery writes its outputs or moves it to failed/
    LEDGER_CORRUPT = "ledger_corrupt"   # the ledger is damaged (reason); the worker exits 78


@dataclass(frozen=True)
class Message:
    event: WorkerEvent
    pages: int = 0                 # BUSY, PAGE_STORED
    reason: str = ""               # LOAD_FAILED, LEDGER_CORRUPT
    seconds: float = 0.0           # LOADED: load time
    weights_bytes: int = 0         # LOADED: memory held once the model is loaded
    peak_memory_bytes: int = 0     # PAGE_STORED
    page: str = ""                 # ADMITTED, PAGE_STORED: "job_id:page_no"
    job: int = 0                   # DOCUMENT_ENDED

    def encode(self) -> str:
        return json.dumps({k: v for k, v in asdict(self).items() if v or k == "event"}) + "\n"

    @classmethod
    def decode(cls, line: str) -> Message:
        """Raises ValueError for a line that is not a message."""
        try:
            data = json.loads(line)
            return cls(**{**data, "event": WorkerEvent(data["event"])})
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"not a worker message: {line[:200]!r}") from exc


def sender(channel: IO[str]) -> Callable[[Message], None]:
    """The worker's side of the message pipe: each message goes out whole, from any thread (the
    decode loop, the io and store threads); a supervisor gone mid-write is noticed by the worker's
    heartbeats, not here."""
    lock = threading.Lock()

    def send(message: Message) -> None:
        with lock:
            try:
                channel.write(message.encode())
            except (OSError, ValueError):
                pass

    return send
