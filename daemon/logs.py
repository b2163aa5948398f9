"""structlog set-up: JSON lines to a rotating file in the state dir, a line per document on a
terminal (console.py).

Worker processes do not write the log themselves: they send JSON event lines to the supervisor
over a pipe (`configure_worker_logging`), and the supervisor logs them with the worker bound.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import sys
import time
from pathlib import Path
from typing import IO

import structlog

from .console import ConsoleFilter, ConsoleRenderer

_SHARED = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
]


def _not_stop_noise(record: logging.LogRecord) -> bool:
    # watchdog logs this at ERROR when an inotify event races the observer's own stop; harmless.
    return "called when the thread is inactive" not in record.getMessage()


def configure_logging(log_dir: Path | None, *, stream: IO[str] | None = None,
                      level: int = logging.INFO) -> None:
    """Log to `log_dir/ocrd.log` (JSON, rotated at 10 MB x 5) and to `stream` (default stderr):
    on a terminal, a line per document and the warnings (console.py); JSON lines otherwise
    (launchd/systemd capture everything)."""
    stream = stream or sys.stderr
    handlers: list[logging.Handler] = []
    if log_dir is not None:
        log_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        file_handler = _LogFile(log_dir / "ocrd.log", maxBytes=10 * 1024 * 1024, backupCount=5,
                                encoding="utf-8")
        os.chmod(log_dir / "ocrd.log", 0o600)   # page text and paths: the daemon's alone
        file_handler.setFormatter(_formatter(structlog.processors.JSONRenderer()))
        handlers.append(file_handler)
    tty = hasattr(stream, "isatty") and stream.isatty()
    console = ConsoleRenderer() if tty else structlog.processors.JSONRenderer()
    stream_handler = logging.StreamHandler(stream)
    stream_handler.setFormatter(_formatter(console))
    if tty:
        stream_handler.addFilter(ConsoleFilter())
    handlers.append(stream_handler)

    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)
    logging.getLogger("watchdog.observers.inotify").addFilter(_not_stop_noise)  # added once
    # fontTools' subsetter (each searchable PDF's font) says ~25 things at INFO per document
    logging.getLogger("fontTools").setLevel(logging.WARNING)
    structlog.configure(
        processors=[*_SHARED, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )


class _LogFile(logging.handlers.RotatingFileHandler):
    """The log file in the state dir. When its disk is full, logging's default would print a
    traceback to stderr for every event; this says so once, in one line (the events still reach
    stderr through the other handler), and says nothing more until a write has worked again."""

    _failing = False

    def emit(self, record: logging.LogRecord) -> None:
        self._failed = False
        super().emit(record)
        if self._failing and not self._failed:
            self._failing = False

    def handleError(self, record: logging.LogRecord) -> None:
        exc = sys.exc_info()[1]
        if not isinstance(exc, OSError):
            super().handleError(record)
            return
        self._failed = True
        if not self._failing:
            self._failing = True
            sys.stderr.write(f"ocrd: cannot write the log file {self.baseFilename} ({exc.strerror or exc}): "
                             "its events go to stderr only until it can\n")


def _formatter(renderer: structlog.types.Processor) -> structlog.stdlib.ProcessorFormatter:
    return structlog.stdlib.ProcessorFormatter(
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    *([structlog.processors.format_exc_info]
                      if isinstance(renderer, structlog.processors.JSONRenderer) else []),
                    renderer],
        foreign_pre_chain=_SHARED,
    )


def configure_worker_logging(channel: IO[str]) -> None:
    """In a worker process: every event becomes one JSON line on `channel` (a pipe to the
    supervisor), flushed at once so the supervisor sees page starts as they happen."""
    structlog.configure(
        processors=[*_SHARED, structlog.processors.format_exc_info, structlog.processors.JSONRenderer()],
        logger_factory=structlog.PrintLoggerFactory(channel),
        cache_logger_on_first_use=False,
    )


class Outage:
    """A ledger server that went away (or a ledger whose disk is full): said once when it starts
    (and every `every_s` while it lasts), once when it ends; a 40 s outage makes three lines, not
    a traceback every tick."""

    def __init__(self, log: structlog.typing.FilteringBoundLogger, *, every_s: float = 60.0) -> None:
        self.log, self.every_s = log, every_s
        self.since: float | None = None
        self.full = False                # this outage is a full disk, not a server away
        self._said = float("-inf")

    def down(self, exc: BaseException, **fields: object) -> None:
        from ocrd.ledger import LedgerFull   # the ledger's disk is full: the same wait, its own words
        now = time.monotonic()
        if self.since is None:
            self.since, self.full = now, isinstance(exc, LedgerFull)
        if now - self._said >= self.every_s:
            self._said = now
            self.log.warning("ledger_full" if self.full else "ledger_unreachable", error=str(exc),
                             for_s=round(now - self.since, 1), **fields)

    def up(self) -> bool:
        """True when this ends an outage."""
        if self.since is None:
            return False
        self.log.info("ledger_writable" if self.full else "ledger_reachable",
                      after_s=round(time.monotonic() - self.since, 1))
        self.since, self._said = None, float("-inf")
        return True
