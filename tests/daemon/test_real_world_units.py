"""Unit checks behind tests/e2e/test_real_world_files.py: long and non-UTF-8 names, zero-page PDFs,
big bilevel scans, a failed/ folder that cannot take a file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from PIL import Image

import samples
from ingest_runner import make_config, png_bytes
from ocrd.daemon import files
from ocrd.daemon.errors import InputError
from ocrd.daemon.intake.ingest import Ingestor
from ocrd.daemon.render import MAX_SIDE, page_count, render_page
from ocrd.ledger.states import JobState
from ocrd.ledger.store import Ledger


def _nbytes(name: str) -> int:
    return len(os.fsencode(name))


# --- names at the NAME_MAX limit ----------------------------------------------------------------

def test_fit_name_cuts_the_stem_in_bytes_and_keeps_the_extension() -> None:
    assert files.fit_name("short.pdf") == "short.pdf"
    cjk = files.fit_name("中" * 100 + ".png", 120)
    assert cjk.endswith(".png") and _nbytes(cjk) <= 120 and set(cjk[:-4]) == {"中"}
    assert _nbytes(files.fit_name("x" * 300)) == 255
    odd = files.fit_name("a." + "b" * 100, 50)      # not an extension: the whole name is cut
    assert odd == ("a." + "b" * 100)[:50]


def test_suffixed_names_stay_creatable(tmp_path: Path) -> None:
    name = "L" * 250 + ".png"                       # a legal name, 254 bytes
    (tmp_path / name).write_bytes(b"x")
    taken = files.unique_path(tmp_path / name)
    assert taken.name.endswith(" (2).png") and _nbytes(taken.name) <= 255
    taken.write_bytes(b"y")

    error = files.write_error_file(tmp_path / name, "unsupported file type")
    assert error == files.error_file_for(tmp_path / name) and error.name.endswith(".png.error.txt")
    assert error.read_text().splitlines()[0] == "unsupported file type"

    out = tmp_path / ("M" * 252 + ".md")            # the temp file beside it must fit too
    files.atomic_write_text(out, "text")
    assert out.read_text() == "text"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []   # no temp file left


# --- render -------------------------------------------------------------------------------------

def test_zero_page_pdf_says_so_even_after_another_pdf_failed(tmp_path: Path) -> None:
    bad = tmp_path / "cut.pdf"
    bad.write_bytes(samples.write_pdf(tmp_path / "whole.pdf", 3).read_bytes()[:500])
    with pytest.raises(InputError, match="^corrupt PDF: ") as exc:
        page_count(bad)                              # leaves a stale error code in pdfium
    assert "Success" not in str(exc.value)
    with pytest.raises(InputError, match="^PDF has no pages$"):
        page_count(samples.write_zero_page_pdf(tmp_path / "none.pdf"))


def test_big_bilevel_scan_is_capped_and_stays_white(tmp_path: Path) -> None:
    path = samples.write_blank_png(tmp_path / "plan.png", (10000, 8000))
    assert page_count(path) == 1
    image = render_page(path, 1)
    assert image.mode == "RGB" and image.size == (MAX_SIDE, round(8000 * MAX_SIDE / 10000))
    assert image.getextrema() == ((255, 255), (255, 255), (255, 255))


def test_bomb_reason_names_the_limit(tmp_path: Path) -> None:
    limit = 2 * Image.MAX_IMAGE_PIXELS
    with pytest.raises(InputError, match=rf"^image too large: 196000000 pixels \(the limit is {limit}\)$"):
        page_count(samples.write_blank_png(tmp_path / "bomb.png", (14000, 14000)))


# --- ingest -------------------------------------------------------------------------------------

@pytest.fixture
def ingestor(tmp_path: Path):
    config = make_config(tmp_path)
    config.inboxes[0].path.mkdir(parents=True)
    ledger = Ledger(config.db_url)
    yield Ingestor(config, ledger)
    ledger.close()


def test_non_utf8_and_long_cjk_names_are_ingested(ingestor: Ingestor) -> None:
    inbox = ingestor.config.inboxes[0]
    latin1 = Path(os.fsdecode(os.fsencode(str(inbox.path)) + b"/caf\xe9.png"))
    latin1.write_bytes(png_bytes(1))
    cjk = inbox.path / ("中" * 80 + ".png")             # 244 bytes: a spool name must not overflow
    cjk.write_bytes(png_bytes(2))
    for path in (latin1, cjk):
        result = ingestor.ingest(inbox, path)
        assert result is not None and result.state == JobState.QUEUED
        assert not path.exists()
    sources = sorted(j["source_path"] for j in ingestor.ledger.list_jobs(limit=10))
    assert sources == sorted([str(latin1), str(cjk)])          # the byte 0xE9 kept, not U+FFFD
    spooled = [os.fsencode(p) for p in os.listdir(ingestor.spool) if not p.startswith(".")]
    assert any(p.endswith(b"-caf\xe9.png") for p in spooled)


def test_failed_folder_that_cannot_take_the_file_keeps_it_in_the_spool(ingestor: Ingestor) -> None:
    inbox = ingestor.config.inboxes[0]
    inbox.failed.mkdir(parents=True)
    (inbox.failed / "sub").write_text("a file where failed/sub/ should be a folder")
    samples.write_docx(inbox.path / "sub" / "letter.docx")
    result = ingestor.ingest(inbox, inbox.path / "sub" / "letter.docx")
    assert result is not None and result.state == JobState.FAILED
    job = ingestor.ledger.job(result.job_id)
    spool = Path(job.spool_path)
    assert spool.is_file() and spool.parent == ingestor.spool          # the ledger says where it is
    assert sorted(p.name for p in ingestor.spool.iterdir() if not p.name.startswith(".")) == [spool.name]

    (inbox.failed / "sub").unlink()                                    # the user fixes the folder
    assert ingestor.reconcile()["failed_moved"] == 1
    moved = Path(ingestor.ledger.job(result.job_id).spool_path)
    assert moved == inbox.failed / "sub" / "letter.docx" and moved.is_file()
    assert files.error_file_for(moved).read_text().startswith("unsupported file type")
