"""The `ocrd` command line: one click group, one function per command.

Heavy modules (the ledger, mlx through the device probe, the supervisor) are imported inside the
commands that need them, so `ocrd --help` stays fast.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import click

from . import _format as fmt

if TYPE_CHECKING:
    from ocrd.daemon.config import Config

WATCH_INTERVAL_S = 2.0
STALE_HEARTBEAT_S = 120.0
_JSON_HELP = "Print JSON instead of a table."


def _obj(ctx: click.Context) -> dict[str, Any]:
    return ctx.find_root().obj


def _load(ctx: click.Context) -> Config:
    """The config named by --config / OCRD_CONFIG; a bad one is a usage error (exit 2)."""
    from ocrd.daemon.config import ConfigError, load_config
    try:
        return load_config(_obj(ctx).get("config_path"))
    except ConfigError as exc:
        click.echo(f"ocrd: {exc}", err=True)
        ctx.exit(2)


def _fail(ctx: click.Context, message: str, code: int = 1) -> None:
    click.echo(f"ocrd: {message}", err=True)
    ctx.exit(code)


@contextlib.contextmanager
def _ledger(config: Config, *, create: bool = False) -> Iterator[Any]:
    """The ledger, or None when it does not exist yet and `create` is False (read-only commands
    must not create a state dir as a side effect)."""
    if not config.ledger_url and not config.ledger_path.exists():
        if not create:
            yield None
            return
        config.state_dir.mkdir(parents=True, exist_ok=True)
    from ocrd.ledger.store import Ledger
    try:
        ledger = Ledger(config.db_url)
    except Exception as exc:  # corrupt file, unreachable server, newer schema...
        _fail(click.get_current_context(),
              f"cannot open the ledger {_where(config)}: {_first_line(exc)} (see `ocrd doctor`)")
    try:
        yield ledger
    finally:
        ledger.close()


def _where(config: Config) -> str:
    return str(config.ledger_path) if not config.ledger_url else config.ledger_url.partition("@")[2] or "(ledger.url)"


def _first_line(exc: BaseException) -> str:
    lines = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
              default=None, metavar="PATH",
              help="Config file (TOML). Default: $OCRD_CONFIG, else the built-in configs/ocrd.toml.")
@click.pass_context
def main(ctx: click.Context, config_path: Path | None) -> None:
    """ocrd: a local OCR ingestion daemon.

    Drop PDFs and images into an inbox folder; the daemon OCRs every page with a pool of
    persistent model workers and writes markdown to the outbox. Exit codes: 0 ok, 1 failure,
    2 bad usage (including a bad config).
    """
    ctx.ensure_object(dict)
    ctx.obj["config_path"] = config_path
    if ctx.invoked_subcommand not in (None, "run"):
        _quiet_logs()


def _quiet_logs() -> None:
    """Commands print their own one-line results; the daemon modules they call (ingest...) log
    events meant for the daemon's log, so only errors get through, and to stderr."""
    import logging

    import structlog
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR),
                        logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    logging.getLogger().setLevel(logging.ERROR)


@main.command()
@click.pass_context
def run(ctx: click.Context) -> None:
    """Run the daemon in the foreground (what launchd/systemd start).

    SIGTERM or Ctrl-C stops it warmly (in-flight pages are released); a second signal stops it at
    once.
    """
    config = _load(ctx)
    from ocrd.daemon.supervisor import run_daemon
    sys.exit(run_daemon(config))


# -- status ---------------------------------------------------------------------------------------

def _device_of(config: Config, ledger: Any, running: bool) -> dict[str, Any]:
    """The running daemon's device (ledger meta) or, with no daemon, a live probe."""
    recorded = None
    if ledger is not None:
        with contextlib.suppress(TypeError, ValueError):
            recorded = json.loads(ledger.get_meta("device") or "null")
    if running and isinstance(recorded, dict):
        return {k: recorded.get(k) for k in ("backend", "name", "memory_bytes")}
    try:
        from ocrd.daemon.device import detect_device
        d = detect_device()
        return {"backend": d.backend, "name": d.name, "memory_bytes": d.memory_bytes}
    except Exception as exc:  # report, don't crash status
        if isinstance(recorded, dict):
            return {k: recorded.get(k) for k in ("backend", "name", "memory_bytes")}
        return {"backend": None, "name": f"unknown ({exc})", "memory_bytes": None}


