"""Synthetic scanned pages rendered from known text, with their ground truth (tests and
bench/accuracy.py). Deterministic: the same kind gives the same pixels on every run.

Kinds: clean pages in several fonts and sizes, a slightly rotated page, a noisy low-contrast scan,
two columns (also rotated 1-5 degrees), a table, and French prose with its accents. Pages are A4
at 144 dpi (the daemon's default PDF resolution).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter, ImageFont

FONTS = Path("/usr/share/fonts/truetype/dejavu")
PAGE = (1190, 1684)           # A4 at 144 dpi
MARGIN = 90

PARAGRAPHS = [
    "The quarterly report was filed on Monday morning, two days before the deadline. It lists "
    "every shipment that left the northern warehouse, the weight of each pallet, and the name of "
    "the driver who signed for it.",
    "Please return the signed contract to our office at 42 Harbour Street before the fifteenth of "
    "March. Questions about the invoice should go to the accounts department, not to the sales team.",
    "Rainfall in the valley was heavier than expected this spring, and the river rose above the old "
    "stone bridge for the first time in eleven years. The council has asked residents to report any "
    "damage to fences, roads or drains.",
    "A good index makes a long book useful. Readers rarely start on the first page; they look for a "
    "name, a date or a place, and they expect to find it within a minute.",
]

TABLE = [
    ["Item", "Quantity", "Price"],
    ["Copper wire", "120", "45.00"],
    ["Steel bolts", "800", "12.50"],
    ["Oak planks", "35", "310.00"],
    ["Glass panes", "14", "96.75"],
]


@dataclass(frozen=True)
class TextPage:
    kind: str
    image: Image.Image
    truth: str            # the words in reading order, lines as rendered


def font(name: str, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(FONTS / name), size)


def _wrap(text: str, face: ImageFont.FreeTypeFont, width: int) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        trial = f"{line} {word}".strip()
        if line and face.getlength(trial) > width:
            lines.append(line)
            line = word
        else:
            line = trial
    return lines + ([line] if line else [])


def _write(draw: ImageDraw.ImageDraw, paragraphs: list[str], face: ImageFont.FreeTypeFont,
           x: int, y: int, width: int) -> tuple[list[str], int]:
    """Paragraphs wrapped into `width` from (x, y); (the lines written, the y below them)."""
    step = int(face.size * 1.45)
    written: list[str] = []
    for paragraph in paragraphs:
        for line in _wrap(paragraph, face, width):
            draw.text((x, y), line, fill="black", font=face)
            written.append(line)
            y += step
        y += step   # a blank line between paragraphs
    return written, y


def prose_page(kind: str = "clean-serif-12pt", face_name: str = "DejaVuSerif.ttf",
               size: int = 24, title: str = "Annual Report of the Harbour Works") -> TextPage:
    """A title and four paragraphs in one column."""
    image = Image.new("L", PAGE, 255)
    draw = ImageDraw.Draw(image)
    heading = font(face_name.replace(".ttf", "-Bold.ttf"), int(size * 1.5))
    draw.text((MARGIN, MARGIN), title, fill="black", font=heading)
    lines, _ = _write(draw, PARAGRAPHS, font(face_name, size), MARGIN, MARGIN + int(size * 3.5),
                      PAGE[0] - 2 * MARGIN)
    return TextPage(kind, image.convert("RGB"), "\n".join([title, *lines]))


def two_column_page() -> TextPage:
    """A title over two columns: the left column's text comes first."""
    image = Image.new("L", PAGE, 255)
    draw = ImageDraw.Draw(image)
    title = "Notes from the Valley Council"
    draw.text((MARGIN, MARGIN), title, fill="black", font=font("DejaVuSerif-Bold.ttf", 34))
    face = font("DejaVuSerif.ttf", 22)
    column = (PAGE[0] - 2 * MARGIN - 60) // 2
    left, _ = _write(draw, PARAGRAPHS[:2], face, MARGIN, MARGIN + 90, column)
    right, _ = _write(draw, PARAGRAPHS[2:], face, MARGIN + column + 60, MARGIN + 90, column)
    return TextPage("two-columns", image.convert("RGB"), "\n".join([title, *left, *right]))


