"""Where the decode thread's host time goes, on the model alone (no daemon): a decode step of 64
pages in flight and a page's image encoding, each split into graph build (Python), launch
(`mx.async_eval`: the backend encodes the kernels on this thread) and the wait for the device.

    .venv/bin/python bench/host_time.py --model DIR [--batch 64] [--context 800] [--steps 40] [--label NAME]

Rows: `decode, one at a time` builds, launches and waits for each step; `decode, pipelined` builds
step n+1 while the device runs step n (as mlx-vlm's BatchGenerator does), so its ms/step is the
loop's real pace, and if it is close to build + launch the loop is bound by the host, not the
device. `... mlp compiled` has each decoder layer's MLP/MoE compiled (mx.compile, one trace per
batch size: the first step's cost is shown apart). `encode <mode>` is one 1700x2200 page's
`deepseek_inputs.embed` with the image encoders plain or compiled. Prints a table, writes
bench/results/host-time-<label>.json. Meant for the GPU machine (../shared/gpu/); on this CPU the
full-size model's steps take seconds.
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

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from ocrd.daemon.engines.deepseek_inputs import embed, image_encoder, model_inputs, page_views  # noqa: E402
from procs import git, machine  # noqa: E402

PROMPT = "<image>\n<|grounding|>Convert the document to markdown."


class CompiledMlp:
    """A decoder layer's MLP/MoE compiled for decode steps (one token a page); prefill runs plain."""

    def __init__(self, mlp) -> None:
        import mlx.core as mx

        self.mlp, self.compiled = mlp, mx.compile(mlp.__call__)

    def __call__(self, x):
        return self.compiled(x) if x.shape[1] == 1 else self.mlp(x)


def decode_rows(model, batch: int, context: int, steps: int, label: str) -> list[dict]:
    import mlx.core as mx
    from mlx_vlm.models.cache import make_prompt_cache

    lm = model.language_model
    cache = make_prompt_cache(lm)
    rng = np.random.default_rng(0)
    mx.eval(lm(mx.array(rng.integers(100, 1000, (batch, context))), cache=cache).logits,
            [c.state for c in cache])

    def step(tokens):
        return mx.argmax(lm(tokens[:, None], cache=cache).logits[:, -1, :], axis=-1)

    tokens = mx.array(rng.integers(100, 1000, (batch,)))
    first = time.perf_counter()
    mx.eval(step(tokens))
    first = time.perf_counter() - first
    build, launch, total = [], [], []
    for _ in range(steps):
        t0 = time.perf_counter()
        y = step(tokens)
        t1 = time.perf_counter()
        mx.async_eval(y)
        t2 = time.perf_counter()
        mx.eval(y)
        build.append(t1 - t0), launch.append(t2 - t1), total.append(time.perf_counter() - t0)
    one = _row(f"decode, one at a time{label}", build, launch, total, first_s=round(first, 3))
    build, launch = [], []
    y = step(tokens)
    mx.async_eval(y)
    started = time.perf_counter()
    for _ in range(steps):
        t0 = time.perf_counter()
        nxt = step(y)
        t1 = time.perf_counter()
        mx.async_eval(nxt)
        build.append(t1 - t0), launch.append(time.perf_counter() - t1)
        y.item() if batch == 1 else y.tolist()   # the loop reads the tokens back, as BatchGenerator does
        y = nxt
    mx.eval(y)
    pace = (time.perf_counter() - started) / steps
    return [one, _row(f"decode, pipelined{label}", build, launch, [pace])]


def encode_rows(model, processor, mode: str) -> list[dict]:
    import mlx.core as mx

    image = Image.fromarray(np.random.default_rng(1).integers(0, 255, (2200, 1700, 3), dtype=np.uint8))
    views = page_views(processor, image, PROMPT, mode)
    rows = []
    for compiled in (False, True):
        encoder = image_encoder(model, compiled=compiled)
        build, launch, total = [], [], []
        for n in range(6):
            inputs = model_inputs(views, processor)
            mx.eval(inputs)
            t0 = time.perf_counter()
            e = embed(model, views, inputs, encoder)
            t1 = time.perf_counter()
            mx.async_eval(e)
            t2 = time.perf_counter()
            mx.eval(e)
            if n:   # the first traces (compiled) and warms the kernels
                build.append(t1 - t0), launch.append(t2 - t1), total.append(time.perf_counter() - t0)
        rows.append(_row(f"encode {mode}, {'compiled' if compiled else 'plain'}", build, launch, total))
    return rows


def _row(name: str, build: list, launch: list, total: list, **extra) -> dict:
    ms = lambda values: round(statistics.median(values) * 1e3, 2)   # noqa: E731
    row = {"name": name, "build_ms": ms(build), "launch_ms": ms(launch), "total_ms": ms(total), **extra}
    print(f"{name:36} build {row['build_ms']:>8} ms  launch {row['launch_ms']:>8} ms  "
          f"{'pace' if 'pipelined' in name else 'total'} {row['total_ms']:>8} ms"
          + (f"  first {extra['first_s']} s" if extra else ""), flush=True)
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--context", type=int, default=800)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--label", default="gpu")
    args = parser.parse_args()

    from mlx_vlm import load

    model, processor = load(str(args.model))
    rows = encode_rows(model, processor, "small") + encode_rows(model, processor, "gundam")
    rows += decode_rows(model, args.batch, args.context, args.steps, "")
    for layer in model.language_model.model.layers:
        layer.mlp = CompiledMlp(layer.mlp)
    rows += decode_rows(model, args.batch, args.context, args.steps, ", mlp compiled")
    out = ROOT / "bench" / "results" / f"host-time-{args.label}.json"
    out.write_text(json.dumps({
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": machine(device=True),
        "model": str(args.model), "batch": args.batch, "context": args.context, "steps": args.steps,
        "rows": rows, "commit": git("rev-parse", "--short", "HEAD")}, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
