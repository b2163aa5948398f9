"""`ocrd run` as a user runs it: real subprocess, real folders, the real mlx-vlm path (tiny model)."""

from __future__ import annotations

import os
import signal
import shutil
import time
from pathlib import Path

import samples
from helpers import wait_for

# These spawn the daemon and its model workers: each takes 10-60 s on this 2-core machine.


def test_mixed_files_end_to_end(make_daemon) -> None:
    d = make_daemon(workers=2)
    d.start()
    samples.write_pdf(d.inbox / "report.pdf", 3)
    samples.write_image(d.inbox / "photo.png", "PNG")
    samples.write_image(d.inbox / "scan.jpg", "JPEG")
    samples.write_image(d.inbox / "fax.tiff", "TIFF", frames=2)
    samples.write_image(d.inbox / "sub" / "deep" / "note.png", "PNG", n=5)
    samples.write_image(d.inbox / "web.webp", "WEBP")
    samples.write_image(d.inbox / "old.bmp", "BMP")
    samples.write_image(d.inbox / "anim.gif", "GIF", frames=3)
    samples.write_corrupt_pdf(d.inbox / "broken.pdf")
    samples.write_docx(d.inbox / "letter.docx")
    (d.inbox / ".DS_Store").write_bytes(b"junk")
    (d.inbox / "download.pdf.part").write_bytes(b"%PDF-1.4 partial")

    # Live workers with heartbeats while pages run.
    status = wait_for(lambda: (s := d.status())["workers"] and s, 120, 0.5, "live workers")
    assert status["daemon"]["running"] and status["daemon"]["pid"] == d.proc.pid
    assert status["device"]["backend"] == "cpu"
    for key in ("id", "pid", "backend", "state", "heartbeat_age_s", "current_page",
                "active_memory_bytes", "peak_memory_bytes", "pages_done"):
        assert key in status["workers"][0]

    states = d.wait_settled(10)
    assert states == {
        "report.pdf": "done", "photo.png": "done", "scan.jpg": "done", "fax.tiff": "done",
        "note.png": "done", "web.webp": "done", "old.bmp": "done", "anim.gif": "done",
        "broken.pdf": "failed", "letter.docx": "failed",
    }
    outputs = sorted(str(p.relative_to(d.outbox)) for p in d.outbox.rglob("*.md"))
    assert outputs == ["anim.md", "fax.md", "old.md", "photo.md", "report.md", "scan.md",
                       "sub/deep/note.md", "web.md"]
    pages = {p: (d.outbox / p).read_text().count("<!-- page ") for p in outputs}
    assert pages["report.md"] == 3 and pages["fax.md"] == 2 and pages["anim.md"] == 1
    assert sorted(str(p.relative_to(d.archive)) for p in d.archive.rglob("*") if p.is_file()) == [
        "anim.gif", "fax.tiff", "old.bmp", "photo.png", "report.pdf", "scan.jpg", "sub/deep/note.png",
        "web.webp"]
    assert (d.failed / "broken.pdf").exists() and (d.failed / "letter.docx").exists()
    assert "unsupported file type" in (d.failed / "letter.docx.error.txt").read_text().splitlines()[0]
    assert "pdf" in (d.failed / "broken.pdf.error.txt").read_text().splitlines()[0].lower()
    assert (d.inbox / ".DS_Store").exists() and (d.inbox / "download.pdf.part").exists()
    assert d.spool_files() == []

    # Each worker loaded the model exactly once, shown by the ledger.
    loads = wait_for(lambda: len(rows := d.query("SELECT detail FROM events WHERE kind = 'model_loaded'")) >= 2
                     and [detail for (detail,) in rows], 60, 0.2, "both workers loaded")
    workers = [w for (w,) in d.query("SELECT id FROM workers")]
    assert len(loads) == len(workers) == 2
    assert sorted(detail.split()[0] for detail in loads) == sorted(f"worker={w}" for w in workers)
    hb = wait_for(lambda: (r := d.query("SELECT COUNT(DISTINCT worker_id), MIN(backend), MAX(peak_memory_bytes)"
                                        " FROM heartbeats")[0])[0] == 2 and r, 30, 0.2, "heartbeats")
    assert hb[1] == "cpu" and hb[2] > 0

    started = time.monotonic()
    assert d.stop(timeout=40) == 0
    assert time.monotonic() - started < 30
    assert d.query("SELECT COUNT(*) FROM workers WHERE state NOT IN ('stopped', 'dead')") == [(0,)]


