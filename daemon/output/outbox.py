"""Finishing a document: its outbox files, the original's move to archive/ or failed/, the job state.

Order matters (DESIGN.md invariants 1 and 2); each step is idempotent so the delivery can run
`finish_document` again for a job whose finishing was cut short:
  reserve the output stem in the ledger -> write each format atomically (writers.py) -> move the
  original to archive -> record its new place -> job running -> done.
A crash before the last step leaves a running job with every page done; the supervisor notices
such jobs (at start and every few seconds) and finishes them. Once the original has left the spool
every format is written, so such a second run writes nothing again.

`place_original` is the one place that moves an original out of the spool (to archive/, to
failed/ with its `.error.txt`, or deletes it when the inbox keeps no archive); finishing, failing,
ingest, reconcile and retry all go through it.
"""

from __future__ import annotations

import errno
from enum import StrEnum
from pathlib import Path

import structlog

from ocrd.ledger import Job, JobOptions, JobState, Ledger
from ocrd.ledger.clock import from_text, utc_now

from ..config import Config, InboxConfig
from ..files import (error_file_for, flocked, move_file, numbered, sha256_file, unique_path,
                     write_error_file)
from .writers import Document, FormatFailed, free_stem, output_path, stem_of, write_outputs

log = structlog.get_logger()


# A disk that is full or was remounted read-only clears by itself (or by a person who won't
# think of `ocrd retry`): the document keeps its done pages and the daemon writes it later.
TRANSIENT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})


class OutputDelayed(OSError):
    """The outbox can't take the document right now (TRANSIENT_ERRNOS); the supervisor retries."""


class Place(StrEnum):
    """Where an original goes once it leaves the spool."""
    ARCHIVE = "archive"     # done, or a duplicate
    FAILED = "failed"


def job_relative_path(config: Config, job: Job) -> Path:
    """A job's source path below its inbox (just its name when it came from elsewhere): the
    path it keeps under outbox/, archive/ and failed/."""
    return relative_source(config, job.inbox, job.source_path)


def job_formats(config: Config, inbox_key: str, options: str | None = None) -> tuple[str, ...]:
    """The formats a job is written in: its own (an API upload's choice, `jobs.options`), else
    its inbox's. Finishing, export, hooks and the API all ask here."""
    return JobOptions.from_text(options).formats or config.formats_for(config.home_inbox(inbox_key))


def relative_source(config: Config, inbox_key: str, source_path: str) -> Path:
    """job_relative_path for a job known by its inbox key and source path (a ledger row)."""
    source, inbox = Path(source_path), config.inbox_for(inbox_key)
    if inbox is not None and source.is_relative_to(inbox.path):
        return source.relative_to(inbox.path)
    return Path(source.name)


def plan_destination(inbox: InboxConfig, to: Place, rel: Path) -> Path | None:
    """A free path for an original under the inbox's archive/ or failed/ (its relative path
    kept, numbered on a clash); None when it is to be deleted (an inbox with no archive)."""
    folder = inbox.failed if to == Place.FAILED else inbox.archive
    return None if folder is None else unique_path(folder / rel)


def place_original(ledger: Ledger, original: Path, dest: Path | None, *, job_id: int | None = None,
                   error: str | None = None, details: str = "",
                   event: str = "original_not_moved") -> Path | None:
    """Move an original out of the spool to `dest` (from plan_destination; callers that a crash
    could interrupt journal it first), or delete it when `dest` is None. The job's new path is
    recorded right after (when the job exists yet: at ingest the caller records it), and a failed
    original (`error` given) gets `<name>.error.txt` beside it. When the folder cannot take it
    (unwritable, full, a file where a folder should be) it stays in the spool, where the ledger
    already has it, and the next start's reconcile moves it on: one bad folder must not stop the
    daemon. Returns where the original lies now (None: deleted)."""
    try:
        if dest is None:
            original.unlink(missing_ok=True)
        else:
            dest = move_file(original, dest, overwrite=True)
    except OSError as exc:
        log.error(event, job_id=job_id, original=str(original), dest=str(dest), error=str(exc),
                  note="kept in the spool; moved at the next start")
        return original
    if job_id is not None:
        ledger.set_job_paths(job_id, spool_path=str(dest) if dest else "")
    if dest is not None and error is not None:
        try:
            write_error_file(dest, error, details)
        except OSError as exc:  # the original is safe in failed/; only the note is missing
            log.error(event, job_id=job_id, original=str(dest), error=str(exc),
                      note="moved, but its .error.txt could not be written")
    return dest


def _in_spool(config: Config, job: Job) -> Path | None:
    """The job's original when it still lies in the spool."""
    original = Path(job.spool_path) if job.spool_path else None
    if original is None or not original.is_relative_to(config.spool_dir) or not original.exists():
        return None
    return original


