"""Text blocks with their boxes: what an engine found on a page, in the pixels of the image it saw.

Every writer (searchable PDF, JSON, plain text) reads the same list of Blocks, and the ledger
stores it per page as `to_dicts`. Line engines (RapidOCR, Apple Vision) give one "line" Block per
text line; DeepSeek-OCR's grounding output gives one "block" per layout element and is parsed
here (`parse_grounding`); a page with text but no boxes gets one "page" Block (`whole_page`).
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass

GRID = 999          # DeepSeek-OCR's boxes are on a 0-999 grid over the page (its own re_match/draw code)
KINDS = ("line", "block", "page")
# DeepSeek-OCR's block labels. A ref with no content after its box is a label only if it is one of
# these (an image has nothing to place); otherwise it is the text itself ("OCR this image" and
# "Locate" prompts write the text into the ref). A lone line that reads "title" is lost: rare.
LABELS = frozenset({
    "text", "title", "sub_title", "table", "image", "image_caption", "table_caption",
    "table_footnote", "equation", "formula", "figure", "figure_caption", "header", "footer",
    "page_header", "page_footer", "list", "code", "reference", "paragraph", "caption", "footnote",
})
_TAG = re.compile(r"<\|/?[A-Za-z_▁]+\|>|<｜[^｜<>]{0,40}｜>|</?center>")
_CUT_TAG = re.compile(r"<[|｜][^>]{0,40}$")       # a tag cut off by max_tokens at the very end
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_HTML_TAG = re.compile(r"</?(?:table|thead|tbody|tr|td|th|br|p|div|span|b|i|u|em|strong|sup|sub|"
                       r"ul|ol|li|h\d)\b[^<>]{0,200}>", re.I)


@dataclass(frozen=True)
class Block:
    """One piece of text and its box in pixels of the image the engine saw (origin top left)."""
    text: str            # the block's/line's text (markdown for DeepSeek blocks)
    x0: float
    y0: float
    x1: float
    y1: float
    kind: str = "line"   # "line" (line engines), "block" (DeepSeek grounding), "page" (no boxes)
    label: str = ""      # DeepSeek's block label (text, title, table, ...) where given
    angle: int = 0       # degrees counter-clockwise its text runs at (90, 270: on its side; 180)


def parse_grounding(raw: str, width: int, height: int) -> tuple[list[Block], str]:
    """DeepSeek-OCR's grounding output -> (blocks, clean markdown).

    `<|ref|>LABEL<|/ref|><|det|>[[x0, y0, x1, y1], ...]<|/det|>CONTENT` repeated; several boxes in
    one det are united. Never raises: a det that can't be read (cut by max_tokens, garbage numbers)
    loses its box, never its text. Image blocks without text are dropped (nothing to place).
    """
    head, *segments = raw.split("<|ref|>")
    blocks: list[Block] = []
    parts: list[tuple[str, bool]] = []      # (text, is a ref-as-text line)
    if text := _clean(head):
        parts.append((text, False))
    for segment in segments:
        ref, det, content = _split_segment(segment)
        ref, content = _clean(ref), _clean(content)
        if content:
            text, kind, label = content, "block", ref
        elif ref and ref not in LABELS:
            text, kind, label = ref, "line", ""
        else:
            continue
        parts.append((text, kind == "line"))
        box = _grid_box(det, width, height) if det is not None else None
        if box is not None:
            blocks.append(Block(text, *box, kind=kind, label=label))
    return blocks, _join(parts)


def whole_page(text: str, width: int, height: int) -> list[Block]:
    """One "page" Block over the whole page, for a page with text but no boxes; none if no text."""
    text = text.strip()
    return [Block(text, 0.0, 0.0, float(width), float(height), kind="page")] if text else []


def to_dicts(blocks: list[Block], width: int, height: int) -> list[dict]:
    """A JSON-able form, stored in the ledger per page: box in pixels (to 1/100 px) and as 0-1
    fractions of the page (4 digits), so a reader needs no page size to draw it."""
    w, h = max(width, 1), max(height, 1)
    return [{"text": b.text, "kind": b.kind, "label": b.label,
             "box": [round(b.x0, 2), round(b.y0, 2), round(b.x1, 2), round(b.y1, 2)],
             "box_fraction": [round(b.x0 / w, 4), round(b.y0 / h, 4),
                              round(b.x1 / w, 4), round(b.y1 / h, 4)],
             **({"angle": b.angle} if b.angle else {})}
            for b in blocks]


def from_dicts(items: list[dict]) -> list[Block]:
    """Blocks back from `to_dicts` (the pixel box is the truth; box_fraction is for readers)."""
    return [Block(str(d["text"]), *(float(v) for v in d["box"]), kind=d.get("kind", "line"),
                  label=d.get("label", ""), angle=int(d.get("angle", 0))) for d in items]


def plain_text(markdown: str) -> str:
    """Markdown (and DeepSeek's HTML tables) lightly to plain text: headings' `#`, emphasis `**`
    and `__`, links and images, table pipes and rules, HTML tags. Search and .txt want the words,
    not a faithful rendering."""
    text = re.sub(r"</t[dh]>", " ", markdown, flags=re.I)
    text = re.sub(r"<br\s*/?>|</(?:tr|p|div|li|h\d)>", "\n", text, flags=re.I)
    text = html.unescape(_HTML_TAG.sub("", text))
    text = re.sub(r"!\[[^\]]*\]\([^)]*\)", "", text)
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    lines = []
    for line in text.splitlines():
        if re.fullmatch(r"\s*\|?\s*:?-{3,}:?\s*(\|\s*:?-{3,}:?\s*)*\|?\s*", line):
            continue                                    # a table's rule row
        line = re.sub(r"^\s{0,3}#{1,6}\s+", "", line).replace("**", "").replace("__", "")
        if line.lstrip().startswith("|"):
            line = " ".join(c.strip() for c in re.split(r"(?<!\\)\|", line) if c.strip())
        lines.append(line.replace("\\|", "|").rstrip())
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def _split_segment(segment: str) -> tuple[str, str | None, str]:
    """(ref, det or None, content) of the text after one `<|ref|>`."""
    ref, closed, rest = segment.partition("<|/ref|>")
    if not closed:      # cut inside the ref: keep what there is as text, unless a label's start
        return ("" if any(label.startswith(ref.strip()) for label in LABELS) else ref), None, ""
    body = rest.lstrip()
    if not body.startswith("<|det|>"):
        return ref, None, rest
    det, closed, content = body[len("<|det|>"):].partition("<|/det|>")
    return (ref, det, content) if closed else (ref, None, "")


def _grid_box(det: str, width: int, height: int) -> tuple[float, float, float, float] | None:
    """The union of a det's boxes in pixels; None when it holds no whole box."""
    numbers = [min(max(float(n), 0.0), GRID) for n in _NUMBER.findall(det)]
    if not numbers or len(numbers) % 4:
        return None
    quads = [numbers[i:i + 4] for i in range(0, len(numbers), 4)]
    x0 = min(min(q[0], q[2]) for q in quads)
    y0 = min(min(q[1], q[3]) for q in quads)
    x1 = max(max(q[0], q[2]) for q in quads)
    y1 = max(max(q[1], q[3]) for q in quads)
    if x1 <= x0 or y1 <= y0:
        return None
    sx, sy = width / GRID, height / GRID
    return round(x0 * sx, 2), round(y0 * sy, 2), round(x1 * sx, 2), round(y1 * sy, 2)


def _clean(text: str) -> str:
    return _CUT_TAG.sub("", _TAG.sub("", text)).strip()


def _join(parts: list[tuple[str, bool]]) -> str:
    """Contents joined by blank lines; consecutive ref-as-text lines by a line break."""
    out = ""
    for i, (text, is_line) in enumerate(parts):
        if i:
            out += "\n" if is_line and parts[i - 1][1] else "\n\n"
        out += text
    return out
