"""The supervisor with real worker processes; test engines come in through the engine seam."""

from __future__ import annotations

import io
import os
import signal
import sqlite3
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Iterator

import pytest
from structlog.testing import capture_logs

import configs
import samples
from helpers import wait_for
from ocrd.daemon.config import Config
from ocrd.daemon.device import DeviceInfo
from ocrd.daemon.pool import WorkerPool
from ocrd.daemon.protocol import Message, WorkerEvent
from ocrd.daemon.supervisor import Settings, Supervisor


def make_config(root: Path, model: str, **workers: object) -> Config:
    """The tiny model on small pages; `workers` overrides [workers] keys (and page_timeout_s)."""
    worker_keys = {"count": 1, "max_attempts": 2, **workers}
    timeout = worker_keys.pop("page_timeout_s", 60)
    return configs.make_config(
        root, model={"path": model, "mode": "tiny", "max_tokens": 300, "page_timeout_s": timeout},
        workers=worker_keys, pdf={"dpi": 72}, inbox={"stable_for_s": 0.2})


class Running:
    """A Supervisor ticking on a thread, as `run_daemon` would tick it."""

    def __init__(self, config: Config, engine: str, device: DeviceInfo | None = None, **settings: object) -> None:
        self.config = config
        (config.inboxes[0].path).mkdir(parents=True, exist_ok=True)
        # a page's retry backoff is 1 s x 2^attempts (the ledger's default base is 10 s)
        self.sup = Supervisor(config, Settings(engine_factory=engine, rescan_s=1.0, empty_grace_s=1.0,
                                               backoff_base_s=1.0, **settings), device=device)
        self._halt = threading.Event()
        self._reloads: list[Config] = []
        self.sup.start()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def reload(self, config: Config) -> None:
        """SIGHUP with `config`, applied on the ticking thread as run_daemon applies it."""
        self._reloads.append(config)

    def _loop(self) -> None:
        # Ticks and the stop run on this one thread: Linux's PDEATHSIG fires when the *thread*
        # that spawned a worker exits, so the spawning thread must outlive its workers.
        while not self._halt.is_set():
            while self._reloads:
                self.sup.reload(self._reloads.pop(0))
            self.sup.tick()
            self._halt.wait(0.1)
        self.sup.stop(**self._stop_kwargs)

    def stop(self, **kwargs: object) -> float:
        started = time.monotonic()
        self._stop_kwargs = kwargs
        self._halt.set()
        self.thread.join(60)
        assert not self.thread.is_alive()
        return time.monotonic() - started

    def query(self, sql: str, *params: object) -> list[tuple]:
        con = sqlite3.connect(self.config.ledger_path, timeout=30)
        try:
            return con.execute(sql, params).fetchall()
        finally:
            con.close()


@pytest.fixture
def running(tmp_path: Path) -> Iterator:
    made: list[Running] = []

    def make(engine: str, model: str = "fake", device: DeviceInfo | None = None,
             settings: dict | None = None, **workers: object) -> Running:
        r = Running(make_config(tmp_path, model, **workers), engine, device, **(settings or {}))
        made.append(r)
        return r

    yield make
    for r in made:
        if r.thread.is_alive():
            r.stop(deadline_s=2)
        for slot in r.sup.pool.slots:
            slot.proc.kill()


