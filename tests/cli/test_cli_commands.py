"""status, jobs, show, retry, submit and device against a real ledger seeded through its API."""

from __future__ import annotations

import json
import os
from datetime import timedelta
from pathlib import Path

import pytest
from PIL import Image

from cli_support import invoke
from ocrd.daemon.config import load_config
from ocrd.daemon.device import page_key
from ocrd.daemon.lockfile import DaemonLock
from ocrd.ledger import DaemonInfo
from ocrd.ledger.store import Ledger

WORKER_KEYS = {"id", "pid", "backend", "state", "heartbeat_age_s", "current_page",
               "active_memory_bytes", "peak_memory_bytes", "pages_done", "batch", "pages_in_flight"}


def open_ledger(config_file: Path) -> Ledger:
    config = load_config(config_file)
    config.state_dir.mkdir(parents=True, exist_ok=True)
    return Ledger(config.db_url)


def add(ledger: Ledger, config_file: Path, name: str, pages: int) -> int:
    """A job whose original really lies in the spool (retry moves and checks it)."""
    config = load_config(config_file)
    spool = config.spool_dir / name
    spool.parent.mkdir(parents=True, exist_ok=True)
    spool.write_bytes(b"original " + name.encode())
    inbox = config.inboxes[0]
    return ledger.add_job(inbox=inbox.key, source_path=str(inbox.path / name), spool_path=str(spool),
                          sha256=name.ljust(64, "0"), size_bytes=100, pages_total=pages).job_id


@pytest.fixture
def seeded(config_file: Path) -> dict[str, int]:
    """Job a: 2 pages (one done, one running on worker w1); job b: 1 page, failed; job c: queued."""
    ledger = open_ledger(config_file)
    try:
        a, b, c = (add(ledger, config_file, "a.pdf", 2), add(ledger, config_file, "b.png", 1),
                   add(ledger, config_file, "c.png", 1))
        ledger.register_worker("w1", host="host", pid=4242, backend="cpu", device_name="cpu", state="busy")
        claimed = ledger.claim_pages("w1", n=2)
        assert [(p.job_id, p.page_no) for p in claimed] == [(a, 1), (a, 2)]
        ledger.complete_page(a, 1, "w1", text="page one", generation_tokens=10, seconds=1.5)
        ledger.record_heartbeat("w1", backend="cpu", active_memory_bytes=1_000_000,
                                peak_memory_bytes=2_000_000, cache_memory_bytes=0,
                                memory_limit_bytes=0, pages_done=1, tokens_per_s=5.0,
                                current_page=f"{a}:2", state="busy", batch=4, pages_in_flight=1)
        ledger.register_worker("w2", host="host", pid=4243, backend="cpu", device_name="cpu", state="busy")
        (page,) = ledger.claim_pages("w2", n=1)
        assert page.job_id == b
        outcome = ledger.fail_page(b, 1, "w2", "unreadable page", retryable=False)
        assert outcome.job_failed
        ledger.set_meta("model_status", "unavailable: no network")
    finally:
        ledger.close()
    return {"a": a, "b": b, "c": c}


# -- status ---------------------------------------------------------------------------------------

def test_status_without_daemon_or_ledger(config_file: Path):
    result = invoke(config_file, "status")
    assert result.exit_code == 3, result.output      # like `systemctl status`: not running
    assert "not running" in result.output
    assert "queued 0" in result.output
    assert not (config_file.parent / "state").exists()  # status must not create the state dir


def test_status_without_daemon_still_shows_the_queue(config_file: Path, seeded):
    result = invoke(config_file, "status")
    assert result.exit_code == 3, result.output
    assert "not running" in result.output
    assert "failed 1" in result.output  # jobs
    # the stopped daemon's last word on the model is stale news: not shown (the hostile trial)
    assert "model unavailable" not in result.output
    assert "w1" in result.output and "4242" in result.output


