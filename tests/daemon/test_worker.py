"""A Worker ticked in-process on a real SQLite ledger, with test engines through the engine seam.

These are the fast tests of the worker's loop (claim ahead, recycle, finishing a document, release
on stop, the messages the supervisor acts on); tests/daemon/test_supervisor.py runs the same
worker as a real child process under the supervisor.
"""

from __future__ import annotations

import hashlib
import time
import shutil
from pathlib import Path
from typing import Iterator

import pytest
from structlog.testing import capture_logs

import samples
from configs import make_config
from helpers import wait_for
from ocrd.daemon.config import Config
from ocrd.daemon.output.delivery import Delivery
from ocrd.daemon.protocol import Message, WorkerContext, WorkerEvent
from ocrd.daemon.worker import Worker
from ocrd.ledger import WorkerState
from ocrd.ledger.store import Ledger


class Harness:
    """A config, a ledger with jobs added straight into the spool, and the worker under test."""

    def __init__(self, root: Path, **workers: object) -> None:
        self.config: Config = make_config(root, model={"path": "fake", "mode": "tiny"},
                                          workers={"count": 1, "max_attempts": 2, **workers},
                                          pdf={"dpi": 72})
        self.config.spool_dir.mkdir(parents=True)
        self.ledger = Ledger(self.config.db_url)
        # the supervisor's part: the one finisher writes a document a worker says has ended
        self.delivery = Delivery(self.config, self.ledger, workers=1, instance="test")
        self.delivery.start()
        self.sent: list[Message] = []
        self.workers: list[Worker] = []
        self.added = 0

    def add(self, name: str, pages: int = 1) -> int:
        """A job whose original already lies in the spool, as ingest leaves it."""
        made = self.config.inboxes[0].path / name
        made.parent.mkdir(parents=True, exist_ok=True)
        self.added += 1   # distinct content: the same bytes twice would be a duplicate job
        if pages > 1:
            samples.write_pdf(made, pages)
        else:
            samples.write_image(made, "PNG", n=self.added)
        spooled = self.config.spool_dir / name
        shutil.move(made, spooled)
        return self.ledger.add_job(
            inbox=self.config.inboxes[0].key, source_path=str(made), spool_path=str(spooled),
            sha256=hashlib.sha256(spooled.read_bytes()).hexdigest(),
            size_bytes=spooled.stat().st_size, pages_total=pages).job_id

    def worker(self, engine: str = "engines:FakeEngine", **ctx: object) -> Worker:
        ctx.setdefault("heartbeat_s", 0.2)
        worker = Worker(WorkerContext(worker_id=f"w{len(self.workers) + 1}", config=self.config,
                                      engine_factory=engine, **ctx),
                        send=self.receive)
        self.workers.append(worker)
        return worker

    def receive(self, message: Message) -> None:
        self.sent.append(message)
        if message.event == WorkerEvent.DOCUMENT_ENDED:
            self.delivery.wake(message.job)

    def pages(self, worker: Worker | None = None) -> list[tuple]:
        """(job_id, page_no, state, attempts, lease_owner) of every page, or of those a worker holds."""
        rows = self.ledger.show_job  # one read per job keeps this independent of report internals
        out = []
        for job in self.ledger.list_jobs(limit=1000):
            for p in rows(job["id"])["pages"]:
                if worker is None or (p["state"] == "running" and p["lease_owner"] == worker.ctx.worker_id):
                    out.append((p["job_id"], p["page_no"], p["state"], p["attempts"], p["lease_owner"]))
        return sorted(out)

    def job_state(self, job_id: int) -> str:
        return self.ledger.show_job(job_id)["state"]

    def close(self) -> None:
        for worker in self.workers:
            worker.stop()
        self.delivery.stop()
        self.ledger.close()


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    made: list[Harness] = []

    def make(**workers: object) -> Harness:
        made.append(Harness(tmp_path, **workers))
        return made[-1]

    yield make
    for h in made:
        h.close()


def test_start_loads_once_and_says_so(harness) -> None:
    h = harness()
    worker = h.worker()
    assert worker.start()
    assert [m.event for m in h.sent] == [WorkerEvent.LOADED]
    row = h.ledger.workers_status()[0]
    assert (row["id"], row["state"]) == ("w1", "idle")


