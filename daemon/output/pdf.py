"""The searchable PDF: the original pages, untouched, with an invisible text layer under each.

OCRmyPDF's design, built from the libraries it builds on: the layer is drawn with fpdf2 in text
render mode 3 (invisible) in a glyphless font, so any Unicode text is selectable and searchable
whatever fonts the reader has; each line's horizontal scaling (Tz) makes its text span its box.
Each layer page becomes a Form XObject drawn *before* the page's own content with pikepdf (the
page's content streams stay the same objects, byte for byte), placed by qpdf's form placement,
which undoes the page's /Rotate and box origin: the layer is laid out in the page as it is seen,
which is how pdfium rendered it for the engine.

Why not `ocrmypdf` itself: its pikepdf renderer (`hocrtransform.HocrTransform` and the
GlyphLessFont) is gone since 17.0; the fpdf2 renderer that replaced it is not part of its
documented API, wants word boxes in an hOCR-like tree, searches the system's fonts, and its
glyphless fallback (Occulta.ttf) covers the BMP only (an emoji is dropped). Depending on it
would also pull in pdfminer.six, pydantic, rich, cryptography and more for a few hundred lines.
Here the glyphless font is built per document with fontTools (fpdf2's own dependency), holding
exactly the characters the layer uses, in any Unicode plane.

Images become PDF pages through img2pdf (JPEG and PNG embedded as they are, no re-encoding;
TIFF frames one page each); what img2pdf refuses (alpha, WebP, BMP, GIF, mirrored EXIF) is
decoded by Pillow first, as the daemon's renderer does.
"""

from __future__ import annotations

import contextlib
import io
import re
import tempfile
import unicodedata
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import img2pdf
import pikepdf
from fontTools.fontBuilder import FontBuilder
from fontTools.pens.ttGlyphPen import TTGlyphPen
from fpdf import FPDF
from fpdf.enums import TextMode
from PIL import Image, ImageOps

from ..render import sniff_type
from .blocks import Block, plain_text

ADVANCE = 0.5            # em: the layer font's glyphs are this wide (a space SPACE), so Tz is
SPACE = 0.25             # plain arithmetic, and word gaps look like word gaps to extractors
ASCENT, DESCENT = 0.8, 0.2   # em: a line's box is its font size, baseline at 80 % down the box
LEADING = 1.2            # a block's lines are at most this x the size that fits its longest line
PAGE_LINES = 50          # a page's text without boxes is set as if the page held this many lines
DEFAULT_DPI = 300.0      # an image without a resolution: most likely a document scan
MAX_PAGE_PT = 14400.0    # 200 in: Acrobat's largest page; bigger images get a higher DPI
MIN_PT = 0.5             # boxes thinner than this hold no placeable text
_FAMILY = "ocrdglyphless"
_EXIF_ORIENTATION = 274
_RTL_TOKEN = re.compile(r"\d+(?:[.,:/]\d+)*|\D", re.S)   # a number stays as it reads; else a character
_Box = tuple[float, float, float, float]   # x0, y0, x1, y1; origin top left of the page as seen


@dataclass(frozen=True)
class PageLayer:
    """One page's text: its blocks, boxes in pixels of the image the engine saw, and that size."""
    blocks: list[Block]
    width: int
    height: int


def write_searchable_pdf(source: Path, pages: list[PageLayer], out: Path) -> None:
    """Write `out`: `source` (a PDF, or an image: one page per TIFF frame) with `pages[i]`'s text
    as an invisible layer on page i. A page without blocks gets no layer. Raises ValueError when
    the page counts differ, InputError for a file type ocrd doesn't read, pikepdf.PdfError for a
    PDF it can't read. Not atomic: the caller writes to a temporary name and renames."""
    with _open_source(source) as pdf:
        if len(pdf.pages) != len(pages):
            raise ValueError(f"{source.name} has {len(pdf.pages)} pages but {len(pages)} text layers")
        boxes = [_visible_box(page) for page in pdf.pages]
        sizes = [_seen_size(page, box) for page, box in zip(pdf.pages, boxes)]
        lines = [list(_layer_lines(layer, *size)) for layer, size in zip(pages, sizes)]
        with pikepdf.open(io.BytesIO(_render_layer(lines, sizes))) as layer:
            for page, layer_page, box, page_lines in zip(pdf.pages, layer.pages, boxes, lines):
                if page_lines:
                    _graft(pdf, page, layer_page, box)
            pdf.save(out)      # inside: pikepdf reads the copied layer streams while writing


