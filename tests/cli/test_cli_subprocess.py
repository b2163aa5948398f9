"""The installed `ocrd` console script, run for real."""

from __future__ import annotations

import json
import os
import signal
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from cli_support import OCRD

pytestmark = pytest.mark.skipif(not OCRD.exists(), reason=f"{OCRD} not installed")


def run(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if k != "OCRD_CONFIG"} | (env or {})
    return subprocess.run([str(OCRD), *args], capture_output=True, text=True, env=full_env,
                          timeout=timeout, check=False)


def test_help_is_fast_and_lists_every_command():
    result = run("--help")
    assert result.returncode == 0
    for command in ("run", "status", "pause", "resume", "retry", "submit", "jobs", "show", "device",
                    "service", "doctor"):
        assert f"  {command} " in result.stdout
    # no mlx at CLI start: the group must not import the heavy modules
    probe = subprocess.run([sys.executable, "-c", "import sys, ocrd.cli.main; "
                            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
                            "('mlx', 'mlx_vlm', 'sqlalchemy', 'transformers')))"],
                           capture_output=True, text=True, check=True)
    assert probe.stdout.strip() == "[]"


def test_every_command_has_help():
    for command in ("run", "status", "pause", "resume", "retry", "submit", "jobs", "show", "device",
                    "service", "doctor"):
        result = run(command, "--help")
        assert result.returncode == 0, command
        assert len(result.stdout.splitlines()[2].strip()) > 10, command  # a real description


def test_status_json_with_no_daemon(config_file: Path):
    result = run("--config", str(config_file), "status", "--json")
    assert result.returncode == 3, result.stderr    # not running, and the JSON still printed
    s = json.loads(result.stdout)
    assert s["daemon"] == {"running": False, "pid": None}
    assert s["jobs"]["queued"] == 0 and s["workers"] == []
    assert {"backend", "name", "memory_bytes"} <= set(s["device"])


def test_status_honours_ocrd_config(config_file: Path):
    result = run("status", "--json", env={"OCRD_CONFIG": str(config_file)})
    assert result.returncode == 3, result.stderr
    assert json.loads(result.stdout)["state_dir"] == str(config_file.parent / "state")


def test_bad_config_exits_2_with_one_line(tmp_path: Path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[model]\nmax_tokens = "many"\n')
    result = run("--config", str(bad), "status")
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith("ocrd: model.max_tokens:")


def test_status_watch_json_until_ctrl_c(config_file: Path):
    env = {k: v for k, v in os.environ.items() if k != "OCRD_CONFIG"}
    proc = subprocess.Popen([str(OCRD), "--config", str(config_file), "status", "--watch", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        first = json.loads(proc.stdout.readline())   # blocks until the first refresh
        second = json.loads(proc.stdout.readline())  # and the next one, 2 s later
        assert first["daemon"]["running"] is False and second["jobs"] == first["jobs"]
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
        assert "Traceback" not in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()


def test_module_entry_point_runs():
    result = subprocess.run([sys.executable, "-m", "ocrd.cli.main", "--help"],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0 and "Usage: ocrd" in result.stdout


def test_service_dry_run_subprocess(config_file: Path, tmp_path: Path):
    home = tmp_path / "home"
    home.mkdir()
    result = run("--config", str(config_file), "service", "install", "--dry-run", "--platform", "linux",
                 env={"HOME": str(home)})
    assert result.returncode == 0, result.stderr
    assert f"ExecStart={OCRD} --config {config_file} run" in result.stdout
    assert "systemctl --user enable --now ocrd.service" in result.stdout
    assert list(home.iterdir()) == []


def test_status_sees_a_real_daemon(tmp_path: Path):
    """`ocrd run` for real (~5 s: a worker process imports mlx-vlm), with a model path that cannot
    load, so status must show the daemon up, its device, and the model problem loudly. It is started
    with the systemd unit's own ExecStart line, so the service's command line is proven to work."""
    from cli_support import write_config
    from helpers import wait_for

    config = write_config(tmp_path, extra=f'[model]\npath = "{tmp_path / "no-model"}"\n'
                                           'engine = "mlx-vlm"\n'   # auto picks RapidOCR on a CPU
                                           '[workers]\ncount = 1\n')
    env = {k: v for k, v in os.environ.items() if k != "OCRD_CONFIG"}
    from ocrd.cli.service import program_argv, render_unit

    unit = render_unit(program=program_argv(), config_path=config, working_dir=tmp_path)
    exec_start = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    argv = shlex.split(exec_start.removeprefix("ExecStart=").replace("%%", "%"))
    assert argv[-1] == "run"
    daemon = subprocess.Popen(argv, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, env=env)
    try:
        def status():
            out = run("--config", str(config), "status", "--json")
            s = json.loads(out.stdout) if out.returncode == 0 else {}
            return s if s.get("daemon", {}).get("running") and s.get("model_status") not in (None, "loading") else None

        s = wait_for(status, timeout=60, interval=0.5, message="the daemon to report its model status")
        assert s["daemon"]["pid"] == daemon.pid
        assert s["device"]["backend"] in ("cpu", "metal", "cuda") and s["device"]["name"]
        assert s["model_status"] != "ok"
        assert any(w.startswith("model ") for w in s["warnings"])
        text = run("--config", str(config), "status").stdout
        assert f"running (pid {daemon.pid})" in text and "WARNING  model" in text
    finally:
        daemon.terminate()
        try:
            daemon.wait(timeout=60)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()
    after = run("--config", str(config), "status", "--json")
    assert after.returncode == 3 and json.loads(after.stdout)["daemon"]["running"] is False
