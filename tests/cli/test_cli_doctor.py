"""`ocrd doctor`: folders, model, ledger and config checks, each naming its fix."""

from __future__ import annotations

import errno
import json
import os
import sys
from pathlib import Path

import pytest

from cli_support import invoke, write_config
from ocrd.daemon.config import load_config
from ocrd.cli.doctor import (check_device, check_folder, check_free_space, check_model, folder_fix, mlx_fix,
                             run_checks)


def by_name(checks):
    return {c.name: c for c in checks}


def test_good_config_passes(config_file: Path):
    result = invoke(config_file, "doctor")
    assert result.exit_code == 0, result.output
    assert "FAIL" not in result.output
    for name in ("config", "inbox[0].inbox", "inbox[0].outbox", "inbox[0].archive",
                 "inbox[0].failed", "state_dir", "model", "ledger", "daemon", "device"):
        assert name in result.output
    # doctor only probes: nothing was created
    assert not (config_file.parent / "ocr").exists()
    assert not (config_file.parent / "state").exists()


def test_doctor_json(config_file: Path):
    result = invoke(config_file, "doctor", "--json")
    checks = json.loads(result.output)
    assert {"name", "ok", "detail", "fix", "warn"} <= set(checks[0])
    assert all(c["ok"] for c in checks)


def test_unwritable_folder_fails_with_the_fix(tmp_path: Path, monkeypatch):
    monkeypatch.delenv("OCRD_CONFIG", raising=False)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")  # root ignores permissions; a file in the path stops it
    config = write_config(tmp_path, outbox=blocker / "outbox")
    checks = by_name(run_checks(load_config(config)))
    bad = checks["inbox[0].outbox"]
    assert not bad.ok
    assert str(blocker) in bad.detail and "not a folder" in bad.detail
    assert bad.fix
    assert checks["inbox[0].inbox"].ok
    result = invoke(config, "doctor")
    assert result.exit_code == 1
    assert "FAIL" in result.output and "fix:" in result.output


def test_existing_folder_that_is_a_file(tmp_path: Path):
    f = tmp_path / "f"
    f.write_text("")
    check = check_folder("x", f)
    assert not check.ok and "is not a folder" in check.detail


def test_existing_writable_folder(tmp_path: Path):
    check = check_folder("x", tmp_path)
    assert check.ok and check.detail == str(tmp_path)
    assert list(tmp_path.iterdir()) == []  # the probe file is gone


def test_macos_privacy_denial_names_full_disk_access():
    fix = folder_fix(PermissionError(errno.EPERM, "Operation not permitted"),
                     Path.home() / "Documents" / "inbox", "darwin")
    assert "Full Disk Access" in fix and os.path.realpath(sys.executable) in fix  # TCC sees the real binary
    assert "~/Documents" in fix and "iCloud Drive" in fix
    icloud = folder_fix(PermissionError(errno.EACCES, "Permission denied"),
                        Path.home() / "Library" / "Mobile Documents" / "x", "darwin")
    assert "Full Disk Access" in icloud
    for platform in ("linux", "darwin"):  # plain Unix permissions elsewhere
        fix = folder_fix(PermissionError(errno.EACCES, "Permission denied"), Path("/srv/x"), platform)
        assert "Full Disk Access" not in fix and "/srv/x" in fix


def test_model_checks(tmp_path: Path):
    missing = check_model("nobody-here/not-a-real-model-xyz")
    assert missing.ok and missing.warn
    assert "not downloaded yet" in missing.detail and "needs network" in missing.detail

    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    incomplete = check_model(str(folder))
    assert not incomplete.ok and "safetensors" in incomplete.detail
    (folder / "model.safetensors").write_bytes(b"x")
    assert check_model(str(folder)).ok
    assert not check_model(str(tmp_path / "nope")).ok


def test_bad_config_is_a_failed_check(tmp_path: Path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[model]\nmode = 'huge'\n")
    result = invoke(bad, "doctor")
    assert result.exit_code == 1
    assert "FAIL" in result.output and "model.mode" in result.output


def test_corrupt_ledger_fails(config_file: Path):
    state = config_file.parent / "state"
    state.mkdir()
    (state / "ledger.db").write_bytes(b"this is not a database" * 100)
    checks = by_name(run_checks(load_config(config_file)))
    assert not checks["ledger"].ok
    assert checks["ledger"].fix


def test_model_in_the_hugging_face_cache(tmp_path: Path, monkeypatch):
    cache = tmp_path / "hub"
    repo = cache / "models--someone--tiny-ocr"
    snapshot = repo / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    (snapshot / "config.json").write_text("{}")
    (snapshot / "model.safetensors").write_bytes(b"\0" * 2000)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    check = check_model("someone/tiny-ocr")
    assert check.ok and not check.warn
    assert "Hugging Face cache" in check.detail


def _fake_nvidia_smi(tmp_path: Path, line: str = "NVIDIA H200, 570.124.06") -> str:
    """An executable playing nvidia-smi (the command is check_device's argument: a seam)."""
    smi = tmp_path / "nvidia-smi"
    smi.write_text(f"#!/bin/sh\necho '{line}'\n")
    smi.chmod(0o755)
    return str(smi)


def test_device_check_names_the_missing_cuda_extra(tmp_path: Path):
    from ocrd.daemon.device import CUDA_EXTRA_FIX, detect_device, libmlx_build
    if detect_device().backend != "cpu" or libmlx_build() != "mlx-cpu":
        pytest.skip("needs MLX's CPU build alone, as installed here")
    check = check_device(nvidia_smi=_fake_nvidia_smi(tmp_path))
    assert check.ok and check.warn
    assert "nvidia-smi sees 1 NVIDIA GPU(s) (NVIDIA H200) but MLX runs on the CPU" in check.detail
    assert "`cuda` extra" in check.detail and check.fix == CUDA_EXTRA_FIX == ".venv/bin/pip install -e '.[cuda]'"


def test_device_check_without_nvidia_smi_is_the_cpu_warning(tmp_path: Path):
    from ocrd.daemon.device import CPU_WARNING, detect_device
    if detect_device().backend != "cpu":
        pytest.skip("CPU mode only")
    check = check_device(nvidia_smi=str(tmp_path / "no-nvidia-smi"))
    assert check.ok and check.warn and CPU_WARNING in check.detail and not check.fix


def test_mlx_that_does_not_import_names_the_fix():
    no_driver = mlx_fix("libcuda.so.1: cannot open shared object file: No such file or directory")
    assert "NVIDIA driver" in no_driver and "uninstall -y mlx-cuda-13" in no_driver
    assert "--force-reinstall --no-deps 'mlx-cpu==" in no_driver
    gone = mlx_fix("libmlx.so: cannot open shared object file: No such file or directory")
    assert "--force-reinstall --no-deps 'mlx-cpu==" in gone and "mlx-cuda-13==" in gone
    assert mlx_fix("something else") == "check the mlx installation"


def test_free_space_is_checked_where_the_daemon_writes(config_file: Path) -> None:
    config = load_config(config_file)
    assert check_free_space(config, low_bytes=0).detail in ("enough where the daemon writes",) or \
        "GB free" in check_free_space(config, low_bytes=0).detail   # a nearly full CI disk may warn
    # a threshold above any disk's size stands for a full disk
    tight = check_free_space(config, low_bytes=10**18)
    assert tight.ok and tight.warn and "state_dir" in tight.detail and "GB free" in tight.detail
    assert "free space" in [c.name for c in run_checks(config)]
