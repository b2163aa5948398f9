"""Ingest: move a ready file from its inbox into the spool and record it as a job.

Crash safety (DESIGN.md invariant 1): before a file leaves its inbox, an intent sidecar naming it is
written and fsynced in `spool/.intents/`. Every later step is either idempotent (the ledger's
add_job / add_failed_job are keyed on the path where the file lies) or recorded in the sidecar before
it is taken, so `reconcile()` at the next start can finish or undo whatever a kill -9 interrupted:

  intent -> move into spool -> sha256 -> sniff + count pages -> add_job    -> drop intent
                                                             \\-> failed/   -> add_failed_job -> drop
                                                 duplicate   -> archive/   -> set_job_paths  -> drop
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import structlog

from ..ledger.states import JobState
from ..ledger.store import AddResult, Ledger
from . import files
from .config import Config, InboxConfig
from .errors import InputError
from .outbox import job_relative_path
from .render import page_count, sniff_type
from .watcher import Watcher, is_ignored, is_permission_error, permission_fix, refusal

log = structlog.get_logger()

_INTENTS = ".intents"
_CHUNK = 1024 * 1024


class _Skip(Exception):
    """The file was not taken: vanished, refused or unreadable (str is the one-line reason)."""


def sha256_file(path: Path) -> str:
    """Stream a file's sha256."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _text(path: str) -> str:
    """A file name as the ledger can store it: bytes that are not UTF-8 (a Latin-1 name from an old
    share or zip) become U+FFFD instead of lone surrogates, which SQLite refuses."""
    return os.fsencode(path).decode("utf-8", "replace")


def _spool_name(source: Path) -> str:
    # Unique, and keeps the extension (renderers and people both look at it); bounded in bytes, not
    # characters (80 CJK characters are 240 bytes), so the intent's `<name>.json` fits NAME_MAX too.
    return files.fit_name(f"{uuid.uuid4().hex[:16]}-{_text(source.name)}", 120)


def _check_file(path: Path) -> int:
    """Sniff the type and count the pages; raises InputError for bad input."""
    try:
        sniff_type(path)
        pages = page_count(path)
    except InputError:
        raise
    except Exception as exc:  # a renderer's surprise is still this file's problem, not the daemon's
        raise InputError(f"cannot read file: {type(exc).__name__}: {exc}".splitlines()[0],
                         details=repr(exc)) from exc
    if pages < 1:
        raise InputError("no pages")
    return pages


