"""The API server: uvicorn on a thread of the daemon's process, started and stopped with it (as
metrics.py's server is), over a Ledger of its own so that uploads never wait on the supervisor's
connections. start() binds the socket itself, so a port already taken is logged at once (and the
daemon goes on without the API) and `"127.0.0.1:0"` gets a free port; the URL is recorded in the
ledger's meta for `ocrd status`. stop() lets requests in flight finish for a moment, then closes.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Callable

import structlog

from ocrd.ledger import Ledger

from ..config import Config
from . import URL_KEY
from .actions import Actions
from .auth import ensure_token
from .uploads import clear_staging

log = structlog.get_logger()

START_TIMEOUT_S = 10.0
GRACE_S = 3.0                 # requests in flight at a stop get this long


class ApiServer:
    """start() serves [api] listen on its own thread; stop() shuts it down. `ledger` is the
    supervisor's, for the URL in meta; requests use a Ledger of the server's own."""

    def __init__(self, config: Config, ledger: Ledger, *, on_queued: Callable[[], None] = lambda: None) -> None:
        self.config = config
        self.meta = ledger
        self.on_queued = on_queued    # an upload was queued (the daemon nudges idle workers)
        self.url: str | None = None
        self._ledger: Ledger | None = None
        self._actions: Actions | None = None
        self._server = None
        self._api = None
        self._thread: threading.Thread | None = None

    def start(self) -> str | None:
        """Serve `[api] listen`; the URL, or None when off or the address can't be bound."""
        address = self.config.api.address
        if address is None:
            self.meta.set_meta(URL_KEY, None)
            return None
        import uvicorn

        from .app import Api

        token = ensure_token(self.config) if self.config.api.auth == "token" else None
        clear_staging(self.config)
        try:
            sock = _bind(*address)
        except OSError as exc:
            log.error("api_not_served", listen=self.config.api.listen, error=exc.strerror or str(exc))
            self.meta.set_meta(URL_KEY, None)
            return None
        self._ledger = Ledger(self.config.db_url, host=self.config.host_name, pool_size=4)
        self._actions = Actions(self.config, self._ledger, on_queued=self.on_queued)
        self._api = Api(self._actions, token=token, max_upload=self.config.api.max_upload)
        self._server = uvicorn.Server(uvicorn.Config(
            self._api.app, log_config=None, access_log=False, lifespan="off", ws="none",
            timeout_graceful_shutdown=GRACE_S, server_header=False))
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]},
                                        name="ocrd-api", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._server.started and self._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        host, port = sock.getsockname()[:2]
        self.url = f"http://{f'[{host}]' if ':' in host else host}:{port}"
        self.meta.set_meta(URL_KEY, self.url)
        log.info("api_serving", url=self.url, auth=self.config.api.auth,
                 max_upload_bytes=self.config.api.max_upload)
        return self.url

    def reload(self, config: Config) -> None:
        """SIGHUP: new inboxes and [api] inbox for the next upload; a new listen, auth or
        max_upload needs a restart (said in the log)."""
        old, self.config = self.config, config
        if self._actions is not None:
            self._actions.reload(config)
        if (config.api.listen, config.api.auth, config.api.max_upload) != \
                (old.api.listen, old.api.auth, old.api.max_upload):
            log.warning("api_config_not_reloaded", note="[api] listen, auth and max_upload change "
                                                        "at the next start of the daemon")

    def stop(self) -> None:
        if self._server is None:
            return
        self._api.stopping = True          # /v1/ocr's waits answer 202 now
        self._server.should_exit = True
        self._thread.join(GRACE_S + 5)
        self._server = None
        self._ledger.close()
        try:
            self.meta.set_meta(URL_KEY, None)
        except Exception as exc:  # stopping anyway; status only shows a stale URL
            log.warning("api_url_not_cleared", error=str(exc))


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(False)
    return sock
