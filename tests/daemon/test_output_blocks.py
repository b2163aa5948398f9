"""Blocks: DeepSeek-OCR grounding parsed into boxes and clean markdown, their stored form, and the
JSON and plain-text outputs built from them."""

from __future__ import annotations

import json

import pytest

from ocrd.daemon.output.blocks import (Block, from_dicts, parse_grounding, plain_text, to_dicts,
                                       whole_page)
from ocrd.daemon.output.formats import PageRecord, build_document, to_json, to_text

W, H = 1190, 1684            # an A4 page at 144 dpi, the daemon's default PDF rendering

# DeepSeek-OCR's answer to "<image>\n<|grounding|>Convert the document to markdown." on a report
# page: a title, prose, a heading, an HTML table, a figure (no text) and its caption, an equation.
MARKDOWN_PAGE = """<|ref|>title<|/ref|><|det|>[[118, 62, 553, 96]]<|/det|>
# Quarterly Report

<|ref|>text<|/ref|><|det|>[[118, 120, 880, 210]]<|/det|>
The quarterly report was filed on **Monday** morning, two days before the deadline.

<|ref|>sub_title<|/ref|><|det|>[[118, 240, 400, 268]]<|/det|>
## Shipments

<|ref|>table<|/ref|><|det|>[[118, 290, 880, 470]]<|/det|>
<table><tr><td>Item</td><td>Quantity</td></tr><tr><td>Bolts &amp; nuts</td><td>800</td></tr></table>

<|ref|>image<|/ref|><|det|>[[118, 500, 600, 780]]<|/det|>


<|ref|>image_caption<|/ref|><|det|>[[118, 790, 600, 815]]<|/det|>
<center>Figure 1: Warehouse floor plan</center>

<|ref|>equation<|/ref|><|det|>[[300, 830, 700, 870]]<|/det|>
\\[E = mc^2\\]<｜end▁of▁sentence｜>"""

# The same model with "<image>\n<|grounding|>OCR this image.": the ref holds the text itself.
OCR_PAGE = """<|ref|>INVOICE 4711<|/ref|><|det|>[[80, 40, 420, 75]]<|/det|>
<|ref|>Total due: 1.234,56 €<|/ref|><|det|>[[80, 900, 520, 930]]<|/det|>
<|ref|>Merci beaucoup<|/ref|><|det|>[[80, 950, 400, 975]]<|/det|>"""


def px(v: float, side: int) -> float:
    return round(v * side / 999, 2)


# --- parse_grounding --------------------------------------------------------------------------
def test_markdown_page_gives_one_block_per_element_with_scaled_boxes() -> None:
    blocks, markdown = parse_grounding(MARKDOWN_PAGE, W, H)
    assert [b.label for b in blocks] == ["title", "text", "sub_title", "table", "image_caption",
                                         "equation"]          # the figure has no text: dropped
    assert all(b.kind == "block" for b in blocks)
    title = blocks[0]
    assert title.text == "# Quarterly Report"
    assert (title.x0, title.y0, title.x1, title.y1) == (px(118, W), px(62, H), px(553, W), px(96, H))
    assert blocks[4].text == "Figure 1: Warehouse floor plan"       # <center> is layout noise
    assert blocks[5].text == "\\[E = mc^2\\]"                        # end-of-sentence token gone


def test_markdown_is_the_contents_without_tags_or_labels() -> None:
    _, markdown = parse_grounding(MARKDOWN_PAGE, W, H)
    assert markdown.startswith("# Quarterly Report\n\nThe quarterly report was filed on **Monday**")
    assert "<|" not in markdown and "<｜" not in markdown and "det" not in markdown
    for label in ("title", "sub_title", "image_caption", "equation"):
        assert label not in markdown
    assert markdown.split("\n\n")[2] == "## Shipments"
    assert markdown.endswith("Figure 1: Warehouse floor plan\n\n\\[E = mc^2\\]")


