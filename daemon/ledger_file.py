"""The ledger file's safety: opened only once checked (`open_ledger`: a damaged or too new file is
LedgerUnreadable, `ocrd run` exits 78), backed up while the daemon runs (`[ledger] backup_every`,
`backup_keep`), and what `ocrd ledger backup` and `ocrd ledger restore` do.

A backup is SQLite's online backup API reading one committed moment of the file
(ledger/integrity.py): in WAL mode the daemon's writers never wait for it, and the daemon makes
its backups on a thread of its own, so the supervisor's tick never waits either. Every copy is
quick_checked once written; a copy that fails means the ledger itself may be damaged: it is
checked next and, if so, the daemon stops (exit 78) as at any other sign of damage.

The start check is quick_check with a time limit (START_CHECK_S). bench/ledger_check.py, a ledger
of a million OCR pages (4 GB, ~971,000 database pages): 2.4-2.8 s with the file in the page cache,
65-107 s cold from this VM's disk (after a reboot), too long to hold up every start. So what it
can't finish in time, the backup thread finishes in the background before its first backup.
"""

from __future__ import annotations

import os
import re
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Callable

import structlog
from sqlalchemy.exc import DatabaseError, OperationalError

from ocrd.ledger import JobState, Ledger, LedgerCorrupt
from ocrd.ledger.integrity import CheckTimedOut, backup_file, check_file, open_read_only
from ocrd.ledger.migrations import SchemaTooNew

from .config import Config
from .errors import first_line
from .files import fsync_dir, make_private_dir
from .lockfile import DaemonLock

log = structlog.get_logger()

EXIT_LEDGER_UNREADABLE = 78        # EX_CONFIG: the systemd unit's RestartPreventExitStatus

START_CHECK_S = 10.0               # past this the start check goes on in the background
RETRY_S = 600.0                    # a backup that failed (a full disk) is tried again after this
_NAME = re.compile(r"^ledger-(\d{8}T\d{6}Z)\.db$")
_STAMP = "%Y%m%dT%H%M%SZ"


class LedgerUnreadable(RuntimeError):
    """The ledger file is damaged or was written by a newer ocrd: one line."""


def open_ledger(config: Config, **kwargs: Any) -> tuple[Ledger, bool]:
    """The daemon's ledger, checked before anything writes to it (check_at_start), or
    LedgerUnreadable naming the file and what to do; and whether the check is done (False: it
    ran out of time and goes on in the background). A server that is down (PostgreSQL) or a
    lock stays an OperationalError: that one a restart may cure."""
    try:
        checked = check_at_start(config)
        return Ledger(config.db_url, host=config.host_name, **kwargs), checked
    except LedgerCorrupt as exc:
        raise LedgerUnreadable(str(exc)) from None
    except SchemaTooNew as exc:
        raise LedgerUnreadable(f"the ledger {config.ledger_path} is from a newer ocrd ({exc}): "
                               "upgrade ocrd, or move the file aside to start a new ledger") from None
    except DatabaseError as exc:
        if isinstance(exc, OperationalError):
            raise
        raise LedgerUnreadable(f"the ledger {config.ledger_path} cannot be read ({first_line(exc)}): "
                               "run `ocrd ledger check`; move the file aside to start a new ledger") from None


class BackupRefused(Exception):
    """`ocrd ledger backup` / `restore` can't do it: one line saying why and what to do."""


def check_at_start(config: Config, timeout_s: float = START_CHECK_S) -> bool:
    """quick_check the SQLite ledger before anything writes to it: LedgerCorrupt when damaged.
    False when it ran out of time (BackupService(check_first=True) finishes it); True when done
    (or there is nothing to check: no file yet, a PostgreSQL ledger)."""
    if config.ledger_url or not config.ledger_path.exists():
        return True
    try:
        problems = check_file(config.ledger_path, quick=True, timeout_s=timeout_s)
    except CheckTimedOut:
        log.info("ledger_check_continues", timeout_s=timeout_s,
                 note="a big ledger: the check finishes in the background")
        return False
    if problems:
        raise LedgerCorrupt(str(config.ledger_path), problems[0])
    return True


