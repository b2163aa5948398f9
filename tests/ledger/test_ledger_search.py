"""Full-text search on real databases (SQLite's FTS5 and PostgreSQL's tsvector): the same query
language and the same hits on both, and pages done before the index existed (v4 ledgers)."""

from __future__ import annotations

from ledger_testkit import T0, Db, add

from ocrd.ledger import JobOptions
from ocrd.ledger.migrations import MIGRATIONS
from ocrd.ledger.search import MARK, fts5_query
from ocrd.ledger.store import Ledger

PAGES = ["The quarterly report lists every shipment of the northern warehouse.",
         "Please return the signed contract to our office at Harbour Street before March.",
         "Rainfall in the valley was heavier than expected; the river rose above the bridge."]


def _done(ledger: Ledger, name: str, texts: list[str], *, search: bool = True) -> int:
    """A job whose pages are done with these texts (as their search text too, unless not)."""
    job_id = add(ledger, name, len(texts))
    for page in ledger.claim_pages("w", n=len(texts), now=T0):
        words = texts[page.page_no - 1]
        ledger.complete_page(page.job_id, page.page_no, "w", text=f"<|ref|>text<|/ref|>{words}",
                             search_text=words if search else None, now=T0)
    return job_id


def _hits(ledger: Ledger, query: str) -> list[tuple[int, int]]:
    return [(h["job_id"], h["page_no"]) for h in ledger.search(query)]


def test_a_word_on_page_two_is_found_with_its_job_and_a_snippet(ledger: Ledger) -> None:
    job_id = _done(ledger, "report", PAGES)
    [hit] = ledger.search("harbour")
    assert (hit["job_id"], hit["page_no"], hit["pages_total"]) == (job_id, 2, 3)
    assert (hit["source_path"], hit["state"]) == ("/in/report.pdf", "running")
    assert f"{MARK}Harbour{MARK}" in hit["snippet"] and "contract" in hit["snippet"]
    assert ledger.search("zeppelin") == []
    assert ledger.search("HARBOUR street")[0]["page_no"] == 2      # any case, every word


def test_the_query_language_means_the_same_on_both_engines(ledger: Ledger) -> None:
    job_id = _done(ledger, "report", PAGES)
    assert _hits(ledger, '"signed contract"') == [(job_id, 2)]
    assert _hits(ledger, '"contract signed"') == []                     # a phrase keeps its order
    assert _hits(ledger, "river OR shipment") == [(job_id, 1), (job_id, 3)]
    assert _hits(ledger, "the -river") == [(job_id, 1), (job_id, 2)]
    assert _hits(ledger, "the -river -shipment") == [(job_id, 2)]
    assert _hits(ledger, "march OR zeppelin") == [(job_id, 2)]
    assert _hits(ledger, "warehouse.") == [(job_id, 1)]                 # punctuation is no word
    for nothing in ("", "   ", '"', "-", "&&", "OR"):
        assert ledger.search(nothing) == [], nothing


def test_hits_are_the_newest_pages_by_document_up_to_the_limit(ledger: Ledger) -> None:
    ids = [_done(ledger, f"doc{n}", [f"invoice number {n}", "invoice total"]) for n in range(3)]
    assert _hits(ledger, "invoice") == [(i, p) for i in ids[::-1] for p in (1, 2)]
    assert [(h["job_id"], h["page_no"]) for h in ledger.search("invoice", limit=3)] == \
        [(ids[2], 1), (ids[2], 2), (ids[1], 2)]


def test_pages_not_done_are_not_searched(ledger: Ledger) -> None:
    job_id = add(ledger, "half", 2)
    [page] = ledger.claim_pages("w", n=1, now=T0)
    ledger.complete_page(job_id, page.page_no, "w", text="kestrel", search_text="kestrel", now=T0)
    assert _hits(ledger, "kestrel") == [(job_id, 1)]
    assert ledger.search("queued") == []


