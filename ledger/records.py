"""The typed rows and results the Ledger hands out (frozen, so they can travel between threads)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Row

from .states import JobState, PageState


@dataclass(frozen=True)
class AddResult:
    job_id: int
    state: JobState              # queued, duplicate or failed
    duplicate_of: int | None     # the original job when state is duplicate


@dataclass(frozen=True)
class JobOptions:
    """What the submitter chose for one job (an API upload's mode, prompt and formats), stored as
    JSON in `jobs.options`; None: its inbox's. The daemon checks the values before they get here."""
    mode: str | None = None
    prompt: str | None = None
    formats: tuple[str, ...] | None = None

    def to_text(self) -> str | None:
        """The column's JSON, or None when nothing was chosen (a file dropped in an inbox)."""
        chosen = {k: list(v) if k == "formats" else v for k, v in self.__dict__.items() if v}
        return json.dumps(chosen, ensure_ascii=False, sort_keys=True) if chosen else None

    @classmethod
    def from_text(cls, text: str | None) -> JobOptions:
        data = json.loads(text) if text else {}
        formats = data.get("formats")
        return cls(mode=data.get("mode"), prompt=data.get("prompt"),
                   formats=tuple(formats) if formats else None)


@dataclass(frozen=True)
class Job:
    """One `jobs` row (DESIGN.md documents the columns); times are ISO-8601 UTC text."""
    id: int
    inbox: str                   # InboxConfig.key
    source_path: str             # where it was dropped
    spool_path: str | None       # where the original lies now ("" or None: deleted)
    sha256: str | None
    size_bytes: int | None
    state: JobState
    pages_total: int
    pages_done: int
    attempts: int
    priority: int
    created_at: str
    updated_at: str
    finished_at: str | None
    output_path: str | None
    error: str | None
    duplicate_of: int | None
    host: str | None = None      # who delivers it (hosts.py); None: written before v3
    mode: str | None = None      # its inbox's mode and prompt when it was ingested
    prompt: str | None = None
    options: str | None = None   # v5: JSON of its JobOptions (None: its inbox's)

    @classmethod
    def from_row(cls, row: Row) -> Job:
        return cls(**{**row._mapping, "state": JobState(row.state)})

    @property
    def chosen(self) -> JobOptions:
        """What its submitter chose for it (empty for a file dropped in an inbox)."""
        return JobOptions.from_text(self.options)


@dataclass(frozen=True)
class DonePage:
    """A done page as the finisher reads it: its text, and its blocks where the engine gave boxes
    (`blocks` is JSON text, None for pages read before v4 or without boxes)."""
    page_no: int
    text: str
    blocks: str | None = None
    width: int | None = None     # the image the boxes refer to, in pixels
    height: int | None = None
    engine: str | None = None
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    generation_tokens: int | None = None


@dataclass(frozen=True)
class ClaimedPage:
    job_id: int
    page_no: int                 # 1-based
    attempts: int                # including this claim
    pages_total: int
    inbox: str                   # InboxConfig.key
    source_path: str
    spool_path: str
    host: str | None = None      # the job's (hosts.py)
    mode: str | None = None      # the job's inbox's, for a worker that doesn't have that inbox
    prompt: str | None = None
    options: str | None = None   # the job's own choices (JobOptions JSON), over its inbox's

    @classmethod
    def of(cls, job_id: int, page_no: int, attempts: int, job: Row) -> ClaimedPage:
        return cls(job_id=job_id, page_no=page_no, attempts=attempts, pages_total=job.pages_total,
                   inbox=job.inbox, source_path=job.source_path, spool_path=job.spool_path,
                   host=job.host, mode=job.mode, prompt=job.prompt, options=job.options)

    @property
    def chosen(self) -> JobOptions:
        return JobOptions.from_text(self.options)


@dataclass(frozen=True)
class DaemonInfo:
    """What the running daemon recorded at start: its device and its pool plan (meta keys
    `device` and `pool_plan`), for `ocrd status` and `ocrd device`."""
    backend: str
    name: str
    memory_bytes: int
    workers: int
    batch: int                   # the planned in-flight limit of each worker
    reason: str                  # why `workers`
    batch_reason: str = ""       # why `batch`
    engine: str = ""             # which engine reads the pages (daemon/engines/choice.py)
    engine_reason: str = ""      # why that engine


@dataclass(frozen=True)
class PageOutcome:
    state: PageState             # queued (will retry) or failed
    run_after: datetime | None   # when a queued page may be claimed again
    job_failed: bool             # the page's failure failed its job
