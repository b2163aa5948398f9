"""Run `python -m mlx_vlm.server` with the request-thread fix the tests need (argv passes through).

mlx-vlm 0.7.10's server answers every DeepSeek-OCR image request with 500 "There is no
Stream(cpu, N) in current thread": the request thread's preprocessing (ResponseGenerator.
_cpu_preprocess) leaves unevaluated MLX arrays that the generation thread can't evaluate
(upstream mlx-vlm #1049, #1614). Evaluating them on the request thread makes it answer 200.
Drop this launcher once mlx-vlm fixes it upstream.
"""

from __future__ import annotations

import functools
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx

from helpers import wait_for

LAUNCHER = Path(__file__).resolve()


def _patch() -> None:
    import mlx.core as mx
    from mlx_vlm.server.generation import ResponseGenerator

    preprocess = ResponseGenerator._cpu_preprocess

    @functools.wraps(preprocess)
    def evaluated(self, *args, **kwargs):
        inputs = preprocess(self, *args, **kwargs)
        mx.eval([v for v in _leaves(inputs) if isinstance(v, mx.array)])
        return inputs

    ResponseGenerator._cpu_preprocess = evaluated


class MlxVlmServer:
    """`python -m mlx_vlm.server` serving `model` on a free loopback port, through this launcher.
    `start` waits until it answers; `kill` (SIGKILL) and `start` again keep the port, so a daemon
    configured with `url` sees the same server go away and come back."""

    def __init__(self, model: Path, log: Path, *, api_key: str | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.model, self.log, self.api_key, self.env = model, log, api_key, env or {}
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 120) -> None:
        argv = [sys.executable, str(LAUNCHER), "--model", str(self.model), "--host", "127.0.0.1",
                "--port", str(self.port)]
        env = {**os.environ, **self.env}
        if self.api_key:   # the env var, not --api-key: no secret on a command line
            env["MLX_VLM_SERVER_API_KEY"] = self.api_key
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=env)
        wait_for(self._ready, timeout, interval=0.2, message=f"mlx-vlm's server to answer ({self.log})")

    def _ready(self) -> bool:
        assert self.proc is not None and self.proc.poll() is None, f"the server exited: {self.log}"
        try:
            return httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=2).status_code in (200, 401)
        except httpx.HTTPError:
            return False

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)


def _leaves(value):
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (list, tuple)):
        for item in value:
            yield from _leaves(item)
    else:
        yield value


if __name__ == "__main__":
    _patch()
    from mlx_vlm.server.cli import main

    main()
