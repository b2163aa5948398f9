"""The searchable PDF on real files: pages made with Pillow and fpdf2, the engine's view of them
from the daemon's own renderer, the layer read back with pdfium (as ocrd reads PDFs) and checked
with qpdf's checks through pikepdf."""

from __future__ import annotations

from pathlib import Path

import pikepdf
import pypdfium2 as pdfium
import pytest
from fpdf import FPDF
from PIL import Image, ImageDraw, ImageFont, ImageOps

from ocrd.daemon.engines.layout import Box, onto_page
from ocrd.daemon.output.blocks import Block, parse_grounding, plain_text, whole_page
from ocrd.daemon.output.pdf import PageLayer, write_searchable_pdf
from ocrd.daemon.render import render_page

from pdfcheck import (TOL, assert_inside, assert_valid, assert_words_in_boxes, page_texts,
                      seen_to_user, union, vector_pdf, word_box)
from samples import write_blank_png

FONT = ImageFont.load_default(size=36)
LINES = ["Invoice number 4711", "Total due 1234.56 EUR", "Thank you for your business"]



def draw_lines(size: tuple[int, int], lines: list[str], mode: str = "RGB",
               top: int = 120) -> tuple[Image.Image, list[Block]]:
    """A page with `lines` drawn one under the other, and a line Block at each line's true box."""
    image = Image.new(mode, size, "white")
    draw = ImageDraw.Draw(image)
    blocks = []
    for i, text in enumerate(lines):
        xy = (100, top + i * 90)
        draw.text(xy, text, font=FONT, fill="black")
        blocks.append(Block(text, *draw.textbbox(xy, text, font=FONT)))
    return image, blocks


def engine_view(path: Path, page: int, blocks: list[Block], drawn: tuple[int, int]) -> PageLayer:
    """`blocks` (drawn on an upright page of size `drawn`) in pixels of the image the engine gets
    from the daemon's renderer (EXIF turned upright, capped at MAX_SIDE)."""
    seen = render_page(path, page)
    sx, sy = seen.width / drawn[0], seen.height / drawn[1]
    return PageLayer([Block(b.text, b.x0 * sx, b.y0 * sy, b.x1 * sx, b.y1 * sy, b.kind, b.label)
                      for b in blocks], seen.width, seen.height)


# --- images -------------------------------------------------------------------------------------
def test_image_page_gets_a_text_layer_where_its_words_are(tmp_path: Path) -> None:
    image, blocks = draw_lines((1275, 1650), LINES)
    source = tmp_path / "scan.png"
    image.save(source, dpi=(150, 150))
    layer = engine_view(source, 1, blocks, image.size)
    out = tmp_path / "scan.pdf"
    write_searchable_pdf(source, [layer], out)

    with pdfium.PdfDocument(str(out)) as pdf:
        assert len(pdf) == 1
        assert pdf[0].get_size() == pytest.approx((612, 792), abs=0.01)   # 1275 x 1650 px at 150 dpi
        text = pdf[0].get_textpage().get_text_range()
        assert [line.strip() for line in text.splitlines()] == LINES
        assert_words_in_boxes(pdf[0], layer)
    assert_valid(out)
    with pikepdf.open(out) as doc:              # the scan is embedded as it was: same pixels
        (embedded,) = doc.pages[0].get_images().values()
        assert pikepdf.PdfImage(embedded).as_pil_image().convert("RGB").tobytes() == image.tobytes()


def test_image_without_a_resolution_is_taken_at_300_dpi(tmp_path: Path) -> None:
    image, blocks = draw_lines((2550, 3300), LINES, mode="L")     # a letter-size scan at 300 dpi
    source = tmp_path / "nodpi.png"
    image.save(source)
    layer = engine_view(source, 1, blocks, image.size)
    out = tmp_path / "nodpi.pdf"
    write_searchable_pdf(source, [layer], out)
    with pdfium.PdfDocument(str(out)) as pdf:
        assert pdf[0].get_size() == pytest.approx((612, 792), abs=0.01)
        assert_words_in_boxes(pdf[0], layer)


def test_huge_image_is_one_page_and_its_layer_follows_the_capped_view(tmp_path: Path) -> None:
    source = write_blank_png(tmp_path / "huge.png", (10000, 10000))
    blocks = [Block("far corner text", 9000, 9800, 9900, 9900), Block("top left", 100, 100, 900, 200)]
    layer = engine_view(source, 1, blocks, (10000, 10000))
    assert layer.width == 4096                                  # what the engine saw
    out = tmp_path / "huge.pdf"
    write_searchable_pdf(source, [layer], out)
    with pdfium.PdfDocument(str(out)) as pdf:
        assert pdf[0].get_size() == pytest.approx((2400, 2400), abs=0.01)
        assert_words_in_boxes(pdf[0], layer)
    assert_valid(out)


