"""Batch benchmark: the same pages at several in-flight limits, three ways.

    .venv/bin/python bench/batch.py [--batches 1,4,8,16,32,64,auto (repeat for pairs: 1,8,1,8)] [--pages 32] [--max-tokens 64]
                                    [--mode tiny] [--model DIR] [--page-size 612x792] [--no-guard]
                                    [--skip-worker] [--skip-daemon] [--label NAME]

  bare:   mlx-vlm's BatchGenerator driven page by page (each page prepared and embedded alone in
          its mode, a finished page leaves and the next joins): the ceiling for that in-flight count;
  worker: one ocrd worker process under the Supervisor, the pages queued as one job beforehand,
          timed in the ledger (first page claimed -> job done);
  daemon: the whole daemon (watcher, ingest, supervisor, worker) in its own process: files dropped
          into the inbox once the model is loaded, timed until every outbox file exists.
Without --model it builds the tiny random-weight DeepSeek-OCR (tests/tinymodel.py) and runs on this
machine's CPU. On the GPU machine (../shared/gpu/): --model /tmp/model --mode small --max-tokens 512
--page-size 1700x2200 --no-guard (random weights loop; the guard would end pages early, so it is off
for ocrd; the bare loop has none). Prints a table, writes bench/results/batch-<label>.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "bench")]

from PIL import Image, ImageDraw  # noqa: E402

from ocrd.daemon.engines.mlxvlm import MlxVlmEngine  # noqa: E402
from ocrd.daemon.modes import MODES  # noqa: E402
from procs import git, log_entries, machine  # noqa: E402
from workers import _quiet_stdout as _quiet  # noqa: E402  (bench/workers.py: the processor's prints)

PROMPT = "<image>\n<|grounding|>Convert the document to markdown."
ENGINE = "ocrd.daemon.engines.mlxvlm:MlxVlmEngine"
UNGUARDED = "batch:UnguardedEngine"


class UnguardedEngine(MlxVlmEngine):
    """The real engine with the repetition guard off (random-weight models loop from the start)."""

    def __init__(self, model):
        super().__init__(model, repeat_min_tokens=10**9)


def make_pages(folder: Path, n: int, size: tuple[int, int]) -> list[Path]:
    """n pages with lines of text, as PNG files."""
    out = []
    for k in range(n):
        im = Image.new("RGB", size, "white")
        draw = ImageDraw.Draw(im)
        for line in range(size[1] // 30):
            draw.text((40, 20 + line * 28), f"Page {k + 1}, line {line + 1}: invoice 12345 total 67.89",
                      fill="black")
        path = folder / f"page-{k + 1:03d}.png"
        im.save(path)
        out.append(path)
    return out


def _row(name: str, batch: object, pages: int, seconds: float, tokens: int, **extra: object) -> dict:
    return {"name": name, "batch": batch, "pages": pages, "seconds": round(seconds, 3),
            "pages_per_s": round(pages / seconds, 3), "tokens": tokens,
            "tokens_per_s": round(tokens / seconds, 1), **extra}


# -- bare ------------------------------------------------------------------------------------------
def bare_batch(model_path: Path, images: list[Image.Image], batch: int, mode: str, max_tokens: int) -> dict:
    import mlx.core as mx
    from mlx_vlm.generate.ar import BatchGenerator
    from mlx_vlm.utils import prepare_inputs

    model, processor = _load(model_path)
    m = MODES[mode]

    def prepare(image):
        inputs = prepare_inputs(processor, images=[image], prompts=PROMPT, add_special_tokens=False,
                                image_token_index=model.config.image_token_index,
                                base_size=m.base_size, image_size=m.image_size, cropping=m.cropping)
        extra = {k: v for k, v in inputs.items() if k not in ("input_ids", "pixel_values", "attention_mask")}
        embedded = model.get_input_embeddings(inputs["input_ids"], inputs.get("pixel_values"),
                                              mask=inputs.get("attention_mask"), **extra)
        extra.update({k: v for k, v in embedded.to_dict().items() if v is not None})
        return inputs["input_ids"].squeeze(0).tolist(), extra

    def run(pages: list[Image.Image]) -> tuple[float, int]:
        gen = BatchGenerator(model.language_model, processor, prefill_batch_size=1,
                             completion_batch_size=batch, compute_logprobs=False)
        pending, active, tokens = list(pages), set(), 0
        started = time.perf_counter()
        while pending or active:
            while pending and len(active) < batch:
                ids, kwargs = prepare(pending.pop())
                active.update(gen.insert([ids], max_tokens=max_tokens, prompt_kwargs=[kwargs]))
            for r in gen.next()[1]:
                tokens += r.finish_reason != "stop"
                if r.finish_reason is not None:
                    active.discard(r.uid)
        seconds = time.perf_counter() - started
        gen.close()
        return seconds, tokens

    with _quiet():
        run(images[:2])                      # warm-up (a fresh GPU compiles kernels once)
        mx.reset_peak_memory()
        seconds, tokens = run(images)
    return _row("bare BatchGenerator loop", batch, len(images), seconds, tokens,
                peak_memory_bytes=int(mx.get_peak_memory()))


_loaded: dict = {}


def _load(model_path: Path):
    if str(model_path) not in _loaded:
        import mlx_vlm

        with _quiet():
            _loaded[str(model_path)] = mlx_vlm.load(str(model_path))
    return _loaded[str(model_path)]


# -- one worker under the supervisor --------------------------------------------------------------
def worker_batch(config_dict: dict, pngs: list[Path], batch: object, engine: str, root: Path) -> dict:
    from configs import make_config
    from ocrd.daemon.supervisor import Settings, Supervisor
    from ocrd.ledger import Ledger

    config = make_config(root, **_with_batch(config_dict, batch))
    config.spool_dir.mkdir(parents=True, exist_ok=True)
    pdf = config.spool_dir / "bench.pdf"
    images = [Image.open(p).convert("RGB") for p in pngs]
    images[0].save(pdf, save_all=True, append_images=images[1:], resolution=config.pdf.dpi)
    ledger = Ledger(config.db_url)
    inbox = config.inboxes[0]
    job_id = ledger.add_job(inbox=inbox.key, source_path=str(inbox.path / "bench.pdf"), spool_path=str(pdf),
                            sha256=hashlib.sha256(pdf.read_bytes()).hexdigest(),
                            size_bytes=pdf.stat().st_size, pages_total=len(pngs)).job_id
    supervisor = Supervisor(config, Settings(rescan_s=3600, engine_factory=engine))
    try:
        supervisor.start()
        deadline = time.monotonic() + 1800
        while ledger.job(job_id).state != "done":
            if time.monotonic() > deadline:
                raise RuntimeError(f"job not done: {ledger.job(job_id)}")
            supervisor.tick()
            time.sleep(0.2)
        shown = ledger.show_job(job_id)
        first = min(datetime.fromisoformat(p["started_at"]) for p in shown["pages"])
        seconds = (datetime.fromisoformat(shown["finished_at"]) - first).total_seconds()
        tokens = sum(p["generation_tokens"] or 0 for p in shown["pages"])
        peak = _peak_heartbeat(config.ledger_path)
        limits = sorted({w["batch"] for w in ledger.workers_status() if w.get("batch")})
    finally:
        supervisor.stop(deadline_s=60)
        ledger.close()
    return _row("one ocrd worker (render+infer+store)", batch, len(pngs), seconds, tokens,
                peak_memory_bytes=peak, plan=supervisor.plan.batch_reason, limits=limits)


def _with_batch(config_dict: dict, batch: object) -> dict:
    workers = {**config_dict.get("workers", {}), "count": 1, "batch": batch}
    return {**config_dict, "workers": workers}


def _peak_heartbeat(ledger_path: Path) -> int | None:
    con = sqlite3.connect(ledger_path)
    try:
        return con.execute("SELECT MAX(peak_memory_bytes) FROM heartbeats").fetchone()[0]
    finally:
        con.close()


# -- the whole daemon --------------------------------------------------------------------------------
_DAEMON = """
import sys
from ocrd.daemon.config import load_config
from ocrd.daemon.supervisor import Settings, run_daemon
sys.exit(run_daemon(load_config(sys.argv[1]), settings=Settings(engine_factory=sys.argv[2], rescan_s=3600)))
"""


def start_daemon(config_dict: dict, batch: object, engine: str, root: Path) -> subprocess.Popen:
    """The whole daemon on one inbox, root/inbox (outbox root/outbox), in its own process, with
    `[workers] batch = batch`; returns once its model is loaded (its log: root/daemon.log)."""
    from configs import to_toml

    raw = _with_batch(config_dict, batch)
    raw["state_dir"] = str(root / "state")
    raw["inbox"] = [{"path": str(root / f), "outbox": str(root / "outbox"), "archive": "",
                     "failed": str(root / "failed"), "stable_for_s": 0.2} for f in ("inbox",)]
    (root / "inbox").mkdir(parents=True)
    toml = root / "ocrd.toml"
    toml.write_text(to_toml(raw))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "bench"), str(ROOT / "tests"),
                                                        os.environ.get("PYTHONPATH", "")])}
    with open(root / "daemon.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-c", _DAEMON, str(toml), engine], stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
    ledger = root / "state" / "ledger.db"
    try:
        _wait(lambda: ledger.exists() and _meta(ledger, "model_status") == "ok", 900, "model loaded", proc)
    except BaseException:
        stop_daemon(proc)
        raise
    return proc


def stop_daemon(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.wait(120)


def daemon_batch(config_dict: dict, pngs: list[Path], batch: object, engine: str, root: Path,
                 gpu=None, warm: Path | None = None) -> dict:
    """The whole daemon on `pngs` (any files it takes), from the drop to the last outbox file;
    `gpu` (bench/pipelined.py's GpuBusy) adds the GPU's busy % over that window. With `warm`, that
    page is read first, untimed: the worker's first page after its start (its encoders traced, its
    kernels loaded) is then not in the drop, as in a daemon that has run a while."""
    proc = start_daemon(config_dict, batch, engine, root)
    ledger = root / "state" / "ledger.db"
    outbox = root / "outbox"

    def delivered(files: int) -> bool:
        return outbox.exists() and len(list(outbox.glob("*.md"))) == files

    try:
        if warm is not None:
            _drop([warm], root)
            _wait(lambda: delivered(1), 1800, "the warm-up page", proc, ledger)
        con = sqlite3.connect(ledger)
        (first_job,) = con.execute("SELECT COALESCE(MAX(id), 0) + 1 FROM jobs").fetchone()
        con.close()
        started, dropped_at = time.perf_counter(), time.time()
        _drop(pngs, root)
        _wait(lambda: delivered(len(pngs) + (warm is not None)), 1800, "outbox", proc, ledger)
        ended = time.perf_counter()
        seconds = ended - started
        con = sqlite3.connect(ledger)
        tokens = con.execute("SELECT SUM(generation_tokens) FROM pages WHERE job_id >= ?",
                             (first_job,)).fetchone()[0] or 0
        limits = sorted({b for (b,) in con.execute("SELECT DISTINCT batch FROM heartbeats") if b})
        in_flight = _mean_in_flight(con, first_job)
        first, last = _decode_window(con, dropped_at, first_job)
        con.close()
        peak = _peak_heartbeat(ledger)
    finally:
        stop_daemon(proc)
    return _row("whole daemon (drop -> outbox)", batch, len(pngs), seconds, tokens,
                peak_memory_bytes=peak, limits=limits, mean_in_flight=in_flight,
                first_decode_s=first, last_stored_s=last, **_decode_time(root / "state" / "logs" / "ocrd.log"),
                **({"gpu_busy": gpu.mean((started, ended)),   # and while pages decoded (steady state)
                    "gpu_busy_decoding": gpu.mean((started + first, started + last))} if gpu else {}))


def _drop(files: list[Path], root: Path) -> None:
    """`files` into root/inbox, each written elsewhere and moved in: a finished file appears at once."""
    for f in files:
        staged = root / f.name
        shutil.copyfile(f, staged)
        os.replace(staged, root / "inbox" / f.name)


def _decode_time(log_file: Path) -> dict:
    """The workers' decode threads' seconds in `add` and `step` and the steps taken (their
    `decode_time` log events, written as they stop), summed."""
    total: dict = {}
    for event in log_entries(log_file):
        if event.get("event") == "decode_time":
            for key in ("add_s", "step_s", "steps"):
                total[key] = round(total.get(key, 0) + event[key], 3)
    return total


def _spans(con: sqlite3.Connection, first_job: int = 0) -> list[tuple[float, float]]:
    """Each done page's decode (start, end) in epoch seconds: its store time less its decode seconds
    (the pages of jobs from `first_job` on)."""
    ends = [(datetime.fromisoformat(f).timestamp(), s) for f, s in con.execute(
        "SELECT finished_at, seconds FROM pages WHERE state = 'done' AND job_id >= ?", (first_job,))]
    return [(end - seconds, end) for end, seconds in ends]


def _decode_window(con: sqlite3.Connection, dropped_at: float, first_job: int = 0) -> tuple[float, float]:
    """Seconds from the drop to the first page's decode start and to the last page's store:
    what the daemon's run spent before decoding and after it (delivery) shows beside `seconds`."""
    spans = _spans(con, first_job)
    if not spans:
        return 0.0, 0.0
    return round(min(a for a, _ in spans) - dropped_at, 2), round(max(b for _, b in spans) - dropped_at, 2)


