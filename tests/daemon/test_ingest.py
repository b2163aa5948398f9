"""Ingest on real folders, real observers and a real SQLite ledger."""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from helpers import wait_for
from samples import rested
from ingest_runner import make_config, pdf_bytes, png_bytes
from ocrd.daemon import files
from ocrd.daemon.config import Config
from ocrd.daemon.intake.ingest import STALL_GRACE_S, Deferred, Ingestor
from ocrd.daemon.intake.retry import Retried, RetryOutcome, retry_jobs
from ocrd.daemon.intake.service import IngestService
from ocrd.daemon.output.outbox import job_relative_path
from ocrd.ledger.states import JobState
from ocrd.ledger.store import Ledger


@pytest.fixture
def start_service():
    started: list[IngestService] = []

    def start(cfg: Config, **kw) -> IngestService:
        kw.setdefault("rescan_s", 60.0)
        kw.setdefault("empty_grace_s", 0.6)
        kw.setdefault("tick_s", 0.05)
        svc = IngestService(cfg, **kw)
        svc.start()
        started.append(svc)
        assert svc.reconciled.wait(10)
        return svc

    yield start
    for svc in started:
        svc.stop()
    assert not [t for t in threading.enumerate() if t.name == "ocrd-ingest"], "ingest thread leaked"


def all_jobs(ledger: Ledger) -> list[dict]:
    return ledger.list_jobs(limit=100_000)


def wait_jobs(ledger: Ledger, n: int, timeout: float = 30.0) -> list[dict]:
    def enough() -> list[dict] | None:
        jobs = all_jobs(ledger)
        return jobs if len(jobs) >= n else None

    return wait_for(enough, timeout=timeout, message=f"{n} jobs")


def spool_files(config: Config) -> list[Path]:
    return sorted(p for p in config.spool_dir.iterdir() if p.is_file() and not p.name.startswith("."))


def intents(config: Config) -> list[Path]:
    d = config.spool_dir / ".intents"
    return sorted(d.iterdir()) if d.exists() else []


# -- the service end to end -----------------------------------------------------------------------

