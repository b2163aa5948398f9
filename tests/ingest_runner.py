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

import configs
from ocrd.daemon.config import Config


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


def make_config(root: Path, *, stable_for_s: float = 0.3, **inbox_keys: object) -> Config:
    """The ingest tests' config: everything under root, one inbox that settles quickly."""
    return configs.make_config(root, inbox={"stable_for_s": stable_for_s, **inbox_keys})


def config_toml(root: Path, stable_for_s: float = 0.3) -> str:
    """The same config as a file's text, for the runner processes."""
    return configs.to_toml(configs.config_dict(root, inbox={"stable_for_s": stable_for_s}))


def main(argv: list[str]) -> int:
    from ocrd.daemon.config import load_config
    from ocrd.daemon.intake.service import IngestService

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
