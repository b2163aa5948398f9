"""Issue 11 through the real CLI: --version, show --text, status exit codes, pause/resume,
retry --force, and the [hooks]/[metrics] config keys. The daemon side is in
tests/e2e/test_user_commands_e2e.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from datetime import UTC, datetime, timedelta
from importlib.metadata import version
from pathlib import Path

import pytest

import samples
from cli_support import OCRD, invoke, write_config
from helpers import wait_for
from ocrd.daemon.config import ConfigError, HooksConfig, MetricsConfig, load_config
from ocrd.daemon.lockfile import DaemonLock
from ocrd.daemon.output.outbox import finish_document
from ocrd.ledger import JobState
from ocrd.ledger.store import Ledger


def open_ledger(config_file: Path) -> Ledger:
    config = load_config(config_file)
    config.state_dir.mkdir(parents=True, exist_ok=True)
    return Ledger(config.db_url)


def test_version_subprocess():
    result = subprocess.run([str(OCRD), "--version"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    assert result.stdout == f"ocrd {version('ocrd')}\n"


# -- status exit codes ----------------------------------------------------------------------------

def test_status_exit_codes_like_systemctl(config_file: Path):
    config = load_config(config_file)
    assert invoke(config_file, "status").exit_code == 3            # no ledger, no daemon
    result = invoke(config_file, "status", "--json")
    assert result.exit_code == 3 and json.loads(result.output)["daemon"]["running"] is False
    with DaemonLock(config.lock_path):                              # this process plays the daemon
        assert invoke(config_file, "status").exit_code == 0
        assert json.loads(invoke(config_file, "status", "--json").output)["daemon"]["running"]
    (config.state_dir / "ledger.db").write_bytes(b"not a database" * 1000)
    broken = invoke(config_file, "status", "--json")
    assert broken.exit_code == 1 and broken.output.startswith("ocrd: the ledger ")
    assert "is damaged (file is not a database)" in broken.output and broken.output.count("\n") == 1


# -- pause / resume -------------------------------------------------------------------------------

def test_pause_and_resume(config_file: Path):
    paused = invoke(config_file, "pause")
    assert paused.exit_code == 0 and paused.output.startswith("paused:")
    assert invoke(config_file, "pause").output == "already paused\n"
    s = json.loads(invoke(config_file, "status", "--json").output)
    assert s["paused"] is True and s["paused_since"].endswith("Z")
    assert "PAUSED   since" in invoke(config_file, "status").output
    resumed = invoke(config_file, "resume")
    assert resumed.exit_code == 0 and resumed.output.startswith("resumed:")
    assert invoke(config_file, "resume").output == "not paused\n"
    s = json.loads(invoke(config_file, "status", "--json").output)
    assert s["paused"] is False and s["paused_since"] is None
    with open_ledger(config_file) as ledger:
        kinds = [e[0] for e in ledger._read(lambda c: c.exec_driver_sql(
            "SELECT kind FROM events WHERE job_id IS NULL ORDER BY id").all())]
    assert kinds == ["paused", "resumed"]


def test_resume_with_no_ledger_creates_nothing(config_file: Path):
    assert invoke(config_file, "resume").output == "not paused\n"
    assert not (config_file.parent / "state").exists()


# -- show --text ----------------------------------------------------------------------------------

def test_show_text_is_the_outbox_file_even_after_it_moved(config_file: Path, tmp_path: Path):
    config = load_config(config_file)
    inbox = config.inboxes[0]
    with open_ledger(config_file) as ledger:
        spool = config.spool_dir / "scan.pdf"
        spool.parent.mkdir(parents=True, exist_ok=True)
        spool.write_bytes(b"%PDF original")
        job = ledger.add_job(inbox=inbox.key, source_path=str(inbox.path / "sub" / "scan.pdf"),
                             spool_path=str(spool), sha256="a" * 64, size_bytes=13, pages_total=2).job_id
        ledger.register_worker("w", host="h", pid=1, backend="cpu", device_name="cpu")
        for page in ledger.claim_pages("w", n=2):
            ledger.complete_page(job, page.page_no, "w", text=f"# Página {page.page_no}\n\nÜber — ✓",
                                 generation_tokens=5, seconds=0.5)
        out = finish_document(config, ledger, job)
    assert out == inbox.outbox / "sub" / "scan.md"
    result = subprocess.run([str(OCRD), "--config", str(config_file), "show", str(job), "--text"],
                            capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout == out.read_bytes()
    out.rename(tmp_path / "moved.md")                       # the user moved it away
    again = invoke(config_file, "show", str(job), "--text")
    assert again.exit_code == 0 and again.stdout_bytes == (tmp_path / "moved.md").read_bytes()


def test_show_text_of_a_job_with_no_text(config_file: Path):
    config = load_config(config_file)
    with open_ledger(config_file) as ledger:
        job = ledger.add_job(inbox=config.inboxes[0].key, source_path="/x/a.png", spool_path="/s/a.png",
                             sha256="b" * 64, size_bytes=1, pages_total=3).job_id
    result = invoke(config_file, "show", str(job), "--text")
    assert result.exit_code == 1 and result.output == f"ocrd: job {job} is queued (0/3 pages): no text yet\n"
    assert invoke(config_file, "show", str(job), "--text", "--json").exit_code == 2
    assert invoke(config_file, "show", "999", "--text").exit_code == 1


# -- retry --force --------------------------------------------------------------------------------

def test_retry_force_processes_a_duplicate(config_file: Path, tmp_path: Path):
    first, second = tmp_path / "one.png", tmp_path / "two.png"
    samples.write_image(first, "PNG")
    second.write_bytes(first.read_bytes())
    assert invoke(config_file, "submit", str(first)).exit_code == 0
    dup = invoke(config_file, "submit", str(second))
    assert "duplicate of job 1 (job 2, skipped)" in dup.output
    plain = invoke(config_file, "retry", "2")
    assert plain.exit_code == 1
    assert "job 2: is duplicate, not failed (--force processes a duplicate anyway)" in plain.output
    forced = invoke(config_file, "retry", "--force", "2")
    assert forced.exit_code == 0, forced.output
    assert forced.output == "job 2: requeued (1 page), duplicate processed anyway\n"
    config = load_config(config_file)
    with open_ledger(config_file) as ledger:
        job = ledger.job(2)
        assert job.state == JobState.QUEUED and job.pages_total == 1 and job.error is None
        assert Path(job.spool_path).is_relative_to(config.spool_dir) and Path(job.spool_path).exists()
    assert invoke(config_file, "retry", "--force", "--failed").exit_code == 2
    again = invoke(config_file, "retry", "--force", "2")                # queued now: not retryable
    assert again.exit_code == 1 and "is queued, not failed" in again.output


def test_submit_force_processes_a_duplicate(config_file: Path, tmp_path: Path):
    config = load_config(config_file)
    first, elsewhere = tmp_path / "one.png", tmp_path / "again.png"
    samples.write_image(first, "PNG")
    elsewhere.write_bytes(first.read_bytes())
    in_inbox = config.inboxes[0].path / "sub" / "third.png"
    in_inbox.parent.mkdir(parents=True, exist_ok=True)
    in_inbox.write_bytes(first.read_bytes())
    assert invoke(config_file, "submit", str(first)).exit_code == 0
    forced = invoke(config_file, "submit", "--force", str(elsewhere), str(in_inbox))
    assert forced.exit_code == 0, forced.output
    assert forced.output == (f"{elsewhere}: job 2 queued (1 page)\n"
                             f"{in_inbox}: job 3 queued (1 page)\n")
    assert elsewhere.exists() and not in_inbox.exists()          # a copy; a move out of the inbox
    plain = invoke(config_file, "submit", str(elsewhere))
    assert plain.output == f"{elsewhere}: duplicate of job 1 (job 4, skipped)\n"
    with open_ledger(config_file) as ledger:
        for job_id in (2, 3):
            job = ledger.job(job_id)
            assert job.state == JobState.QUEUED and job.pages_total == 1 and job.duplicate_of is None
            assert Path(job.spool_path).is_relative_to(config.spool_dir)
        assert ledger.job(4).state == JobState.DUPLICATE
    assert not list((config.spool_dir / ".intents").iterdir())


# -- progress: status bars, jobs' relative paths, pages cut short ---------------------------------

def _progress_ledger(config_file: Path) -> tuple[int, int]:
    """Job 1: inbox/sub/long.pdf, 8 pages, 2 done (one cut at max_tokens, one by the repetition
    guard) 2 minutes after its first pages were claimed, 2 more claimed. Job 2: elsewhere, queued."""
    config = load_config(config_file)
    inbox = config.inboxes[0]
    now = datetime.now(UTC)
    with open_ledger(config_file) as ledger:
        long_job = ledger.add_job(inbox=inbox.key, source_path=str(inbox.path / "sub" / "long.pdf"),
                                  spool_path="/s/1.pdf", sha256="c" * 64, size_bytes=1, pages_total=8).job_id
        other = ledger.add_job(inbox=inbox.key, source_path="/elsewhere/short.png",
                               spool_path="/s/2.png", sha256="d" * 64, size_bytes=1, pages_total=2).job_id
        ledger.register_worker("w", host="h", pid=1, backend="cpu", device_name="cpu")
        ledger.claim_pages("w", n=4, now=now - timedelta(minutes=2))
        for page_no, finish in ((1, "length"), (2, "repetition")):
            ledger.complete_page(long_job, page_no, "w", text="x", generation_tokens=9, seconds=1.0,
                                 finish_reason=finish, now=now - timedelta(seconds=1))
    return long_job, other


def test_status_shows_each_running_document_with_a_bar_and_eta(config_file: Path):
    long_job, _ = _progress_ledger(config_file)
    down = json.loads(invoke(config_file, "status", "--json").output)["running_jobs"]
    assert [(j["id"], j["relative_path"], j["eta_s"]) for j in down] == [(long_job, "sub/long.pdf", None)]
    with DaemonLock(load_config(config_file).lock_path):           # this process plays the daemon
        s = json.loads(invoke(config_file, "status", "--json").output)
        text = invoke(config_file, "status").output
    [job] = s["running_jobs"]
    assert (job["pages_done"], job["pages_total"], job["pages_claimed"]) == (2, 8, 2)
    assert job["pages_per_min"] == pytest.approx(1.0, rel=0.05)     # 2 pages in 2 minutes
    assert job["eta_s"] == pytest.approx(360, rel=0.05)             # 6 pages left at 1 page/min
    assert "pages/min" in text and "ETA" in text                   # the overall rate stays
    header, row = text.split("\n\n")[1].splitlines()[:2]
    assert header.split() == ["JOB", "RUNNING", "PROGRESS", "PAGES", "PACE", "ETA"]
    assert row.split()[:4] == [str(long_job), "sub/long.pdf", "[#####---------------]", "2/8"]
    assert row.split()[4] == "1.0/min" and row.split()[5].startswith(("5m5", "6m0"))


def test_status_watch_refreshes_until_interrupted(config_file: Path):
    _progress_ledger(config_file)
    proc = subprocess.Popen([str(OCRD), "--config", str(config_file), "status", "--watch"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        seen: list[str] = []
        wait_for(lambda: seen.append(proc.stdout.readline()) or sum("sub/long.pdf" in s for s in seen) >= 2,
                 60, 0, "two frames of `status --watch` with the running document")
        assert any(s.split()[2:4] == ["[#####---------------]", "2/8"] for s in seen if "sub/long.pdf" in s)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    finally:
        proc.kill()
        proc.wait()


def test_jobs_shows_the_path_below_the_inbox(config_file: Path):
    _progress_ledger(config_file)
    lines = invoke(config_file, "jobs").output.splitlines()
    assert lines[1].split()[0] == "2" and lines[1].split()[5] == "short.png"    # from elsewhere
    assert lines[2].split()[0] == "1" and lines[2].split()[5] == "sub/long.pdf"


def test_show_flags_pages_cut_short(config_file: Path):
    long_job, _ = _progress_ledger(config_file)
    out = invoke(config_file, "show", str(long_job)).output
    table = out.split("\n\n")[1].splitlines()
    assert table[0].split() == ["PAGE", "STATE", "TRIES", "WORKER", "TIME", "TOKENS", "CUT", "ERROR"]
    assert table[1].split() == ["1", "done", "1", "w", "1.0s", "9", "max_tokens"]
    assert table[2].split() == ["2", "done", "1", "w", "1.0s", "9", "repetition"]
    assert table[3].split() == ["3", "running", "1", "w", "-", "-"]
    assert table[-1] == ("2 pages cut short: their text may be incomplete "
                         "(max_tokens: raise [model] max_tokens)")


# -- the config keys ------------------------------------------------------------------------------

def test_hooks_and_metrics_config(tmp_path: Path):
    config = load_config(write_config(tmp_path, hooks={"on_done": ["notify-send", "done"],
                                                       "timeout_s": 5},
                                      metrics={"listen": "127.0.0.1:9464"}))
    assert config.hooks == HooksConfig(on_done=("notify-send", "done"), timeout_s=5.0)
    assert config.metrics.address == ("127.0.0.1", 9464)
    shipped = load_config(None)
    assert (shipped.hooks, shipped.metrics) == (HooksConfig(), MetricsConfig())
    for bad, key in (({"hooks": {"on_done": "notify-send"}}, "hooks.on_done: must be a list"),
                     ({"hooks": {"on_failed": [""]}}, "hooks.on_failed: must start with a program"),
                     ({"hooks": {"shell": "x"}}, "hooks.shell: unknown key"),
                     ({"metrics": {"listen": "9464"}}, "metrics.listen: must be"),
                     ({"metrics": {"listen": "localhost:http"}}, "metrics.listen: must be")):
        path = write_config(tmp_path, name="bad.toml", **bad)
        with pytest.raises(ConfigError, match=key):
            load_config(path)
        result = invoke(path, "status")
        assert result.exit_code == 2 and result.output.startswith(f"ocrd: {key}")


@pytest.fixture(autouse=True)
def _no_ocrd_config(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("OCRD_CONFIG", raising=False)
    os.environ.pop("OCRD_CONFIG", None)
