"""Sample inputs for the ingest tests, and a tiny process that runs IngestService (kill -9 target).

    python tests/ingest_runner.py CONFIG.toml [RESCAN_S]

prints "ready" once the start-up reconcile ran, then ingests until SIGTERM/SIGINT.
"""

from __future__ import annotations

import io
import signal
import sys
import threading
from pathlib import Path

from PIL import Image

from ocrd.daemon.config import Config, InboxConfig


def png_bytes(n: int, size: int = 8) -> bytes:
    """A small PNG whose pixels encode n, so every n gives different bytes."""
    img = Image.new("RGB", (size, size), ((n >> 16) & 255, (n >> 8) & 255, n & 255))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def pdf_bytes(n: int, pages: int = 1) -> bytes:
    frames = [Image.new("RGB", (32, 32), ((n + p) % 256, n // 256 % 256, 7)) for p in range(pages)]
    buf = io.BytesIO()
    frames[0].save(buf, "PDF", save_all=True, append_images=frames[1:])
    return buf.getvalue()


def make_config(root: Path, *, stable_for_s: float = 0.3, polling: bool = False,
                archive: bool = True, **inbox_kw) -> Config:
    inbox = InboxConfig(path=root / "inbox", outbox=root / "outbox",
                        archive=(root / "archive") if archive else None, failed=root / "failed",
                        stable_for_s=stable_for_s, polling=polling, **inbox_kw)
    return Config(state_dir=root / "state", inboxes=(inbox,))


def config_toml(root: Path, stable_for_s: float = 0.3) -> str:
    return (f'state_dir = "{root / "state"}"\n[[inbox]]\npath = "{root / "inbox"}"\n'
            f'outbox = "{root / "outbox"}"\narchive = "{root / "archive"}"\n'
            f'failed = "{root / "failed"}"\nstable_for_s = {stable_for_s}\n')


def main(argv: list[str]) -> int:
    from ocrd.daemon.config import load_config
    from ocrd.daemon.ingest import IngestService

    config = load_config(argv[1])
    rescan_s = float(argv[2]) if len(argv) > 2 else 60.0
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    service = IngestService(config, rescan_s=rescan_s, empty_grace_s=1.0, tick_s=0.05)
    service.start()
    try:
        service.reconciled.wait(60)
        print("ready", flush=True)
        stop.wait()
    finally:
        service.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
