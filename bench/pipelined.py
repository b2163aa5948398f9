"""Pipelined worker benchmark: the whole daemon against the best bare loop of the same engine parts,
in interleaved pairs (bare, daemon, bare, daemon, ...; medians).

    .venv/bin/python bench/pipelined.py [--model DIR] [--mode small] [--pages 256] [--pairs 3]
        [--batch auto] [--bare-batch 64] [--max-tokens 512] [--page-size 1700x2200] [--no-guard]
        [--mixed] [--compare-plain] [--compare-uncompiled] [--compare-quantized] [--compare-fixed]
        [--compare-warm] [--label NAME]

  bare:   the pipelined bare loop: PNGs opened and run through the engine's CPU preprocessing
          (MlxVlmEngine.preprocess) on a thread pool, ahead of the decoder, while the decode thread
          adds them to one MlxSession (up to --bare-batch decoding and the session's `ahead` more,
          encoded on the device meanwhile) and steps it. No ledger, no files written: the ceiling
          for these engine parts. --compare-plain adds, each round, the same loop without pages
          encoded ahead (a page joins when a slot frees and is encoded then: the loop before);
          --compare-uncompiled the same loop with DeepSeek-OCR's image encoders not compiled
          (deepseek_inputs.image_encoder).
  daemon: the whole daemon (bench/batch.py: files dropped into the inbox once the model is loaded,
          timed until every outbox file exists), `[workers] batch = --batch`. With --mixed the same
          pages are dropped as a mix of PNGs and 2-5 page PDFs (a realistic drop). Its row also
          says when, from the drop, the first page began decoding and the last was stored, and
          where its decode thread's time went (add, step). --compare-fixed adds, each round, the
          daemon at --bare-batch fixed: does `auto` lose to it, and is a gap the feed or the tuner?
          --compare-warm adds, each round, the daemon that has read one other page first, untimed
          (its worker's first page: encoders traced, kernels loaded), as the bare loop is warmed up:
          how much of the time before the daemon's first decode is that first page?
On a machine with `nvidia-smi`, GPU busy % (its utilization, sampled every 200 ms) is the mean over
each run (the daemon's from the drop to its last outbox file, not its model load). Without --model it builds the tiny random-weight model and runs on this CPU. On the H200
(../shared/gpu/): --model /tmp/model --mode small --max-tokens 512 --page-size 1700x2200 --no-guard.
Prints a table, writes bench/results/pipelined-<label>.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "bench")]

from PIL import Image  # noqa: E402

from batch import ENGINE, PROMPT, UNGUARDED, UnguardedEngine, _row, daemon_batch, make_pages  # noqa: E402
from ocrd.daemon.config import ModelConfig  # noqa: E402
from ocrd.daemon.engines.deepseek_inputs import image_encoder  # noqa: E402
from ocrd.daemon.engines.mlxvlm import MlxVlmEngine  # noqa: E402
from ocrd.daemon.modes import MODES  # noqa: E402
from ocrd.daemon.worker.feeder import AHEAD, front_threads  # noqa: E402
from ocrd.daemon.worker.loop import GIL_SWITCH_S  # noqa: E402
from procs import git, machine  # noqa: E402


class GpuBusy:
    """nvidia-smi's utilization, sampled every 200 ms while running; None without nvidia-smi."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, float]] = []   # (perf_counter, utilization %)
        self._proc = None
        if shutil.which("nvidia-smi"):
            self._proc = subprocess.Popen(["nvidia-smi", "--query-gpu=utilization.gpu",
                                           "--format=csv,noheader,nounits", "-lms", "200"],
                                          stdout=subprocess.PIPE, text=True)
            threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self._proc.stdout:
            try:
                self.samples.append((time.perf_counter(), float(line.split(",")[0])))
            except ValueError:
                pass

    def mean(self, window: tuple[float, float] | None = None) -> float | None:
        """The mean over the run, or over `window` (perf_counter start, end): a daemon's model
        load is not its steady state."""
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(10)
        start, end = window or (float("-inf"), float("inf"))
        values = [v for t, v in self.samples if start <= t <= end]
        return round(statistics.mean(values), 1) if values else None


