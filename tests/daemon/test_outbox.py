"""Finishing a document cut short at each step after its outputs are written (the daemon killed
while delivering) finishes on the next try: every format once, the original archived, the job
done, and the ledger says where the original went. Real files, a real SQLite ledger; the kill is
an exception raised at the step's seam."""

from __future__ import annotations

from pathlib import Path

import pytest

from ingest_runner import make_config, png_bytes
from ocrd.daemon.intake.ingest import Ingestor
from ocrd.daemon.intake.retry import RetryOutcome, retry_jobs
from ocrd.daemon.output.outbox import fail_document, finish_document
from ocrd.ledger.states import JobState
from ocrd.ledger.store import Ledger

FORMATS = ["md", "pdf", "json", "txt"]


class Killed(BaseException):
    """The daemon's kill -9 at one step (BaseException: nothing on the way catches it)."""


def crash(*_args: object, **_kwargs: object) -> None:
    raise Killed


@pytest.mark.parametrize("step", ["original moved, not recorded", "original recorded, job not done"])
@pytest.mark.parametrize("archive", [True, False])
def test_a_finish_cut_short_after_the_outputs_finishes_on_the_next_try(
        tmp_path: Path, monkeypatch, step: str, archive: bool) -> None:
    config = make_config(tmp_path, formats=FORMATS, **({} if archive else {"archive": ""}))
    inbox = config.inboxes[0]
    inbox.path.mkdir(parents=True)
    ledger = Ledger(config.db_url)
    if archive:   # an earlier letter.png: this one is archived as `letter (2).png`
        inbox.archive.mkdir(parents=True)
        (inbox.archive / "letter.png").write_bytes(png_bytes(6, size=64))
    (inbox.path / "letter.png").write_bytes(png_bytes(7, size=64))
    Ingestor(config, ledger).ingest(inbox, inbox.path / "letter.png")
    (page,) = ledger.claim_pages("w1")
    ledger.complete_page(page.job_id, page.page_no, "w1", text="Dear reader")

    def record_paths(job_id: int, **paths: str) -> None:   # the output's name passes, the original's kills
        (crash if "spool_path" in paths else real_set_paths)(job_id, **paths)

    real_set_paths = ledger.set_job_paths
    with monkeypatch.context() as m:
        if step == "original moved, not recorded":
            m.setattr(ledger, "set_job_paths", record_paths)
        else:
            m.setattr(ledger, "finish_job", crash)
        with pytest.raises(Killed):
            finish_document(config, ledger, page.job_id)
    assert not any(config.spool_dir.glob("*.png"))          # the original had left the spool

    out = finish_document(config, ledger, page.job_id)
    job = ledger.job(page.job_id)
    assert job.state == JobState.DONE and out == inbox.outbox / "letter.md"
    assert sorted(p.name for p in inbox.outbox.iterdir()) == sorted(f"letter.{f}" for f in FORMATS)
    # the ledger says where the original is (DESIGN.md invariant 1)
    if archive:
        assert sorted(p.name for p in inbox.archive.iterdir()) == ["letter (2).png", "letter.png"]
        assert job.spool_path == str(inbox.archive / "letter (2).png")
    else:
        assert job.spool_path == ""
    ledger.close()


def test_a_failure_cut_short_after_the_move_to_failed_is_recorded_and_retry_finds_it(
        tmp_path: Path, monkeypatch) -> None:
    config = make_config(tmp_path)
    inbox = config.inboxes[0]
    inbox.path.mkdir(parents=True)
    ledger = Ledger(config.db_url)
    (inbox.path / "scan.png").write_bytes(png_bytes(9, size=64))
    ingestor = Ingestor(config, ledger)
    job_id = ingestor.ingest(inbox, inbox.path / "scan.png").job_id
    ledger.fail_job(job_id, "the engine gave up")
    with monkeypatch.context() as m:   # killed between the move to failed/ and its record
        m.setattr(ledger, "set_job_paths", crash)
        with pytest.raises(Killed):
            fail_document(config, ledger, job_id, "the engine gave up")
    assert (inbox.failed / "scan.png").exists() and not any(config.spool_dir.glob("*.png"))

    fail_document(config, ledger, job_id, "the engine gave up")       # the delivery's next round
    assert ledger.job(job_id).spool_path == str(inbox.failed / "scan.png")
    assert (inbox.failed / "scan.png.error.txt").read_text() == "the engine gave up\n"
    (retried,) = retry_jobs(ingestor, [job_id])
    assert retried.outcome == RetryOutcome.REQUEUED and ledger.job(job_id).state == JobState.QUEUED
    ledger.close()
