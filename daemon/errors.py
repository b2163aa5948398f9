"""Typed failures, each carrying a kind; `retryable` decides the outcome in one place."""

from __future__ import annotations


class OcrdError(Exception):
    """Base class: `kind` is a short machine name, str(exc) the one-line reason for people."""

    kind = "error"
    retryable = False

    def __init__(self, message: str, *, details: str = "") -> None:
        super().__init__(message)
        self.details = details


class InputError(OcrdError):
    """The file itself is bad: unsupported, corrupt, encrypted, empty, too large. Never retried."""

    kind = "input"


class EngineError(OcrdError):
    """Inference failed for this page; may work on another attempt."""

    kind = "engine"
    retryable = True


class PageTimeout(OcrdError):
    """The supervisor killed a worker stuck on a page past page_timeout_s."""

    kind = "timeout"
    retryable = True


class ModelUnavailable(OcrdError):
    """The model could not be loaded (no network, wrong path). Pages wait; they never fail for it."""

    kind = "model"
    retryable = True


def first_line(exc: BaseException, *, with_type: bool = False) -> str:
    """The first line of an exception's message (a SQLAlchemy error's driver message), for a
    one-line reason; `with_type` prefixes the class name (`OSError: ...`)."""
    lines = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    text = lines[0] if lines else ""
    if with_type:
        return f"{type(exc).__name__}: {text}".rstrip(": ")
    return text or type(exc).__name__


class WorkerDied(OcrdError):
    """A worker process died with pages in hand (a crash, an OOM kill); they run again."""

    kind = "crash"
    retryable = True