def finish_document(config: Config, ledger: Ledger, job_id: int) -> Path | None:
    """Write the outbox files of a job whose pages are all done (one per format of its inbox),
    archive the original, mark it done; the first format's path, None when there was nothing to
    do. Runs under the finishers' lock, so two documents never pick the same output name."""
    # `a.pdf` and `a.png` finishing at once must not both pick `a.md`.
    with flocked(config.state_dir / "outbox.lock"):
        job = ledger.job(job_id)
        if job is None or job.state not in (JobState.RUNNING, JobState.QUEUED) \
                or not ledger.delivers(job.host) or not ledger.job_complete(job_id):
            return None   # (another host's job: that host delivers it, ledger/hosts.py)
        inbox = config.home_inbox(job.inbox)
        if inbox is None:
            log.error("finish_skipped_no_inbox", job_id=job_id, inbox=job.inbox)
            return None
        rel = job_relative_path(config, job)
        formats = job_formats(config, job.inbox, job.options)
        stem = stem_of(Path(job.output_path)) if job.output_path else free_stem(
            inbox.outbox / rel.with_suffix(""), formats)
        out = output_path(stem, formats[0])
        ledger.set_job_paths(job_id, output_path=str(out))
        original = _in_spool(config, job)
        pages = ledger.done_pages(job_id)
        # The original leaves the spool only after every format is written: a finish cut short
        # after that move has nothing left to write (and the searchable PDF could not be redone).
        written = original is None and all(output_path(stem, f).exists() for f in formats)
        doc = Document(pages, original, mode=job.mode or config.mode_for(inbox))
        if not written and not _write(config, ledger, job_id, doc, stem, formats):
            return None
        if original is not None:   # the output is written; if archive/ refuses, it waits in the spool
            place_original(ledger, original, plan_destination(inbox, Place.ARCHIVE, rel),
                           job_id=job_id, event="archive_failed")
        else:
            _record_moved(config, ledger, job, inbox.archive)
        ledger.finish_job(job_id, str(out))
    log.info("job_done", job_id=job_id, source=job.source_path, output=str(out), pages=len(pages),
             formats=list(formats), seconds=_seconds_since(ledger.job_started_at(job_id)))
    return out


def _record_moved(config: Config, ledger: Ledger, job: Job, folder: Path | None,
                  error: str | None = None) -> None:
    """An original gone from the spool while the ledger still has it there: a move to `folder`
    (archive/ or failed/) cut short before it recorded where. The ledger gets where it went
    (`<rel>` or the numbered sibling plan_destination gave it, known by its bytes; "" when it is
    not there: deleted), and a failed one its `.error.txt`."""
    if not job.spool_path or not Path(job.spool_path).is_relative_to(config.spool_dir):
        return
    found = None
    if folder is not None and job.sha256:
        for path in numbered(folder / job_relative_path(config, job)):
            if not path.exists():
                break
            if sha256_file(path) == job.sha256:
                found = path
                break
    ledger.set_job_paths(job.id, spool_path=str(found) if found else "")
    if found is not None and error is not None and not error_file_for(found).exists():
        write_error_file(found, error)


def _write(config: Config, ledger: Ledger, job_id: int, doc: Document, stem: Path,
           formats: tuple[str, ...]) -> bool:
    """Every format written (True); a full disk raises OutputDelayed (tried again later); a format
    that can't be made, or a folder the user must fix, fails the document (False)."""
    try:
        write_outputs(doc, stem, formats)
        return True
    except OSError as exc:
        if exc.errno in TRANSIENT_ERRNOS:   # a full or read-only disk clears: wait, don't fail
            raise OutputDelayed(f"cannot write output {stem} yet: {exc.strerror or exc}") from exc
        # a file where the outbox folder should be, permissions: the user must act (`ocrd retry`)
        reason = f"cannot write output {Path(exc.filename or stem)}: {exc.strerror or exc}"
    except FormatFailed as exc:
        reason = str(exc)
    ledger.fail_job(job_id, reason)
    if not _move_failed(config, ledger, job_id, reason, ""):
        log.warning("job_failed", job_id=job_id, reason=reason, moved_to=None)
    return False


def _seconds_since(iso: str | None) -> float | None:
    """Seconds from an ISO-8601 UTC stamp of the ledger to now (how long a document took)."""
    if not iso:
        return None
    return round((utc_now() - from_text(iso)).total_seconds(), 1)


def fail_document(config: Config, ledger: Ledger, job_id: int, reason: str, details: str = "") -> None:
    """After the ledger failed a job: move its original to failed/<rel> with `<name>.error.txt`
    (under the finishers' lock: the supervisor delivers failures of other hosts' workers too)."""
    with flocked(config.state_dir / "outbox.lock"):
        _move_failed(config, ledger, job_id, reason, details)


def _move_failed(config: Config, ledger: Ledger, job_id: int, reason: str, details: str) -> bool:
    """Whether there was an original to move (and job_failed was logged)."""
    job = ledger.job(job_id)
    if job is None or job.state != JobState.FAILED or not ledger.delivers(job.host):
        return False
    original = _in_spool(config, job)
    inbox = config.home_inbox(job.inbox)
    if inbox is None:
        return False
    if original is None:
        _record_moved(config, ledger, job, inbox.failed, error=job.error or reason)
        return False
    dest = plan_destination(inbox, Place.FAILED, job_relative_path(config, job))
    moved = place_original(ledger, original, dest, job_id=job_id, error=job.error or reason,
                           details=details, event="failed_move_failed")
    log.warning("job_failed", job_id=job_id, source=job.source_path, reason=job.error or reason,
                moved_to=str(moved) if moved is not None else None)
    return True
