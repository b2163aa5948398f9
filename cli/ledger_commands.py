"""`ocrd ledger check | backup PATH | restore PATH`: the SQLite ledger file's health and backups.

The work is done in ocrd.daemon.ledger_file (the daemon's own backups use the same functions);
these commands say what happened in one line each. The group's helpers (_load, _fail) live in
main.py, which registers this group: they are imported when a command runs, not at import.
"""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import click

from . import _format as fmt

_STOP_FIRST = "stop it first (systemctl --user stop ocrd; on a Mac: launchctl bootout gui/$UID/com.ocrd.daemon)"


@click.group("ledger")
def ledger() -> None:
    """Check, back up and restore the ledger (a SQLite file).

    All three work while the daemon runs, except restore. On PostgreSQL use its own tools
    (pg_dump, pg_restore).
    """


@ledger.command()
@click.pass_context
def check(ctx: click.Context) -> None:
    """Check the ledger file for damage (SQLite's integrity_check).

    Prints "ok", or what is wrong (exit 1). Only reads: safe while the daemon runs.
    """
    from ocrd.ledger.integrity import check_file

    from .main import _fail, _load
    config = _load(ctx)
    if config.ledger_url:
        _fail(ctx, "the ledger is on PostgreSQL, which checks its own pages (its amcheck extension)")
    if not config.ledger_path.exists():
        click.echo(f"no ledger yet at {config.ledger_path}: nothing to check")
        return
    try:
        problems = check_file(config.ledger_path)
    except (OSError, sqlite3.Error) as exc:
        _fail(ctx, f"cannot check {config.ledger_path}: {exc}")
    if not problems:
        click.echo("ok")
        return
    click.echo("\n".join(problems))
    _fail(ctx, f"the ledger {config.ledger_path} is damaged: restore a backup (`ocrd ledger restore "
               "PATH`, README: When the ledger is damaged)")


@ledger.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.pass_context
def backup(ctx: click.Context, path: Path) -> None:
    """Copy the ledger to PATH, consistent while the daemon runs, and check the copy.

    Uses SQLite's online backup API (a `cp` of ledger.db while the daemon runs may miss commits
    still in ledger.db-wal). PATH may be a folder: the copy is then ledger-<UTC time>.db in it.
    An existing file is not overwritten. On PostgreSQL use pg_dump.
    """
    from ocrd.daemon.ledger_file import BackupRefused, backup_name, make_backup
    from ocrd.ledger import LedgerCorrupt

    from .main import _fail, _load
    config = _load(ctx)
    dest = path / backup_name(datetime.now(UTC)) if path.is_dir() else path
    if dest.exists():
        _fail(ctx, f"{dest} exists: give a new name or a folder")
    try:
        made = make_backup(config, dest.absolute())
    except (BackupRefused, LedgerCorrupt) as exc:
        _fail(ctx, str(exc))
    except (OSError, sqlite3.Error) as exc:
        _fail(ctx, f"cannot back up to {dest}: {exc}")
    click.echo(f"backed up {config.ledger_path} to {made} ({fmt.size(made.stat().st_size)}, checked)")


@ledger.command()
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.pass_context
def restore(ctx: click.Context, path: Path) -> None:
    """Put a backup back as the ledger (the daemon must be stopped).

    The backup is checked first. The current ledger is kept aside as ledger.db.replaced-<time>.
    Documents newer than the backup whose files are still in the spool are queued again, under
    their own names, when the daemon starts; those the backup has unfinished that ended after
    it (their originals left the spool) are marked failed.
    """
    from ocrd.daemon.ledger_file import BackupRefused, restore_backup
    from ocrd.daemon.lockfile import AlreadyRunning

    from .main import _fail, _load
    config = _load(ctx)
    try:
        aside, vanished = restore_backup(config, path.absolute())
    except AlreadyRunning as exc:
        _fail(ctx, f"{exc}: {_STOP_FIRST}")
    except BackupRefused as exc:
        _fail(ctx, str(exc))
    except (OSError, sqlite3.Error) as exc:
        _fail(ctx, f"cannot restore {path}: {exc}")
    kept = f"; the ledger it replaced is kept as {aside}" if aside else ""
    click.echo(f"restored {path} as {config.ledger_path}{kept}. Start ocrd: documents the backup "
               "does not know are queued again from the spool")
    if vanished:
        click.echo(f"{len(vanished)} job(s) the backup has unfinished ended after it (their originals "
                   f"left the spool): marked failed, see `ocrd show`: {', '.join(map(str, vanished))}")