def mixed_drop(folder: Path, pngs: list[Path]) -> list[Path]:
    """The same pages as a realistic drop: single PNGs between PDFs of 2, 3 and 5 pages."""
    folder.mkdir(parents=True, exist_ok=True)
    files, sizes, k = [], [1, 3, 1, 5, 2], 0
    while k < len(pngs):
        group = pngs[k:k + sizes[len(files) % len(sizes)]]
        k += len(group)
        if len(group) == 1:
            files.append(group[0])
            continue
        images = [Image.open(p).convert("RGB") for p in group]
        pdf = folder / f"doc-{len(files) + 1:03d}.pdf"
        images[0].save(pdf, save_all=True, append_images=images[1:], resolution=72)   # [pdf] dpi = 72
        files.append(pdf)
    return files


def bare_pipelined(engine, pngs: list[Path], batch: int, mode: str, max_tokens: int, *,
                   ahead: bool = True, compiled: bool = True, name: str | None = None) -> dict:
    """The engine parts the worker uses, fed from a preprocessing pool as slots free; the session
    takes its `ahead` pages beyond the batch (encoded while the others decode) unless `ahead` is
    False (the loop before that: a page joins when a slot frees and is encoded then), with the
    image encoders compiled or not (`compiled`, DeepSeek-OCR). Also
    reports the decode thread's seconds in `add` (a page's inputs and embedding graph) and in
    `step` (decode and prefill), and the steps taken."""
    import mlx.core as mx

    def front(path: Path):
        with Image.open(path) as im:
            image = im.convert("RGB")
        return engine.preprocess(image, PROMPT, mode)

    pool = ThreadPoolExecutor(front_threads(os.cpu_count() or 1))
    encoders = engine.encode_images
    if not compiled and encoders is not None:
        engine.encode_images = image_encoder(engine.model, compiled=False)
    session = engine.open_session(capacity=batch, page_budget_s=None)
    session.limit = batch
    room = batch + (session.ahead if ahead else 0)
    waiting, ready, tokens = deque(pngs), deque(), 0
    add_s = step_s = 0.0
    steps = 0
    busy = GpuBusy()
    mx.reset_peak_memory()
    started = time.perf_counter()
    while waiting or ready or len(session):
        while waiting and len(ready) < room - len(session) + min(batch, AHEAD):
            ready.append(pool.submit(front, waiting.popleft()))
        t = time.perf_counter()
        while ready and len(session) < room and (ready[0].done() or not len(session)):
            session.add(len(ready), ready.popleft().result(), prompt=PROMPT, mode=mode, max_tokens=max_tokens)
        t2 = time.perf_counter()
        before = session.generated
        session.step()
        tokens += session.generated - before
        add_s, step_s, steps = add_s + t2 - t, step_s + time.perf_counter() - t2, steps + 1
    seconds = time.perf_counter() - started
    session.close()
    pool.shutdown()
    engine.encode_images = encoders
    name = name or ("pipelined bare loop" if ahead and compiled else "bare loop, encoders uncompiled" if ahead
                    else "bare loop, encoded on joining")
    return _row(name, batch, len(pngs), seconds, tokens, gpu_busy=busy.mean(),
                peak_memory_bytes=int(mx.get_peak_memory()), add_s=round(add_s, 2),
                step_s=round(step_s, 2), steps=steps)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--mode", default="small", choices=list(MODES))
    parser.add_argument("--pages", type=int, default=256)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--batch", default="auto")
    parser.add_argument("--bare-batch", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=512)
    parser.add_argument("--page-size", default="1700x2200")
    parser.add_argument("--no-guard", action="store_true", help="the repetition guard off (random weights loop)")
    parser.add_argument("--mixed", action="store_true", help="drop PNGs and multi-page PDFs")
    parser.add_argument("--label", default=None)
    parser.add_argument("--compare-plain", action="store_true",
                        help="each round also runs the bare loop without pages encoded ahead")
    parser.add_argument("--compare-uncompiled", action="store_true",
                        help="each round also runs the bare loop with the image encoders uncompiled")
    parser.add_argument("--compare-warm", action="store_true",
                        help="also the daemon with one page read before the drop, untimed")
    parser.add_argument("--compare-fixed", action="store_true",
                        help="each round also runs the daemon at --bare-batch, fixed (does `auto` lose?)")
    parser.add_argument("--compare-quantized", action="store_true",
                        help="each round also runs the bare loop with a quantized model kept quantized "
                             "(on CUDA the engine runs it dense)")
    args = parser.parse_args()

    import structlog
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    logging.disable(logging.WARNING)
    batch = args.batch if args.batch == "auto" else int(args.batch)
    rows = []
    with tempfile.TemporaryDirectory(prefix="ocrd-pipelined-") as tmp:
        root = Path(tmp)
        if args.model is None:
            from tinymodel import build_tiny_deepseekocr
            args.model = build_tiny_deepseekocr(root / "tiny-deepseekocr")
        pngs = make_pages(root, args.pages, tuple(int(v) for v in args.page_size.split("x")))
        drop = mixed_drop(root / "mixed", pngs) if args.mixed else pngs
        model = ModelConfig(path=str(args.model))
        engine = UnguardedEngine(model) if args.no_guard else MlxVlmEngine(model)
        engine.load()
        bare_pipelined(engine, pngs[:4], args.bare_batch, args.mode, 16)   # warm-up: kernels compile once
        config = {"model": {"path": str(args.model), "mode": args.mode, "max_tokens": args.max_tokens,
                            "page_timeout_s": 3600}, "pdf": {"dpi": 72}}
        factory = UNGUARDED if args.no_guard else ENGINE
        sys.setswitchinterval(GIL_SWITCH_S)   # as the worker does
        quantized = None
        for n in range(args.pairs):
            rows.append(_show(bare_pipelined(engine, pngs, args.bare_batch, args.mode, args.max_tokens)))
            if args.compare_plain:
                rows.append(_show(bare_pipelined(engine, pngs, args.bare_batch, args.mode, args.max_tokens,
                                                 ahead=False)))
            if args.compare_uncompiled:
                rows.append(_show(bare_pipelined(engine, pngs, args.bare_batch, args.mode, args.max_tokens,
                                                 compiled=False)))
            if args.compare_quantized:
                quantized = quantized or kept_quantized(type(engine), model)
                rows.append(_show(bare_pipelined(quantized, pngs, args.bare_batch, args.mode, args.max_tokens,
                                                 name="bare loop, kept quantized")))
            rows.append(_show(daemon_row(config, drop, len(pngs), batch, factory, root / f"daemon-{n}")))
            if args.compare_warm:
                rows.append(_show(daemon_row(config, drop, len(pngs), batch, factory, root / f"daemon-warm-{n}",
                                             warm=warm_page(pngs[0], root))))
            if args.compare_fixed and batch != args.bare_batch:
                rows.append(_show(daemon_row(config, drop, len(pngs), args.bare_batch, factory,
                                             root / f"daemon-fixed-{n}")))
            _write(args, rows)   # after every round: a run cut off by a time limit keeps what it measured
    return 0