@contextlib.contextmanager
def _open_source(source: Path) -> Iterator[pikepdf.Pdf]:
    kind = sniff_type(source)
    data = source if kind == "pdf" else io.BytesIO(_image_pdf(source, kind))
    with pikepdf.open(data) as pdf:
        yield pdf


def _visible_box(page: pikepdf.Page) -> pikepdf.Rectangle:
    """The crop box within the media box (inherited ones included): what pdfium renders."""
    media = pikepdf.Rectangle(page.mediabox)
    box = pikepdf.Rectangle(page.cropbox) & media
    return box if box.width > 0 and box.height > 0 else media


def _seen_size(page: pikepdf.Page, box: pikepdf.Rectangle) -> tuple[float, float]:
    """(width, height) in points of the page as displayed, after /Rotate."""
    if page.rotation % 180 == 90:
        return box.height, box.width
    return box.width, box.height


def _graft(pdf: pikepdf.Pdf, page: pikepdf.Page, layer_page: pikepdf.Page,
           box: pikepdf.Rectangle) -> None:
    """Draw `layer_page` under `page`'s content, upright in the page as seen. Prepending keeps the
    page's own content streams as they are (pikepdf's add_underlay would merge them into one)."""
    formx = pdf.copy_foreign(layer_page.as_form_xobject())
    name = page.add_resource(formx, pikepdf.Name.XObject, prefix="OcrdText")
    placement = page.calc_form_xobject_placement(formx, name, box)
    page.contents_add(placement, prepend=True)


# -- the text layer --------------------------------------------------------------------------------
def _layer_lines(layer: PageLayer, width: float, height: float) -> Iterator[tuple[str, _Box, int]]:
    """Each text line of the layer, its box in points of the page as seen and the angle its text
    runs at. A block's lines are spread in the engine's pixels, where text has its own
    proportions (a fax's pixels are not)."""
    if layer.width <= 0 or layer.height <= 0:
        return
    sx, sy = width / layer.width, height / layer.height
    for block in layer.blocks:
        x0, x1 = sorted(min(max(v, 0.0), layer.width) for v in (block.x0, block.x1))
        y0, y1 = sorted(min(max(v, 0.0), layer.height) for v in (block.y0, block.y1))
        if block.kind == "line":
            lines = [(_one_line(block.text), (x0, y0, x1, y1))]
        else:
            lines = _spread(plain_text(block.text).splitlines(), (x0, y0, x1, y1),
                            min_lines=PAGE_LINES if block.kind == "page" else 1)
        for text, (a, b, c, d) in lines:
            if text:
                yield _visual_order(text), (a * sx, b * sy, c * sx, d * sy), block.angle


def _spread(texts: list[str], box: _Box, min_lines: int = 1) -> list[tuple[str, _Box]]:
    """A block's lines over its box, top to bottom, each as wide as its share of the longest line.
    A line is no taller than LEADING x the size that fits the longest one across the box, and
    than the box shared by `min_lines`: three lines of a page without boxes stay line-sized at the
    top instead of growing to a third of the page each."""
    lines = [t for t in map(_one_line, texts) if t]
    x0, y0, x1, y1 = box
    if not lines or x1 <= x0 or y1 <= y0:
        return []
    longest = max(_ems(t) for t in lines)
    pitch = min((y1 - y0) / max(len(lines), min_lines), LEADING * (x1 - x0) / longest)
    return [(text, (x0, y0 + i * pitch, x0 + (x1 - x0) * _ems(text) / longest, y0 + (i + 1) * pitch))
            for i, text in enumerate(lines)]


def _ems(text: str) -> float:
    """`text`'s width in the layer font, in em."""
    spaces = text.count(" ")
    return ADVANCE * (len(text) - spaces) + SPACE * spaces


