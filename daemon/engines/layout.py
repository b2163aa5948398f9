"""Text boxes to markdown in reading order, for engines that find lines rather than write markdown
(RapidOCR, Apple Vision).

A page scanned askew is laid out in its own frame: the skew is the median slope of the long
lines' quadrilaterals (engines that give them: RapidOCR), and every box is turned by it before
the cut, so a tilted page's columns keep their gutter (issue 24: OCRmyPDF's skew.pdf, ~1.8
degrees, was read across its columns line by line).

A recursive XY-cut: a region is cut down a vertical gutter (columns, left to right) that leaves
every part wide enough to be a text column, else across horizontal whitespace (blocks, top to
bottom). Where full-width text above or below the columns leaves no such gutter, or the gutter is
narrower than that (OCRmyPDF's linn.png: about one line height), a band of rows that keeps off one
vertical gutter is read as two columns: top, left, right, bottom; a line box that crosses the
gutter only through a gap between its words (detectors can join lines across a narrow gutter) is
split there. A region that can't be cut is one block: its boxes are grouped into lines by
baseline, and a block whose lines hold several cells apart
from one another is written as a markdown table. Blocks are separated by a blank line.

A page scanned on its side (most lines run up or down it) is read again turned a quarter each way,
and one the engine reads with little confidence is read again upside down; the reading the engine
is surer of is laid out, and its lines go back onto the page as scanned with the angle their text
runs at (Block.angle), which the searchable PDF's layer follows.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from .base import PageResult
from ..output.blocks import Block
from ..errors import EngineError, first_line

if TYPE_CHECKING:
    from PIL import Image

BLOCK_GAP = 0.9         # x the median line height: whitespace that separates blocks
GUTTER_GAP = 1.2        # x the median line height: a vertical gutter between columns
COLUMN_MIN_WIDTH = 10   # x the median line height: narrower parts are table cells, not columns
CELL_GAP = 1.5          # x the line height: whitespace between two cells of one table row
SAME_LINE = 0.5         # centres closer than this x the line height share a line
BAND_LINES = 3          # whole boxes on each side of a gutter before a band counts as two columns
BAND_GAP = 0.5          # x the median line height: the narrowest gutter in a band
SKEW_MIN = 0.2          # degrees: a flatter page is laid out as it is
SKEW_MAX = 10.0         # degrees: steeper lines are not text lines of a page scanned askew
SLOPE_LINE = 4          # a line's width over its height: shorter boxes say too little of the slope
SIDEWAYS_SHARE = 0.6    # of a page's lines (4+ characters) running up or down it: read it turned
SIDEWAYS_KEEP = 0.95    # a turned reading is taken unless the engine was this much surer as scanned
UPSIDE_DOWN_MARGIN = 0.1  # an upside-down reading is taken if the engine is this much surer of it


@dataclass(frozen=True)
class Box:
    """One recognised piece of text and its axis-aligned bounds in pixels (origin top left)."""
    x0: float
    y0: float
    x1: float
    y1: float
    text: str
    words: tuple[Box, ...] = ()     # the words' own boxes where the engine gives them (RapidOCR)
    quad: tuple[tuple[float, float], ...] = ()   # the detector's polygon, clockwise from top left
    score: float = 1.0              # the recogniser's confidence, 0-1, where the engine gives it

    @property
    def height(self) -> float:
        return max(self.y1 - self.y0, 1.0)

    @property
    def mid_y(self) -> float:
        return (self.y0 + self.y1) / 2


def box_from_quad(quad, text: str, words: tuple[Box, ...] = (), score: float = 1.0) -> Box:
    """A Box bounding a detector's four-point polygon (kept: its slope is the page's skew)."""
    points = tuple((float(p[0]), float(p[1])) for p in quad)
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    return Box(min(xs), min(ys), max(xs), max(ys), text, words, points, score)


def sideways(boxes: list[Box]) -> bool:
    """Most of the page's lines run up or down it: a page scanned (or photographed) on its side."""
    lines = [b for b in boxes if len(b.text.strip()) >= 4]
    tall = sum(1 for b in lines if b.y1 - b.y0 > 1.5 * (b.x1 - b.x0))
    return bool(lines) and tall >= SIDEWAYS_SHARE * len(lines)


def confidence(boxes: list[Box]) -> float:
    """The engine's confidence in a reading: its boxes' scores, weighted by their characters."""
    chars = sum(len(b.text) for b in boxes)
    return sum(b.score * len(b.text) for b in boxes) / chars if chars else 0.0


def onto_page(box: Box, turn: int, width: int, height: int) -> Block:
    """A line read on the page turned `turn` degrees counter-clockwise (0, 90, 180, 270; `width` x
    `height`: the page as scanned) as a Block on the page as scanned; its text runs at
    -turn degrees there."""
    if turn == 90:     # turned (u, v) <- scanned (x, y) = (width - v, u)
        x0, y0, x1, y1 = width - box.y1, box.x0, width - box.y0, box.x1
    elif turn == 180:  # turned (u, v) <- scanned (x, y) = (width - u, height - v)
        x0, y0, x1, y1 = width - box.x1, height - box.y1, width - box.x0, height - box.y0
    elif turn == 270:  # turned (u, v) <- scanned (x, y) = (v, height - u)
        x0, y0, x1, y1 = box.y0, height - box.x1, box.y1, height - box.x0
    else:
        x0, y0, x1, y1 = box.x0, box.y0, box.x1, box.y1
    return Block(box.text, x0, y0, x1, y1, kind="line", angle=(360 - turn) % 360)