def _status(config: Config) -> dict[str, Any]:
    from ocrd.daemon.lockfile import running_pid
    from ocrd.ledger.states import JobState, PageState

    pid = running_pid(config.lock_path)
    with _ledger(config) as ledger:
        if ledger is None:
            counts = {"jobs": {s.value: 0 for s in JobState}, "pages": {s.value: 0 for s in PageState}}
            workers, rate, model_status, pool = [], {}, None, None
        else:
            counts = ledger.counts()
            workers = ledger.workers_status()
            rate = ledger.throughput()
            model_status, pool = ledger.get_meta("model_status"), None
            with contextlib.suppress(TypeError, ValueError):
                pool = json.loads(ledger.get_meta("pool_plan") or "null")
        device = _device_of(config, ledger, pid is not None)

    ppm = rate.get("pages_per_min_5")
    if ppm is None:
        ppm = rate.get("pages_per_min_60")
    waiting = counts["pages"].get("queued", 0) + counts["pages"].get("running", 0)
    keys = ("id", "pid", "backend", "state", "heartbeat_age_s", "current_page", "active_memory_bytes",
            "peak_memory_bytes", "pages_done", "host", "device_name", "tokens_per_s")
    workers = [{k: w.get(k) for k in keys} for w in workers]

    warnings = []
    if device.get("backend") == "cpu":
        from ocrd.daemon.device import CPU_WARNING
        warnings.append(CPU_WARNING)
    if model_status and model_status not in ("ok", "loading"):
        warnings.append(f"model {model_status}")
    if pid is None and waiting:
        warnings.append(f"daemon not running: {waiting} pages waiting")
    if pid is not None:
        for w in workers:
            age = w.get("heartbeat_age_s")
            if age is not None and age > STALE_HEARTBEAT_S and w.get("state") not in ("stopped", "dead"):
                warnings.append(f"worker {w['id']}: no heartbeat for {fmt.duration(age)}")
    return {
        "daemon": {"running": pid is not None, "pid": pid},
        "device": device,
        "model": {"path": config.model.path, "mode": config.model.mode, "status": model_status},
        "model_status": model_status,
        "pool": pool if pid is not None else None,   # the running daemon's plan {count, reason}
        "jobs": counts["jobs"],
        "pages": counts["pages"],
        "workers": workers,
        "pages_per_min": ppm,
        "eta_s": rate.get("eta_s"),
        "warnings": warnings,
        "state_dir": str(config.state_dir),
    }


def _render_status(s: dict[str, Any]) -> str:
    d = s["daemon"]
    lines = [f"daemon   {'running (pid %s)' % d['pid'] if d['running'] else 'not running'}"]
    dev = s["device"]
    lines.append(f"device   {dev.get('backend') or '?'}  {dev.get('name') or '?'}  {fmt.size(dev.get('memory_bytes'))}")
    m = s["model"]
    status = m["status"] or "unknown"
    if status not in ("ok", "loading", "unknown"):
        status = status.split(":")[0].upper() + " (see below)"  # the whole reason is a warning
    lines.append(f"model    {m['path']}  mode {m['mode']}  status {status}")
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


@main.command()
@click.option("--json", "as_json", is_flag=True, help=_JSON_HELP)
@click.option("--watch", is_flag=True, help=f"Refresh every {WATCH_INTERVAL_S:g} s until Ctrl-C "
              "(with --json: one object per line).")
@click.pass_context
def status(ctx: click.Context, as_json: bool, watch: bool) -> None:
    """Daemon, device, model, workers, queue counts, pages/min and ETA.

    Works with no daemon running (it says so and still shows the queue).
    """
    config = _load(ctx)
    try:
        while True:
            s = _status(config)
            if as_json:
                click.echo(fmt.to_json(s, pretty=not watch))
            else:
                if watch:
                    click.clear()
                click.echo(_render_status(s))
            if not watch:
                return
            time.sleep(WATCH_INTERVAL_S)
    except KeyboardInterrupt:
        ctx.exit(0)


