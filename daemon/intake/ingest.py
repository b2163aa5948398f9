"""Ingest: move a ready file from its inbox into the spool and record it as a job; `ocrd submit`
and `ocrd retry` go through the same steps, and so does an upload of the HTTP API (daemon/api/).

Crash safety (DESIGN.md invariant 1): before a file leaves its inbox, an intent naming it is
written to the crash journal (intents.py). Every later step is either idempotent (the ledger's
add_job / add_failed_job are keyed on the path where the file lies) or journalled before it is
taken, so reconcile.py at the next start can finish or undo whatever a kill -9 interrupted:

  intent -> move into spool -> sha256 -> sniff + count pages -> add_job    -> drop intent
                                                             \\-> failed/   -> add_failed_job -> drop
                                                 duplicate   -> archive/   -> set_job_paths  -> drop
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import structlog

from ocrd.ledger import AddResult, JobOptions, JobState, Ledger, OnDuplicate
from ocrd.ledger.hosts import SHARED_MAX_BYTES

from .. import files
from ..config import Config, InboxConfig
from ..errors import InputError, first_line
from .rules import is_ignored, is_permission_error, permission_fix, refusal_reason
from .intents import Intent, Stage, drop_intent, intent_path, write_intent
from ..output.outbox import Place, place_original, plan_destination
from .reconcile import reconcile_spool, resume_intent
from ..render import page_count, sniff_type

log = structlog.get_logger()

_INTENTS = ".intents"
STALL_GRACE_S = 60.0     # a file that won't parse is failed only once unchanged this long
# What a file cut short fails as (render.py); an unsupported, encrypted or oversized file is
# whole and fails at once.
_MAYBE_PARTIAL = ("corrupt ", "cannot read file")


class Deferred(Exception):
    """A young file that does not parse yet: maybe its writer paused mid-file (a slow SMB copy, a
    scanner between pages). It stays in the inbox until it changes or has rested `grace_s`."""

    def __init__(self, reason: str, grace_s: float) -> None:
        super().__init__(reason)
        self.grace_s = grace_s


class Unsettled(Exception):
    """The file reached the spool but could not be recorded (the ledger's server went away, its
    disk filled): its intent stays in the journal, and `Ingestor.resume(spool_name)` finishes it.
    Trying the inbox path again would find nothing: the file is no longer there."""

    def __init__(self, spool_name: str, cause: Exception) -> None:
        super().__init__(f"{spool_name}: {first_line(cause, with_type=True)}")
        self.spool_name = spool_name


class Origin(StrEnum):
    """Where a file comes from, which decides how it is taken in."""
    INBOX = "inbox"           # the watcher's: moved in from its inbox, under the inbox's rules
    ELSEWHERE = "elsewhere"   # `ocrd submit` of a file outside the inboxes: copied, the user's stays
    UPLOAD = "upload"         # an API upload staged in the state dir: moved in, ours to drop


class _Skip(Exception):
    """The file was not taken: vanished, refused or unreadable (str is the one-line reason)."""


@dataclass(frozen=True)
class Taken:
    """A file taken in: its ledger result, and its page count or why it failed at ingest."""
    result: AddResult
    pages: int = 0
    error: str = ""


@dataclass(frozen=True)
class Submitted:
    """What `ocrd submit` did with one path."""
    path: Path
    result: AddResult | None     # None: not taken (`error` says why)
    error: str | None = None     # why it was not taken, or why its job failed at ingest
    pages: int = 0               # the job's pages, when it was queued


def spool_name(source: Path) -> str:
    # Unique, and keeps the extension (renderers and people both look at it); bounded in bytes, not
    # characters (80 CJK characters are 240 bytes), so the intent's `<name>.json` fits NAME_MAX too.
    # A name that is not UTF-8 keeps its bytes (os.fsdecode's surrogates; the ledger's FsText).
    return files.fit_name(f"{uuid.uuid4().hex[:16]}-{source.name}", 120)


def count_pages(path: Path) -> int:
    """Sniff the type and count the pages; raises InputError for bad input."""
    try:
        sniff_type(path)
        pages = page_count(path)
    except InputError:
        raise
    except Exception as exc:  # a renderer's surprise is still this file's problem, not the daemon's
        raise InputError(f"cannot read file: {first_line(exc, with_type=True)}", details=repr(exc)) from exc
    if pages < 1:
        raise InputError("no pages")
    return pages


def _submitted(path: Path, taken: Taken) -> Submitted:
    if taken.result.state == JobState.FAILED:
        return Submitted(path, taken.result, taken.error or "failed")
    return Submitted(path, taken.result, None, taken.pages)


def _submittable(top: Path, f: Path) -> bool:
    # the ignore rules of an inbox rooted at the submitted folder
    pseudo = InboxConfig(path=top, outbox=top, archive=None, failed=top)
    if is_ignored(pseudo, f):
        return False
    try:
        sniff_type(f)
        return True
    except (InputError, OSError):
        return False


class Ingestor:
    """Moves files into the spool and records them; one per thread (it uses the given Ledger)."""

    def __init__(self, config: Config, ledger: Ledger, *, on_queued: Callable[[], None] = lambda: None) -> None:
        self.config = config
        self.ledger = ledger
        self.on_queued = on_queued    # a job was queued: the daemon nudges its idle workers
        self.spool = config.spool_dir
        self.intents = self.spool / _INTENTS
        self.intents.mkdir(parents=True, exist_ok=True)

    @contextmanager
    def locked(self, *, exclusive: bool = False) -> Iterator[None]:
        """Ingesting processes (the daemon, `ocrd submit`, `ocrd retry`) share this lock per file;
        reconcile takes it exclusively, so it never mistakes another's file in flight for debris."""
        with files.flocked(self.spool / ".lock", exclusive=exclusive):
            yield

    def home_inbox(self, key: str) -> InboxConfig:
        """The inbox whose folders a job of inbox `key` uses (see Config.home_inbox)."""
        inbox = self.config.home_inbox(key)
        if inbox is None:
            raise RuntimeError("no inbox is configured")
        return inbox

    def reconcile(self) -> dict[str, int]:
        """Finish or undo what a crash interrupted (reconcile.py); counts of each outcome."""
        with self.locked(exclusive=True):
            return reconcile_spool(self)

    # -- one file -------------------------------------------------------------------------------
    def ingest(self, inbox: InboxConfig, path: Path, *, now: float | None = None) -> AddResult | None:
        """Ingest one ready file of `inbox`; None when it vanished or was refused. Raises Deferred
        for a file modified less than STALL_GRACE_S ago that does not parse (yet)."""
        self._check_not_stalled(path, time.time() if now is None else now)
        try:
            with self.locked():
                return self._take(inbox, path, Origin.INBOX).result
        except _Skip:
            return None

    def _check_not_stalled(self, path: Path, now: float) -> None:
        """A writer that pauses longer than stable_for_s must not lose its file to failed/ (it
        would finish into the moved inode, never looked at again): while the file is young, one
        that fails to parse stays where it is."""
        try:
            age = now - path.stat().st_mtime
        except OSError:
            return                      # _take reports it
        if age >= STALL_GRACE_S:
            return
        try:
            count_pages(path)
        except InputError as exc:
            if not str(exc).startswith(_MAYBE_PARTIAL):
                return
            log.info("file_deferred", path=str(path), reason=str(exc), grace_s=STALL_GRACE_S,
                     note="waiting for its writer: failed only once unchanged for the grace")
            raise Deferred(str(exc), STALL_GRACE_S - age) from None
        except OSError:
            return

    def _take(self, inbox: InboxConfig, path: Path, origin: Origin, *, force: bool = False,
              options: JobOptions = JobOptions()) -> Taken:
        copy, outside = origin == Origin.ELSEWHERE, origin != Origin.INBOX
        rel = Path(path.name) if outside else path.relative_to(inbox.path)
        st = self._stat_takeable(inbox, path, outside=outside)
        intent = Intent(inbox=inbox.key, source_path=str(path),
                        relative_path=rel.as_posix(), spool_name=spool_name(path),
                        size=st.st_size, mtime_ns=st.st_mtime_ns, copied=outside, force=force,
                        options=options.to_text() or "")
        write_intent(self.intents, intent)
        target = self.spool / intent.spool_name
        try:
            if copy:
                files.copy_file(path, target)
            else:
                files.move_file(path, target, overwrite=True)
        except FileNotFoundError:
            drop_intent(self.intents, intent)
            raise _Skip("vanished") from None
        except OSError as exc:
            # e.g. a read-only inbox: a cross-volume copy may have landed but the source stays, so
            # the copy goes (the inbox file is the one that counts)
            if not copy:
                target.unlink(missing_ok=True)
            drop_intent(self.intents, intent)
            raise self._unreadable(inbox, path, exc) from None
        try:
            return self.settle(intent)
        except Exception as exc:
            raise Unsettled(intent.spool_name, exc) from exc

    def resume(self, spool_name: str) -> None:
        """Finish an Unsettled file from its intent (as the start-up reconcile would); raises
        what still stands in the way. Nothing to do once its intent is gone."""
        path = intent_path(self.intents, spool_name)
        with self.locked():
            if path.exists():
                resume_intent(self, path)

    def _stat_takeable(self, inbox: InboxConfig, path: Path, *, outside: bool) -> os.stat_result:
        """The file's stat; raises _Skip when it vanished, may not be taken or cannot be read.
        A file from outside the inboxes (submitted, uploaded) was chosen by the user: no inbox rules."""
        try:
            why = None if outside else self._refusal(inbox, path)
            if why is None:
                return path.stat()
        except FileNotFoundError:
            raise _Skip("vanished") from None
        except OSError as exc:
            raise self._unreadable(inbox, path, exc) from None
        log.warning("file_refused", inbox=inbox.key, path=str(path), reason=why)
        raise _Skip(f"refused: {why}")

    def _refusal(self, inbox: InboxConfig, path: Path) -> str | None:
        if any(path.is_relative_to(folder) for folder in self.config.daemon_folders):
            return "the daemon's own file"   # config refuses such overlaps; this holds regardless
        return refusal_reason(inbox, path)

    def _unreadable(self, inbox: InboxConfig, path: Path, exc: OSError) -> _Skip:
        if is_permission_error(exc):
            log.error("permission_denied", inbox=inbox.key, path=str(path), error=exc.strerror,
                      fix=permission_fix(path))
            return _Skip(f"permission denied: {path} ({permission_fix(path)})")
        log.error("ingest_failed", path=str(path), reason=str(exc))
        return _Skip(f"cannot read {path}: {exc.strerror or exc}")

    def settle(self, intent: Intent) -> Taken:
        """Everything after the file reached the spool; safe to run again after a crash."""
        spool = self.spool / intent.spool_name
        inbox = self.home_inbox(intent.inbox)
        size = spool.stat().st_size
        sha = files.sha256_file(spool)
        try:
            if self.ledger.shares_files and size > SHARED_MAX_BYTES:
                raise InputError(f"too large for a shared ledger: {size / 1e9:.2f} GB, the limit is "
                                 f"{SHARED_MAX_BYTES / 1e9:.2f} GB (PostgreSQL carries each document)")
            pages = count_pages(spool)
        except InputError as exc:
            return self._fail(intent, spool, inbox, sha, size, exc)
        chosen = JobOptions.from_text(intent.options or None)   # an upload's own, over the inbox's
        result = self.ledger.add_job(inbox=intent.inbox, source_path=intent.source_path,
                                     spool_path=str(spool), sha256=sha, size_bytes=size,
                                     pages_total=pages, mode=chosen.mode or self.config.mode_for(inbox),
                                     prompt=chosen.prompt or self.config.prompt_for(inbox),
                                     options=intent.options or None,
                                     on_duplicate=OnDuplicate.PROCESS if intent.force else inbox.on_duplicate)
        if result.state == JobState.DUPLICATE:
            self._shelve_duplicate(intent, spool, inbox, result)
        elif result.state == JobState.QUEUED:
            log.info("job_queued", job_id=result.job_id, pages=pages, path=intent.source_path,
                     **({"forced": True} if intent.force else {}))
            self.on_queued()
        drop_intent(self.intents, intent)
        return Taken(result, pages=pages)

    def _fail(self, intent: Intent, spool: Path, inbox: InboxConfig, sha: str, size: int,
              exc: InputError) -> Taken:
        dest = plan_destination(inbox, Place.FAILED, Path(intent.relative_path))
        intent = intent.advance(Stage.FAILED, dest=str(dest), reason=str(exc), details=exc.details,
                                sha256=sha, size_bytes=size)
        write_intent(self.intents, intent)  # so a crash after the move still knows where the file went
        where = place_original(self.ledger, spool, dest, error=intent.reason, details=intent.details)
        return self.record_failure(intent, where or spool)

    def record_failure(self, intent: Intent, where: Path) -> Taken:
        """Record a file that failed at ingest, lying at `where` (failed/, or the spool when
        failed/ would not take it), as a failed job; safe to run again after a crash."""
        job_id = self.ledger.add_failed_job(
            inbox=intent.inbox, source_path=intent.source_path, spool_path=str(where),
            sha256=intent.sha256, size_bytes=intent.size_bytes, error=intent.reason)
        log.warning("ingest_failed", job_id=job_id, path=intent.source_path, reason=intent.reason,
                    moved_to=str(where))
        drop_intent(self.intents, intent)
        return Taken(AddResult(job_id=job_id, state=JobState.FAILED, duplicate_of=None),
                     error=intent.reason)

    def _shelve_duplicate(self, intent: Intent, spool: Path, inbox: InboxConfig,
                          result: AddResult) -> None:
        # A copy (`ocrd submit` of a file from elsewhere) or an upload is ours to drop: the user's
        # file stays where it is, and archive/ does not fill with `name (2).pdf` copies of known
        # documents.
        dest = None if intent.copied else plan_destination(inbox, Place.ARCHIVE, Path(intent.relative_path))
        intent = intent.advance(Stage.DUPLICATE, dest=str(dest) if dest else "", job_id=result.job_id)
        write_intent(self.intents, intent)
        where = place_original(self.ledger, spool, dest, job_id=result.job_id)
        log.info("job_duplicate", job_id=result.job_id, duplicate_of=result.duplicate_of,
                 path=intent.source_path, moved_to=str(where) if where else None)

    # -- ocrd submit ----------------------------------------------------------------------------
    def submit(self, paths: list[Path], *, force: bool = False) -> list[Submitted]:
        """`ocrd submit`: files in an inbox are moved in as usual, files elsewhere are copied (the
        user's file stays) and use the first inbox's folders; a folder submits its supported files.
        `force` (`submit --force`): a file whose content is a known job's is processed anyway."""
        out: list[Submitted] = []
        for given in paths:
            path = Path(given).expanduser().absolute()
            if path.is_dir() and not path.is_symlink():
                for f in sorted(p for p in path.rglob("*") if p.is_file() and not p.is_symlink()):
                    if _submittable(path, f):
                        out.append(self._submit_one(f, force))
            else:
                out.append(self._submit_one(path, force))
        return out

    def _submit_one(self, path: Path, force: bool = False) -> Submitted:
        if not path.exists() and not path.is_symlink():
            return Submitted(path, None, f"no such file: {path}")
        if not path.is_file():
            return Submitted(path, None, f"not a regular file: {path}")
        inbox = next((i for i in self.config.inboxes if path.is_relative_to(i.path)), None)
        if inbox is None and not self.config.inboxes:
            return Submitted(path, None, "no inbox is configured (the job needs an outbox)")
        try:
            with self.locked():
                taken = self._take(inbox or self.config.inboxes[0], path,
                                   Origin.ELSEWHERE if inbox is None else Origin.INBOX, force=force)
        except _Skip as exc:
            return Submitted(path, None, str(exc))
        return _submitted(path, taken)

    # -- an upload of the HTTP API --------------------------------------------------------------
    def submit_upload(self, path: Path, *, force: bool = False,
                      options: JobOptions = JobOptions()) -> Submitted:
        """An upload the API staged in the state dir: moved into the spool and recorded as `ocrd
        submit` records a file from elsewhere (its name only; its outputs in the folders and
        formats of `[api] inbox`, or the first inbox), with the mode, prompt and formats its
        uploader chose (`options`, checked by the caller). Dropped if a duplicate."""
        inbox = self.config.home_inbox(self.config.api.inbox)
        if inbox is None:
            return Submitted(path, None, "no inbox is configured (the job needs an outbox)")
        try:
            with self.locked():
                taken = self._take(inbox, path, Origin.UPLOAD, force=force, options=options)
        except _Skip as exc:
            return Submitted(path, None, str(exc))
        return _submitted(path, taken)
