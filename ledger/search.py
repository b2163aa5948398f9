"""Full-text search over done pages (`ocrd search`, the API's /v1/search), and the pages done
before the index existed (a mixin of `Ledger`, which provides `_read`/`_write` and `_sqlite`).

What is searched is `pages.search_text`: the words of a done page as its worker stored them, clean
of markup (the daemon cleans; the ledger knows no markup). Its index is each engine's own
(schema.SEARCH_DDL): FTS5 on SQLite, GIN-indexed tsvectors in a side table on PostgreSQL.

One query language on both: PostgreSQL's `websearch_to_tsquery`, which SQLite gets translated
into FTS5's syntax (`fts5_query`): words (a page must hold all of them), "a phrase" (its words in
order), -word (a page must not hold it: it only narrows the other words), and OR between
alternatives (`invoice march OR april` is invoice-and-march, or april). Hits are the newest pages
that match (by page id: the document ingested last first), shown document by document, each's
pages in order. Both engines walk their index newest first and stop at the limit, so a word on
every page costs about what a rare one costs (bench/search.py: PostgreSQL needs two steps for it,
see _pg_page_ids); no relevance rank is computed, which would score every match.
"""

from __future__ import annotations

import re
from typing import Any, Callable

from sqlalchemy import Connection, bindparam, func, select, text, update

from .schema import FTS_TABLE, PG_SEARCH_TABLE, pages
from .states import PageState

MARK = "**"                      # around each matched word in a snippet (markdown's bold)
SNIPPET_WORDS = 16               # about this many words of context per hit
_TERM = re.compile(r'(-?)(?:"([^"]*)"?|(\S+))')
_WORDLIKE = re.compile(r"\w")

WALK_PAGES = 1000                # PostgreSQL: the newest pages checked one by one (see _pg_page_ids)
_HIT_COLUMNS = ("p.job_id, p.page_no, p.finished_at, j.pages_total, j.state, j.inbox, "
                "j.source_path, j.output_path")
_SQLITE = text(f"""
    WITH hits AS (
        SELECT rowid AS id, snippet({FTS_TABLE}, 0, :mark, :mark, '…', :words) AS snippet
        FROM {FTS_TABLE} WHERE {FTS_TABLE} MATCH :query ORDER BY rowid DESC LIMIT :limit)
    SELECT {_HIT_COLUMNS}, hits.snippet
    FROM hits JOIN pages p ON p.id = hits.id JOIN jobs j ON j.id = p.job_id
    ORDER BY p.job_id DESC, p.page_no""")
_PG_MATCH = "s.search_vector @@ websearch_to_tsquery('simple', :query)"
_PG_NEWEST = text(f"""SELECT s.page_id FROM {PG_SEARCH_TABLE} s WHERE s.page_id > :floor AND {_PG_MATCH}
                      ORDER BY s.page_id DESC LIMIT :limit""")
_PG_OLDER = text(f"""SELECT s.page_id FROM {PG_SEARCH_TABLE} s WHERE s.page_id <= :floor AND {_PG_MATCH}
                     ORDER BY s.page_id DESC LIMIT :limit""")
_PG_ROWS = text(f"""
    SELECT {_HIT_COLUMNS},
           ts_headline('simple', p.search_text, websearch_to_tsquery('simple', :query), :options) AS snippet
    FROM pages p JOIN jobs j ON j.id = p.job_id WHERE p.id = ANY(:ids)
    ORDER BY p.job_id DESC, p.page_no""")


def fts5_query(query: str) -> str | None:
    """websearch_to_tsquery's language in FTS5's syntax; None when nothing is left to look for
    (no word, or only -words). Every term becomes an FTS5 string, so no input is FTS5 syntax."""
    groups: list[tuple[list[str], list[str]]] = [([], [])]
    for negated, phrase, word in _TERM.findall(query):
        term = phrase if phrase or word == "" else word
        if not negated and not phrase and term.lower() == "or":
            groups.append(([], []))
            continue
        if _WORDLIKE.search(term):     # punctuation alone holds no token (PostgreSQL drops it too)
            groups[-1][1 if negated else 0].append('"' + term.replace('"', '""') + '"')
    exprs = []
    for wanted, unwanted in groups:
        if wanted:
            exprs.append("(" + " AND ".join(wanted) + ")" + "".join(f" NOT {u}" for u in unwanted))
    return " OR ".join(f"({e})" for e in exprs) or None


