"""The engines that find lines (RapidOCR for real, Apple Vision through a fake recogniser), the
layout that puts their lines in reading order, and how `[model] engine` is chosen."""

from __future__ import annotations

import re

import pytest

from ocrd.daemon.config import ConfigError, ModelConfig
from ocrd.daemon.device import DeviceInfo, plan_for_config
from ocrd.daemon.engines.choice import FACTORIES, choose_engine, fetch_model
from ocrd.daemon.errors import EngineError, ModelUnavailable
from ocrd.daemon.engines.layout import Box, finish_page, to_markdown
from ocrd.daemon.engines.rapidocr import RapidOcrEngine
from ocrd.daemon.engines.vision import VisionEngine, ocrmac_recognizer, vision_box

import textpages
from configs import make_config

jiwer = pytest.importorskip("jiwer")


def plain(text: str) -> str:
    """Markdown to comparable words: table rules and pipes out, whitespace folded."""
    text = re.sub(r"^\|( --- \|)+$", "", text, flags=re.M).replace("|", " ")
    return " ".join(text.split())


@pytest.fixture(scope="session")
def rapidocr() -> RapidOcrEngine:
    pytest.importorskip("rapidocr")
    engine = RapidOcrEngine(ModelConfig())
    engine.load()                         # once for the session: the ONNX sessions take ~1 s
    return engine


@pytest.fixture(scope="session")
def read(rapidocr: RapidOcrEngine):
    """Each synthetic page read once for the session: kind -> (page, PageResult)."""
    pages = {p.kind: p for p in (textpages.prose_page(), textpages.two_column_page(), textpages.table_page())}
    done: dict = {}

    def read_kind(kind: str):
        if kind not in done:
            [done[kind]] = rapidocr.generate([pages[kind].image], "ignored", mode="gundam", max_tokens=8192)
        return pages[kind], done[kind]
    return read_kind


# -- layout ---------------------------------------------------------------------------------------

def word_boxes(words: list[str], x: float, y: float, h: float = 20) -> list[Box]:
    out = []
    for w in words:
        out.append(Box(x, y, x + len(w) * h * 0.6, y + h, w))
        x += len(w) * h * 0.6 + h * 0.4
    return out


def test_layout_lines_by_baseline_and_blocks_apart():
    boxes = [*word_boxes(["second", "line"], 100, 132), *word_boxes(["first", "line"], 100, 100),
             Box(300, 103, 360, 121, "tail"),       # a little lower, same line
             *word_boxes(["new", "block"], 100, 220)]
    assert to_markdown(boxes) == "first line tail\nsecond line\n\nnew block"


def test_layout_keeps_columns_apart_and_title_first():
    title = Box(100, 50, 900, 80, "Title over both columns")
    left = [Box(100, 120 + 30 * n, 480, 140 + 30 * n, f"left {n}") for n in range(4)]
    right = [Box(540, 120 + 30 * n, 900, 140 + 30 * n, f"right {n}") for n in range(4)]
    text = to_markdown([*right, title, *left])
    assert text.split("\n\n") == ["Title over both columns", "left 0\nleft 1\nleft 2\nleft 3",
                                  "right 0\nright 1\nright 2\nright 3"]


def line_box(words: list[str], x: float, y: float, h: float = 20) -> Box:
    """One detected line with its words' boxes (as RapidOCR gives them)."""
    parts = word_boxes(words, x, y, h)
    return Box(parts[0].x0, y, parts[-1].x1, y + h, " ".join(words), tuple(parts))


def linn_like(joined: bool = False) -> list[Box]:
    """Full-width text over and under two columns whose gutter (16 px) is narrower than a line is
    tall, with no blank band between them (OCRmyPDF's linn.png); `joined`: the detector ran the
    first two rows of the columns together across the gutter."""
    left = ["left", "column", "text", "runs", "here", "on"]           # 6 words: 0..~431 px wide
    right = ["right", "column", "words", "go", "on", "here"]
    boxes = [line_box(["Full", "width", "intro", "line", "that", "spans", "both", "columns", "wide"] * 2,
                      100, 40 + 24 * n) for n in range(2)]
    boxes.append(line_box(["A", "heading", "under", "the", "intro"], 100, 88))   # left, nothing beside
    for n in range(5):
        y = 112 + 24 * n
        lw, rw = [*left[:5], str(n)], [*right[:5], str(n)]
        if joined and n < 2:
            boxes.append(line_box([*lw, *rw], 100, y, h=20))   # one box across the gutter
            boxes[-1] = Box(boxes[-1].x0, y, 564 + 446, y + 20, boxes[-1].text,
                            (*word_boxes(lw, 100, y), *word_boxes(rw, 564, y)))
        else:
            boxes += [line_box(lw, 100, y), line_box(rw, 564, y)]
    boxes.append(line_box(["Closing", "full", "width", "line", "over", "the", "page"] * 3, 100, 232))
    return boxes