def to_markdown(boxes: list[Box]) -> str:
    """The page's text as markdown: blocks in reading order, a blank line between blocks."""
    boxes, _ = straighten([b for b in boxes if b.text.strip()])
    if not boxes:
        return ""
    unit = statistics.median(b.height for b in boxes)
    return "\n\n".join(_render_block(block) for block in _cut(boxes, unit))


def reading_order(boxes: list[Box]) -> list[Box]:
    """The boxes in the order to_markdown reads them (blocks, then lines top to bottom, left to
    right), placed on the page as scanned: the searchable PDF's text layer extracts in the
    markdown's order."""
    boxes, angle = straighten([b for b in boxes if b.text.strip()])
    if not boxes:
        return []
    unit = statistics.median(b.height for b in boxes)
    # back onto the scan as the line's own size about its centre (bounding the tilted quad
    # instead would make a long line's box tens of pixels too tall for the text layer)
    return [_turn(replace(box, quad=()), -angle) if angle else box
            for block in _cut(boxes, unit) for line in _lines(block) for box in line]


def page_skew(boxes: list[Box]) -> float:
    """The page's skew in radians (positive: lines run down to the right): the median slope of
    the long lines' quadrilaterals; 0 where there are none or the page is flat enough."""
    slopes = []
    for box in boxes:
        if len(box.quad) != 4:
            continue
        (ax, ay), (bx, by), (cx, cy), (dx, dy) = box.quad
        width, height = math.hypot(bx - ax, by - ay), math.hypot(dx - ax, dy - ay)
        if width >= SLOPE_LINE * max(height, 1.0):
            slope = (math.atan2(by - ay, bx - ax) + math.atan2(cy - dy, cx - dx)) / 2
            if abs(slope) <= math.radians(SKEW_MAX):
                slopes.append(slope)
    angle = statistics.median(slopes) if slopes else 0.0
    return angle if abs(angle) >= math.radians(SKEW_MIN) else 0.0


def straighten(boxes: list[Box]) -> tuple[list[Box], float]:
    """The boxes turned into the frame of the page's lines (page_skew), and the angle turned."""
    angle = page_skew(boxes)
    return ([_turn(b, angle) for b in boxes] if angle else boxes), angle


def _turn(box: Box, angle: float) -> Box:
    """`box` (and its words) rotated by -angle about the origin. A box with a quad is bounded
    tightly in the new frame; one without keeps its size about its turned centre (how a laid-out
    box goes back onto the page as scanned)."""
    cos, sin = math.cos(angle), math.sin(angle)

    def turn(x: float, y: float) -> tuple[float, float]:
        return x * cos + y * sin, -x * sin + y * cos

    words = tuple(_turn(w, angle) for w in box.words)
    if box.quad:
        return box_from_quad([turn(x, y) for x, y in box.quad], box.text, words, box.score)
    cx, cy = turn((box.x0 + box.x1) / 2, (box.y0 + box.y1) / 2)
    w, h = (box.x1 - box.x0) / 2, (box.y1 - box.y0) / 2
    return Box(cx - w, cy - h, cx + w, cy + h, box.text, words, score=box.score)


def _cut(boxes: list[Box], unit: float) -> list[list[Box]]:
    """The blocks of a region in reading order (recursive XY-cut)."""
    # Columns first: two columns whose paragraph breaks happen to line up must not be read
    # across; a heading over both columns blocks the gutter until the y-cut has set it apart.
    columns = _split(boxes, unit * GUTTER_GAP, axis="x")
    if len(columns) > 1 and all(_width(c) >= unit * COLUMN_MIN_WIDTH for c in columns):
        return [block for column in columns for block in _cut(column, unit)]
    band = _band(boxes, unit)
    if band:
        return [block for part in band if part for block in _cut(part, unit)]
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


def _band(boxes: list[Box], unit: float) -> tuple[list[Box], ...] | None:
    """(above, left, right, below): the longest run of boxes, top to bottom, that all keep off one
    vertical gutter (or cross it between words), with columns of text on both sides; else None."""
    ordered = sorted(boxes, key=lambda b: (b.y0, b.x0))
    lo, hi = min(b.x0 for b in boxes), max(b.x1 for b in boxes)
    best: tuple[int, int, float] | None = None
    x = lo + unit * COLUMN_MIN_WIDTH
    while x <= hi - unit * COLUMN_MIN_WIDTH:
        for start, end in _runs(ordered, x, unit):
            if best is None or end - start > best[1] - best[0]:
                best = (start, end, x)
        x += unit / 4
    if best is None:
        return None
    start, end = _trim(ordered, *best)
    parts = [_sides(box, best[2]) for box in ordered[start:end]]
    return (ordered[:start], [p[0] for p in parts if p and p[0]],
            [p[1] for p in parts if p and p[1]], ordered[end:])


