"""Pipeline benchmark: does the worker keep a GPU's batch full? Measured here, without a GPU.

    .venv/bin/python bench/pipeline.py [--pages 256] [--batch 64] [--tokens 512] [--step-ms 27]
                                       [--prefill-ms 20] [--page-size 1700x2200] [--label NAME]

A paced engine stands in for the GPU at the engine seam: its session behaves like mlx-vlm's
BatchGenerator with prefill_batch_size 1 (one waiting page joins per step, at --prefill-ms extra),
each step takes --step-ms whatever the batch holds (decoding is memory-bound: the H200 took ~27 ms a
step at 64 pages), it sleeps rather than computes (an MLX eval lets go of the GIL too), and each page
ends after exactly --tokens tokens. Preparing a page does the CPU part of the real one (resize to
the mode's size and normalise). So the only thing measured is ocrd's pipeline: ingest, claims,
rendering, admission and stores, against the same engine fed from memory ("bare").

  bare:    pages rendered and preprocessed beforehand, added to the paced session as slots free (the ceiling);
  daemon:  the whole daemon (bench/batch.py's drop -> outbox) on the paced engine.
Prints a table, writes bench/results/pipeline-<label>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Hashable

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "bench")]

from batch import _row, _show, daemon_batch, make_pages  # noqa: E402
from ocrd.daemon.engines.base import Finished, PageResult  # noqa: E402
from procs import git  # noqa: E402

PACE = {"step_s": 0.027, "prefill_s": 0.020}   # set from the command line; workers read the env
SIDE = 640                                      # small mode's image size


def _pace() -> dict:
    return json.loads(os.environ.get("OCRD_BENCH_PACE", json.dumps(PACE)))


class PacedEngine:
    """The engine seam's batched side (`open_session`), paced like a GPU."""

    def __init__(self, model) -> None:
        self.model = model

    def load(self) -> None:
        pass

    def preprocess(self, image: Image.Image, prompt: str, mode: str) -> np.ndarray:
        """What the processor does on the CPU (on the worker's front threads)."""
        pixels = np.asarray(image.convert("RGB").resize((SIDE, SIDE), Image.BICUBIC), dtype=np.float32)
        return (pixels / 255.0 - 0.5) / 0.5

    def open_session(self, *, capacity: int, page_budget_s: float | None = None) -> PacedSession:
        return PacedSession(capacity, **_pace())

    def generate(self, images, prompt, *, mode, max_tokens):   # unused: sessions only
        raise NotImplementedError


class PacedSession:
    ahead = 0      # takes no pages beyond its limit (engines/base.py Session)

    def __init__(self, capacity: int, *, step_s: float, prefill_s: float) -> None:
        self.capacity, self.step_s, self.prefill_s = capacity, step_s, prefill_s
        self._waiting: list[tuple[Hashable, int]] = []
        self._active: dict[Hashable, list] = {}     # key -> [tokens so far, max_tokens, started]
        self.generated = 0

    def __len__(self) -> int:
        return len(self._waiting) + len(self._active)

    def add(self, key, prepared: np.ndarray, *, prompt: str, mode: str, max_tokens: int) -> Finished | None:
        self._waiting.append((key, max_tokens))
        return None

    def step(self) -> list[Finished]:
        pause = self.step_s
        if self._waiting and len(self._active) < self.capacity:
            key, max_tokens = self._waiting.pop(0)
            self._active[key] = [0, max_tokens, time.perf_counter()]
            pause += self.prefill_s
        time.sleep(pause)
        done = []
        for key, page in list(self._active.items()):
            page[0] += 1
            self.generated += 1
            if page[0] >= page[1]:
                del self._active[key]
                done.append(Finished(key, PageResult(text=f"page {key}", prompt_tokens=256,
                                                     generation_tokens=page[0], finish_reason="length",
                                                     seconds=time.perf_counter() - page[2])))
        return done

    def cancel(self, key) -> None:
        self._active.pop(key, None)

    def close(self) -> None:
        self._waiting.clear()
        self._active.clear()


def bare(images: list[Image.Image], batch: int, tokens: int) -> dict:
    session = PacedSession(batch, **PACE)
    engine = PacedEngine(None)
    pending = [(key, engine.preprocess(image, "", "small")) for key, image in enumerate(images)]
    started = time.perf_counter()
    while pending or len(session):
        while pending and len(session) < batch:
            key, image = pending.pop()
            session.add(key, image, prompt="", mode="small", max_tokens=tokens)
        session.step()
    return _row("bare paced session", batch, len(images), time.perf_counter() - started,
                session.generated)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=256)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--step-ms", type=float, default=27.0)
    parser.add_argument("--prefill-ms", type=float, default=20.0)
    parser.add_argument("--page-size", default="1700x2200")
    parser.add_argument("--label", default="cpu")
    args = parser.parse_args()
    PACE.update(step_s=args.step_ms / 1000, prefill_s=args.prefill_ms / 1000)
    os.environ["OCRD_BENCH_PACE"] = json.dumps(PACE)
    import logging

    import structlog
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    size = tuple(int(v) for v in args.page_size.split("x"))
    with tempfile.TemporaryDirectory(prefix="ocrd-pipeline-") as tmp:
        root = Path(tmp)
        pngs = make_pages(root, args.pages, size)
        images = [Image.open(p).convert("RGB") for p in pngs]
        config = {"model": {"path": str(root), "mode": "small", "max_tokens": args.tokens,
                            "page_timeout_s": 3600},
                  "workers": {"memory_budget": "64GB"}}   # room for the batch asked for
        (root / "config.json").write_text("{}")   # a model folder as the config expects; never loaded
        rows = [_show(bare(images, args.batch, args.tokens)),
                _show(daemon_batch(config, pngs, args.batch, "pipeline:PacedEngine", root / "daemon"))]
    ratio = round(rows[1]["pages_per_s"] / rows[0]["pages_per_s"], 3)
    print(f"daemon / bare = {ratio}")
    out = ROOT / "bench" / "results" / f"pipeline-{args.label}.json"
    out.write_text(json.dumps({
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"), "cpus": os.cpu_count(),
        "pace": PACE, "pages": args.pages, "tokens": args.tokens, "page_size": args.page_size,
        "runs": rows, "daemon / bare": ratio, "commit": git("rev-parse", "--short", "HEAD")}, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
