"""`ocrd doctor`: check what the daemon needs before it needs it, and name the fix.

Checks never import mlx for the model (a missing download is a warning: the daemon fetches it on
first run) and never change anything except a probe file they create and remove at once.
"""

from __future__ import annotations

import errno
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import click

from ocrd.daemon.config import Config
from ocrd.daemon.device import CPU_WARNING, detect_device, gpu_advice
from ocrd.daemon.engines.weights import model_size_bytes
from ocrd.daemon.engines.choice import warns_on_cpu
from ocrd.daemon.engines.openai import server_report
from ocrd.daemon.errors import first_line
from ocrd.daemon.intake.rules import permission_fix
from ocrd.daemon.lockfile import running_pid
from ocrd.ledger import Ledger, ModelState

# Folders under these are guarded by macOS privacy controls (TCC): a daemon started by launchd gets
# EPERM there unless its interpreter has Full Disk Access.
_MAC_PROTECTED = ("Documents", "Desktop", "Downloads", "Library/Mobile Documents")


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""
    warn: bool = False       # ok, but worth reading (model not downloaded yet, CPU mode...)


def render_checks(checks: list[Check]) -> str:
    """The report for a terminal: one line per check, and the fix under each failure or warning."""
    width = max(len(c.name) for c in checks)
    lines = []
    for c in checks:
        mark = "FAIL" if not c.ok else "warn" if c.warn else "ok"
        color = "red" if not c.ok else "yellow" if c.warn else "green"
        lines.append(f"{click.style(f'{mark:<4}', fg=color)}  {c.name:<{width}}  {c.detail}")
        if c.fix and (not c.ok or c.warn):
            lines.append(f"{'':4}  {'':<{width}}  fix: {c.fix}")
    return "\n".join(lines)


def run_checks(config: Config, *, platform: str | None = None) -> list[Check]:
    """Every check for a loaded config (the caller reports a config that does not load)."""
    platform = platform or sys.platform
    checks = [Check("config", True, str(config.source) if config.source else "built-in defaults")]
    for n, inbox in enumerate(config.inboxes):
        for role in ("path", "outbox", "archive", "failed"):
            folder = getattr(inbox, role)
            if folder is not None:
                name = f"inbox[{n}].{'inbox' if role == 'path' else role}"
                checks.append(check_folder(name, folder, platform=platform))
    if not config.inboxes:
        checks.append(Check("inboxes", False, "no [[inbox]] configured", "add an [[inbox]] table"))
    if not config.ledger_url:
        checks.append(check_folder("state_dir", config.state_dir, platform=platform))
    checks.append(check_free_space(config))
    checks.append(check_server(config) if config.model.engine == "openai" else check_model(config.model.path))
    checks.append(check_ledger(config))
    checks.append(check_daemon(config))
    checks.append(check_device(cpu_matters=warns_on_cpu(config.model.engine)))
    return checks


LOW_SPACE_BYTES = 10**9      # warn under 1 GB free, or under LOW_SPACE_SHARE of the disk
LOW_SPACE_SHARE = 0.05


def check_free_space(config: Config, *, low_bytes: int = LOW_SPACE_BYTES) -> Check:
    """Free space where the daemon writes: the state dir (ledger, spool) and every outbox. A full
    disk makes ingest wait (files stay in their inbox) and outputs wait; say so before it happens."""
    folders = {"state_dir": config.state_dir, **{f"inbox[{n}].outbox": i.outbox for n, i in enumerate(config.inboxes)}}
    tight = []
    for name, folder in folders.items():
        probe = next((p for p in (folder, *folder.parents) if p.exists()), None)
        if probe is None:
            continue
        usage = shutil.disk_usage(probe)
        if usage.free < max(low_bytes, int(usage.total * LOW_SPACE_SHARE)):
            tight.append(f"{name} {probe}: {usage.free / 1e9:.1f} GB free of {usage.total / 1e9:.0f} GB")
    if tight:
        return Check("free space", True, "; ".join(tight), "free some space on that disk", warn=True)
    return Check("free space", True, "enough where the daemon writes")


def check_folder(name: str, folder: Path, *, platform: str | None = None) -> Check:
    """The folder exists (or its nearest existing parent lets us create it), is a directory, and
    a file can really be created and removed in it (os.access lies under macOS TCC)."""
    platform = platform or sys.platform
    probe_in = folder
    while not probe_in.exists():
        if probe_in.parent == probe_in:
            break
        probe_in = probe_in.parent
    if not probe_in.is_dir():
        what = "is not a folder" if probe_in == folder else f"cannot be created: {probe_in} is not a folder"
        return Check(name, False, f"{folder} {what}", f"remove or rename {probe_in}, or point {name} elsewhere")
    try:
        os.listdir(probe_in)
        fd, tmp = tempfile.mkstemp(dir=probe_in, prefix=".ocrd-doctor-")
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        return Check(name, False, f"{probe_in}: {exc.strerror or exc}", folder_fix(exc, folder, platform))
    detail = str(folder) if probe_in == folder else f"{folder} (will be created)"
    return Check(name, True, detail)


def folder_fix(exc: OSError, folder: Path, platform: str) -> str:
    """The remedy for a folder the daemon cannot use."""
    denied = exc.errno in (errno.EPERM, errno.EACCES)
    # TCC denials come back as EPERM ("Operation not permitted"); EACCES is plain Unix permissions,
    # unless the folder is one TCC guards.
    if denied and platform == "darwin" and (exc.errno == errno.EPERM or _mac_protected(folder)):
        return permission_fix(folder, platform=platform)
    if denied:
        return f"let user {_user()} read and write {folder} (chown/chmod), or point the config elsewhere"
    if exc.errno == errno.EROFS:
        return f"{folder} is on a read-only volume: point the config elsewhere"
    return f"make {folder} a readable, writable folder"