def _mean_in_flight(con: sqlite3.Connection, first_job: int = 0) -> float:
    """Pages decoding at once, on average from the first page's start to the last page's end:
    how full the batch was kept."""
    spans = _spans(con, first_job)
    if not spans:
        return 0.0
    wall = max(end for _, end in spans) - min(start for start, _ in spans)
    return round(sum(end - start for start, end in spans) / wall, 1) if wall > 0 else 0.0


def _meta(ledger: Path, key: str) -> str | None:
    try:
        con = sqlite3.connect(ledger, timeout=5)
        try:
            row = con.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        finally:
            con.close()
    except sqlite3.Error:
        return None
    if row is None:
        return None
    from ocrd.ledger.states import ModelStatus

    return str(ModelStatus.loads(row[0]).state)


def _wait(condition, timeout: float, what: str, proc: subprocess.Popen | None = None,
          ledger: Path | None = None) -> None:
    """Until condition() holds; a daemon `proc` that exits meanwhile, or a worker of its `ledger`
    that died (checked every second: a bench measures a daemon that works), fails the wait."""
    deadline = time.monotonic() + timeout
    checked = time.monotonic()
    while not condition():
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the daemon exited ({proc.returncode}) while waiting for {what}")
        if ledger is not None and time.monotonic() - checked >= 1.0:
            checked = time.monotonic()
            con = sqlite3.connect(ledger, timeout=30)
            dead = con.execute("SELECT COUNT(*) FROM workers WHERE state = 'dead'").fetchone()[0]
            con.close()
            if dead:
                raise RuntimeError(f"a worker died while waiting for {what} (see its daemon.log)")
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.05)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", default="1,4,8,16,32,64,auto")
    parser.add_argument("--pages", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--mode", default="tiny", choices=list(MODES))
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--page-size", default="612x792")
    parser.add_argument("--no-guard", action="store_true", help="ocrd's repetition guard off")
    parser.add_argument("--skip-bare", action="store_true")
    parser.add_argument("--skip-worker", action="store_true")
    parser.add_argument("--skip-daemon", action="store_true")
    parser.add_argument("--label", default=None)
    args = parser.parse_args()

    import structlog
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    logging.disable(logging.WARNING)
    batches = [b if b == "auto" else int(b) for b in args.batches.split(",")]
    size = tuple(int(v) for v in args.page_size.split("x"))
    engine = UNGUARDED if args.no_guard else ENGINE
    rows = []
    with tempfile.TemporaryDirectory(prefix="ocrd-batch-") as tmp:
        root = Path(tmp)
        if args.model is None:
            from tinymodel import build_tiny_deepseekocr
            args.model = build_tiny_deepseekocr(root / "tiny-deepseekocr")
        pngs = make_pages(root, args.pages, size)
        images = [Image.open(p).convert("RGB") for p in pngs]
        config = {"model": {"path": str(args.model), "mode": args.mode, "max_tokens": args.max_tokens,
                            "page_timeout_s": 3600}, "pdf": {"dpi": 72}}
        for n, batch in enumerate(batches):   # a batch listed again is run again (pairs: 1,8,1,8)
            if not args.skip_bare and batch != "auto":
                rows.append(_show(bare_batch(args.model, images, batch, args.mode, args.max_tokens)))
            if not args.skip_worker:
                rows.append(_show(worker_batch(config, pngs, batch, engine, root / f"worker-{n}-{batch}")))
            if not args.skip_daemon:
                rows.append(_show(daemon_batch(config, pngs, batch, engine, root / f"daemon-{n}-{batch}")))
    _write(args, rows)
    return 0


def _show(row: dict) -> dict:
    peak = row.get("peak_memory_bytes")
    print(f"{row['name']:40} {str(row['batch']):>5} {row['pages']:>5} {row['seconds']:>8.2f} "
          f"{row['pages_per_s']:>8.2f} {row['tokens_per_s']:>9.1f} "
          f"{'' if peak is None else f'{peak / 1e9:.2f} GB':>9} {row.get('limits') or ''}", flush=True)
    return row


def _write(args: argparse.Namespace, rows: list[dict]) -> None:
    from ocrd.daemon.device import detect_device

    device = detect_device()
    label = args.label or f"{device.backend}-{args.mode}-{Path(args.model).name}"
    speed: dict[tuple[str, object], list[float]] = {}   # (kind, batch) -> pages/s; repeats are pairs
    for row in rows:
        speed.setdefault((row["name"].split()[0], row["batch"]), []).append(row["pages_per_s"])
    median = {key: statistics.median(v) for key, v in speed.items()}
    ratios = {}
    for (kind, batch), value in median.items():
        if kind != "bare" and ("bare", batch) in median:
            ratios[f"{kind} {batch} / bare"] = round(value / median["bare", batch], 3)
        if (kind, 1) in median and batch != 1 and kind != "bare":
            ratios[f"{kind} {batch} / {kind} 1"] = round(value / median[kind, 1], 3)
    print("ratios: " + ", ".join(f"{k} = {v}" for k, v in ratios.items()))
    out = ROOT / "bench" / "results" / f"batch-{label}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(device=True),
        "model": str(args.model), "mode": args.mode, "max_tokens": args.max_tokens,
        "pages": args.pages, "page_size": args.page_size, "guard": not args.no_guard,
        "runs": rows, "ratios": ratios, "commit": git("rev-parse", "--short", "HEAD")}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    sys.exit(main())
