"""Full-text search against the real daemon with the RapidOCR engine (real words, unlike the tiny
model's): `ocrd search` and the API's /v1/search find a word on page 2 of a PDF, and nothing for an
absent one, on a SQLite ledger and on a PostgreSQL one; and pages done before the index existed
are indexed when the daemon starts."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image, ImageDraw

import textpages
from helpers import wait_for
from ocrd.ledger import Ledger
from ocrd.ledger.migrations import MIGRATIONS

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
    pytest.importorskip("rapidocr")
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


def test_pages_done_before_the_index_are_indexed_when_the_daemon_starts(make_daemon) -> None:
    d = make_daemon()
    d.state.mkdir()
    Ledger(f"sqlite:///{d.state / 'ledger.db'}", migrations=MIGRATIONS[:4]).close()   # ocrd before v5
    stamp = "2025-03-01T12:00:00.000000Z"
    con = sqlite3.connect(d.state / "ledger.db")
    with con:
        con.execute("INSERT INTO jobs (inbox, source_path, state, pages_total, pages_done, attempts, "
                    "priority, created_at, updated_at) VALUES (?, ?, 'done', 2, 2, 1, 0, ?, ?)",
                    (str(d.inbox), str(d.inbox / "old.pdf"), stamp, stamp))
        con.executemany("INSERT INTO pages (job_id, page_no, state, attempts, priority, finished_at, text) "
                        "VALUES (1, ?, 'done', 1, 0, ?, ?)",
                        [(1, stamp, "<|ref|>title<|/ref|><|det|>[[1, 2, 3, 4]]<|/det|>\n# Ledger of 2019"),
                         (2, stamp, "<|ref|>text<|/ref|><|det|>[[5, 6, 7, 8]]<|/det|>\nThe **ferryman** paid")])
    con.close()
    before = d.cli("search", "ferryman", check=False)
    assert before.returncode == 1 and "2 done page(s) are not indexed yet" in before.stderr
    d.start()

    def indexed() -> list[dict[str, Any]] | None:
        out = d.cli("search", "ferryman", "--json", check=False)
        return json.loads(out.stdout) if out.returncode == 0 else None

    found = wait_for(indexed, 60, interval=0.5, message=f"the backlog to be indexed ({d.log})")
    assert [(h["page_no"], h["name"], h["snippet"]) for h in found] == [(2, "old.pdf", "The **ferryman** paid")]
    assert d.cli("search", "ref", check=False).returncode == 1       # the grounding tags are gone
    assert d.cli("search", "ledger", "2019").returncode == 0
    assert d.stop() == 0
