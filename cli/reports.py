"""The reports behind `ocrd status` and `ocrd device`: built from the ledger and the device, as
the dicts `--json` prints, and rendered as text for people."""

from __future__ import annotations

import contextlib
from typing import Any

import click

from ocrd.daemon.config import Config
from ocrd.daemon.device import (CPU_WARNING, DEFAULT_MODEL_BYTES, detect_device, footprint_key,
                                plan_for_config)
from ocrd.daemon.engine import model_size_bytes
from ocrd.daemon.lockfile import running_pid
from ocrd.ledger import DaemonInfo, Ledger
from ocrd.ledger.states import ENDED_WORKER_STATES, JobState, ModelState, ModelStatus, PageState

from . import _format as fmt

STALE_HEARTBEAT_S = 120.0


def _device_of(info: DaemonInfo | None, running: bool) -> dict[str, Any]:
    """The running daemon's device (as it recorded it) or, with no daemon, a live probe."""
    recorded = None if info is None else {"backend": info.backend, "name": info.name,
                                          "memory_bytes": info.memory_bytes}
    if running and recorded is not None:
        return recorded
    try:
        d = detect_device()
        return {"backend": d.backend, "name": d.name, "memory_bytes": d.memory_bytes}
    except Exception as exc:  # report, don't crash status
        if recorded is not None:
            return recorded
        return {"backend": None, "name": f"unknown ({exc})", "memory_bytes": None}


def status_report(config: Config, ledger: Ledger | None) -> tuple[dict[str, Any], ModelStatus | None]:
    """The status report (what --json prints), and the model status it describes; `ledger` is
    None when there is none yet."""
    pid = running_pid(config.lock_path)
    if ledger is None:
        counts = {"jobs": {s.value: 0 for s in JobState}, "pages": {s.value: 0 for s in PageState}}
        workers, rate, model, info = [], {}, None, None
    else:
        report = ledger.status()
        counts, workers, rate = report["counts"], report["workers"], report["throughput"]
        model, info = ledger.model_status(), ledger.daemon_info()
    device = _device_of(info, pid is not None)

    ppm = rate.get("pages_per_min_5")
    if ppm is None:
        ppm = rate.get("pages_per_min_60")
    waiting = counts["pages"][PageState.QUEUED] + counts["pages"][PageState.RUNNING]
    keys = ("id", "pid", "backend", "state", "heartbeat_age_s", "current_page", "active_memory_bytes",
            "peak_memory_bytes", "pages_done", "host", "device_name", "tokens_per_s")
    workers = [{k: w.get(k) for k in keys} for w in workers]
    model_text = None if model is None else model.describe()
    running = pid is not None
    return {
        "daemon": {"running": running, "pid": pid},
        "device": device,
        "model": {"path": config.model.path, "mode": config.model.mode, "status": model_text},
        "model_status": model_text,
        # the running daemon's plan
        "pool": {"count": info.workers, "reason": info.reason} if running and info else None,
        "jobs": counts["jobs"],
        "pages": counts["pages"],
        "workers": workers,
        "pages_per_min": ppm,
        "eta_s": rate.get("eta_s"),
        "warnings": _status_warnings(device, model, running, waiting, workers),
        "state_dir": str(config.state_dir),
    }, model


def _status_warnings(device: dict[str, Any], model: ModelStatus | None, running: bool,
                     waiting: int, workers: list[dict[str, Any]]) -> list[str]:
    warnings = []
    if device.get("backend") == "cpu":
        warnings.append(CPU_WARNING)
    if model is not None and model.state == ModelState.UNAVAILABLE:
        warnings.append(f"model {model.describe()}")
    if not running and waiting:
        warnings.append(f"daemon not running: {waiting} pages waiting")
    if running:
        for w in workers:
            age = w.get("heartbeat_age_s")
            if age is not None and age > STALE_HEARTBEAT_S and w.get("state") not in ENDED_WORKER_STATES:
                warnings.append(f"worker {w['id']}: no heartbeat for {fmt.duration(age)}")
    return warnings


def _model_label(model: ModelStatus | None) -> str:
    """The status line's word for the model; an unavailable model's reason is a warning below."""
    if model is None:
        return "unknown"
    if model.state == ModelState.UNAVAILABLE:
        return f"{model.state.upper()} (see below)"
    return str(model.state)