def test_second_daemon_refused_and_sigterm_in_time(make_daemon) -> None:
    d = make_daemon()
    d.start()
    wait_for(lambda: d.status()["daemon"]["running"], 60, 0.2, "daemon up")
    second = d.cli("run", check=False)
    assert second.returncode == 1
    assert str(d.proc.pid) in second.stderr
    # private state: the folder, the log and the lock are the daemon's alone
    for path, mode in ((d.state, 0o700), (d.state / "logs" / "ocrd.log", 0o600), (d.state / "ocrd.lock", 0o600)):
        assert path.stat().st_mode & 0o777 == mode, (path, oct(path.stat().st_mode))
    started = time.monotonic()
    assert d.stop() == 0
    assert time.monotonic() - started < 30


def test_kill_worker_page_is_redone_and_document_completes_once(make_daemon) -> None:
    d = make_daemon(max_tokens=300)  # slow pages, so there is time to catch a worker mid-page
    d.start()
    samples.write_pdf(d.inbox / "long.pdf", 12)
    busy = wait_for(lambda: d.query(
        "SELECT pid FROM workers WHERE current_page IS NOT NULL AND state != 'stopped'"), 120, 0.05,
        "busy worker")
    os.kill(busy[0][0], signal.SIGKILL)
    assert d.wait_settled(1, timeout=240) == {"long.pdf": "done"}
    assert [p.name for p in d.outbox.iterdir()] == ["long.md"]
    assert (d.outbox / "long.md").read_text().count("<!-- page ") == 12
    # the pages the killed worker held were claimed again (charged an attempt only if its engine
    # had them: a heartbeat's current_page may be a few seconds old when the kill lands)
    claims = "SELECT COUNT(*) AS n FROM events WHERE kind = 'page_running' GROUP BY job_id, page_no"
    assert d.query(f"SELECT MAX(n) FROM ({claims})")[0][0] == 2
    assert d.query("SELECT COUNT(*) FROM workers WHERE state = 'dead'") == [(1,)]
    assert d.stop() == 0


def test_kill_daemon_mid_run_then_restart_completes_each_document_once(make_daemon) -> None:
    d = make_daemon(max_tokens=200)
    d.start()
    for n in range(3):
        samples.write_pdf(d.inbox / f"doc{n}.pdf", 4)
    for n in range(4):
        samples.write_image(d.inbox / f"img{n}.png", "PNG", n=n)
    wait_for(lambda: d.scalar("SELECT COUNT(*) FROM pages WHERE state = 'done'") >= 2, 180, 0.1,
             "some pages done")
    assert d.scalar("SELECT COUNT(*) FROM jobs WHERE state = 'done'") < 7
    d.kill()  # kill -9 of the supervisor; its workers die with it (PDEATHSIG)
    d.start()
    states = d.wait_settled(7, timeout=240)
    assert set(states.values()) == {"done"}, states
    assert sorted(p.name for p in d.outbox.iterdir()) == sorted(
        [f"doc{n}.md" for n in range(3)] + [f"img{n}.md" for n in range(4)])
    assert d.spool_files() == []
    assert d.query("SELECT COUNT(*) FROM jobs") == [(7,)]
    assert d.stop() == 0


def test_retry_failed_job(make_daemon) -> None:
    d = make_daemon()
    d.start()
    samples.write_corrupt_pdf(d.inbox / "scan.pdf")
    assert d.wait_settled(1) == {"scan.pdf": "failed"}
    job_id = d.query("SELECT id FROM jobs")[0][0]

    # Still broken: it fails again, cleanly, back in failed/ with its reason.
    d.cli("retry", "--failed", check=False)
    wait_for(lambda: d.job_states() == {"scan.pdf": "failed"} and (d.failed / "scan.pdf").exists()
             and (d.failed / "scan.pdf.error.txt").exists(), 60, 0.2, "failed again")

    # Fixed by the user: the retry brings it back and it completes under the same job id.
    samples.write_pdf(d.failed / "scan.pdf", 2)
    d.cli("retry", str(job_id))
    wait_for(lambda: d.job_states() == {"scan.pdf": "done"}, 180, 0.2, "retried job done")
    assert d.query("SELECT id FROM jobs") == [(job_id,)]
    assert (d.outbox / "scan.md").read_text().count("<!-- page ") == 2
    assert not (d.failed / "scan.pdf").exists()
    assert d.stop() == 0


def test_model_unavailable_keeps_queueing(make_daemon, tmp_path: Path) -> None:
    d = make_daemon(model=tmp_path / "no-such-model")
    d.start()
    samples.write_image(d.inbox / "page.png", "PNG")
    wait_for(lambda: d.query("SELECT state FROM jobs") == [("queued",)], 60, 0.2, "job queued")
    status = wait_for(lambda: (s := d.status())["model_status"].startswith("unavailable") and s,
                      60, 0.3, "model unavailable in status")
    assert "no-such-model" in status["model_status"]
    assert status["pages"]["queued"] == 1 and status["pages"]["failed"] == 0
    assert d.stop() == 0
    assert d.query("SELECT state FROM pages") == [("queued",)]
    # each failed load is told by the model status, not by a dead worker row per retry (the trial)
    assert d.query("SELECT COUNT(*) FROM workers") == [(0,)]


