"""The SQLite ledger file's own health: SQLite's integrity checks, and copies of the file made
through SQLite's online backup API.

Both work on the file through Python's sqlite3 alone, opened read-only (no SQLAlchemy engine, no
migrations): a check or a backup must never write to the file it looks at, which may be damaged,
or the live ledger of a running daemon. In WAL mode a reader neither waits for the daemon's
writers nor holds them up, and sees one committed moment of the file: so a backup taken while the
daemon runs is consistent, which a `cp` of ledger.db (its last commits still in ledger.db-wal) is not.
"""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path
from urllib.parse import quote

MAX_PROBLEMS = 20          # SQLite's list of what is wrong is cut here: the first lines say enough
_SQLITE_CORRUPT, _SQLITE_NOTADB = 11, 26


class CheckTimedOut(Exception):
    """A check that was given a time limit ran past it: it says nothing about the file."""


def is_corruption(exc: BaseException) -> bool:
    """SQLite says the file is damaged: SQLITE_CORRUPT ("database disk image is malformed",
    "malformed database schema") or SQLITE_NOTADB ("file is not a database")."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (_SQLITE_CORRUPT, _SQLITE_NOTADB)
    message = str(exc).lower()
    return "malformed" in message or "file is not a database" in message


def open_read_only(path: Path) -> sqlite3.Connection:
    """A read-only connection to a ledger file (FileNotFoundError when there is none: sqlite3
    would make an empty one)."""
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    return sqlite3.connect(f"file:{quote(str(path.absolute()))}?mode=ro", uri=True, timeout=30,
                           isolation_level=None, check_same_thread=False)


def check_file(path: Path, *, quick: bool = False, timeout_s: float | None = None) -> list[str]:
    """What SQLite finds wrong with the file; [] when it is sound. `quick`: PRAGMA quick_check
    (every page and b-tree, not whether indexes match their tables), else integrity_check.
    `timeout_s`: give up after that long (CheckTimedOut). A file too damaged to be checked at
    all (not a database, a malformed schema) is one problem, its error."""
    con = open_read_only(path)
    try:
        if timeout_s is not None:
            give_up_at = time.monotonic() + timeout_s
            con.set_progress_handler(lambda: time.monotonic() > give_up_at, 10_000)
        pragma = "quick_check" if quick else "integrity_check"
        try:
            rows = [r[0] for r in con.execute(f"PRAGMA {pragma}({MAX_PROBLEMS})")]
        except sqlite3.OperationalError as exc:
            if timeout_s is not None and "interrupted" in str(exc):
                raise CheckTimedOut(f"{pragma} of {path} ran past {timeout_s:g} s") from None
            raise
        except sqlite3.DatabaseError as exc:
            if is_corruption(exc):
                return [str(exc)]
            raise
    finally:
        con.close()
    if rows == ["ok"]:
        return []
    # a row may hold several lines, the first naming the schema ("*** in database main ***")
    return [line for row in rows for line in str(row).splitlines() if not line.startswith("***")]


def backup_file(source: Path, dest: Path) -> None:
    """A consistent copy of the ledger at `source` in `dest` (0600; replaced if there), made with
    SQLite's online backup API from one read transaction: the daemon writes on meanwhile. Written
    to a temp file, synced and renamed, so `dest` is never a half copy. The copy is in rollback
    journal mode: one self-contained file, no -wal beside it."""
    tmp = dest.with_name(f".{dest.name}.part")
    tmp.unlink(missing_ok=True)
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    try:
        src = open_read_only(source)
        try:
            copy = sqlite3.connect(tmp, isolation_level=None)
            try:
                # one step (pages=-1): a backup in steps starts again whenever another process
                # commits between them, and the daemon's heartbeats commit every few seconds
                src.backup(copy)
                copy.execute("PRAGMA journal_mode = DELETE")
            finally:
                copy.close()
        finally:
            src.close()
        _fsync(tmp)
        os.replace(tmp, dest)
        _fsync(dest.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
