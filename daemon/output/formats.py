"""The JSON and plain-text outputs of a document, from one record per page."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from .blocks import Block, plain_text, to_dicts

FORMAT = "ocrd-document"
VERSION = 1              # bump when a field changes meaning; readers check it


@dataclass(frozen=True)
class PageRecord:
    """One page as the writers need it (from the ledger's page row and its stored blocks)."""
    page_no: int                 # 1-based
    text: str                    # the page's markdown, in reading order
    blocks: list[Block] = field(default_factory=list)
    width: int = 0               # pixels of the image the engine saw; the blocks' boxes are in them
    height: int = 0
    engine: str = ""
    mode: str = ""
    finish_reason: str = ""      # "stop" | "length" | "repetition"
    prompt_tokens: int = 0
    generation_tokens: int = 0


def build_document(pages: list[PageRecord]) -> dict:
    """The JSON document as a dict: a format tag and version, then each page with its blocks
    (text, kind, label, box in pixels and as 0-1 fractions of the page)."""
    return {"format": FORMAT, "version": VERSION, "pages": [
        {"page": p.page_no, "width": p.width, "height": p.height, "engine": p.engine,
         "mode": p.mode, "finish_reason": p.finish_reason, "prompt_tokens": p.prompt_tokens,
         "generation_tokens": p.generation_tokens, "markdown": p.text,
         "blocks": to_dicts(p.blocks, p.width, p.height)}
        for p in pages]}


def to_json(pages: list[PageRecord]) -> str:
    """`build_document` as compact UTF-8 JSON (a 500-page document stays a few MB; `jq .` for
    reading)."""
    return json.dumps(build_document(pages), ensure_ascii=False, separators=(",", ":"))


def to_text(pages: list[PageRecord]) -> str:
    """Plain text in reading order, pages separated by a form feed. The page's markdown is the
    source, not its blocks: the engine (or the line layout) already put it in reading order, and
    it keeps text that came without a box; the blocks stand in only where it is empty."""
    texts = []
    for page in pages:
        source = page.text if page.text.strip() else "\n\n".join(b.text for b in page.blocks)
        texts.append(plain_text(source) + "\n")
    return "\f".join(texts)
