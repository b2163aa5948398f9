"""Job and page states, and the one table of allowed transitions (DESIGN.md invariant 3)."""

from __future__ import annotations

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


JOB_TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.QUEUED: frozenset({JobState.RUNNING, JobState.FAILED}),
    JobState.RUNNING: frozenset({JobState.DONE, JobState.FAILED, JobState.QUEUED}),
    JobState.FAILED: frozenset({JobState.QUEUED}),          # ocrd retry
    JobState.DONE: frozenset(),
    JobState.DUPLICATE: frozenset(),
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