def daemon_row(config: dict, drop: list[Path], pages: int, batch, factory: str, root: Path,
               warm: Path | None = None) -> dict:
    """bench/batch.py's whole-daemon row, in pages (a mixed drop's row counted files); `warm`: read
    that page first, untimed."""
    row = daemon_batch(config, drop, batch, factory, root, gpu=GpuBusy(), warm=warm)
    if warm is not None:
        row["name"] = "warmed daemon (drop -> outbox)"
    return {**row, "pages": pages, "files": len(drop), "pages_per_s": round(pages / row["seconds"], 3)}


def warm_page(page: Path, root: Path) -> Path:
    """A page like `page` but not the same file (the daemon would take the same bytes as a duplicate)."""
    out = root / "warm-up.png"
    if not out.exists():
        with Image.open(page) as im:
            im.transpose(Image.Transpose.FLIP_TOP_BOTTOM).save(out)
    return out


def kept_quantized(engine_class: type, model: ModelConfig):
    """The same engine, loaded with a quantized model kept quantized (on CUDA it runs dense)."""
    class KeptQuantized(engine_class):
        def _dense_on_cuda(self) -> None:
            pass

    engine = KeptQuantized(model)
    engine.load()
    return engine


def _show(row: dict) -> dict:
    print(f"{row['name']:32} {str(row['batch']):>5} {row['pages']:>5} {row['seconds']:>8.2f} s "
          f"{row['pages_per_s']:>7.2f} p/s {row['tokens_per_s']:>9.1f} tok/s  busy {row.get('gpu_busy')} %"
          + (f" ({row['gpu_busy_decoding']} % decoding)" if row.get("gpu_busy_decoding") is not None else "")
          + f"  in flight {row.get('mean_in_flight', '')} {row.get('limits') or ''}"
          + (f"  decode {row.get('first_decode_s')}..{row.get('last_stored_s')} s" if "first_decode_s" in row else "")
          + (f"  add {row['add_s']} s, step {row['steps']} x {row['step_s'] / max(row['steps'], 1) * 1e3:.1f} ms"
             if "steps" in row else ""),
          flush=True)
    return row


