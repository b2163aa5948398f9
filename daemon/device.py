"""Which device MLX runs on, and how many persistent workers fit on it.

The pool rule (one line in every PoolPlan.reason): count = clamp(floor(budget / footprint), 1, cap).
The web app this replaces ran unbounded and ran GPU memory out; here the budget is the limit.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .engine import model_size_bytes
from .modes import MODES

if TYPE_CHECKING:
    from .config import Config, ModelConfig

GB = 10**9
CPU_WARNING = ("CPU mode: no Metal/CUDA device; OCR will run roughly 10-50x slower than on a GPU "
               "(expect minutes per page with DeepSeek-OCR)")
DEFAULT_MODEL_BYTES = 4 * GB   # DeepSeek-OCR-8bit when its size can't be read from disk
MEASURED_HEADROOM = 1.2
RECYCLE_FACTOR = 2.0           # active memory past this x footprint is a leak: replace the worker
METAL_BUDGET_SHARE = 0.8       # of macOS's recommended working set: leave room for the desktop
CUDA_BUDGET_SHARE = 0.85       # of each GPU's memory
CPU_BUDGET_SHARE = 0.6         # of physical RAM: the OS, page cache and other programs need the rest
CPU_CORES_PER_WORKER = 4       # MLX's CPU kernels already use several threads per process


@dataclass(frozen=True)
class DeviceInfo:
    backend: str            # "metal" | "cuda" | "cpu"
    name: str
    memory_bytes: int
    recommended_bytes: int  # what the backend says one process may use well (Metal working set)
    cores: int
    gpus: int = 0


@dataclass(frozen=True)
class PoolPlan:
    """Every sizing number the daemon uses, each with the one-line reason that chose it."""
    count: int                 # worker processes
    footprint_bytes: int       # one worker's memory (estimated or measured)
    budget_bytes: int
    cap: int
    reason: str                # why `count`
    batch: int = 1             # pages one worker decodes at once
    batch_reason: str = ""
    recycle_bytes: int = 0     # a worker whose active memory passes this is replaced; 0: never
    recycle_reason: str = ""


def detect_device(mx_module: Any = None) -> DeviceInfo:
    """Ask MLX what it runs on. `mx_module` stands in for mlx.core in tests (fake device infos)."""
    if mx_module is None:
        import mlx.core as mx_module
    mx = mx_module
    cores = os.cpu_count() or 1
    if _available(mx, "metal"):
        info = _info(mx)
        memory = int(info.get("memory_size") or _physical_ram())
        recommended = int(info.get("max_recommended_working_set_size") or memory * 3 // 4)
        return DeviceInfo("metal", str(info.get("device_name") or "Apple GPU"), memory, recommended,
                          cores, gpus=1)
    if _available(mx, "cuda"):
        info = _info(mx)
        memory = int(info.get("total_memory") or 0)
        gpus = 1
        try:
            gpus = max(1, int(mx.device_count(mx.gpu)))
        except Exception:
            pass
        return DeviceInfo("cuda", str(info.get("device_name") or "NVIDIA GPU"), memory,
                          int(info.get("free_memory") or memory), cores, gpus=gpus)
    info = _info(mx)
    ram = _physical_ram()
    name = str(info.get("device_name") or platform.processor() or platform.machine() or "cpu")
    return DeviceInfo("cpu", name, ram, ram, cores, gpus=0)


def _available(mx: Any, backend: str) -> bool:
    try:
        return bool(getattr(mx, backend).is_available())
    except Exception:   # a build without that backend has no such module
        return False


def _info(mx: Any) -> dict[str, Any]:
    try:
        return dict(mx.device_info())
    except Exception:
        return {}


def _physical_ram() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def plan_pool(device: DeviceInfo, *, model_bytes: int, mode: str, count: int | None = None,
              budget: int | float | None = None, measured_peak_bytes: int | None = None) -> PoolPlan:
    """Size the worker pool: clamp(floor(budget / footprint), 1, cap), or an explicit `count`
    lowered to what the budget holds; one page at a time per worker; a worker is recycled past
    RECYCLE_FACTOR x its footprint. Each reason says which rule decided, in one line."""
    if measured_peak_bytes:
        footprint = int(measured_peak_bytes * MEASURED_HEADROOM)
        what = f"measured peak {_gb(measured_peak_bytes)} x {MEASURED_HEADROOM}"
    else:
        footprint = model_bytes + MODES.get(mode, MODES["gundam"]).reserve_bytes
        what = f"model {_gb(model_bytes)} + {mode} reserve {_gb(footprint - model_bytes)}"
    budget_bytes, budget_how = _budget(device, budget)
    cap, cap_why = _cap(device)
    fits = budget_bytes // max(footprint, 1)
    head = f"budget {_gb(budget_bytes)} ({budget_how}) / footprint {_gb(footprint)} ({what}) = {fits}"
    chosen, reason = _count(count, fits, cap, cap_why, head)
    recycle = int(footprint * RECYCLE_FACTOR)
    return PoolPlan(chosen, footprint, budget_bytes, cap, reason,
                    batch=1, batch_reason="1: one page at a time per worker",
                    recycle_bytes=recycle,
                    recycle_reason=f"{_gb(recycle)}: {RECYCLE_FACTOR:g} x footprint {_gb(footprint)}")


def _count(count: int | None, fits: int, cap: int, cap_why: str, head: str) -> tuple[int, str]:
    if count is not None:
        if count <= max(fits, 1):
            return count, f"{count} as configured; {head}"
        lowered = max(fits, 1)
        return lowered, f"configured count {count} lowered to {lowered}: {head}"
    chosen = min(max(fits, 1), cap)
    if fits < 1:
        tail = ", raised to 1 (one worker even if it does not fit: expect swapping or OOM)"
    elif fits > cap:
        tail = f", capped at {cap} ({cap_why})"
    else:
        tail = f" (cap {cap}: {cap_why})"
    return chosen, head + tail


def _budget(device: DeviceInfo, budget: int | float | None) -> tuple[int, str]:
    if isinstance(budget, float):
        return int(device.memory_bytes * budget), f"{budget:g} of {_gb(device.memory_bytes)}"
    if isinstance(budget, int):
        return budget, "configured"
    if device.backend == "metal":
        return (int(device.recommended_bytes * METAL_BUDGET_SHARE),
                f"{METAL_BUDGET_SHARE:g} of the {_gb(device.recommended_bytes)} Metal working set")
    if device.backend == "cuda":
        gpus = max(device.gpus, 1)
        return (int(device.memory_bytes * CUDA_BUDGET_SHARE * gpus),
                f"{CUDA_BUDGET_SHARE:g} of {gpus} x {_gb(device.memory_bytes)} GPU memory")
    return int(device.memory_bytes * CPU_BUDGET_SHARE), f"{CPU_BUDGET_SHARE:g} of {_gb(device.memory_bytes)} RAM"


def _cap(device: DeviceInfo) -> tuple[int, str]:
    if device.backend == "metal":
        return 2, "one Metal GPU: more processes add memory, not speed; the second hides render/IO gaps"
    if device.backend == "cuda":
        gpus = max(device.gpus, 1)
        return gpus, f"{gpus} CUDA GPU(s): one worker each; batches, not processes, fill a GPU"
    cap = max(1, device.cores // CPU_CORES_PER_WORKER)
    return cap, (f"CPU: {device.cores} cores // {CPU_CORES_PER_WORKER}, since each worker's MLX "
                 f"kernels already use several threads")


def footprint_key(model: ModelConfig) -> str:
    """The ledger meta key under which the peak memory measured on real pages is kept."""
    return f"footprint_bytes:{model.path}:{model.mode}"


def plan_for_config(device: DeviceInfo, config: Config, measured_peak_bytes: int | None = None) -> PoolPlan:
    """`plan_pool` with the config's model and [workers] settings (the daemon and `ocrd device`)."""
    return plan_pool(device, model_bytes=model_size_bytes(config.model.path) or DEFAULT_MODEL_BYTES,
                     mode=config.model.mode, count=config.workers.count,
                     budget=config.workers.memory_budget, measured_peak_bytes=measured_peak_bytes)


def _gb(n: int) -> str:
    return f"{n / GB:.1f} GB"


def describe(device: DeviceInfo) -> str:
    """One line for logs and `ocrd device`."""
    mem = f"{_gb(device.memory_bytes)}"
    if device.backend == "metal":
        mem += f" (recommended working set {_gb(device.recommended_bytes)})"
    return f"{device.backend}: {device.name}, {mem}, {device.cores} CPU cores" + (
        f", {device.gpus} GPU(s)" if device.backend == "cuda" else "")