def backup_name(now: datetime) -> str:
    return f"ledger-{now.astimezone(UTC).strftime(_STAMP)}.db"


def list_backups(folder: Path) -> list[Path]:
    """The daemon's backups in `folder`, oldest first (their names sort by time)."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if _NAME.match(p.name))


def last_backup_at(folder: Path) -> datetime | None:
    backups = list_backups(folder)
    if not backups:
        return None
    return datetime.strptime(_NAME.match(backups[-1].name).group(1), _STAMP).replace(tzinfo=UTC)


def make_backup(config: Config, dest: Path | None = None, *, now: datetime | None = None) -> Path:
    """Back the SQLite ledger up to `dest` (default: <state_dir>/backups/ledger-<UTC stamp>.db,
    the folder 0700) and quick_check the copy; a copy that fails its check is removed and raises
    LedgerCorrupt when the ledger itself fails it too (else BackupRefused: the copy's disk)."""
    if config.ledger_url:
        raise BackupRefused("the ledger is on PostgreSQL: back it up with pg_dump "
                            "(e.g. pg_dump -Fc -f ocrd.dump ocrd; README: Backups)")
    if not config.ledger_path.exists():
        raise BackupRefused(f"no ledger yet at {config.ledger_path}: nothing to back up")
    if dest is None:
        dest = make_private_dir(config.backup_dir) / backup_name(now or datetime.now(UTC))
    backup_file(config.ledger_path, dest)
    problems = check_file(dest, quick=True)
    if problems:
        dest.unlink()
        again = check_file(config.ledger_path, quick=True)
        if again:
            raise LedgerCorrupt(str(config.ledger_path), again[0])
        raise BackupRefused(f"the copy at {dest} failed its check ({problems[0]}): its disk?")
    return dest


def prune_backups(folder: Path, keep: int) -> list[Path]:
    """Remove all but the newest `keep` backups; returns the removed ones."""
    old = list_backups(folder)[:-keep]
    for path in old:
        path.unlink(missing_ok=True)
    return old


VANISHED = ("restored from a backup older than this document's end: its original had left the "
            "spool (its output is in the outbox, its original in archive/ or failed/)")


def restore_backup(config: Config, backup: Path, *, now: datetime | None = None) -> tuple[Path | None, list[int]]:
    """Put `backup` back as the ledger: refused while the daemon runs (its lock is held for the
    whole restore, so none starts meanwhile) and when the backup fails integrity_check. The
    current file (and its -wal) is kept aside as ledger.db.replaced-<stamp>. The next start
    queues again every spool file the backup does not know (reconcile.py: a lost ledger's
    path). Returns the file kept aside (None: there was none) and the jobs failed as VANISHED."""
    if config.ledger_url:
        raise BackupRefused("the ledger is on PostgreSQL: restore it with pg_restore (README: Backups)")
    _check_backup(backup)
    make_private_dir(config.state_dir)
    lock = DaemonLock(config.lock_path)
    lock.acquire()   # AlreadyRunning: the daemon runs
    try:
        aside = _set_aside(config.ledger_path, now or datetime.now(UTC))
        backup_file(backup, config.ledger_path)
        return aside, _fail_vanished(config)
    finally:
        lock.release()


def _fail_vanished(config: Config) -> list[int]:
    """Jobs the backup has queued or running whose original left the spool since (they ended
    after the backup) fail with VANISHED, instead of being tried again and failing for a file
    that is not there."""
    with Ledger(config.db_url, host=config.host_name) as ledger:
        gone = [job.id for job in ledger.jobs_in_states([JobState.QUEUED, JobState.RUNNING])
                if job.spool_path and not Path(job.spool_path).exists()]
        for job_id in gone:
            ledger.fail_job(job_id, VANISHED)
    return gone


def _check_backup(backup: Path) -> None:
    """The backup is a sound ocrd ledger, or BackupRefused says what it is instead."""
    if not backup.is_file():
        raise BackupRefused(f"no such file: {backup}")
    problems = check_file(backup)
    if problems:
        raise BackupRefused(f"the backup {backup} is damaged too ({problems[0]}): pick an older one")
    con = open_read_only(backup)
    try:
        known = con.execute("SELECT 1 FROM sqlite_master WHERE name = 'schema_version'").fetchone()
    finally:
        con.close()
    if not known:
        raise BackupRefused(f"{backup} is an SQLite file but not an ocrd ledger")


def _set_aside(ledger: Path, now: datetime) -> Path | None:
    """Rename the current ledger (and its -wal: commits not yet checkpointed) out of the way."""
    if not ledger.exists():
        return None
    aside = ledger.with_name(f"{ledger.name}.replaced-{now.astimezone(UTC).strftime(_STAMP)}")
    os.replace(ledger, aside)
    wal = ledger.with_name(ledger.name + "-wal")
    if wal.exists() and wal.stat().st_size:
        os.replace(wal, aside.with_name(aside.name + "-wal"))
    wal.unlink(missing_ok=True)
    ledger.with_name(ledger.name + "-shm").unlink(missing_ok=True)   # rebuilt from the WAL
    fsync_dir(ledger.parent)
    return aside


class BackupService:
    """A thread that finishes a start check that ran out of time, then backs the ledger up
    whenever the newest backup is `backup_every` old (so a daemon restarted often still makes one
    a day) and prunes to `backup_keep`. Damage found is told to `on_corrupt`; then it ends."""

    def __init__(self, config: Config, on_corrupt: Callable[[LedgerCorrupt], None], *,
                 check_first: bool = False) -> None:
        self.config, self.on_corrupt, self.check_first = config, on_corrupt, check_first
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self.config.ledger_url:
            return     # PostgreSQL: pg_dump's job (README: Backups)
        self._thread = threading.Thread(target=self._run, name="ocrd-backups", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """A backup in progress is left to the process's exit (its temp file is removed at the next)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def reload(self, config: Config) -> None:
        self.config = config     # read at the next wait

    def _run(self) -> None:
        for part in self.config.backup_dir.glob(".ledger-*.part"):   # a backup cut off by a kill
            part.unlink(missing_ok=True)
        try:
            if self.check_first:
                self._finish_start_check()
            while not self._stop.is_set():
                self._stop.wait(self.tick())
        except LedgerCorrupt as exc:
            self.on_corrupt(exc)
        except Exception:   # a bug here must not take the daemon down: no more backups, said once
            log.exception("ledger_backups_stopped")

    def _finish_start_check(self) -> None:
        problems = check_file(self.config.ledger_path, quick=True)
        if problems:
            raise LedgerCorrupt(str(self.config.ledger_path), problems[0])
        log.info("ledger_check_ok", ledger=str(self.config.ledger_path))

    def tick(self, now: datetime | None = None) -> float:
        """Make a backup if one is due; seconds until the next is."""
        every = self.config.backup_every_s
        if not every:
            return 60.0                  # off: look again after a reload
        now = now or datetime.now(UTC)
        last = last_backup_at(self.config.backup_dir)
        if last is not None and (now - last).total_seconds() < every:
            return min(every - (now - last).total_seconds(), every)   # clamped: a clock set back
        try:
            path = make_backup(self.config, now=now)
        except (OSError, BackupRefused) as exc:
            log.error("ledger_backup_failed", error=str(exc), retry_in_s=min(RETRY_S, every))
            return min(RETRY_S, every)
        removed = prune_backups(self.config.backup_dir, self.config.backup_keep)
        log.info("ledger_backed_up", path=str(path), bytes=path.stat().st_size, removed=len(removed))
        return every
