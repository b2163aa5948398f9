"""daemon/ledger_file.py on real ledger files: the start check and its time limit, the backup
schedule (due from the newest backup's name, so a daemon restarted often still makes one a day),
pruning, and a damaged ledger found by the backup thread."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

import configs
from helpers import damage_table, wait_for
from ocrd.daemon.config import Config
from ocrd.daemon.ledger_file import (BackupRefused, BackupService, check_at_start, list_backups,
                                     make_backup)
from ocrd.ledger import LedgerCorrupt
from ocrd.ledger.integrity import check_file
from ocrd.ledger.store import Ledger

T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


def make_config(tmp_path: Path, **ledger: object) -> Config:
    config = configs.make_config(tmp_path, ledger=ledger)
    config.state_dir.mkdir(parents=True, exist_ok=True)
    with Ledger(config.db_url) as led:
        for n in range(200):
            led.add_job(inbox="/in", source_path=f"/in/{n}.pdf", spool_path=f"/spool/{n}.pdf",
                        sha256=f"sha-{n}", size_bytes=10, pages_total=20)
    return config


def test_the_start_check_passes_a_sound_ledger_and_refuses_a_damaged_one(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    assert check_at_start(config) is True
    assert check_at_start(config, timeout_s=0.0) is False     # too big for its time: goes on later
    damage_table(config.ledger_path, "jobs")
    with pytest.raises(LedgerCorrupt, match="is damaged"):
        check_at_start(config)


def test_a_start_check_cut_short_is_finished_by_the_backup_thread(tmp_path: Path) -> None:
    config = make_config(tmp_path, backup_every="")
    damage_table(config.ledger_path, "pages")
    told: list[LedgerCorrupt] = []
    service = BackupService(config, told.append, check_first=True)
    service.start()
    wait_for(lambda: told, 30, 0.05, "the damage told")
    service.stop()
    assert told[0].path == str(config.ledger_path)


def test_backups_are_made_when_due_and_pruned_to_backup_keep(tmp_path: Path) -> None:
    config = make_config(tmp_path, backup_every="1h", backup_keep=2)
    service = BackupService(config, lambda exc: None)
    assert service.tick(now=T0) == 3600                       # none yet: one now
    assert service.tick(now=T0 + timedelta(minutes=20)) == 40 * 60   # not due: 40 min to go
    assert len(list_backups(config.backup_dir)) == 1
    for hours in (1, 2, 3):
        service.tick(now=T0 + timedelta(hours=hours))
    kept = list_backups(config.backup_dir)
    assert [p.name for p in kept] == ["ledger-20260301T140000Z.db", "ledger-20260301T150000Z.db"]
    assert config.backup_dir.stat().st_mode & 0o777 == 0o700
    assert all(p.stat().st_mode & 0o777 == 0o600 and check_file(p) == [] for p in kept)
    # a restart does not start the clock again: the newest backup's name says when the next is due
    assert BackupService(config, lambda exc: None).tick(now=T0 + timedelta(hours=3, minutes=30)) == 30 * 60


def test_backup_every_off_makes_none_and_postgresql_is_pg_dumps_job(tmp_path: Path) -> None:
    config = make_config(tmp_path, backup_every="0")
    BackupService(config, lambda exc: None).tick(now=T0)
    assert not config.backup_dir.exists()
    pg = configs.make_config(tmp_path / "pg", ledger={"url": "postgresql+psycopg://ocrd@db/ocrd"})
    with pytest.raises(BackupRefused, match="pg_dump"):
        make_backup(pg)
    service = BackupService(pg, lambda exc: None)
    service.start()                                             # nothing to do: no thread
    assert not [t for t in threading.enumerate() if t.name == "ocrd-backups"]


def test_a_backup_of_a_damaged_ledger_is_not_kept_and_the_damage_is_told(tmp_path: Path) -> None:
    config = make_config(tmp_path, backup_every="1h")
    damage_table(config.ledger_path, "jobs")
    told: list[LedgerCorrupt] = []
    service = BackupService(config, told.append)
    service.start()
    wait_for(lambda: told, 30, 0.05, "the damage told")
    service.stop()
    assert list_backups(config.backup_dir) == [] and not list(config.backup_dir.glob(".*"))