def _write(args: argparse.Namespace, rows: list[dict]) -> None:
    from ocrd.daemon.device import detect_device

    device = detect_device()
    label = args.label or f"{device.backend}-{args.mode}-{Path(args.model).name}"
    bare = [r["pages_per_s"] for r in rows if r["name"].startswith("pipelined")]
    plain = [r["pages_per_s"] for r in rows if r["name"].startswith("bare loop, encoded")]
    uncompiled = [r["pages_per_s"] for r in rows if r["name"].startswith("bare loop, encoders")]
    quantized = [r["pages_per_s"] for r in rows if r["name"].startswith("bare loop, kept")]
    daemon = [r["pages_per_s"] for r in rows if r["name"].startswith("whole") and str(r["batch"]) == args.batch]
    fixed = [r["pages_per_s"] for r in rows if r["name"].startswith("whole") and str(r["batch"]) != args.batch]
    warmed = [r["pages_per_s"] for r in rows if r["name"].startswith("warmed")]
    pairs = [round(d / b, 3) for b, d in zip(bare, daemon)]
    summary = {"bare_median_pages_per_s": statistics.median(bare),
               "daemon_median_pages_per_s": statistics.median(daemon),
               "daemon_over_bare_per_pair": pairs, "daemon_over_bare_median": statistics.median(pairs)}
    if plain:
        summary["ahead_over_plain_per_round"] = [round(b / p, 3) for b, p in zip(bare, plain)]
    if uncompiled:
        summary["compiled_over_uncompiled_per_round"] = [round(b / u, 3) for b, u in zip(bare, uncompiled)]
    if fixed:
        summary["daemon_over_fixed_per_round"] = [round(d / f, 3) for d, f in zip(daemon, fixed)]
    if warmed:
        summary["warmed_over_bare_per_pair"] = [round(w / b, 3) for b, w in zip(bare, warmed)]
        summary["warmed_over_daemon_per_round"] = [round(w / d, 3) for d, w in zip(daemon, warmed)]
    if quantized:
        summary["engine_over_kept_quantized_per_round"] = [round(b / q, 3) for b, q in zip(bare, quantized)]
    print("medians: bare {bare_median_pages_per_s} p/s, daemon {daemon_median_pages_per_s} p/s, "
          "daemon/bare per pair {daemon_over_bare_per_pair}, median {daemon_over_bare_median}".format(**summary))
    out = ROOT / "bench" / "results" / f"pipelined-{label}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(device=True),
        "model": str(args.model), "mode": args.mode, "max_tokens": args.max_tokens, "pages": args.pages,
        "page_size": args.page_size, "guard": not args.no_guard, "batch": args.batch,
        "bare_batch": args.bare_batch, "mixed": args.mixed, "runs": rows, "summary": summary,
        "commit": git("rev-parse", "--short", "HEAD")}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    sys.exit(main())
