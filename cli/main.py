"""The `ocrd` command line: one click group, one function per command.

Heavy modules (the ledger, mlx through the device probe, the supervisor) are imported inside the
commands that need them, so `ocrd --help` stays fast.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import click

from ocrd.daemon.config import FORMATS
from ocrd.daemon.errors import first_line
from ocrd.ledger.states import JobState

from . import _format as fmt

if TYPE_CHECKING:
    from ocrd.daemon.config import Config
    from ocrd.ledger import Ledger

WATCH_INTERVAL_S = 2.0
EXIT_NOT_RUNNING = 3             # `ocrd status`, like LSB's "program is not running"
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
def _ledger(config: Config, *, create: bool = False) -> Iterator[Ledger | None]:
    """The ledger, or None when it does not exist yet and `create` is False (read-only commands
    must not create a state dir as a side effect). Any ledger error, opening it or during the
    command (a damaged page, a server gone), ends the command with one line and exit 1."""
    if not config.ledger_url and not config.ledger_path.exists():
        if not create:
            yield None
            return
        config.state_dir.mkdir(parents=True, exist_ok=True)
    from ocrd.ledger import Ledger, LedgerCorrupt, LedgerUnreachable
    from sqlalchemy.exc import DatabaseError
    try:
        ledger = Ledger(config.db_url, host=config.host_name)
    except LedgerCorrupt as exc:
        _fail(click.get_current_context(), str(exc))
    except Exception as exc:  # unreachable server, newer schema...
        _fail(click.get_current_context(),
              f"cannot open the ledger {_where(config)}: {first_line(exc)} (see `ocrd doctor`)")
    try:
        yield ledger
    except (LedgerCorrupt, LedgerUnreachable) as exc:   # met by the command itself: one line each
        _fail(click.get_current_context(), str(exc))
    except DatabaseError as exc:
        _fail(click.get_current_context(), f"the ledger {_where(config)}: {first_line(exc)}")
    finally:
        ledger.close()


def _where(config: Config) -> str:
    return str(config.ledger_path) if not config.ledger_url else config.ledger_url.partition("@")[2] or "(ledger.url)"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="ocrd", prog_name="ocrd", message="%(prog)s %(version)s")
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
    fmt.readable_output()
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

@main.command()
@click.option("--json", "as_json", is_flag=True, help=_JSON_HELP)
@click.option("--watch", is_flag=True, help=f"Refresh every {WATCH_INTERVAL_S:g} s until Ctrl-C "
              "(with --json: one object per line).")
@click.pass_context
def status(ctx: click.Context, as_json: bool, watch: bool) -> None:
    """Daemon, device, model, workers, queue counts, pages/min and ETA.

    Works with no daemon running (it says so and still shows the queue). Exit status as
    `systemctl status`: 0 running, 3 not running, 1 when the ledger can't be read (--watch: 0).
    """
    from . import reports

    config = _load(ctx)
    try:
        while True:
            with _ledger(config) as ledger:
                s, model = reports.status_report(config, ledger)
            if as_json:
                click.echo(fmt.to_json(s, pretty=not watch))
            else:
                if watch:
                    click.clear()
                click.echo(reports.render_status(s, model))
            if not watch:
                ctx.exit(0 if s["daemon"]["running"] else EXIT_NOT_RUNNING)
            time.sleep(WATCH_INTERVAL_S)
    except KeyboardInterrupt:
        ctx.exit(0)


@main.command()
@click.pass_context
def pause(ctx: click.Context) -> None:
    """Stop claiming new pages; files are still ingested and queued.

    Pages in flight finish. Survives a restart of the daemon; `ocrd resume` undoes it.
    """
    _set_paused(ctx, True)


@main.command()
@click.pass_context
def resume(ctx: click.Context) -> None:
    """Claim pages again after `ocrd pause`."""
    _set_paused(ctx, False)


def _set_paused(ctx: click.Context, paused: bool) -> None:
    config = _load(ctx)
    with _ledger(config, create=paused) as ledger:
        changed = ledger is not None and ledger.set_paused(paused)
    if paused:
        click.echo("paused: no new page is claimed; files still queue (`ocrd resume` to go on)"
                   if changed else "already paused")
    else:
        click.echo("resumed: pages are claimed again" if changed else "not paused")


# -- jobs -----------------------------------------------------------------------------------------

@main.command()
@click.argument("job_ids", nargs=-1, type=int, metavar="[JOB_ID]...")
@click.option("--failed", "all_failed", is_flag=True, help="Retry every failed job.")
@click.option("--force", is_flag=True, help="Also process `duplicate` jobs (same content as "
              "another job) anyway.")
@click.pass_context
def retry(ctx: click.Context, job_ids: tuple[int, ...], all_failed: bool, force: bool) -> None:
    """Requeue failed jobs; only their failed pages run again.

    With --force, a `duplicate` job is taken back from the archive and processed anyway.
    """
    if not job_ids and not all_failed:
        raise click.UsageError("give the job ids to retry, or --failed for every failed job")
    if job_ids and all_failed:
        raise click.UsageError("give job ids or --failed, not both")
    if force and all_failed:
        raise click.UsageError("--force takes job ids, not --failed")
    config = _load(ctx)
    with _ledger(config) as ledger:
        if ledger is None:
            if all_failed:
                click.echo("no failed jobs")
                return
            _fail(ctx, f"no ledger yet at {config.ledger_path}: no job {job_ids[0]}")
        from ocrd.daemon.intake.ingest import Ingestor
        from ocrd.daemon.intake.retry import RetryOutcome, retry_jobs
        results = retry_jobs(Ingestor(config, ledger), None if all_failed else list(dict.fromkeys(job_ids)),
                                                 force=force)
    if all_failed and not results:
        click.echo("no failed jobs")
    for r in results:
        if r.outcome.ok:
            click.echo(f"job {r.job_id}: {r.describe()}")
    # Jobs that were never retryable are named first, then those a retry could not bring back.
    problems = sorted((r for r in results if not r.outcome.ok), key=lambda r: r.outcome not in
                      (RetryOutcome.NO_SUCH_JOB, RetryOutcome.NOT_FAILED))
    for r in problems:
        click.echo(f"ocrd: job {r.job_id}: {r.describe()}", err=True)
    ctx.exit(1 if problems else 0)


@main.command()
@click.argument("paths", nargs=-1, required=True,
                type=click.Path(exists=True, path_type=Path), metavar="PATH...")
@click.option("--force", is_flag=True, help="Process a file even if its content is a known job's "
              "(otherwise it is recorded as `duplicate`).")
@click.pass_context
def submit(ctx: click.Context, paths: tuple[Path, ...], force: bool) -> None:
    """Enqueue files without the watcher.

    A file inside an inbox is moved into the spool as if the watcher had seen it; a file elsewhere
    is copied (yours stays) and its output goes to the first inbox's outbox. A folder submits its
    supported files. With --force, a duplicate is processed anyway.
    """
    config = _load(ctx)
    from ocrd.daemon.intake.ingest import Ingestor
    failed = 0
    with _ledger(config, create=True) as ledger:
        submitted = Ingestor(config, ledger).submit([p.absolute() for p in paths], force=force)
    for s in submitted:
        result = s.result
        if s.error is not None or result is None or result.state == JobState.FAILED:
            failed += 1
            where = f" (job {result.job_id})" if result is not None else ""
            click.echo(f"{s.path}: failed{where}: {s.error or 'see ocrd show'}", err=True)
        elif result.state == JobState.DUPLICATE:
            click.echo(f"{s.path}: duplicate of job {result.duplicate_of} (job {result.job_id}, skipped)")
        else:
            plural = "" if s.pages == 1 else "s"
            click.echo(f"{s.path}: job {result.job_id} {result.state} ({s.pages} page{plural})")
    ctx.exit(1 if failed else 0)


@main.command()
@click.option("--state", type=click.Choice([s.value for s in JobState]),
              default=None, help="Only jobs in this state.")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True,
              help="At most this many jobs, newest first.")
@click.option("--json", "as_json", is_flag=True, help=_JSON_HELP)
@click.pass_context
def jobs(ctx: click.Context, state: str | None, limit: int, as_json: bool) -> None:
    """List jobs, newest first."""
    config = _load(ctx)
    with _ledger(config) as ledger:
        wanted = None if state is None else JobState(state)
        rows = [] if ledger is None else ledger.list_jobs(state=wanted, limit=limit)
    if as_json:
        click.echo(fmt.to_json(rows))
        return
    if not rows:
        click.echo("no jobs" + (f" in state {state}" if state else ""))
        return
    from ocrd.daemon.output.outbox import relative_source
    table = [(r["id"], r["state"], f"{r.get('pages_done') or 0}/{r.get('pages_total') or 0}",
              fmt.when(r.get("updated_at")),
              fmt.tail(relative_source(config, r["inbox"], r["source_path"]).as_posix(), 40),
              fmt.one_line(r.get("error"), 60) or "") for r in rows]
    headers = ("ID", "STATE", "PAGES", "UPDATED", "SOURCE", "ERROR")
    if len({r.get("host") for r in rows} - {None}) > 1:   # several hosts: who delivers each
        headers, table = (*headers, "HOST"), [(*t, r.get("host") or "-") for t, r in zip(table, rows)]
    click.echo(fmt.table(headers, table, right=(0, 2)))


@main.command()
@click.argument("job_id", type=int)
@click.option("--json", "as_json", is_flag=True, help=_JSON_HELP)
@click.option("--text", "as_text", is_flag=True,
              help="Print the job's markdown (its outbox file's bytes, rebuilt from the ledger).")
@click.pass_context
def show(ctx: click.Context, job_id: int, as_json: bool, as_text: bool) -> None:
    """One job: its paths, pages and events."""
    if as_json and as_text:
        raise click.UsageError("--json or --text, not both")
    config = _load(ctx)
    with _ledger(config) as ledger:
        job = None if ledger is None else ledger.show_job(job_id)
        if job is not None and as_text:
            _print_text(ctx, ledger, job)
            return
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
    if job.get("pages"):
        from .reports import render_pages
        click.echo("\n" + render_pages(job["pages"]))
    events = job.get("events") or []
    if events:
        rows = [(fmt.when(e.get("at")), e.get("kind"), fmt.one_line(e.get("detail"), 80)) for e in events]
        click.echo("\n" + fmt.table(("AT", "EVENT", "DETAIL"), rows))


@main.command()
@click.argument("job_ids", type=int, nargs=-1, required=True, metavar="JOB_ID...")
@click.option("--format", "formats", multiple=True, type=click.Choice(FORMATS),
              help="A format to write (repeat for several); default: the job's inbox's formats.")
@click.option("--to", "to", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="The folder to write into (made if missing); files are never overwritten.")
@click.pass_context
def export(ctx: click.Context, job_ids: tuple[int, ...], formats: tuple[str, ...], to: Path) -> None:
    """Make a done job's outputs again, from the ledger and its archived original."""
    from ocrd.daemon.output.export import export_job
    config = _load(ctx)
    failed = 0
    with _ledger(config) as ledger:
        if ledger is None:
            _fail(ctx, f"no ledger at {config.ledger_path}: nothing was ever ingested")
        for job_id in job_ids:
            done = export_job(config, ledger, job_id, tuple(dict.fromkeys(formats)) or None, to.expanduser())
            for path in done.paths:
                click.echo(f"job {job_id}: {path}")
            if done.error:
                failed += 1
                click.echo(f"ocrd: {done.error}", err=True)
    ctx.exit(1 if failed else 0)


