"""Output writers benchmark: seconds per page of the searchable PDF, JSON and plain-text writers.

    .venv/bin/python bench/formats.py [--reps 7] [--pages 10]

  pdf from image:  a 300 dpi A4 scan (2480x3508 PNG, 50 lines of text drawn) with a line block at
                   each line -> a one-page searchable PDF (img2pdf embedding + the layer);
  pdf from pdf:    a --pages PDF of that scan -> each page's layer grafted (what a scanned PDF costs);
  pdf, blocks:     the same with DeepSeek-style blocks (10 paragraphs of 5 lines) instead of lines;
  json, txt:       --pages page records of 50 line blocks each.
Each writer runs once to warm up, then --reps times; the table shows the median and the fastest
run per page, and bytes per page: what the PDF adds to its source (the PNG, or the scanned PDF
whose pages share one image), the whole output for JSON and text. Writes bench/results/formats.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import pikepdf  # noqa: E402
from PIL import Image, ImageDraw, ImageFont  # noqa: E402

from ocrd.daemon.output.blocks import Block  # noqa: E402
from ocrd.daemon.output.formats import PageRecord, to_json, to_text  # noqa: E402
from ocrd.daemon.output.pdf import PageLayer, write_searchable_pdf  # noqa: E402
from procs import git, machine  # noqa: E402

A4_300 = (2480, 3508)
WORDS = "the quarterly report lists every shipment invoice total weight driver signed".split()


def make_scan(path: Path) -> list[Block]:
    """A 300 dpi A4 page of 50 lines of text (1-bit, as scanners write text pages); its line boxes."""
    image = Image.new("L", A4_300, "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=40)
    blocks = []
    for n in range(50):
        text = f"{n + 1:02d} " + " ".join(WORDS[(n + k) % len(WORDS)] for k in range(9))
        xy = (236, 236 + n * 60)
        draw.text(xy, text, font=font, fill="black")
        blocks.append(Block(text, *draw.textbbox(xy, text, font=font)))
    image.convert("1").save(path, dpi=(300, 300))
    return blocks


def paragraph_blocks(lines: list[Block]) -> list[Block]:
    """DeepSeek-style: every 5 lines one "block" of markdown over their union."""
    out = []
    for i in range(0, len(lines), 5):
        group = lines[i:i + 5]
        out.append(Block("\n".join(b.text for b in group), min(b.x0 for b in group),
                         min(b.y0 for b in group), max(b.x1 for b in group), max(b.y1 for b in group),
                         kind="block", label="text"))
    return out


def timed(name: str, pages: int, reps: int, run: Callable[[], int]) -> dict:
    """Median and fastest seconds per page of `run`, which returns its output's size in bytes."""
    run()
    times = []
    for _ in range(reps):
        started = time.perf_counter()
        size = run()
        times.append((time.perf_counter() - started) / pages)
    row = {"name": name, "pages": pages, "median_s_per_page": round(statistics.median(times), 5),
           "min_s_per_page": round(min(times), 5), "bytes_per_page": size // pages}
    print(f"{name:20} {pages:>5} {row['median_s_per_page'] * 1000:>11.2f} "
          f"{row['min_s_per_page'] * 1000:>9.2f} {row['bytes_per_page']:>12,}", flush=True)
    return row


def write_pdf(source: Path, layers: list[PageLayer], out: Path) -> int:
    """Bytes the searchable PDF adds to its source."""
    write_searchable_pdf(source, layers, out)
    return out.stat().st_size - source.stat().st_size


def run_all(root: Path, pages: int, reps: int) -> list[dict]:
    scan = root / "scan.png"
    lines = make_scan(scan)
    scanned_pdf = root / "scanned.pdf"
    write_searchable_pdf(scan, [PageLayer([], *A4_300)], scanned_pdf)    # the scan as a 1-page PDF
    with pikepdf.open(scanned_pdf) as one:
        many = pikepdf.new()
        many.pages.extend([one.pages[0]] * pages)
        many.save(root / "scanned-many.pdf")
    layer = PageLayer(lines, *A4_300)
    blocks = PageLayer(paragraph_blocks(lines), *A4_300)
    records = [PageRecord(n, "\n".join(b.text for b in lines), lines, *A4_300, "rapidocr", "",
                          "stop", 0, 500) for n in range(1, pages + 1)]
    print(f"{'writer':20} {'pages':>5} {'median ms/p':>11} {'min ms/p':>9} {'bytes/page':>12}")
    return [
        timed("pdf from image", 1, reps, lambda: write_pdf(scan, [layer], root / "a.pdf")),
        timed("pdf from pdf", pages, reps,
              lambda: write_pdf(root / "scanned-many.pdf", [layer] * pages, root / "b.pdf")),
        timed("pdf from pdf, blocks", pages, reps,
              lambda: write_pdf(root / "scanned-many.pdf", [blocks] * pages, root / "c.pdf")),
        timed("json", pages, reps, lambda: len(to_json(records).encode())),
        timed("txt", pages, reps, lambda: len(to_text(records).encode())),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--pages", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ocrd-formats-") as tmp:
        rows = run_all(Path(tmp), args.pages, args.reps)
    out = ROOT / "bench" / "results" / "formats.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "libraries": _versions("pikepdf", "fpdf2", "img2pdf", "fonttools", "pillow"),
        "reps": args.reps, "page": "A4 at 300 dpi, 2480x3508 px, 50 lines", "runs": rows,
        "commit": git("rev-parse", "--short", "HEAD"),
        "uncommitted": bool(git("status", "--porcelain", "--", "daemon/output", "bench/formats.py")),
    }, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


def _versions(*names: str) -> dict[str, str]:
    from importlib.metadata import version
    return {name: version(name) for name in names}


if __name__ == "__main__":
    sys.exit(main())