def test_several_boxes_in_one_det_are_united() -> None:
    raw = ("<|ref|>text<|/ref|><|det|>[[100, 200, 480, 300], [520, 150, 900, 260]]<|/det|>\n"
           "A paragraph that runs across two columns.")
    (block,), _ = parse_grounding(raw, 999, 999)
    assert (block.x0, block.y0, block.x1, block.y1) == (100, 150, 900, 300)


def test_triple_brackets_are_read_like_double() -> None:
    raw = "<|ref|>title<|/ref|><|det|>[[[10, 20, 500, 60]]]<|/det|>\n# Heading"
    (block,), markdown = parse_grounding(raw, 999, 999)
    assert (block.x0, block.y0, block.x1, block.y1, block.text) == (10, 20, 500, 60, "# Heading")
    assert markdown == "# Heading"


def test_ref_as_text_mode_gives_line_blocks_and_lines_of_markdown() -> None:
    blocks, markdown = parse_grounding(OCR_PAGE, 2480, 3508)
    assert [b.text for b in blocks] == ["INVOICE 4711", "Total due: 1.234,56 €", "Merci beaucoup"]
    assert all(b.kind == "line" and b.label == "" for b in blocks)
    assert markdown == "INVOICE 4711\nTotal due: 1.234,56 €\nMerci beaucoup"
    assert blocks[1].x1 == px(520, 2480) and blocks[1].y1 == px(930, 3508)


def test_text_without_grounding_is_the_markdown_and_no_blocks() -> None:
    assert parse_grounding("\n  # Plain\n\nJust text, no boxes.  \n", W, H) == (
        [], "# Plain\n\nJust text, no boxes.")
    assert parse_grounding("", W, H) == ([], "")


@pytest.mark.parametrize("tail, kept", [
    ("<|ref|>text<|/ref|><|det|>[[118, 900, 88", ""),                 # cut inside the numbers
    ("<|ref|>text<|/ref|><|det|>[[118, 900, 880, 950]]<|/d", ""),      # cut inside the closing tag
    ("<|ref|>text<|/ref|><|det|>", ""),
    ("<|ref|>sub_ti", ""),                                             # cut inside a label
    ("<|ref|>text<|/ref|><|det|>[[118, 900, 880, 950]]<|/det|>\nThe last line was cu",
     "The last line was cu"),
])
def test_output_cut_by_max_tokens_keeps_every_whole_block(tail: str, kept: str) -> None:
    whole, whole_md = parse_grounding(OCR_PAGE, W, H)
    blocks, markdown = parse_grounding(OCR_PAGE + "\n" + tail, W, H)
    assert blocks[:3] == whole
    assert markdown.startswith(whole_md)
    assert markdown[len(whole_md):].strip() == kept
    assert "<|" not in markdown


@pytest.mark.parametrize("det", ["[[12, abc, 3]]", "[[1, 2, 3]]", "[[]]", "[[500, 500, 500, 600]]",
                                 "nonsense", "[[1e9"])
def test_a_det_that_cannot_be_read_loses_its_box_not_its_text(det: str) -> None:
    raw = f"<|ref|>text<|/ref|><|det|>{det}<|/det|>\nStill here."
    assert parse_grounding(raw, W, H) == ([], "Still here.")


def test_boxes_off_the_grid_are_clamped_to_the_page() -> None:
    (block,), _ = parse_grounding("<|ref|>Wide<|/ref|><|det|>[[-20, 10, 5000, 40]]<|/det|>", 999, 999)
    assert (block.x0, block.x1) == (0, 999)


def test_no_prefix_of_a_page_makes_the_parser_raise() -> None:
    for end in range(len(MARKDOWN_PAGE) + 1):
        blocks, markdown = parse_grounding(MARKDOWN_PAGE[:end], W, H)
        assert "<|" not in markdown and all(b.x0 < b.x1 and b.y0 < b.y1 for b in blocks)


# --- whole_page, stored form --------------------------------------------------------------------
def test_whole_page_is_one_page_block_or_none() -> None:
    assert whole_page("  Some text\n", 800, 600) == [Block("Some text", 0, 0, 800, 600, kind="page")]
    assert whole_page(" \n", 800, 600) == []