def _mac_protected(folder: Path) -> bool:
    home = Path.home()
    return any(folder.is_relative_to(home / p) for p in _MAC_PROTECTED)


def _user() -> str:
    try:
        import pwd
        return pwd.getpwuid(os.getuid()).pw_name
    except (ImportError, KeyError):
        return str(os.getuid())


def check_server(config: Config) -> Check:
    """engine = "openai": the server answers GET /models with the key, and lists the model."""
    r = server_report(config.model)
    if not r["reachable"]:
        return Check("server", False, f"{r['url']}: {r['error']}",
                     "start the server, or fix [model] url / api_key_file")
    if not r["serves_name"]:
        return Check("server", True, f"{r['url']} answers, but does not list {r['name']!r} "
                     f"(it lists {', '.join(r['models']) or 'none'})", warn=True)
    return Check("server", True, f"{r['url']} serves {r['name']}")


def check_model(model_path: str) -> Check:
    """A local model folder with config.json and weights, or a Hugging Face id in the local cache."""
    local = Path(model_path).expanduser()
    if local.exists() or model_path.startswith(("/", ".", "~")):
        if not local.is_dir():
            return Check("model", False, f"{local} is not a folder", "set model.path to a model folder or a Hugging Face id")
        missing = [what for what, ok in (("config.json", (local / "config.json").is_file()),
                                         ("*.safetensors", any(local.glob("*.safetensors")))) if not ok]
        if missing:
            return Check("model", False, f"{local} has no {' or '.join(missing)}",
                         "point model.path at a complete mlx model folder")
        return Check("model", True, f"local folder {local}")
    size = model_size_bytes(model_path)  # the daemon's own lookup (HF cache, offline)
    if size:
        return Check("model", True, f"{model_path} (in the Hugging Face cache, {size / 1e9:.1f} GB)")
    return Check("model", True, f"{model_path}: not downloaded yet: the daemon will download it on "
                 "first run (needs network)", warn=True)


def check_ledger(config: Config) -> Check:
    if not config.ledger_url and not config.ledger_path.exists():
        return Check("ledger", True, f"{config.ledger_path} (created on first run)")
    try:
        ledger = Ledger(config.db_url, host=config.host_name)
        try:
            result = ledger.integrity_check()
            status = ledger.model_status()
            ledger.clock()               # PostgreSQL: measures this host's offset from the server
            offset = ledger.clock.offset_s
        finally:
            ledger.close()
    except Exception as exc:
        return Check("ledger", False, f"cannot open {_safe_url(config)}: {first_line(exc)}",
                     "check ledger.url / the state dir; stop ocrd and `ocrd ledger restore` a backup")
    if result != "ok":
        return Check("ledger", False, f"integrity check: {result}",
                     "stop ocrd and `ocrd ledger restore` a backup (README: When the ledger is damaged)")
    if status is not None and status.state != ModelState.OK:
        return Check("ledger", True, f"integrity ok; the daemon last reported the model {status.describe()}",
                     warn=True)
    if abs(offset) > 5:   # harmless (times come from the server), but logs and files disagree
        return Check("ledger", True, f"{_safe_url(config)}: integrity ok; this host's clock is "
                     f"{abs(offset):.0f} s {'behind' if offset > 0 else 'ahead of'} the database "
                     "server's (ocrd uses the server's clock; enable NTP)", warn=True)
    return Check("ledger", True, f"{_safe_url(config)}: integrity ok")


def _safe_url(config: Config) -> str:
    url = config.db_url
    if "@" in url:  # keep a password out of the report
        scheme, _, rest = url.partition("://")
        url = f"{scheme}://***@{rest.rpartition('@')[2]}"
    return url


def check_daemon(config: Config) -> Check:
    pid = running_pid(config.lock_path)
    if pid:
        return Check("daemon", True, f"running (pid {pid})")
    return Check("daemon", True, "not running", "start it with `ocrd run` or `ocrd service install`", warn=True)


def check_device(nvidia_smi: str = "nvidia-smi", *, cpu_matters: bool = True) -> Check:
    """MLX's backend; in CPU mode, whether nvidia-smi sees a GPU that MLX leaves unused and why
    (`cpu_matters` False: a server engine decodes elsewhere, so the CPU is no warning)."""
    try:
        device = detect_device()
    except Exception as exc:
        return Check("device", False, f"cannot detect the device: {exc}", mlx_fix(str(exc)))
    detail = f"{device.backend} ({device.name})"
    if device.backend != "cpu" or not cpu_matters:
        return Check("device", True, detail)
    advice = gpu_advice(device, nvidia_smi)
    if advice:
        return Check("device", True, f"{detail}: {advice[0]}", advice[1], warn=True)
    return Check("device", True, f"{detail}: {CPU_WARNING}", warn=True)


def mlx_fix(message: str) -> str:
    """The fix for an mlx.core that does not import. mlx-cpu and mlx-cuda-13 both ship
    mlx/lib/libmlx.so, so removing either one removes the file."""
    try:
        pin = f"=={metadata.version('mlx')}"
    except metadata.PackageNotFoundError:
        pin = ""
    if "libcuda.so" in message:
        return ("MLX's CUDA build needs the NVIDIA driver; without one, go back to the CPU build: "
                ".venv/bin/pip uninstall -y mlx-cuda-13 && "
                f".venv/bin/pip install --force-reinstall --no-deps 'mlx-cpu{pin}'")
    if "libmlx.so" in message:
        return ("MLX's backend library is gone: reinstall the backend you use: "
                f".venv/bin/pip install --force-reinstall --no-deps 'mlx-cpu{pin}' (or 'mlx-cuda-13{pin}')")
    return "check the mlx installation"
