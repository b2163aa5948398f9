"""RapidOCR (PP-OCR detection + recognition as ONNX, weights inside the wheel): the CPU engine.

DeepSeek-OCR on MLX's CPU build takes minutes a page; RapidOCR reads a page in seconds on a few
cores. It finds text lines, not markdown: daemon/layout.py puts them in reading order. Install it
with the `cpu` extra (`pip install -e '.[cpu]'`). One page per engine call (batching.SerialSession);
the supervisor's page timeout and the worker's one-bad-page rule apply as to any engine.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

from .config import ModelConfig
from .engine import PageResult
from .errors import EngineError, ModelUnavailable, first_line
from .layout import Box, box_from_quad, to_markdown

if TYPE_CHECKING:
    from PIL import Image

CPU_EXTRA_FIX = ".venv/bin/pip install -e '.[cpu]'"
THREADS_PER_WORKER = 4        # device.CPU_CORES_PER_WORKER: the pool gives each worker this many cores


class RapidOcrEngine:
    """RapidOCR loaded once per worker; `generate` reads each image to markdown.

    max_tokens applies to words here (a page past it is cut and marked "length");
    generation_tokens counts the words written."""

    def __init__(self, model: ModelConfig, *, threads: int | None = None) -> None:
        self.config = model
        self.threads = threads or max(1, min(os.cpu_count() or 1, THREADS_PER_WORKER))
        self.ocr: Any = None

    def load(self) -> None:
        """Build the ONNX sessions once (idempotent); ModelUnavailable when the extra is missing."""
        if self.ocr is not None:
            return
        try:
            from rapidocr_onnxruntime import RapidOCR
        except ImportError:
            raise ModelUnavailable(f"RapidOCR is not installed (the `cpu` extra): {CPU_EXTRA_FIX}") from None
        try:
            self.ocr = RapidOCR(intra_op_num_threads=self.threads, inter_op_num_threads=1)
        except Exception as exc:
            raise ModelUnavailable(f"RapidOCR cannot be loaded: {first_line(exc, with_type=True)}") from None

    def generate(self, images: list[Image.Image], prompt: str, *, mode: str,
                 max_tokens: int) -> list[PageResult]:
        """One PageResult per image, in order (prompt and mode do not apply to RapidOCR)."""
        self.load()
        return [self._read(image, max_tokens) for image in images]

    def _read(self, image: Image.Image, max_tokens: int) -> PageResult:
        import numpy as np

        started = time.perf_counter()
        try:
            # RapidOCR takes OpenCV's BGR order for arrays
            pixels = np.ascontiguousarray(np.asarray(image.convert("RGB"))[:, :, ::-1])
            # No 180-degree line classifier: on upright pages it turned whole lines upside down
            # (a clean sans page lost a line to it: CER 12.5% with it, 2.2% without).
            found, _ = self.ocr(pixels, use_cls=False)
        except Exception as exc:
            raise EngineError(f"RapidOCR failed: {first_line(exc, with_type=True)}") from exc
        text = to_markdown([_box(item) for item in found or []])
        return finish_page(text, max_tokens, time.perf_counter() - started)


def finish_page(text: str, max_tokens: int, seconds: float) -> PageResult:
    """A PageResult for text read by a line-finding engine: cut at `max_tokens` words."""
    words = text.split()
    finish = "stop"
    if len(words) > max_tokens:
        text, finish = _first_words(text, max_tokens), "length"
        words = words[:max_tokens]
    return PageResult(text=text, prompt_tokens=0, generation_tokens=len(words), seconds=seconds,
                      finish_reason=finish)


def _first_words(text: str, n: int) -> str:
    """`text` up to the end of its n-th word, line breaks kept."""
    seen, end = 0, 0
    for line_end, line in _lines_with_ends(text):
        count = len(line.split())
        if seen + count >= n:
            words = line.split()[: n - seen]
            return (text[:end] + " ".join(words)).rstrip()
        seen, end = seen + count, line_end
    return text


def _lines_with_ends(text: str) -> list[tuple[int, str]]:
    out, pos = [], 0
    for line in text.splitlines(keepends=True):
        pos += len(line)
        out.append((pos, line))
    return out


def _box(item: list[Any]) -> Box:
    """A detection (quad, text, score) as a layout Box."""
    return box_from_quad(item[0], item[1])
