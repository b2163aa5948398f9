"""A damaged or full SQLite ledger file (issue 22), on real files: LedgerCorrupt naming the file
(and, once met, never touching the file again), LedgerFull on a disk that is really full, and
ledger/integrity.py's checks and online backups."""

from __future__ import annotations

import hashlib
import shutil
import sqlite3
from pathlib import Path

import pytest

from helpers import damage_table
from ocrd.ledger import LedgerCorrupt, LedgerFull, LedgerUnreachable
from ocrd.ledger.integrity import CheckTimedOut, backup_file, check_file
from ocrd.ledger.store import Ledger


def make(path: Path, jobs: int = 5, pages: int = 2) -> Path:
    with Ledger(f"sqlite:///{path}") as ledger:
        for n in range(jobs):
            ledger.add_job(inbox="/in", source_path=f"/in/{n}.pdf", spool_path=f"/spool/{n}.pdf",
                           sha256=f"sha-{n}", size_bytes=10, pages_total=pages)
    return path


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_bad_page_is_ledger_corrupt_and_then_the_file_is_never_touched_again(tmp_path: Path) -> None:
    db = make(tmp_path / "ledger.db")
    damage_table(db, "jobs")
    told: list[LedgerCorrupt] = []
    with Ledger(f"sqlite:///{db}", on_corrupt=told.append) as ledger:   # opens: the schema is fine
        with pytest.raises(LedgerCorrupt) as caught:
            ledger.list_jobs()
        assert str(caught.value).startswith(f"the ledger {db} is damaged (database disk image is malformed)")
        assert caught.value.path == str(db) and told == [caught.value]
        before = digest(db)
        with pytest.raises(LedgerCorrupt):      # meta is on a sound page: the write would succeed
            ledger.set_meta("key", "value")
        with pytest.raises(LedgerCorrupt):
            ledger.get_meta("key")
        assert len(told) == 1                   # told once, whichever thread meets it first
    assert digest(db) == before


def test_a_file_that_is_not_a_database_is_ledger_corrupt_at_open(tmp_path: Path) -> None:
    db = tmp_path / "ledger.db"
    db.write_bytes(b"not a database, " * 1024)
    with pytest.raises(LedgerCorrupt, match="is damaged \\(file is not a database\\)"):
        Ledger(f"sqlite:///{db}")


def test_check_file_finds_damage_in_a_page_and_can_be_given_a_time_limit(tmp_path: Path) -> None:
    db = make(tmp_path / "ledger.db", jobs=200, pages=50)
    assert check_file(db) == [] and check_file(db, quick=True) == []
    with pytest.raises(CheckTimedOut):
        check_file(db, quick=True, timeout_s=0.0)
    con = sqlite3.connect(db)
    page_size, pages = (con.execute(f"PRAGMA {p}").fetchone()[0] for p in ("page_size", "page_count"))
    con.close()
    with open(db, "r+b") as f:          # a leaf page in the middle of the pages table: a bad sector
        f.seek(page_size * (pages // 2))
        f.write(b"\x0d\x00\x05\xff\xff")
    problems = check_file(db, quick=True)
    assert problems and all(not p.startswith("***") for p in problems)   # the lines, not SQLite's header
    assert any(f"Page {pages // 2 + 1}" in p for p in problems) or "malformed" in problems[0]


def test_an_online_backup_is_one_committed_moment_and_a_cp_is_not(tmp_path: Path) -> None:
    db = make(tmp_path / "ledger.db", jobs=3)
    writer = sqlite3.connect(db, isolation_level=None)
    writer.execute("PRAGMA wal_autocheckpoint = 0")     # commits stay in ledger.db-wal, as they do
    writer.execute("UPDATE jobs SET priority = 7")      # between the daemon's checkpoints
    writer.execute("BEGIN IMMEDIATE")                   # and a transaction in flight
    writer.execute("DELETE FROM jobs")
    copied, backup = tmp_path / "cp.db", tmp_path / "backup.db"
    shutil.copy(db, copied)
    backup_file(db, backup)
    writer.execute("ROLLBACK")
    writer.close()

    def priorities(path: Path) -> list[tuple]:
        con = sqlite3.connect(path)
        try:
            return con.execute("SELECT priority FROM jobs").fetchall()
        finally:
            con.close()
    assert priorities(backup) == [(7,)] * 3             # the commit, not the transaction in flight
    assert priorities(copied) == [(0,)] * 3             # cp missed what was still in the -wal
    assert backup.stat().st_mode & 0o777 == 0o600 and check_file(backup) == []
    assert not backup.with_name("backup.db-wal").exists()


def test_a_full_disk_is_ledger_full_and_passes_by_itself(small_disk, tmp_path: Path) -> None:
    disk = small_disk(tmp_path / "state", size="1m")
    ledger = Ledger(f"sqlite:///{disk.path / 'ledger.db'}")
    try:
        disk.fill()
        with pytest.raises(LedgerFull) as caught:
            for n in range(200):     # until the WAL needs a page the disk hasn't got
                ledger.add_job(inbox="/in", source_path=f"/in/{n}.pdf", spool_path=f"/spool/{n}.pdf",
                               sha256=f"sha-{n}", size_bytes=10, pages_total=20)
        assert isinstance(caught.value, LedgerUnreachable)   # everyone waits it out like an outage
        assert "database or disk is full" in str(caught.value)
        disk.free()
        ledger.add_job(inbox="/in", source_path="/in/after.pdf", spool_path="/spool/after.pdf",
                       sha256="sha-after", size_bytes=10, pages_total=1)
        assert ledger.integrity_check() == "ok"
    finally:
        ledger.close()
