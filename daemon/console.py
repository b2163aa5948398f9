"""What `ocrd run` prints on a terminal: a line when it starts, a ready line naming each watched
inbox and its outbox, then one line per document (queued, skipped, done, failed), and warnings and
errors. Everything else (heartbeats, page events, the workers' own prints) goes to the JSON log
file only. Under launchd/systemd (no terminal) the console gets the JSON lines as before.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import structlog

_GREEN, _RED, _YELLOW, _BOLD, _RESET = "\033[32m", "\033[31m", "\033[33m", "\033[1m", "\033[0m"
# A model download's progress bar (tqdm: "Fetching 12 files:  42%|████ | 5/12"): the one worker
# print worth showing on a terminal, so a first start is not silent for minutes.
_PROGRESS = re.compile(r"\d+%\|")
_QUIET = {"page_failed"}   # a page that is retried: the document's own line tells how it ended
_HOME = str(Path.home())


def _short(path: Any) -> str:
    text = str(path or "-")
    return "~" + text[len(_HOME):] if _HOME != "/" and text.startswith(_HOME + "/") else text


def _plural(n: Any, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _seconds(s: Any) -> str:
    if not isinstance(s, (int, float)):
        return "?"
    s = float(s)
    return f"{s:.1f} s" if s < 60 else f"{int(s // 60)} min {int(s % 60):02d} s"


def _starting(e: dict[str, Any]) -> str:
    return (f"{_BOLD}ocrd starting{_RESET} (pid {e.get('pid')}); the full log (JSON) is "
            f"{_short(e.get('log'))}")


def _ready(e: dict[str, Any]) -> str:
    inboxes = e.get("inboxes") or []
    watched = "; ".join(f"{_short(i['inbox'])} -> {_short(i['outbox'])}" for i in inboxes)
    model = "model loaded" if e.get("model_ok") else f"{_RED}model not loaded{_RESET}: files wait in the queue"
    where = f"watching {watched}" if inboxes else "no inbox configured (`ocrd submit` only)"
    return f"{_GREEN}{_BOLD}ready{_RESET}: {where} ({_plural(e.get('workers'), 'worker')}, {model})"


def _queued(e: dict[str, Any]) -> str:
    forced = ", duplicate processed anyway" if e.get("forced") else ""
    return f"queued   {_short(e.get('path'))} (job {e.get('job_id')}, {_plural(e.get('pages'), 'page')}{forced})"


def _duplicate(e: dict[str, Any]) -> str:
    return (f"skipped  {_short(e.get('path'))}: duplicate of job {e.get('duplicate_of')} "
            f"(job {e.get('job_id')}; `ocrd retry --force {e.get('job_id')}` processes it)")


def _done(e: dict[str, Any]) -> str:
    return (f"{_GREEN}done{_RESET}     {_short(e.get('source'))} -> {_short(e.get('output'))} "
            f"(job {e.get('job_id')}, {_plural(e.get('pages'), 'page')} in {_seconds(e.get('seconds'))})")


def _failed(e: dict[str, Any]) -> str:
    job = f" (job {e['job_id']})" if e.get("job_id") is not None else ""
    return f"{_RED}failed{_RESET}   {_short(e.get('source') or e.get('path'))}: {e.get('reason')}{job}"


def _stopping(e: dict[str, Any]) -> str:
    return f"stopping ({e.get('signal')}): pages in flight finish; Ctrl-C again to stop at once"


def _progress(e: dict[str, Any]) -> str:
    return f"         {e.get('line')}"


RENDER: dict[str, Callable[[dict[str, Any]], str]] = {
    "daemon_starting": _starting, "daemon_ready": _ready, "job_queued": _queued,
    "job_duplicate": _duplicate, "job_done": _done, "job_failed": _failed, "ingest_failed": _failed,
    "daemon_stopping": _stopping, "daemon_stopped": lambda e: "stopped",
}


def _shown(event: str, level: int, e: dict[str, Any]) -> bool:
    if event == "worker_output":     # mlx-vlm's own prints ("directly resize" on every page)
        return bool(_PROGRESS.search(str(e.get("line") or "")))
    return event in RENDER or (level >= logging.WARNING and event not in _QUIET)


class ConsoleFilter(logging.Filter):
    """Lets through the records the terminal shows (see the module's docstring)."""

    def filter(self, record: logging.LogRecord) -> bool:
        e = record.msg if isinstance(record.msg, dict) else {}
        if not e:       # a library's own logging record: its warnings and errors only
            return record.levelno >= logging.WARNING
        return _shown(str(e.get("event")), record.levelno, e)


class ConsoleRenderer:
    """A structlog renderer: the lines above, each after the local time; other warnings and
    errors as structlog's key=value lines."""

    def __init__(self) -> None:
        self._fallback = structlog.dev.ConsoleRenderer(colors=True)

    def __call__(self, logger: Any, name: str, e: dict[str, Any]) -> str:
        event = str(e.get("event"))
        render = _progress if event == "worker_output" else RENDER.get(event)
        if render is None:
            if e.get("exc_info"):              # a traceback: structlog lays it out best
                return self._fallback(logger, name, e)
            render = _problem
        return f"{_clock(e.get('timestamp'))} {render(e)}"


_NOT_SHOWN = {"event", "level", "timestamp", "logger", "_record", "_from_structlog"}
_MESSAGE_KEYS = ("warning", "error", "reason", "note")


def _problem(e: dict[str, Any]) -> str:
    """Another warning or error: its level and name, its message, then its other keys."""
    level = str(e.get("level") or "warning")
    colour = _RED if level in ("error", "critical") else _YELLOW
    message = next((str(e[k]) for k in _MESSAGE_KEYS if e.get(k)), "")
    rest = " ".join(f"{k}={v}" for k, v in e.items() if k not in _NOT_SHOWN and str(e.get(k)) != message)
    return f"{colour}{level:<8}{_RESET} {e.get('event')}" + (f": {message}" if message else "") \
        + (f"  ({rest})" if rest else "")


def _clock(stamp: Any) -> str:
    try:
        return datetime.fromisoformat(str(stamp)).astimezone().strftime("%H:%M:%S")
    except ValueError:
        return datetime.now().strftime("%H:%M:%S")
