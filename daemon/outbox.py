"""Finishing a document: the outbox file, the original's move to archive/ or failed/, the job state.

Order matters (DESIGN.md invariants 1 and 2); each step is idempotent so the supervisor can run
`finish_document` again for a job whose finisher died part-way:
  reserve output path in the ledger -> write outbox file atomically -> move original to archive
  -> record its new place -> job running -> done.
A crash before the last step leaves a running job with every page done; the supervisor notices
such jobs (at start and every few seconds) and finishes them.
"""

from __future__ import annotations

import fcntl
import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import structlog

from ..ledger.states import JobState
from ..ledger.store import Ledger
from .config import Config
from .files import atomic_write_text, move_file, unique_path, write_error_file

log = structlog.get_logger()

_DET = re.compile(r"<\|det\|>.*?<\|/det\|>", re.S)
_REF = re.compile(r"<\|/?ref\|>")


def job_relative_path(config: Config, job: dict) -> Path:
    """A job's source path below its inbox (just its name when it came from elsewhere): the
    path it keeps under outbox/, archive/ and failed/."""
    source, inbox = Path(job["source_path"]), config.inbox_for(job["inbox"])
    if inbox is not None and source.is_relative_to(inbox.path):
        return source.relative_to(inbox.path)
    return Path(source.name)


def clean_markdown(text: str) -> str:
    """Drop DeepSeek-OCR's grounding boxes (`<|det|>[[x,y,..]]<|/det|>`), keep the referenced text."""
    return _REF.sub("", _DET.sub("", text)).strip()


def assemble(texts: list[str]) -> str:
    """One markdown document; every page starts with a marker so pages stay findable."""
    total = len(texts)
    parts = [f"<!-- page {n} of {total} -->\n\n{clean_markdown(t)}\n" for n, t in enumerate(texts, 1)]
    return "\n".join(parts)


@contextmanager
def _outbox_lock(config: Config) -> Iterator[None]:
    # Two workers finishing `a.pdf` and `a.png` at once must not both pick `a.md`.
    config.state_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(config.state_dir / "outbox.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def finish_document(config: Config, ledger: Ledger, job_id: int) -> Path | None:
    """Write the outbox file of a job whose pages are all done, archive the original, mark it done.
    Runs under a lock shared by every finisher, so a worker and the supervisor (finishing for a
    worker that died) never interleave, and two documents never pick the same output name."""
    with _outbox_lock(config):
        job = ledger.job(job_id)
        if job is None or job["state"] not in (JobState.RUNNING, JobState.QUEUED) \
                or not ledger.job_complete(job_id):
            return None
        inbox = config.home_inbox(job["inbox"])
        if inbox is None:
            log.error("finish_skipped_no_inbox", job_id=job_id, inbox=job["inbox"])
            return None
        rel = job_relative_path(config, job)
        out = Path(job["output_path"]) if job["output_path"] else unique_path(
            inbox.outbox / rel.with_suffix(".md"))
        ledger.set_job_paths(job_id, output_path=str(out))
        texts = ledger.page_texts(job_id)
        try:
            atomic_write_text(out, assemble(texts))
        except OSError as exc:  # unwritable or full outbox: fail the document, don't loop on it
            reason = f"cannot write output {out}: {exc.strerror or exc}"
            ledger.fail_job(job_id, reason)
            fail_document(config, ledger, job_id, reason)
            return None
        original = Path(job["spool_path"]) if job["spool_path"] else None
        if original is not None and original.is_relative_to(config.spool_dir) and original.exists():
            if inbox.archive is None:
                original.unlink()
                ledger.set_job_paths(job_id, spool_path="")
            else:
                try:
                    moved = move_file(original, inbox.archive / rel)
                    ledger.set_job_paths(job_id, spool_path=str(moved))
                except OSError as exc:  # the output is written; the original waits in the spool
                    log.error("archive_failed", job_id=job_id, original=str(original),
                              error=str(exc), note="kept in the spool; moved at the next start")
        elif original is not None and inbox.archive and (inbox.archive / rel).exists():
            ledger.set_job_paths(job_id, spool_path=str(inbox.archive / rel))  # moved, then a crash
        ledger.finish_job(job_id, str(out))
    log.info("job_done", job_id=job_id, output=str(out), pages=len(texts))
    return out


def fail_document(config: Config, ledger: Ledger, job_id: int, reason: str, details: str = "") -> None:
    """After the ledger failed a job: move its original to failed/<rel> with `<name>.error.txt`."""
    job = ledger.job(job_id)
    if job is None or job["state"] != JobState.FAILED:
        return
    original = Path(job["spool_path"]) if job["spool_path"] else None
    if original is None or not original.is_relative_to(config.spool_dir) or not original.exists():
        return
    inbox = config.home_inbox(job["inbox"])
    if inbox is None:
        return
    try:
        moved = move_file(original, inbox.failed / job_relative_path(config, job))
        ledger.set_job_paths(job_id, spool_path=str(moved))
        write_error_file(moved, job["error"] or reason, details)
    except OSError as exc:  # failed/ unwritable: the original waits in the spool, the ledger says so
        log.error("failed_move_failed", job_id=job_id, original=str(original), error=str(exc),
                  note="kept in the spool; moved at the next start")
        return
    log.warning("job_failed", job_id=job_id, reason=job["error"] or reason, moved_to=str(moved))