def table_page() -> TextPage:
    """A heading, a ruled-free table of five rows, and a closing line."""
    image = Image.new("L", PAGE, 255)
    draw = ImageDraw.Draw(image)
    face = font("DejaVuSans.ttf", 24)
    draw.text((MARGIN, MARGIN), "Order 1187 for the harbour workshop", fill="black", font=face)
    xs = [MARGIN, MARGIN + 420, MARGIN + 720]
    y = MARGIN + 90
    for row in TABLE:
        for x, cell in zip(xs, row):
            draw.text((x, y), cell, fill="black", font=face)
        y += 48
    draw.text((MARGIN, y + 50), "Delivery within ten working days.", fill="black", font=face)
    truth = ["Order 1187 for the harbour workshop", *(" ".join(r) for r in TABLE),
             "Delivery within ten working days."]
    return TextPage("table", image.convert("RGB"), "\n".join(truth))


def rotated_page(degrees: float = 2.0) -> TextPage:
    """A clean page scanned slightly askew."""
    page = prose_page()
    image = page.image.rotate(degrees, resample=Image.BICUBIC, expand=True, fillcolor="white")
    return TextPage(f"rotated-{degrees:g}deg", image, page.truth)


def rotated_columns_page(degrees: float = 3.0) -> TextPage:
    """The two-column page scanned askew: its gutter runs on a slant."""
    page = two_column_page()
    image = page.image.rotate(degrees, resample=Image.BICUBIC, expand=True, fillcolor="white")
    return TextPage(f"two-columns-{degrees:g}deg", image, page.truth)


FRENCH = ("Portez ce vieux whisky au juge blond qui fume sur son île intérieure, à côté de l'alcôve "
          "ovoïde, où les bûches se consument dans l'âtre, ce qui lui permet de penser à la "
          "cænogénèse de l'être dont il est question dans la cause ambiguë entendue à Moÿ, dans un "
          "capharnaüm qui, pense-t-il, diminue çà et là la qualité de son œuvre.")


def french_page() -> TextPage:
    """French prose with its accents (the pangram of OCRmyPDF's francais.pdf)."""
    image = Image.new("L", PAGE, 255)
    lines, _ = _write(ImageDraw.Draw(image), [FRENCH], font("DejaVuSans.ttf", 24), MARGIN, MARGIN,
                      PAGE[0] - 2 * MARGIN)
    return TextPage("french", image.convert("RGB"), "\n".join(lines))


def noisy_page(seed: int = 13) -> TextPage:
    """A grey, blurred, speckled, low-contrast scan of a clean page, a little askew."""
    page = prose_page()
    rng = random.Random(seed)
    grey = page.image.convert("L").rotate(0.7, resample=Image.BICUBIC, fillcolor=255)
    grey = grey.filter(ImageFilter.GaussianBlur(1.1)).point(lambda v: 70 + v * 150 // 255)
    pixels = grey.load()
    width, height = grey.size
    for _ in range(width * height // 40):
        x, y = rng.randrange(width), rng.randrange(height)
        pixels[x, y] = max(0, min(255, pixels[x, y] + rng.randint(-90, 90)))
    return TextPage("noisy-scan", grey.convert("RGB"), page.truth)


def all_pages() -> list[TextPage]:
    """Every kind, the clean ones first."""
    return [
        prose_page(),
        prose_page("clean-sans-12pt", "DejaVuSans.ttf", 24),
        prose_page("clean-sans-9pt", "DejaVuSans.ttf", 18),
        prose_page("clean-serif-18pt", "DejaVuSerif.ttf", 36),
        rotated_page(),
        noisy_page(),
        two_column_page(),
        table_page(),
        french_page(),
        *(rotated_columns_page(d) for d in (1, 2, 3, 4, 5)),
    ]