def test_exif_rotated_jpeg_gets_its_layer_on_the_upright_page(tmp_path: Path) -> None:
    upright, blocks = draw_lines((1100, 1500), LINES)
    exif = Image.Exif()
    exif[0x0112] = 6                        # stored turned; "rotate 90 clockwise to show"
    source = tmp_path / "photo.jpg"
    upright.transpose(Image.Transpose.ROTATE_90).save(source, exif=exif, dpi=(200, 200))
    layer = engine_view(source, 1, blocks, upright.size)
    assert (layer.width, layer.height) == upright.size
    out = tmp_path / "photo.pdf"
    write_searchable_pdf(source, [layer], out)
    with pdfium.PdfDocument(str(out)) as pdf:
        assert pdf[0].get_size() == pytest.approx((396, 540), abs=0.01)     # upright, at 200 dpi
        assert_words_in_boxes(pdf[0], layer, rotation=pdf[0].get_rotation())


@pytest.mark.parametrize("turn", [90, 270, 180])
def test_a_page_on_its_side_or_upside_down_gets_its_lines_along_the_text(tmp_path: Path, turn: int) -> None:
    """A page scanned on its side or upside down, read turned upright (layout.onto_page): each
    line's words lie along its box, on the page as scanned."""
    upright, blocks = draw_lines((1100, 1500), LINES)
    scanned = upright.rotate(-turn, expand=True)       # what the engine turned `turn` to read
    source = tmp_path / "turned.png"
    scanned.save(source, dpi=(200, 200))
    layer = PageLayer([onto_page(Box(b.x0, b.y0, b.x1, b.y1, b.text), turn, *scanned.size)
                       for b in blocks], *scanned.size)
    # on its side the boxes are tall (the text runs up or down)
    assert all((b.y1 - b.y0 > 5 * (b.x1 - b.x0)) == (turn != 180) for b in layer.blocks)
    out = tmp_path / "turned.pdf"
    write_searchable_pdf(source, [layer], out)
    with pdfium.PdfDocument(str(out)) as pdf:
        assert pdf[0].get_size() == pytest.approx((396, 540) if turn == 180 else (540, 396), abs=0.01)
        text = pdf[0].get_textpage().get_text_range()
        # each line whole (pdfium orders lines set at an angle by their place on the page: those
        # running down it or upside down may come out last line first)
        assert sorted(line.strip() for line in text.splitlines()) == sorted(LINES)
        assert_words_in_boxes(pdf[0], layer)
    assert_valid(out)


def test_multi_frame_tiff_gives_one_page_per_frame(tmp_path: Path) -> None:
    frames, layers_drawn = [], []
    for n, (size, mode) in enumerate([((1275, 1650), "1"), ((1650, 1275), "L"), ((1275, 1650), "RGB")]):
        image, blocks = draw_lines(size, [f"Frame {n + 1} of three", *LINES[n:n + 1]], mode=mode)
        frames.append(image)
        layers_drawn.append((blocks, size))
    source = tmp_path / "fax.tif"
    frames[0].save(source, save_all=True, append_images=frames[1:], dpi=(200, 100),
                   compression="tiff_lzw")            # a fax's oblong pixels
    layers = [engine_view(source, n + 1, blocks, size) for n, (blocks, size) in enumerate(layers_drawn)]
    out = tmp_path / "fax.pdf"
    write_searchable_pdf(source, layers, out)
    with pdfium.PdfDocument(str(out)) as pdf:
        assert len(pdf) == 3
        assert [pdf[i].get_size() for i in range(3)] == [pytest.approx(s, abs=0.01) for s in
                                                         [(459, 1188), (594, 918), (459, 1188)]]
        for i in range(3):
            assert f"Frame {i + 1} of three" in pdf[i].get_textpage().get_text_range()
            assert_words_in_boxes(pdf[i], layers[i])
    assert_valid(out)


@pytest.mark.parametrize("fmt, mode, name", [("WEBP", "RGB", "page.webp"), ("BMP", "RGB", "page.bmp"),
                                             ("GIF", "P", "page.gif"), ("PNG", "RGBA", "alpha.png"),
                                             ("JPEG", "CMYK", "cmyk.jpg"), ("TIFF", "CMYK", "cmyk.tif")])
def test_every_image_type_ocrd_reads_becomes_a_page(tmp_path: Path, fmt: str, mode: str,
                                                    name: str) -> None:
    image, blocks = draw_lines((800, 600), LINES[:2])
    source = tmp_path / name
    image.convert(mode).save(source, fmt)
    out = tmp_path / "out.pdf"
    layer = engine_view(source, 1, blocks, image.size)
    write_searchable_pdf(source, [layer], out)
    with pdfium.PdfDocument(str(out)) as pdf:
        assert len(pdf) == 1
        assert_words_in_boxes(pdf[0], layer)
    assert_valid(out)