def _one_line(text: str) -> str:
    """Whitespace folded to single spaces; control characters and lone surrogates out."""
    text = " ".join(text.split())
    return "".join(c for c in text if unicodedata.category(c) not in ("Cc", "Cs"))


def _visual_order(text: str) -> str:
    """A right-to-left line (Hebrew, Arabic: no left-to-right letter in it) in the order it is
    seen, numbers kept as they read. The layer places characters left to right, and pdfium,
    poppler and Acrobat read them back through the bidi algorithm, which reverses such a line
    (OCRmyPDF does the same). Lines that mix both directions stay in logical order: each reader
    reorders those its own way."""
    classes = {unicodedata.bidirectional(c) for c in text}
    if not classes & {"R", "AL"} or "L" in classes:
        return text
    return "".join(reversed(_RTL_TOKEN.findall(text)))


def _render_layer(pages: list[list[tuple[str, _Box, int]]], sizes: list[tuple[float, float]]) -> bytes:
    """A PDF of the text layers, one page per source page (an empty one where there is no text)."""
    chars = {c for lines in pages for text, _, _ in lines for c in text} | {" "}
    with tempfile.TemporaryDirectory(prefix="ocrd-layer-") as tmp:
        font = Path(tmp) / "glyphless.ttf"      # fpdf2 takes fonts by file name only
        font.write_bytes(_glyphless_font(chars))
        pdf = FPDF(unit="pt")
        pdf.set_auto_page_break(False)
        pdf.add_font(_FAMILY, fname=font)
        pdf.text_mode = TextMode.INVISIBLE
        for lines, size in zip(pages, sizes):
            pdf.add_page(format=size)
            for text, box, angle in lines:
                _place(pdf, text, box, angle)
        return bytes(pdf.output())


def _place(pdf: FPDF, text: str, box: _Box, angle: int = 0) -> None:
    """`text` across `box`: font size = box height, Tz so that it spans the box width. A trailing
    space keeps extractors from joining it to the next line (CJK text takes none). Text set at an
    angle (a page on its side: 90, 270; upside down: 180) is set upright about the box's centre,
    then turned."""
    x0, y0, x1, y1 = box
    if angle:
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        along, across = (y1 - y0, x1 - x0) if angle % 180 else (x1 - x0, y1 - y0)   # length, size
        with pdf.rotation(angle, x=cx, y=cy):
            _place(pdf, text, (cx - along / 2, cy - across / 2, cx + along / 2, cy + across / 2))
        return
    size, width = y1 - y0, x1 - x0
    if size < MIN_PT or width < MIN_PT:
        return
    pdf.set_font(_FAMILY, size=size)
    pdf.set_stretching(max(100 * width / (size * _ems(text)), 1.0))
    tail = "" if unicodedata.east_asian_width(text[-1]) in "WF" else " "
    pdf.text(x0, y1 - DESCENT * size, text + tail)


def _glyphless_font(chars: set[str]) -> bytes:
    """A TrueType font whose every character is an all but empty glyph ADVANCE em wide (a space:
    SPACE): nothing to see, but readers get a width per character and a ToUnicode map (fpdf2
    writes it). The glyph is one line of no area across its box, corner to corner (nothing to
    fill, and never painted: render mode 3): pdfium skips empty glyphs in text set at an angle (a
    page on its side), and takes a character's box from its glyph's."""
    units = 1000
    builder = FontBuilder(units, isTTF=True)
    builder.setupGlyphOrder([".notdef", "blank", "space"])
    builder.setupCharacterMap({ord(c): "space" if c == " " else "blank" for c in chars})
    advance, space = int(ADVANCE * units), int(SPACE * units)
    ascent, descent = int(ASCENT * units), int(DESCENT * units)
    empty, pen = TTGlyphPen(None).glyph(), TTGlyphPen(None)
    pen.moveTo((0, -descent))
    pen.lineTo((advance, ascent))
    pen.closePath()
    builder.setupGlyf({".notdef": empty, "blank": pen.glyph(), "space": empty})
    builder.setupHorizontalMetrics({".notdef": (advance, 0), "blank": (advance, 0),
                                    "space": (space, 0)})
    builder.setupHorizontalHeader(ascent=ascent, descent=-descent)
    builder.setupNameTable({"familyName": _FAMILY, "styleName": "Regular"})
    builder.setupOS2(sTypoAscender=ascent, sTypoDescender=-descent, usWinAscent=ascent,
                     usWinDescent=descent)
    builder.setupPost()
    out = io.BytesIO()
    builder.save(out)
    return out.getvalue()