def _at(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def test_crashing_engine_retries_with_backoff_then_fails(running) -> None:
    # The backoff between attempts is 1 s x 2^1 with jitter (base 1 s through the seam).
    r = running("engines:CrashingEngine")
    samples.write_image(r.config.inboxes[0].path / "page.png", "PNG")
    wait_for(lambda: r.query("SELECT state FROM jobs") == [("failed",)], 60, 0.2, "job failed")
    failed = r.config.inboxes[0].failed
    wait_for(lambda: (failed / "page.png.error.txt").exists(), 10, 0.1, "error file")
    reason = (failed / "page.png.error.txt").read_text().splitlines()[0]
    assert "page 1" in reason and "crash" in reason.lower()
    assert r.query("SELECT state, attempts FROM pages") == [("failed", 2)]
    claims = [_at(at) for (at,) in r.query("SELECT at FROM events WHERE kind = 'page_running' ORDER BY at")]
    requeued = [_at(at) for (at,) in r.query("SELECT at FROM events WHERE kind = 'page_queued' ORDER BY at")]
    assert len(claims) == 2 and len(requeued) == 1
    assert claims[1] - requeued[0] >= 1.5, "the retry waited for its backoff (1 s x 2^1, +-20%)"
    assert r.stop() < 10


def test_a_worker_that_loads_then_dies_waits_longer_before_each_restart(running) -> None:
    # A worker that loads and then dies every time (a native crash) must not be restarted every
    # 2 s for ever, loading the model each time: only a stored page ends a run of crashes.
    r = running("engines:DyingEngine")
    with capture_logs() as logs:
        samples.write_image(r.config.inboxes[0].path / "page.png", "PNG")
        wait_for(lambda: r.query("SELECT state FROM jobs") == [("failed",)], 60, 0.2, "job failed")
        wait_for(lambda: sum(e["event"] == "worker_died" for e in logs) >= 2, 30, 0.1, "two crashes logged")
    assert [e["restart_in_s"] for e in logs if e["event"] == "worker_died"] == [2.0, 4.0]
    assert r.query("SELECT state, attempts FROM pages") == [("failed", 2)]
    assert r.stop() < 10


def test_a_document_queued_here_wakes_an_idle_worker_at_once(running) -> None:
    # An idle worker polls the queue backing off to 1 s; here (the seam) every 120 s. A document
    # queued on this host nudges it (a byte down its stdin), so a drop never waits for that poll.
    r = running("engines:FakeEngine", settings={"idle_wait_s": (120.0, 120.0)})
    inbox = r.config.inboxes[0].path
    wait_for(lambda: r.query("SELECT state FROM workers") == [("idle",)], 60, 0.1, "the model loaded")
    for n, name in enumerate(("first.png", "second.png"), 1):
        # the second drop meets a worker that found the queue empty after the first: 120 s to its poll
        samples.write_image(inbox / name, "PNG", n=n)
        wait_for(lambda: r.query("SELECT COUNT(*) FROM jobs WHERE state = 'done'") == [(n,)], 30, 0.1,
                 f"{name} read without waiting for the next poll")
    assert r.stop() < 10


def test_a_document_that_ends_wakes_the_supervisor_before_its_next_tick() -> None:
    # Its outputs are written once the supervisor's tick takes the message (up to 0.5 s later
    # otherwise); other messages wait for the tick.
    wake = threading.Event()
    pool = WorkerPool(wake=wake)
    pool._pump_messages(io.StringIO(Message(WorkerEvent.BUSY, pages=1).encode()
                                    + Message(WorkerEvent.PAGE_STORED, pages=1, page="1:1").encode()), "w1")
    assert not wake.is_set()
    pool._pump_messages(io.StringIO(Message(WorkerEvent.DOCUMENT_ENDED, job=1).encode()), "w1")
    assert wake.is_set()
    assert [m.event for _, m in pool.drain_events()] == ["busy", "page_stored", "document_ended"]


def test_hanging_engine_is_killed_replaced_and_page_retried(running) -> None:
    # ~5 s: two page timeouts of 1 s plus one backoff of ~2 s.
    r = running("engines:HangingEngine", page_timeout_s=1)
    samples.write_image(r.config.inboxes[0].path / "stuck.png", "PNG")
    wait_for(lambda: r.query("SELECT state FROM jobs") == [("failed",)], 90, 0.2, "job failed")
    assert r.query("SELECT state, attempts, error FROM pages")[0][:2] == ("failed", 2)
    assert "page timed out" in r.query("SELECT error FROM jobs")[0][0]
    # each stuck worker was killed (its row says so just after its page failed)...
    wait_for(lambda: r.query("SELECT COUNT(*) FROM workers WHERE state = 'dead'")[0][0] >= 2, 10, 0.1,
             "two dead workers")
    wait_for(lambda: len(r.sup.pool.slots) == 1 and r.sup.pool.slots[0].proc.poll() is None, 30, 0.1,
             "a replacement worker")  # ...and replaced
    wait_for(lambda: (r.config.inboxes[0].failed / "stuck.png").exists(), 10, 0.1, "moved to failed/")
    r.stop(deadline_s=5)


def test_heartbeats_every_5s_with_memory_figures(running, tiny_model: Path) -> None:
    # ~15 s of real pages on the tiny model, one at a time, to see three heartbeats while busy
    # (a worker that runs out of work beats once more at once, to say it is idle).
    r = running("ocrd.daemon.engines.mlxvlm:MlxVlmEngine", model=str(tiny_model), batch=1)
    samples.write_pdf(r.config.inboxes[0].path / "long.pdf", 30)
    # (on a loaded machine the worker may also run dry for a moment between pages: that beat
    # comes early too, and says idle)
    beats = wait_for(lambda: len(rows := r.query(
        "SELECT at, active_memory_bytes, peak_memory_bytes, backend, pages_in_flight FROM heartbeats "
        "ORDER BY at")) >= 3 and rows, 120, 0.2, "three heartbeats")
    gaps = [(_at(b[0]) - _at(a[0]), b[4]) for a, b in zip(beats, beats[1:])]
    assert all(4.0 <= g <= 7.5 or (g < 4.0 and not in_flight) for g, in_flight in gaps), gaps
    assert beats[-1][2] > 0 and beats[-1][3] == "cpu"
    r.stop(deadline_s=5)


def test_warm_stop_finishes_the_page_in_hand(running) -> None:
    r = running("engines:SlowEngine", model="slow:3")
    samples.write_image(r.config.inboxes[0].path / "slow.png", "PNG")
    wait_for(lambda: r.query("SELECT state FROM pages") == [("running",)], 60, 0.05, "page running")
    took = r.stop()
    assert took < 25
    assert r.query("SELECT state FROM pages") == [("done",)]
    assert r.query("SELECT state FROM jobs") == [("done",)]
    assert (r.config.inboxes[0].outbox / "slow.md").exists()
    assert r.query("SELECT state FROM workers") == [("stopped",)]


def test_cold_stop_releases_the_page(running) -> None:
    r = running("engines:HangingEngine")
    samples.write_image(r.config.inboxes[0].path / "hang.png", "PNG")
    wait_for(lambda: r.query("SELECT state FROM pages") == [("running",)], 60, 0.05, "page running")
    assert r.stop(deadline_s=1) < 10
    # Released, not failed: the attempt was not the page's fault.
    assert r.query("SELECT state, attempts, lease_expires_at FROM pages") == [("queued", 0, None)]


def test_worker_recycled_after_its_page_budget(running) -> None:
    r = running("engines:FakeEngine", max_pages_per_worker=2)
    for n in range(5):
        samples.write_image(r.config.inboxes[0].path / f"p{n}.png", "PNG", n=n)
    wait_for(lambda: r.query("SELECT COUNT(*) FROM jobs WHERE state = 'done'") == [(5,)], 90, 0.2, "5 done")
    loads = r.query("SELECT COUNT(*) FROM events WHERE kind = 'model_loaded'")[0][0]
    assert loads >= 3  # 5 pages at 2 per worker: at least three worker processes
    assert r.query("SELECT MAX(pages_done) FROM workers")[0][0] <= 2
    r.stop()


def test_unwritable_outbox_fails_the_document_and_retry_recovers(running) -> None:
    from ocrd.daemon.intake.ingest import Ingestor
    from ocrd.daemon.intake.retry import retry_jobs
    from ocrd.ledger.store import Ledger

    r = running("engines:FakeEngine")
    outbox = r.config.inboxes[0].outbox
    outbox.write_text("a file where the outbox folder should be")
    samples.write_image(r.config.inboxes[0].path / "page.png", "PNG")
    wait_for(lambda: r.query("SELECT state FROM jobs") == [("failed",)], 60, 0.1, "job failed")
    assert "cannot write output" in r.query("SELECT error FROM jobs")[0][0]
    wait_for(lambda: (r.config.inboxes[0].failed / "page.png.error.txt").exists(), 10, 0.1,
             "original moved to failed/ (the job's state is written first)")

    outbox.unlink()  # the user fixes it, then retries: the done page is not run again
    with Ledger(r.config.db_url) as ledger:
        retry_jobs(Ingestor(r.config, ledger))
    wait_for(lambda: r.query("SELECT state FROM jobs") == [("done",)], 60, 0.1, "job done")
    assert (outbox / "page.md").exists()
    assert r.query("SELECT COUNT(*) FROM events WHERE kind = 'page_running'") == [(1,)]
    r.stop()


def test_worker_recycled_when_its_memory_grows_past_the_bound(running, tiny_model: Path) -> None:
    r = running("ocrd.daemon.engines.mlxvlm:MlxVlmEngine", model=str(tiny_model))
    # The first worker was started with the planned bound: once it is up (the pool is full, so
    # nothing else spawns meanwhile), lower the bound and replace it.
    wait_for(lambda: r.query("SELECT COUNT(*) FROM events WHERE kind = 'model_loaded'") == [(1,)], 60, 0.1,
             "the first worker loaded")
    r.sup.recycle_bytes = 1  # any real page's memory passes this: recycle after every page
    for slot in list(r.sup.pool.slots):
        slot.proc.terminate()
    for n in range(3):
        samples.write_image(r.config.inboxes[0].path / f"m{n}.png", "PNG", n=n)
    wait_for(lambda: r.query("SELECT COUNT(*) FROM jobs WHERE state = 'done'") == [(3,)], 120, 0.2, "3 done")
    assert r.query("SELECT COUNT(*) FROM events WHERE kind = 'model_loaded'")[0][0] >= 3
    peak = r.query("SELECT value FROM meta WHERE key LIKE 'footprint_bytes:%'")
    r.stop()
    assert peak or r.query("SELECT value FROM meta WHERE key LIKE 'footprint_bytes:%'")


def test_unwritable_archive_keeps_the_original_in_the_spool_and_goes_on(running) -> None:
    r = running("engines:FakeEngine")
    inbox = r.config.inboxes[0]
    inbox.archive.mkdir(parents=True)
    (inbox.archive / "sub").write_text("a file where the archive subfolder should be")
    samples.write_image(inbox.path / "sub" / "a.png", "PNG")
    wait_for(lambda: r.query("SELECT state FROM jobs") == [("done",)], 60, 0.1, "job done")
    assert (inbox.outbox / "sub" / "a.md").exists()
    spool_path = r.query("SELECT spool_path FROM jobs")[0][0]
    assert Path(spool_path).is_relative_to(r.config.spool_dir) and Path(spool_path).exists()
    samples.write_image(inbox.path / "b.png", "PNG", n=2)  # the daemon goes on
    wait_for(lambda: r.query("SELECT COUNT(*) FROM jobs WHERE state = 'done'") == [(2,)], 60, 0.1, "next job")
    assert r.thread.is_alive()
    r.stop()


def test_a_workers_command_line_carries_no_config(running) -> None:
    # The context (with the ledger URL, which may hold a password) goes down the worker's stdin;
    # `ps` shows argv to every local user.
    r = running("engines:FakeEngine")
    slot = wait_for(lambda: r.sup.pool.slots and r.sup.pool.slots[0], 30, 0.05, "a worker")
    argv = Path(f"/proc/{slot.proc.pid}/cmdline").read_bytes().decode().split("\0")[:-1]
    # python -m ocrd.daemon.lifeline <supervisor pid> ocrd.daemon.worker <id> <fd> <fd>
    assert argv[1:6] == ["-m", "ocrd.daemon.lifeline", str(os.getpid()), "ocrd.daemon.worker", slot.worker_id]
    assert len(argv) == 8 and all(a.isdigit() for a in argv[6:])
    assert str(r.config.state_dir) not in " ".join(argv)
    wait_for(lambda: r.query("SELECT state FROM workers") == [("idle",)], 30, 0.05, "it loaded from stdin")
    r.stop()


TINY_ENGINE = "ocrd.daemon.engines.mlxvlm:MlxVlmEngine"


def test_kill_9_mid_batch_redoes_the_pages_in_hand_once(running, tiny_model: Path) -> None:
    r = running(TINY_ENGINE, model=str(tiny_model), batch=4)
    inbox = r.config.inboxes[0]
    for n in range(6):
        samples.write_pdf(inbox.path / f"d{n}.pdf", 2)
    wait_for(lambda: r.query("SELECT COUNT(*) FROM pages WHERE state = 'running'")[0][0] >= 3, 90, 0.02,
             "a batch in flight")
    os.kill(r.sup.pool.slots[0].proc.pid, signal.SIGKILL)
    wait_for(lambda: r.query("SELECT COUNT(*) FROM jobs WHERE state = 'done'") == [(6,)], 180, 0.2, "6 done")
    assert sorted(p.name for p in inbox.outbox.rglob("*")) == [f"d{n}.md" for n in range(6)]
    runs = [n for (n,) in r.query("SELECT COUNT(*) FROM events WHERE kind = 'page_running' "
                                  "GROUP BY job_id, page_no")]
    assert len(runs) == 12 and max(runs) == 2, runs     # the pages in hand ran again, once
    r.stop()


def test_sigterm_mid_batch_finishes_or_releases_the_pages_in_hand(running, tiny_model: Path) -> None:
    r = running(TINY_ENGINE, model=str(tiny_model), batch=4)
    for n in range(4):
        samples.write_pdf(r.config.inboxes[0].path / f"s{n}.pdf", 3)
    count = "SELECT COUNT(*) FROM pages WHERE state = ?"
    wait_for(lambda: r.query(count, "done")[0][0] >= 1 and r.query(count, "running")[0][0] >= 3, 90, 0.02,
             "a batch decoding")
    done_before = r.query(count, "done")[0][0]
    assert r.stop() < 25
    states = r.query("SELECT state, attempts, COUNT(*) FROM pages GROUP BY state, attempts")
    assert {s for s, _, _ in states} <= {"done", "queued"}, states      # nothing left in limbo
    assert all(a == 0 for s, a, _ in states if s == "queued"), states   # released, not charged
    assert r.query(count, "done")[0][0] > done_before                   # the pages in flight finished
    assert r.query("SELECT state FROM workers") == [("stopped",)]


def test_each_worker_gets_its_own_gpu_on_a_host_of_several(running) -> None:
    # The device seam says two CUDA GPUs: one worker each, each shown only its own GPU.
    two = DeviceInfo("cuda", "2 x H200", 141 * 10**9, 140 * 10**9, 32, gpus=2)
    r = running("engines:FakeEngine", device=two, count="auto")
    slots = wait_for(lambda: len(r.sup.pool.slots) == 2 and r.sup.pool.slots, 60, 0.05, "two workers")

    def visible(pid: int) -> str:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        return next(v.split(b"=", 1)[1].decode() for v in env if v.startswith(b"CUDA_VISIBLE_DEVICES="))

    assert sorted(visible(s.proc.pid) for s in slots) == ["0", "1"]
    r.stop()


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_state_is_private_and_outputs_follow_the_umask(running, umask_022) -> None:
    r = running("engines:FakeEngine")
    inbox = r.config.inboxes[0]
    samples.write_image(inbox.path / "page.png", "PNG")
    os.chmod(inbox.path / "page.png", 0o640)
    wait_for(lambda: (inbox.outbox / "page.md").exists(), 60, 0.05, "the outbox file")
    state = r.config.state_dir
    mode = lambda p: oct(p.stat().st_mode & 0o777)   # noqa: E731
    assert mode(state) == oct(0o700)                  # the ledger holds every page's text
    assert {mode(p) for p in state.glob("ledger.db*")} == {oct(0o600)}, list(state.glob("ledger.db*"))
    assert mode(inbox.outbox / "page.md") == oct(0o644)   # the user's, for Samba or paperless to read
    wait_for(lambda: (inbox.archive / "page.png").exists(), 10, 0.05, "archived")
    assert mode(inbox.archive / "page.png") == oct(0o640)  # the original keeps its own mode
    r.stop()


def test_sighup_with_a_new_model_rolls_the_workers_over_and_keeps_the_queue(running, tmp_path: Path) -> None:
    r = running("engines:FakeEngine", model="fake:old")
    inbox = r.config.inboxes[0]
    samples.write_image(inbox.path / "before.png", "PNG", n=1)
    wait_for(lambda: (inbox.outbox / "before.md").exists(), 60, 0.05, "a page on the old model")
    r.reload(make_config(tmp_path, "fake:new"))
    wait_for(lambda: r.query("SELECT COUNT(*) FROM events WHERE kind = 'model_loaded'") == [(2,)], 60, 0.05,
             "a worker loaded the new model")
    samples.write_image(inbox.path / "after.png", "PNG", n=2)
    wait_for(lambda: (inbox.outbox / "after.md").exists(), 60, 0.05, "a page on the new model")
    assert "old" in (inbox.outbox / "before.md").read_text()
    assert "new" in (inbox.outbox / "after.md").read_text()   # status and the work tell the truth
    # the output is written before the job is marked done: wait for the last step
    wait_for(lambda: r.query("SELECT state FROM jobs") == [("done",), ("done",)], 10, 0.05, "both done")
    r.stop()


def test_a_killed_worker_is_charged_only_for_the_page_in_its_engine(running) -> None:
    # The hostile trial: a worker killed with a page claimed ahead (rendered, not yet started)
    # charged that page an attempt too. Now only the page its engine had is charged.
    r = running("engines:HangingEngine", batch=1)
    for name, n in (("first.png", 1), ("second.png", 2)):
        samples.write_image(r.config.inboxes[0].path / name, "PNG", n=n)
    # the supervisor has heard which page the worker gave its engine (an ADMITTED message)
    wait_for(lambda: r.query("SELECT COUNT(*) FROM pages WHERE state = 'running'") == [(2,)]
             and any(r.sup._admitted.values()), 60, 0.05, "one page in the engine, one claimed ahead")
    os.kill(r.sup.pool.slots[0].proc.pid, signal.SIGKILL)
    wait_for(lambda: r.query("SELECT attempts FROM pages WHERE state = 'queued' ORDER BY attempts") == [(0,), (1,)],
             10, 0.02, "the page in hand charged, the one claimed ahead not")
    r.stop(deadline_s=2)


def test_a_full_outbox_delays_the_document_and_the_daemon_writes_it_once_there_is_room(
        small_disk, running, tmp_path) -> None:
    # A disk that fills up (or goes read-only) clears without `ocrd retry`: the document waits,
    # keeps its done pages, and is written with backoff once there is room (the hostile trial).
    disk = small_disk(tmp_path / "outbox")   # the config's outbox, on a small disk of its own
    disk.fill()
    r = running("engines:FakeEngine")
    samples.write_image(r.config.inboxes[0].path / "page.png", "PNG")
    wait_for(lambda: r.query("SELECT state FROM pages") == [("done",)], 60, 0.05, "the page done")
    wait_for(lambda: r.query("SELECT COUNT(*) FROM events WHERE kind = 'job_failed'") == [(0,)]
             and r.query("SELECT state FROM jobs") == [("running",)], 10, 0.05, "the job waiting")
    disk.free()                             # room again
    wait_for(lambda: r.query("SELECT state FROM jobs") == [("done",)], 60, 0.1, "written once there is room")
    assert (disk.path / "page.md").exists()
    r.stop()
