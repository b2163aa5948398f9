"""The search index's daemon side: what a page's words are, and the pages done before there was
an index (ledger v5), indexed at start.

The ledger indexes `pages.search_text` and knows no markup; the text a page is stored with may
hold DeepSeek-OCR's grounding tags (`<|ref|>title<|/ref|><|det|>[[..]]<|/det|>`) and markdown.
Their labels, box numbers and `**` must not be found by a search nor show in its snippets, so
the words are the page's markdown as the outbox has it (blocks.parse_grounding), made plain
(blocks.plain_text): the same rule for a worker storing a page and for the backlog.
"""

from __future__ import annotations

import structlog

from ocrd.ledger import Ledger

from .output.blocks import parse_grounding, plain_text

log = structlog.get_logger()

BACKLOG_BATCH = 500            # pages cleaned and indexed per supervisor tick (~50 ms)
_ANY_SIZE = (1000, 1000)       # parse_grounding needs a page size only for boxes, not for text


def search_text(raw: str) -> str:
    """A page's words as the search index holds them: its text clean of grounding and markup."""
    return plain_text(parse_grounding(raw, *_ANY_SIZE)[1])


def index_backlog(ledger: Ledger, after_id: int = 0, batch: int = BACKLOG_BATCH) -> int | None:
    """Index one batch of done pages that have no search text (done before ledger v5), in page id
    order after `after_id`; the id to go on after, or None once there are none left."""
    pages = ledger.unindexed_pages(after_id, batch)
    if not pages:
        return None
    ledger.set_search_texts([(page_id, search_text(raw)) for page_id, raw in pages])
    log.info("search_backlog_indexed", pages=len(pages), up_to_page_id=pages[-1][0])
    return pages[-1][0]
