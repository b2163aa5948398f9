"""Issue 22 through the real `ocrd` CLI: a damaged ledger is one line and exit 1 for every command
(the bad page met during the command, not only at open), and `ocrd ledger check | backup |
restore`. The daemon side is tests/e2e/test_ledger_safety_e2e.py."""

from __future__ import annotations

import os
import sqlite3
import subprocess
from pathlib import Path

import pytest

from cli_support import OCRD, write_config
from helpers import damage_table
from ocrd.daemon.config import load_config
from ocrd.daemon.lockfile import DaemonLock
from ocrd.ledger.integrity import check_file
from ocrd.ledger.store import Ledger


def ocrd(config: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "OCRD_CONFIG"}
    return subprocess.run([str(OCRD), "--config", str(config), *args], capture_output=True, text=True,
                          env=env, timeout=60, check=False)


def one_line(result: subprocess.CompletedProcess) -> str:
    """The command failed with exit 1 and said why in one line, without a traceback."""
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("ocrd: ")
    return result.stderr


def fill(config_file: Path, jobs: int = 5) -> Path:
    """A ledger with `jobs` queued jobs; its path."""
    config = load_config(config_file)
    config.state_dir.mkdir(parents=True, exist_ok=True)
    with Ledger(config.db_url) as ledger:
        for n in range(jobs):
            ledger.add_job(inbox=str(config.inboxes[0].path), source_path=f"/in/{n}.pdf",
                           spool_path=f"/spool/{n}.pdf", sha256=f"sha-{n}", size_bytes=10, pages_total=2)
    return config.ledger_path


# every command that reads the jobs table (one that never reads the bad page, `ocrd pause`, works)
@pytest.mark.parametrize("args", [("status",), ("status", "--json"), ("jobs",), ("jobs", "--state", "queued"),
                                  ("show", "1"), ("show", "1", "--text"), ("retry", "1")])
def test_a_bad_page_met_during_a_command_is_one_line_and_exit_1(config_file: Path, args) -> None:
    db = fill(config_file)
    damage_table(db, "jobs")    # the file opens (header, schema, migrations): the page fails later
    said = one_line(ocrd(config_file, *args))
    assert f"the ledger {db} is damaged (database disk image is malformed)" in said
    assert "ocrd ledger restore" in said


def test_ledger_check_says_ok_or_what_is_wrong(config_file: Path) -> None:
    assert ocrd(config_file, "ledger", "check").stdout.startswith("no ledger yet")
    db = fill(config_file)
    ok = ocrd(config_file, "ledger", "check")
    assert (ok.returncode, ok.stdout) == (0, "ok\n")
    damage_table(db, "jobs")
    bad = ocrd(config_file, "ledger", "check")
    assert bad.stdout.strip() and "malformed" in bad.stdout
    assert "damaged" in one_line(bad)


def test_ledger_backup_to_a_file_or_a_folder_checked_and_private(config_file: Path, tmp_path: Path) -> None:
    db = fill(config_file, jobs=3)
    copy = tmp_path / "copy.db"
    made = ocrd(config_file, "ledger", "backup", str(copy))
    assert made.returncode == 0 and f"to {copy}" in made.stdout and "checked" in made.stdout
    assert copy.stat().st_mode & 0o777 == 0o600 and check_file(copy) == []
    con = sqlite3.connect(copy)
    assert con.execute("SELECT COUNT(*) FROM jobs").fetchone() == (3,)
    assert con.execute("PRAGMA journal_mode").fetchone() == ("delete",)   # one file, no -wal
    con.close()
    assert "exists" in one_line(ocrd(config_file, "ledger", "backup", str(copy)))
    folder = tmp_path / "many"
    folder.mkdir()
    ocrd(config_file, "ledger", "backup", str(folder))
    [named] = folder.glob("ledger-*Z.db")
    assert check_file(named) == []
    damage_table(db, "jobs")      # a damaged ledger makes a damaged copy: refused, and said
    assert "damaged" in one_line(ocrd(config_file, "ledger", "backup", str(tmp_path / "bad.db")))
    assert not (tmp_path / "bad.db").exists()


def test_ledger_backup_on_postgresql_says_pg_dump(tmp_path: Path) -> None:
    config = write_config(tmp_path, ledger={"url": "postgresql+psycopg://ocrd@dbhost/ocrd"})
    assert "pg_dump" in one_line(ocrd(config, "ledger", "backup", str(tmp_path / "x.db")))


def test_ledger_restore(config_file: Path, tmp_path: Path) -> None:
    config = load_config(config_file)
    db = fill(config_file, jobs=2)
    backup = tmp_path / "backup.db"
    ocrd(config_file, "ledger", "backup", str(backup))
    with Ledger(config.db_url) as ledger:         # newer than the backup
        ledger.add_job(inbox="/in", source_path="/in/new.pdf", spool_path="/spool/new.pdf",
                       sha256="sha-new", size_bytes=10, pages_total=1)

    with DaemonLock(config.lock_path):            # this process plays the running daemon
        said = one_line(ocrd(config_file, "ledger", "restore", str(backup)))
        assert f"already running (pid {os.getpid()})" in said and "stop it first" in said
    junk = tmp_path / "junk.db"
    junk.write_bytes(backup.read_bytes())
    damage_table(junk, "jobs")
    assert "damaged too" in one_line(ocrd(config_file, "ledger", "restore", str(junk)))
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.close()
    assert "not an ocrd ledger" in one_line(ocrd(config_file, "ledger", "restore", str(other)))

    before = db.read_bytes()
    restored = ocrd(config_file, "ledger", "restore", str(backup))
    assert restored.returncode == 0, restored.stderr
    [aside] = config.state_dir.glob("ledger.db.replaced-*")
    assert aside.read_bytes() == before and str(aside) in restored.stdout
    assert db.stat().st_mode & 0o777 == 0o600 and check_file(db) == []
    con = sqlite3.connect(db)
    assert con.execute("SELECT source_path FROM jobs ORDER BY id").fetchall() == [("/in/0.pdf",), ("/in/1.pdf",)]
    con.close()
