"""engine = "openai" benchmark: the same pages through the whole daemon, read by ocrd's in-process
engine (mlx-vlm) and by an OpenAI-compatible server, in interleaved runs (in-process, server at each
concurrency, in-process, ...; >= 3 rounds; medians).

    .venv/bin/python bench/openai_server.py [--model DIR] [--mode gundam] [--pages 24] [--pairs 3]
        [--concurrency auto,8] [--batch auto] [--max-tokens 64] [--page-size 595x842] [--no-guard]
        [--server-url URL --name ID] [--skip-in-process] [--label NAME]

  in-process: the whole daemon with `[model] engine = "mlx-vlm"`, `[workers] batch = --batch`;
  server:     the whole daemon with `[model] engine = "openai"` at each `--concurrency`, against
              mlx-vlm's server (`python -m mlx_vlm.server` through tests/mlxvlm_server.py, which
              carries the request-thread fix; started once and kept warm) serving --model, or
              against a server already running at --server-url (vLLM, SGLang: --name is its model id).
Both time the same thing (bench/batch.py daemon_batch): files dropped into the inbox once the model
is loaded (for the server engine: once the probe page passed), until every outbox file exists.
mlx-vlm's server ignores DeepSeek-OCR resolution modes and reads every page in its processor's
default (gundam: base 1024, crops of 640), so the in-process side runs --mode gundam too; the rows
carry the mean prompt tokens a page, to show both sides read the same views. Without --model it
builds the tiny random-weight model and runs on this CPU. On the H200 with the full-size model:
--model /tmp/model --pages 256 --max-tokens 512 --page-size 1700x2200 --no-guard --concurrency
16,64,auto (or --server-url http://127.0.0.1:8000/v1 --name deepseek-ai/DeepSeek-OCR for vLLM,
started with the README's recipe). Prints a table, writes bench/results/openai-<label>.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sqlite3
import statistics
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "bench")]

from batch import ENGINE, UNGUARDED, daemon_batch, make_pages  # noqa: E402
from ocrd.daemon.modes import MODES  # noqa: E402
from procs import git  # noqa: E402

SERVER_ENGINE = "ocrd.daemon.engines.openai:OpenAiEngine"


def run(config: dict, pngs: list[Path], batch: object, factory: str, root: Path, name: str) -> dict:
    row = daemon_batch(config, pngs, batch, factory, root)
    con = sqlite3.connect(root / "state" / "ledger.db")
    (prompt,) = con.execute("SELECT AVG(prompt_tokens) FROM pages").fetchone()
    con.close()
    return {**row, "name": name, "mean_prompt_tokens": round(prompt or 0, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--mode", default="gundam", choices=list(MODES))
    parser.add_argument("--pages", type=int, default=24)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--concurrency", default="auto,8", help="the server engine's [model] concurrency, a list")
    parser.add_argument("--batch", default="auto", help="the in-process engine's [workers] batch")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--page-size", default="595x842")
    parser.add_argument("--no-guard", action="store_true", help="in-process repetition guard off (random weights loop)")
    parser.add_argument("--server-url", default=None, help="a server already running (else mlx-vlm's is started)")
    parser.add_argument("--name", default=None, help="the served model id (default: --model)")
    parser.add_argument("--skip-in-process", action="store_true")
    parser.add_argument("--label", default=None)
    args = parser.parse_args()

    import structlog
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    logging.disable(logging.WARNING)
    levels = [c if c == "auto" else int(c) for c in args.concurrency.split(",")]
    batch = args.batch if args.batch == "auto" else int(args.batch)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="ocrd-openai-bench-") as tmp:
        root = Path(tmp)
        if args.model is None:
            from tinymodel import build_tiny_deepseekocr
            args.model = build_tiny_deepseekocr(root / "tiny-deepseekocr")
        pngs = make_pages(root, args.pages, tuple(int(v) for v in args.page_size.split("x")))
        server = None
        if args.server_url is None:
            from mlxvlm_server import MlxVlmServer
            server = MlxVlmServer(args.model, root / "server.log")
            server.start(timeout=900)
            args.server_url = server.url
        model = {"path": str(args.model), "mode": args.mode, "max_tokens": args.max_tokens, "page_timeout_s": 3600}
        local = {"model": model, "pdf": {"dpi": 72}}
        try:
            for n in range(args.pairs):
                if not args.skip_in_process:
                    rows.append(_show(run(local, pngs, batch, UNGUARDED if args.no_guard else ENGINE,
                                          root / f"in-process-{n}", "in-process (mlx-vlm)")))
                for level in levels:
                    served = {"model": {**model, "engine": "openai", "url": args.server_url,
                                        "name": args.name or str(args.model), "concurrency": level},
                              "pdf": {"dpi": 72}}
                    rows.append(_show(run(served, pngs, level, SERVER_ENGINE, root / f"server-{level}-{n}",
                                          f"server c={level}")))
                _write(args, rows)   # after every round: a run cut off by a time limit keeps what it measured
        finally:
            if server is not None:
                server.kill()
    return 0


def _show(row: dict) -> dict:
    print(f"{row['name']:24} {row['pages']:>5} {row['seconds']:>8.2f} s {row['pages_per_s']:>7.3f} p/s "
          f"{row['tokens_per_s']:>9.1f} tok/s  prompt {row['mean_prompt_tokens']:>7} tok/page  "
          f"in flight {row.get('mean_in_flight', '')} limits {row.get('limits') or ''}", flush=True)
    return row


def _write(args: argparse.Namespace, rows: list[dict]) -> None:
    from ocrd.daemon.device import describe, detect_device

    device = detect_device()
    label = args.label or f"{device.backend}-{args.mode}-{Path(args.model).name}"
    medians = {name: statistics.median(r["pages_per_s"] for r in rows if r["name"] == name)
               for name in dict.fromkeys(r["name"] for r in rows)}
    local = medians.get("in-process (mlx-vlm)")
    summary = {"median_pages_per_s": medians,
               "server_over_in_process": {k: round(v / local, 3) for k, v in medians.items()
                                          if local and k != "in-process (mlx-vlm)"}}
    print("\n" + f"{'median of ' + str(args.pairs) + ' runs':24} {'pages/s':>9} {'vs in-process':>14}")
    for name, value in medians.items():
        ratio = summary["server_over_in_process"].get(name)
        print(f"{name:24} {value:>9.3f} {'' if ratio is None else f'{ratio:.2f}x':>14}")
    out = ROOT / "bench" / "results" / f"openai-{label}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "cpus": os.cpu_count(), "device": describe(device)},
        "model": str(args.model), "mode": args.mode, "max_tokens": args.max_tokens, "pages": args.pages,
        "page_size": args.page_size, "guard": not args.no_guard, "batch": args.batch,
        "concurrency": args.concurrency, "server_url": args.server_url, "runs": rows, "summary": summary,
        "commit": git("rev-parse", "--short", "HEAD")}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    sys.exit(main())
