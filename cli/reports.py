"""The reports behind `ocrd status` and `ocrd device`: built from the ledger and the device, as
the dicts `--json` prints, and rendered as text for people."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import click
from ocrd.daemon.api import URL_KEY as API_URL_KEY
from ocrd.daemon.config import Config
from ocrd.daemon.diskspace import space_problem
from ocrd.daemon.device import (
    CPU_WARNING,
    DEFAULT_MODEL_BYTES,
    detect_device,
    footprint_key,
    missing_gpu_extra,
    page_key,
    plan_for_config,
    recommended_label,
)
from ocrd.daemon.engines.base import ENGINE_MODELS, make_engine
from ocrd.daemon.engines.weights import model_size_bytes
from ocrd.daemon.intake.service import INGEST_PROBLEM
from ocrd.daemon.engines.choice import LINE_ENGINES, choose_engine, warns_on_cpu
from ocrd.daemon.engines.openai import server_report
from ocrd.daemon.lockfile import running_pid
from ocrd.daemon.output.outbox import relative_source
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
        workers, rate, model, info, paused, metrics_url, problem = [], {}, None, None, None, None, None
        reads = None
        api_url = None
        flight: dict[str, Any] = {"pages_in_flight": 0, "tokens_per_s": None}
        busy: list[dict[str, Any]] = []
        hosts: list[dict[str, Any]] = []
    else:
        report = ledger.status()
        counts, workers, rate = report["counts"], report["workers"], report["throughput"]
        flight = report["in_flight"]
        model, info = ledger.model_status(), ledger.daemon_info()
        reads = ledger.get_meta(ENGINE_MODELS)
        paused, metrics_url = ledger.paused_since(), ledger.get_meta("metrics_url")
        api_url = ledger.get_meta(API_URL_KEY)
        problem = ledger.get_meta(INGEST_PROBLEM)
        busy = ledger.running_jobs()
        hosts = ledger.hosts_status()
    device = _device_of(info, pid is not None)
    full = space_problem(config.state_dir)

    ppm = rate.get("pages_per_min")
    waiting = counts["pages"][PageState.QUEUED] + counts["pages"][PageState.RUNNING]
    workers = _workers_view(workers, hosts)
    running = pid is not None
    # with the daemon down, its last model status and a rate-based ETA would be stale news
    model = model if running else None
    model_text = None if model is None else model.describe()
    return {
        "daemon": {"running": running, "pid": pid},
        "paused": paused is not None,           # `ocrd pause`: no new page is claimed
        "paused_since": paused,
        "metrics_url": metrics_url if running else None,   # [metrics] listen
        "api_url": api_url if running else None,           # [api] listen
        "device": device,
        # `reads`: the engine's own models where it names them (RapidOCR), else None (DeepSeek-OCR:
        # path and mode)
        "model": {"path": _model_of(config), "mode": config.model.mode, "status": model_text,
                  "reads": (reads or None) if running else None},
        "engine": _engine_of(info) if running else None,   # the running daemon's engine
        "server": server_of(config),                       # engine = "openai": the server's answer
        "model_status": model_text,
        "pool": _pool_of(info) if running else None,     # the running daemon's plan
        "jobs": counts["jobs"],
        # ledger states: `running` = claimed (in a worker's batch, or claimed ahead and waiting)
        "pages": counts["pages"],
        "pages_in_flight": flight["pages_in_flight"],
        "pages_claimed_waiting": max(counts["pages"][PageState.RUNNING] - flight["pages_in_flight"], 0),
        "workers": workers,
        "host": config.host_name,
        # every daemon of this ledger (several on PostgreSQL): state running, stopped or dead
        # (unseen 60 s), and `delivering`: its documents not done yet (only it writes their output)
        "hosts": hosts,
        "pages_per_min": ppm,
        "tokens_per_s": flight["tokens_per_s"],
        "eta_s": rate.get("eta_s") if running else None,
        "running_jobs": _running_jobs(config, busy, ppm if running else None, live=running),
        "warnings": _status_warnings(device, model, running, waiting, workers,
                                     engine=info.engine if running and info is not None else config.model.engine)
                    + (_ingest_warning(problem) if running else []) + _host_warnings(hosts, config.host_name)
                    + ([full] if full else []),
        "state_dir": str(config.state_dir),
        "state_dir_full": full,        # why nothing is ingested or claimed, on a full disk
    }, model


WORKER_KEYS = ("id", "pid", "backend", "state", "heartbeat_age_s", "current_page", "active_memory_bytes",
               "peak_memory_bytes", "pages_done", "batch", "pages_in_flight", "host", "device_name",
               "tokens_per_s")


def _workers_view(workers: list[dict[str, Any]], hosts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The report's workers; a dead host's workers died with it (their leases run out and other
    hosts redo their pages), whatever their last word was."""
    dead = {h["name"] for h in hosts if h["state"] == "dead"}
    out = [{k: w.get(k) for k in WORKER_KEYS} for w in workers]
    for w in out:
        if w["host"] in dead and w["state"] not in ENDED_WORKER_STATES:
            w["state"] = "dead"
    return out