def test_chunked_file_is_ingested_once_after_its_last_chunk(tmp_path: Path, ledger, start_service) -> None:
    cfg = make_config(tmp_path, stable_for_s=1.0)    # longer than the gap between chunks
    start_service(cfg)
    data = pdf_bytes(1, pages=3) + b"\n" * 5000       # trailing bytes after %%EOF are allowed
    chunks = [data[i * len(data) // 10:(i + 1) * len(data) // 10] for i in range(10)]
    target = cfg.inboxes[0].path / "slow.pdf"
    with target.open("wb") as f:
        for chunk in chunks:
            f.write(chunk)
            f.flush()
            assert all_jobs(ledger) == [], "ingested before the last chunk"
            time.sleep(0.33)   # the simulated scanner's pace (10 chunks over 3 s), not a wait on us
    [job] = wait_jobs(ledger, 1)
    assert job["sha256"] == hashlib.sha256(data).hexdigest()
    assert job["size_bytes"] == len(data) and job["pages_total"] == 3
    assert job["state"] == JobState.QUEUED and job["source_path"] == str(target)
    assert not target.exists() and Path(job["spool_path"]).read_bytes() == data
    assert len(all_jobs(ledger)) == 1


def test_500_files_at_once_become_500_jobs_and_same_bytes_one_duplicate(config, ledger,
                                                                        start_service) -> None:
    start_service(config)
    inbox = config.inboxes[0]
    for n in range(500):
        (inbox.path / f"f{n:03}.png").write_bytes(png_bytes(n))
    (inbox.path / "copy-of-7.png").write_bytes(png_bytes(7))
    jobs = wait_jobs(ledger, 501, timeout=120)
    assert len(jobs) == 501 and len({j["source_path"] for j in jobs}) == 501
    states = [j["state"] for j in jobs]
    assert states.count(JobState.QUEUED) == 500 and states.count(JobState.DUPLICATE) == 1
    dup = next(j for j in jobs if j["state"] == JobState.DUPLICATE)
    first = next(j for j in jobs if j["id"] == dup["duplicate_of"])
    assert {Path(dup["source_path"]).name, Path(first["source_path"]).name} == {"f007.png", "copy-of-7.png"}
    # the row lands before the copy is shelved in archive/: wait for the move to be recorded
    dup = wait_for(lambda: next((j for j in all_jobs(ledger) if j["id"] == dup["id"]
                                 and Path(j["spool_path"]).parent == inbox.archive), None),
                   timeout=10, message="duplicate shelved in archive/")
    assert Path(dup["spool_path"]).exists()
    # the intent is dropped just after the job row lands: wait for the service to get there
    wait_for(lambda: intents(config) == [], timeout=10, message="intents dropped")
    assert len(spool_files(config)) == 500
    assert list(inbox.path.iterdir()) == []


def test_existing_nested_moved_and_ignored_files(config, ledger, start_service, tmp_path) -> None:
    inbox = config.inboxes[0]
    (inbox.path / "a" / "b").mkdir(parents=True)
    (inbox.path / "before.png").write_bytes(png_bytes(1))          # present before start
    (inbox.path / "a" / "b" / "deep.png").write_bytes(png_bytes(2))
    ignored = ["~$lock.png", "x.pdf.part", ".hidden.png", "dl.crdownload", ".scan.pdf.icloud", "y.tmp"]
    for name in ignored:
        (inbox.path / name).write_bytes(b"leave me")
    with capture_logs() as logs:
        start_service(config)
        wait_jobs(ledger, 2)
        elsewhere = tmp_path / "elsewhere.png"
        elsewhere.write_bytes(png_bytes(3))
        os.rename(elsewhere, inbox.path / "a" / "moved.png")            # `mv` into the inbox
        (inbox.path / "new" / "sub").mkdir(parents=True)                # a folder made later
        (inbox.path / "new" / "sub" / "late.png").write_bytes(png_bytes(4))
        jobs = wait_jobs(ledger, 4)
        # a row lands a moment before its job_queued line is logged
        wait_for(lambda: sum(e["event"] == "job_queued" for e in logs) >= 4, message="4 job_queued")
    rels = sorted(Path(j["source_path"]).relative_to(inbox.path).as_posix() for j in jobs)
    assert rels == ["a/b/deep.png", "a/moved.png", "before.png", "new/sub/late.png"]
    assert sorted(p.name for p in inbox.path.iterdir() if p.is_file()) == sorted(ignored)
    assert all((inbox.path / n).read_bytes() == b"leave me" for n in ignored)
    queued = [e for e in logs if e["event"] == "job_queued"]
    assert sorted(e["job_id"] for e in queued) == sorted(j["id"] for j in jobs)
    assert all(e["pages"] == 1 for e in queued)


def test_polling_inbox_ingests(tmp_path: Path, ledger, start_service) -> None:
    cfg = make_config(tmp_path, polling=True)
    start_service(cfg)
    (cfg.inboxes[0].path / "p.png").write_bytes(png_bytes(5))
    [job] = wait_jobs(ledger, 1)
    assert job["state"] == JobState.QUEUED


def test_symlink_out_of_the_inbox_is_refused_and_its_target_untouched(config, ledger, start_service,
                                                                      tmp_path) -> None:
    secret = tmp_path / "secret.png"
    secret.write_bytes(png_bytes(9))
    inbox = config.inboxes[0]
    (inbox.path / "link.png").symlink_to(secret)
    with capture_logs() as logs:
        start_service(config)
        (inbox.path / "real.png").write_bytes(png_bytes(10))
        [job] = wait_jobs(ledger, 1)
    assert Path(job["source_path"]).name == "real.png"
    assert secret.read_bytes() == png_bytes(9) and (inbox.path / "link.png").is_symlink()
    assert [e["reason"] for e in logs if e["event"] == "file_refused"] == ["symlink"]


def test_bad_inputs_end_in_failed_with_an_error_file(config, ledger, start_service) -> None:
    inbox = config.inboxes[0]
    svc = start_service(config, empty_grace_s=1.0)
    (inbox.path / "sub").mkdir()
    (inbox.path / "sub" / "letter.docx").write_bytes(b"PK\x03\x04" + b"\0" * 200)
    (inbox.path / "broken.pdf").write_bytes(b"%PDF-1.7\n" + b"garbage " * 100)
    rested(inbox.path / "broken.pdf")   # a young one would wait for its writer (see the stall tests)
    (inbox.path / "empty.pdf").touch()
    jobs = wait_jobs(ledger, 3, timeout=30)
    assert {j["state"] for j in jobs} == {JobState.FAILED}
    by_name = {Path(j["source_path"]).name: j for j in jobs}
    assert "unsupported file type" in by_name["letter.docx"]["error"]
    assert "empty file" in by_name["empty.pdf"]["error"]
    assert by_name["broken.pdf"]["error"]
    for rel, job in (("sub/letter.docx", by_name["letter.docx"]), ("broken.pdf", by_name["broken.pdf"]),
                     ("empty.pdf", by_name["empty.pdf"])):
        moved = inbox.failed / rel
        assert job["spool_path"] == str(moved) and moved.exists()
        first_line = moved.with_name(moved.name + ".error.txt").read_text().splitlines()[0]
        assert first_line == job["error"]
    wait_for(lambda: intents(config) == [], timeout=10, message="intents dropped")
    assert spool_files(config) == []
    assert svc._thread.is_alive()      # one bad file never stops the service


def test_empty_file_is_not_failed_before_the_grace(config, ledger, start_service) -> None:
    inbox = config.inboxes[0]
    start_service(config, empty_grace_s=30.0)
    (inbox.path / "scanning.pdf").touch()                 # a scanner that creates, then writes later
    (inbox.path / "marker.png").write_bytes(png_bytes(11))
    wait_jobs(ledger, 1)                                  # marker.png is older than any grace
    (inbox.path / "scanning.pdf").write_bytes(pdf_bytes(12))
    jobs = wait_jobs(ledger, 2)
    assert {j["state"] for j in jobs} == {JobState.QUEUED}


def test_reload_adds_an_inbox(config, ledger, start_service, tmp_path) -> None:
    svc = start_service(config)
    other = make_config(tmp_path / "two").inboxes[0]
    new = Config(state_dir=config.state_dir, inboxes=(config.inboxes[0], other))
    svc.reload(new)
    other.path.mkdir(parents=True, exist_ok=True)
    (other.path / "b.png").write_bytes(png_bytes(13))
    [job] = wait_jobs(ledger, 1)
    assert job["inbox"] == other.key


# -- submit and retry (the CLI's entry points) ----------------------------------------------------

def test_submit_copies_outside_files_and_moves_inbox_files(config, ledger, tmp_path) -> None:
    outside = tmp_path / "mine"
    (outside / "deeper").mkdir(parents=True)
    (outside / "a.png").write_bytes(png_bytes(20))
    (outside / "deeper" / "b.pdf").write_bytes(pdf_bytes(21, pages=2))
    (outside / "notes.txt").write_text("not a document")
    (outside / ".hidden.png").write_bytes(png_bytes(22))
    single = tmp_path / "single.docx"
    single.write_bytes(b"PK\x03\x04" + b"\0" * 50)
    inbox_file = config.inboxes[0].path / "in.png"
    inbox_file.write_bytes(png_bytes(23))
    out = Ingestor(config, ledger).submit([outside, single, inbox_file, tmp_path / "missing.pdf"])
    got = {s.path.name: (s.result, s.error) for s in out}
    assert set(got) == {"a.png", "b.pdf", "single.docx", "in.png", "missing.pdf"}
    assert got["a.png"][0].state == JobState.QUEUED and got["a.png"][1] is None
    assert ledger.job(got["b.pdf"][0].job_id).pages_total == 2
    assert {s.path.name: s.pages for s in out}["b.pdf"] == 2
    assert got["single.docx"][0].state == JobState.FAILED and "unsupported" in got["single.docx"][1]
    assert got["missing.pdf"] == (None, f"no such file: {tmp_path / 'missing.pdf'}")
    assert (outside / "a.png").exists() and single.exists()        # the user's files stay
    assert not inbox_file.exists()                                  # inbox files are moved
    assert (config.inboxes[0].failed / "single.docx").exists()
    job = ledger.job(got["a.png"][0].job_id)
    assert job.inbox == config.inboxes[0].key and job.source_path == str(outside / "a.png")


def test_retry_moves_the_original_back_and_fails_again_cleanly(config, ledger) -> None:
    inbox = config.inboxes[0]
    (inbox.path / "bad.pdf").write_bytes(b"%PDF-1.4 not really")
    (inbox.path / "fixable.pdf").write_bytes(b"%PDF-1.4 not yet")
    rested(inbox.path / "bad.pdf")
    rested(inbox.path / "fixable.pdf")
    ing = Ingestor(config, ledger)
    bad = ing.ingest(inbox, inbox.path / "bad.pdf")
    fixable = ing.ingest(inbox, inbox.path / "fixable.pdf")
    assert bad.state == fixable.state == JobState.FAILED
    (inbox.failed / "fixable.pdf").write_bytes(pdf_bytes(30, pages=2))   # the user repaired it
    out = {r.job_id: r for r in retry_jobs(Ingestor(config, ledger))}
    assert out[fixable.job_id] == Retried(fixable.job_id, RetryOutcome.REOPENED, pages=2)
    assert out[bad.job_id].outcome == RetryOutcome.STILL_FAILING and out[bad.job_id].detail
    job = ledger.job(fixable.job_id)
    assert job.state == JobState.QUEUED and job.pages_total == 2
    assert Path(job.spool_path).parent == config.spool_dir and Path(job.spool_path).exists()
    assert not (inbox.failed / "fixable.pdf.error.txt").exists()
    still = ledger.job(bad.job_id)
    assert still.state == JobState.FAILED and still.spool_path == str(inbox.failed / "bad.pdf")
    assert (inbox.failed / "bad.pdf").exists() and (inbox.failed / "bad.pdf.error.txt").exists()
    assert sorted(p.name for p in inbox.failed.iterdir()) == ["bad.pdf", "bad.pdf.error.txt"]
    assert spool_files(config) == [Path(job.spool_path)] and intents(config) == []
    assert retry_jobs(Ingestor(config, ledger), [fixable.job_id, 999]) == [
        Retried(fixable.job_id, RetryOutcome.NOT_FAILED, detail="queued"),
        Retried(999, RetryOutcome.NO_SUCH_JOB)]


def test_retry_requeues_failed_pages_of_a_job_that_had_pages(config, ledger) -> None:
    inbox = config.inboxes[0]
    (inbox.path / "two.pdf").write_bytes(pdf_bytes(31, pages=2))
    res = Ingestor(config, ledger).ingest(inbox, inbox.path / "two.pdf")
    [page] = ledger.claim_pages("w1", n=1)
    ledger.fail_page(page.job_id, page.page_no, "w1", "boom", retryable=False)
    failed_at = files.move_file(Path(ledger.job(res.job_id).spool_path), inbox.failed / "two.pdf")
    ledger.set_job_paths(res.job_id, spool_path=str(failed_at))
    files.write_error_file(failed_at, "page 1: boom")
    assert retry_jobs(Ingestor(config, ledger), [res.job_id]) == [Retried(res.job_id, RetryOutcome.REQUEUED)]
    job = ledger.job(res.job_id)
    assert job.state == JobState.QUEUED and Path(job.spool_path).parent == config.spool_dir
    assert list(inbox.failed.iterdir()) == []


# -- reconcile: the states a crash can leave behind ------------------------------------------------

def _intent(ing: Ingestor, spool_name: str, source: Path, **extra) -> None:
    data = {"inbox": ing.config.inboxes[0].key, "source_path": str(source),
            "relative_path": source.name, "spool_name": spool_name, "size": 1, "mtime_ns": 1,
            "copied": False, **extra}
    files.atomic_write_text(ing.intents / (spool_name + ".json"), json.dumps(data))


def test_reconcile_finishes_or_undoes_each_interrupted_step(config, ledger) -> None:
    inbox = config.inboxes[0]
    ing = Ingestor(config, ledger)
    # 1. moved into the spool, then killed before the ledger heard of it
    (config.spool_dir / "s1-a.png").write_bytes(png_bytes(40))
    _intent(ing, "s1-a.png", inbox.path / "a.png")
    # 2. intent written, killed before the move: the file is still in the inbox
    (inbox.path / "b.png").write_bytes(png_bytes(41))
    _intent(ing, "s2-b.png", inbox.path / "b.png")
    # 3. a cross-volume move copied into the spool but never unlinked the source
    (inbox.path / "c.png").write_bytes(png_bytes(42))
    (config.spool_dir / "s3-c.png").write_bytes(png_bytes(42))
    _intent(ing, "s3-c.png", inbox.path / "c.png")
    # 4. a failed file moved to failed/, killed before the error file and the failed job
    (inbox.failed).mkdir(parents=True)
    (inbox.failed / "d.docx").write_bytes(b"PK\x03\x04")
    _intent(ing, "s4-d.docx", inbox.path / "d.docx", stage="failed", dest=str(inbox.failed / "d.docx"),
            reason="unsupported file type", details="", sha256="x", size_bytes=4)
    # 5. a done job whose original is still in the spool, and a failed one likewise
    (config.spool_dir / "s5-e.png").write_bytes(png_bytes(43))
    done = ledger.add_job(inbox=inbox.key, source_path=str(inbox.path / "e.png"),
                          spool_path=str(config.spool_dir / "s5-e.png"), sha256="e", size_bytes=1,
                          pages_total=1)
    [page] = ledger.claim_pages("w", n=1)
    ledger.complete_page(page.job_id, page.page_no, "w", text="t")
    assert ledger.finish_job(done.job_id, str(inbox.outbox / "e.md"))
    (config.spool_dir / "s6-f.png").write_bytes(png_bytes(44))
    failed = ledger.add_job(inbox=inbox.key, source_path=str(inbox.path / "sub" / "f.png"),
                            spool_path=str(config.spool_dir / "s6-f.png"), sha256="f", size_bytes=1,
                            pages_total=1)
    assert ledger.fail_job(failed.job_id, "page 1: boom")
    # 6. the temp file of an interrupted cross-volume copy
    (config.spool_dir / ".ocrd-abc.part").write_bytes(b"half")

    counts = ing.reconcile()

    assert counts["resumed"] == 2 and counts["dropped_intents"] == 1 and counts["removed_copies"] == 1
    assert counts["failed_moved"] == 1 and counts["done_archived"] == 1 and counts["temp_removed"] == 1
    a = ledger.job_by_spool_path(str(config.spool_dir / "s1-a.png"))
    assert a.state == JobState.QUEUED and a.source_path == str(inbox.path / "a.png")
    assert (inbox.path / "b.png").exists() and (inbox.path / "c.png").exists()
    d = ledger.job_by_spool_path(str(inbox.failed / "d.docx"))
    assert d.state == JobState.FAILED and (inbox.failed / "d.docx.error.txt").exists()
    assert ledger.job(done.job_id).spool_path == str(inbox.archive / "e.png")
    assert (inbox.archive / "e.png").exists()
    assert ledger.job(failed.job_id).spool_path == str(inbox.failed / "sub" / "f.png")
    assert (inbox.failed / "sub" / "f.png.error.txt").read_text().startswith("page 1: boom")
    assert [p.name for p in spool_files(config)] == ["s1-a.png"] and intents(config) == []
    assert sorted(os.listdir(config.spool_dir)) == [".intents", ".lock", "s1-a.png"]
    assert ing.reconcile() == dict.fromkeys(counts, 0)      # a second run finds nothing to do


def test_reconcile_finishes_an_interrupted_duplicate_and_keeps_an_orphan(config, ledger) -> None:
    inbox = config.inboxes[0]
    ing = Ingestor(config, ledger)
    (inbox.path / "one.png").write_bytes(png_bytes(50))
    first = ing.ingest(inbox, inbox.path / "one.png")
    # a duplicate was recorded and moved to archive/, then the process died before set_job_paths
    spool = config.spool_dir / "s7-two.png"
    dup = ledger.add_job(inbox=inbox.key, source_path=str(inbox.path / "two.png"), spool_path=str(spool),
                         sha256=ledger.job(first.job_id).sha256, size_bytes=1, pages_total=1)
    assert dup.state == JobState.DUPLICATE
    (inbox.archive).mkdir(parents=True)
    (inbox.archive / "two.png").write_bytes(png_bytes(50))
    _intent(ing, "s7-two.png", inbox.path / "two.png", stage="duplicate",
            dest=str(inbox.archive / "two.png"), job_id=dup.job_id)
    # a spool file nobody knows (no intent, no job): kept by ingesting it, never deleted
    (config.spool_dir / "stray.png").write_bytes(png_bytes(51))
    counts = ing.reconcile()
    assert counts["resumed"] == 1 and counts["orphans_ingested"] == 1
    assert ledger.job(dup.job_id).spool_path == str(inbox.archive / "two.png")
    stray = ledger.job_by_spool_path(str(config.spool_dir / "stray.png"))
    assert stray.state == JobState.QUEUED
    assert intents(config) == []


def test_reconcile_waits_for_an_ingest_in_flight(config, ledger) -> None:
    ing = Ingestor(config, ledger)
    done = threading.Event()
    with ing.locked():                         # e.g. `ocrd submit` in the middle of a file
        t = threading.Thread(target=lambda: (Ingestor(config, ledger).reconcile(), done.set()))
        t.start()
        assert not done.wait(0.3)              # a short bounded check that it is blocked
    assert done.wait(10)
    t.join()


def test_a_young_file_that_does_not_parse_stays_in_the_inbox(config, ledger) -> None:
    inbox = config.inboxes[0]
    partial = inbox.path / "scan.pdf"
    partial.write_bytes(pdf_bytes(40, pages=3)[:300])          # a writer paused mid-file
    ing = Ingestor(config, ledger)
    with pytest.raises(Deferred) as deferred:
        ing.ingest(inbox, partial)
    assert 0 < deferred.value.grace_s <= STALL_GRACE_S and "corrupt PDF" in str(deferred.value)
    assert partial.exists() and all_jobs(ledger) == [] and spool_files(config) == []
    rested(partial)                                           # unchanged past the grace: now it fails
    assert ing.ingest(inbox, partial).state == JobState.FAILED
    assert (inbox.failed / "scan.pdf").exists()


def test_a_writer_that_stalls_longer_than_stable_for_s_keeps_its_file(config, ledger, start_service) -> None:
    inbox = config.inboxes[0]
    whole = pdf_bytes(41, pages=3)
    target = inbox.path / "slow.pdf"
    with capture_logs() as logs:
        start_service(config)
        with target.open("wb") as f:
            f.write(whole[:400])
            f.flush()
            wait_for(lambda: any(e["event"] == "file_deferred" for e in logs), 30, 0.05, "the stall noticed")
            f.write(whole[400:])                                  # the writer comes back
    [job] = wait_jobs(ledger, 1, timeout=30)
    assert job["state"] == JobState.QUEUED and job["pages_total"] == 3
    assert not (inbox.failed / "slow.pdf").exists()


def test_a_failed_ingest_is_retried_with_backoff_without_touching_the_file(config, ledger, start_service) -> None:
    # The state dir can't take the crash journal (disk full, read-only; here: a file where the
    # journal's folder should be): the file stays in its inbox, status can tell, and once the
    # cause clears it is taken without anyone touching it.
    inbox = config.inboxes[0]
    start_service(config)
    journal = config.spool_dir / ".intents"
    wait_for(journal.is_dir, 10, 0.05, "the service started")
    journal.rmdir()
    journal.write_text("in the way")
    (inbox.path / "page.png").write_bytes(png_bytes(50))
    problem = wait_for(lambda: ledger.get_meta("ingest_problem"), 30, 0.05, "the failure recorded")
    assert "page.png" in json.loads(problem)["path"] and (inbox.path / "page.png").exists()
    journal.unlink()
    journal.mkdir()
    [job] = wait_jobs(ledger, 1, timeout=30)
    assert job["state"] == JobState.QUEUED
    wait_for(lambda: ledger.get_meta("ingest_problem") is None, 10, 0.05, "the problem cleared")


def test_a_lost_ledger_requeues_spool_files_under_their_original_names(config, ledger) -> None:
    # The ledger file was deleted: the spool still holds an original the new ledger never saw.
    config.spool_dir.mkdir(parents=True, exist_ok=True)
    orphan = config.spool_dir / "0123456789abcdef-March invoice.pdf"
    orphan.write_bytes(pdf_bytes(60, pages=2))
    Ingestor(config, ledger).reconcile()
    [job] = all_jobs(ledger)
    assert job["state"] == JobState.QUEUED and job["pages_total"] == 2
    assert Path(job["source_path"]) == config.inboxes[0].path / "March invoice.pdf"
    assert job_relative_path(config, ledger.job(job["id"])) == Path("March invoice.pdf")   # -> March invoice.md


def test_submitting_a_known_document_again_leaves_no_copy_in_archive(config, ledger, tmp_path) -> None:
    mine = tmp_path / "scan.png"
    mine.write_bytes(png_bytes(70))
    ing = Ingestor(config, ledger)
    [first] = ing.submit([mine])
    [again] = ing.submit([mine])                          # same bytes: a duplicate
    assert first.result.state == JobState.QUEUED and again.result.state == JobState.DUPLICATE
    archive = config.inboxes[0].archive
    assert not archive.exists() or list(archive.iterdir()) == []   # no `scan (2).png` (the trial)
    assert mine.exists() and spool_files(config) == [Path(ledger.job(first.result.job_id).spool_path)]
    assert ledger.job(again.result.job_id).spool_path in ("", None)