def test_unloadable_model_says_why_and_claims_nothing(harness) -> None:
    h = harness()
    h.add("a.png")
    worker = h.worker("engines:UnloadableEngine")
    assert not worker.start()
    assert h.sent[-1].event == WorkerEvent.LOAD_FAILED and "unavailable" in h.sent[-1].reason
    worker.stop()
    assert h.ledger.workers_status()[0]["state"] == "load_failed"
    assert h.pages() == [(1, 1, "queued", 0, None)]


def test_a_tick_infers_one_page_and_claims_the_next_ahead(harness) -> None:
    h = harness()
    first, second, third = h.add("a.png"), h.add("b.png"), h.add("c.png")
    worker = h.worker()
    assert worker.start() and worker.tick()
    wait_for(lambda: h.job_state(first) == "done", 10, 0.02, "the first page stored")
    # the next page was claimed (and rendered) while the first one was inferred
    wait_for(lambda: h.pages(worker) == [(second, 1, "running", 1, "w1")], 10, 0.02, "claimed ahead")
    assert h.job_state(third) == "queued"
    events = [m.event for m in h.sent]
    assert events == [WorkerEvent.LOADED, WorkerEvent.ADMITTED, WorkerEvent.BUSY, WorkerEvent.IDLE,
                      WorkerEvent.PAGE_STORED, WorkerEvent.DOCUMENT_ENDED]
    assert h.sent[5].job == first                          # the finisher writes it
    assert h.sent[1].page == f"{first}:1"                  # what a crash now would charge
    assert h.sent[2].pages == 1 and h.sent[4].pages == 1   # stored with one page in flight


def test_the_last_page_finishes_the_document(harness) -> None:
    h = harness()
    job = h.add("two.pdf", pages=2)
    worker = h.worker()
    assert worker.start()
    wait_for(lambda: worker.tick() and h.job_state(job) == "done", 10, 0.02, "the job done")
    inbox = h.config.inboxes[0]
    text = (inbox.outbox / "two.md").read_text()
    assert "<!-- page 1 of 2 -->" in text and "<!-- page 2 of 2 -->" in text
    assert (inbox.archive / "two.pdf").exists() and not list(h.config.spool_dir.glob("two*"))
    with capture_logs() as logs:
        worker.stop()
    [spent] = [e for e in logs if e["event"] == "decode_time"]   # where the decode thread's time went
    assert spent["pages"] == 2 and spent["steps"] >= 1 and spent["step_s"] > 0 and spent["add_s"] > 0


def test_a_claim_whose_answer_was_lost_is_adopted_not_charged_again(harness, monkeypatch) -> None:
    """The server went after a claim's commit (PostgreSQL stopped -m immediate): the worker heard
    LedgerUnreachable, and the pages stayed running under it. Its heartbeats keep their leases
    (the supervisor's rescue runs throughout) until a claim gets through and takes them back."""
    from ocrd.ledger import LedgerUnreachable

    h = harness()
    job = h.add("three.pdf", pages=3)
    worker = h.worker(batch_size=4, lease_s=1.0)
    assert worker.start()
    ledger, lost, back_at = worker.feeder.ledger, [], []
    claim = ledger.claim_pages

    def answer_lost_then_unreachable(*args, **kwargs):
        if not lost:
            lost.extend(claim(*args, **kwargs))
            back_at.append(time.monotonic() + 3)      # claims keep failing three lease lengths
        if time.monotonic() < back_at[0]:
            raise LedgerUnreachable("the ledger's server is unreachable: server closed the connection")
        return claim(*args, **kwargs)

    monkeypatch.setattr(ledger, "claim_pages", answer_lost_then_unreachable)
    wait_for(lambda: worker.tick() and h.ledger.rescue_expired() >= 0 and h.job_state(job) == "done",
             20, 0.02, "the job done")
    assert lost, "the first claim took pages"
    assert [p[3] for p in h.pages()] == [1, 1, 1], h.pages()   # attempts: none charged twice