def render_status(s: dict[str, Any], model: ModelStatus | None) -> str:
    d = s["daemon"]
    lines = [f"daemon   {'running (pid %s)' % d['pid'] if d['running'] else 'not running'}"]
    dev = s["device"]
    lines.append(f"device   {dev.get('backend') or '?'}  {dev.get('name') or '?'}  {fmt.size(dev.get('memory_bytes'))}")
    m = s["model"]
    lines.append(f"model    {m['path']}  mode {m['mode']}  status {_model_label(model)}")
    if s["pool"]:
        n = s["pool"].get("count")
        lines.append(f"pool     {n} worker{'' if n == 1 else 's'}: {s['pool'].get('reason')}")
    for w in s["warnings"]:
        lines.append(click.style(f"WARNING  {w}", fg="red", bold=True))
    jobs = "  ".join(f"{k} {v}" for k, v in s["jobs"].items())
    pages = "  ".join(f"{k} {v}" for k, v in s["pages"].items())
    lines += [f"jobs     {jobs}", f"pages    {pages}"]
    ppm = s["pages_per_min"]
    lines.append(f"rate     {'-' if ppm is None else f'{ppm:.1f}'} pages/min  ETA {fmt.duration(s['eta_s'])}")
    if s["workers"]:
        rows = [(w["id"], w["pid"], w["backend"], w["state"], fmt.duration(w["heartbeat_age_s"]),
                 w["current_page"] or "-", fmt.size(w["active_memory_bytes"]),
                 fmt.size(w["peak_memory_bytes"]), w["pages_done"]) for w in s["workers"]]
        lines += ["", fmt.table(("WORKER", "PID", "BACKEND", "STATE", "HEARTBEAT", "PAGE", "MEMORY",
                                 "PEAK", "DONE"), rows, right=(1, 4, 6, 7, 8))]
    else:
        lines.append("workers  none")
    return "\n".join(lines)


def device_report(config: Config, ledger: Ledger | None) -> dict[str, Any]:
    """What `ocrd device` prints: the device, the model's size, and the pool plan with its reason."""
    info = detect_device()
    size = model_size_bytes(config.model.path)
    measured = None
    if ledger is not None:
        with contextlib.suppress(TypeError, ValueError):
            measured = int(ledger.get_meta(footprint_key(config.model)) or 0) or None
    plan = plan_for_config(info, config, measured)
    warnings = [CPU_WARNING] if info.backend == "cpu" else []
    return {
        "device": {"backend": info.backend, "name": info.name, "memory_bytes": info.memory_bytes,
                   "recommended_bytes": info.recommended_bytes, "cores": info.cores, "gpus": info.gpus},
        "model": {"path": config.model.path, "mode": config.model.mode, "size_bytes": size,
                  "planned_bytes": size or DEFAULT_MODEL_BYTES},
        "measured_peak_bytes": measured,
        "pool": {"count": plan.count, "footprint_bytes": plan.footprint_bytes,
                 "budget_bytes": plan.budget_bytes, "cap": plan.cap, "reason": plan.reason},
        "warnings": warnings,
    }


def render_device(r: dict[str, Any]) -> str:
    d, m, p = r["device"], r["model"], r["pool"]
    lines = [f"backend  {d['backend']}", f"device   {d['name']}",
             f"memory   {fmt.size(d['memory_bytes'])}"
             + (f" (recommended working set {fmt.size(d['recommended_bytes'])})"
                if d["recommended_bytes"] and d["recommended_bytes"] != d["memory_bytes"] else ""),
             f"cores    {d['cores']}" + (f"  gpus {d['gpus']}" if d.get("gpus") else ""),
             f"model    {m['path']}  mode {m['mode']}  "
             + (fmt.size(m["size_bytes"]) if m["size_bytes"] is not None
                else f"size unknown (not on disk; assuming {fmt.size(m['planned_bytes'])})"),
             f"pool     {p['count']} worker{'s' if p['count'] != 1 else ''}: {p['reason']}",
             f"         footprint {fmt.size(p['footprint_bytes'])} each"
             + (" (measured)" if r["measured_peak_bytes"] else " (estimated)")
             + f", budget {fmt.size(p['budget_bytes'])}, cap {p['cap']}"]
    lines += [click.style(f"WARNING  {w}", fg="red", bold=True) for w in r["warnings"]]
    return "\n".join(lines)