# -- images -> PDF pages ---------------------------------------------------------------------------
def _image_pdf(source: Path, kind: str) -> bytes:
    """The image as a PDF, one page per TIFF frame (the first frame of anything else), each page
    at the image's own resolution, or DEFAULT_DPI where it has none (see `_image_dpi`)."""
    with warnings.catch_warnings():
        # Pillow warns above 89M pixels; an A0 scan at 300 dpi is a real document (render.py).
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return _convert_image(source, kind)


def _convert_image(source: Path, kind: str) -> bytes:
    with Image.open(source) as im:
        dpi = _image_dpi(im)
        mirrored = im.getexif().get(_EXIF_ORIENTATION) in (2, 4, 5, 7)
    layout = _layout(dpi)
    if kind in ("jpeg", "png", "tiff") and not mirrored:
        try:   # EXIF rotation becomes /Rotate: the page shows what the engine saw (exif_transpose)
            return img2pdf.convert(str(source), layout_fun=layout, first_frame_only=kind != "tiff",
                                   rotation=img2pdf.Rotation.ifvalid)
        except Exception:   # noqa: BLE001  (alpha, odd PNG/TIFF variants: Pillow decodes those)
            pass
    return img2pdf.convert(_decoded_frames(source, kind), layout_fun=layout,
                           rotation=img2pdf.Rotation.none)


def _image_dpi(im: Image.Image) -> tuple[float, float]:
    """The image's resolution where it states one (JFIF/EXIF, PNG pHYs, TIFF), else DEFAULT_DPI:
    ocrd reads documents, and a scan that lost its metadata was most likely scanned at 300 dpi.
    A camera's nominal 72 dpi is taken as stated: the page is large, viewers fit it to the window."""
    dpi = im.info.get("dpi")
    try:    # whole numbers: PNG stores dots per metre, and 150 dpi comes back as 150.0114
        x, y = float(round(dpi[0])), float(round(dpi[1]))
    except (TypeError, ValueError, IndexError, OverflowError):
        return DEFAULT_DPI, DEFAULT_DPI
    return (x, y) if x >= 10 and y >= 10 else (DEFAULT_DPI, DEFAULT_DPI)  # TIFF's unset is (1, 1)


def _layout(dpi: tuple[float, float]):
    """An img2pdf layout function: the page is the image at `dpi`, shrunk to fit MAX_PAGE_PT."""
    def layout(width_px: float, height_px: float, _ndpi: object) -> tuple[float, float, float, float]:
        width, height = width_px * 72 / dpi[0], height_px * 72 / dpi[1]
        shrink = min(1.0, MAX_PAGE_PT / max(width, height))
        return width * shrink, height * shrink, width * shrink, height * shrink
    return layout


def _decoded_frames(source: Path, kind: str) -> list[bytes]:
    """Each page's frame decoded by Pillow, upright and flattened onto white, as PNG (lossless)."""
    out = []
    with Image.open(source) as im:
        for n in range(getattr(im, "n_frames", 1) if kind == "tiff" else 1):
            im.seek(n)
            frame = _flatten(ImageOps.exif_transpose(im))
            buffer = io.BytesIO()
            frame.save(buffer, "PNG")
            out.append(buffer.getvalue())
    return out


def _flatten(im: Image.Image) -> Image.Image:
    """1, L and RGB as they are; transparency composited onto white; anything else RGB."""
    if im.mode in ("1", "L", "RGB"):
        return im
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info:
        rgba = im.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba).convert("RGB")
    return im.convert("RGB")