@pytest.mark.parametrize("joined", [False, True])
def test_layout_reads_columns_between_full_width_text(joined: bool):
    text = to_markdown(linn_like(joined))
    lines = [ln for ln in text.splitlines() if ln.strip()]
    assert lines[2] == "A heading under the intro"
    column = [ln.split()[0] for ln in lines[3:13]]
    assert column == ["left"] * 5 + ["right"] * 5, text                   # left, then right
    assert [ln.split()[-1] for ln in lines[3:8]] == ["0", "1", "2", "3", "4"]
    assert lines[13].startswith("Closing")


def test_layout_does_not_split_a_single_column_at_word_gaps():
    words = ["aaaa", "bbbbbbbb", "cc", "dddddd", "eeeee", "ffffffff", "gg", "hhhhhhh"] * 2
    boxes = [line_box(words, 100, 100 + 24 * n) for n in range(6)]
    assert to_markdown(boxes) == "\n".join([" ".join(words)] * 6)


def test_layout_table_rows_become_a_markdown_table():
    rows = [["Item", "Qty"], ["Bolts", "800"], ["Planks", "35"]]
    boxes = [Box(x, 100 + 30 * n, x + 80, 120 + 30 * n, cell)
             for n, row in enumerate(rows) for x, cell in zip((100, 400), row)]
    assert to_markdown(boxes) == "| Item | Qty |\n| --- | --- |\n| Bolts | 800 |\n| Planks | 35 |"


def test_layout_empty_page():
    assert to_markdown([]) == "" and to_markdown([Box(0, 0, 10, 10, "  ")]) == ""


def test_max_tokens_cuts_at_words():
    r = finish_page("one two\nthree four five", 3, 0.1)
    assert (r.text, r.finish_reason, r.generation_tokens) == ("one two\nthree", "length", 3)
    assert finish_page("one two", 3, 0.1).finish_reason == "stop"


# -- RapidOCR, for real ---------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["clean-serif-12pt", "two-columns", "table"])
def test_rapidocr_reads_clean_pages(read, kind: str):
    page, result = read(kind)
    assert jiwer.cer(plain(page.truth), plain(result.text)) <= 0.05, result.text
    assert result.finish_reason == "stop" and result.generation_tokens > 10
    # reading order: each source line's first word appears after the previous line's
    positions = [plain(result.text).find(line.split()[0]) for line in page.truth.splitlines()]
    assert all(p >= 0 for p in positions)


def test_rapidocr_columns_and_table_layout(read):
    _, cols = read("two-columns")
    assert cols.text.index("The quarterly report") < cols.text.index("Please return") \
        < cols.text.index("Rainfall in the valley")      # the left column is read first
    _, table = read("table")
    assert "| Copper wire | 120 | 45.00 |" in table.text


@pytest.mark.parametrize("turned", [90, -90, 180])
def test_rapidocr_reads_a_page_on_its_side_or_upside_down_upright_and_in_order(
        read, rapidocr: RapidOcrEngine, turned: int):
    """Scanned a quarter turn either way or upside down: read turned upright (as scanned, text
    running up the page or upside down came out as noise, and text running down it in reverse
    line order)."""
    page, upright = read("clean-serif-12pt")
    [result] = rapidocr.generate([page.image.rotate(turned, expand=True)], "", mode="gundam", max_tokens=8192)
    assert jiwer.cer(plain(page.truth), plain(result.text)) <= 0.05, result.text
    assert [b.text for b in result.blocks] == [b.text for b in upright.blocks]
    first = result.blocks[0]       # on the page as scanned, its text running up, down or upside down
    assert first.angle == turned % 360
    assert (first.y1 - first.y0 > 5 * (first.x1 - first.x0)) == (turned != 180)
    if turned == 180:              # the first line is at the bottom of the page as scanned
        assert first.y0 > page.image.height / 2


def test_rapidocr_blank_page_and_bad_image(rapidocr: RapidOcrEngine):
    from PIL import Image
    [blank] = rapidocr.generate([Image.new("RGB", (400, 300), "white")], "", mode="tiny", max_tokens=10)
    assert blank.text == "" and blank.finish_reason == "stop"
    with pytest.raises(EngineError):
        rapidocr.generate([Image.new("RGB", (0, 0))], "", mode="tiny", max_tokens=10)


# -- Vision, through a fake recogniser (the real one needs macOS: not run here) --------------------

