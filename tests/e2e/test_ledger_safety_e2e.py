"""A damaged ledger, backups and a restore, through the real `ocrd run` and `ocrd` CLI (issue 22):
one bad page at start or at any later moment is one line and exit 78, with nothing more written;
`ocrd ledger backup` while the daemon runs, the daemon's own backups, and `ocrd ledger restore`,
after which the documents newer than the backup come back from the spool."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import samples
from helpers import damage_table, wait_for
from ocrd.ledger.integrity import check_file


def said(d) -> list[str]:
    """What the daemon said to a person: its `ocrd: ...` lines."""
    return [line for line in d.log.read_text(errors="replace").splitlines() if line.startswith("ocrd:")]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_bad_page_at_start_is_one_line_exit_78_and_nothing_is_written(make_daemon) -> None:
    d = make_daemon()
    d.start()
    samples.write_image(d.inbox / "first.png", "PNG", n=1)
    assert d.wait_settled(1) == {"first.png": "done"}
    assert d.stop() == 0
    db = d.state / "ledger.db"
    damage_table(db, "jobs")            # the header and every other table still read fine
    before = digest(db)
    samples.write_image(d.inbox / "later.png", "PNG", n=2)

    d.start()
    assert d.proc.wait(60) == 78, d.log.read_text()[-3000:]
    [line] = said(d)
    assert f"the ledger {db} is damaged" in line and "ocrd ledger restore" in line
    assert "Traceback" not in d.log.read_text()
    assert (d.inbox / "later.png").exists() and d.spool_files() == []   # nothing ingested
    assert digest(db) == before                                         # nothing written
    wal = db.with_name("ledger.db-wal")
    assert not wal.exists() or wal.stat().st_size == 0
    for args in (("status",), ("jobs",), ("ledger", "check")):
        result = d.cli(*args, check=False)
        assert result.returncode == 1 and "Traceback" not in result.stderr, args
        assert result.stderr.count("\n") == 1 and "damaged" in result.stderr, (args, result.stderr)


def test_damage_met_while_running_stops_the_daemon_at_once_and_it_writes_nothing_more(make_daemon) -> None:
    d = make_daemon()
    d.start()
    samples.write_image(d.inbox / "first.png", "PNG", n=1)
    assert d.wait_settled(1) == {"first.png": "done"}
    wait_for(lambda: d.query("SELECT state FROM workers") == [("idle",)], 60, 0.1, "the worker idle")
    [(worker_pid,)] = d.query("SELECT pid FROM workers")
    damage_table(d.state / "ledger.db", "jobs")
    samples.write_image(d.inbox / "next.png", "PNG", n=2)    # its job row goes into the bad page

    assert d.proc.wait(60) == 78, d.log.read_text()[-3000:]
    [line] = said(d)
    assert f"the ledger {d.state / 'ledger.db'} is damaged" in line
    kinds = [e.get("event") for e in d.events()]
    assert "ledger_corrupt" in kinds and "tick_failed" not in kinds
    after = kinds[kinds.index("ledger_corrupt"):]
    assert "pages_released" not in after and "page_done" not in after
    # stopped without a write: the worker was killed, not marked stopped (a warm stop writes)
    wait_for(lambda: not Path(f"/proc/{worker_pid}").exists()
             or Path(f"/proc/{worker_pid}/stat").read_text().split(")")[1].split()[0] == "Z",
             5, 0.05, "the worker gone")
    assert d.query("SELECT state FROM workers") == [("idle",)]
    # the file that met the damage is safe: still in the inbox, or in the spool with its intent
    assert (d.inbox / "next.png").exists() or any(p.name.endswith("next.png") for p in d.spool_files())


def test_damage_met_by_a_worker_stops_the_daemon_too(make_daemon) -> None:
    d = make_daemon()
    d.start()
    wait_for(lambda: d.query("SELECT state FROM workers") == [("idle",)], 60, 0.1, "the worker idle")
    damage_table(d.state / "ledger.db", "workers")   # only the worker's heartbeat reads it now

    assert d.proc.wait(60) == 78, d.log.read_text()[-3000:]
    [line] = said(d)
    assert f"the ledger {d.state / 'ledger.db'} is damaged" in line
    [worker_said] = [e for e in d.events() if e.get("event") == "ledger_corrupt" and "worker_id" in e]
    assert "malformed" in worker_said["error"]
    assert "worker_died" not in [e.get("event") for e in d.events()]   # not a crash to restart from


def test_backup_while_running_then_restore_brings_newer_documents_back_from_the_spool(
        make_daemon, tmp_path: Path) -> None:
    d = make_daemon()
    d.start()
    samples.write_image(d.inbox / "old.png", "PNG", n=1)
    assert d.wait_settled(1) == {"old.png": "done"}
    d.cli("pause")                                             # documents wait in the spool
    samples.write_image(d.inbox / "mid.png", "PNG", n=2)       # queued in the backup, done after it
    wait_for(lambda: d.scalar("SELECT COUNT(*) FROM jobs WHERE state = 'queued'") == 1, 60, 0.1, "mid queued")
    backup = tmp_path / "kept" / "by-hand.db"
    backup.parent.mkdir()
    made = d.cli("ledger", "backup", str(backup))              # the daemon runs meanwhile
    assert "checked" in made.stdout and backup.stat().st_mode & 0o777 == 0o600
    assert check_file(backup) == []
    refused = d.cli("ledger", "restore", str(backup), check=False)
    assert refused.returncode == 1 and f"pid {d.proc.pid}" in refused.stderr and "stop it first" in refused.stderr
    d.cli("resume")
    assert d.wait_settled(2) == {"old.png": "done", "mid.png": "done"}

    d.cli("pause")                                             # newer than the backup, still in the spool
    samples.write_image(d.inbox / "new.png", "PNG", n=3)
    samples.write_pdf(d.inbox / "newer.pdf", 2)
    wait_for(lambda: d.scalar("SELECT COUNT(*) FROM jobs WHERE state = 'queued'") == 2, 60, 0.1,
             "two newer documents queued")
    assert d.stop() == 0
    db = d.state / "ledger.db"
    damage_table(db, "jobs")
    assert d.cli("ledger", "check", check=False).returncode == 1

    restored = d.cli("ledger", "restore", str(backup))
    [aside] = d.state.glob("ledger.db.replaced-*")
    assert str(aside) in restored.stdout and check_file(aside) != []   # the damaged one, kept
    assert "1 job(s)" in restored.stdout                              # mid: ended after the backup
    assert d.cli("ledger", "check").stdout == "ok\n"
    d.cli("resume")                                            # the backup was taken while paused
    d.start()
    assert d.wait_settled(4) == {"old.png": "done", "mid.png": "failed", "new.png": "done",
                                 "newer.pdf": "done"}
    assert "restored from a backup older than" in d.query("SELECT error FROM jobs WHERE state = 'failed'")[0][0]
    assert sorted(p.name for p in d.outbox.iterdir()) == ["mid.md", "new.md", "newer.md", "old.md"]
    assert (d.outbox / "newer.md").read_text().count("<!-- page ") == 2
    assert sorted(p.name for p in d.archive.iterdir()) == ["mid.png", "new.png", "newer.pdf", "old.png"]
    assert not d.failed.exists() or not list(d.failed.iterdir())
    requeued = [e for e in d.events() if e.get("event") == "spool_file_unknown_to_the_ledger"]
    assert sorted(e["queued_as"] for e in requeued) == ["new.png", "newer.pdf"]
    assert d.stop() == 0


def test_the_daemon_backs_up_on_schedule_and_keeps_the_newest(make_daemon) -> None:
    d = make_daemon(tables={"ledger": {"backup_every": "2s", "backup_keep": 2}})
    d.start()
    samples.write_image(d.inbox / "page.png", "PNG")
    wait_for(lambda: sum(e.get("event") == "ledger_backed_up" for e in d.events()) >= 3, 120, 0.2,
             f"three backups ({d.log})")
    folder = d.state / "backups"
    kept = wait_for(lambda: len(found := sorted(folder.glob("ledger-*.db"))) == 2 and found, 10, 0.1,
                    "the oldest pruned")
    assert folder.stat().st_mode & 0o777 == 0o700
    for path in kept:
        assert re.fullmatch(r"ledger-\d{8}T\d{6}Z\.db", path.name)
        assert path.stat().st_mode & 0o777 == 0o600
        assert check_file(path) == []
        assert not path.with_name(path.name + "-wal").exists()   # one self-contained file
    assert not list(folder.glob(".*"))                            # no temp file left
    assert d.stop() == 0


def test_no_backups_when_backup_every_is_empty(make_daemon) -> None:
    d = make_daemon(tables={"ledger": {"backup_every": ""}})
    d.start()
    samples.write_image(d.inbox / "page.png", "PNG")
    assert d.wait_settled(1) == {"page.png": "done"}
    assert d.stop() == 0
    assert not (d.state / "backups").exists()
    assert "ledger_backed_up" not in [e.get("event") for e in d.events()]


def test_a_full_state_dir_holds_new_files_and_claims_and_all_resumes_when_there_is_room(
        small_disk, make_daemon, tmp_path: Path) -> None:
    disk = small_disk(tmp_path / "d0" / "state", size="16m")    # the ledger, spool and log on it
    d = make_daemon(state_dir=disk.path, max_tokens=300)
    d.start()
    samples.write_pdf(d.inbox / "long.pdf", 24)
    wait_for(lambda: d.scalar("SELECT COUNT(*) FROM pages WHERE state = 'done'") >= 1, 120, 0.1,
             "the first page done")
    disk.fill()
    samples.write_image(d.inbox / "late.png", "PNG")

    status = wait_for(lambda: (s := d.status())["state_dir_full"] and s, 30, 0.2, "status to say why")
    [warning] = [w for w in status["warnings"] if "disk is full" in w]
    assert str(disk.path) in warning and "no page is claimed" in warning and "\n" not in warning
    human = d.cli("status", check=False)
    assert sum("disk is full" in line for line in human.stdout.splitlines()) == 1
    def holding_back() -> set[bool]:   # said by the ingest thread (no worker_id) and by the worker
        return {"worker_id" in e for e in d.events() if e.get("event") == "state_dir_full"}
    wait_for(lambda: holding_back() == {True, False}, 30, 0.1, "the ingest thread and the worker to hold back")
    queued = d.scalar("SELECT COUNT(*) FROM pages WHERE state = 'queued'")
    assert queued > 0
    # a heartbeat missed (the ledger can't take it) is time enough for many claims: none came
    wait_for(lambda: (w := d.status()["workers"]) and w[0]["heartbeat_age_s"] > 7, 60, 0.5,
             "a heartbeat missed")
    assert d.scalar("SELECT COUNT(*) FROM pages WHERE state = 'queued'") == queued
    assert (d.inbox / "late.png").exists() and d.query("SELECT COUNT(*) FROM jobs") == [(1,)]

    disk.free()
    assert d.wait_settled(2, timeout=300) == {"long.pdf": "done", "late.png": "done"}
    assert (d.outbox / "long.md").read_text().count("<!-- page ") == 24 and (d.outbox / "late.md").exists()
    assert d.scalar("SELECT COUNT(*) FROM pages WHERE state <> 'done'") == 0
    assert d.status()["state_dir_full"] is None
    kinds = [e.get("event") for e in d.events()]
    assert "state_dir_has_room" in kinds and "tick_failed" not in kinds and "worker_died" not in kinds
    assert d.stop() == 0
