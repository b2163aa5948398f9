"""A finished document's files: one per format of its inbox ([output] formats), side by side.

`outbox/scans/a.pdf` becomes `a.md`, `a.pdf`, `a.json`, `a.txt` under one stem; a clash with
another document's files numbers the stem (`a (2)`) for every format at once. Each file is written
whole or not at all (temp + fsync + rename), so running the writers again after a crash rewrites
the same names: exactly one file per format. The finisher (outbox.py) and `ocrd export` share it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from ocrd.ledger import DonePage

from ..files import NAME_MAX, atomic_write_text, atomic_writer, fit_name, remove_stale_temps
from .blocks import Block, from_dicts, parse_grounding, whole_page
from .formats import PageRecord, to_json, to_text
from .pdf import PageLayer, write_searchable_pdf

UNKNOWN_SIZE = (1000, 1000)   # pages read before boxes were kept: a frame for the whole-page block


class FormatFailed(Exception):
    """A format could not be made from this document (its reason, one line): the document fails."""


@dataclass(frozen=True)
class Document:
    """What the writers need of a job: its pages, its original (None: gone), its mode."""
    pages: list[DonePage]
    original: Path | None
    mode: str = ""


def output_path(stem: Path, fmt: str) -> Path:
    """`stem` + `.fmt` (a stem may hold dots of its own: `scan.v2` -> `scan.v2.md`)."""
    return stem.with_name(f"{stem.name}.{fmt}")


def stem_of(path: Path) -> Path:
    """The stem of an output path recorded in the ledger (its one format suffix dropped)."""
    return path.with_name(path.name.rpartition(".")[0] or path.name)


def free_stem(base: Path, formats: tuple[str, ...]) -> Path:
    """`base` when no file of any format is there, else `base (2)`, `base (3)`, ...: one number for
    every format of the document (a name too long for the OS is shortened)."""
    longest = max(len(f) for f in formats) + 1
    name = fit_name(base.name, NAME_MAX - longest)
    for n in range(1, 1_000_000):
        tag = "" if n == 1 else f" ({n})"
        stem = base.with_name(fit_name(name, NAME_MAX - longest - len(tag)) + tag)
        if not any(os.path.lexists(output_path(stem, f)) for f in formats):
            return stem
    raise RuntimeError(f"no free output name for {base}")


def write_outputs(doc: Document, stem: Path, formats: tuple[str, ...]) -> list[Path]:
    """Write every format of `doc` beside `stem`; the paths written, in `formats` order. Raises
    FormatFailed when a format can't be made of this document, OSError when the disk refuses."""
    records = [_record(page, doc.mode) for page in doc.pages]
    written = []
    for fmt in formats:
        path = output_path(stem, fmt)
        remove_stale_temps(path)          # a kill -9 mid-write of this very file
        if fmt == "pdf":
            _write_pdf(doc, records, path)
        else:
            atomic_write_text(path, _TEXT_WRITERS[fmt](records))
        written.append(path)
    return written


def render_text(pages: list[DonePage], fmt: str, mode: str = "") -> str:
    """A text format (md, json, txt) of these pages exactly as its outbox file holds it
    (`ocrd show --text`)."""
    return _TEXT_WRITERS[fmt]([_record(page, mode) for page in pages])


def markdown(records: list[PageRecord]) -> str:
    """One markdown document; every page starts with a marker so pages stay findable."""
    total = len(records)
    return "\n".join(f"<!-- page {r.page_no} of {total} -->\n\n{r.text}\n" for r in records)


_TEXT_WRITERS = {"md": markdown, "json": to_json, "txt": to_text}


def _record(page: DonePage, mode: str) -> PageRecord:
    """A ledger page as the writers read it: its markdown (grounding tags and labels gone) and its
    blocks, stored ones or, for a page read before boxes were kept, parsed from its text."""
    width, height = (page.width, page.height) if page.width and page.height else UNKNOWN_SIZE
    parsed, text = parse_grounding(page.text, width, height)
    blocks = from_dicts(json.loads(page.blocks)) if page.blocks else parsed
    return PageRecord(page_no=page.page_no, text=text, blocks=blocks, width=width, height=height,
                      engine=page.engine or "", mode=mode, finish_reason=page.finish_reason or "",
                      prompt_tokens=page.prompt_tokens or 0,
                      generation_tokens=page.generation_tokens or 0)


def _write_pdf(doc: Document, records: list[PageRecord], path: Path) -> None:
    """The original's pages with an invisible text layer; a page with text but no boxes gets it
    as one block over the page (still searchable)."""
    if doc.original is None or not doc.original.exists():
        raise FormatFailed("cannot make the searchable PDF: the original is gone")
    layers = [PageLayer(r.blocks or _no_boxes(r), r.width, r.height) for r in records]
    try:
        with atomic_writer(path) as f:
            write_searchable_pdf(doc.original, layers, f)
    except OSError:
        raise
    except Exception as exc:   # a PDF pikepdf can't rewrite, a page count that changed: its reason
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise FormatFailed(f"cannot make the searchable PDF: {reason}") from exc


def _no_boxes(record: PageRecord) -> list[Block]:
    return whole_page(record.text, record.width, record.height) if record.text.strip() else []
