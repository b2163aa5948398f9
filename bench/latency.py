"""Latency of a single drop into an idle daemon: what a user waits for one scanned page.

    .venv/bin/python bench/latency.py [--model DIR] [--mode tiny] [--max-tokens 16] [--page-size 612x792]
        [--drops 8] [--idle-s 3] [--before CHECKOUT --pairs 2] [--label NAME]

The whole daemon (bench/batch.py's) with its model loaded. Each round leaves it --idle-s with
nothing to do (an idle worker's poll of the queue backs off to 1 s meanwhile), drops one PNG and
times, from the drop, its job queued (the ledger's created_at), its decode start (its store time
less its decode seconds) and its outbox file (the file's mtime). Medians over the drops. Without
--model: the tiny random-weight model on this CPU. With --before (a checkout of another commit, e.g.
`git worktree add /tmp/before HEAD~1`), daemons of that code and of this one take turns, --pairs
times (before, this, before, this, ...), and the medians are per side.
Prints a table, writes bench/results/latency-<label>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "bench")]

from batch import ENGINE, _spans, _wait, make_pages, start_daemon, stop_daemon  # noqa: E402
from ocrd.daemon.modes import MODES  # noqa: E402
from procs import git, machine  # noqa: E402


def drop_rounds(config: dict, pngs: list[Path], idle_s: float, root: Path, code: Path | None = None) -> list[dict]:
    """One daemon (of the checkout `code`, else this one); per PNG: idle for idle_s, drop it,
    wait for its outbox file."""
    path = os.environ.get("PYTHONPATH", "")
    if code is not None:   # `ocrd` imported from there: a folder holding a link named ocrd
        (root.parent / "before").mkdir(exist_ok=True)
        link = root.parent / "before" / "ocrd"
        if not link.exists():
            link.symlink_to(code.resolve())
        os.environ["PYTHONPATH"] = os.pathsep.join([str(link.parent), path])
    try:
        proc = start_daemon(config, 1, ENGINE, root)
    finally:
        os.environ["PYTHONPATH"] = path
    ledger, outbox = root / "state" / "ledger.db", root / "outbox"
    rounds = []
    try:
        for n, png in enumerate(pngs, 1):
            time.sleep(idle_s)   # the scenario itself: a daemon with nothing to do
            staged = root / png.name
            shutil.copyfile(png, staged)
            dropped_at = time.time()
            os.replace(staged, root / "inbox" / png.name)
            out = outbox / f"{png.stem}.md"
            _wait(out.exists, 300, f"{out.name}", proc, ledger)
            con = sqlite3.connect(ledger)
            try:
                (created,) = con.execute("SELECT created_at FROM jobs WHERE id = ?", (n,)).fetchone()
                decoded = max(_spans(con))[0]   # this round's page: the latest to start
            finally:
                con.close()
            row = {"queued_s": round(datetime.fromisoformat(created).timestamp() - dropped_at, 3),
                   "decode_start_s": round(decoded - dropped_at, 3),
                   "outbox_s": round(out.stat().st_mtime - dropped_at, 3)}
            rounds.append(row)
            print(f"{'before' if code else 'this'} drop {n:>2}: queued {row['queued_s']:6.3f} s  "
                  f"decoding {row['decode_start_s']:6.3f} s  outbox {row['outbox_s']:6.3f} s", flush=True)
    finally:
        stop_daemon(proc)
    return rounds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--mode", default="tiny", choices=list(MODES))
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--page-size", default="612x792")
    parser.add_argument("--drops", type=int, default=8)
    parser.add_argument("--idle-s", type=float, default=3.0)
    parser.add_argument("--before", type=Path, default=None, help="a checkout of the code to compare with")
    parser.add_argument("--pairs", type=int, default=2)
    parser.add_argument("--label", default=None)
    args = parser.parse_args()
    size = tuple(int(v) for v in args.page_size.split("x"))
    with tempfile.TemporaryDirectory(prefix="ocrd-latency-") as tmp:
        root = Path(tmp)
        if args.model is None:
            from tinymodel import build_tiny_deepseekocr
            args.model = build_tiny_deepseekocr(root / "tiny-deepseekocr")
        (root / "pages").mkdir()
        pngs = make_pages(root / "pages", args.drops, size)
        config = {"model": {"path": str(args.model), "mode": args.mode, "max_tokens": args.max_tokens,
                            "page_timeout_s": 600}}
        sides: dict[str, list[dict]] = {"this": []} if args.before is None else {"before": [], "this": []}
        for n in range(1 if args.before is None else args.pairs):
            for side, rounds in sides.items():
                rounds += drop_rounds(config, pngs, args.idle_s, root / f"daemon-{side}-{n}",
                                      args.before if side == "before" else None)
    medians = {side: {k: round(statistics.median(r[k] for r in rounds), 3) for k in rounds[0]}
               for side, rounds in sides.items()}
    for side, values in medians.items():
        print(f"medians, {side}: " + ", ".join(f"{k} {v}" for k, v in values.items()))
    label = args.label or f"cpu-{args.mode}"
    out = ROOT / "bench" / "results" / f"latency-{label}.json"
    out.write_text(json.dumps({
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": machine(),
        "model": str(args.model), "mode": args.mode, "max_tokens": args.max_tokens,
        "page_size": args.page_size, "idle_s": args.idle_s, "rounds": sides, "medians": medians,
        "before": args.before and git("-C", str(args.before), "rev-parse", "--short", "HEAD"),
        "commit": git("rev-parse", "--short", "HEAD")}, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
