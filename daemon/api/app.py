"""The API's routes (FastAPI, so `/openapi.json` describes them): thin, each a call of actions.py
on a worker thread (the ledger and ingest block), with uploads streamed by uploads.py first.

Every error is JSON, `{"error": "<one line>", ...}`, with its status: 400 a bad request, 401 no or
a wrong token, 404 no such job or file, 409 not possible in the job's state, 413 an upload over
`[api] max_upload`, 415 a file of no supported type (recorded as failed, as a dropped one is), 422
a file that can't be read (the same), 503 no inbox for uploads.
"""

from __future__ import annotations

import functools
import json
import time
from enum import StrEnum
from typing import Any, Callable, TypeVar

import anyio
import anyio.to_thread
import structlog
from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException

from ocrd.ledger import JobState

from ..config import FORMATS
from ..modes import MODES
from ..render import UNSUPPORTED
from .actions import Actions, ApiError, parse_options, parse_since
from .auth import token_matches
from .uploads import UploadRefused, stage_body, staging

log = structlog.get_logger()
T = TypeVar("T")

BLOCKING_CALLS = 4           # ledger and ingest calls at once (the API's ledger pool holds 4 + 2)
POLL_S = 0.5                 # /v1/ocr asks the ledger this often whether its job is done
MAX_WAIT_S = 600.0
Format = StrEnum("Format", {f: f for f in FORMATS})
MEDIA = {"md": "text/markdown; charset=utf-8", "pdf": "application/pdf",
         "json": "application/json", "txt": "text/plain; charset=utf-8"}
_UPLOAD_BODY = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": {
        "file": {"type": "string", "format": "binary", "description": "the document"},
        "mode": {"type": "string", "enum": list(MODES)}, "prompt": {"type": "string"},
        "formats": {"type": "string", "description": "comma-separated: " + ",".join(FORMATS)},
        "force": {"type": "boolean"}}}},
    "application/octet-stream": {"schema": {"type": "string", "format": "binary"},
                                 "description": "the document itself; its name in ?filename="}}}}
_NAME_HELP = "The document's name (raw bodies; multipart takes the file part's). Its outputs keep it."
_OPTION_HELP = {"mode": f"Its own DeepSeek-OCR mode ({', '.join(MODES)}); default: its inbox's.",
                "prompt": "Its own prompt; default: its inbox's.",
                "formats": f"Its own output formats, comma-separated ({','.join(FORMATS)}); default: its inbox's.",
                "force": "Process it even if the same bytes are a known job's."}


