"""What the API does, as plain blocking calls over the same code as the CLI: uploads through
ingest.py's `Ingestor.submit_upload`, retries through `Ingestor.retry`, status through
cli/reports.py's `status_report` (what `ocrd status --json` prints), pause through
`Ledger.set_paused`, text through writers.py's `render_text` (what `ocrd show --text` prints,
byte for byte the outbox's markdown). The routes (app.py) run these on worker threads.

Every refusal is an ApiError: an HTTP status and a one-line reason.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Callable

from ocrd.ledger import JobOptions, JobState, Ledger

from ..config import FORMATS, Config
from ..intake.ingest import Ingestor, Submitted
from ..intake.retry import Retried, RetryOutcome, retry_jobs
from ..modes import MODES
from ..output.outbox import job_formats, relative_source
from ..output.writers import output_path, render_text, stem_of

ENDED = (JobState.DONE, JobState.FAILED, JobState.DUPLICATE)
_PAGE_KEYS = ("page_no", "state", "attempts", "error", "finish_reason", "engine", "seconds",
              "generation_tokens", "finished_at")
_RETRY_STATUS = {RetryOutcome.NO_SUCH_JOB: 404, RetryOutcome.STILL_FAILING: 422}   # else 409


class ApiError(Exception):
    """A request the API refuses: its HTTP status, a one-line reason, and what else to say."""

    def __init__(self, status: int, reason: str, **extra: Any) -> None:
        super().__init__(reason)
        self.status, self.extra = status, extra


def parse_options(mode: str | None, prompt: str | None, formats: str | None) -> JobOptions:
    """An upload's own choices, checked as the config checks an inbox's (400 when not valid);
    `formats` is comma-separated (`md,pdf`)."""
    if mode is not None and mode not in MODES:
        raise ApiError(400, f"mode: must be one of {', '.join(MODES)}, not {mode!r}")
    if prompt is not None and not prompt.strip():
        raise ApiError(400, "prompt: must not be empty")
    chosen = None
    if formats is not None:
        chosen = tuple(dict.fromkeys(f.strip() for f in formats.split(",") if f.strip()))
        if not chosen or any(f not in FORMATS for f in chosen):
            raise ApiError(400, f"formats: must be a comma-separated list of {', '.join(FORMATS)}, "
                                f"not {formats!r}")
    return JobOptions(mode=mode, prompt=prompt, formats=chosen)


def parse_since(since: str | None) -> datetime | None:
    """`?since=` as an aware UTC time (ISO-8601; no zone means UTC)."""
    if since is None:
        return None
    try:
        when = datetime.fromisoformat(since.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ApiError(400, f"since: must be an ISO-8601 time such as 2026-03-01T12:00:00Z, "
                            f"not {since!r}") from None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


class Actions:
    """The API's calls, over a Ledger of its own (each call one or a few short transactions)."""

    def __init__(self, config: Config, ledger: Ledger, *, on_queued: Callable[[], None] = lambda: None) -> None:
        self.config = config
        self.ledger = ledger
        self.ingestor = Ingestor(config, ledger, on_queued=on_queued)

    def reload(self, config: Config) -> None:
        """SIGHUP: the new inboxes and [api] inbox apply to the next upload."""
        self.config = config
        self.ingestor = Ingestor(config, self.ledger, on_queued=self.ingestor.on_queued)

    # -- uploads --------------------------------------------------------------------------------
    def submit(self, path: Path, *, force: bool, options: JobOptions) -> Submitted:
        return self.ingestor.submit_upload(path, force=force, options=options)

    # -- jobs -----------------------------------------------------------------------------------
    def job(self, job_id: int) -> dict[str, Any]:
        """One job as the API shows it, with its pages (404 when there is none)."""
        row = self.ledger.show_job(job_id)
        if row is None:
            raise ApiError(404, f"job {job_id} not found")
        view = self.view(row)
        view["pages"] = [{k: p.get(k) for k in _PAGE_KEYS} for p in row["pages"]]
        return view

    def jobs(self, state: JobState | None, limit: int, since: datetime | None) -> list[dict[str, Any]]:
        return [self.view(r) for r in self.ledger.list_jobs(state=state, limit=limit, since=since)]

    def view(self, row: dict[str, Any]) -> dict[str, Any]:
        """A jobs row for clients: its name below its inbox, progress, formats, and where its
        text and files are once it is done."""
        total, done = row.get("pages_total") or 0, row.get("pages_done") or 0
        formats = job_formats(self.config, row["inbox"], row.get("options"))
        ready = row["state"] == JobState.DONE and row.get("output_path")
        url = f"/v1/jobs/{row['id']}"
        return {
            "id": row["id"], "state": row["state"],
            "name": relative_source(self.config, row["inbox"], row["source_path"]).as_posix(),
            "source_path": row["source_path"], "pages_total": total, "pages_done": done,
            "progress": round(done / total, 4) if total else (1.0 if row["state"] == JobState.DONE else 0.0),
            "error": row.get("error"), "duplicate_of": row.get("duplicate_of"),
            "created_at": row.get("created_at"), "updated_at": row.get("updated_at"),
            "finished_at": row.get("finished_at"), "options": _options(row.get("options")),
            "formats": list(formats), "output_path": row.get("output_path"), "url": url,
            "text_url": f"{url}/text" if ready else None,
            "files": {f: f"{url}/files/{f}" for f in formats} if ready else {},
        }

    def state(self, job_id: int) -> JobState | None:
        job = self.ledger.job(job_id)
        return None if job is None else job.state

    def text(self, job_id: int) -> str:
        """A done job's markdown, as its outbox file holds it (rebuilt from the ledger, as
        `ocrd show --text`); 404 / 409 when there is no such job or no text yet."""
        job = self.ledger.job(job_id)
        if job is None:
            raise ApiError(404, f"job {job_id} not found")
        if job.state != JobState.DONE:
            raise ApiError(409, _no_output(job_id, job.state, job.pages_done, job.pages_total),
                           state=job.state)
        return render_text(self.ledger.done_pages(job_id), "md")

    def file(self, job_id: int, fmt: str) -> Path:
        """A done job's outbox file of one format (404 when it was not written or is gone)."""
        job = self.ledger.job(job_id)
        if job is None:
            raise ApiError(404, f"job {job_id} not found")
        if job.state != JobState.DONE or not job.output_path:
            raise ApiError(409, _no_output(job_id, job.state, job.pages_done, job.pages_total),
                           state=job.state)
        formats = job_formats(self.config, job.inbox, job.options)
        if fmt not in formats:
            raise ApiError(404, f"job {job_id} was not written as {fmt} (its formats: {', '.join(formats)}); "
                                f"`ocrd export {job_id} --format {fmt}` makes it")
        path = output_path(stem_of(Path(job.output_path)), fmt)
        if not path.is_file():
            raise ApiError(404, f"job {job_id}'s {fmt} is no longer in the outbox ({path}); "
                                f"`ocrd export {job_id} --format {fmt}` makes it again")
        return path

    def retry(self, job_id: int, *, force: bool) -> Retried:
        """`ocrd retry JOB_ID [--force]`; an outcome that is not a retry is an ApiError."""
        [done] = retry_jobs(self.ingestor, [job_id], force=force)
        if not done.outcome.ok:
            raise ApiError(_RETRY_STATUS.get(done.outcome, 409), f"job {job_id}: {done.describe()}",
                           outcome=str(done.outcome))
        return done

    # -- the daemon -----------------------------------------------------------------------------
    def set_paused(self, paused: bool) -> dict[str, Any]:
        changed = self.ledger.set_paused(paused)
        return {"paused": paused, "changed": changed}

    def status(self) -> dict[str, Any]:
        """What `ocrd status --json` prints."""
        from ocrd.cli.reports import status_report   # its one home; it imports the daemon's parts
        return status_report(self.config, self.ledger)[0]

    def search(self, query: str, limit: int) -> list[dict[str, Any]]:
        """The newest done pages with these words (Ledger.search), with their job's name."""
        if not query.strip():
            raise ApiError(400, "q: give the words to look for")
        return [{**hit, "name": relative_source(self.config, hit["inbox"], hit["source_path"]).as_posix(),
                 "url": f"/v1/jobs/{hit['job_id']}"} for hit in self.ledger.search(query, limit)]


def _options(text: str | None) -> dict[str, Any] | None:
    chosen = JobOptions.from_text(text)
    return None if chosen == JobOptions() else {k: v for k, v in chosen.__dict__.items() if v}


def _no_output(job_id: int, state: str, done: int | None, total: int | None) -> str:
    if state in (JobState.QUEUED, JobState.RUNNING):
        return f"job {job_id} is {state} ({done or 0}/{total or 0} pages): no text yet"
    return f"job {job_id} is {state}: it has no text"
