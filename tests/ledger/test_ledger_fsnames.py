"""File names that are not UTF-8 (a Latin-1 `café.png` from an old share) through a real ledger,
on SQLite and PostgreSQL: every path column gives back the str that os.fsdecode made of the name's
bytes, and stores the undecodable bytes as private-use characters U+F780..U+F7FF."""

from __future__ import annotations

import os

from ledger_testkit import T0, Db

from ocrd.ledger.fsnames import from_stored, to_stored
from ocrd.ledger.store import Ledger

CAFE = os.fsdecode(b"caf\xe9.png")               # 'caf\udce9.png'
SOURCE, SPOOL = f"/in/{CAFE}", f"/spool/0123456789abcdef-{CAFE}"


def test_mapping_is_reversible_and_leaves_valid_names_alone() -> None:
    assert to_stored(CAFE) == "caf\uf7e9.png"
    assert from_stored(to_stored(CAFE)) == CAFE
    every_byte = os.fsdecode(bytes(range(0x80, 0x100)))
    assert from_stored(to_stored(every_byte)) == every_byte
    for valid in ("café.png", "中文.pdf", "receipt 🧾.jpg", "plain.pdf"):
        assert to_stored(valid) == valid == from_stored(valid)


def test_non_utf8_paths_round_trip(ledger: Ledger, db: Db) -> None:
    job_id = ledger.add_job(inbox="/in", source_path=SOURCE, spool_path=SPOOL, sha256="s1",
                            size_bytes=10, pages_total=1, now=T0).job_id
    job = ledger.job(job_id)
    assert (job.source_path, job.spool_path) == (SOURCE, SPOOL)
    assert os.fsencode(job.source_path) == b"/in/caf\xe9.png"
    assert ledger.job_by_spool_path(SPOOL).id == job_id            # a bound value maps too
    assert [p.source_path for p in ledger.claim_pages("w", now=T0)] == [SOURCE]

    archived, output = f"/archive/{CAFE}", os.fsdecode(b"/out/caf\xe9.md")
    ledger.complete_page(job_id, 1, "w", text="text", now=T0)
    ledger.set_job_paths(job_id, spool_path=archived, output_path=output)
    assert ledger.finish_job(job_id, output, now=T0)
    (row,) = ledger.list_jobs()
    assert (row["source_path"], row["spool_path"], row["output_path"]) == (SOURCE, archived, output)
    shown = ledger.show_job(job_id)
    assert shown["events"][0]["detail"] == f"1 pages from {SOURCE}"
    (ending,) = ledger.job_endings(0)
    assert (ending["source_path"], ending["output_path"]) == (SOURCE, output)

    # What a user's own client (sqlite3, psql) sees: the byte as U+F7E9, valid text.
    assert db.raw("SELECT source_path, spool_path, output_path FROM jobs") == [
        ("/in/caf\uf7e9.png", "/archive/caf\uf7e9.png", "/out/caf\uf7e9.md")]


def test_errors_naming_such_a_file_round_trip(ledger: Ledger, db: Db) -> None:
    failed = ledger.add_failed_job(inbox="/in", source_path=SOURCE, spool_path=f"/failed/{CAFE}",
                                   sha256="s2", size_bytes=1, error=f"cannot identify image file '{SPOOL}'")
    assert ledger.job(failed).error == f"cannot identify image file '{SPOOL}'"
    assert ledger.job_by_spool_path(f"/failed/{CAFE}").id == failed

    job_id = ledger.add_job(inbox="/in", source_path=f"/in/b{CAFE}", spool_path=f"/spool/b{CAFE}",
                            sha256="s3", size_bytes=1, pages_total=1, now=T0).job_id
    ledger.claim_pages("w", now=T0)
    ledger.fail_page(job_id, 1, "w", f"cannot open {SPOOL}", retryable=False, now=T0)
    assert ledger.show_job(job_id)["pages"][0]["error"] == f"cannot open {SPOOL}"
    assert ledger.job(job_id).error == f"page 1: cannot open {SPOOL}"
    assert ("page 1: cannot open /spool/0123456789abcdef-caf\uf7e9.png",) in db.raw("SELECT error FROM jobs")
