"""The API's bearer token: made once, at the first start with the API on (or by `ocrd api token`),
in the state dir (0600, like the ledger: whoever reads it can submit and read every page's text).
Every request must carry it (`Authorization: Bearer ...`) unless `[api] auth = "none"`, which the
config allows on a loopback listen only (config.py)."""

from __future__ import annotations

import hmac
import os
import secrets
from pathlib import Path

from ..config import Config
from ..files import PRIVATE, make_private_dir

TOKEN_FILE = "api-token"


def token_path(config: Config) -> Path:
    return config.state_dir / TOKEN_FILE


def ensure_token(config: Config) -> str:
    """The token, made now if there is none. Made whole before it appears under its name (a
    link of a finished temp file), so a reader racing the first start never sees half of one."""
    path = token_path(config)
    if not path.exists():
        make_private_dir(config.state_dir)
        temp = path.with_name(f".{TOKEN_FILE}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE)
        try:
            os.write(fd, (secrets.token_urlsafe(32) + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(temp, path)         # fails if another process made one first: theirs stands
        except FileExistsError:
            pass
        finally:
            temp.unlink()
    return path.read_text().strip()


def token_matches(given: str | None, token: str) -> bool:
    """A constant-time comparison: how long it takes says nothing about the token."""
    return given is not None and hmac.compare_digest(given.encode(), token.encode())