def test_accents_cjk_and_emoji_extract_back_equal(tmp_path: Path) -> None:
    texts = ["Crème brûlée à la française", "Ærøskøbing Straße naïve façade",
             "日本語のテキストを検索", "中文测试 한국어 텍스트", "Ελληνικά и кириллица", "emoji 😀 🎉 ok"]
    image, blocks = draw_lines((1275, 1000), ["x" * 20] * len(texts), top=40)
    source = tmp_path / "intl.png"
    image.save(source, dpi=(150, 150))
    layer = PageLayer([Block(t, b.x0, b.y0, b.x1, b.y1) for t, b in zip(texts, blocks)], *image.size)
    out = tmp_path / "intl.pdf"
    write_searchable_pdf(source, [layer], out)
    (text,) = page_texts(out)
    assert [line.strip() for line in text.splitlines()] == texts
    assert text.splitlines()[2] == texts[2]      # no space after CJK: lines join without one
    assert_valid(out)


def blank_scan(tmp_path: Path) -> Path:
    source = tmp_path / "blank.png"
    Image.new("L", (1275, 1650), "white").save(source, dpi=(150, 150))     # a letter page
    return source


def test_right_to_left_lines_extract_back_in_reading_order(tmp_path: Path) -> None:
    """pdfium (and poppler, Acrobat) read a line through the bidi algorithm: the layer holds a
    Hebrew or Arabic line in the order it is seen, so it reads back as written."""
    texts = ["שלום עולם", "مرحبا بالعالم", "السعر 12.50 دولار", "מחיר 2024 בשקלים"]
    layer = PageLayer([Block(t, 50, 50 + i * 80, 600, 100 + i * 80) for i, t in enumerate(texts)],
                      1275, 1650)
    out = tmp_path / "rtl.pdf"
    write_searchable_pdf(blank_scan(tmp_path), [layer], out)
    (text,) = page_texts(out)
    assert [line.strip() for line in text.splitlines()] == texts


def test_a_blocks_lines_are_spread_top_to_bottom_over_its_box(tmp_path: Path) -> None:
    grounding = ("<|ref|>title<|/ref|><|det|>[[100, 50, 600, 90]]<|/det|>\n# Quarterly **Report**\n\n"
                 "<|ref|>table<|/ref|><|det|>[[100, 120, 900, 400]]<|/det|>\n<table><tr><td>Item</td>"
                 "<td>Qty</td></tr><tr><td>Bolts</td><td>800</td></tr><tr><td>Nuts</td><td>950</td>"
                 "</tr></table>")
    blocks, _ = parse_grounding(grounding, 1275, 1650)
    out = tmp_path / "out.pdf"
    write_searchable_pdf(blank_scan(tmp_path), [PageLayer(blocks, 1275, 1650)], out)

    expected = ["Quarterly Report", "Item Qty", "Bolts 800", "Nuts 950"]   # markup out, rows as lines
    with pdfium.PdfDocument(str(out)) as pdf:
        textpage = pdf[0].get_textpage()
        assert [line.strip() for line in textpage.get_text_range().splitlines()] == expected
        tops = [word_box(textpage, line.split()[0])[3] for line in expected]
        assert tops == sorted(tops, reverse=True)               # top to bottom (PDF y goes up)
        for block in blocks:
            box = seen_to_user(tuple(v * 72 / 150 for v in (block.x0, block.y0, block.x1, block.y1)),
                               0, (0, 0, 612, 792))
            for word in plain_text(block.text).split():
                assert_inside(word_box(textpage, word), box, word)


def test_a_page_without_boxes_gets_line_sized_text_from_the_top(tmp_path: Path) -> None:
    blocks = whole_page("First line of the page\nSecond line\n\nThird and last line", 1275, 1650)
    out = tmp_path / "out.pdf"
    write_searchable_pdf(blank_scan(tmp_path), [PageLayer(blocks, 1275, 1650)], out)
    with pdfium.PdfDocument(str(out)) as pdf:
        textpage = pdf[0].get_textpage()
        lines = [line.strip() for line in textpage.get_text_range().splitlines()]
        boxes = [word_box(textpage, w) for w in ("First", "Second", "Third")]
    assert lines == ["First line of the page", "Second line", "Third and last line"]
    assert [b[3] for b in boxes] == sorted((b[3] for b in boxes), reverse=True)
    assert boxes[0][3] == pytest.approx(792, abs=TOL)           # from the top of the page...
    assert boxes[0][3] - boxes[0][1] < 40                       # ...at about a line's height


