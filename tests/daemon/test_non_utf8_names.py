"""A file whose name is not UTF-8 (Latin-1 `café.png`, b"caf\\xe9.png", from an old SMB share or
zip) keeps its bytes everywhere: spool, archive/, failed/, the outbox `.md`, the crash journal,
reconcile, retry, hooks and the log. Real files on the real file system, a real SQLite ledger."""

from __future__ import annotations

import io
import json
import logging
import os
from pathlib import Path

import structlog

from ingest_runner import pdf_bytes, png_bytes
from samples import non_utf8_path, rested
from ocrd.daemon import files
from ocrd.daemon.config import Config
from ocrd.daemon.hooks import run_hook
from ocrd.daemon.intake.ingest import Ingestor
from ocrd.daemon.intake.retry import RetryOutcome, retry_jobs
from ocrd.daemon.intake.intents import Intent, load_intent, write_intent
from ocrd.daemon.logs import configure_logging
from ocrd.daemon.output.outbox import finish_document
from ocrd.ledger.states import JobState
from ocrd.ledger.store import Ledger


def names(folder: Path) -> list[bytes]:
    """The names in `folder` as the file system holds them (bytes), dot-files aside."""
    return sorted(n for n in os.listdir(os.fsencode(folder)) if not n.startswith(b"."))


def test_intent_round_trips_a_non_utf8_name(tmp_path: Path) -> None:
    source = non_utf8_path(tmp_path / "inbox")
    intent = Intent(inbox=str(tmp_path / "inbox"), source_path=str(source), relative_path=source.name,
                    spool_name=f"0123456789abcdef-{source.name}", dest=str(tmp_path / "failed" / source.name))
    write_intent(tmp_path, intent)
    (sidecar,) = tmp_path.glob("*.json")
    assert os.fsencode(sidecar.name) == b"0123456789abcdef-caf\xe9.png.json"
    assert sidecar.read_bytes().isascii() and b"caf\\udce9.png" in sidecar.read_bytes()
    assert load_intent(sidecar) == intent


def test_done_document_keeps_the_name_bytes_in_archive_and_outbox(config: Config, ledger: Ledger) -> None:
    inbox = config.inboxes[0]
    source = non_utf8_path(inbox.path)
    source.write_bytes(png_bytes(1))
    result = Ingestor(config, ledger).ingest(inbox, source)
    assert result is not None and result.state == JobState.QUEUED
    assert [n[17:] for n in names(config.spool_dir)] == [b"caf\xe9.png"]    # "<16 hex>-caf\xe9.png"
    (page,) = ledger.claim_pages("w1")
    ledger.complete_page(page.job_id, page.page_no, "w1", text="Café")
    out = finish_document(config, ledger, page.job_id)
    assert out == inbox.outbox / os.fsdecode(b"caf\xe9.md")
    assert names(inbox.outbox) == [b"caf\xe9.md"] and names(inbox.archive) == [b"caf\xe9.png"]
    assert names(config.spool_dir) == []
    job = ledger.job(page.job_id)
    assert (job.source_path, job.spool_path, job.output_path) == (
        str(source), str(inbox.archive / source.name), str(out))


def test_failed_original_keeps_its_bytes_and_retry_brings_it_back(config: Config, ledger: Ledger) -> None:
    inbox = config.inboxes[0]
    bad = non_utf8_path(inbox.path, b"\xe9chec.pdf")
    bad.write_bytes(b"%PDF-1.4 not really")
    rested(bad)
    ing = Ingestor(config, ledger)
    failed = ing.ingest(inbox, bad)
    assert failed is not None and failed.state == JobState.FAILED
    assert names(inbox.failed) == [b"\xe9chec.pdf", b"\xe9chec.pdf.error.txt"]

    (still,) = retry_jobs(ing, [failed.job_id])                  # still broken: back into failed/
    assert still.outcome == RetryOutcome.STILL_FAILING
    assert names(inbox.failed) == [b"\xe9chec.pdf", b"\xe9chec.pdf.error.txt"]
    assert ledger.job(failed.job_id).spool_path == str(inbox.failed / bad.name)

    (inbox.failed / bad.name).write_bytes(pdf_bytes(5, pages=2))     # the user repaired it
    (reopened,) = retry_jobs(ing, [failed.job_id])
    assert (reopened.outcome, reopened.pages) == (RetryOutcome.REOPENED, 2)
    assert names(inbox.failed) == [] and [n[17:] for n in names(config.spool_dir)] == [b"\xe9chec.pdf"]
    assert ledger.job(failed.job_id).source_path == str(bad)


def test_error_file_naming_such_a_file_is_written_with_its_bytes(tmp_path: Path) -> None:
    original = non_utf8_path(tmp_path)
    original.write_bytes(b"x")
    note = files.write_error_file(original, f"cannot write output {original}: Read-only file system")
    assert os.fsencode(note.name) == b"caf\xe9.png.error.txt"
    assert note.read_bytes().startswith(b"cannot write output " + os.fsencode(original))


def test_submit_and_reconcile_keep_the_name(config: Config, ledger: Ledger, tmp_path: Path) -> None:
    mine = non_utf8_path(tmp_path / "elsewhere")
    mine.write_bytes(png_bytes(2))
    (submitted,) = Ingestor(config, ledger).submit([mine])
    assert submitted.error is None and ledger.job(submitted.result.job_id).source_path == str(mine)
    assert mine.exists()                                   # copied: the user's file stays

    # A lost ledger: the spool file is queued again under its original name (reconcile at start).
    orphan = config.spool_dir / os.fsdecode(b"0123456789abcdef-r\xe9sum\xe9.png")
    orphan.write_bytes(png_bytes(3))
    assert Ingestor(config, ledger).reconcile()["orphans_ingested"] == 1
    job = ledger.job_by_spool_path(str(orphan))
    assert job is not None
    assert os.fsencode(job.source_path) == os.fsencode(config.inboxes[0].path) + b"/r\xe9sum\xe9.png"


def test_hook_environment_carries_the_name_bytes(tmp_path: Path) -> None:
    source, output = non_utf8_path(tmp_path / "in"), tmp_path / os.fsdecode(b"out/caf\xe9.md")
    written = tmp_path / "env.txt"
    ending = {"job_id": 1, "kind": "job_done", "source_path": str(source), "output_path": str(output),
              "error": None}
    script = 'printf "%s\\n%s" "$OCRD_SOURCE" "$OCRD_OUTPUT" > "$1"'
    assert run_hook(["sh", "-c", script, "sh", str(written)], ending, timeout_s=30) == 0
    assert written.read_bytes() == os.fsencode(source) + b"\n" + os.fsencode(output)


def test_log_file_and_stream_take_such_a_name(tmp_path: Path) -> None:
    source = str(non_utf8_path(tmp_path / "in"))
    strict = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="strict")
    try:
        configure_logging(tmp_path / "logs", stream=strict)
        structlog.get_logger().info("job_queued", job_id=1, pages=1, path=source)
        strict.flush()
        lines = (tmp_path / "logs" / "ocrd.log").read_text().splitlines()
        assert json.loads(lines[-1])["path"] == source          # JSON escapes it: \udce9
        assert json.loads(strict.buffer.getvalue().decode().splitlines()[-1])["path"] == source
    finally:
        for handler in logging.getLogger().handlers[:]:
            logging.getLogger().removeHandler(handler)
            handler.close()
        structlog.reset_defaults()
