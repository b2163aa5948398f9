"""Device detection in a child process, the nvidia-smi check, and the heartbeat memory limit.

Everything here runs for real: the probe spawns `python -m ocrd.daemon.device`, and nvidia-smi is
played by small executable scripts (a seam: the command is an argument), never by patching.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from ocrd.daemon.device import (CUDA_EXTRA_FIX, GB, DeviceInfo, cuda_advice, detect_device, libmlx_build,
                                missing_gpu_extra, nvidia_gpus, probe_device)
from ocrd.daemon.engines.mlxvlm import memory_stats

H200 = "NVIDIA H200, 570.124.06"
CPU_BOX = DeviceInfo("cpu", "Xeon", 64 * GB, 64 * GB, 16)


def script(tmp_path: Path, name: str, body: str) -> str:
    """An executable shell script standing in for a program (python, nvidia-smi)."""
    path = tmp_path / name
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)
    return str(path)


# --- probe_device ------------------------------------------------------------------------------

def test_the_child_prints_device_info_as_one_json_line():
    out = subprocess.run([sys.executable, "-m", "ocrd.daemon.device"], capture_output=True, text=True,
                         check=True, timeout=120).stdout
    assert len(out.strip().splitlines()) == 1
    assert DeviceInfo(**json.loads(out)) == detect_device()


def test_probe_matches_detection_in_process():
    with capture_logs() as logs:
        assert probe_device() == detect_device()
    assert not logs


def test_the_probing_process_never_imports_mlx():
    # No mlx.core in the caller: no GPU context there (518 MiB for the supervisor's life on an H200).
    code = ("import sys; from ocrd.daemon.device import probe_device; d = probe_device(); "
            "print(d.backend, 'mlx.core' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         timeout=120).stdout.split()
    assert out == [detect_device().backend, "False"]


@pytest.mark.parametrize("body, reason", [
    ("echo 'ImportError: libcuda.so.1: cannot open shared object file' >&2; exit 1",
     "exited with status 1: ImportError: libcuda.so.1"),
    ("echo 'not json'", "Expecting value"),
    ("exit 0", "printed nothing"),
    ("sleep 30", "timed out"),
])
def test_a_failing_child_falls_back_to_detection_in_process(tmp_path, body, reason):
    python = script(tmp_path, "python", body)
    with capture_logs() as logs:
        assert probe_device(python=python, timeout_s=1.0) == detect_device()
    [event] = logs
    assert event["event"] == "device_probe_failed" and event["log_level"] == "warning"
    assert reason in event["reason"] and "in this process" in event["fallback"]


def test_a_missing_interpreter_falls_back(tmp_path):
    with capture_logs() as logs:
        assert probe_device(python=str(tmp_path / "no-python")) == detect_device()
    assert logs[0]["event"] == "device_probe_failed"


# --- nvidia-smi and the missing extra ----------------------------------------------------------

def test_nvidia_gpus_reads_names_and_driver(tmp_path):
    smi = script(tmp_path, "nvidia-smi", f"echo '{H200}'; echo '{H200}'")
    assert nvidia_gpus(smi) == [("NVIDIA H200", "570.124.06")] * 2


@pytest.mark.parametrize("body", ["echo 'No devices were found'; exit 6", "sleep 30", ""])
def test_nvidia_gpus_none_when_it_fails_hangs_or_lists_nothing(tmp_path, body):
    assert nvidia_gpus(script(tmp_path, "nvidia-smi", body), timeout_s=1.0) == []


def test_no_nvidia_smi_means_no_gpus(tmp_path):
    assert nvidia_gpus(str(tmp_path / "nvidia-smi")) == []


def test_a_gpu_that_mlx_leaves_unused_names_the_cuda_extra(tmp_path):
    smi = script(tmp_path, "nvidia-smi", f"echo '{H200}'")
    if libmlx_build() != "mlx-cpu":
        pytest.skip("needs MLX's CPU build alone, as installed here")
    line = missing_gpu_extra(CPU_BOX, nvidia_smi=smi)
    assert line == ("nvidia-smi sees 1 NVIDIA GPU(s) (NVIDIA H200) but MLX runs on the CPU: the `cuda` "
                    f"extra (MLX's CUDA build) is not installed; fix: {CUDA_EXTRA_FIX}")
    assert "\n" not in line


def test_no_advice_when_mlx_uses_the_gpu_or_none_is_seen(tmp_path):
    smi = script(tmp_path, "nvidia-smi", f"echo '{H200}'")
    assert missing_gpu_extra(DeviceInfo("cuda", "NVIDIA H200", 150 * GB, 149 * GB, 16, 1), smi) is None
    assert missing_gpu_extra(CPU_BOX, str(tmp_path / "absent")) is None


def test_cuda_build_installed_but_overwritten_by_the_cpu_build():
    what, fix = cuda_advice([("NVIDIA H200", "580.95")], "0.32.4", "mlx-cpu")
    assert "mlx-cpu's libmlx.so replaced mlx-cuda-13's" in what
    assert fix == ".venv/bin/pip install --force-reinstall --no-deps mlx-cuda-13==0.32.4"


def test_cuda_build_loaded_with_an_old_driver():
    what, fix = cuda_advice([("Tesla T4", "550.54.15")], "0.32.4", "mlx-cuda-13")
    assert "driver 550.54.15 is older" in what and "580" in fix
    what, fix = cuda_advice([("Tesla T4", "580.95")], "0.32.4", "mlx-cuda-13")
    assert "although mlx-cuda-13 0.32.4 is installed" in what and "is_available" in fix


@pytest.mark.skipif(sys.platform != "linux", reason="mlx-cpu / mlx-cuda-13 are Linux wheels")
def test_the_installed_libmlx_matches_the_backend_mlx_runs_on():
    assert libmlx_build() == {"cpu": "mlx-cpu", "cuda": "mlx-cuda-13"}[detect_device().backend]


# --- heartbeat memory limit --------------------------------------------------------------------

def test_memory_limit_is_mlx_own_limit():
    import mlx.core as mx

    limit = memory_stats()["memory_limit_bytes"]
    assert limit == mx.get_memory_limit() > 0   # CPU build: 0.8 of RAM; H200: 142.6 GB