# -- jobs -----------------------------------------------------------------------------------------

@main.command()
@click.argument("job_ids", nargs=-1, type=int, metavar="[JOB_ID]...")
@click.option("--failed", "all_failed", is_flag=True, help="Retry every failed job.")
@click.pass_context
def retry(ctx: click.Context, job_ids: tuple[int, ...], all_failed: bool) -> None:
    """Requeue failed jobs; only their failed pages run again."""
    if not job_ids and not all_failed:
        raise click.UsageError("give the job ids to retry, or --failed for every failed job")
    if job_ids and all_failed:
        raise click.UsageError("give job ids or --failed, not both")
    config = _load(ctx)
    problems: list[str] = []
    results: list[tuple[int, str]] = []
    with _ledger(config) as ledger:
        if ledger is None:
            if all_failed:
                click.echo("no failed jobs")
                return
            _fail(ctx, f"no ledger yet at {config.ledger_path}: no job {job_ids[0]}")
        from ocrd.daemon.ingest import retry_jobs
        wanted: list[int] = []
        for job_id in dict.fromkeys(job_ids):
            row = ledger.job(job_id)
            if row is None:
                problems.append(f"job {job_id}: not found")
            elif row["state"] != "failed":
                problems.append(f"job {job_id}: is {row['state']}, not failed")
            else:
                wanted.append(job_id)
        results = retry_jobs(config, ledger, None if all_failed else wanted) if (wanted or all_failed) else []
        for job_id, message in results:
            # retry_jobs answers in words; the job's state says whether it worked.
            row = ledger.job(job_id)
            if row is not None and row["state"] == "queued":
                click.echo(f"job {job_id}: {message}")
            else:
                problems.append(f"job {job_id}: {message}")
    if all_failed and not results:
        click.echo("no failed jobs")
    for p in problems:
        click.echo(f"ocrd: {p}", err=True)
    ctx.exit(1 if problems else 0)


@main.command()
@click.argument("paths", nargs=-1, required=True,
                type=click.Path(exists=True, path_type=Path), metavar="PATH...")
@click.pass_context
def submit(ctx: click.Context, paths: tuple[Path, ...]) -> None:
    """Enqueue files without the watcher.

    A file inside an inbox is moved into the spool as if the watcher had seen it; a file elsewhere
    is copied (yours stays) and its output goes to the first inbox's outbox. A folder submits its
    supported files.
    """
    config = _load(ctx)
    from ocrd.daemon.ingest import submit_paths
    failed = 0
    with _ledger(config, create=True) as ledger:
        for path, result, error in submit_paths(config, ledger, [p.absolute() for p in paths]):
            state = getattr(result, "state", None)
            if error is not None or result is None or state == "failed":
                failed += 1
                where = f" (job {result.job_id})" if result is not None else ""
                click.echo(f"{path}: failed{where}: {error or 'see ocrd show'}", err=True)
            elif state == "duplicate":
                click.echo(f"{path}: duplicate of job {result.duplicate_of} (job {result.job_id}, skipped)")
            else:
                row = ledger.job(result.job_id) or {}
                n = row.get("pages_total")
                click.echo(f"{path}: job {result.job_id} {state} ({n} page{'' if n == 1 else 's'})")
    ctx.exit(1 if failed else 0)


@main.command()
@click.option("--state", type=click.Choice(["queued", "running", "done", "failed", "duplicate"]),
              default=None, help="Only jobs in this state.")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True,
              help="At most this many jobs, newest first.")
@click.option("--json", "as_json", is_flag=True, help=_JSON_HELP)
@click.pass_context
def jobs(ctx: click.Context, state: str | None, limit: int, as_json: bool) -> None:
    """List jobs, newest first."""
    config = _load(ctx)
    with _ledger(config) as ledger:
        rows = [] if ledger is None else ledger.list_jobs(state=state, limit=limit)
    if as_json:
        click.echo(fmt.to_json(rows))
        return
    if not rows:
        click.echo("no jobs" + (f" in state {state}" if state else ""))
        return
    table = [(r["id"], r["state"], f"{r.get('pages_done') or 0}/{r.get('pages_total') or 0}",
              fmt.when(r.get("updated_at")), fmt.one_line(fmt.name_of(r.get("source_path")), 40),
              fmt.one_line(r.get("error"), 60) or "") for r in rows]
    click.echo(fmt.table(("ID", "STATE", "PAGES", "UPDATED", "SOURCE", "ERROR"), table, right=(0, 2)))


