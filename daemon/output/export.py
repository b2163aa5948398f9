"""`ocrd export`: a done document's outputs made again, from the ledger and its archived original.

For documents done before a format was turned on (a searchable PDF of last year's scans), or
outputs deleted since. The text formats need only the ledger; the PDF needs the original, which
lies in archive/ unless the inbox keeps none (archive = ""): then it says so. The files go under
the chosen folder as they would in the outbox (`scans/a.pdf` -> `DIR/scans/a.pdf`), written by the
same writers as the daemon's, never over an existing file (numbered as in the outbox).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ocrd.ledger import JobState, Ledger

from ..config import Config
from .outbox import job_formats, job_relative_path
from .writers import Document, FormatFailed, free_stem, write_outputs


@dataclass(frozen=True)
class Exported:
    """One job's export: the files written, or why none were."""
    job_id: int
    paths: list[Path] = field(default_factory=list)
    error: str = ""


def export_job(config: Config, ledger: Ledger, job_id: int, formats: tuple[str, ...] | None,
               to: Path) -> Exported:
    """Write `formats` (None: the job's own, see job_formats) of job `job_id` under `to`."""
    job = ledger.job(job_id)
    if job is None:
        return Exported(job_id, error=f"job {job_id} not found")
    if job.state != JobState.DONE:
        return Exported(job_id, error=f"job {job_id} is {job.state}: only a done job has outputs")
    inbox = config.home_inbox(job.inbox)
    formats = formats or job_formats(config, job.inbox, job.options)
    original = Path(job.spool_path) if job.spool_path else None
    if "pdf" in formats and (original is None or not original.is_file()):
        where = f"it was at {original}" if original else "its inbox keeps no archive (archive = \"\")"
        return Exported(job_id, error=f"job {job_id}: the original is gone ({where}); "
                                      "md, json and txt can still be exported")
    doc = Document(ledger.done_pages(job_id), original, mode=job.mode or config.mode_for(inbox))
    stem = free_stem(to / job_relative_path(config, job).with_suffix(""), formats)
    try:
        return Exported(job_id, paths=write_outputs(doc, stem, formats))
    except (FormatFailed, OSError) as exc:
        return Exported(job_id, error=f"job {job_id}: {exc}")
