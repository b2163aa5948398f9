"""An upload's way in: the request's body streamed into a private staging folder under the state
dir, a chunk at a time (never whole in memory), refused past `[api] max_upload`, under a name
cleaned of folders and control characters. Ingest then moves the file into the spool (one rename:
the same disk) and records it (ingest.py `Ingestor.submit_upload`).

Each upload has a folder of its own (`uploads/<random>/`) so that its file can keep the name it was
sent with (which becomes its outbox name) whatever other uploads are called; `staging` removes
the folder with whatever is left in it, so a refused upload leaves nothing behind. A daemon killed
mid-upload leaves a folder: `clear_staging` empties it at the next start (its client got no answer).

Two ways to send a file: a raw body (`curl --data-binary @scan.pdf`, the name from `?filename=` or
a Content-Disposition header) or multipart/form-data (`curl -F file=@scan.pdf`), whose one file
part is the document and whose other fields (mode, prompt, formats, force) are options.
"""

from __future__ import annotations

import email.message
import mimetypes
import secrets
import shutil
import unicodedata
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import anyio.to_thread
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from ..config import Config
from ..files import PRIVATE, fit_name, make_private_dir

STAGING = "uploads"
DEFAULT_NAME = "upload"
MAX_NAME_BYTES = 100           # the spool adds 17 bytes and the intent 5 (ingest.spool_name: 120)
MAX_FIELDS, MAX_FIELD_BYTES = 16, 64 * 1024     # a multipart upload's option fields
_TYPES = {"application/pdf", "image/png", "image/jpeg", "image/tiff", "image/webp", "image/bmp",
          "image/gif"}         # a nameless raw upload of one of these gets its extension


class UploadRefused(Exception):
    """The upload was not taken (`status`: 400 or 413; str: the one-line reason); nothing of it
    is kept."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


@dataclass
class Staged:
    """A whole upload in its staging folder: its file, size, and a multipart upload's fields."""
    path: Path
    size: int = 0
    fields: dict[str, str] = field(default_factory=dict)


def staging_dir(config: Config) -> Path:
    return config.state_dir / STAGING


def clear_staging(config: Config) -> None:
    """Remove what uploads cut short by a crash left (at start, before any upload is taken)."""
    shutil.rmtree(staging_dir(config), ignore_errors=True)
    make_private_dir(staging_dir(config))


@asynccontextmanager
async def staging(config: Config) -> AsyncIterator[Path]:
    """A fresh private folder for one upload, removed on the way out with whatever is left in it
    (nothing once ingest moved the file into the spool; the partial file of a refused upload)."""
    folder = make_private_dir(staging_dir(config) / secrets.token_hex(8))
    try:
        yield folder
    finally:
        await anyio.to_thread.run_sync(lambda: shutil.rmtree(folder, ignore_errors=True))


def safe_name(given: str | None, content_type: str = "") -> str:
    """A file name for an upload: the last part of what the client sent (`../../x.pdf` and
    `C:\\scans\\x.pdf` are `x.pdf`), without control characters or leading dots (no hidden
    files), at most MAX_NAME_BYTES; `upload` (with the extension of a known content type) when
    nothing is left."""
    name = (given or "").replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(c for c in name if unicodedata.category(c)[0] != "C" or c == " ")
    name = name.strip().lstrip(".").strip()
    if not name:
        mime = content_type.split(";")[0].strip().lower()
        name = DEFAULT_NAME + ((mimetypes.guess_extension(mime) or "") if mime in _TYPES else "")
    return fit_name(name, MAX_NAME_BYTES)


def disposition_name(value: str | bytes | None) -> str | None:
    """The file name in a Content-Disposition value (`filename*=UTF-8''...` too), or None."""
    if not value:
        return None
    message = email.message.Message()
    message["content-disposition"] = value.decode("latin-1") if isinstance(value, bytes) else value
    return message.get_filename()


