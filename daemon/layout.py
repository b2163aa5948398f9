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
from dataclasses import dataclass

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
