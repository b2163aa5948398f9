"""kill -9 of a real process running IngestService mid-ingest loses nothing and makes no second job."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

from helpers import wait_for
from ingest_runner import config_toml, png_bytes
from ocrd.daemon.config import Config, load_config
from ocrd.daemon.intake.ingest import Ingestor
from ocrd.ledger.states import JobState
from ocrd.ledger.store import Ledger

RUNNER = Path(__file__).resolve().parent.parent / "ingest_runner.py"


def _spawn(cfg_path: Path, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(RUNNER), str(cfg_path), "0.5"],
                            stdout=log.open("ab"), stderr=subprocess.STDOUT)


def _check_invariant(config: Config, ledger: Ledger, names: list[str]) -> list[dict]:
    """Every dropped file is still in the inbox or has exactly one job; every job's original
    exists where the ledger says; the spool holds only files the ledger knows."""
    inbox = config.inboxes[0]
    jobs = ledger.list_jobs(limit=100_000)
    per_source = Counter(Path(j["source_path"]).name for j in jobs)
    assert max(per_source.values(), default=0) <= 1, "a file got a second job"
    for name in names:
        in_inbox = (inbox.path / name).exists()
        assert in_inbox != (per_source[name] == 1), f"{name}: in inbox={in_inbox}, jobs={per_source[name]}"
    for job in jobs:
        assert Path(job["spool_path"]).is_file(), f"job {job['id']} original missing: {job['spool_path']}"
    spool = {str(p) for p in config.spool_dir.iterdir() if p.is_file() and not p.name.startswith(".")}
    known = {j["spool_path"] for j in jobs if j["state"] in (JobState.QUEUED, JobState.RUNNING)}
    assert spool == known
    assert list((config.spool_dir / ".intents").iterdir()) == []
    return jobs


def test_kill_9_mid_ingest_then_restart_loses_nothing(tmp_path: Path) -> None:
    # ~10-20 s on the shared 2-core box: four runner processes ingest 200 files through real fsyncs.
    cfg_path = tmp_path / "ocrd.toml"
    cfg_path.write_text(config_toml(tmp_path, stable_for_s=0.2))
    config = load_config(cfg_path)
    inbox = config.inboxes[0]
    inbox.path.mkdir(parents=True)
    names: list[str] = []
    for n in range(190):
        names.append(f"f{n:03}.png")
        (inbox.path / names[-1]).write_bytes(png_bytes(1000 + n))
    for n in range(5):                       # bad inputs take the failed/ path
        names.append(f"bad{n}.docx")
        (inbox.path / names[-1]).write_bytes(b"PK\x03\x04" + bytes([n]) * 64)
    for n in range(5):                       # same bytes as f000..f004: the duplicate path
        names.append(f"dup{n}.png")
        (inbox.path / names[-1]).write_bytes(png_bytes(1000 + n))
    log = tmp_path / "runner.log"
    ledger = Ledger(config.db_url)
    try:
        for kill_at in (10, 60, 130):
            proc = _spawn(cfg_path, log)
            try:
                wait_for(lambda: len(ledger.list_jobs(limit=1000)) >= kill_at or proc.poll() is not None,
                         timeout=60, message=f"{kill_at} jobs")
                assert proc.poll() is None, log.read_text()[-2000:]
            finally:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(10)
            Ingestor(config, ledger).reconcile()   # what the next start does first
            _check_invariant(config, ledger, names)
        proc = _spawn(cfg_path, log)
        try:
            wait_for(lambda: len(ledger.list_jobs(limit=1000)) >= len(names), timeout=90,
                     message="every file ingested")
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(15) == 0
        jobs = _check_invariant(config, ledger, names)
    finally:
        ledger.close()
    assert sorted(p.name for p in inbox.path.iterdir()) == []
    states = Counter(j["state"] for j in jobs)
    assert states == {JobState.QUEUED: 190, JobState.FAILED: 5, JobState.DUPLICATE: 5}
    digests = {hashlib.sha256(png_bytes(1000 + n)).hexdigest() for n in range(190)}
    assert {j["sha256"] for j in jobs if j["state"] == JobState.QUEUED} == digests
