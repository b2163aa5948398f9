"""Job and page states, and the one table of allowed transitions (DESIGN.md invariant 3)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from enum import StrEnum


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    DUPLICATE = "duplicate"


class PageState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


class WorkerState(StrEnum):
    """A worker process's state in the `workers` table (written by its one writer,
    `Ledger.set_worker_state`, and by heartbeats)."""
    STARTING = "starting"
    LOADING = "loading"
    IDLE = "idle"
    BUSY = "busy"
    STOPPING = "stopping"
    STOPPED = "stopped"
    DEAD = "dead"
    LOAD_FAILED = "load_failed"


ENDED_WORKER_STATES = frozenset({WorkerState.STOPPED, WorkerState.DEAD})


class OnDuplicate(StrEnum):
    """`[[inbox]] on_duplicate`: what a file with the content of a known job does."""
    SKIP = "skip"          # recorded as a `duplicate` job and archived
    PROCESS = "process"    # processed anyway


class ModelState(StrEnum):
    LOADING = "loading"
    OK = "ok"
    UNAVAILABLE = "unavailable"


@dataclass(frozen=True)
class ModelStatus:
    """Whether the daemon's workers could load the model; kept in the ledger's meta table."""
    state: ModelState
    reason: str = ""
    retry_in_s: float | None = None

    def describe(self) -> str:
        """One line for people: `ok`, `loading`, `unavailable: why (retrying in 40 s)`."""
        if self.state != ModelState.UNAVAILABLE:
            return str(self.state)
        retry = f" (retrying in {self.retry_in_s:.0f} s)" if self.retry_in_s is not None else ""
        return f"unavailable: {self.reason or 'model could not be loaded'}{retry}"

    def dumps(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def loads(cls, text: str) -> ModelStatus:
        try:
            data = json.loads(text)
            return cls(ModelState(data["state"]), data.get("reason", ""), data.get("retry_in_s"))
        except (ValueError, KeyError, TypeError):  # a ledger written before this record
            state, _, reason = text.partition(":")
            known = state.strip() in ModelState.__members__.values()
            return cls(ModelState(state.strip()) if known else ModelState.UNAVAILABLE, reason.strip())


JOB_TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.QUEUED: frozenset({JobState.RUNNING, JobState.FAILED}),
    JobState.RUNNING: frozenset({JobState.DONE, JobState.FAILED, JobState.QUEUED}),
    JobState.FAILED: frozenset({JobState.QUEUED}),          # ocrd retry
    JobState.DONE: frozenset(),
    JobState.DUPLICATE: frozenset({JobState.QUEUED}),       # ocrd retry --force
}

PAGE_TRANSITIONS: dict[PageState, frozenset[PageState]] = {
    PageState.QUEUED: frozenset({PageState.RUNNING, PageState.FAILED}),
    # running -> queued: a retryable failure, an expired lease, or a release at warm stop
    PageState.RUNNING: frozenset({PageState.DONE, PageState.QUEUED, PageState.FAILED}),
    PageState.FAILED: frozenset({PageState.QUEUED}),        # ocrd retry
    PageState.DONE: frozenset(),
}


class TransitionError(RuntimeError):
    """A state change the table does not allow, or one that lost a race (the row moved on)."""


def check_job(src: JobState, dst: JobState) -> None:
    if dst not in JOB_TRANSITIONS[JobState(src)]:
        raise TransitionError(f"job transition {src} -> {dst} is not allowed")


def check_page(src: PageState, dst: PageState) -> None:
    if dst not in PAGE_TRANSITIONS[PageState(src)]:
        raise TransitionError(f"page transition {src} -> {dst} is not allowed")
