"""Every output format through the real daemon (issue 18): searchable PDFs whose words lie where
the engine found them, JSON with the boxes, plain text; a born-digital PDF kept as it was; the
DeepSeek-OCR path's page without boxes still searchable; `ocrd export` for documents done before
a format was on; exactly one file per format after kill -9 of the daemon at any moment."""

from __future__ import annotations

import json
import re
import signal
from pathlib import Path

import pypdfium2 as pdfium
import pytest

import textpages
from helpers import wait_for
from pdfcheck import assert_valid, assert_words_in_boxes, page_texts, vector_pdf

from ocrd.daemon.output.blocks import from_dicts
from ocrd.daemon.output.pdf import PageLayer

ALL = ["md", "pdf", "json", "txt"]


def words(text: str) -> list[str]:
    text = re.sub(r"<!--.*?-->", " ", text)
    return re.sub(r"^\|( --- \|)+$", "", text, flags=re.M).replace("|", " ").split()


def outputs(d, stem: str) -> list[str]:
    return sorted(p.name for p in d.outbox.rglob("*") if p.is_file() and p.name.startswith(stem))


def test_rapidocr_scans_become_searchable_pdfs_whose_words_lie_in_their_boxes(make_daemon) -> None:
    pytest.importorskip("rapidocr")
    jiwer = pytest.importorskip("jiwer")
    d = make_daemon(engine="rapidocr", max_tokens=8192, page_timeout_s=240,
                    tables={"output": {"formats": ALL}})
    prose, columns = textpages.prose_page(), textpages.two_column_page()
    d.start()
    prose.image.save(d.inbox / "prose.png", dpi=(144, 144))
    # an OCRmyPDF-sized scan: a 2550x3300 two-column letter page at 300 dpi
    columns.image.resize((2550, 3300)).save(d.inbox / "columns.png", dpi=(300, 300))
    assert d.wait_settled(2, timeout=300) == {"prose.png": "done", "columns.png": "done"}

    for stem, page, size_pt in (("prose", prose, (595.0, 842.0)), ("columns", columns, (612.0, 792.0))):
        assert outputs(d, stem) == [f"{stem}.{f}" for f in sorted(ALL)]
        md = (d.outbox / f"{stem}.md").read_text()
        pdf_path, doc = d.outbox / f"{stem}.pdf", json.loads((d.outbox / f"{stem}.json").read_text())
        truth = " ".join(page.truth.split())
        cer_md = jiwer.cer(truth, " ".join(words(md)))
        cer_pdf = jiwer.cer(truth, " ".join(page_texts(pdf_path)[0].split()))
        assert cer_pdf <= cer_md + 0.01, (stem, cer_md, cer_pdf)
        assert_valid(pdf_path)
        (record,) = doc["pages"]
        assert record["engine"] == "rapidocr" and record["finish_reason"] == "stop"
        assert len(record["blocks"]) >= 10 and {b["kind"] for b in record["blocks"]} == {"line"}
        layer = PageLayer(from_dicts(record["blocks"]), record["width"], record["height"])
        with pdfium.PdfDocument(str(pdf_path)) as pdf:
            assert len(pdf) == 1 and pdf[0].get_size() == pytest.approx(size_pt, abs=1)
            checked = assert_words_in_boxes(pdf[0], layer, unique_only=True)
        assert checked >= 30, f"only {checked} words found once on the page"
        text = (d.outbox / f"{stem}.txt").read_text()
        assert jiwer.cer(truth, " ".join(text.split())) <= cer_md + 0.01
    # the ledger keeps the boxes; `ocrd show --json` has them
    shown = json.loads(d.cli("show", "1", "--json").stdout)
    assert shown["pages"][0]["blocks"] and shown["pages"][0]["width"] > 0
    assert d.stop() == 0