def test_vision_engine_with_a_fake_recognizer():
    seen = []

    def fake() -> object:
        def recognize(image):
            seen.append(image.size)
            # normalised, origin bottom left: "top" is higher up the page than "below"
            return [("below", 0.9, (0.1, 0.5, 0.3, 0.05)), ("top", 0.99, (0.1, 0.8, 0.2, 0.05))]
        return recognize

    engine = VisionEngine(ModelConfig(), recognizer=fake)
    from PIL import Image
    [r] = engine.generate([Image.new("RGB", (1000, 2000), "white")], "", mode="tiny", max_tokens=100)
    assert r.text == "top\n\nbelow" and seen == [(1000, 2000)]
    box = vision_box(("x", 1.0, (0.1, 0.8, 0.2, 0.05)), 1000, 2000)
    assert (round(box.x0), round(box.y0), round(box.x1), round(box.y1)) == (100, 300, 300, 400)


def test_vision_engine_failure_fails_the_page_and_needs_macos():
    def broken():
        def recognize(image):
            raise RuntimeError("VNRecognizeTextRequest failed")
        return recognize
    from PIL import Image
    with pytest.raises(EngineError, match="Vision failed"):
        VisionEngine(ModelConfig(), recognizer=broken).generate([Image.new("RGB", (8, 8))], "",
                                                                mode="tiny", max_tokens=1)
    import sys
    if sys.platform != "darwin":
        with pytest.raises(ModelUnavailable, match="macOS"):
            ocrmac_recognizer()


# -- choosing the engine --------------------------------------------------------------------------

def test_choose_engine_auto_by_device_and_what_is_installed():
    yes, no = (lambda m: True), (lambda m: False)
    assert choose_engine("auto", "metal", installed=yes).name == "mlx-vlm"
    assert choose_engine("auto", "cuda", installed=yes).name == "mlx-vlm"
    cpu = choose_engine("auto", "cpu", installed=yes)
    assert cpu.name == "rapidocr" and cpu.factory == FACTORIES["rapidocr"]
    assert 'engine = "mlx-vlm"' in cpu.reason           # how to force DeepSeek-OCR
    bare = choose_engine("auto", "cpu", installed=no)
    assert bare.name == "mlx-vlm" and "[cpu]" in bare.reason
    assert choose_engine("mlx-vlm", "cpu", installed=yes).name == "mlx-vlm"
    assert choose_engine("vision", "metal", installed=no).factory == FACTORIES["vision"]


def test_auto_reads_with_vision_while_the_model_downloads_on_a_mac():
    yes = lambda m: True                                             # noqa: E731
    only_rapid = lambda m: m == "rapidocr"               # noqa: E731
    meanwhile = choose_engine("auto", "metal", installed=yes, model_local=lambda: False)
    assert (meanwhile.name, meanwhile.factory, meanwhile.interim) == ("vision", FACTORIES["vision"], True)
    assert "downloads" in meanwhile.reason and "DeepSeek-OCR takes over" in meanwhile.reason
    here = choose_engine("auto", "metal", installed=yes, model_local=lambda: True)
    assert (here.name, here.interim) == ("mlx-vlm", False)
    # no Vision (ocrmac missing), CUDA, or an engine set in the config: no stand-in
    assert choose_engine("auto", "metal", installed=only_rapid, model_local=lambda: False).name == "mlx-vlm"
    assert choose_engine("auto", "cuda", installed=yes, model_local=lambda: False).name == "mlx-vlm"
    assert choose_engine("mlx-vlm", "metal", installed=yes, model_local=lambda: False).name == "mlx-vlm"


def test_fetch_model_in_the_background_says_when_it_is_here():
    import threading

    got, done = [], threading.Event()
    fetch_model("some/model", done, resolve=got.append).join(timeout=10)
    assert got == ["some/model"] and done.is_set()

    def offline(path: str) -> None:
        raise ModelUnavailable(f"model {path} could not be downloaded: offline")
    failed = threading.Event()
    fetch_model("some/model", failed, resolve=offline).join(timeout=10)
    assert not failed.is_set()


def test_engine_config_key(tmp_path):
    assert make_config(tmp_path).model.engine == "auto"
    assert make_config(tmp_path, model={"engine": "rapidocr"}).model.engine == "rapidocr"
    with pytest.raises(ConfigError, match="model.engine"):
        make_config(tmp_path, model={"engine": "tesseract"})


