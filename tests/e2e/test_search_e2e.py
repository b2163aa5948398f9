"""Full-text search against the real daemon with the RapidOCR engine (real words, unlike the tiny
model's): `ocrd search` and the API's /v1/search find a word on page 2 of a PDF, and nothing for an
absent one, on a SQLite ledger and on a PostgreSQL one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image, ImageDraw

import textpages

pytest.importorskip("rapidocr_onnxruntime")

LINES = [["Quarterly report", "of the harbour works"],
         ["A kestrel nested", "under the harbour bridge"],
         ["Invoices are due", "before the fifteenth"]]


def letters_pdf(path: Path) -> Path:
    """Three pages of large, plain text (the daemon renders PDFs at 72 dpi in the e2e config)."""
    face = textpages.font("DejaVuSerif.ttf", 40)      # PP-OCR runs sans words together
    pages = []
    for lines in LINES:
        page = Image.new("RGB", (900, 360), "white")
        draw = ImageDraw.Draw(page)
        for n, line in enumerate(lines):
            draw.text((60, 80 + 110 * n), "  ".join(line.split()), fill="black", font=face)
        pages.append(page)
    pages[0].save(path, "PDF", resolution=72, save_all=True, append_images=pages[1:])
    return path


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger(request: pytest.FixtureRequest) -> tuple[dict[str, Any], str | None]:
    """The daemon's [ledger] table and, on PostgreSQL, its DSN (made before make_daemon, so its
    daemons are gone before the database is dropped)."""
    if request.param == "sqlite":
        return {}, None
    url, dsn = request.getfixturevalue("pg_ledger")
    return {"ledger": {"url": url}}, dsn


def test_search_finds_a_word_on_page_two_and_nothing_for_an_absent_one(ledger, make_daemon,
                                                                        tmp_path: Path) -> None:
    tables, dsn = ledger
    d = make_daemon(engine="rapidocr", max_tokens=8192, page_timeout_s=240, pg_dsn=dsn,
                    tables={**tables, "api": {"listen": "127.0.0.1:0", "auth": "none"}})
    d.start()
    letters_pdf(tmp_path / "letters.pdf").replace(d.inbox / "letters.pdf")
    assert d.wait_settled(1, timeout=300) == {"letters.pdf": "done"}

    [hit] = json.loads(d.cli("search", "kestrel", "--json").stdout)
    assert (hit["page_no"], hit["pages_total"], hit["name"], hit["state"]) == (2, 3, "letters.pdf", "done")
    assert "**kestrel**" in hit["snippet"].lower() and "<" not in hit["snippet"]
    table = d.cli("search", "kestrel").stdout
    assert "letters.pdf" in table and "2/3" in table
    absent = d.cli("search", "zeppelin", check=False)
    assert (absent.returncode, absent.stdout) == (1, "")
    both = json.loads(d.cli("search", "harbour", "--json").stdout)
    assert [h["page_no"] for h in both] == [1, 2]
    assert [h["page_no"] for h in json.loads(d.cli("search", "harbour", "-kestrel", "--json").stdout)] == [1]

    url = d.status()["api_url"]
    with httpx.Client(base_url=url, timeout=30) as client:          # auth = "none": loopback only
        hits = client.get("/v1/search", params={"q": "kestrel"}).json()["hits"]
        assert [(h["job_id"], h["page_no"], h["name"]) for h in hits] == [(hit["job_id"], 2, "letters.pdf")]
        assert client.get("/v1/search", params={"q": "zeppelin"}).json()["hits"] == []
        assert client.get("/v1/search", params={"q": " "}).status_code == 400
    assert d.stop() == 0
