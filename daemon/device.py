"""Which device MLX runs on, and how many persistent workers fit on it.

The pool rule (one line in every PoolPlan.reason): count = clamp(floor(budget / footprint), 1, cap).
The web app this replaces ran unbounded and ran GPU memory out; here the budget is the limit.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
import sys
from collections.abc import MutableMapping
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import structlog

from .engines.weights import model_size_bytes
from .engines.choice import LINE_ENGINE_BYTES, SERVER_ENGINES
from .lifeline import child_argv
from .modes import MODES

if TYPE_CHECKING:
    from .config import Config, ModelConfig

GB = 10**9
CPU_WARNING = ("CPU mode: no Metal/CUDA device; OCR will run roughly 10-50x slower than on a GPU "
               "(expect minutes per page with DeepSeek-OCR)")
DEFAULT_MODEL_BYTES = 4 * GB   # DeepSeek-OCR-8bit when its size can't be read from disk
MEASURED_HEADROOM = 1.2
MAX_BATCH = 128                # pages in flight per GPU worker at most (H200: +10% from 64 to 128)
CPU_MAX_BATCH = 8
GPU_BATCH_START = 64             # H200: every doubling up to 64 gained 47-65%; tuning goes on from here
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
    recommended_bytes: int  # Metal: recommended working set; CUDA: free memory; CPU: RAM (recommended_label)
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
    page_bytes: int = 0        # memory per extra page in flight (estimated or measured)
    batch_start: int = 1       # where `auto` tuning starts
    tune_batch: bool = False   # `batch = "auto"`: the worker tunes its limit up to `batch`


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


PTX_CACHE_ENV = "MLX_PTX_CACHE_DIR"


def keep_compiled_kernels(state_dir: Path, device: DeviceInfo, *, mlx_version: str | None = None,
                          environ: MutableMapping[str, str] = os.environ) -> Path | None:
    """CUDA: MLX compiles its kernels at run time (NVRTC) and caches them in /tmp/mlx/<version>/ptx,
    which a reboot clears; a worker's first pages then wait a minute or more for the compiler.
    Keep them in <state_dir>/cache/mlx-ptx/<MLX version>/<GPU model> instead (a cache of another
    GPU architecture's kernels aborts), dropping older versions' folders. A user's own
    MLX_PTX_CACHE_DIR wins. Call before the first kernel runs (MLX reads it once)."""
    if device.backend != "cuda" or environ.get(PTX_CACHE_ENV):
        return None
    if mlx_version is None:
        import mlx.core as mx
        mlx_version = mx.__version__
    root = state_dir / "cache" / "mlx-ptx"
    gpu = re.sub(r"[^a-z0-9]+", "-", device.name.lower()).strip("-") or "gpu"
    path = root / mlx_version / gpu
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:   # MLX's default then; slower after a reboot, never wrong
        log.warning("kernel_cache_unavailable", path=str(path), reason=str(exc))
        return None
    for old in root.iterdir():
        if old.name != mlx_version:
            shutil.rmtree(old, ignore_errors=True)
    environ[PTX_CACHE_ENV] = str(path)
    return path


def performance_cores(*, platform_name: str = sys.platform,
                      sysctl: Callable[[str], str] | None = None) -> int:
    """The cores a worker's CPU front work counts on: a Mac's performance cores (its efficiency
    cores are several times slower), all cores elsewhere. `sysctl` is a seam for tests."""
    cores = os.cpu_count() or 1
    if platform_name != "darwin":
        return cores
    read = sysctl or (lambda key: subprocess.run(["sysctl", "-n", key], capture_output=True, text=True,
                                                 timeout=5).stdout)
    try:
        return max(1, int(read("hw.perflevel0.physicalcpu").strip()))
    except (OSError, ValueError, subprocess.SubprocessError):
        return cores   # an Intel Mac has no performance levels


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


# --- Detection without a GPU context in the caller, and the CUDA install check -------------------
# Importing mlx.core and asking about the GPU creates a CUDA context (518 MiB on an H200) that lives
# as long as the process: a long-lived process (the supervisor) asks a short-lived child instead.
PROBE_TIMEOUT_S = 60.0         # a cold CUDA start takes seconds; a hung driver must not hang the daemon
NVIDIA_SMI_TIMEOUT_S = 10.0
CUDA_EXTRA_FIX = ".venv/bin/pip install -e '.[cuda]'"
CUDA_MIN_DRIVER = 580          # MLX's CUDA build is built on CUDA 13
log = structlog.get_logger()


def probe_device(python: str | None = None, timeout_s: float = PROBE_TIMEOUT_S) -> DeviceInfo:
    """detect_device() in a short-lived child (`python -m ocrd.daemon.device`), so that the caller
    never holds a GPU context. If the child fails, detection runs here instead with a warning (this
    process then holds the context). `python` stands in for sys.executable (tests)."""
    try:
        return _probe_child(python or sys.executable, timeout_s)
    except Exception as exc:
        log.warning("device_probe_failed", reason=str(exc)[:300],
                    fallback="detecting in this process, which then holds a GPU context")
    return detect_device()


def _probe_child(python: str, timeout_s: float) -> DeviceInfo:
    # tied to this process (lifeline.py): a probe outliving a killed daemon holds a GPU context
    done = subprocess.run(child_argv("ocrd.daemon.device", python=python), capture_output=True, text=True,
                          timeout=timeout_s, check=False, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise RuntimeError(f"device probe exited with status {done.returncode}: {tail}")
    lines = done.stdout.strip().splitlines()
    if not lines:
        raise RuntimeError("device probe printed nothing")
    return DeviceInfo(**json.loads(lines[-1]))


def nvidia_gpus(nvidia_smi: str = "nvidia-smi",
                timeout_s: float = NVIDIA_SMI_TIMEOUT_S) -> list[tuple[str, str]]:
    """(name, driver version) of each GPU that nvidia-smi lists; [] without nvidia-smi, or when it
    fails or hangs. `nvidia_smi` is the command to run (tests point it at a small script)."""
    try:
        done = subprocess.run([nvidia_smi, "--query-gpu=name,driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=timeout_s, check=False,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError):
        return []
    if done.returncode != 0:
        return []
    gpus = []
    for line in done.stdout.splitlines():
        name, _, driver = line.rpartition(",") if "," in line else (line, "", "")
        if name.strip():
            gpus.append((name.strip(), driver.strip()))
    return gpus


def missing_gpu_extra(device: DeviceInfo, nvidia_smi: str = "nvidia-smi") -> str | None:
    """One line when nvidia-smi sees a GPU but MLX runs on the CPU: which extra is missing (or why
    the installed CUDA build is not used) and the fix; None otherwise."""
    advice = gpu_advice(device, nvidia_smi)
    return None if advice is None else f"{advice[0]}; fix: {advice[1]}"


def gpu_advice(device: DeviceInfo, nvidia_smi: str = "nvidia-smi") -> tuple[str, str] | None:
    """(what is wrong, the fix) when nvidia-smi sees a GPU but MLX runs on the CPU; else None."""
    if device.backend != "cpu":
        return None
    gpus = nvidia_gpus(nvidia_smi)
    return cuda_advice(gpus, _version("mlx-cuda-13"), libmlx_build()) if gpus else None


def cuda_advice(gpus: list[tuple[str, str]], cuda_version: str | None,
                libmlx: str | None) -> tuple[str, str]:
    """The advice for GPUs that MLX does not use, given the installed mlx-cuda-13 version (None:
    not installed) and the wheel the libmlx.so on disk came from (libmlx_build)."""
    name, driver = gpus[0]
    seen = f"nvidia-smi sees {len(gpus)} NVIDIA GPU(s) ({name}) but MLX runs on the CPU"
    if cuda_version is None:
        return f"{seen}: the `cuda` extra (MLX's CUDA build) is not installed", CUDA_EXTRA_FIX
    if libmlx == "mlx-cpu":   # both wheels ship mlx/lib/libmlx.so: the one installed last wins
        return (f"{seen}: mlx-cpu's libmlx.so replaced mlx-cuda-13's",
                f".venv/bin/pip install --force-reinstall --no-deps mlx-cuda-13=={cuda_version}")
    major = driver.split(".")[0]
    if major.isdigit() and int(major) < CUDA_MIN_DRIVER:
        return (f"{seen}: NVIDIA driver {driver} is older than MLX's CUDA 13 build needs",
                f"update the NVIDIA driver to {CUDA_MIN_DRIVER} or newer")
    return (f"{seen} although mlx-cuda-13 {cuda_version} is installed",
            "check `python -c 'import mlx.core as mx; print(mx.cuda.is_available())'` and the driver")


def libmlx_build() -> str | None:
    """The wheel ("mlx-cuda-13" or "mlx-cpu") that the mlx/lib/libmlx.so on disk came from: both
    ship that file and the one installed last wins. None when unknown (macOS: mlx-metal)."""
    for dist in ("mlx-cuda-13", "mlx-cpu"):
        try:
            files = metadata.distribution(dist).files or []
        except metadata.PackageNotFoundError:
            continue
        for f in files:
            if f.as_posix() == "mlx/lib/libmlx.so" and f.size:
                path = f.locate()
                if os.path.isfile(path) and os.path.getsize(path) == f.size:
                    return dist
    return None


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def plan_pool(device: DeviceInfo, *, model_bytes: int, mode: str, count: int | None = None,
              budget: int | float | None = None, measured_peak_bytes: int | None = None,
              batch: int | None = None, measured_page_bytes: int | None = None) -> PoolPlan:
    """Size the pool: count = clamp(floor(budget / footprint), 1, cap) (or `count`, lowered to
    what the budget holds); then each worker's in-flight limit from what its share of the budget
    holds beyond one page, at page_bytes per extra page (or `batch`, lowered likewise); a worker is
    recycled past RECYCLE_FACTOR x its full batch's memory. Each reason says which rule decided."""
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
    page_bytes = int(measured_page_bytes * MEASURED_HEADROOM) if measured_page_bytes else \
        MODES.get(mode, MODES["gundam"]).page_bytes
    # `[workers] count = 0` (a host that only ingests and delivers): the batch is sized as for one
    limit, start, batch_reason = _batch(device, batch, budget_bytes // max(chosen, 1) - footprint, page_bytes,
                                        measured=bool(measured_page_bytes))
    recycle = int((footprint + (limit - 1) * page_bytes) * RECYCLE_FACTOR)
    return PoolPlan(chosen, footprint, budget_bytes, cap, reason,
                    batch=limit, batch_reason=batch_reason, recycle_bytes=recycle,
                    recycle_reason=f"{_gb(recycle)}: {RECYCLE_FACTOR:g} x (footprint {_gb(footprint)}"
                                   f" + {limit - 1} more pages x {_gb(page_bytes)})",
                    page_bytes=page_bytes, batch_start=start, tune_batch=batch is None)


def _batch(device: DeviceInfo, batch: int | None, room: int, page_bytes: int, *,
           measured: bool) -> tuple[int, int, str]:
    """(in-flight limit, where tuning starts, reason) for one worker with `room` bytes beyond
    its one-page footprint."""
    fits = max(room, 0) // max(page_bytes, 1) + 1
    per_page = f"{_gb(page_bytes)} per page in flight ({'measured' if measured else 'estimated'})"
    if batch is not None:
        if batch <= fits:
            return batch, batch, f"{batch} as configured; room for {fits} at {per_page}"
        return fits, fits, f"configured batch {batch} lowered to {fits}: room for {fits} at {per_page}"
    gpu = device.backend in ("metal", "cuda")
    most = MAX_BATCH if gpu else CPU_MAX_BATCH
    limit = min(fits, most)
    start = min(limit, GPU_BATCH_START if gpu else 1)
    where = "GPU" if gpu else "CPU: batching helps only where measured"
    return limit, start, (f"auto: up to {limit} ({fits} fit at {per_page}; at most {most} on {where}),"
                          f" tuned from {start} by measured tokens/s")


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
        return 1, "one Metal GPU: one worker; batches, not processes, fill a GPU"
    if device.backend == "cuda":
        gpus = max(device.gpus, 1)
        return gpus, f"{gpus} CUDA GPU(s): one worker each; batches, not processes, fill a GPU"
    cap = max(1, device.cores // CPU_CORES_PER_WORKER)
    return cap, (f"CPU: {device.cores} cores // {CPU_CORES_PER_WORKER}, since each worker's MLX "
                 f"kernels already use several threads")


def footprint_key(model: ModelConfig) -> str:
    """The ledger meta key under which the peak memory measured on real pages is kept."""
    return f"footprint_bytes:{model.path}:{model.mode}"


def page_key(model: ModelConfig) -> str:
    """The ledger meta key under which the measured memory per page in flight is kept."""
    return f"page_bytes:{model.path}:{model.mode}"


def plan_for_config(device: DeviceInfo, config: Config, measured_peak_bytes: int | None = None,
                    measured_page_bytes: int | None = None, *, engine: str = "mlx-vlm") -> PoolPlan:
    """`plan_pool` with the config's model and [workers] settings (the daemon and `ocrd device`);
    `plan_line_pool` for an engine that is not DeepSeek-OCR (engines.LINE_ENGINES)."""
    if engine in LINE_ENGINE_BYTES:
        return plan_line_pool(device, config, engine, LINE_ENGINE_BYTES[engine])
    if engine in SERVER_ENGINES:
        return plan_server_pool(config)
    return plan_pool(device, model_bytes=model_size_bytes(config.model.path) or DEFAULT_MODEL_BYTES,
                     mode=config.model.mode, count=config.workers.count,
                     budget=config.workers.memory_budget, measured_peak_bytes=measured_peak_bytes,
                     batch=config.workers.batch, measured_page_bytes=measured_page_bytes)


LINE_ENGINE_BATCH = 2    # one page reads while the next waits rendered; these engines read one at a time


def plan_line_pool(device: DeviceInfo, config: Config, engine: str, footprint: int) -> PoolPlan:
    """The pool for an engine that reads one page at a time (RapidOCR, Vision): as many workers
    as cores and memory allow (the same count rule and cap as `plan_pool`), each holding
    LINE_ENGINE_BATCH pages (or [workers] batch)."""
    budget_bytes, budget_how = _budget(device, config.workers.memory_budget)
    cap, cap_why = _cap(device)
    fits = budget_bytes // max(footprint, 1)
    head = (f"budget {_gb(budget_bytes)} ({budget_how}) / footprint {_gb(footprint)} "
            f"({engine}, estimated) = {fits}")
    count, reason = _count(config.workers.count, fits, cap, cap_why, head)
    batch = config.workers.batch or LINE_ENGINE_BATCH
    # recycle_bytes 0: workers watch MLX's allocator, which these engines don't use (they are
    # recycled by max_pages_per_worker alone)
    return PoolPlan(count, footprint, budget_bytes, cap, reason, batch=batch,
                    batch_reason=f"{batch}: {engine} reads one page at a time; the next waits rendered",
                    recycle_bytes=0, recycle_reason=f"{engine}: by page count only",
                    page_bytes=0, batch_start=batch, tune_batch=False)


SERVER_START = 4        # concurrency "auto" starts here and doubles while throughput rises...
SERVER_CAP = 128        # ...up to here (SGLang's DeepSeek-OCR figure was measured at 100 in flight)


def plan_server_pool(config: Config) -> PoolPlan:
    """engine = "openai": no model here, so no memory plan. One worker (or [workers] count) keeps
    `[model] concurrency` requests in flight; "auto" tunes it like the batch: doubling from
    SERVER_START while measured tokens/s rises (worker/tuner.py)."""
    count = config.workers.count if config.workers.count is not None else 1
    fixed = config.model.concurrency
    batch = fixed or SERVER_CAP
    why = (f"{fixed} as configured ([model] concurrency)" if fixed else
           f"auto: from {SERVER_START}, doubled while the server's tokens/s rises, up to {SERVER_CAP}")
    return PoolPlan(count, 0, 0, count, f"{count}: the server {config.model.url} decodes; "
                    "a worker only keeps requests in flight", batch=batch, batch_reason=why,
                    recycle_bytes=0, recycle_reason="server engine: by page count only",
                    batch_start=fixed or SERVER_START, tune_batch=fixed is None)


def _gb(n: int) -> str:
    return f"{n / GB:.1f} GB"


def describe(device: DeviceInfo) -> str:
    """One line for logs and `ocrd device`."""
    mem = f"{_gb(device.memory_bytes)}"
    if label := recommended_label(device.backend):
        mem += f" ({label} {_gb(device.recommended_bytes)})"
    return f"{device.backend}: {device.name}, {mem}, {device.cores} CPU cores" + (
        f", {device.gpus} GPU(s)" if device.backend == "cuda" else "")


def recommended_label(backend: str) -> str:
    """What DeviceInfo.recommended_bytes is on `backend`, for reports; "" on the CPU (it is the RAM)."""
    return {"metal": "recommended working set", "cuda": "free"}.get(backend, "")


if __name__ == "__main__":   # the child of probe_device: DeviceInfo as one JSON line
    print(json.dumps(asdict(detect_device())), flush=True)