def _running_jobs(config: Config, rows: list[dict[str, Any]], ppm: float | None, *,
                  live: bool) -> list[dict[str, Any]]:
    """The documents being worked on, for the progress bars: each with its path below its inbox,
    pages done / total and an ETA from its own pace (before its first page is done: from the
    overall rate); no ETA while the daemon is down."""
    out = []
    for r in rows:
        left = max((r["pages_total"] or 0) - (r["pages_done"] or 0), 0)
        pace = r["pages_per_min"] or ppm
        out.append({"id": r["id"], "source": r["source_path"],
                    "relative_path": relative_source(config, r["inbox"], r["source_path"]).as_posix(),
                    "pages_done": r["pages_done"], "pages_total": r["pages_total"],
                    "pages_claimed": r["pages_claimed"], "pages_per_min": r["pages_per_min"],
                    "eta_s": left / pace * 60 if live and pace else None})
    return out


def _running_lines(jobs: list[dict[str, Any]]) -> list[str]:
    """`status`: one line per running document: id, path, progress bar, pages, ETA."""
    if not jobs:
        return []
    rows = [(j["id"], fmt.tail(j["relative_path"], 40), fmt.bar(j["pages_done"] or 0, j["pages_total"] or 0),
             f"{j['pages_done'] or 0}/{j['pages_total'] or 0}",
             "-" if j["pages_per_min"] is None else f"{j['pages_per_min']:.1f}/min",
             fmt.duration(j["eta_s"])) for j in jobs]
    return ["", fmt.table(("JOB", "RUNNING", "PROGRESS", "PAGES", "PACE", "ETA"), rows, right=(0, 3, 4, 5))]


def _pool_of(info: DaemonInfo | None) -> dict[str, Any] | None:
    if info is None:
        return None
    return {"count": info.workers, "reason": info.reason, "batch": info.batch,
            "batch_reason": info.batch_reason}


def _engine_of(info: DaemonInfo | None) -> dict[str, Any] | None:
    if info is None or not info.engine:
        return None
    return {"name": info.engine, "reason": info.engine_reason}


def _status_warnings(device: dict[str, Any], model: ModelStatus | None, running: bool,
                     waiting: int, workers: list[dict[str, Any]], *, engine: str | None = None) -> list[str]:
    warnings = []
    if device.get("backend") == "cpu" and warns_on_cpu(engine or "mlx-vlm"):   # RapidOCR is meant for the CPU
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


def _host_warnings(hosts: list[dict[str, Any]], here: str) -> list[str]:
    """Another host is dead: its documents wait for it (any host may decode their pages, only it
    delivers). This host's own daemon is told by `daemon`."""
    return [f"host {h['name']}: not seen for {fmt.duration(h['seen_age_s'])}"
            + (f"; its {h['delivering']} document(s) are delivered when it is back" if h["delivering"] else "")
            for h in hosts if h["state"] == "dead" and h["name"] != here]