def test_options_are_kept_with_the_job(ledger: Ledger) -> None:
    chosen = JobOptions(mode="small", prompt="<image>\nFree OCR.", formats=("md", "pdf"))
    job_id = add(ledger, "up", 1, options=chosen.to_text())
    assert ledger.job(job_id).chosen == chosen
    assert ledger.claim_pages("w", n=1, now=T0)[0].chosen == chosen
    assert ledger.job(add(ledger, "plain", 1)).chosen == JobOptions()


def test_a_v4_ledger_is_indexed_by_whoever_cleans_its_pages(db_url: str, db: Db) -> None:
    Ledger(db_url, migrations=MIGRATIONS[:4]).close()      # a ledger from before search
    stamp = "2025-03-01T12:00:00.000000Z"
    for n, words in enumerate(PAGES, start=1):              # done pages, as v4 wrote them
        db.raw("INSERT INTO jobs (id, inbox, source_path, state, pages_total, pages_done, attempts, "
               "priority, created_at, updated_at) VALUES (?, '/in', ?, 'done', 1, 1, 1, 0, ?, ?)",
               (n, f"/in/{n}.pdf", stamp, stamp))
        db.raw("INSERT INTO pages (job_id, page_no, state, attempts, priority, finished_at, text) "
               "VALUES (?, 1, 'done', 1, 0, ?, ?)", (n, stamp, f"<|ref|>text<|/ref|>{words}"))
    with Ledger(db_url) as ledger:
        assert ledger.search("harbour") == [] and ledger.count_unindexed() == 3
        backlog = ledger.unindexed_pages(limit=2)
        assert [t for _, t in backlog] == [f"<|ref|>text<|/ref|>{w}" for w in PAGES[:2]]
        rest = ledger.unindexed_pages(after_id=backlog[-1][0])
        assert len(rest) == 1
        ledger.set_search_texts([(i, t.removeprefix("<|ref|>text<|/ref|>")) for i, t in backlog + rest])
        ledger.set_search_texts([(backlog[0][0], "indexed meanwhile elsewhere")])   # left alone
        assert ledger.count_unindexed() == 0 and ledger.unindexed_pages() == []
        assert _hits(ledger, "harbour") == [(2, 1)]
        assert _hits(ledger, "quarterly") == [(1, 1)] and _hits(ledger, "ref") == []
        assert _hits(ledger, "meanwhile") == []


def test_fts5_translation_quotes_every_term() -> None:
    assert fts5_query("a b OR c") == '(("a" AND "b")) OR (("c"))'
    assert fts5_query('-x "y z"') == '(("y z") NOT "x")'
    assert fts5_query('NEAR(a b) AND "q""') == '(("NEAR(a" AND "b)" AND "AND" AND "q"))'
    assert fts5_query("-only -negated") is None


def test_old_and_new_matches_are_found_past_the_newest_pages(ledger: Ledger, db: Db) -> None:
    """More pages than PostgreSQL walks one by one (search.WALK_PAGES): matches older than the
    walk come from the index, and a word on every page is found among the newest at once."""
    from ocrd.ledger.search import WALK_PAGES
    total = WALK_PAGES + 500
    job_id = add(ledger, "archive", total)
    db.raw("UPDATE pages SET state = 'done', search_text = 'common words ' || "
           "CASE WHEN page_no IN (3, 7, ?) THEN 'needle' ELSE 'hay' END WHERE job_id = ?",
           (total - 2, job_id))
    assert _hits(ledger, "needle") == [(job_id, 3), (job_id, 7), (job_id, total - 2)]
    assert _hits(ledger, "needle common") == _hits(ledger, "needle")
    assert [p for _, p in _hits(ledger, "common")] == list(range(total - 19, total + 1))
    assert _hits(ledger, "needle -common") == [] and _hits(ledger, "straw") == []
    assert [p for _, p in _hits(ledger, "needle OR hay")] == list(range(total - 19, total + 1))
