"""Run `python -m mlx_vlm.server` with the request-thread fix the tests need (argv passes through).

mlx-vlm 0.7.10's server answers every DeepSeek-OCR image request with 500 "There is no
Stream(cpu, N) in current thread": the request thread's preprocessing (ResponseGenerator.
_cpu_preprocess) leaves unevaluated MLX arrays that the generation thread can't evaluate
(upstream mlx-vlm #1049, #1614). Evaluating them on the request thread makes it answer 200.
Drop this launcher once mlx-vlm fixes it upstream.
"""

from __future__ import annotations

import functools


def _patch() -> None:
    import mlx.core as mx
    from mlx_vlm.server.generation import ResponseGenerator

    preprocess = ResponseGenerator._cpu_preprocess

    @functools.wraps(preprocess)
    def evaluated(self, *args, **kwargs):
        inputs = preprocess(self, *args, **kwargs)
        mx.eval([v for v in _leaves(inputs) if isinstance(v, mx.array)])
        return inputs

    ResponseGenerator._cpu_preprocess = evaluated


def _leaves(value):
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (list, tuple)):
        for item in value:
            yield from _leaves(item)
    else:
        yield value


if __name__ == "__main__":
    _patch()
    from mlx_vlm.server.cli import main

    main()