def test_recycles_after_its_page_budget(harness) -> None:
    h = harness(max_pages_per_worker=2)
    jobs = [h.add(f"p{n}.png") for n in range(3)]
    worker = h.worker()
    assert worker.start()
    ticks = 0
    while worker.tick():
        ticks += 1
        assert ticks < 50, "the worker never reached its page budget"
    assert worker.exit_reason == "page budget" and worker.claimed == 2
    worker.stop()
    wait_for(lambda: [h.job_state(j) for j in jobs] == ["done", "done", "queued"], 10, 0.02,
             "the two pages' documents delivered")


def test_stop_releases_the_page_claimed_ahead_without_charging_it(harness) -> None:
    h = harness()
    first, second = h.add("a.png"), h.add("b.png")
    worker = h.worker()
    assert worker.start() and worker.tick()
    wait_for(lambda: h.pages(worker) == [(second, 1, "running", 1, "w1")], 10, 0.02, "claimed ahead")
    worker.stop()
    wait_for(lambda: h.job_state(first) == "done", 10, 0.02, "the first document delivered")
    assert [row[:4] for row in h.pages()] == [(first, 1, "done", 1), (second, 1, "queued", 0)]
    assert h.ledger.workers_status()[0]["state"] == "stopped"


def test_a_failing_engine_fails_its_pages_not_the_worker(harness) -> None:
    h = harness()
    job = h.add("a.png")
    worker = h.worker("engines:CrashingEngine", backoff_base_s=0.01)
    assert worker.start()
    wait_for(lambda: worker.tick() and h.job_state(job) == "failed", 10, 0.02, "the job failed")
    failed = h.config.inboxes[0].failed
    assert "crashing engine" in (failed / "a.png.error.txt").read_text()
    assert [m.event for m in h.sent].count(WorkerEvent.BUSY) == 2   # max_attempts = 2


def test_the_worker_says_idle_as_soon_as_its_batch_empties(harness) -> None:
    # Not up to a heartbeat later (the hostile trial saw "busy" for ~5 s after the last page).
    h = harness()
    job = h.add("a.png")
    worker = h.worker(heartbeat_s=60)
    assert worker.start()
    # as a beat during the page would have left it (the next regular beat is a minute away)
    h.ledger.record_heartbeat("w1", backend="cpu", active_memory_bytes=0, peak_memory_bytes=0,
                              cache_memory_bytes=0, memory_limit_bytes=0, pages_done=0, tokens_per_s=0,
                              current_page=f"{job}:1", state=WorkerState.BUSY, batch=1, pages_in_flight=1)
    wait_for(lambda: worker.tick() and h.job_state(job) == "done", 10, 0.02, "the page done")
    wait_for(lambda: worker.tick() and h.ledger.workers_status()[0]["state"] == "idle", 5, 0.02,
             "idle at once")


def test_an_idle_worker_backs_off_instead_of_asking_the_ledger_in_a_loop(harness) -> None:
    # With nothing queued each tick waits (0.1 s, doubling to 1 s) before the queue is asked
    # again: four ticks take at least 0.1 + 0.2 + 0.4 s, not four claim transactions back to back.
    h = harness()
    worker = h.worker()
    assert worker.start()
    started = time.monotonic()
    for _ in range(4):
        assert worker.tick()
    assert time.monotonic() - started >= 0.7
    job = h.add("late.png")                    # work that arrives is still taken within a second
    wait_for(lambda: worker.tick() and h.job_state(job) == "done", 5, 0.01, "the late page done")