def _ingest_warning(problem: str | None) -> list[str]:
    """The ingest thread's standing failure (a full or read-only state dir), if any."""
    if not problem:
        return []
    with contextlib.suppress(ValueError, TypeError, KeyError):
        p = json.loads(problem)
        return [f"ingest failing for {p['files']} file(s), e.g. {p['path']}: {p['error']} "
                f"(retrying every {p['retry_in_s']:.0f} s; `ocrd doctor` checks free space)"]
    return [f"ingest failing: {problem}"]


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
    if s.get("paused"):
        lines.append(click.style(f"PAUSED   since {fmt.when(s['paused_since'])}: no new page is "
                                 "claimed, files still queue (`ocrd resume`)", fg="yellow", bold=True))
    dev = s["device"]
    lines.append(f"device   {dev.get('backend') or '?'}  {dev.get('name') or '?'}  {fmt.size(dev.get('memory_bytes'))}")
    m = s["model"]
    named = m.get("reads") or f"{m['path']}  mode {m['mode']}"
    lines.append(f"model    {named}  status {_model_label(model)}")
    if s.get("engine"):
        lines.append(f"engine   {s['engine']['name']}: {s['engine']['reason']}")
    lines += server_lines(s.get("server"))
    if s["pool"]:
        lines += _pool_lines(s["pool"])
    if s.get("metrics_url"):
        lines.append(f"metrics  {s['metrics_url']}")
    if s.get("api_url"):
        lines.append(f"api      {s['api_url']}")
    for w in s["warnings"]:
        lines.append(click.style(f"WARNING  {w}", fg="red", bold=True))
    jobs = "  ".join(f"{k} {v}" for k, v in s["jobs"].items())
    lines += [f"jobs     {jobs}", f"pages    {_pages_text(s)}"]
    ppm, tps = s["pages_per_min"], s.get("tokens_per_s")
    lines.append(f"rate     {'-' if ppm is None else f'{ppm:.1f}'} pages/min"
                 + ("" if tps is None else f"  {tps:.0f} tokens/s") + f"  ETA {fmt.duration(s['eta_s'])}")
    lines += _running_lines(s.get("running_jobs") or [])
    several = len(s.get("hosts") or []) > 1
    if several:
        lines += ["", _hosts_table(s["hosts"], s.get("host"))]
    if s["workers"]:
        lines += ["", _workers_table(s["workers"], with_host=several)]
    else:
        lines.append("workers  none")
    return "\n".join(lines)


def _pool_lines(pool: dict[str, Any]) -> list[str]:
    n, batch = pool.get("count"), pool.get("batch")
    lines = [f"pool     {n} worker{'' if n == 1 else 's'}: {pool.get('reason')}"]
    if batch is not None:
        why = pool.get("batch_reason")
        lines.append(f"batch    up to {batch} page{'' if batch == 1 else 's'} in flight per worker"
                     + (f": {why}" if why else ""))
    return lines


def _pages_text(s: dict[str, Any]) -> str:
    """The ledger's page counts; `running` split into pages in flight (in a worker's batch) and
    pages claimed but waiting (rendered ahead, or held by a worker that died until their lease
    runs out), so a claimed-ahead page does not read as being worked on."""
    parts = []
    flying, waiting = s.get("pages_in_flight") or 0, s.get("pages_claimed_waiting") or 0
    for state, n in s["pages"].items():
        text = f"{state} {n}"
        if state == PageState.RUNNING and (n or flying):
            text += f" ({flying} in flight, {waiting} waiting)"
        parts.append(text)
    return "  ".join(parts)


def _pages_of(current: str | None) -> str:
    """A worker's pages ("12:3,12:4,13:1") shortened for the table: "12:3 +2"."""
    pages = [p for p in (current or "").split(",") if p]
    if not pages:
        return "-"
    return pages[0] if len(pages) == 1 else f"{pages[0]} +{len(pages) - 1}"


def _hosts_table(hosts: list[dict[str, Any]], here: str | None) -> str:
    """Several hosts on one ledger: each daemon, its role and the documents it delivers."""
    rows = [(h["name"] + (" *" if h["name"] == here else ""), h["state"], h["pid"],
             fmt.duration(h["seen_age_s"]), h["inboxes"], h["workers"],
             f"{h.get('backend') or '-'} {h.get('device_name') or ''}".strip(), h["delivering"])
            for h in hosts]
    return fmt.table(("HOST", "STATE", "PID", "SEEN", "INBOXES", "WORKERS", "DEVICE", "DELIVERING"),
                     rows, right=(2, 3, 4, 5, 7))