def test_line_engine_pool_is_sized_by_cores_and_memory(tmp_path):
    config = make_config(tmp_path)
    cpu16 = DeviceInfo("cpu", "x86", 64 * 10**9, 64 * 10**9, 16)
    plan = plan_for_config(cpu16, config, engine="rapidocr")
    assert plan.count == 4 and "16 cores // 4" in plan.reason and "rapidocr" in plan.reason
    assert plan.batch == 2 and not plan.tune_batch and plan.recycle_bytes == 0
    small = DeviceInfo("cpu", "x86", 2 * 10**9, 2 * 10**9, 16)   # 1.2 GB budget: one 0.8 GB worker
    assert plan_for_config(small, config, engine="rapidocr").count == 1
    assert plan_for_config(cpu16, config).footprint_bytes > plan.footprint_bytes * 5   # DeepSeek


# -- skew and French (issue 24) -------------------------------------------------------------------

def tilted(boxes: list[Box], degrees: float) -> list[Box]:
    """Boxes as a detector finds them on the page turned `degrees` (down to the right): quads."""
    import math

    from ocrd.daemon.engines.layout import box_from_quad
    a = math.radians(degrees)

    def turn(x: float, y: float) -> tuple[float, float]:
        return x * math.cos(a) - y * math.sin(a), x * math.sin(a) + y * math.cos(a)
    return [box_from_quad([turn(b.x0, b.y0), turn(b.x1, b.y0), turn(b.x1, b.y1), turn(b.x0, b.y1)],
                          b.text, tuple(tilted(list(b.words), degrees))) for b in boxes]


@pytest.mark.parametrize("degrees", [-5, -3, 1, 3, 5])
def test_layout_reads_a_tilted_page_in_its_own_frame(degrees: float):
    from ocrd.daemon.engines.layout import page_skew, reading_order
    title = Box(100, 50, 900, 80, "Title over both columns")
    left = [line_box(["left", "column", "line", str(n), "runs", "on"], 100, 120 + 30 * n) for n in range(12)]
    right = [line_box(["right", "column", "line", str(n), "runs", "on"], 540, 120 + 30 * n) for n in range(12)]
    straight = to_markdown([title, *left, *right])
    boxes = tilted([title, *left, *right], degrees)
    assert abs(page_skew(boxes) - __import__("math").radians(degrees)) < 1e-6
    assert to_markdown(boxes) == straight
    assert straight.split("\n\n")[1].splitlines()[11] == "left column line 11 runs on"
    # the text layer's boxes stay where the lines are on the page as scanned
    placed = {b.text: b for b in reading_order(boxes)}
    for box, upright in zip(boxes, [title, *left, *right]):
        got = placed[box.text]
        assert abs((got.x0 + got.x1) / 2 - (box.x0 + box.x1) / 2) < 1 and abs(got.mid_y - box.mid_y) < 1
        assert abs(got.height - upright.height) < 1 and abs(got.x1 - got.x0 - (upright.x1 - upright.x0)) < 1


def test_layout_leaves_a_flat_page_and_short_boxes_alone():
    from ocrd.daemon.engines.layout import page_skew
    flat = tilted([line_box(["a", "long", "line", "of", "words", "here"], 100, 100 + 30 * n) for n in range(5)], 0.1)
    assert page_skew(flat) == 0.0
    stubby = tilted([Box(100, 100 + 30 * n, 140, 120 + 30 * n, "ab") for n in range(5)], 4)
    assert page_skew(stubby) == 0.0 and page_skew(word_boxes(["no", "quads"], 0, 0)) == 0.0


def test_rapidocr_reads_a_tilted_two_column_page_in_column_order(rapidocr: RapidOcrEngine):
    page = textpages.rotated_columns_page(3)
    [result] = rapidocr.generate([page.image], "", mode="gundam", max_tokens=8192)
    got = plain(result.text)
    assert jiwer.cer(plain(page.truth), got) <= 0.05, result.text
    at = [got.find(line) for line in page.truth.splitlines()]   # every line whole, in order
    assert all(a >= 0 for a in at) and at == sorted(at), result.text


def test_rapidocr_keeps_french_accents_and_word_spaces(rapidocr: RapidOcrEngine):
    page = textpages.french_page()
    [result] = rapidocr.generate([page.image], "", mode="gundam", max_tokens=8192)
    got = plain(result.text)
    assert jiwer.cer(plain(page.truth), got) <= 0.02 and jiwer.wer(plain(page.truth), got) <= 0.06, got
    for phrase in ("son île intérieure, à côté de l'alcôve", "où les bûches", "çà et là la qualité"):
        assert phrase in got, got
    assert "PP-OCRv6" in rapidocr.models


def test_rapidocr_keeps_word_spaces_on_a_grey_blurred_scan(rapidocr: RapidOcrEngine):
    page = textpages.noisy_page()      # read as it was, the recogniser ran words together (WER 15%)
    [result] = rapidocr.generate([page.image], "", mode="gundam", max_tokens=8192)
    assert jiwer.wer(plain(page.truth), plain(result.text)) <= 0.05, result.text
