"""Input files -> page count and one RGB page image at a time.

Types are sniffed from magic bytes, never from the extension. Every problem with the file itself is
an InputError with a one-line reason (it ends in failed/ with that reason, DESIGN.md).
PDFs are opened from the path, so pdfium reads pages on demand instead of the whole document.
"""

from __future__ import annotations

import contextlib
import re
import threading
import warnings
from pathlib import Path
from typing import Iterator

from PIL import Image, ImageOps

from .errors import InputError, first_line

UNSUPPORTED = "unsupported file type"   # the reason a file of no known type fails with (the API: 415)
MAX_SIDE = 4096        # px; the model works at <= 1280 px, so more only costs memory
# Modes Pillow reduces and resizes with a real filter (1 and P only by nearest neighbour).
_SCALABLE = ("L", "LA", "RGB", "RGBA", "RGBX", "CMYK")
_FPDF_ERR_PASSWORD = 4
_PDFIUM = threading.Lock()   # pdfium is not thread-safe, not even across documents
_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"\xff\xd8\xff", "jpeg"),
    (b"II*\x00", "tiff"), (b"MM\x00*", "tiff"), (b"II+\x00", "tiff"), (b"MM\x00+", "tiff"),
    (b"GIF87a", "gif"), (b"GIF89a", "gif"),
    (b"BM", "bmp"),
)


def sniff_type(path: Path) -> str:
    """'pdf', 'png', 'jpeg', 'tiff', 'webp', 'bmp' or 'gif' by magic bytes; InputError otherwise."""
    try:
        with open(path, "rb") as f:
            head = f.read(1024)
    except OSError as exc:
        raise InputError(f"cannot read file: {exc.strerror}") from None
    if not head:
        raise InputError("empty file")
    if b"%PDF-" in head:       # the spec lets junk precede the header within the first 1024 bytes
        return "pdf"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            return kind
    raise InputError(UNSUPPORTED)


def page_count(path: Path) -> int:
    """Pages in the file: every PDF page, every TIFF frame, one for other images (GIF: first frame)."""
    kind = sniff_type(path)
    if kind == "pdf":
        with _pdf(path) as pdf:
            n = len(pdf)
        if n < 1:
            raise InputError("PDF has no pages")
        return n
    with _image(path) as im:
        if kind == "tiff":
            return _tiff_frames(im)
        _check_decodes(im, path)
        return 1


def render_page(path: Path, page_no: int, dpi: int = 144) -> Image.Image:
    """Page `page_no` (1-based) as an RGB image, its longest side at most MAX_SIDE."""
    kind = sniff_type(path)
    if kind == "pdf":
        return _render_pdf_page(path, page_no, dpi)
    with _image(path) as im:
        if kind == "tiff":
            _seek(im, page_no)
        elif page_no != 1:
            raise InputError(f"page {page_no} does not exist: a {kind} image has one page")
        try:
            if kind == "jpeg":
                # Let libjpeg decode at 1/2..1/8 scale when the page is far above the cap.
                im.draft("RGB", (MAX_SIDE, MAX_SIDE))
            im.load()
            out = ImageOps.exif_transpose(im)
            if out.mode == "1":
                out = out.convert("L")
            if out.mode in _SCALABLE:
                out = _cap_size(out)   # shrink first: the conversions then touch far fewer pixels
            out = _to_rgb(out)
        except InputError:
            raise
        except (OSError, ValueError, SyntaxError, EOFError) as exc:
            raise InputError(f"corrupt image: {first_line(exc)}") from None
    return _cap_size(out)


def _render_pdf_page(path: Path, page_no: int, dpi: int) -> Image.Image:
    with _pdf(path) as pdf:
        if not 1 <= page_no <= len(pdf):
            raise InputError(f"page {page_no} does not exist: the PDF has {len(pdf)} pages")
        page = pdf[page_no - 1]
        try:
            width, height = page.get_size()          # points (1/72 in), rotation already applied
            scale = dpi / 72
            longest = max(width, height) * scale
            if longest > MAX_SIDE:
                scale *= MAX_SIDE / longest
            bitmap = page.render(scale=scale, fill_color=(255, 255, 255, 255))
            try:
                image = bitmap.to_pil().convert("RGB")
            finally:
                bitmap.close()
        except Exception as exc:
            raise InputError(f"corrupt PDF: page {page_no} cannot be rendered: {first_line(exc)}") from None
        finally:
            page.close()
    return image


@contextlib.contextmanager
def _pdf(path: Path) -> Iterator:
    """The open PDF, held by this thread alone until the block ends."""
    with _PDFIUM:
        yield from _open_pdf(path)