def test_status_json_keys(config_file: Path, seeded):
    result = invoke(config_file, "status", "--json")
    assert result.exit_code == 3, result.output      # the JSON is still printed
    s = json.loads(result.output)
    assert s["daemon"] == {"running": False, "pid": None}
    assert s["paused"] is False and s["paused_since"] is None
    assert {"backend", "name", "memory_bytes"} <= set(s["device"])
    assert s["jobs"]["queued"] == 1 and s["jobs"]["running"] == 1 and s["jobs"]["failed"] == 1
    assert s["jobs"]["done"] == 0 and s["jobs"]["duplicate"] == 0
    assert s["pages"] == {"queued": 1, "running": 1, "done": 1, "failed": 1}
    w1 = next(w for w in s["workers"] if w["id"] == "w1")
    assert WORKER_KEYS <= set(w1)
    assert w1["pid"] == 4242 and w1["active_memory_bytes"] == 1_000_000
    assert w1["peak_memory_bytes"] == 2_000_000 and w1["current_page"] == f"{seeded['a']}:2"
    assert w1["pages_done"] == 1 and 0 <= w1["heartbeat_age_s"] < 60
    assert (w1["batch"], w1["pages_in_flight"]) == (4, 1)
    assert (s["pages_in_flight"], s["pages_claimed_waiting"], s["tokens_per_s"]) == (1, 0, 5.0)
    assert "pages_per_min" in s and s["eta_s"] is None        # no ETA with the daemon down
    assert s["model_status"] is None and s["model"]["status"] is None
    assert not any("model unavailable" in w for w in s["warnings"])
    assert any("daemon not running" in w for w in s["warnings"])


def test_status_with_a_running_daemon_uses_its_device(config_file: Path, seeded):
    config = load_config(config_file)
    ledger = open_ledger(config_file)
    try:
        ledger.set_meta("device", json.dumps({"backend": "metal", "name": "Apple M4 Pro",
                                              "memory_bytes": 48 * 2**30}))
        # as a daemon from before batching recorded it: no batch in its plan
        ledger.set_meta("pool_plan", json.dumps({"count": 2, "reason": "cap 2 on one Metal GPU"}))
    finally:
        ledger.close()
    with DaemonLock(config.lock_path):  # this test process plays the daemon
        s = json.loads(invoke(config_file, "status", "--json").output)
        text = invoke(config_file, "status").output
    assert s["daemon"] == {"running": True, "pid": os.getpid()}
    assert s["device"] == {"backend": "metal", "name": "Apple M4 Pro", "memory_bytes": 48 * 2**30}
    assert not any("daemon not running" in w for w in s["warnings"])
    assert s["pool"] == {"count": 2, "reason": "cap 2 on one Metal GPU", "batch": 1, "batch_reason": ""}
    assert f"running (pid {os.getpid()})" in text and "Apple M4 Pro" in text
    assert s["model_status"] == "unavailable: no network"       # the running daemon's word
    assert any("model unavailable" in w for w in s["warnings"]) and "eta_s" in s
    assert "cap 2 on one Metal GPU" in text and "up to 1 page in flight per worker" in text


