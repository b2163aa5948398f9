"""Device detection through fake mlx.core stand-ins, and the pool-size rule."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from ocrd.daemon.device import (CPU_WARNING, GB, DeviceInfo, PoolPlan, describe, detect_device, plan_pool,
                                keep_compiled_kernels, recommended_label)
from ocrd.daemon.engines.weights import model_size_bytes


def fake_mx(metal: bool = False, cuda: bool = False, info: dict | None = None, gpus: int = 0):
    """A stand-in for mlx.core with the attributes detect_device reads."""
    return SimpleNamespace(
        metal=SimpleNamespace(is_available=lambda: metal),
        cuda=SimpleNamespace(is_available=lambda: cuda),
        device_info=lambda: dict(info or {}),
        gpu="gpu", device_count=lambda kind: gpus,
    )


def mac(memory_gb: float, recommended_gb: float) -> DeviceInfo:
    return detect_device(fake_mx(metal=True, info={
        "device_name": "Apple M-test", "memory_size": int(memory_gb * GB),
        "max_recommended_working_set_size": int(recommended_gb * GB)}))


def cpu_box(cores: int, memory_gb: float) -> DeviceInfo:
    return DeviceInfo("cpu", "Xeon", int(memory_gb * GB), int(memory_gb * GB), cores)


# --- detect_device ----------------------------------------------------------------------------

def test_detects_metal():
    d = mac(64, 48)
    assert (d.backend, d.name, d.memory_bytes, d.recommended_bytes, d.gpus) == (
        "metal", "Apple M-test", 64 * GB, 48 * GB, 1)
    assert d.cores >= 1


def test_detects_cuda():
    d = detect_device(fake_mx(cuda=True, gpus=2, info={
        "device_name": "NVIDIA H100 80GB HBM3", "total_memory": 80 * GB, "free_memory": 79 * GB}))
    assert (d.backend, d.name, d.memory_bytes, d.gpus) == ("cuda", "NVIDIA H100 80GB HBM3", 80 * GB, 2)


def test_falls_back_to_cpu_with_physical_ram():
    d = detect_device(fake_mx(info={"device_name": "AMD EPYC", "architecture": "x86_64"}))
    assert d.backend == "cpu" and d.name == "AMD EPYC" and d.gpus == 0
    assert d.memory_bytes > GB / 2


def test_module_without_backends_is_cpu():
    d = detect_device(SimpleNamespace(device_info=lambda: {}))
    assert d.backend == "cpu" and d.name


def test_real_mlx_on_this_machine_is_cpu():
    d = detect_device()
    assert d.backend == "cpu" and d.memory_bytes > 0 and d.cores >= 1
    assert "cpu" in describe(d)


def test_describe_names_recommended_bytes_per_backend():
    # Metal's figure is macOS's recommended working set; CUDA's is the free memory at detection.
    assert "(recommended working set 48.0 GB)" in describe(mac(64, 48))
    cuda = detect_device(fake_mx(cuda=True, gpus=1, info={
        "device_name": "NVIDIA H200", "total_memory": 150 * GB, "free_memory": 149 * GB}))
    line = describe(cuda)
    assert "150.0 GB (free 149.0 GB)" in line and "working set" not in line and "1 GPU(s)" in line
    assert "(" not in describe(cpu_box(8, 32))
    assert [recommended_label(b) for b in ("metal", "cuda", "cpu")] == ["recommended working set", "free", ""]


def test_cpu_warning_is_loud_and_one_line():
    assert "CPU" in CPU_WARNING and "slower" in CPU_WARNING and "\n" not in CPU_WARNING


# --- plan_pool --------------------------------------------------------------------------------

def test_8gb_mac_with_4gb_model_gets_one_worker():
    p = plan_pool(mac(8, 5.3), model_bytes=4 * GB, mode="gundam")
    assert isinstance(p, PoolPlan) and p.count == 1
    assert p.budget_bytes < p.footprint_bytes and "raised to 1" in p.reason


def test_64gb_mac_gets_one_worker_that_batches():
    # One GPU, one worker: pages in flight, not processes, fill it (DESIGN.md, "Batches").
    p = plan_pool(mac(64, 48), model_bytes=4 * GB, mode="gundam")
    assert p.count == 1 and p.cap == 1
    assert "capped at 1" in p.reason and "Metal" in p.reason
    assert p.budget_bytes == int(48 * GB * 0.8)
    # 38.4 GB - 8.5 GB footprint leaves room for 49 more pages of 0.6 GB: 50
    assert p.batch == 50 and p.tune_batch and p.batch_start == 50 and "auto: up to 50" in p.batch_reason


def test_16_core_cpu_box():
    p = plan_pool(cpu_box(16, 64), model_bytes=4 * GB, mode="gundam")
    # budget 0.6 * 64 GB = 38.4 GB fits 4 workers of 8.5 GB; 16 cores // 4 threads-worth = cap 4
    assert p.count == 4 and p.cap == 4
    assert "38.4 GB" in p.reason and "16 cores // 4" in p.reason and "(cap 4:" in p.reason
    # 9.6 GB each - 8.5 GB leaves room for one more page: 2, under the CPU's 8, tuned from 1
    assert (p.batch, p.batch_start) == (2, 1) and "CPU" in p.batch_reason


def test_small_cpu_box_is_limited_by_memory():
    p = plan_pool(cpu_box(64, 16), model_bytes=4 * GB, mode="tiny")
    assert p.count == 2 and "cap 16" in p.reason    # 9.6 GB / 4.75 GB


def test_cuda_one_worker_per_gpu():
    d = DeviceInfo("cuda", "H100", 80 * GB, 79 * GB, 32, gpus=4)
    p = plan_pool(d, model_bytes=4 * GB, mode="base")
    assert p.count == 4 and p.cap == 4


def test_explicit_count_above_budget_is_lowered():
    p = plan_pool(cpu_box(16, 64), model_bytes=4 * GB, mode="gundam", count=20)
    assert p.count == 4 and "configured count 20 lowered to 4" in p.reason


def test_explicit_count_may_exceed_the_cap_within_budget():
    p = plan_pool(mac(64, 48), model_bytes=4 * GB, mode="gundam", count=3)
    assert p.count == 3 and "as configured" in p.reason


def test_explicit_count_never_below_one():
    p = plan_pool(mac(8, 5.3), model_bytes=4 * GB, mode="gundam", count=3)
    assert p.count == 1 and "lowered to 1" in p.reason


def test_explicit_count_zero_plans_no_worker():
    # a host that only ingests and delivers (issue 12): no worker, and no division by zero
    p = plan_pool(cpu_box(16, 64), model_bytes=4 * GB, mode="gundam", count=0)
    assert p.count == 0 and "0 as configured" in p.reason


def test_budget_as_fraction_and_bytes():
    d = cpu_box(64, 100)
    assert plan_pool(d, model_bytes=4 * GB, mode="base", budget=0.5).budget_bytes == 50 * GB
    p = plan_pool(d, model_bytes=4 * GB, mode="base", budget=12 * GB)
    assert p.budget_bytes == 12 * GB and p.count == 2     # 12 / 5.5


def test_measured_peak_replaces_the_estimate():
    p = plan_pool(cpu_box(64, 100), model_bytes=4 * GB, mode="gundam", measured_peak_bytes=10 * GB)
    assert p.footprint_bytes == 12 * GB and "measured peak" in p.reason


@pytest.mark.parametrize("mode", ["tiny", "small", "base", "large", "gundam"])
def test_bigger_modes_never_need_less(mode):
    small = plan_pool(cpu_box(8, 32), model_bytes=GB, mode="tiny").footprint_bytes
    assert plan_pool(cpu_box(8, 32), model_bytes=GB, mode=mode).footprint_bytes >= small


# --- model_size_bytes -------------------------------------------------------------------------

def test_model_size_of_a_local_dir(tmp_path):
    (tmp_path / "model-1.safetensors").write_bytes(b"x" * 1000)
    (tmp_path / "model-2.safetensors").write_bytes(b"x" * 500)
    (tmp_path / "config.json").write_text("{}")
    assert model_size_bytes(str(tmp_path)) == 1500


def test_model_size_of_the_tiny_model(tiny_model):
    assert 100_000 < model_size_bytes(str(tiny_model)) < 5_000_000


def test_model_size_unknown(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    assert model_size_bytes(str(tmp_path / "missing")) is None
    assert model_size_bytes("nobody-here/no-such-model") is None
    assert model_size_bytes(str(tmp_path)) is None      # a dir without weights


def test_model_size_from_the_hf_cache(tmp_path, monkeypatch):
    # The cache layout huggingface_hub reads offline: refs/main -> snapshots/<rev>/ -> blobs.
    repo = tmp_path / "models--acme--tiny-ocr"
    snap = repo / "snapshots" / "abc123"
    (repo / "blobs").mkdir(parents=True)
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    (repo / "blobs" / "w").write_bytes(b"y" * 2048)
    (snap / "model.safetensors").symlink_to(repo / "blobs" / "w")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    assert model_size_bytes("acme/tiny-ocr") == 2048


# --- batch: pages in flight per worker ----------------------------------------------------------

def test_h200_batch_is_sized_by_memory_and_capped():
    d = DeviceInfo("cuda", "H200", 141 * GB, 140 * GB, 16, gpus=1)
    p = plan_pool(d, model_bytes=int(6.67 * GB), mode="small")
    assert (p.count, p.batch, p.batch_start, p.tune_batch) == (1, 128, 64, True)
    assert "at most 128 on GPU" in p.batch_reason and "estimated" in p.batch_reason
    assert p.recycle_bytes == int((p.footprint_bytes + 127 * p.page_bytes) * 2)


def test_configured_batch_is_kept_or_lowered_to_what_fits():
    d = DeviceInfo("cuda", "small GPU", 16 * GB, 15 * GB, 8, gpus=1)
    kept = plan_pool(d, model_bytes=4 * GB, mode="small", batch=4)
    assert (kept.batch, kept.tune_batch) == (4, False) and "4 as configured" in kept.batch_reason
    # 13.6 GB budget - 5 GB footprint = room for 24 more pages of 0.35 GB: 25
    lowered = plan_pool(d, model_bytes=4 * GB, mode="small", batch=64)
    assert lowered.batch == 25 and "configured batch 64 lowered to 25" in lowered.batch_reason


def test_measured_page_memory_replaces_the_estimate():
    d = DeviceInfo("cuda", "H200", 141 * GB, 140 * GB, 16, gpus=1)
    p = plan_pool(d, model_bytes=int(6.67 * GB), mode="small", measured_page_bytes=2 * GB)
    assert p.page_bytes == int(2 * GB * 1.2) and "measured" in p.batch_reason
    assert p.batch == (p.budget_bytes - p.footprint_bytes) // p.page_bytes + 1


def test_no_room_for_a_second_page_means_one():
    p = plan_pool(mac(8, 5.3), model_bytes=4 * GB, mode="gundam")
    assert p.batch == 1 and p.batch_start == 1


# -- CUDA's run-time compiled kernels kept in the state dir --------------------------------------

def test_cuda_kernels_are_cached_in_the_state_dir_per_mlx_version_and_gpu_model(tmp_path) -> None:
    h100 = DeviceInfo("cuda", "NVIDIA H100 80GB HBM3", 80 * GB, 79 * GB, 16, gpus=1)
    old = tmp_path / "cache" / "mlx-ptx" / "0.29.0" / "nvidia-h100-80gb-hbm3"
    old.mkdir(parents=True)
    environ: dict[str, str] = {}
    path = keep_compiled_kernels(tmp_path, h100, mlx_version="0.32.4", environ=environ)
    assert path == tmp_path / "cache" / "mlx-ptx" / "0.32.4" / "nvidia-h100-80gb-hbm3" and path.is_dir()
    assert environ == {"MLX_PTX_CACHE_DIR": str(path)}
    assert not old.parent.exists()                     # an older MLX's kernels are dropped
    h200 = DeviceInfo("cuda", "NVIDIA H200", 141 * GB, 140 * GB, 16, gpus=1)
    other: dict[str, str] = {}
    assert keep_compiled_kernels(tmp_path, h200, mlx_version="0.32.4", environ=other).name == "nvidia-h200"
    assert path.is_dir()                               # another GPU model's folder beside it stays


def test_kernel_cache_leaves_metal_cpu_and_a_user_s_own_setting_alone(tmp_path) -> None:
    for device in (DeviceInfo("metal", "Apple M3 Max", 64 * GB, 48 * GB, 16, gpus=1), cpu_box(2, 8)):
        environ: dict[str, str] = {}
        assert keep_compiled_kernels(tmp_path, device, mlx_version="0.32.4", environ=environ) is None
        assert environ == {}
    h100 = DeviceInfo("cuda", "NVIDIA H100", 80 * GB, 79 * GB, 16, gpus=1)
    mine = {"MLX_PTX_CACHE_DIR": "/data/ptx"}
    assert keep_compiled_kernels(tmp_path, h100, mlx_version="0.32.4", environ=mine) is None
    assert mine == {"MLX_PTX_CACHE_DIR": "/data/ptx"} and not (tmp_path / "cache").exists()
    (tmp_path / "file").write_text("")                 # a state dir it can't make folders in: MLX's default
    assert keep_compiled_kernels(tmp_path / "file", h100, mlx_version="0.32.4", environ={}) is None