@main.command()
@click.argument("job_id", type=int)
@click.option("--json", "as_json", is_flag=True, help=_JSON_HELP)
@click.pass_context
def show(ctx: click.Context, job_id: int, as_json: bool) -> None:
    """One job: its paths, pages and events."""
    config = _load(ctx)
    with _ledger(config) as ledger:
        job = None if ledger is None else ledger.show_job(job_id)
    if job is None:
        _fail(ctx, f"job {job_id} not found")
    if as_json:
        click.echo(fmt.to_json(job))
        return
    fields = [("job", job["id"]), ("state", job["state"]),
              ("pages", f"{job.get('pages_done') or 0}/{job.get('pages_total') or 0}"),
              ("attempts", job.get("attempts")), ("inbox", job.get("inbox")),
              ("source", job.get("source_path")), ("original", job.get("spool_path")),
              ("output", job.get("output_path")), ("sha256", job.get("sha256")),
              ("size", fmt.size(job.get("size_bytes"))), ("created", fmt.when(job.get("created_at"))),
              ("updated", fmt.when(job.get("updated_at"))), ("finished", fmt.when(job.get("finished_at"))),
              ("error", job.get("error"))]
    click.echo("\n".join(f"{k:<9} {'-' if v is None else v}" for k, v in fields))
    pages = job.get("pages") or []
    if pages:
        rows = [(p["page_no"], p["state"], p.get("attempts"), p.get("lease_owner") or "-",
                 "-" if p.get("seconds") is None else f"{p['seconds']:.1f}s",
                 p.get("generation_tokens") if p.get("generation_tokens") is not None else "-",
                 fmt.one_line(p.get("error"), 60)) for p in pages]
        click.echo("\n" + fmt.table(("PAGE", "STATE", "TRIES", "WORKER", "TIME", "TOKENS", "ERROR"),
                                    rows, right=(0, 2, 4, 5)))
    events = job.get("events") or []
    if events:
        rows = [(fmt.when(e.get("at")), e.get("kind"), fmt.one_line(e.get("detail"), 80)) for e in events]
        click.echo("\n" + fmt.table(("AT", "EVENT", "DETAIL"), rows))


# -- device ---------------------------------------------------------------------------------------

def _device_report(config: Config) -> dict[str, Any]:
    from ocrd.daemon import device as dev

    info = dev.detect_device()
    size = dev.model_size_bytes(config.model.path)
    measured = None
    with _ledger(config) as ledger:
        if ledger is not None:
            with contextlib.suppress(TypeError, ValueError):
                measured = int(ledger.get_meta(dev.footprint_key(config.model)) or 0) or None
    plan = dev.plan_for_config(info, config, measured)
    warnings = [dev.CPU_WARNING] if info.backend == "cpu" else []
    return {
        "device": {"backend": info.backend, "name": info.name, "memory_bytes": info.memory_bytes,
                   "recommended_bytes": info.recommended_bytes, "cores": info.cores, "gpus": info.gpus},
        "model": {"path": config.model.path, "mode": config.model.mode, "size_bytes": size,
                  "planned_bytes": size or dev.DEFAULT_MODEL_BYTES},
        "measured_peak_bytes": measured,
        "pool": {"count": plan.count, "footprint_bytes": plan.footprint_bytes,
                 "budget_bytes": plan.budget_bytes, "cap": plan.cap, "reason": plan.reason},
        "warnings": warnings,
    }


@main.command()
@click.option("--json", "as_json", is_flag=True, help=_JSON_HELP)
@click.pass_context
def device(ctx: click.Context, as_json: bool) -> None:
    """Device, memory, and the worker pool size it would pick, and why."""
    config = _load(ctx)
    r = _device_report(config)
    if as_json:
        click.echo(fmt.to_json(r))
        return
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
    click.echo("\n".join(lines))


# -- service --------------------------------------------------------------------------------------