def test_status_shows_the_batch_and_what_is_in_flight(config_file: Path):
    """Claimed-ahead pages are `running` in the ledger but not in flight: status says which."""
    config = load_config(config_file)
    ledger = open_ledger(config_file)
    try:
        job = add(ledger, config_file, "big.pdf", 12)
        ledger.set_daemon_info(DaemonInfo(backend="cuda", name="NVIDIA H200", memory_bytes=143 * 10**9,
                                          workers=1, batch=64, reason="one worker per GPU",
                                          batch_reason="auto: 64 fit"))
        ledger.register_worker("g0", host="host", pid=5151, backend="cuda", device_name="H200",
                               state="busy", batch=64)
        claimed = ledger.claim_pages("g0", n=10)
        ledger.record_heartbeat("g0", backend="cuda", active_memory_bytes=12 * 10**9,
                                peak_memory_bytes=13 * 10**9, cache_memory_bytes=0,
                                memory_limit_bytes=142 * 10**9, pages_done=0, tokens_per_s=2345.6,
                                current_page=",".join(f"{p.job_id}:{p.page_no}" for p in claimed),
                                state="busy", batch=8, pages_in_flight=7)
    finally:
        ledger.close()
    with DaemonLock(config.lock_path):
        s = json.loads(invoke(config_file, "status", "--json").output)
        text = invoke(config_file, "status").output
    assert s["pages"] == {"queued": 2, "running": 10, "done": 0, "failed": 0}
    assert (s["pages_in_flight"], s["pages_claimed_waiting"]) == (7, 3)
    assert s["tokens_per_s"] == pytest.approx(2345.6)
    assert s["pool"] == {"count": 1, "reason": "one worker per GPU", "batch": 64,
                         "batch_reason": "auto: 64 fit"}
    [g0] = s["workers"]
    assert (g0["batch"], g0["pages_in_flight"]) == (8, 7)
    assert g0["current_page"] == ",".join(f"{job}:{n}" for n in range(1, 11))
    assert "running 10 (7 in flight, 3 waiting)" in text
    assert "2346 tokens/s" in text and "up to 64 pages in flight per worker: auto: 64 fit" in text
    header, row = text.splitlines()[-2:]
    assert header.split() == ["WORKER", "PID", "BACKEND", "STATE", "HEARTBEAT", "PAGE", "BATCH",
                              "TOK/S", "MEMORY", "PEAK", "DONE"]
    assert f"{job}:1 +9" in row and "7/8" in row and "2346" in row


def test_status_warns_loudly_in_cpu_mode(config_file: Path):
    from ocrd.daemon.device import CPU_WARNING, detect_device
    if detect_device().backend != "cpu":
        pytest.skip("this machine has a GPU backend")
    result = invoke(config_file, "status")
    assert CPU_WARNING in result.output and "WARNING" in result.output


