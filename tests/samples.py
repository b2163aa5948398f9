"""Real input files for tests, made with Pillow (importable as `samples`)."""

from __future__ import annotations

import os
import time
import zipfile
from pathlib import Path

from PIL import Image, ImageDraw


def page_image(n: int = 1, size: tuple[int, int] = (400, 300)) -> Image.Image:
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    draw.rectangle((20, 20, size[0] - 20, 60), outline="black", width=3)
    draw.text((30, 30), f"Page {n}: the quick brown fox", fill="black")
    for y in range(90, size[1] - 20, 24):
        draw.line((30, y, size[0] - 30 - (y * n) % 90, y), fill="black", width=2)
    return image


def write_pdf(path: Path, pages: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    images = [page_image(n) for n in range(1, pages + 1)]
    images[0].save(path, "PDF", resolution=72, save_all=True, append_images=images[1:])
    return path


def write_image(path: Path, fmt: str, frames: int = 1, n: int = 1) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    images = [page_image(n + i) for i in range(frames)]
    if fmt == "GIF":
        images = [im.convert("P") for im in images]
    if frames > 1:
        images[0].save(path, fmt, save_all=True, append_images=images[1:])
    else:
        images[0].save(path, fmt)
    return path


def rested(path: Path) -> Path:
    """Make a file look untouched for two minutes, longer than ingest's stall grace: a broken file
    whose writer is long gone fails at once, while a young one waits for its writer."""
    old = time.time() - 120
    os.utime(path, (old, old))
    return path


def write_corrupt_pdf(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"%PDF-1.7\n1 0 obj << /Type /Catalog >>\nthis is not a real pdf\n%%EOF\n")
    return rested(path)


def write_docx(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("[Content_Types].xml", "<Types/>")
        z.writestr("word/document.xml", "<w:document/>")
    return path


# --- real-world oddities (tests/e2e/test_real_world_files.py) ----------------------------------

def write_pdf_pages(path: Path, sizes: list[tuple[float, float]], rotate: dict[int, int] | None = None
                    ) -> Path:
    """A PDF whose pages have the given (width, height) in points; `rotate` maps a 0-based page
    index to its /Rotate (90, 180, 270). Blank pages: pdfium draws them at any size."""
    import pypdfium2 as pdfium

    path.parent.mkdir(parents=True, exist_ok=True)
    pdf = pdfium.PdfDocument.new()
    try:
        for i, (width, height) in enumerate(sizes):
            page = pdf.new_page(width, height)
            if rotate and i in rotate:
                page.set_rotation(rotate[i])
            page.close()
        pdf.save(str(path))
    finally:
        pdf.close()
    return path


def write_zero_page_pdf(path: Path) -> Path:
    """A well-formed PDF with an empty page tree (pdfium refuses to open it)."""
    return write_pdf_pages(path, [])


def write_encrypted_pdf(path: Path) -> Path:
    """A PDF with a standard-security /Encrypt dictionary and an unknown user password (written by
    hand: pypdfium2 cannot encrypt and qpdf may be missing)."""
    objs = [b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 200 200] >>",
            b"<< /Filter /Standard /V 1 /R 2 /O <" + b"ab" * 32 + b"> /U <" + b"cd" * 32 + b"> /P -4 >>"]
    body, offsets = bytearray(b"%PDF-1.4\n"), []
    for i, obj in enumerate(objs, 1):
        offsets.append(len(body))
        body += b"%d 0 obj\n" % i + obj + b"\nendobj\n"
    xref = len(body)
    body += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objs) + 1)
    body += b"".join(b"%010d 00000 n \n" % off for off in offsets)
    body += (b"trailer\n<< /Size %d /Root 1 0 R /Encrypt 4 0 R /ID [<%s> <%s>] >>\nstartxref\n%d\n%%%%EOF\n"
             % (len(objs) + 1, b"01" * 16, b"01" * 16, xref))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(body))
    return path


def write_truncated(path: Path, whole: bytes, keep: float = 0.5) -> Path:
    """The first `keep` fraction of `whole`: a download or copy cut short (long ago: see rested)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(whole[: int(len(whole) * keep)])
    return rested(path)


def write_mode_image(path: Path, fmt: str, mode: str, n: int = 1, **save: object) -> Path:
    """A page image converted to a Pillow `mode` ("RGBA", "P", "L", "1", "CMYK", "I;16") and saved
    with `save` options (progressive=True, lossless=True, transparency=0, exif=...)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = page_image(n)
    if mode == "RGBA":
        image = image.convert("RGBA")
        image.putalpha(160)
    elif mode == "P":
        image = image.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    elif mode == "I;16":
        gray = image.convert("L")
        image = Image.frombytes("I;16", gray.size, bytes(b for v in gray.tobytes() for b in (v, v)))
    elif mode != "RGB":
        image = image.convert(mode)
    image.save(path, fmt, **save)
    return path


def write_exif_rotated_jpeg(path: Path, n: int = 1) -> Path:
    """A landscape JPEG whose EXIF orientation (6) says: show it rotated 90 degrees."""
    exif = Image.Exif()
    exif[0x0112] = 6
    path.parent.mkdir(parents=True, exist_ok=True)
    page_image(n).save(path, "JPEG", exif=exif)
    return path


def write_mixed_tiff(path: Path, n: int = 1) -> Path:
    """Five LZW-compressed frames in five modes: 1-bit, gray, RGB, palette, CMYK."""
    frames = [page_image(n).convert("1"), page_image(n + 1).convert("L"), page_image(n + 2),
              page_image(n + 3).convert("P"), page_image(n + 4).convert("CMYK")]
    path.parent.mkdir(parents=True, exist_ok=True)
    frames[0].save(path, "TIFF", save_all=True, append_images=frames[1:], compression="tiff_lzw")
    return path


def write_tiff_with_bad_frame(path: Path, frames: int = 3, bad: int = 2) -> Path:
    """A multi-frame TIFF whose frame `bad` (1-based) has garbage image data: it counts fine at
    ingest and fails only when that page is rendered."""
    images = [page_image(i) for i in range(1, frames + 1)]
    path.parent.mkdir(parents=True, exist_ok=True)
    images[0].save(path, "TIFF", save_all=True, append_images=images[1:], compression="tiff_lzw")
    with Image.open(path) as im:
        im.seek(bad - 1)
        strips = list(zip(im.tag_v2[273], im.tag_v2[279]))   # StripOffsets, StripByteCounts
    data = bytearray(path.read_bytes())
    for offset, count in strips:
        data[offset:offset + count] = b"\xff" * count
    path.write_bytes(bytes(data))
    return path


def write_blank_png(path: Path, size: tuple[int, int], mode: str = "1") -> Path:
    """A huge but highly compressible PNG (1-bit white by default): small on disk, `size` pixels."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, 1 if mode == "1" else 255).save(path, "PNG")
    return path


def non_utf8_path(folder: Path, raw: bytes = b"caf\xe9.png") -> Path:
    """`folder/<raw>`, `raw` a file name that is not UTF-8 (Latin-1 `café.png` from an old share or
    zip), as Python names it (os.fsdecode: 'caf\\udce9.png'). Skips the test where the file system
    refuses such names (APFS, some SMB shares)."""
    import pytest

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / os.fsdecode(raw)
    try:
        path.touch()
        path.unlink()
    except OSError as exc:
        pytest.skip(f"the file system refuses a name that is not UTF-8: {exc}")
    return path
