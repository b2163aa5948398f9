"""Finishing a document cut short at each step after its outputs are written (the daemon killed
while delivering) finishes on the next try: every format once, the original archived, the job
done. Real files, a real SQLite ledger; the kill is an exception raised at the step's seam."""

from __future__ import annotations

from pathlib import Path

import pytest

from ingest_runner import make_config, png_bytes
from ocrd.daemon.intake.ingest import Ingestor
from ocrd.daemon.output.outbox import finish_document
from ocrd.ledger.states import JobState
from ocrd.ledger.store import Ledger

FORMATS = ["md", "pdf", "json", "txt"]


class Killed(BaseException):
    """The daemon's kill -9 at one step (BaseException: nothing on the way catches it)."""


@pytest.mark.parametrize("step", ["original moved, not recorded", "original recorded, job not done"])
@pytest.mark.parametrize("archive", [True, False])
def test_a_finish_cut_short_after_the_outputs_finishes_on_the_next_try(
        tmp_path: Path, monkeypatch, step: str, archive: bool) -> None:
    config = make_config(tmp_path, formats=FORMATS, **({} if archive else {"archive": ""}))
    inbox = config.inboxes[0]
    inbox.path.mkdir(parents=True)
    ledger = Ledger(config.db_url)
    (inbox.path / "letter.png").write_bytes(png_bytes(7, size=64))
    Ingestor(config, ledger).ingest(inbox, inbox.path / "letter.png")
    (page,) = ledger.claim_pages("w1")
    ledger.complete_page(page.job_id, page.page_no, "w1", text="Dear reader")

    def kill(*_args: object, **kwargs: object) -> None:
        if step == "original recorded, job not done" or "spool_path" in kwargs:
            raise Killed
        real_set_paths(*_args, **kwargs)

    real_set_paths = ledger.set_job_paths
    seam = "finish_job" if step == "original recorded, job not done" else "set_job_paths"
    with monkeypatch.context() as m:
        m.setattr(ledger, seam, kill)
        with pytest.raises(Killed):
            finish_document(config, ledger, page.job_id)
    assert not any(config.spool_dir.glob("*.png"))          # the original had left the spool

    out = finish_document(config, ledger, page.job_id)
    job = ledger.job(page.job_id)
    assert job.state == JobState.DONE and out == inbox.outbox / "letter.md"
    assert sorted(p.name for p in inbox.outbox.iterdir()) == sorted(f"letter.{f}" for f in FORMATS)
    if archive:
        assert [p.name for p in inbox.archive.iterdir()] == ["letter.png"]
        assert job.spool_path == str(inbox.archive / "letter.png")
    ledger.close()