def _trim(ordered: list[Box], start: int, end: int, x: float) -> tuple[int, int]:
    """A band's run less a first or last whole line that stands beside nothing on the other side
    and nearer the full-width text outside the band (a heading over it, a heading under it)."""
    def side(box: Box) -> bool:
        return box.x0 >= x

    def beside(box: Box, run: list[Box]) -> bool:   # text beside it, or a line split across x
        if box.x0 < x < box.x1:
            return True
        other = [b for b in run if b.x1 > x] if not side(box) else [b for b in run if b.x0 < x]
        return any(b.y0 < box.y1 and box.y0 < b.y1 for b in other)

    while end - start > 2 * BAND_LINES and end < len(ordered):
        last, run = ordered[end - 1], ordered[start:end - 1]
        above = [b for b in run if side(b) == side(last) and (b.x1 <= x or b.x0 >= x)]
        if beside(last, run) or not above or last.y0 - above[-1].y1 <= ordered[end].y0 - last.y1:
            break
        end -= 1
    while end - start > 2 * BAND_LINES and start > 0:
        first, run = ordered[start], ordered[start + 1:end]
        below = [b for b in run if side(b) == side(first) and (b.x1 <= x or b.x0 >= x)]
        if beside(first, run) or not below or below[0].y0 - first.y1 <= first.y0 - ordered[start - 1].y1:
            break
        start += 1
    return start, end


def _runs(ordered: list[Box], x: float, unit: float) -> list[tuple[int, int]]:
    """The runs of consecutive boxes that keep off a gutter at `x` and make two columns:
    (start, end) in `ordered`."""
    runs, start, left, right, whole = [], 0, [], [], [0, 0]
    for i, box in enumerate([*ordered, None]):
        parts = _sides(box, x) if box else None
        if parts is None:
            if min(whole) >= BAND_LINES and _columns(left, right, unit):
                runs.append((start, i))
            start, left, right, whole = i + 1, [], [], [0, 0]
            continue
        left += [parts[0]] if parts[0] else []
        right += [parts[1]] if parts[1] else []
        if not (parts[0] and parts[1]):     # a whole line on one side, not a split one
            whole[parts[0] is None] += 1
    return runs


def _sides(box: Box, x: float) -> tuple[Box | None, Box | None] | None:
    """`box` as (left part, right part) of a gutter at x; None where it runs across the gutter."""
    if box.x1 <= x:
        return box, None
    if box.x0 >= x:
        return None, box
    left = [w for w in box.words if w.x1 <= x]
    right = [w for w in box.words if w.x0 >= x]
    if not left or not right or len(left) + len(right) < len(box.words):
        return None
    return _join(left), _join(right)


def _join(words: list[Box]) -> Box:
    return Box(min(w.x0 for w in words), min(w.y0 for w in words), max(w.x1 for w in words),
               max(w.y1 for w in words), " ".join(w.text for w in words), tuple(words))


def _columns(left: list[Box], right: list[Box], unit: float) -> bool:
    """Whether left and right parts are two columns: lines mostly column-wide (a table's cells are
    not), and a gutter apart."""
    wide = unit * COLUMN_MIN_WIDTH
    return (min(b.x0 for b in right) - max(b.x1 for b in left) >= unit * BAND_GAP
            and statistics.median(b.x1 - b.x0 for b in left) >= wide
            and statistics.median(b.x1 - b.x0 for b in right) >= wide)


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
    # A page read with less confidence is read upside down too (LineEngine._upright); each engine
    # sets it from its own scores, None: never (not measured).
    unsure: float | None = None

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
            boxes, turn = self._upright(image)
        except Exception as exc:
            raise EngineError(f"{self.name} failed: {first_line(exc, with_type=True)}") from exc
        result = finish_page(to_markdown(boxes), max_tokens, time.perf_counter() - started)
        result.blocks = [onto_page(b, turn, *image.size) for b in reading_order(boxes)]
        return result

    def _upright(self, image: Image.Image) -> tuple[list[Box], int]:
        """The page's lines and the turn (degrees counter-clockwise) they were read at: 0; for a
        page on its side the quarter turn that the engine reads with more confidence; for a page
        read unsure, 180 where upside down it reads surer."""
        boxes = self.find_boxes(image)
        sure = confidence(boxes)
        if sideways(boxes):
            turned = [(self.find_boxes(image.rotate(turn, expand=True)), turn) for turn in (90, 270)]
            best = max(turned, key=lambda read: confidence(read[0]))
            return best if confidence(best[0]) >= SIDEWAYS_KEEP * sure else (boxes, 0)
        if boxes and self.unsure is not None and sure < self.unsure:
            flipped = self.find_boxes(image.rotate(180))
            if confidence(flipped) > sure + UPSIDE_DOWN_MARGIN:
                return flipped, 180
        return boxes, 0


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