def test_a_batch_fills_from_one_claim_of_many_pages_admitted_in_claim_order(harness) -> None:
    """With 16 slots free the worker claims 16 pages at once (a 12-page PDF and 4 images), renders
    them two at a time, admits them in the order claimed, stores each page once and writes the
    PDF's markdown once."""
    h = harness()
    pdf = h.add("twelve.pdf", pages=12)
    images = [h.add(f"p{k}.png") for k in range(4)]
    worker = h.worker(batch_size=16)
    assert worker.start() and worker.tick()
    wait_for(lambda: len(h.pages(worker)) + sum(p[2] == "done" for p in h.pages()) == 16, 10, 0.02,
             "one claim of 16 pages")
    deadline = time.monotonic() + 60
    while not all(h.job_state(j) == "done" for j in [pdf, *images]):
        assert time.monotonic() < deadline, h.pages()
        worker.tick()
    admitted = [m.page for m in h.sent if m.event == WorkerEvent.ADMITTED]
    assert admitted == [f"{pdf}:{n}" for n in range(1, 13)] + [f"{j}:1" for j in images]
    assert all(p[2:4] == ("done", 1) for p in h.pages())
    outbox = h.config.inboxes[0].outbox
    assert sorted(f.name for f in outbox.iterdir()) == ["p0.md", "p1.md", "p2.md", "p3.md", "twelve.md"]
    text = (outbox / "twelve.md").read_text()
    assert text.count("<!-- page ") == 12 and "<!-- page 12 of 12 -->" in text


def test_a_page_whose_preprocessing_fails_fails_alone_off_the_decode_thread(harness) -> None:
    """The engine's CPU preprocessing runs on the feeder's front threads; a page it refuses
    fails alone (its document fails once attempts run out), the pages beside it are read."""
    h = harness()
    pdf = h.config.spool_dir / "mixed.pdf"
    samples.write_pdf_pages(pdf, [(400, 300), (300, 700), (400, 300)])
    mixed = h.ledger.add_job(inbox=h.config.inboxes[0].key, source_path=str(pdf), spool_path=str(pdf),
                             sha256=hashlib.sha256(pdf.read_bytes()).hexdigest(),
                             size_bytes=pdf.stat().st_size, pages_total=3).job_id
    image = h.add("landscape.png")
    worker = h.worker("engines:PickyEngine", batch_size=4, backoff_base_s=0.01)
    assert worker.start()
    wait_for(lambda: worker.tick() and h.job_state(mixed) == "failed" and h.job_state(image) == "done",
             30, 0.01, "the refused page failed its document, the other job read")
    pages = {p["page_no"]: p for p in h.ledger.show_job(mixed)["pages"]}
    assert pages[2]["state"] == "failed"
    assert "cannot prepare page: ValueError: tall pages are refused" in pages[2]["error"]
    # its neighbours are read, or (on a slow machine, when page 2's retries ran out first) failed
    # with the document, never for a fault of their own
    for no in (1, 3):
        assert pages[no]["state"] == "done" or pages[no]["error"].startswith("job failed: page 2:"), pages[no]
    assert worker.engine.threads and all(t.startswith("front") for t in worker.engine.threads)


def test_the_pages_prepared_ahead_stay_bounded_under_a_1000_page_drop(harness) -> None:
    """A 1,000-page document: the worker holds (claims and prepares) at most its batch plus
    AHEAD pages beyond it, never the whole drop; a stop gives them back uncharged."""
    from ocrd.daemon.worker.feeder import AHEAD

    h = harness()
    pdf = h.config.spool_dir / "thousand.pdf"
    samples.write_pdf_pages(pdf, [(200, 260)] * 1000)
    job = h.ledger.add_job(inbox=h.config.inboxes[0].key, source_path=str(pdf), spool_path=str(pdf),
                           sha256=hashlib.sha256(pdf.read_bytes()).hexdigest(),
                           size_bytes=pdf.stat().st_size, pages_total=1000).job_id
    worker = h.worker("engines:AheadEngine", batch_size=4)
    assert worker.start()
    bound = 4 + min(4, AHEAD)
    held = []
    while worker.engine.generated < 60:
        worker.tick()
        pages = h.ledger.show_job(job)["pages"]
        storing = worker.engine.generated - sum(p["state"] == "done" for p in pages)   # on the store thread
        held.append(sum(p["state"] == "running" for p in pages) - storing)
    assert max(held) <= bound, max(held)
    assert worker.engine.most_ahead <= bound, worker.engine.most_ahead
    assert max(held) > 4                        # it does prepare ahead of the batch
    worker.stop()
    pages = h.ledger.show_job(job)["pages"]
    assert not [p for p in pages if p["state"] == "running"]
    assert all(p["attempts"] == 0 for p in pages if p["state"] == "queued")   # released, not charged
