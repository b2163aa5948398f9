"""Text boxes to markdown in reading order, for engines that find lines rather than write markdown
(RapidOCR, Apple Vision).

A recursive XY-cut: a region is cut down a vertical gutter (columns, left to right) that leaves
every part wide enough to be a text column, else across horizontal whitespace (blocks, top to
bottom). A region that can't be cut is one block: its boxes are grouped into lines by
baseline, and a block whose lines hold several cells apart
from one another is written as a markdown table. Blocks are separated by a blank line.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .engine import PageResult
from .errors import EngineError, first_line

if TYPE_CHECKING:
    from PIL import Image

BLOCK_GAP = 0.9         # x the median line height: whitespace that separates blocks
GUTTER_GAP = 1.2        # x the median line height: a vertical gutter between columns
COLUMN_MIN_WIDTH = 10   # x the median line height: narrower parts are table cells, not columns
CELL_GAP = 1.5          # x the line height: whitespace between two cells of one table row
SAME_LINE = 0.5         # centres closer than this x the line height share a line


@dataclass(frozen=True)
class Box:
    """One recognised piece of text and its axis-aligned bounds in pixels (origin top left)."""
    x0: float
    y0: float
    x1: float
    y1: float
    text: str

    @property
    def height(self) -> float:
        return max(self.y1 - self.y0, 1.0)

    @property
    def mid_y(self) -> float:
        return (self.y0 + self.y1) / 2


def box_from_quad(quad: list[list[float]], text: str) -> Box:
    """A Box bounding a detector's four-point polygon."""
    xs, ys = [p[0] for p in quad], [p[1] for p in quad]
    return Box(min(xs), min(ys), max(xs), max(ys), text)


def to_markdown(boxes: list[Box]) -> str:
    """The page's text as markdown: blocks in reading order, a blank line between blocks."""
    boxes = [b for b in boxes if b.text.strip()]
    if not boxes:
        return ""
    unit = statistics.median(b.height for b in boxes)
    return "\n\n".join(_render_block(block) for block in _cut(boxes, unit))


def _cut(boxes: list[Box], unit: float) -> list[list[Box]]:
    """The blocks of a region in reading order (recursive XY-cut)."""
    # Columns first: two columns whose paragraph breaks happen to line up must not be read
    # across; a heading over both columns blocks the gutter until the y-cut has set it apart.
    columns = _split(boxes, unit * GUTTER_GAP, axis="x")
    if len(columns) > 1 and all(_width(c) >= unit * COLUMN_MIN_WIDTH for c in columns):
        return [block for column in columns for block in _cut(column, unit)]
    rows = _split(boxes, unit * BLOCK_GAP, axis="y")
    if len(rows) > 1:
        return [block for row in rows for block in _cut(row, unit)]
    return [boxes]


def _split(boxes: list[Box], gap: float, *, axis: str) -> list[list[Box]]:
    """Boxes grouped where their projections on `axis` leave whitespace wider than `gap`."""
    lo, hi = ("y0", "y1") if axis == "y" else ("x0", "x1")
    ordered = sorted(boxes, key=lambda b: getattr(b, lo))
    groups: list[list[Box]] = [[ordered[0]]]
    reach = getattr(ordered[0], hi)
    for box in ordered[1:]:
        if getattr(box, lo) - reach > gap:
            groups.append([])
        groups[-1].append(box)
        reach = max(reach, getattr(box, hi))
    return groups


def _width(boxes: list[Box]) -> float:
    return max(b.x1 for b in boxes) - min(b.x0 for b in boxes)


def _lines(boxes: list[Box]) -> list[list[Box]]:
    """Boxes grouped by baseline (centres within SAME_LINE of the line's height), each line left
    to right, lines top to bottom."""
    lines: list[list[Box]] = []
    for box in sorted(boxes, key=lambda b: b.mid_y):
        if lines:
            line = lines[-1]
            height = statistics.median(b.height for b in line)
            centre = statistics.mean(b.mid_y for b in line)
            if abs(box.mid_y - centre) <= SAME_LINE * max(height, box.height):
                line.append(box)
                continue
        lines.append([box])
    return [sorted(line, key=lambda b: b.x0) for line in lines]


def _cells(line: list[Box]) -> list[str]:
    """A line's text split where boxes stand far apart (table cells); one cell for prose."""
    cells = [[line[0]]]
    for prev, box in zip(line, line[1:]):
        if box.x0 - prev.x1 > CELL_GAP * max(prev.height, box.height):
            cells.append([])
        cells[-1].append(box)
    return [" ".join(b.text.strip() for b in cell) for cell in cells]


def _render_block(block: list[Box]) -> str:
    lines = _lines(block)
    cells = [_cells(line) for line in lines]
    split = sum(len(c) >= 2 for c in cells)
    if split >= 2 and split * 2 >= len(lines):     # most lines hold several cells: a table
        return _table(cells)
    return "\n".join(" ".join(c) for c in cells)


def _table(rows: list[list[str]]) -> str:
    width = max(len(r) for r in rows)
    padded = [r + [""] * (width - len(r)) for r in rows]
    lines = ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in padded]
    lines.insert(1, "|" + " --- |" * width)
    return "\n".join(lines)


class LineEngine:
    """An engine that finds text lines (RapidOCR, Vision): `load()` once, then each page's boxes
    (`find_boxes`) laid out as markdown. max_tokens counts words here: a page past it is cut and
    marked "length"; generation_tokens counts the words written."""

    name = "line engine"

    def load(self) -> None:
        raise NotImplementedError

    def find_boxes(self, image: Image.Image) -> list[Box]:
        raise NotImplementedError

    def generate(self, images: list[Image.Image], prompt: str, *, mode: str,
                 max_tokens: int) -> list[PageResult]:
        """One PageResult per image, in order (prompt and mode do not apply to line engines)."""
        self.load()
        return [self._read(image, max_tokens) for image in images]

    def _read(self, image: Image.Image, max_tokens: int) -> PageResult:
        started = time.perf_counter()
        try:
            boxes = self.find_boxes(image)
        except Exception as exc:
            raise EngineError(f"{self.name} failed: {first_line(exc, with_type=True)}") from exc
        return finish_page(to_markdown(boxes), max_tokens, time.perf_counter() - started)


def finish_page(text: str, max_tokens: int, seconds: float) -> PageResult:
    """A PageResult for text read by a line-finding engine: cut at `max_tokens` words."""
    words = text.split()
    finish = "stop"
    if len(words) > max_tokens:
        text, finish = _first_words(text, max_tokens), "length"
        words = words[:max_tokens]
    return PageResult(text=text, prompt_tokens=0, generation_tokens=len(words), seconds=seconds,
                      finish_reason=finish)


def _first_words(text: str, n: int) -> str:
    """`text` up to the end of its n-th word, line breaks kept."""
    seen, end = 0, 0
    for line_end, line in _lines_with_ends(text):
        count = len(line.split())
        if seen + count >= n:
            words = line.split()[: n - seen]
            return (text[:end] + " ".join(words)).rstrip()
        seen, end = seen + count, line_end
    return text


def _lines_with_ends(text: str) -> list[tuple[int, str]]:
    out, pos = [], 0
    for line in text.splitlines(keepends=True):
        pos += len(line)
        out.append((pos, line))
    return out