async def stage_body(request: Request, folder: Path, limit: int, name: str | None) -> Staged:
    """Stream the request's body into `folder`: a multipart upload's file part, or the raw body
    (named `name`, else by its Content-Disposition). Raises UploadRefused (413 past `limit`
    bytes, 400 for a body that is not what it says)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit + (MAX_FIELDS * MAX_FIELD_BYTES):
        raise UploadRefused(413, _too_large(limit))     # before reading a byte of it
    content_type = request.headers.get("content-type", "")
    try:
        if content_type.lower().startswith("multipart/form-data"):
            return await _Multipart(folder, limit, content_type).read(request)
        given = name or disposition_name(request.headers.get("content-disposition"))
        path = folder / safe_name(given, content_type)
        with open(path, "xb") as out:
            path.chmod(PRIVATE)
            size = await _copy(request.stream(), out, limit)
        return Staged(path, size)
    except ClientDisconnect:
        raise UploadRefused(400, "the client went away before the upload was whole") from None


async def _copy(chunks: AsyncIterator[bytes], out: BinaryIO, limit: int, size: int = 0) -> int:
    async for chunk in chunks:
        size += len(chunk)
        if size > limit:
            raise UploadRefused(413, _too_large(limit))
        await anyio.to_thread.run_sync(out.write, chunk)
    return size


def _too_large(limit: int) -> str:
    return f"the upload is larger than [api] max_upload ({limit / 1e6:g} MB)"


class _Multipart:
    """multipart/form-data, parsed as it streams (python-multipart's callbacks): the one part with
    a file name goes to disk, every other part is a small option field."""

    def __init__(self, folder: Path, limit: int, content_type: str) -> None:
        _, params = parse_options_header(content_type)
        if b"boundary" not in params:
            raise UploadRefused(400, "multipart/form-data without a boundary")
        self.folder, self.limit = folder, limit
        self.parser = MultipartParser(params[b"boundary"], {
            "on_part_begin": self._begin, "on_header_field": self._header_field,
            "on_header_value": self._header_value, "on_header_end": self._header_end,
            "on_headers_finished": self._headers_done, "on_part_data": self._data,
            "on_part_end": self._end})
        self.staged: Staged | None = None
        self.fields: dict[str, str] = {}
        self._out: BinaryIO | None = None
        self._pending: list[bytes] = []        # file bytes of the chunk being parsed
        self._header, self._value, self._headers = b"", b"", {}
        self._field: bytearray | None = None
        self._field_name = ""

    async def read(self, request: Request) -> Staged:
        try:
            async for chunk in request.stream():
                try:
                    self.parser.write(chunk)
                except FormParserError as exc:
                    raise UploadRefused(400, f"malformed multipart/form-data: {exc}") from None
                await self._flush()
            self.parser.finalize()
        finally:
            if self._out is not None:
                self._out.close()
        if self.staged is None:
            raise UploadRefused(400, 'no file in the form: send it as the part "file" '
                                     '(curl -F file=@scan.pdf)')
        self.staged.fields = self.fields
        return self.staged

    async def _flush(self) -> None:
        """Write the file bytes the last chunk held (off the event loop)."""
        if self._pending:
            data, self._pending = b"".join(self._pending), []
            self.staged.size += len(data)
            if self.staged.size > self.limit:
                raise UploadRefused(413, _too_large(self.limit))
            await anyio.to_thread.run_sync(self._out.write, data)

    def _begin(self) -> None:
        self._headers = {}

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._header += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _header_end(self) -> None:
        self._headers[self._header.lower()] = self._value
        self._header, self._value = b"", b""

    def _headers_done(self) -> None:
        disposition = self._headers.get(b"content-disposition", b"")
        _, params = parse_options_header(disposition)
        filename = disposition_name(disposition)
        if filename is None and b"filename" not in params:   # an option field
            if len(self.fields) >= MAX_FIELDS:
                raise UploadRefused(400, f"more than {MAX_FIELDS} form fields")
            self._field, self._field_name = bytearray(), params.get(b"name", b"").decode("utf-8", "replace")
            return
        if self.staged is not None:
            raise UploadRefused(400, "one file per upload")
        self._field = None
        content_type = self._headers.get(b"content-type", b"").decode("latin-1")
        path = self.folder / safe_name(filename, content_type)
        self._out = open(path, "xb")
        path.chmod(PRIVATE)
        self.staged = Staged(path)

    def _data(self, data: bytes, start: int, end: int) -> None:
        if self._field is None:
            self._pending.append(data[start:end])
            return
        self._field += data[start:end]
        if len(self._field) > MAX_FIELD_BYTES:
            raise UploadRefused(400, f"form field {self._field_name!r} is over {MAX_FIELD_BYTES} bytes")

    def _end(self) -> None:
        if self._field is not None:
            self.fields[self._field_name] = self._field.decode("utf-8", "replace")
            self._field = None
