"""The search index's daemon side on a real ledger: a page's words are its markdown made plain
(no grounding labels, box numbers or markup), and pages done before the index (a v4 ledger) are
cleaned and indexed in batches."""

from __future__ import annotations

from pathlib import Path

from test_output_blocks import MARKDOWN_PAGE

from ocrd.daemon.search_index import index_backlog, search_text
from ocrd.ledger import Ledger
from ocrd.ledger.migrations import MIGRATIONS

STAMP = "2025-03-01T12:00:00.000000Z"


def test_a_pages_words_are_its_markdown_made_plain() -> None:
    words = search_text(MARKDOWN_PAGE)
    assert words.startswith("Quarterly Report\n\nThe quarterly report was filed on Monday morning")
    assert "Item Quantity" in words and "Bolts & nuts 800" in words
    assert "Figure 1: Warehouse floor plan" in words
    for markup in ("<|", "|>", "ref", "det", "118", "**", "#", "<td>", "sub_title", "image_caption"):
        assert markup not in words, markup
    assert search_text("A plain line\n\n| a | b |\n| --- | --- |\n| 1 | 2 |") == "A plain line\n\na b\n1 2"
    assert search_text("") == ""


def _v4_ledger(path: Path, texts: list[str]) -> str:
    """A SQLite ledger as ocrd wrote it before search: one done job with these page texts."""
    url = f"sqlite:///{path}"
    Ledger(url, migrations=MIGRATIONS[:4]).close()
    import sqlite3
    with sqlite3.connect(path) as con:
        con.execute("INSERT INTO jobs (id, inbox, source_path, state, pages_total, pages_done, attempts, "
                    "priority, created_at, updated_at) VALUES (1, '/in', '/in/report.pdf', 'done', ?, ?, "
                    "1, 0, ?, ?)", (len(texts), len(texts), STAMP, STAMP))
        con.executemany("INSERT INTO pages (job_id, page_no, state, attempts, priority, finished_at, text) "
                        "VALUES (1, ?, 'done', 1, 0, ?, ?)",
                        [(n, STAMP, text) for n, text in enumerate(texts, start=1)])
    return url


def test_the_backlog_is_cleaned_and_indexed_in_batches(tmp_path: Path) -> None:
    url = _v4_ledger(tmp_path / "ledger.db", [MARKDOWN_PAGE, "", "the warehouse keys"] * 2)
    with Ledger(url) as ledger:
        assert ledger.count_unindexed() == 6
        after = index_backlog(ledger, 0, batch=4)
        assert after == 4 and ledger.count_unindexed() == 2
        assert index_backlog(ledger, after, batch=4) == 6
        assert index_backlog(ledger, 6, batch=4) is None and ledger.count_unindexed() == 0
        assert [h["page_no"] for h in ledger.search("warehouse")] == [1, 3, 4, 6]
        assert ledger.search("ref") == ledger.search("118") == ledger.search("image_caption") == []
        [hit, *_] = ledger.search("bolts")
        assert "**Bolts**" in hit["snippet"] and "<" not in hit["snippet"]
