"""Issue 11 point 8: `ocrd run` on a terminal (a real pseudo-terminal) prints a ready line naming
each inbox and its outbox, then one line per document; the JSON log file keeps everything. Not on
a terminal (launchd/systemd), the console stays JSON lines."""

from __future__ import annotations

import json
import os
import pty
import re
import subprocess
import sys
import threading
from pathlib import Path

import samples
from helpers import wait_for

OCRD = str(Path(sys.executable).parent / "ocrd")

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class Terminal:
    """`ocrd run` with a pseudo-terminal as its stdout and stderr; what it printed, as text."""

    def __init__(self, config: Path) -> None:
        master, slave = pty.openpty()
        self.proc = subprocess.Popen([OCRD, "--config", str(config), "run"], stdin=subprocess.DEVNULL,
                                     stdout=slave, stderr=slave, close_fds=True)
        os.close(slave)
        self._master, self._chunks = master, []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        while True:
            try:
                data = os.read(self._master, 65536)
            except OSError:      # EIO: the daemon and its workers closed the terminal
                return
            if not data:
                return
            self._chunks.append(data)

    @property
    def lines(self) -> list[str]:
        text = _ANSI.sub("", b"".join(self._chunks).decode("utf-8", "replace"))
        return [line.rstrip("\r") for line in text.split("\n") if line.strip()]

    def saw(self, pattern: str) -> str | None:
        return next((line for line in self.lines if re.search(pattern, line)), None)


def test_run_on_a_terminal_prints_a_line_per_document(make_daemon) -> None:
    d = make_daemon()
    term = Terminal(d.config)
    try:
        ready = wait_for(lambda: term.saw(r"\bready: watching "), 180, 0.2, "the ready line")
        assert f"{d.inbox} -> {d.outbox}" in ready.replace("~", str(Path.home()))
        assert "1 worker" in ready and "model loaded" in ready
        samples.write_image(d.inbox / "sub" / "photo.png", "PNG")
        samples.write_corrupt_pdf(d.inbox / "broken.pdf")
        done = wait_for(lambda: term.saw(r"\bdone +.*photo\.png"), 180, 0.2, "the done line")
        failed = wait_for(lambda: term.saw(r"\bfailed +.*broken\.pdf"), 60, 0.2, "the failed line")
        queued = term.saw(r"\bqueued +.*photo\.png")
        assert queued and re.search(r"\(job \d+, 1 page\)$", queued)
        assert re.search(r"photo\.png -> .*photo\.md \(job \d+, 1 page in [0-9.]+ s\)$", done)
        assert "corrupt" in failed or "cannot read" in failed
        assert term.proc.poll() is None
        term.proc.send_signal(2)        # Ctrl-C
        assert term.proc.wait(timeout=60) == 0
        wait_for(lambda: term.saw(r"\bstopped$"), 30, 0.1, "the stopped line")
    finally:
        d.proc = term.proc
    lines = term.lines
    # one line per document, no heartbeats, no page events, no JSON, no raw worker prints
    assert not [line for line in lines if line.lstrip().startswith("{")], lines
    assert not [line for line in lines if re.search(r"heartbeat|page_done|worker_output|directly resize", line)]
    assert len([line for line in lines if re.search(r"\b(queued|done|failed) ", line)]) <= 4, lines
    assert term.saw(r"^\d\d:\d\d:\d\d ocrd starting \(pid \d+\); the full log \(JSON\) is ")
    # ...and the JSON log file keeps everything
    logged = [json.loads(line) for line in (d.state / "logs" / "ocrd.log").read_text().splitlines()]
    events = {e["event"] for e in logged}
    assert {"daemon_ready", "job_queued", "job_done", "ingest_failed", "page_done", "model_loaded"} <= events
    # mlx-vlm's per-page print is kept out of the log too (a debug event at most)
    assert not any("directly resize" in json.dumps(e) for e in logged)


def test_run_not_on_a_terminal_writes_json_lines(make_daemon) -> None:
    d = make_daemon()
    d.start()                                    # stdout and stderr: a file, as under launchd
    wait_for(lambda: '"daemon_ready"' in d.log.read_text(), 180, 0.2, "the ready event")
    samples.write_image(d.inbox / "photo.png", "PNG")
    assert d.wait_settled(1) == {"photo.png": "done"}
    assert d.stop() == 0
    events = [json.loads(line)["event"] for line in d.log.read_text().splitlines() if line.strip()]
    assert {"daemon_starting", "daemon_ready", "job_queued", "page_done", "job_done"} <= set(events)