def test_bad_config_is_a_usage_error(tmp_path: Path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[workers]\nbogus = 1\n")
    result = invoke(bad, "status")
    assert result.exit_code == 2
    assert result.output.strip() == "ocrd: workers.bogus: unknown key"


def test_unreadable_ledger_is_one_line_not_a_traceback(config_file: Path):
    state = config_file.parent / "state"
    state.mkdir()
    (state / "ledger.db").write_bytes(b"garbage" * 1000)
    result = invoke(config_file, "jobs")
    assert result.exit_code == 1
    assert result.output.startswith(f"ocrd: the ledger {state / 'ledger.db'} is damaged (file is not a database)")
    assert "ocrd ledger restore" in result.output and result.output.count("\n") == 1


def test_run_refuses_a_bad_config(tmp_path: Path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[[inbox]]\npath = '/x'\n")
    result = invoke(bad, "run")
    assert result.exit_code == 2
    assert result.output.startswith("ocrd: inbox[0].outbox: is required")


def test_config_from_the_environment(config_file: Path, seeded):
    result = invoke(None, "jobs", "--json", env={"OCRD_CONFIG": str(config_file)})
    assert result.exit_code == 0
    assert len(json.loads(result.output)) == 3


# -- jobs / show ----------------------------------------------------------------------------------

def test_jobs_table_and_filters(config_file: Path, seeded):
    result = invoke(config_file, "jobs")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == ["ID", "STATE", "PAGES", "UPDATED", "SOURCE", "ERROR"]
    assert len(lines) == 4
    assert "1/2" in result.output and "a.pdf" in result.output and "unreadable page" in result.output
    failed = invoke(config_file, "jobs", "--state", "failed", "--json")
    rows = json.loads(failed.output)
    assert [r["id"] for r in rows] == [seeded["b"]]
    assert len(json.loads(invoke(config_file, "jobs", "--limit", "1", "--json").output)) == 1
    assert invoke(config_file, "jobs", "--state", "bogus").exit_code == 2


def test_jobs_empty(config_file: Path):
    result = invoke(config_file, "jobs")
    assert result.exit_code == 0 and "no jobs" in result.output
    assert json.loads(invoke(config_file, "jobs", "--json").output) == []


def test_show(config_file: Path, seeded):
    result = invoke(config_file, "show", str(seeded["a"]))
    assert result.exit_code == 0, result.output
    assert "a.pdf" in result.output and "PAGE" in result.output and "EVENT" in result.output
    job = json.loads(invoke(config_file, "show", str(seeded["a"]), "--json").output)
    assert job["id"] == seeded["a"]
    assert [p["page_no"] for p in job["pages"]] == [1, 2]
    assert [p["state"] for p in job["pages"]] == ["done", "running"]
    assert "text" not in job["pages"][0]
    assert job["events"]


def test_show_unknown_job(config_file: Path, seeded):
    result = invoke(config_file, "show", "999")
    assert result.exit_code == 1
    assert "job 999 not found" in result.output
    assert invoke(config_file, "show", "abc").exit_code == 2


# -- retry ----------------------------------------------------------------------------------------

def test_retry_needs_ids_or_failed(config_file: Path):
    result = invoke(config_file, "retry")
    assert result.exit_code == 2
    assert invoke(config_file, "retry", "1", "--failed").exit_code == 2


def test_retry_with_no_ledger_yet(config_file: Path):
    assert invoke(config_file, "retry", "7").exit_code == 1
    result = invoke(config_file, "retry", "--failed")
    assert result.exit_code == 0 and "no failed jobs" in result.output
    assert not (config_file.parent / "state").exists()


def test_retry_by_id_requeues_only_failed_pages(config_file: Path, seeded):
    result = invoke(config_file, "retry", str(seeded["b"]))
    assert result.exit_code == 0, result.output
    assert f"job {seeded['b']}" in result.output
    ledger = open_ledger(config_file)
    try:
        assert ledger.job(seeded["b"]).state == "queued"
        pages = ledger.show_job(seeded["b"])["pages"]
        assert [p["state"] for p in pages] == ["queued"]
        assert ledger.job(seeded["a"]).state == "running"  # untouched
    finally:
        ledger.close()


def test_retry_unknown_or_not_failed(config_file: Path, seeded):
    result = invoke(config_file, "retry", "999", str(seeded["a"]))
    assert result.exit_code == 1
    assert "job 999: not found" in result.output
    assert f"job {seeded['a']}: is running, not failed" in result.output


def test_retry_all_failed(config_file: Path, seeded):
    result = invoke(config_file, "retry", "--failed")
    assert result.exit_code == 0, result.output
    assert f"job {seeded['b']}" in result.output
    again = invoke(config_file, "retry", "--failed")
    assert again.exit_code == 0 and "no failed jobs" in again.output


# -- submit ---------------------------------------------------------------------------------------

def test_submit_queues_a_real_file(config_file: Path, tmp_path: Path):
    scan = tmp_path / "scan.png"
    Image.new("RGB", (64, 48), "white").save(scan)
    result = invoke(config_file, "submit", str(scan))
    assert result.exit_code == 0, result.output
    assert result.output == f"{scan}: job 1 queued (1 page)\n"  # and no daemon log lines
    ledger = open_ledger(config_file)
    try:
        (job,) = ledger.list_jobs()
        assert job["state"] == "queued" and job["pages_total"] == 1
        assert job["source_path"] == str(scan)
        assert Path(job["spool_path"]).is_file()
    finally:
        ledger.close()
    assert scan.exists()  # outside every inbox: copied, the user's file stays


def test_submit_from_an_inbox_moves_the_file(config_file: Path):
    inbox = load_config(config_file).inboxes[0].path
    inbox.mkdir(parents=True)
    scan = inbox / "scan.png"
    Image.new("RGB", (32, 32), "white").save(scan)
    result = invoke(config_file, "submit", str(scan))
    assert result.exit_code == 0, result.output
    assert not scan.exists()
    assert json.loads(invoke(config_file, "jobs", "--json").output)[0]["state"] == "queued"


def test_submit_nonexistent_path_is_a_usage_error(config_file: Path, tmp_path: Path):
    result = invoke(config_file, "submit", str(tmp_path / "nope.pdf"))
    assert result.exit_code == 2
    assert not (config_file.parent / "state").exists()


def test_submit_a_bad_file_fails(config_file: Path, tmp_path: Path):
    junk = tmp_path / "notes.xyz"
    junk.write_text("not a document")
    result = invoke(config_file, "submit", str(junk))
    assert result.exit_code == 1
    assert "notes.xyz" in result.output and "failed" in result.output


# -- device ---------------------------------------------------------------------------------------

def test_device_json(config_file: Path):
    result = invoke(config_file, "device", "--json")
    assert result.exit_code == 0, result.output
    r = json.loads(result.output)
    assert {"backend", "name", "memory_bytes"} <= set(r["device"])
    assert {"count", "footprint_bytes", "budget_bytes", "cap", "reason", "batch", "batch_reason",
            "recycle_bytes"} <= set(r["pool"])
    assert r["pool"]["count"] >= 1 and r["pool"]["reason"]
    assert r["pool"]["batch"] >= 1 and r["pool"]["batch_reason"]
    assert r["engine"]["configured"] == "auto" and r["engine"]["name"] and r["engine"]["reason"]
    deepseek = r["engine"]["name"] == "mlx-vlm"     # auto: RapidOCR on a CPU with the `cpu` extra
    assert (r["pool"]["recycle_bytes"] > 0) == deepseek
    if r["device"]["backend"] == "cpu":
        assert bool(r["warnings"]) == deepseek      # the CPU warning is about DeepSeek-OCR's speed
    human = invoke(config_file, "device")
    assert "pool" in human.output and r["pool"]["reason"] in human.output
    assert f"engine   {r['engine']['name']}: {r['engine']['reason']}" in human.output
    assert r["pool"]["batch_reason"] in human.output and "in flight per worker" in human.output
    assert ("recycle  a worker past" in human.output) == deepseek


def test_device_names_the_second_memory_figure_by_backend():
    """recommended_bytes is Metal's recommended working set, but free memory on CUDA."""
    from ocrd.cli.reports import render_device
    pool = {"count": 1, "footprint_bytes": 5 * 10**9, "budget_bytes": 100 * 10**9, "cap": 1,
            "reason": "one per GPU", "batch": 64, "batch_reason": "auto", "page_bytes": 120 * 10**6,
            "recycle_bytes": 0, "recycle_reason": ""}

    def report(backend: str, recommended: int) -> dict:
        return {"device": {"backend": backend, "name": "gpu", "memory_bytes": 143 * 10**9,
                           "recommended_bytes": recommended, "cores": 16, "gpus": 1},
                "model": {"path": "m", "mode": "small", "size_bytes": 10, "planned_bytes": 10},
                "measured_peak_bytes": None, "measured_page_bytes": None, "pool": pool,
                "warnings": []}

    cuda = render_device(report("cuda", 140 * 10**9))
    assert "memory   143.0 GB (free 140.0 GB)" in cuda and "working set" not in cuda
    metal = render_device(report("metal", 107 * 10**9))
    assert "memory   143.0 GB (recommended working set 107.0 GB)" in metal
    assert "120.0 MB per page in flight (estimated)" in cuda and "recycle  never" in cuda
    assert "memory   143.0 GB\n" in render_device(report("cpu", 143 * 10**9))


def test_device_uses_config_model_size_and_measured_peak(tmp_path: Path, monkeypatch):
    from cli_support import write_config
    monkeypatch.delenv("OCRD_CONFIG", raising=False)
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "model.safetensors").write_bytes(b"\0" * 1000)
    config_file = write_config(tmp_path, extra=f'[model]\npath = "{model}"\nmode = "tiny"\n'
                                               'engine = "mlx-vlm"\n'   # auto picks RapidOCR on a CPU
                                               '[workers]\ncount = 1\nmemory_budget = "8GB"\n')
    r = json.loads(invoke(config_file, "device", "--json").output)
    assert r["model"]["size_bytes"] == 1000
    assert r["pool"]["count"] == 1 and "as configured" in r["pool"]["reason"]
    assert r["pool"]["budget_bytes"] == 8 * 10**9
    assert r["measured_peak_bytes"] is None

    ledger = open_ledger(config_file)
    try:
        ledger.set_meta(f"footprint_bytes:{model}:tiny", str(2 * 10**9))
    finally:
        ledger.close()
    r = json.loads(invoke(config_file, "device", "--json").output)
    assert r["measured_peak_bytes"] == 2 * 10**9
    assert r["pool"]["footprint_bytes"] > 2 * 10**9  # the measured peak plus headroom
    assert "measured" in invoke(config_file, "device").output
    assert r["measured_page_bytes"] is None

    ledger = open_ledger(config_file)
    try:
        ledger.set_meta(page_key(load_config(config_file).model), str(100 * 10**6))
    finally:
        ledger.close()
    r = json.loads(invoke(config_file, "device", "--json").output)
    assert r["measured_page_bytes"] == 100 * 10**6
    assert r["pool"]["page_bytes"] >= 100 * 10**6 and "measured" in r["pool"]["batch_reason"]
    assert "per page in flight (measured)" in invoke(config_file, "device").output


def test_status_warns_while_ingest_keeps_failing(config_file: Path, seeded):
    config = load_config(config_file)
    ledger = open_ledger(config_file)
    try:
        ledger.set_meta("ingest_problem", json.dumps({"path": "/in/a.pdf", "error": "OSError: No space left",
                                                      "retry_in_s": 20, "files": 3}))
    finally:
        ledger.close()
    with DaemonLock(config.lock_path):  # this test process plays the daemon
        s = json.loads(invoke(config_file, "status", "--json").output)
    assert any("ingest failing for 3 file(s)" in w and "No space left" in w for w in s["warnings"])


def test_status_lists_every_host_of_a_shared_ledger(config_file: Path, seeded):
    """Several daemons on one ledger: each host with its role and the documents it delivers; a
    host unseen for a minute is dead, and so are its workers."""
    config = load_config(config_file)
    here = open_ledger(config_file)
    gpu = Ledger(config.db_url, host="gpu-box")
    try:
        started = gpu.clock()
        here.host_seen(pid=os.getpid(), started_at=started, inboxes=1, workers=0)
        gpu.host_seen(pid=777, started_at=started, inboxes=0, workers=1, backend="cuda",
                      device_name="NVIDIA H200")
        gpu.register_worker("gpu-777-1", host="gpu-box", pid=778, backend="cuda",
                            device_name="NVIDIA H200", state="busy")
        gpu.add_job(inbox="/srv/gpu-inbox", source_path="/srv/gpu-inbox/z.png", spool_path="/spool/z.png",
                    sha256="z" * 64, size_bytes=1, pages_total=1)
        with gpu._engine.begin() as conn:   # last seen 5 minutes ago: the box died
            conn.exec_driver_sql("UPDATE hosts SET seen_at = ? WHERE name = 'gpu-box'",
                                 ((started - timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),))
    finally:
        here.close()
        gpu.close()
    with DaemonLock(config.lock_path):
        s = json.loads(invoke(config_file, "status", "--json").output)
        text = invoke(config_file, "status").output
    hosts = {h["name"]: h for h in s["hosts"]}
    assert s["host"] == config.host_name and set(hosts) == {config.host_name, "gpu-box"}
    assert hosts[config.host_name]["state"] == "running" and hosts["gpu-box"]["state"] == "dead"
    assert hosts[config.host_name]["delivering"] == 2            # a.pdf running, c.png queued
    assert hosts["gpu-box"]["workers"] == 1 and hosts["gpu-box"]["delivering"] == 1   # z.png
    assert [w["state"] for w in s["workers"] if w["host"] == "gpu-box"] == ["dead"]
    assert any(w.startswith("host gpu-box: not seen for") for w in s["warnings"])
    assert "DELIVERING" in text and "gpu-box" in text
    assert any(line.split()[:2] == ["HOST", "WORKER"] for line in text.splitlines())   # a HOST column
    listed = invoke(config_file, "jobs").output.splitlines()
    assert listed[0].split()[-1] == "HOST" and listed[1].split()[-1] == "gpu-box"   # z.png, newest