def _print_text(ctx: click.Context, ledger: Ledger, job: dict[str, Any]) -> None:
    """`show --text`: the markdown the outbox file was written with, from the page texts in the
    ledger (so it works after the file was moved or deleted), as UTF-8 bytes."""
    from ocrd.daemon.output.writers import render_text
    if job["state"] != JobState.DONE:
        _fail(ctx, f"job {job['id']} is {job['state']}"
              f" ({job.get('pages_done') or 0}/{job.get('pages_total') or 0} pages): no text yet"
              if job["state"] in (JobState.QUEUED, JobState.RUNNING) else
              f"job {job['id']} is {job['state']}: it has no text")
    out = sys.stdout.buffer
    try:
        out.write(render_text(ledger.done_pages(job["id"]), "md").encode("utf-8"))
        out.flush()
    except BrokenPipeError:   # `ocrd show 12 --text | head`: quiet, as `cat` is
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


# -- device ---------------------------------------------------------------------------------------

@main.command()
@click.option("--json", "as_json", is_flag=True, help=_JSON_HELP)
@click.pass_context
def device(ctx: click.Context, as_json: bool) -> None:
    """Device, memory, and the worker pool size it would pick, and why."""
    config = _load(ctx)
    from . import reports

    with _ledger(config) as ledger:
        r = reports.device_report(config, ledger)
    if as_json:
        click.echo(fmt.to_json(r))
        return
    click.echo(reports.render_device(r))


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
    from .service import ServiceError, ServiceManager, current_platform, program_argv

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
        click.echo(manager.dry_run(action, content))
        return
    try:
        message, code = manager.perform(action, content)
    except ServiceError as exc:
        _fail(ctx, str(exc))
    else:
        click.echo(message)
        ctx.exit(code)