def _pg_page_ids(conn: Connection, query: str, limit: int) -> list[int]:
    """The ids of the newest `limit` pages that match, on PostgreSQL. A GIN index returns matches
    in no order, so the newest-first top is found in two steps, each with the plan it needs
    (the planner can't tell: its estimate for a word it has no statistics of is far off, and a
    walk down the ids for a word on no page reads every page): first the newest WALK_PAGES pages
    one by one down the primary key (a word on many pages has its `limit` there, at once), then,
    for what is missing, every older match from the GIN index, sorted (few, or the word would
    have filled the first step). Phrases are checked on each page's tsvector (GIN keeps no
    positions): a phrase of common words that is itself rare is the slow case."""
    top = conn.execute(text(f"SELECT max(page_id) FROM {PG_SEARCH_TABLE}")).scalar()
    if top is None:
        return []
    floor = top - WALK_PAGES
    _plan(conn, seqscan=False, bitmapscan=False, indexscan=True)
    ids = list(conn.execute(_PG_NEWEST, {"floor": floor, "query": query, "limit": limit}).scalars())
    if len(ids) < limit:
        _plan(conn, seqscan=False, bitmapscan=True, indexscan=False)
        ids += conn.execute(_PG_OLDER, {"floor": floor, "query": query,
                                        "limit": limit - len(ids)}).scalars()
    _plan(conn, seqscan=True, bitmapscan=True, indexscan=True)
    return ids


def _plan(conn: Connection, **allowed: bool) -> None:
    """Allow or forbid kinds of scan for the rest of this transaction only (SET LOCAL)."""
    for kind, on in allowed.items():
        conn.execute(select(func.set_config(f"enable_{kind}", "on" if on else "off", True)))


class Search:
    """The Ledger's full-text search (a mixin of `Ledger`)."""

    _read: Callable[[Callable[[Connection], Any]], Any]
    _write: Callable[[Callable[[Connection], Any]], Any]
    _sqlite: bool

    def search(self, query: str, limit: int = 20) -> list[dict[str, Any]]:
        """The newest `limit` done pages that match `query` (see the module's doc), by document:
        each with job_id, page_no, finished_at, the job's pages_total, state, inbox, source_path
        and output_path, and a snippet of the page with the matched words in MARK."""
        if self._sqlite:
            expr = fts5_query(query)
            if expr is None:
                return []
            stmt = _SQLITE.bindparams(query=expr, limit=limit, mark=MARK, words=SNIPPET_WORDS)
            return self._read(lambda conn: [dict(r._mapping) for r in conn.execute(stmt)])
        options = (f'StartSel="{MARK}", StopSel="{MARK}", MaxFragments=1, '
                   f'MaxWords={SNIPPET_WORDS}, MinWords={SNIPPET_WORDS // 2}, FragmentDelimiter=" … "')

        def tx(conn: Connection) -> list[dict[str, Any]]:
            ids = _pg_page_ids(conn, query, limit)
            return [dict(r._mapping) for r in conn.execute(
                _PG_ROWS, {"ids": ids, "query": query, "options": options})] if ids else []

        return self._read(tx)

    # -- pages done before the index (v5) -------------------------------------------------------
    def unindexed_pages(self, after_id: int = 0, limit: int = 500) -> list[tuple[int, str]]:
        """(page id, raw text) of done pages with no search text yet, in id order after
        `after_id`: pages done before v5, which the daemon cleans and indexes at start."""
        query = (select(pages.c.id, pages.c.text)
                 .where(pages.c.id > after_id, pages.c.state == PageState.DONE,
                        pages.c.search_text.is_(None))
                 .order_by(pages.c.id).limit(limit))
        return self._read(lambda conn: [(r.id, r.text or "") for r in conn.execute(query)])

    def count_unindexed(self) -> int:
        """Done pages not in the search index yet (what `ocrd search` warns about)."""
        query = select(func.count()).where(pages.c.state == PageState.DONE,
                                           pages.c.search_text.is_(None))
        return self._read(lambda conn: conn.execute(query).scalar_one())

    def set_search_texts(self, texts: list[tuple[int, str]]) -> None:
        """Index done pages: (page id, clean search text) each; a page indexed meanwhile (by
        another host's daemon) is left as it is."""
        if not texts:
            return
        stmt = (update(pages).where(pages.c.id == bindparam("page_id"), pages.c.search_text.is_(None))
                .values(search_text=bindparam("words")))
        self._write(lambda conn: conn.execute(stmt, [{"page_id": i, "words": t} for i, t in texts]))