def _open_pdf(path: Path) -> Iterator:
    import pypdfium2 as pdfium

    try:
        pdf = pdfium.PdfDocument(str(path))
    except pdfium.PdfiumError as exc:
        # pdfium's error code is process-global and can be stale (a zero-page file fails without
        # setting it), so a password error counts only if the file has an /Encrypt entry.
        if getattr(exc, "err_code", None) == _FPDF_ERR_PASSWORD and _mentions_encrypt(path):
            raise InputError("PDF is password-protected") from None
        if _has_no_pages(path):        # pdfium refuses a zero-page document outright
            raise InputError("PDF has no pages") from None
        reason = first_line(exc).replace(" (PDFium: Success)", "")   # a stale "no error" code says nothing
        raise InputError(f"corrupt PDF: {reason}") from None
    try:
        yield pdf
    finally:
        pdf.close()


@contextlib.contextmanager
def _image(path: Path) -> Iterator[Image.Image]:
    try:
        with warnings.catch_warnings():
            # Pillow warns above MAX_IMAGE_PIXELS (89M) and refuses at twice that (179M): an A0
            # scan at 300 dpi (139M) is a real document, so only the hard limit refuses.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(path)
    except Image.DecompressionBombError as exc:
        raise InputError(f"image too large: {_pixels(exc)}") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise InputError(f"corrupt image: {first_line(exc)}") from None
    try:
        yield im
    finally:
        im.close()


def _mentions_encrypt(path: Path, chunk: int = 1 << 16) -> bool:
    # The trailer (or a linearized file's first-page trailer) sits at one end of the file.
    with open(path, "rb") as f:
        head = f.read(chunk)
        f.seek(0, 2)
        f.seek(max(0, f.tell() - chunk))
        return b"/Encrypt" in head or b"/Encrypt" in f.read()


def _has_no_pages(path: Path, limit: int = 1 << 20) -> bool:
    """A small PDF whose page tree says `/Count 0` and that has no page object."""
    with open(path, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        return False
    return (re.search(rb"/Count\s*0(?![0-9.])", data) is not None
            and re.search(rb"/Type\s*/Page(?![A-Za-z])", data) is None)


def _pixels(exc: Exception) -> str:
    text = str(exc)
    start = text.find("Image size (")
    if start >= 0:
        return f'{text[start + len("Image size ("):].split(")")[0]} (the limit is {2 * Image.MAX_IMAGE_PIXELS})'
    return f"more than {2 * Image.MAX_IMAGE_PIXELS} pixels"


def _tiff_frames(im: Image.Image) -> int:
    try:
        n = getattr(im, "n_frames", 1)
        im.seek(n - 1)          # walks every IFD: a broken chain fails here, not mid-document
        im.seek(0)
    except (OSError, ValueError, EOFError, SyntaxError) as exc:
        raise InputError(f"corrupt image: {first_line(exc)}") from None
    return n


def _seek(im: Image.Image, page_no: int) -> None:
    n = getattr(im, "n_frames", 1)
    if not 1 <= page_no <= n:
        raise InputError(f"page {page_no} does not exist: the TIFF has {n} frames")
    try:
        im.seek(page_no - 1)
    except (OSError, ValueError, EOFError, SyntaxError) as exc:
        raise InputError(f"corrupt image: {first_line(exc)}") from None


def _check_decodes(im: Image.Image, path: Path) -> None:
    """Decode once (cheaply for JPEG) so a truncated file fails at ingest, not on a worker. A PNG
    whose every chunk is whole and matches its checksum is taken without decoding (0.1 ms, not
    50 ms a page: ingest keeps ahead of a GPU); one that isn't is decoded to decide."""
    if im.format == "PNG":
        with contextlib.suppress(Exception), _image(path) as probe:
            probe.verify()
            return
    try:
        if im.format == "JPEG":
            im.draft("L", (256, 256))
        im.load()
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise InputError(f"corrupt image: {first_line(exc)}") from None


def _to_rgb(im: Image.Image) -> Image.Image:
    """RGB on a white background, whatever the mode (P, LA, RGBA, CMYK, 1, I;16, I, F)."""
    if im.mode == "RGB":
        return im
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    if im.mode in ("I", "F") or im.mode.startswith("I;16"):
        im = _high_depth_to_l(im)
    if im.mode in ("RGBA", "LA", "RGBa", "La", "PA"):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im.convert("RGB")


def _high_depth_to_l(im: Image.Image) -> Image.Image:
    # Pillow's convert("L") clips 16-bit values at 255 (a near-white page): scale instead.
    im = im.convert("F")
    low, high = im.getextrema()
    top = 65535.0 if 255 < high <= 65535 else (high if high > 255 else 255.0)
    bottom = min(low, 0.0)
    k = 255.0 / (top - bottom)
    return im.point(lambda v: v * k - bottom * k).convert("L")   # point() on F takes only v*a+b


def _cap_size(im: Image.Image) -> Image.Image:
    longest = max(im.size)
    if longest <= MAX_SIDE:
        return im
    factor = longest // MAX_SIDE
    if factor >= 2:
        im = im.reduce(factor)      # a cheap integer box reduction first, then the exact resize
    scale = MAX_SIDE / max(im.size)
    if scale < 1:
        im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))),
                       Image.Resampling.LANCZOS)
    return im