@main.command()
@click.argument("action", type=click.Choice(["install", "uninstall", "status", "restart"]))
@click.option("--dry-run", is_flag=True, help="Print the plist/unit and the commands; change nothing.")
@click.option("--platform", "platform_name", type=click.Choice(["macos", "linux"]), default=None,
              help="Preview another platform's file (only with --dry-run).")
@click.pass_context
def service(ctx: click.Context, action: str, dry_run: bool, platform_name: str | None) -> None:
    """Install or manage the launchd/systemd service.

    A launchd agent on macOS, a systemd user unit on Linux.
    ACTION is install, uninstall, status or restart. install writes the plist/unit for this
    installation and config and starts it at once and at every login.
    """
    from ocrd.daemon.service import ServiceError, ServiceManager, current_platform, program_argv

    here = current_platform()
    platform_name = platform_name or here
    if platform_name != here and not dry_run:
        raise click.UsageError(f"this is {here}: --platform {platform_name} works only with --dry-run")
    run = _obj(ctx).get("service_run")  # a test seam; None: run the real commands
    manager = ServiceManager(platform_name, home=Path.home(), uid=os.getuid(),
                             **({"run": run} if run is not None else {}))
    content = None
    if action == "install":
        from ocrd.daemon.config import DEFAULT_CONFIG
        config = _load(ctx)  # refuse to install a daemon that would crash on its config
        given = config.source if config.source and config.source != DEFAULT_CONFIG else None
        working_dir = given.absolute().parent if given else Path.home()
        content = manager.render(program=program_argv(), config_path=given, working_dir=working_dir)
    if dry_run:
        if content is not None:
            click.echo(f"# {manager.file_path}")
            click.echo(content.rstrip("\n"))
            click.echo("")
        verb = {"install": "write the file above, then run", "uninstall": "run, and remove "
                f"{manager.file_path}"}.get(action, "run")
        click.echo(f"# would {verb}:")
        for cmd in manager.commands(action):
            click.echo(shlex.join(cmd))
        return
    try:
        if action == "install":
            path = manager.install(content)
            click.echo(f"installed {path}")
            logs = (f"logs: {manager.log_dir}" if platform_name == "macos"
                    else "logs: journalctl --user -u ocrd.service")
            click.echo(f"{logs}; check with `ocrd service status` and `ocrd status`")
        elif action == "uninstall":
            existed = manager.uninstall()
            click.echo(f"removed {manager.file_path}" if existed else f"not installed ({manager.file_path} absent)")
        elif action == "restart":
            manager.restart()
            click.echo("restarted")
        else:
            result = manager.status()
            out = (result.stdout or "") + (result.stderr or "")
            click.echo(out.rstrip("\n") or f"exit status {result.returncode}")
            ctx.exit(0 if result.returncode == 0 else 1)
    except ServiceError as exc:
        _fail(ctx, str(exc))


# -- doctor ---------------------------------------------------------------------------------------

@main.command()
@click.option("--json", "as_json", is_flag=True, help=_JSON_HELP)
@click.pass_context
def doctor(ctx: click.Context, as_json: bool) -> None:
    """Check config, folders, model, ledger and device; name each fix.

    Exits 1 if any check failed (warnings do not count).
    """
    from ocrd.daemon.config import ConfigError, load_config
    from ocrd.daemon.doctor import Check, run_checks
    try:
        checks = run_checks(load_config(_obj(ctx).get("config_path")))
    except ConfigError as exc:
        checks = [Check("config", False, str(exc), "fix that key in the config file")]
    if as_json:
        click.echo(fmt.to_json([c.__dict__ for c in checks]))
    else:
        width = max(len(c.name) for c in checks)
        for c in checks:
            mark = "FAIL" if not c.ok else "warn" if c.warn else "ok"
            color = "red" if not c.ok else "yellow" if c.warn else "green"
            click.echo(f"{click.style(f'{mark:<4}', fg=color)}  {c.name:<{width}}  {c.detail}")
            if c.fix and (not c.ok or c.warn):
                click.echo(f"{'':4}  {'':<{width}}  fix: {c.fix}")
    ctx.exit(0 if all(c.ok for c in checks) else 1)


if __name__ == "__main__":
    main(prog_name="ocrd")