def test_systemd_notify_ready_once_workers_loaded_the_model(make_daemon, tmp_path: Path) -> None:
    import socket

    d = make_daemon()
    address = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(address)
        sock.settimeout(60)
        os.environ["NOTIFY_SOCKET"] = address  # what systemd sets for Type=notify
        try:
            d.start()
        finally:
            del os.environ["NOTIFY_SOCKET"]
        message = sock.recv(4096).decode()
        assert "READY=1" in message and "loaded the model" in message
        assert d.query("SELECT COUNT(*) FROM events WHERE kind = 'model_loaded'") == [(1,)]
        d.proc.send_signal(signal.SIGTERM)
        assert "STOPPING=1" in sock.recv(4096).decode()
    assert d.proc.wait(timeout=40) == 0


def test_sighup_reloads_the_inbox_list_without_dropping_work(make_daemon) -> None:
    d = make_daemon()
    d.start()
    samples.write_image(d.inbox / "first.png", "PNG")
    assert d.wait_settled(1) == {"first.png": "done"}
    second = d.root / "inbox2"
    d.config.write_text(d.config.read_text() + f"""
[[inbox]]
path = "{second}"
outbox = "{d.root / 'outbox2'}"
failed = "{d.root / 'failed2'}"
archive = ""
stable_for_s = 0.3
""")
    d.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: second.is_dir(), 30, 0.1, "the new inbox to be watched")
    samples.write_image(second / "second.png", "PNG", n=2)
    samples.write_image(d.inbox / "third.png", "PNG", n=3)
    assert d.wait_settled(3) == {"first.png": "done", "second.png": "done", "third.png": "done"}
    assert (d.root / "outbox2" / "second.md").exists() and not (second / "second.png").exists()
    assert d.proc.poll() is None  # still the same daemon
    assert d.stop() == 0


def test_state_dir_on_another_volume(make_daemon) -> None:
    """Inbox -> spool and spool -> archive cross filesystems: copy + fsync + unlink, nothing lost."""
    import tempfile

    import pytest

    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(tempfile.gettempdir()).st_dev:
        pytest.skip("needs a second filesystem (tmpfs at /dev/shm)")
    state = Path(tempfile.mkdtemp(dir=shm, prefix="ocrd-state-"))
    try:
        d = make_daemon(state_dir=state)
        d.start()
        samples.write_pdf(d.inbox / "cross.pdf", 2)
        assert d.wait_settled(1) == {"cross.pdf": "done"}
        assert (d.archive / "cross.pdf").read_bytes()[:5] == b"%PDF-"
        assert (d.outbox / "cross.md").read_text().count("<!-- page ") == 2
        assert d.spool_files() == [] and not (d.inbox / "cross.pdf").exists()
        assert d.stop() == 0
    finally:
        shutil.rmtree(state, ignore_errors=True)


def test_submit_a_file_from_elsewhere_while_the_daemon_runs(make_daemon, tmp_path: Path) -> None:
    d = make_daemon()
    d.start()
    elsewhere = samples.write_pdf(tmp_path / "Downloads" / "statement.pdf", 2)
    result = d.cli("submit", str(elsewhere))
    assert "statement.pdf" in result.stdout
    assert d.wait_settled(1) == {"statement.pdf": "done"}
    assert (d.outbox / "statement.md").read_text().count("<!-- page ") == 2
    assert elsewhere.exists()  # submitted from outside an inbox: copied, the user's file stays
    assert d.stop() == 0


def test_a_corrupt_ledger_is_one_line_an_exit_the_unit_does_not_restart_and_nothing_ingested(make_daemon) -> None:
    d = make_daemon()
    d.state.mkdir(parents=True, exist_ok=True)
    (d.state / "ledger.db").write_bytes(b"not a database, " * 1024)
    samples.write_image(d.inbox / "page.png", "PNG")
    run = d.cli("run", check=False)
    assert run.returncode == 78, run.stderr            # the unit's RestartPreventExitStatus
    said = [line for line in run.stderr.splitlines() if line.startswith("ocrd:")]
    assert len(said) == 1 and "ledger.db is damaged (file is not a database)" in said[0]
    assert "ocrd ledger restore" in said[0]
    assert "Traceback" not in run.stderr
    assert (d.inbox / "page.png").exists()             # nothing was ingested
    status = d.cli("status", check=False)
    assert status.returncode == 1 and "Traceback" not in status.stderr and "ledger" in status.stderr