# --- PDFs ---------------------------------------------------------------------------------------
def test_pdf_pages_keep_their_content_and_gain_the_ocr_text(tmp_path: Path) -> None:
    source = vector_pdf(tmp_path / "born-digital.pdf")
    before = page_texts(source)
    layers = []
    for n in (1, 2, 3):
        seen = render_page(source, n)           # the engine's image, 144 dpi
        box = (0.1 * seen.width, 0.8 * seen.height, 0.6 * seen.width, 0.84 * seen.height)
        layers.append(PageLayer([Block(f"ocrlayer{n} found this", *box)], seen.width, seen.height))
    out = tmp_path / "searchable.pdf"
    write_searchable_pdf(source, layers, out)

    after = page_texts(out)
    assert len(after) == 3
    for n in range(3):
        assert before[n].strip() and before[n] in after[n]
        assert f"ocrlayer{n + 1} found this" in after[n]
    with pikepdf.open(source) as old, pikepdf.open(out) as new:
        for p_old, p_new in zip(old.pages, new.pages):
            assert list(p_new.mediabox) == list(p_old.mediabox)
            # the page's own content stream is still there, byte for byte, after the layer's
            assert p_new.Contents[-1].read_raw_bytes() == p_old.Contents.read_raw_bytes()
            for name, image in p_old.get_images().items():
                assert p_new.get_images()[name].read_raw_bytes() == image.read_raw_bytes()
        assert new.check_pdf_syntax() == []
    per_page = (out.stat().st_size - source.stat().st_size) / 3
    assert per_page < 4000, f"{per_page:.0f} bytes added per page"


@pytest.mark.parametrize("rotation", [0, 90, 180, 270])
def test_rotated_pages_with_moved_boxes_get_the_layer_where_the_text_is_seen(
        tmp_path: Path, rotation: int) -> None:
    """A black bar stands in for a line of text: where pdfium renders it (rotated, cropped) is the
    engine's box; the layer's text must land on the bar itself in the page's own coordinates."""
    w, h = (40, 300) if rotation % 180 else (300, 40)      # a bar that reads horizontally when seen
    pdf = FPDF(unit="pt", format=(612, 792))
    pdf.add_page()
    pdf.rect(150, 200, w, h, style="F")
    raw = tmp_path / "raw.pdf"
    pdf.output(str(raw))
    source = tmp_path / "rotated.pdf"
    with pikepdf.open(raw) as doc:
        doc.pages[0].obj.MediaBox = pikepdf.Array([30, 40, 642, 832])
        doc.pages[0].obj.CropBox = pikepdf.Array([50, 60, 600, 800])
        doc.pages[0].Rotate = rotation
        doc.save(source)
    seen = render_page(source, 1)
    ink = ImageOps.invert(seen.convert("L")).getbbox()
    out = tmp_path / "out.pdf"
    write_searchable_pdf(source, [PageLayer([Block("ROTATED LAYER", *ink)], *seen.size)], out)

    bar = (150, 792 - 200 - h, 150 + w, 792 - 200)           # fpdf2 draws from the top left
    with pdfium.PdfDocument(str(out)) as pdf:
        textpage = pdf[0].get_textpage()
        words = [word_box(textpage, word) for word in ("ROTATED", "LAYER")]
    for word in words:
        assert_inside(word, bar, "a word")
    assert union(words) == pytest.approx(bar, abs=TOL)          # the line covers the bar
    assert_valid(out)


def test_a_page_without_blocks_is_left_as_it_was(tmp_path: Path) -> None:
    source = vector_pdf(tmp_path / "three.pdf")
    seen = render_page(source, 1)
    layers = [PageLayer([Block("only page one", 10, 10, 300, 40)], *seen.size),
              PageLayer([], 1, 1), PageLayer(whole_page(" ", 10, 10), 10, 10)]
    out = tmp_path / "out.pdf"
    write_searchable_pdf(source, layers, out)
    with pikepdf.open(source) as old, pikepdf.open(out) as new:
        for n in (1, 2):
            assert new.pages[n].Contents.read_raw_bytes() == old.pages[n].Contents.read_raw_bytes()
            assert "/XObject" not in new.pages[n].Resources
    assert page_texts(out)[1:] == page_texts(source)[1:]


def test_page_counts_must_agree(tmp_path: Path) -> None:
    source = vector_pdf(tmp_path / "three.pdf")
    with pytest.raises(ValueError, match="3 pages but 2 text layers"):
        write_searchable_pdf(source, [PageLayer([], 1, 1)] * 2, tmp_path / "out.pdf")