def _workers_table(workers: list[dict[str, Any]], *, with_host: bool = False) -> str:
    """BATCH is pages in flight / the worker's in-flight limit; TOK/S its aggregate rate; HOST
    only when several hosts share the ledger."""
    def batch(w: dict[str, Any]) -> str:
        return "-" if w.get("batch") is None else f"{w.get('pages_in_flight') or 0}/{w['batch']}"

    def rate(w: dict[str, Any]) -> str:
        return "-" if w.get("tokens_per_s") is None else f"{w['tokens_per_s']:.0f}"

    rows = [(w["id"], w["pid"], w["backend"], w["state"], fmt.duration(w["heartbeat_age_s"]),
             _pages_of(w["current_page"]), batch(w), rate(w), fmt.size(w["active_memory_bytes"]),
             fmt.size(w["peak_memory_bytes"]), w["pages_done"]) for w in workers]
    headers = ("WORKER", "PID", "BACKEND", "STATE", "HEARTBEAT", "PAGE", "BATCH", "TOK/S",
               "MEMORY", "PEAK", "DONE")
    if with_host:
        headers, rows = ("HOST", *headers), [(w["host"], *row) for w, row in zip(workers, rows)]
    right = tuple(i + with_host for i in (1, 4, 6, 7, 8, 9, 10))
    return fmt.table(headers, rows, right=right)


CUT_SHORT = {"length": "max_tokens", "repetition": "repetition"}   # finish_reason -> CUT


def render_pages(pages: list[dict[str, Any]]) -> str:
    """`ocrd show`'s page table; CUT flags a page whose text was cut short: at [model] max_tokens
    (finish_reason "length") or by the repetition guard (a loop, cut where it began)."""
    rows = [(p["page_no"], p["state"], p.get("attempts"), p.get("lease_owner") or "-",
             "-" if p.get("seconds") is None else f"{p['seconds']:.1f}s",
             p.get("generation_tokens") if p.get("generation_tokens") is not None else "-",
             CUT_SHORT.get(p.get("finish_reason") or "", ""), fmt.one_line(p.get("error"), 60))
            for p in pages]
    text = fmt.table(("PAGE", "STATE", "TRIES", "WORKER", "TIME", "TOKENS", "CUT", "ERROR"), rows,
                     right=(0, 2, 4, 5))
    cut = [p for p in pages if p.get("finish_reason") in CUT_SHORT]
    if cut:
        text += "\n" + click.style(
            f"{len(cut)} page{'' if len(cut) == 1 else 's'} cut short: their text may be incomplete"
            + (" (max_tokens: raise [model] max_tokens)" if any(p["finish_reason"] == "length" for p in cut)
               else ""), fg="yellow")
    return text


def device_report(config: Config, ledger: Ledger | None) -> dict[str, Any]:
    """What `ocrd device` prints: the device, the model's size, and the pool plan with its
    reasons (workers, batch, recycling)."""
    info = detect_device()
    size = model_size_bytes(config.model.path)
    measured = measured_page = None
    if ledger is not None:
        measured = _meta_int(ledger, footprint_key(config.model))
        measured_page = _meta_int(ledger, page_key(config.model))
    engine = choose_engine(config.model.engine, info.backend, model_local=lambda: size is not None)
    plan = plan_for_config(info, config, measured, measured_page, engine=engine.name)
    warnings = [CPU_WARNING] if info.backend == "cpu" and warns_on_cpu(engine.name) else []
    # a line engine names its own models (built, not loaded: cheap); [model] path is DeepSeek-OCR's
    reads = getattr(make_engine(engine.factory, config.model), "models", None) \
        if engine.name in LINE_ENGINES else None
    if extra := missing_gpu_extra(info):      # nvidia-smi sees a GPU that MLX does not use
        warnings.append(extra)
    return {
        "device": {"backend": info.backend, "name": info.name, "memory_bytes": info.memory_bytes,
                   "recommended_bytes": info.recommended_bytes, "cores": info.cores, "gpus": info.gpus},
        "model": {"path": _model_of(config), "mode": config.model.mode, "size_bytes": size,
                  "planned_bytes": size or DEFAULT_MODEL_BYTES, "reads": reads},
        "engine": {"name": engine.name, "configured": config.model.engine, "reason": engine.reason},
        "server": server_of(config),
        "measured_peak_bytes": measured,
        "measured_page_bytes": measured_page,
        "pool": {"count": plan.count, "footprint_bytes": plan.footprint_bytes,
                 "budget_bytes": plan.budget_bytes, "cap": plan.cap, "reason": plan.reason,
                 "batch": plan.batch, "batch_reason": plan.batch_reason,
                 "page_bytes": getattr(plan, "page_bytes", None),
                 "recycle_bytes": plan.recycle_bytes, "recycle_reason": plan.recycle_reason},
        "warnings": warnings,
    }