def test_a_born_digital_pdf_keeps_its_pages_and_gains_the_layer(make_daemon, tmp_path: Path) -> None:
    pytest.importorskip("rapidocr")
    d = make_daemon(engine="rapidocr", max_tokens=8192, page_timeout_s=240,
                    inbox_keys={"formats": ["pdf", "md"]})
    source = vector_pdf(tmp_path / "letter.pdf")
    before = page_texts(source)
    d.start()
    (d.inbox / "letter.pdf").write_bytes(source.read_bytes())
    assert d.wait_settled(1, timeout=300) == {"letter.pdf": "done"}
    assert outputs(d, "letter") == ["letter.md", "letter.pdf"]
    out = d.outbox / "letter.pdf"
    after = page_texts(out)
    assert len(after) == 3
    for old, new in zip(before, after):
        assert old in new                                  # its own text, unchanged
        assert "Original" in new[len(old):]                # and the OCR layer's reading of it
    with pdfium.PdfDocument(str(source)) as a, pdfium.PdfDocument(str(out)) as b:
        assert [a[i].get_size() for i in range(3)] == [b[i].get_size() for i in range(3)]
    per_page = (out.stat().st_size - source.stat().st_size) / 3
    assert per_page < 6000, f"{per_page:.0f} bytes added per page"
    assert_valid(out)


def test_deepseek_pages_without_boxes_are_searchable_and_export_rebuilds_outputs(
        make_daemon, tmp_path: Path) -> None:
    """The tiny random model writes no grounding: its text goes over the whole page. A document
    done with md only gets its PDF and JSON later through `ocrd export`."""
    d = make_daemon(max_tokens=24)
    d.start()
    textpages.prose_page().image.save(d.inbox / "memo.png")
    assert d.wait_settled(1, timeout=240) == {"memo.png": "done"}
    assert outputs(d, "memo") == ["memo.md"]
    to = tmp_path / "exported"
    result = d.cli("export", "1", "--format", "pdf", "--format", "json", "--to", str(to))
    assert result.stdout.splitlines() == [f"job 1: {to / 'memo.pdf'}", f"job 1: {to / 'memo.json'}"]
    def letters(text: str) -> str:   # the random model writes control characters no PDF keeps
        return "".join(c for c in text if c.isprintable() and not c.isspace())

    md = letters(" ".join(words((d.outbox / "memo.md").read_text())))
    assert md and letters(page_texts(to / "memo.pdf")[0]) == md
    page = json.loads((to / "memo.json").read_text())["pages"][0]
    assert page["engine"] == "mlx-vlm" and page["mode"] == "tiny" and page["blocks"] == []
    again = d.cli("export", "1", "--format", "json", "--to", str(to))   # never over a file
    assert again.stdout.strip() == f"job 1: {to / 'memo (2).json'}"
    missing = d.cli("export", "7", "--to", str(to), check=False)
    assert missing.returncode == 1 and missing.stderr.strip() == "ocrd: job 7 not found"
    assert d.stop() == 0


@pytest.mark.parametrize("moment", ["between pages", "while delivering"])
def test_every_format_exactly_once_after_kill_9(make_daemon, moment: str) -> None:
    d = make_daemon(max_tokens=24, workers=1, tables={"output": {"formats": ALL}})
    d.start()
    names = [f"doc{n}.png" for n in range(6)]
    for n, name in enumerate(names):
        textpages.prose_page(title=f"Document number {n}").image.save(d.inbox / name)
    if moment == "between pages":
        wait_for(lambda: d.scalar("SELECT COUNT(*) FROM pages WHERE state = 'done'") >= 2, 240,
                 message="two pages done")
    else:   # the first output file of a document is there, its job not done yet
        wait_for(lambda: any(d.outbox.glob("*.md")) or any(d.outbox.glob("*.pdf")), 240, interval=0.01,
                 message="a document being delivered")
    d.proc.send_signal(signal.SIGKILL)
    d.proc.wait(10)
    d.start()
    assert d.wait_settled(len(names), timeout=300) == dict.fromkeys(names, "done")
    for name in names:
        stem = Path(name).stem
        assert outputs(d, stem + ".") == [f"{stem}.{f}" for f in sorted(ALL)], moment
    assert "glyf pruned" not in d.log.read_text()   # fontTools' chatter stays out of the log
    hidden = [p.name for p in d.outbox.rglob(".*")]
    assert hidden == [], f"temporary files left: {hidden}"
    assert d.stop() == 0
