"""OCR accuracy on pages with known text, and RapidOCR's speed through the daemon vs a bare loop.

    .venv/bin/python bench/accuracy.py [--engine rapidocr|vision] [--real DIR] [--speed N]
                                       [--label NAME]

Accuracy: character and word error rates (jiwer) of one engine on the synthetic pages of
tests/textpages.py (fonts, sizes, a rotated page, a noisy scan, two columns, a table) and on real
pages with ground truth found in --real DIR as NAME.png + NAME.txt (OCRmyPDF's tests/resources
linn.png + linn.txt; its .txt is itself OCR output, so its figures are approximate). Text is
compared as words: markdown table pipes and rules are dropped, whitespace is folded.
Speed (--speed N, RapidOCR): N synthetic pages read by a bare RapidOCR loop, then dropped into
the whole daemon (bench/batch.py's daemon run) once the engine is loaded, timed until every
outbox file exists. Prints a table, writes bench/results/accuracy-<label>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "bench")]

import jiwer  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

import textpages  # noqa: E402
from ocrd.daemon.config import ModelConfig  # noqa: E402
from ocrd.daemon.engines.base import make_engine  # noqa: E402
from ocrd.daemon.engines.choice import FACTORIES  # noqa: E402


def plain(text: str) -> str:
    """Markdown (or ground truth) as comparable words."""
    text = re.sub(r"<!--.*?-->", " ", text)
    text = re.sub(r"^\|( --- \|)+$", "", text, flags=re.M).replace("|", " ")
    return " ".join(text.split())


def real_pages(folder: Path | None) -> list[textpages.TextPage]:
    if folder is None:
        return []
    return [textpages.TextPage(f"real-{png.stem}", Image.open(png).convert("RGB"),
                               png.with_suffix(".txt").read_text(encoding="utf-8"))
            for png in sorted(folder.glob("*.png")) if png.with_suffix(".txt").exists()]


def measure(engine_name: str, pages: list[textpages.TextPage]) -> list[dict]:
    engine = make_engine(FACTORIES[engine_name], ModelConfig(engine=engine_name))
    started = time.perf_counter()
    engine.load()
    print(f"{engine_name}: loaded in {time.perf_counter() - started:.2f} s")
    rows = []
    for page in pages:
        started = time.perf_counter()
        [result] = engine.generate([page.image], "", mode="gundam", max_tokens=100_000)
        seconds = time.perf_counter() - started
        truth, got = plain(page.truth), plain(result.text)
        rows.append({"page": page.kind, "size": list(page.image.size), "seconds": round(seconds, 2),
                     "cer": round(jiwer.cer(truth, got), 4), "wer": round(jiwer.wer(truth, got), 4),
                     "truth_chars": len(truth), "text": result.text})
        print(f"  {page.kind:22} {rows[-1]['size'][0]:>5}x{rows[-1]['size'][1]:<5} "
              f"{seconds:6.2f} s  CER {rows[-1]['cer']:6.1%}  WER {rows[-1]['wer']:6.1%}", flush=True)
    return rows


def speed(n: int, root: Path) -> dict:
    """RapidOCR pages/s: a bare loop over n pages, then the whole daemon on the same pages."""
    from batch import daemon_batch

    kinds = textpages.all_pages()
    pngs = []
    for k in range(n):
        path = root / "pages" / f"page-{k + 1:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        image = kinds[k % len(kinds)].image.copy()
        # a mark of its own: the same bytes twice would be a duplicate job with no output to wait for
        ImageDraw.Draw(image).text((8, 8), f"#{k + 1}", fill="black")
        image.save(path)
        pngs.append(path)
    engine = make_engine(FACTORIES["rapidocr"], ModelConfig(engine="rapidocr"))
    engine.load()
    started = time.perf_counter()
    for png in pngs:   # what the daemon does per page too: open the file, read it
        engine.generate([Image.open(png).convert("RGB")], "", mode="gundam", max_tokens=100_000)
    bare = time.perf_counter() - started
    config = {"model": {"engine": "rapidocr", "max_tokens": 100_000}, "workers": {}}
    row = daemon_batch(config, pngs, "auto", FACTORIES["rapidocr"], root / "daemon")
    out = {"pages": n, "bare_seconds": round(bare, 2), "bare_pages_per_s": round(n / bare, 3),
           "daemon_seconds": row["seconds"], "daemon_pages_per_s": row["pages_per_s"]}
    out["daemon_vs_bare"] = round(out["daemon_pages_per_s"] / out["bare_pages_per_s"], 3)
    print(f"speed: bare {out['bare_pages_per_s']:.3f} pages/s, daemon {out['daemon_pages_per_s']:.3f} "
          f"pages/s ({out['daemon_vs_bare']:.0%} of bare) over {n} pages")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engine", default="rapidocr", choices=("rapidocr", "vision"))
    parser.add_argument("--real", type=Path, help="a folder of NAME.png + NAME.txt ground truth pages")
    parser.add_argument("--speed", type=int, default=0, help="also time N pages: bare loop vs daemon")
    parser.add_argument("--label", default="")
    args = parser.parse_args()
    rows = measure(args.engine, textpages.all_pages() + real_pages(args.real))
    result = {"engine": args.engine, "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "machine": {"platform": platform.platform(), "processor": platform.processor(),
                          "cores": os.cpu_count()},
              "pages": rows}
    if args.speed:
        with tempfile.TemporaryDirectory(prefix="ocrd-accuracy-") as tmp:
            result["speed"] = speed(args.speed, Path(tmp))
    out = ROOT / "bench" / "results" / f"accuracy-{args.label or args.engine}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