def _model_of(config: Config) -> str:
    """The model that reads the pages: the served one for engine = "openai"."""
    if config.model.engine == "openai":
        return f"{config.model.name} (served)"
    return config.model.path


def server_of(config: Config) -> dict[str, Any] | None:
    """engine = "openai": the server's URL, whether it answers, the models it lists."""
    if config.model.engine != "openai":
        return None
    return server_report(config.model)


def server_lines(server: dict[str, Any] | None) -> list[str]:
    if server is None:
        return []
    if not server["reachable"]:
        return [f"server   {server['url']}: not reachable: {server['error']}"]
    listed = ", ".join(server["models"]) or "none"
    note = "" if server["serves_name"] else f"  ({server['name']!r} is not listed)"
    return [f"server   {server['url']}: reachable; models {listed}{note}"]


def _meta_int(ledger: Ledger, key: str) -> int | None:
    """A measured byte count kept in the ledger's meta table; None when absent or unreadable."""
    with contextlib.suppress(TypeError, ValueError):
        return int(ledger.get_meta(key) or 0) or None
    return None


def render_device(r: dict[str, Any]) -> str:
    d, m, p = r["device"], r["model"], r["pool"]
    label = recommended_label(d["backend"])
    lines = [f"backend  {d['backend']}", f"device   {d['name']}",
             f"memory   {fmt.size(d['memory_bytes'])}"
             + (f" ({label} {fmt.size(d['recommended_bytes'])})"
                if label and d["recommended_bytes"] and d["recommended_bytes"] != d["memory_bytes"]
                else ""),
             f"cores    {d['cores']}" + (f"  gpus {d['gpus']}" if d.get("gpus") else ""),
             *([f"engine   {r['engine']['name']}: {r['engine']['reason']}"] if r.get("engine") else []),
             *server_lines(r.get("server"))]
    if r.get("server"):   # engine = "openai": no model memory here, nothing to plan against the device
        lines += [f"model    {m['path']}  (mode not sent: the server reads pages in its own resolution)",
                  f"pool     {p['count']} worker{'s' if p['count'] != 1 else ''}: {p['reason']}"]
    else:
        lines += [f"model    {m['reads']}" if m.get("reads") else
                  f"model    {m['path']}  mode {m['mode']}  "
                  + (fmt.size(m["size_bytes"]) if m["size_bytes"] is not None
                     else f"size unknown (not on disk; assuming {fmt.size(m['planned_bytes'])})"),
                  f"pool     {p['count']} worker{'s' if p['count'] != 1 else ''}: {p['reason']}",
                  f"         footprint {fmt.size(p['footprint_bytes'])} each"
                  + (" (measured)" if r["measured_peak_bytes"] else " (estimated)")
                  + f", budget {fmt.size(p['budget_bytes'])}, cap {p['cap']}"]
    lines += _batch_lines(r)
    lines += [click.style(f"WARNING  {w}", fg="red", bold=True) for w in r["warnings"]]
    return "\n".join(lines)


def _batch_lines(r: dict[str, Any]) -> list[str]:
    p = r["pool"]
    batch = p.get("batch") or 1
    lines = [f"batch    up to {batch} page{'' if batch == 1 else 's'} in flight per worker"
             + (f": {p['batch_reason']}" if p.get("batch_reason") else "")]
    if p.get("page_bytes"):
        lines.append(f"         {fmt.size(p['page_bytes'])} per page in flight"
                     + (" (measured)" if r.get("measured_page_bytes") else " (estimated)"))
    recycle = p.get("recycle_bytes")
    if not recycle:
        return lines + ["recycle  never (no memory limit)"]
    lines.append(f"recycle  a worker past {fmt.size(recycle)} of active memory is replaced")
    if p.get("recycle_reason"):
        lines.append(f"         {p['recycle_reason']}")
    return lines