# -- doctor ---------------------------------------------------------------------------------------

@main.command()
@click.option("--json", "as_json", is_flag=True, help=_JSON_HELP)
@click.pass_context
def doctor(ctx: click.Context, as_json: bool) -> None:
    """Check config, folders, model, ledger and device; name each fix.

    Exits 1 if any check failed (warnings do not count).
    """
    from ocrd.daemon.config import ConfigError, load_config
    from .doctor import Check, render_checks, run_checks
    try:
        checks = run_checks(load_config(_obj(ctx).get("config_path")))
    except ConfigError as exc:
        checks = [Check("config", False, str(exc), "fix that key in the config file")]
    click.echo(fmt.to_json([c.__dict__ for c in checks]) if as_json else render_checks(checks))
    ctx.exit(0 if all(c.ok for c in checks) else 1)


# -- search and the HTTP API ----------------------------------------------------------------------

@main.command(context_settings={"ignore_unknown_options": True})   # `-word` is a word to leave out
@click.argument("words", nargs=-1, required=True)
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True,
              help="At most this many pages: the newest that match.")
@click.option("--json", "as_json", is_flag=True, help=_JSON_HELP)
@click.pass_context
def search(ctx: click.Context, words: tuple[str, ...], limit: int, as_json: bool) -> None:
    """Find done pages by their words: job, page, source and a snippet.

    A page must hold every word; "a phrase" keeps its words in order, -word leaves out pages
    with it, OR gives alternatives. Exits 1 when no page matches (like grep).
    """
    config = _load(ctx)
    from ocrd.daemon.output.outbox import relative_source
    with _ledger(config) as ledger:
        hits = [] if ledger is None else ledger.search(" ".join(words), limit)
        behind = 0 if ledger is None else ledger.count_unindexed()
    for hit in hits:
        hit["name"] = relative_source(config, hit["inbox"], hit["source_path"]).as_posix()
    if behind:
        click.echo(f"ocrd: {behind} done page(s) are not indexed yet: the daemon indexes them "
                   "when it starts", err=True)
    if as_json:
        click.echo(fmt.to_json(hits))
    elif hits:
        rows = [(h["job_id"], f"{h['page_no']}/{h['pages_total']}", fmt.tail(h["name"], 40),
                 fmt.one_line(h["snippet"], 100)) for h in hits]
        click.echo(fmt.table(("JOB", "PAGE", "SOURCE", "SNIPPET"), rows, right=(0, 1)))
    else:
        click.echo("no page matches", err=True)
    ctx.exit(0 if hits else 1)


@main.group()
def api() -> None:
    """The HTTP API ([api] in the config; README: HTTP API)."""


@api.command()
@click.pass_context
def token(ctx: click.Context) -> None:
    """Print the API's bearer token (made now if the daemon has not made it yet)."""
    from ocrd.daemon.api.auth import ensure_token
    click.echo(ensure_token(_load(ctx)))


# `ocrd ledger check | backup | restore`, in a module of its own (it imports this one's helpers
# when a command runs)
from .ledger_commands import ledger as _ledger_group  # noqa: E402

main.add_command(_ledger_group)


if __name__ == "__main__":
    main(prog_name="ocrd")