class _Json(JSONResponse):
    """ASCII JSON, as `--json` prints: a file name that is not UTF-8 travels as its \\udcXX escape."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, default=str).encode("ascii")


_bearer = HTTPBearer(auto_error=False, description="The token `ocrd api token` prints.")


async def _authorized(request: Request,
                      credentials: HTTPAuthorizationCredentials | None = Depends(_bearer)) -> None:
    token = request.app.state.token
    if token is not None and not token_matches(credentials.credentials if credentials else None, token):
        raise ApiError(401, "a bearer token is needed: Authorization: Bearer $(ocrd api token)")


class Api:
    """The routes over one Actions; `stopping` ends the waits of /v1/ocr when the daemon stops."""

    def __init__(self, actions: Actions, *, token: str | None, max_upload: int) -> None:
        self.actions, self.max_upload = actions, max_upload
        self.stopping = False
        self._limiter: anyio.CapacityLimiter | None = None
        self.app = FastAPI(title="ocrd", version="1", docs_url=None, redoc_url=None,
                           default_response_class=_Json,
                           description="OCR through the daemon's queue (README: HTTP API).")
        self.app.state.token = token
        self.app.add_exception_handler(ApiError, _api_error)
        self.app.add_exception_handler(UploadRefused, _refused)
        self.app.add_exception_handler(RequestValidationError, _invalid)
        self.app.add_exception_handler(HTTPException, _http_error)
        self.app.include_router(self._routes())

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """A blocking call on a worker thread, a few at a time."""
        if self._limiter is None:     # made on the event loop's thread
            self._limiter = anyio.CapacityLimiter(BLOCKING_CALLS)
        return await anyio.to_thread.run_sync(functools.partial(fn, *args, **kwargs), limiter=self._limiter)

    def _routes(self) -> APIRouter:
        r = APIRouter(prefix="/v1", dependencies=[Depends(_authorized)], default_response_class=_Json)
        upload_query = dict(filename=Query(None, description=_NAME_HELP),
                            mode=Query(None, description=_OPTION_HELP["mode"]),
                            prompt=Query(None, description=_OPTION_HELP["prompt"]),
                            formats=Query(None, description=_OPTION_HELP["formats"]),
                            force=Query(False, description=_OPTION_HELP["force"]))

        @r.post("/documents", status_code=202, openapi_extra=_UPLOAD_BODY,
                summary="Upload a document: 202 and its job; 200 and the known job for the same bytes")
        async def post_document(request: Request, filename: str | None = upload_query["filename"],
                                mode: str | None = upload_query["mode"],
                                prompt: str | None = upload_query["prompt"],
                                formats: str | None = upload_query["formats"],
                                force: bool = upload_query["force"]) -> _Json:
            job, fresh = await self._upload(request, filename, mode, prompt, formats, force)
            return _Json(job, status_code=202 if fresh else 200, headers={"Location": job["url"]})

        @r.post("/ocr", openapi_extra=_UPLOAD_BODY, response_class=Response,
                responses={200: {"content": {"text/markdown": {}}, "description": "the markdown"},
                           202: {"description": "not done within `wait`: the job, to poll"}},
                summary="Upload a document and wait for its markdown (the old app's call)")
        async def post_ocr(request: Request, wait: float = Query(60.0, ge=0, le=MAX_WAIT_S),
                           filename: str | None = upload_query["filename"],
                           mode: str | None = upload_query["mode"],
                           prompt: str | None = upload_query["prompt"],
                           formats: str | None = upload_query["formats"],
                           force: bool = upload_query["force"]) -> Response:
            job, _fresh = await self._upload(request, filename, mode, prompt, formats, force)
            return await self._wait_for_text(job["id"], time.monotonic() + wait)

        @r.get("/jobs", summary="Jobs, newest first")
        async def get_jobs(state: JobState | None = None, limit: int = Query(50, ge=1, le=1000),
                           since: str | None = Query(None, description="only jobs changed since (ISO-8601)")
                           ) -> _Json:
            jobs = await self.run(self.actions.jobs, state, limit, parse_since(since))
            return _Json({"jobs": jobs})

        @r.get("/jobs/{job_id}", summary="One job: state, progress, pages, error")
        async def get_job(job_id: int) -> _Json:
            return _Json(await self.run(self.actions.job, job_id))

        @r.get("/jobs/{job_id}/text", response_class=Response, summary="A done job's markdown",
               responses={200: {"content": {"text/markdown": {}}}})
        async def get_text(job_id: int) -> Response:
            return _markdown(job_id, await self.run(self.actions.text, job_id))

        @r.get("/jobs/{job_id}/files/{fmt}", response_class=FileResponse,
               summary="A done job's outbox file of one format (md, pdf, json, txt)")
        async def get_file(job_id: int, fmt: Format) -> FileResponse:
            path = await self.run(self.actions.file, job_id, fmt.value)
            return FileResponse(path, media_type=MEDIA[fmt.value], filename=path.name)

        @r.post("/jobs/{job_id}/retry", summary="Requeue a failed job (force: a duplicate too)")
        async def post_retry(job_id: int, force: bool = False) -> _Json:
            done = await self.run(self.actions.retry, job_id, force=force)
            job = await self.run(self.actions.job, job_id)
            return _Json({**job, "retry": {"outcome": done.outcome, "reason": done.describe()}})

        @r.post("/pause", summary="Claim no new page (files still queue)")
        async def post_pause() -> _Json:
            return _Json(await self.run(self.actions.set_paused, True))

        @r.post("/resume", summary="Claim pages again")
        async def post_resume() -> _Json:
            return _Json(await self.run(self.actions.set_paused, False))

        @r.get("/status", summary="What `ocrd status --json` prints")
        async def get_status() -> _Json:
            return _Json(await self.run(self.actions.status))

        @r.get("/search", summary="The newest done pages with these words, by document")
        async def get_search(q: str = Query(..., description='words, "a phrase", -word, OR'),
                             limit: int = Query(20, ge=1, le=500)) -> _Json:
            return _Json({"query": q, "hits": await self.run(self.actions.search, q, limit)})

        return r

    async def _upload(self, request: Request, filename: str | None, mode: str | None,
                      prompt: str | None, formats: str | None, force: bool) -> tuple[dict[str, Any], bool]:
        """Stage the body, submit it through ingest; the job that carries its text (a known
        one for the same bytes) and whether it is a new one. A refused upload keeps nothing."""
        parse_options(mode, prompt, formats)              # a bad option fails before the body is read
        async with staging(self.actions.config) as folder:
            staged = await stage_body(request, folder, self.max_upload, filename)
            if staged.size == 0:
                raise ApiError(400, "the upload is empty")
            fields = staged.fields
            options = parse_options(fields.get("mode", mode), fields.get("prompt", prompt),
                                    fields.get("formats", formats))
            force = force or fields.get("force", "").lower() in ("1", "true", "yes", "on")
            submitted = await self.run(self.actions.submit, staged.path, force=force, options=options)
        result = submitted.result
        name, size = staged.path.name, staged.size
        if result is None:
            status = 503 if "no inbox" in (submitted.error or "") else 500
            raise ApiError(status, f"{name}: {submitted.error}")
        upload = {"job_id": result.job_id, "state": result.state, "name": name, "bytes": size,
                  "pages": submitted.pages}
        log.info("api_upload", job_id=result.job_id, state=str(result.state), name=name, bytes=size,
                 duplicate_of=result.duplicate_of)
        if result.state == JobState.FAILED:
            job = await self.run(self.actions.job, result.job_id)
            raise ApiError(415 if submitted.error == UNSUPPORTED else 422, f"{name}: {submitted.error}",
                           job=job, upload=upload)
        job = await self.run(self.actions.job, result.duplicate_of or result.job_id)
        return {**job, "upload": upload}, result.duplicate_of is None

    async def _wait_for_text(self, job_id: int, deadline: float) -> Response:
        """The job's markdown once it is done (200); its view if it is not by `deadline` (202)."""
        while True:
            state = await self.run(self.actions.state, job_id)
            if state == JobState.DONE:
                return _markdown(job_id, await self.run(self.actions.text, job_id))
            if state == JobState.FAILED:
                job = await self.run(self.actions.job, job_id)
                raise ApiError(422, f"job {job_id} failed: {job['error']}", job=job)
            left = deadline - time.monotonic()
            if left <= 0 or self.stopping:
                return _Json(await self.run(self.actions.job, job_id), status_code=202,
                             headers={"Location": f"/v1/jobs/{job_id}"})
            await anyio.sleep(min(POLL_S, left))


def _markdown(job_id: int, text: str) -> Response:
    return Response(text.encode("utf-8"), media_type=MEDIA["md"], headers={"X-Ocrd-Job": str(job_id)})


def _error(status: int, reason: str, **extra: Any) -> _Json:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return _Json({"error": " ".join(reason.split()), "status": status, **extra},
                 status_code=status, headers=headers)


async def _api_error(_request: Request, exc: ApiError) -> _Json:
    return _error(exc.status, str(exc), **exc.extra)


async def _refused(_request: Request, exc: UploadRefused) -> _Json:
    log.warning("api_upload_refused", status=exc.status, reason=str(exc))
    return _error(exc.status, str(exc))


async def _invalid(_request: Request, exc: RequestValidationError) -> _Json:
    first = exc.errors()[0] if exc.errors() else {}
    where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("query", "path", "body"))
    return _error(400, f"{where}: {first.get('msg', 'invalid request')}")


async def _http_error(request: Request, exc: HTTPException) -> _Json:
    reason = {404: f"no such endpoint: {request.url.path} (see /openapi.json)",
              405: f"{request.method} is not allowed on {request.url.path}"}.get(exc.status_code)
    return _error(exc.status_code, reason or str(exc.detail))
