"""Sniffing, page counting and rendering on real files made by the tests."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import pypdfium2 as pdfium
import pytest
from PIL import Image

from ocrd.daemon.errors import InputError
from ocrd.daemon.render import MAX_SIDE, page_count, render_page, sniff_type


def make_pdf(path: Path, sizes: list[tuple[float, float]]) -> Path:
    """A PDF with one blank page per (width, height) in points."""
    pdf = pdfium.PdfDocument.new()
    for w, h in sizes:
        pdf.new_page(w, h).close()
    pdf.save(str(path))
    pdf.close()
    return path


def raw_pdf(objs: list[bytes], trailer_extra: bytes = b"") -> bytes:
    """A hand-written PDF (for what pypdfium2 cannot write, such as an /Encrypt dictionary)."""
    out = io.BytesIO()
    out.write(b"%PDF-1.4\n")
    offsets = []
    for i, obj in enumerate(objs, 1):
        offsets.append(out.tell())
        out.write(b"%d 0 obj\n" % i + obj + b"\nendobj\n")
    xref = out.tell()
    out.write(b"xref\n0 %d\n0000000000 65535 f \n" % (len(objs) + 1))
    for off in offsets:
        out.write(b"%010d 00000 n \n" % off)
    out.write(b"trailer\n<< /Size %d /Root 1 0 R " % (len(objs) + 1) + trailer_extra
              + b">>\nstartxref\n%d\n%%%%EOF\n" % xref)
    return out.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims huge dimensions, with one tiny IDAT: Pillow reads only the header."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00"))
            + chunk(b"IEND", b""))


def save(tmp_path: Path, name: str, image: Image.Image, **kw) -> Path:
    path = tmp_path / name
    image.save(path, **kw)
    return path


# --- sniff_type -------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt,kind", [("PNG", "png"), ("JPEG", "jpeg"), ("TIFF", "tiff"),
                                      ("WEBP", "webp"), ("BMP", "bmp"), ("GIF", "gif"), ("PDF", "pdf")])
def test_sniff_by_magic_not_extension(tmp_path, fmt, kind):
    path = save(tmp_path, "misnamed.txt", Image.new("RGB", (20, 10), "red"), format=fmt)
    assert sniff_type(path) == kind


def test_docx_and_random_bytes_are_unsupported(tmp_path):
    import zipfile
    docx = tmp_path / "letter.docx"
    with zipfile.ZipFile(docx, "w") as z:
        z.writestr("[Content_Types].xml", "<Types/>")
        z.writestr("word/document.xml", "<w:document/>")
    noise = tmp_path / "noise.pdf"
    noise.write_bytes(bytes(range(256)) * 8)
    for path in (docx, noise):
        with pytest.raises(InputError, match="^unsupported file type$"):
            sniff_type(path)
        with pytest.raises(InputError, match="^unsupported file type$"):
            page_count(path)


def test_empty_file(tmp_path):
    (tmp_path / "e.png").write_bytes(b"")
    with pytest.raises(InputError, match="^empty file$"):
        page_count(tmp_path / "e.png")


# --- PDF --------------------------------------------------------------------------------------

def test_three_page_pdf(tmp_path):
    path = make_pdf(tmp_path / "doc.pdf", [(612, 792), (792, 612), (300, 300)])
    assert page_count(path) == 3
    p1, p2, p3 = (render_page(path, n, dpi=72) for n in (1, 2, 3))
    assert p1.size == (612, 792) and p2.size == (792, 612) and p3.size == (300, 300)
    assert p1.mode == "RGB" and p1.getpixel((10, 10)) == (255, 255, 255)
    assert render_page(path, 1, dpi=144).size == (1224, 1584)


def test_pdf_page_out_of_range(tmp_path):
    path = make_pdf(tmp_path / "doc.pdf", [(100, 100)])
    with pytest.raises(InputError, match="page 2 does not exist"):
        render_page(path, 2)


def test_huge_pdf_page_is_scaled_within_the_cap(tmp_path):
    path = make_pdf(tmp_path / "poster.pdf", [(200 * 72, 100 * 72)])   # 200 x 100 inches
    image = render_page(path, 1, dpi=144)
    assert max(image.size) == MAX_SIDE and image.size[1] == MAX_SIDE // 2


def test_corrupt_pdf(tmp_path):
    path = tmp_path / "bad.pdf"
    path.write_bytes(b"%PDF-1.7\n" + b"\x00garbage" * 100)
    with pytest.raises(InputError, match="^corrupt PDF: "):
        page_count(path)


def test_truncated_pdf(tmp_path):
    good = make_pdf(tmp_path / "good.pdf", [(100, 100)] * 3).read_bytes()
    path = tmp_path / "cut.pdf"
    path.write_bytes(good[: len(good) // 3])
    with pytest.raises(InputError, match="corrupt PDF"):
        for n in range(1, page_count(path) + 1):
            render_page(path, n)


def test_encrypted_pdf(tmp_path):
    # pypdfium2 cannot encrypt, so write a standard-security /Encrypt dictionary by hand: pdfium
    # then asks for a password, which is all the daemon needs to see.
    objs = [b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 200 200] >>",
            b"<< /Filter /Standard /V 1 /R 2 /O <" + b"ab" * 32 + b"> /U <" + b"cd" * 32 + b"> /P -4 >>"]
    path = tmp_path / "secret.pdf"
    path.write_bytes(raw_pdf(objs, b"/Encrypt 4 0 R /ID [<" + b"01" * 16 + b"> <" + b"01" * 16 + b">] "))
    with pytest.raises(InputError, match="^PDF is password-protected$"):
        page_count(path)
    with pytest.raises(InputError, match="^PDF is password-protected$"):
        render_page(path, 1)


def test_pdf_without_pages(tmp_path):
    # Runs after test_encrypted_pdf on purpose: pdfium's stale "password" error code must not
    # mislabel this file. pdfium refuses a zero-page document outright.
    path = tmp_path / "none.pdf"
    path.write_bytes(raw_pdf([b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [] /Count 0 >>"]))
    with pytest.raises(InputError, match="^(PDF has no pages|corrupt PDF: .*)$"):
        page_count(path)


# --- images -----------------------------------------------------------------------------------

def test_png_and_jpeg(tmp_path):
    png = save(tmp_path, "a.png", Image.new("RGB", (120, 80), (10, 20, 30)))
    jpg = save(tmp_path, "a.jpg", Image.new("RGB", (120, 80), (200, 100, 50)), quality=95)
    assert page_count(png) == page_count(jpg) == 1
    assert render_page(png, 1).getpixel((5, 5)) == (10, 20, 30)
    r, g, b = render_page(jpg, 1).getpixel((5, 5))
    assert abs(r - 200) < 6 and abs(g - 100) < 6 and abs(b - 50) < 6


def test_exif_orientation_6_is_rotated(tmp_path):
    image = Image.new("RGB", (200, 100), "white")
    image.paste((255, 0, 0), (0, 0, 20, 20))        # a red mark in the stored top-left corner
    exif = Image.Exif()
    exif[0x0112] = 6                                   # "rotate 90 CW to display"
    path = save(tmp_path, "phone.jpg", image, exif=exif.tobytes(), quality=95)
    out = render_page(path, 1)
    assert out.size == (100, 200)
    r, g, b = out.getpixel((95, 5))                   # stored top-left -> displayed top-right
    assert r > 200 and g < 60 and b < 60


def test_two_frame_tiff(tmp_path):
    frames = [Image.new("RGB", (60, 40), "red"), Image.new("L", (30, 90), 0)]
    path = save(tmp_path, "scan.tif", frames[0], save_all=True, append_images=frames[1:])
    assert page_count(path) == 2
    first, second = render_page(path, 1), render_page(path, 2)
    assert first.size == (60, 40) and first.getpixel((1, 1)) == (255, 0, 0)
    assert second.size == (30, 90) and second.getpixel((1, 1)) == (0, 0, 0)
    with pytest.raises(InputError, match="page 3 does not exist"):
        render_page(path, 3)


def test_gif_first_frame_only(tmp_path):
    frames = [Image.new("P", (40, 40), 1), Image.new("P", (40, 40), 2)]
    for f in frames:
        f.putpalette([0, 0, 0, 255, 0, 0, 0, 0, 255] + [0] * (256 * 3 - 9))
    path = save(tmp_path, "anim.gif", frames[0], save_all=True, append_images=frames[1:])
    assert Image.open(path).n_frames == 2
    assert page_count(path) == 1
    assert render_page(path, 1).getpixel((1, 1)) == (255, 0, 0)
    with pytest.raises(InputError):
        render_page(path, 2)


def test_cmyk_jpeg(tmp_path):
    path = save(tmp_path, "print.jpg", Image.new("CMYK", (50, 50), (0, 255, 255, 0)), quality=95)
    out = render_page(path, 1)
    r, g, b = out.getpixel((5, 5))
    assert out.mode == "RGB" and r > 200 and g < 60 and b < 60


def test_16_bit_png_keeps_its_grey_levels(tmp_path):
    row = struct.pack("<20H", *([0] * 10 + [32768] * 10))    # black | mid grey in 16 bits
    image = Image.frombytes("I;16", (20, 20), row * 20)
    path = save(tmp_path, "deep.png", image)
    out = render_page(path, 1)
    assert out.mode == "RGB"
    assert out.size == (20, 20) and out.getpixel((2, 2)) == (0, 0, 0)
    assert 120 <= out.getpixel((15, 2))[0] <= 135       # not clipped to white


def test_one_bit_and_transparent_images(tmp_path):
    bw = save(tmp_path, "fax.png", Image.new("1", (30, 30), 1))
    assert render_page(bw, 1).getpixel((1, 1)) == (255, 255, 255)
    clear = save(tmp_path, "clear.png", Image.new("RGBA", (30, 30), (0, 0, 0, 0)))
    assert render_page(clear, 1).getpixel((1, 1)) == (255, 255, 255)   # white, not black
    la = save(tmp_path, "la.png", Image.new("LA", (30, 30), (0, 255)))
    assert render_page(la, 1).getpixel((1, 1)) == (0, 0, 0)
    pal = Image.new("P", (30, 30), 0)
    pal.putpalette([0, 0, 255] + [0] * 765)
    pal.info["transparency"] = 0
    assert render_page(save(tmp_path, "p.png", pal, transparency=0), 1).getpixel((1, 1)) == (255, 255, 255)


def test_webp_and_bmp(tmp_path):
    for name, fmt in (("a.webp", "WEBP"), ("a.bmp", "BMP")):
        path = save(tmp_path, name, Image.new("RGB", (33, 22), (0, 128, 0)), format=fmt, **(
            {"lossless": True} if fmt == "WEBP" else {}))
        assert page_count(path) == 1 and render_page(path, 1).getpixel((3, 3)) == (0, 128, 0)


def test_big_jpeg_is_scaled_within_the_cap(tmp_path):
    path = save(tmp_path, "big.jpg", Image.new("RGB", (9000, 3000), "white"), quality=50)
    out = render_page(path, 1)
    assert max(out.size) == MAX_SIDE and abs(out.width / out.height - 3) < 0.01


def test_decompression_bomb_is_an_input_error(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(png_header_only(40000, 40000))
    with pytest.raises(InputError, match="^image too large: "):
        page_count(path)
    with pytest.raises(InputError, match="^image too large: "):
        render_page(path, 1)


def test_image_between_the_warning_and_the_hard_limit_is_accepted(tmp_path):
    import samples

    side = int((Image.MAX_IMAGE_PIXELS * 1.5) ** 0.5)  # e.g. an A0 scan at 300 dpi
    path = samples.write_blank_png(tmp_path / "big.png", (side, side))
    assert page_count(path) == 1
    assert max(render_page(path, 1).size) == MAX_SIDE


def test_truncated_images(tmp_path):
    for name in ("a.png", "a.jpg"):
        good = save(tmp_path, "full-" + name, Image.effect_noise((300, 300), 50).convert("RGB")).read_bytes()
        path = tmp_path / name
        path.write_bytes(good[: len(good) // 2])
        with pytest.raises(InputError, match="^corrupt image: "):
            page_count(path)
        with pytest.raises(InputError, match="^corrupt image: "):
            render_page(path, 1)


def test_header_only_png_is_corrupt(tmp_path):
    path = tmp_path / "stub.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 30)
    with pytest.raises(InputError, match="^corrupt image: "):
        page_count(path)


def test_a_png_is_checked_by_its_chunks_and_decoded_only_when_they_are_broken(tmp_path):
    """Ingest takes a PNG whose chunks are whole without decoding it; one that is not whole is
    decoded to decide: its pixels all there (only the end marker lost) -> taken, else refused."""
    good = save(tmp_path, "good.png", Image.effect_noise((300, 300), 50).convert("RGB")).read_bytes()
    no_end = tmp_path / "no-end.png"
    no_end.write_bytes(good[:-12])                 # IEND cut off: the image itself is complete
    assert page_count(no_end) == 1
    assert render_page(no_end, 1).size == (300, 300)
    flipped = bytearray(good)
    flipped[len(good) // 2] ^= 0xFF                # a byte of the image data changed
    bad = tmp_path / "flipped.png"
    bad.write_bytes(bytes(flipped))
    with pytest.raises(InputError, match="^corrupt image: "):
        page_count(bad)


def test_pdf_pages_rendered_from_several_threads_go_through_pdfium_one_at_a_time(tmp_path, monkeypatch):
    """A worker renders pages on two threads; pdfium is not thread-safe (not even across
    documents), so render.py lets one thread at a time in. Counted inside pdfium's page render,
    its window widened so that two threads in it at once would be seen; each page still equals
    its render alone."""
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    path = make_pdf(tmp_path / "twelve.pdf", [(200 + 40 * k, 300) for k in range(12)])
    alone = [render_page(path, n, 72).tobytes() for n in range(1, 13)]
    inside, most, lock = [0], [0], threading.Lock()
    real_render = pdfium.PdfPage.render

    def counted_render(page, **kw):
        with lock:
            inside[0] += 1
            most[0] = max(most[0], inside[0])
        try:
            time.sleep(0.005)
            return real_render(page, **kw)
        finally:
            with lock:
                inside[0] -= 1

    monkeypatch.setattr(pdfium.PdfPage, "render", counted_render)
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda n: render_page(path, n, 72).tobytes(), list(range(1, 13)) * 3))
    assert most[0] == 1
    assert together == alone * 3
