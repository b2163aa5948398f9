"""An upload's name (what a client sends is cut to a plain file name that can't leave the staging
folder, hide itself, or overflow the spool's name budget) and its ingest (for `[api] inbox`, with
its own options, a duplicate dropped), on a real ledger."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import samples
from configs import config_dict
from ocrd.daemon.api.uploads import MAX_NAME_BYTES, disposition_name, safe_name
from ocrd.daemon.config import parse_config
from ocrd.daemon.intake.ingest import Ingestor
from ocrd.ledger import JobOptions, JobState, Ledger


@pytest.mark.parametrize(("given", "content_type", "name"), [
    ("scan.pdf", "", "scan.pdf"),
    ("../x.pdf", "", "x.pdf"),
    ("../../etc/passwd", "", "passwd"),
    ("..\\..\\y.png", "", "y.png"),
    ("C:\\Users\\me\\Scans\\z.tif", "", "z.tif"),
    ("/abs/path/a.jpg", "", "a.jpg"),
    (".hidden.pdf", "", "hidden.pdf"),
    ("..", "application/pdf", "upload.pdf"),
    ("", "image/png", "upload.png"),
    (None, "image/jpeg; charset=binary", "upload.jpg"),
    (None, "application/octet-stream", "upload"),
    ("a\x00b\nc\x1b.pdf", "", "abc.pdf"),
    ("  Résumé 2026 .pdf ", "", "Résumé 2026 .pdf"),
    ("dir/", "text/plain", "upload"),
])
def test_names_are_cut_to_a_plain_file_name(given: str | None, content_type: str, name: str) -> None:
    assert safe_name(given, content_type) == name


def test_a_long_name_keeps_its_extension_within_the_budget() -> None:
    name = safe_name("ü" * 200 + ".pdf")
    assert name.endswith(".pdf") and len(os.fsencode(name)) <= MAX_NAME_BYTES


def test_content_disposition_names_plain_and_encoded() -> None:
    assert disposition_name('attachment; filename="scan 1.pdf"') == "scan 1.pdf"
    assert disposition_name("attachment; filename*=UTF-8''caf%C3%A9.pdf") == "café.pdf"
    assert disposition_name(b'form-data; name="file"; filename="../x.pdf"') == "../x.pdf"
    assert disposition_name('form-data; name="mode"') is None
    assert disposition_name(None) is None


def test_an_upload_is_ingested_for_the_api_inbox_and_a_duplicate_dropped(tmp_path: Path) -> None:
    raw = config_dict(tmp_path)
    second = {k: str(tmp_path / f"b-{k}") for k in ("path", "outbox", "archive", "failed")}
    raw["inbox"].append(second)
    raw["api"] = {"inbox": second["path"]}
    config = parse_config(raw)
    staged = tmp_path / "state" / "uploads" / "abc"
    staged.mkdir(parents=True)
    with Ledger(config.db_url) as ledger:
        ingest = Ingestor(config, ledger)
        first = samples.write_image(staged / "scan.png", "PNG")
        done = ingest.submit_upload(first, options=JobOptions(formats=("md", "pdf")))
        job = ledger.job(done.result.job_id)
        assert (done.result.state, job.inbox, job.chosen.formats) == (JobState.QUEUED, second["path"], ("md", "pdf"))
        assert not first.exists() and job.spool_path.endswith("-scan.png")
        again = ingest.submit_upload(samples.write_image(staged / "again.png", "PNG"))
        assert (again.result.state, again.result.duplicate_of) == (JobState.DUPLICATE, job.id)
        assert list(staged.iterdir()) == [] and not (tmp_path / "b-archive").exists()
        assert [p.name for p in config.spool_dir.iterdir() if not p.name.startswith(".")] == \
            [os.path.basename(job.spool_path)]
