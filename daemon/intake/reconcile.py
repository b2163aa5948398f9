"""Start-up reconcile: finish or undo what a crash interrupted, so the spool holds only files the
ledger knows (DESIGN.md invariant 1).

It runs once at start, before anything is ingested, under the exclusive spool lock (so it never
mistakes another process's file in flight for debris):
1. every intent left in the journal is resumed (its file settled, or recorded where the last move
   put it) or dropped (the file never left its inbox);
2. every spool file without an intent is matched to its job: queued and running jobs keep theirs,
   failed ones go to failed/, done and duplicate ones to archive/ (or are deleted); a file no job
   knows is ingested, never deleted.
"""

from __future__ import annotations

import filecmp
import re
from pathlib import Path
from typing import Protocol

import structlog

from ocrd.ledger import JobState, Ledger

from .. import files
from ..config import Config, InboxConfig
from .intents import Intent, Stage, drop_intent, intent_path, load_intent, write_intent
from ..output.outbox import Place, job_relative_path, place_original, plan_destination

log = structlog.get_logger()

_SPOOL_PREFIX = re.compile(r"^[0-9a-f]{16}-")   # ingest.spool_name
COUNTS = ("resumed", "dropped_intents", "removed_copies", "failed_moved", "done_archived",
          "orphans_ingested", "temp_removed")


class Settler(Protocol):
    """What reconcile needs of the Ingestor (ingest.py imports this module, not the reverse)."""
    config: Config
    ledger: Ledger
    spool: Path
    intents: Path

    def home_inbox(self, key: str) -> InboxConfig: ...

    def settle(self, intent: Intent) -> object: ...

    def record_failure(self, intent: Intent, where: Path) -> object: ...


def reconcile_spool(ing: Settler) -> dict[str, int]:
    """Resume every intent, then sweep the spool; returns how many of each outcome (COUNTS).
    The caller holds the exclusive spool lock."""
    counts = dict.fromkeys(COUNTS, 0)
    _resume_intents(ing, counts)
    _sweep_spool(ing, counts)
    log.info("spool_reconciled", **counts)
    return counts


def _resume_intents(ing: Settler, counts: dict[str, int]) -> None:
    for path in sorted(ing.intents.iterdir()):
        if path.name.startswith("."):          # a half-written intent's temp file
            path.unlink(missing_ok=True)
            continue
        try:
            intent = load_intent(path)
        except (OSError, ValueError):
            path.unlink(missing_ok=True)       # atomic_write_text: never half written
            continue
        except (KeyError, TypeError):          # not one we can act on: keep it and its file
            log.exception("reconcile_intent_failed", intent=path.name)
            continue
        try:
            counts[_resume(ing, intent)] += 1
        except Exception:
            log.exception("reconcile_intent_failed", intent=intent)


def resume_intent(ing: Settler, path: Path) -> str:
    """Finish or undo what one intent began; its outcome (a COUNTS key)."""
    return _resume(ing, load_intent(path))


def _resume(ing: Settler, intent: Intent) -> str:
    spool, dest = ing.spool / intent.spool_name, intent.dest_path
    if spool.exists() and dest is not None and dest.exists() \
            and dest.stat().st_size == spool.stat().st_size:
        spool.unlink()                         # crashed between a cross-volume copy and its unlink
    if intent.stage == Stage.RETRY:
        return _resume_retry(ing, intent, spool, dest)
    if spool.exists():
        if (intent.stage == Stage.NEW and not intent.copied
                and ing.ledger.job_by_spool_path(str(spool)) is None
                and _same_content(Path(intent.source_path), spool)):
            spool.unlink()                     # crashed mid cross-volume move: the inbox copy wins
            drop_intent(ing.intents, intent)
            return "removed_copies"
        ing.settle(intent)
        return "resumed"
    if intent.stage == Stage.FAILED and dest is not None and dest.exists():
        files.write_error_file(dest, intent.reason, intent.details)
        ing.record_failure(intent, dest)
        return "resumed"
    if intent.stage == Stage.DUPLICATE and intent.job_id is not None:
        if dest is None or dest.exists():
            ing.ledger.set_job_paths(intent.job_id, spool_path=str(dest) if dest else "")
        drop_intent(ing.intents, intent)
        return "resumed"
    # The file never reached the spool (the watcher finds it in the inbox again), or it did and
    # the ingest finished; either way the ledger needs nothing.
    drop_intent(ing.intents, intent)
    return "dropped_intents"


def _resume_retry(ing: Settler, intent: Intent, spool: Path, dest: Path | None) -> str:
    # `ocrd retry` died around a move into the spool or back to failed/: record where the file
    # is. A still-failed job's original found in the spool goes back to failed/ in the sweep.
    if intent.job_id is not None:
        if spool.exists():
            ing.ledger.set_job_paths(intent.job_id, spool_path=str(spool))
        elif dest is not None and dest.exists():
            ing.ledger.set_job_paths(intent.job_id, spool_path=str(dest))
            if intent.reason:
                files.write_error_file(dest, intent.reason, intent.details)
    drop_intent(ing.intents, intent)
    return "resumed"


def _sweep_spool(ing: Settler, counts: dict[str, int]) -> None:
    for path in sorted(ing.spool.iterdir()):
        if path.name.startswith("."):
            if path.is_file() and path.name.startswith(".ocrd-"):   # an interrupted copy
                path.unlink(missing_ok=True)
                counts["temp_removed"] += 1
            continue
        if not path.is_file() or intent_path(ing.intents, path.name).exists():
            continue  # an intent that could not be resumed keeps its file for the next start
        try:
            outcome = _place_spool_file(ing, path)
        except Exception:
            log.exception("reconcile_file_failed", path=str(path))
            continue
        if outcome:
            counts[outcome] += 1


def _place_spool_file(ing: Settler, path: Path) -> str | None:
    job = ing.ledger.job_by_spool_path(str(path))
    if job is None:
        # No intent and no job: not by our own steps, but after a lost (deleted, replaced) ledger.
        # Keep the file by ingesting it again, under its original name (the spool name is
        # "<16 hex>-<name>"), so its output is `name.md`, not `<16 hex>-name.md`.
        inbox = ing.home_inbox("")
        name = _SPOOL_PREFIX.sub("", path.name) or path.name
        log.error("spool_file_unknown_to_the_ledger", path=str(path), queued_as=name,
                  note="a new or lost ledger? the file is queued again under its original name")
        intent = Intent(inbox=inbox.key, source_path=str(inbox.path / name), relative_path=name,
                        spool_name=path.name, size=path.stat().st_size, copied=True)
        write_intent(ing.intents, intent)
        ing.settle(intent)
        return "orphans_ingested"
    if job.state in (JobState.QUEUED, JobState.RUNNING):
        return None
    failed = job.state == JobState.FAILED        # else done or duplicate
    to = Place.FAILED if failed else Place.ARCHIVE
    dest = plan_destination(ing.home_inbox(job.inbox), to, job_relative_path(ing.config, job))
    where = place_original(ing.ledger, path, dest, job_id=job.id,
                           error=(job.error or "failed") if failed else None)
    if where == path:
        return None                            # the folder refused it (logged): next start
    return "failed_moved" if failed else "done_archived"


def _same_content(a: Path, b: Path) -> bool:
    try:
        return a.stat().st_size == b.stat().st_size and filecmp.cmp(a, b, shallow=False)
    except OSError:
        return False