def test_stored_form_is_json_and_round_trips() -> None:
    blocks, _ = parse_grounding(MARKDOWN_PAGE, W, H)
    blocks += whole_page("é 中文 😀", W, H)
    stored = json.loads(json.dumps(to_dicts(blocks, W, H)))
    assert from_dicts(stored) == blocks
    title = stored[0]
    assert title == {"text": "# Quarterly Report", "kind": "block", "label": "title",
                     "box": [px(118, W), px(62, H), px(553, W), px(96, H)],
                     "box_fraction": [round(px(118, W) / W, 4), round(px(62, H) / H, 4),
                                      round(px(553, W) / W, 4), round(px(96, H) / H, 4)]}
    assert stored[-1]["box_fraction"] == [0, 0, 1, 1]


# --- plain text ---------------------------------------------------------------------------------
def test_plain_text_strips_markdown_lightly() -> None:
    markdown = ("# Title\n\nSome **bold** and __strong__ text, a [link](http://x.y) and "
                "![a figure](images/0.jpg).\n\n| Item | Qty |\n| --- | ---: |\n| Bolts \\| nuts | 800 |")
    assert plain_text(markdown) == ("Title\n\nSome bold and strong text, a link and .\n\n"
                                    "Item Qty\nBolts | nuts 800")


def test_plain_text_reads_html_tables_row_by_row() -> None:
    _, markdown = parse_grounding(MARKDOWN_PAGE, W, H)
    text = plain_text(markdown)
    assert "Item Quantity\nBolts & nuts 800" in text
    assert "<" not in text.replace("\\[", "")
    assert plain_text("if a < b and c > d") == "if a < b and c > d"


# --- JSON and plain-text outputs ----------------------------------------------------------------
def records() -> list[PageRecord]:
    blocks, markdown = parse_grounding(MARKDOWN_PAGE, W, H)
    lines, ocr_text = parse_grounding(OCR_PAGE, W, H)
    return [PageRecord(1, markdown, blocks, W, H, "deepseek-ocr", "gundam", "stop", 812, 240),
            PageRecord(2, ocr_text, lines, W, H, "deepseek-ocr", "gundam", "length", 812, 8192),
            PageRecord(3, "", [], W, H, "rapidocr", "", "stop", 0, 0)]


def test_json_holds_each_page_and_its_blocks() -> None:
    doc = json.loads(to_json(records()))
    assert doc["format"] == "ocrd-document" and doc["version"] == 1
    first, second, third = doc["pages"]
    assert {k: first[k] for k in ("page", "width", "height", "engine", "mode", "finish_reason",
                                  "prompt_tokens", "generation_tokens")} == {
        "page": 1, "width": W, "height": H, "engine": "deepseek-ocr", "mode": "gundam",
        "finish_reason": "stop", "prompt_tokens": 812, "generation_tokens": 240}
    assert from_dicts(first["blocks"]) == records()[0].blocks
    assert second["blocks"][1]["text"] == "Total due: 1.234,56 €"      # not \u-escaped: UTF-8
    assert "1.234,56 €" in to_json(records())
    assert third["blocks"] == [] and third["markdown"] == ""
    assert build_document([]) == {"format": "ocrd-document", "version": 1, "pages": []}


def test_text_is_plain_in_reading_order_with_form_feeds_between_pages() -> None:
    text = to_text(records())
    first, second, third = text.split("\f")
    assert first.startswith("Quarterly Report\n\nThe quarterly report was filed on Monday morning")
    assert "Shipments\n\nItem Quantity\nBolts & nuts 800" in first
    assert second == "INVOICE 4711\nTotal due: 1.234,56 €\nMerci beaucoup\n"
    assert third == "\n"
    boxes_only = PageRecord(1, "", [Block("## Heading", 0, 0, 9, 9), Block("Line", 0, 9, 9, 19)])
    assert to_text([boxes_only]) == "Heading\n\nLine\n"