class Ingestor:
    """Moves files into the spool and records them; one per thread (it uses the given Ledger)."""

    def __init__(self, config: Config, ledger: Ledger) -> None:
        self.config = config
        self.ledger = ledger
        self.spool = config.spool_dir
        self.intents = self.spool / _INTENTS
        self.intents.mkdir(parents=True, exist_ok=True)

    # -- one file -------------------------------------------------------------------------------
    @contextmanager
    def locked(self, *, exclusive: bool = False) -> Iterator[None]:
        """Ingesting processes (the daemon, `ocrd submit`, `ocrd retry`) share this lock per file;
        reconcile takes it exclusively, so it never mistakes another's file in flight for debris."""
        fd = os.open(self.spool / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            yield
        finally:
            os.close(fd)

    def ingest(self, inbox: InboxConfig, path: Path) -> AddResult | None:
        """Ingest one ready file of `inbox`; None when it vanished or was refused."""
        try:
            with self.locked():
                return self._take(inbox, path, copy=False)
        except _Skip:
            return None

    def _take(self, inbox: InboxConfig, path: Path, *, copy: bool) -> AddResult:
        if copy:
            rel = Path(path.name)
        else:
            rel = path.relative_to(inbox.path)
            try:
                why = refusal(inbox, path)
            except FileNotFoundError:
                raise _Skip("vanished") from None
            except OSError as exc:
                raise self._unreadable(inbox, path, exc) from None
            if why is not None:
                log.warning("file_refused", inbox=inbox.key, path=str(path), reason=why)
                raise _Skip(f"refused: {why}")
        try:
            st = path.stat()
        except FileNotFoundError:
            raise _Skip("vanished") from None
        except OSError as exc:
            raise self._unreadable(inbox, path, exc) from None
        intent = {"inbox": inbox.key, "source_path": _text(str(path)),
                  "relative_path": _text(rel.as_posix()), "spool_name": _spool_name(path),
                  "size": st.st_size, "mtime_ns": st.st_mtime_ns, "copied": copy}
        self._write_intent(intent)
        target = self.spool / intent["spool_name"]
        try:
            if copy:
                files.copy_file(path, target)
            else:
                files.move_file(path, target, overwrite=True)
        except FileNotFoundError:
            self._drop_intent(intent)
            raise _Skip("vanished") from None
        except OSError as exc:
            # e.g. a read-only inbox: a cross-volume copy may have landed but the source stays, so
            # the copy goes (the inbox file is the one that counts)
            if not copy:
                target.unlink(missing_ok=True)
            self._drop_intent(intent)
            raise self._unreadable(inbox, path, exc) from None
        return self._settle(intent)

    def _unreadable(self, inbox: InboxConfig, path: Path, exc: OSError) -> _Skip:
        if is_permission_error(exc):
            log.error("permission_denied", inbox=inbox.key, path=str(path), error=exc.strerror,
                      fix=permission_fix(path))
            return _Skip(f"permission denied: {path} ({permission_fix(path)})")
        log.error("ingest_failed", path=str(path), reason=str(exc))
        return _Skip(f"cannot read {path}: {exc.strerror or exc}")

    def _settle(self, intent: dict[str, Any]) -> AddResult:
        """Everything after the file reached the spool; safe to run again after a crash."""
        spool = self.spool / intent["spool_name"]
        inbox = self._inbox(intent["inbox"])
        size = spool.stat().st_size
        sha = sha256_file(spool)
        try:
            pages = _check_file(spool)
        except InputError as exc:
            return self._fail(intent, spool, inbox, sha, size, str(exc), exc.details)
        result = self.ledger.add_job(inbox=intent["inbox"], source_path=intent["source_path"],
                                     spool_path=str(spool), sha256=sha, size_bytes=size,
                                     pages_total=pages, on_duplicate=inbox.on_duplicate)
        if result.state == JobState.DUPLICATE:
            self._shelve_duplicate(intent, spool, inbox, result)
        elif result.state == JobState.QUEUED:
            log.info("job_queued", job_id=result.job_id, pages=pages, path=intent["source_path"])
        self._drop_intent(intent)
        return result

    def _fail(self, intent: dict[str, Any], spool: Path, inbox: InboxConfig, sha: str, size: int,
              reason: str, details: str) -> AddResult:
        dest = files.unique_path(inbox.failed / intent["relative_path"])
        intent.update(stage="failed", dest=str(dest), reason=reason, details=details, sha256=sha,
                      size_bytes=size)
        self._write_intent(intent)  # so a crash after the move still knows where the file went
        return self._record_failure(intent, self._move_out(spool, dest))

    def _move_out(self, spool: Path, dest: Path) -> Path:
        """Move a settled original out of the spool. When the folder cannot take it (unwritable,
        full, a file where a folder should be) it stays in the spool: the ledger records it there
        and the next start's reconcile moves it on. One bad folder must not stop the ingest."""
        try:
            return files.move_file(spool, dest, overwrite=True)
        except OSError as exc:
            log.error("original_not_moved", path=str(spool), dest=str(dest), error=str(exc),
                      note="kept in the spool until the next start")
            return spool

    def _record_failure(self, intent: dict[str, Any], moved: Path) -> AddResult:
        if not moved.is_relative_to(self.spool):    # no stray .error.txt in the spool
            files.write_error_file(moved, intent["reason"], intent.get("details", ""))
        job_id = self.ledger.add_failed_job(
            inbox=intent["inbox"], source_path=intent["source_path"], spool_path=str(moved),
            sha256=intent["sha256"], size_bytes=intent["size_bytes"], error=intent["reason"])
        log.warning("ingest_failed", job_id=job_id, path=intent["source_path"], reason=intent["reason"],
                    moved_to=str(moved))
        self._drop_intent(intent)
        return AddResult(job_id=job_id, state=JobState.FAILED, duplicate_of=None)

    def _shelve_duplicate(self, intent: dict[str, Any], spool: Path, inbox: InboxConfig,
                          result: AddResult) -> None:
        dest = files.unique_path(inbox.archive / intent["relative_path"]) if inbox.archive else None
        intent.update(stage="duplicate", dest=str(dest) if dest else "", job_id=result.job_id)
        self._write_intent(intent)
        if dest is None:
            spool.unlink()
            where = ""
        else:
            where = str(self._move_out(spool, dest))
        self.ledger.set_job_paths(result.job_id, spool_path=where)
        log.info("job_duplicate", job_id=result.job_id, duplicate_of=result.duplicate_of,
                 path=intent["source_path"], moved_to=where or None)

    def _inbox(self, key: str) -> InboxConfig:
        inbox = self.config.home_inbox(key)
        if inbox is None:
            raise RuntimeError("no inbox is configured")
        return inbox

    # -- intent sidecars ------------------------------------------------------------------------
    def _intent_path(self, intent: dict[str, Any]) -> Path:
        return self.intents / (intent["spool_name"] + ".json")

    def _write_intent(self, intent: dict[str, Any]) -> None:
        files.atomic_write_text(self._intent_path(intent), json.dumps(intent))

    def _drop_intent(self, intent: dict[str, Any]) -> None:
        self._intent_path(intent).unlink(missing_ok=True)

    # -- start-up reconciliation ----------------------------------------------------------------
    def reconcile(self) -> dict[str, int]:
        """Finish or undo what a crash interrupted, so the spool holds only files the ledger knows."""
        with self.locked(exclusive=True):
            return self._reconcile()

    def _reconcile(self) -> dict[str, int]:
        counts = dict.fromkeys(("resumed", "dropped_intents", "removed_copies", "failed_moved",
                                "done_archived", "orphans_ingested", "temp_removed"), 0)
        for path in sorted(self.intents.iterdir()):
            if path.name.startswith("."):          # a half-written intent's temp file
                path.unlink(missing_ok=True)
                continue
            try:
                intent = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                path.unlink(missing_ok=True)       # atomic_write_text: never half written
                continue
            try:
                counts[self._resume(intent)] += 1
            except Exception:
                log.exception("reconcile_intent_failed", intent=intent)
        for path in sorted(self.spool.iterdir()):
            if path.name.startswith("."):
                if path.is_file() and path.name.startswith(".ocrd-"):   # an interrupted copy
                    path.unlink(missing_ok=True)
                    counts["temp_removed"] += 1
                continue
            if not path.is_file() or (self.intents / (path.name + ".json")).exists():
                continue  # an intent that could not be resumed keeps its file for the next start
            try:
                outcome = self._reconcile_spool_file(path)
            except Exception:
                log.exception("reconcile_file_failed", path=str(path))
                continue
            if outcome:
                counts[outcome] += 1
        log.info("spool_reconciled", **counts)
        return counts

    def _resume(self, intent: dict[str, Any]) -> str:
        spool = self.spool / intent["spool_name"]
        source = Path(intent["source_path"])
        stage, dest = intent.get("stage"), Path(intent["dest"]) if intent.get("dest") else None
        if stage == "retry":
            # `ocrd retry` died around its move: record where the file is; the spool pass below then
            # returns a still-failed job's original to failed/.
            if spool.exists():
                self.ledger.set_job_paths(intent["job_id"], spool_path=str(spool))
            self._drop_intent(intent)
            return "resumed"
        if spool.exists():
            if dest is not None and dest.exists() and dest.stat().st_size == spool.stat().st_size:
                spool.unlink()                     # crashed between a cross-volume copy and its unlink
                return self._resume(intent)
            if (not stage and not intent.get("copied") and self.ledger.job_by_spool_path(str(spool)) is None
                    and _same_content(source, spool)):
                spool.unlink()                     # crashed mid cross-volume move: the inbox copy wins
                self._drop_intent(intent)
                return "removed_copies"
            self._settle(intent)
            return "resumed"
        if stage == "failed" and dest is not None and dest.exists():
            self._record_failure(intent, dest)
            return "resumed"
        if stage == "duplicate":
            if dest is None or dest.exists():
                self.ledger.set_job_paths(intent["job_id"], spool_path=str(dest) if dest else "")
            self._drop_intent(intent)
            return "resumed"
        # The file never reached the spool (the watcher finds it in the inbox again), or it did and
        # the ingest finished; either way the ledger needs nothing.
        self._drop_intent(intent)
        return "dropped_intents"

    def _reconcile_spool_file(self, path: Path) -> str | None:
        job = self.ledger.job_by_spool_path(str(path))
        if job is None:
            # No intent and no job: cannot happen by our own steps; keep the file by ingesting it.
            inbox = self._inbox("")
            intent = {"inbox": inbox.key, "source_path": str(path), "relative_path": path.name,
                      "spool_name": path.name, "size": path.stat().st_size, "mtime_ns": 0,
                      "copied": True}
            self._write_intent(intent)
            self._settle(intent)
            return "orphans_ingested"
        state = job["state"]
        if state in (JobState.QUEUED, JobState.RUNNING):
            return None
        inbox = self._inbox(job["inbox"])
        rel = job_relative_path(self.config, job)
        if state == JobState.FAILED:
            moved = files.move_file(path, inbox.failed / rel)
            self.ledger.set_job_paths(job["id"], spool_path=str(moved))
            files.write_error_file(moved, job["error"] or "failed")
            return "failed_moved"
        if inbox.archive is None:                  # done or duplicate
            path.unlink()
            self.ledger.set_job_paths(job["id"], spool_path="")
        else:
            moved = files.move_file(path, inbox.archive / rel)
            self.ledger.set_job_paths(job["id"], spool_path=str(moved))
        return "done_archived"


def _same_content(a: Path, b: Path) -> bool:
    try:
        return a.stat().st_size == b.stat().st_size and sha256_file(a) == sha256_file(b)
    except OSError:
        return False


class IngestService:
    """A thread that owns a Watcher and an Ingestor: reconcile once, then watch and ingest."""

    def __init__(self, config: Config, *, rescan_s: float = 60.0, empty_grace_s: float = 60.0,
                 tick_s: float = 0.1) -> None:
        self.config = config
        self.rescan_s, self.empty_grace_s, self.tick_s = rescan_s, empty_grace_s, tick_s
        self.reconciled = threading.Event()   # set once the start-up reconcile ran (tests wait on it)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._new_config: Config | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="ocrd-ingest", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop after the file in hand; joins the thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.error("ingest_stop_timeout", timeout_s=timeout)
            self._thread = None

    def reload(self, config: Config) -> None:
        """Apply a new config (SIGHUP) on the ingest thread at its next tick."""
        with self._lock:
            self._new_config = config

    def _run(self) -> None:
        ledger = self._open_ledger()
        if ledger is None:
            return
        watcher = Watcher(self.config.inboxes, rescan_s=self.rescan_s, empty_grace_s=self.empty_grace_s)
        try:
            ingestor = Ingestor(self.config, ledger)
            try:
                ingestor.reconcile()
            except Exception:
                log.exception("reconcile_failed")
            self.reconciled.set()
            watcher.start()
            while not self._stop.is_set():
                with self._lock:
                    new, self._new_config = self._new_config, None
                if new is not None:
                    self.config = ingestor.config = new
                    watcher.set_inboxes(new.inboxes)
                    log.info("ingest_reloaded", inboxes=len(new.inboxes))
                for inbox, path in watcher.tick():
                    if self._stop.is_set():
                        break  # the rest stay in the inbox; the next start finds them
                    try:
                        ingestor.ingest(inbox, path)
                    except Exception:
                        log.exception("ingest_error", path=str(path))
                self._stop.wait(self.tick_s)
        except Exception:
            log.exception("ingest_service_crashed")
        finally:
            watcher.stop()
            ledger.close()

    def _open_ledger(self) -> Ledger | None:
        while not self._stop.is_set():
            try:
                return Ledger(self.config.db_url)
            except Exception:
                log.exception("ingest_ledger_unavailable")
                self._stop.wait(5.0)
        return None


def submit_paths(config: Config, ledger: Ledger, paths: list[Path]
                 ) -> list[tuple[Path, AddResult | None, str | None]]:
    """`ocrd submit`: files in an inbox are moved in as usual, files elsewhere are copied (the
    user's file stays); a folder submits its supported files. Returns (path, result, error line)."""
    ingestor = Ingestor(config, ledger)
    out: list[tuple[Path, AddResult | None, str | None]] = []
    for given in paths:
        path = Path(given).expanduser().absolute()
        if path.is_dir() and not path.is_symlink():
            for f in sorted(p for p in path.rglob("*") if p.is_file() and not p.is_symlink()):
                if _submittable(path, f):
                    out.append(_submit_one(config, ingestor, f))
        else:
            out.append(_submit_one(config, ingestor, path))
    return out


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


def _submit_one(config: Config, ingestor: Ingestor, path: Path
                ) -> tuple[Path, AddResult | None, str | None]:
    if not path.exists() and not path.is_symlink():
        return path, None, f"no such file: {path}"
    if not path.is_file():
        return path, None, f"not a regular file: {path}"
    inbox = next((i for i in config.inboxes if path.is_relative_to(i.path)), None)
    if inbox is None and not config.inboxes:
        return path, None, "no inbox is configured (the job needs an outbox)"
    try:
        with ingestor.locked():
            result = ingestor._take(inbox or config.inboxes[0], path, copy=inbox is None)
    except _Skip as exc:
        return path, None, str(exc)
    if result.state == JobState.FAILED:
        job = ingestor.ledger.job(result.job_id)
        return path, result, (job or {}).get("error") or "failed"
    return path, result, None


def retry_jobs(config: Config, ledger: Ledger, job_ids: list[int] | None) -> list[tuple[int, str]]:
    """`ocrd retry`: bring failed jobs' originals back into the spool and requeue them (None: all
    failed jobs). Jobs that failed at ingest are checked again; still broken -> back to failed/."""
    ingestor = Ingestor(config, ledger)
    ids = job_ids if job_ids is not None else [j["id"] for j in ledger.jobs_in_states([JobState.FAILED])]
    out = []
    for job_id in ids:
        with ingestor.locked():
            out.append((job_id, _retry_one(ingestor, job_id)))
    return out


def _retry_one(ingestor: Ingestor, job_id: int) -> str:
    ledger, config = ingestor.ledger, ingestor.config
    job = ledger.job(job_id)
    if job is None:
        return "no such job"
    if job["state"] != JobState.FAILED:
        return f"not failed (it is {job['state']})"
    original = Path(job["spool_path"]) if job["spool_path"] else None
    if original is None or not original.is_file():
        return f"original is missing ({job['spool_path'] or 'deleted'})"
    if not original.is_relative_to(config.spool_dir):
        # The intent lets reconcile put it back into failed/ if we die before the ledger knows.
        intent = {"inbox": job["inbox"], "source_path": job["source_path"], "relative_path": "",
                  "spool_name": _spool_name(original), "size": original.stat().st_size, "mtime_ns": 0,
                  "copied": True, "stage": "retry", "job_id": job_id}
        ingestor._write_intent(intent)
        target = files.move_file(original, ingestor.spool / intent["spool_name"], overwrite=True)
        ledger.set_job_paths(job_id, spool_path=str(target))
        ingestor._drop_intent(intent)
        files.error_file_for(original).unlink(missing_ok=True)
        original = target
    ledger.retry_jobs([job_id])
    if job["pages_total"]:
        log.info("job_retried", job_id=job_id)
        return "requeued (failed pages only)"
    size = original.stat().st_size
    sha = sha256_file(original)
    try:
        pages = _check_file(original)
    except InputError as exc:
        inbox = ingestor._inbox(job["inbox"])
        rel = job_relative_path(config, job)
        moved = files.move_file(original, inbox.failed / rel)
        ledger.set_job_paths(job_id, spool_path=str(moved))
        files.write_error_file(moved, str(exc), exc.details)
        log.warning("retry_failed", job_id=job_id, reason=str(exc), moved_to=str(moved))
        return f"still failing: {exc}"
    if not ledger.reopen_job(job_id, spool_path=str(original), sha256=sha, size_bytes=size,
                             pages_total=pages):
        return "not reopened (its state changed)"
    log.info("job_retried", job_id=job_id, pages=pages)
    return f"requeued ({pages} pages)"
