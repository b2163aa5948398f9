"""Pages scanned on their side or upside down: RapidOCR as scanned against ocrd's reading (turned
upright where the engine reads it surer, engines/layout.py), on OCRmyPDF's cardinal.pdf: its
test file for `--rotate-pages`, linn.png's page at 0, 90, 180 and 270 degrees (truth linn.txt,
itself OCR output, so the figures are approximate).

    .venv/bin/python bench/turned.py [--scans DIR] [--rounds 2] [--label NAME]

Each page is read as scanned and by ocrd in turn, --rounds times (interleaved; medians). Prints a
table, writes bench/results/turned-<label>.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "bench")]

import jiwer  # noqa: E402

from accuracy import fetch_scans, plain  # noqa: E402
from procs import git, machine  # noqa: E402
from ocrd.daemon.config import ModelConfig  # noqa: E402
from ocrd.daemon.engines.layout import to_markdown  # noqa: E402
from ocrd.daemon.engines.rapidocr import RapidOcrEngine  # noqa: E402
from ocrd.daemon.render import page_count, render_page  # noqa: E402

PAGES = {"cardinal.pdf": "linn.txt"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scans", type=Path, default=Path.home() / ".cache" / "ocrd-bench")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--label", default="cardinal")
    args = ap.parse_args()
    files = fetch_scans(args.scans, PAGES)
    truth = plain(files["linn.txt"].read_text(encoding="utf-8"))
    engine = RapidOcrEngine(ModelConfig())
    engine.load()
    ways = {"as scanned": lambda im: to_markdown(engine.find_boxes(im)),
            "ocrd": lambda im: engine.generate([im], "", mode="gundam", max_tokens=10**6)[0].text}
    rows = []
    print(f"{'page':6} {'reading':11} {'CER':>6} {'WER':>6} {'seconds':>8}")
    for page in range(1, page_count(files["cardinal.pdf"]) + 1):
        image = render_page(files["cardinal.pdf"], page)
        seen: dict[str, list[tuple[float, str]]] = {way: [] for way in ways}
        for _ in range(args.rounds):
            for way, read in ways.items():
                started = time.perf_counter()
                text = read(image)
                seen[way].append((time.perf_counter() - started, text))
        for way, runs in seen.items():
            text = plain(runs[-1][1])
            row = {"page": page, "reading": way, "cer": round(jiwer.cer(truth, text), 4),
                   "wer": round(jiwer.wer(truth, text), 4),
                   "seconds": round(statistics.median(s for s, _ in runs), 2)}
            rows.append(row)
            print(f"{page:<6} {way:11} {row['cer']:>6.1%} {row['wer']:>6.1%} {row['seconds']:>8.2f}", flush=True)
    out = ROOT / "bench" / "results" / f"turned-{args.label}.json"
    out.write_text(json.dumps({
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": machine(),
        "file": "cardinal.pdf (OCRmyPDF's tests/resources)", "rounds": args.rounds, "runs": rows,
        "commit": git("rev-parse", "--short", "HEAD")}, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
