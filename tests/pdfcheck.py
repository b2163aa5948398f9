"""Checks of a searchable PDF shared by the writer's tests and the daemon's: where pdfium finds
each word, whether it lies in its line's box, and qpdf's syntax check through pikepdf."""

from __future__ import annotations

import re
from pathlib import Path

import pikepdf
import pypdfium2 as pdfium
import pytest
from fpdf import FPDF
from PIL import Image

from ocrd.daemon.output.pdf import PageLayer

TOL = 2.0          # points: the engine's pixels rounded, and pdfium's boxes in float
Box = tuple[float, float, float, float]


def seen_to_user(box: Box, rotation: int, media: Box) -> Box:
    """A box in points of the page as displayed (origin top left) -> PDF user space (l, b, r, t)."""
    x0, y0, x1, y1 = box
    mx0, my0, mx1, my1 = media
    corners = []
    for u, v in ((x0, y0), (x1, y1)):
        corners.append({0: (mx0 + u, my1 - v), 90: (mx0 + v, my0 + u),
                        180: (mx1 - u, my0 + v), 270: (mx1 - v, my1 - u)}[rotation])
    (a, b), (c, d) = corners
    return min(a, c), min(b, d), max(a, c), max(b, d)


def word_box(textpage: pdfium.PdfTextPage, word: str) -> Box:
    """The union of the loose character boxes of `word`'s first occurrence (PDF user space)."""
    match = textpage.search(word, match_case=True, match_whole_word=True).get_next()
    assert match is not None, f"{word!r} not found in {textpage.get_text_range()!r}"
    return union([textpage.get_charbox(i, loose=True) for i in range(match[0], match[0] + match[1])])


def assert_inside(inner: Box, outer: Box, what: str) -> None:
    assert (inner[0] >= outer[0] - TOL and inner[1] >= outer[1] - TOL and inner[2] <= outer[2] + TOL
            and inner[3] <= outer[3] + TOL), f"{what}: {inner} not inside {outer}"


def union(boxes: list[Box]) -> Box:
    return (min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes),
            max(b[3] for b in boxes))


def assert_words_in_boxes(page: pdfium.PdfPage, layer: PageLayer, rotation: int = 0, *,
                          unique_only: bool = False) -> int:
    """Every word of every line lies inside its line's box, scaled to points of the page, and the
    line's words together fill that box (its text spans the box). `unique_only` (a real page
    repeats "the"): only the words found once on the page, each inside its line's box. Returns
    the words checked."""
    width, height = page.get_size()                  # as displayed
    sx, sy = width / layer.width, height / layer.height
    media = (0.0, 0.0, *((height, width) if rotation % 180 else (width, height)))
    textpage, checked = page.get_textpage(), 0
    tokens = re.findall(r"\w+", textpage.get_text_range())
    for block in layer.blocks:
        box = seen_to_user((block.x0 * sx, block.y0 * sy, block.x1 * sx, block.y1 * sy), rotation,
                           media)
        line = block.text.split()
        if unique_only:   # whole words of letters that nothing else on the page contains
            line = [w for w in re.findall(r"[^\W\d_]{4,}", block.text) if tokens.count(w) == 1]
        found = [word_box(textpage, word) for word in line]
        for word, where in zip(line, found):
            assert_inside(where, box, word)
        if not unique_only:
            assert union(found) == pytest.approx(box, abs=TOL), block.text
        checked += len(found)
    return checked


def page_texts(path: Path) -> list[str]:
    with pdfium.PdfDocument(str(path)) as pdf:
        return [pdf[i].get_textpage().get_text_range() for i in range(len(pdf))]


def assert_valid(path: Path) -> None:
    with pikepdf.open(path) as pdf:
        assert pdf.check_pdf_syntax() == []


def vector_pdf(path: Path) -> Path:
    """Three pages of different sizes with Helvetica text (and a picture on page 1)."""
    pdf = FPDF(unit="pt")
    pdf.set_font("Helvetica", size=14)
    for n, size in enumerate([(612, 792), (842, 595), (420, 595)], 1):
        pdf.add_page(format=size)
        pdf.text(72, 90, f"Original vector text on page {n}")
        pdf.text(72, 120, "Second line, kept as it was.")
        if n == 1:
            pdf.image(Image.new("RGB", (64, 32), "red"), x=72, y=150, w=128)
    pdf.output(str(path))
    return path
