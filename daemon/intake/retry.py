"""`ocrd retry` (and the API's retry): a failed job's original back into the spool, requeued.

A job whose pages failed runs its failed pages again; a job that failed at ingest is checked again
(still broken: back to failed/); `--force` takes a `duplicate` job back from archive/ and processes
it. Each move is journalled (intents.py, Stage.RETRY) so a crash mid-way is finished by reconcile.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import structlog

from ocrd.ledger import Job, JobState

from .. import files
from ..errors import InputError
from ..output.outbox import Place, job_relative_path, place_original, plan_destination
from .ingest import Ingestor, count_pages, spool_name
from .intents import Intent, Stage, drop_intent, write_intent

log = structlog.get_logger()


class RetryOutcome(StrEnum):
    """What `ocrd retry` did with one job."""
    REQUEUED = "requeued"              # its failed pages run again
    REOPENED = "reopened"              # failed at ingest, readable now: queued with `pages` pages
    STILL_FAILING = "still_failing"    # failed at ingest and still does (`detail`): back in failed/
    MISSING = "missing"                # its original is gone (`detail`: where it was; "": deleted)
    NOT_FAILED = "not_failed"          # it is not failed (`detail`: its state)
    NO_SUCH_JOB = "no_such_job"
    NOT_REOPENED = "not_reopened"      # its state changed meanwhile
    FORCED = "forced"                  # a duplicate (`retry --force`): queued with `pages` pages
    OTHER_HOST = "other_host"          # another host's (`detail`): its original lies there

    @property
    def ok(self) -> bool:
        return self in (RetryOutcome.REQUEUED, RetryOutcome.REOPENED, RetryOutcome.FORCED)


@dataclass(frozen=True)
class Retried:
    """One job's retry: its outcome, the pages it was reopened with, and the outcome's detail."""
    job_id: int
    outcome: RetryOutcome
    pages: int = 0
    detail: str = ""

    def describe(self) -> str:
        """What happened, in words (`ocrd retry`'s line, the API's reason)."""
        pages = f"{self.pages} page{'' if self.pages == 1 else 's'}"
        return {
            RetryOutcome.REQUEUED: "requeued (failed pages only)",
            RetryOutcome.REOPENED: f"requeued ({pages})",
            RetryOutcome.STILL_FAILING: f"still failing: {self.detail}",
            RetryOutcome.MISSING: f"original is missing ({self.detail or 'deleted'})",
            RetryOutcome.NOT_FAILED: f"is {self.detail}, not failed"
                                     + (" (--force processes a duplicate anyway)"
                                        if self.detail == JobState.DUPLICATE else ""),
            RetryOutcome.FORCED: f"requeued ({pages}), duplicate processed anyway",
            RetryOutcome.NO_SUCH_JOB: "not found",
            RetryOutcome.NOT_REOPENED: "not reopened (its state changed)",
            RetryOutcome.OTHER_HOST: f"belongs to host {self.detail}: run `ocrd retry` there",
        }[self.outcome]


def retry_jobs(ing: Ingestor, job_ids: list[int] | None = None, *, force: bool = False) -> list[Retried]:
    """`ocrd retry`: bring failed jobs' originals back into the spool and requeue them (None:
    every failed job). Jobs that failed at ingest are checked again; still broken -> failed/.
    `force` (`retry --force`) also takes `duplicate` jobs back from archive/ and processes them."""
    if job_ids is None:
        job_ids = [j.id for j in ing.ledger.jobs_in_states([JobState.FAILED])]
    out = []
    for job_id in job_ids:
        with ing.locked():
            out.append(_retry_one(ing, job_id, force))
    return out


def _retry_one(ing: Ingestor, job_id: int, force: bool = False) -> Retried:
    job = ing.ledger.job(job_id)
    if job is None:
        return Retried(job_id, RetryOutcome.NO_SUCH_JOB)
    retryable = (JobState.FAILED, JobState.DUPLICATE) if force else (JobState.FAILED,)
    if job.state not in retryable:
        return Retried(job_id, RetryOutcome.NOT_FAILED, detail=str(job.state))
    if not ing.ledger.delivers(job.host):
        return Retried(job_id, RetryOutcome.OTHER_HOST, detail=job.host or "")
    original = Path(job.spool_path) if job.spool_path else None
    copy = original is None and job.state == JobState.DUPLICATE   # a submitted copy, dropped:
    if copy:                                                     # the user's file is the original
        original = Path(job.source_path)
    if original is None or not original.is_file():
        return Retried(job_id, RetryOutcome.MISSING, detail=job.spool_path or "")
    if not original.is_relative_to(ing.spool):
        original = _back_to_spool(ing, job, original, copy=copy)
    picked = ing.ledger.retry_jobs([job_id])
    if job.pages_total:
        if job_id not in picked:
            return Retried(job_id, RetryOutcome.NOT_REOPENED)
        log.info("job_retried", job_id=job_id)
        return Retried(job_id, RetryOutcome.REQUEUED)
    return _reingest(ing, job, original)


def _back_to_spool(ing: Ingestor, job: Job, original: Path, *, copy: bool = False) -> Path:
    # The intent lets reconcile put it back into failed/ if we die before the ledger knows.
    intent = Intent(inbox=job.inbox, source_path=job.source_path, relative_path="",
                    spool_name=spool_name(original), size=original.stat().st_size,
                    copied=True, stage=Stage.RETRY, job_id=job.id)
    write_intent(ing.intents, intent)
    target = ing.spool / intent.spool_name
    if copy:
        files.copy_file(original, target)
    else:
        files.move_file(original, target, overwrite=True)
        files.error_file_for(original).unlink(missing_ok=True)
    ing.ledger.set_job_paths(job.id, spool_path=str(target))
    drop_intent(ing.intents, intent)
    return target


def _reingest(ing: Ingestor, job: Job, original: Path) -> Retried:
    """A job that failed at ingest, its original back in the spool: check it again."""
    size = original.stat().st_size
    sha = files.sha256_file(original)
    try:
        pages = count_pages(original)
    except InputError as exc:
        inbox = ing.home_inbox(job.inbox)
        dest = plan_destination(inbox, Place.FAILED, job_relative_path(ing.config, job))
        intent = Intent(inbox=job.inbox, source_path=job.source_path, relative_path="",
                        spool_name=original.name, stage=Stage.RETRY, job_id=job.id,
                        dest=str(dest), reason=str(exc), details=exc.details)
        write_intent(ing.intents, intent)   # a crash after the move: reconcile records it
        moved = place_original(ing.ledger, original, dest, job_id=job.id, error=str(exc),
                               details=exc.details)
        drop_intent(ing.intents, intent)
        log.warning("retry_failed", job_id=job.id, reason=str(exc), moved_to=str(moved))
        return Retried(job.id, RetryOutcome.STILL_FAILING, detail=str(exc))
    if not ing.ledger.reopen_job(job.id, spool_path=str(original), sha256=sha, size_bytes=size,
                                  pages_total=pages):
        return Retried(job.id, RetryOutcome.NOT_REOPENED)
    forced = job.state == JobState.DUPLICATE
    log.info("job_retried", job_id=job.id, pages=pages, forced=forced)
    return Retried(job.id, RetryOutcome.FORCED if forced else RetryOutcome.REOPENED, pages=pages)
