"""RapidOCR (PP-OCR detection + recognition as ONNX, weights inside the wheel): the CPU engine.

DeepSeek-OCR on MLX's CPU build takes minutes a page; RapidOCR reads a page in seconds on a few
cores. It finds text lines, not markdown: layout.py puts them in reading order. Install it
with the `cpu` extra (`pip install -e '.[cpu]'`). One page per engine call (engines/base.py SerialSession);
the supervisor's page timeout and the worker's one-bad-page rule apply as to any engine.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from ..config import ModelConfig
from ..errors import ModelUnavailable, first_line
from .layout import Box, LineEngine, box_from_quad

if TYPE_CHECKING:
    from PIL import Image

CPU_EXTRA_FIX = ".venv/bin/pip install -e '.[cpu]'"
THREADS_PER_WORKER = 4        # device.CPU_CORES_PER_WORKER: the pool gives each worker this many cores


class RapidOcrEngine(LineEngine):
    """RapidOCR loaded once per worker; each image read to markdown (layout.LineEngine)."""

    name = "RapidOCR"

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

    def find_boxes(self, image: Image.Image) -> list[Box]:
        import numpy as np

        # RapidOCR takes OpenCV's BGR order for arrays
        pixels = np.ascontiguousarray(np.asarray(image.convert("RGB"))[:, :, ::-1])
        # No 180-degree line classifier: on upright pages it turned whole lines upside down
        # (a clean sans page lost a line to it: CER 12.5% with it, 2.2% without).
        # Word boxes let layout split a line the detector joined across a narrow column gutter.
        found, _ = self.ocr(pixels, use_cls=False, return_word_box=True)
        return [_box(item) for item in found or []]


def _box(item: list[Any]) -> Box:
    """A detection (quad, text, score[, piece quads, piece texts, ...]) as a layout Box with its
    words: RapidOCR places Latin text a character at a time, spaces included."""
    line = box_from_quad(item[0], item[1])
    if len(item) < 5 or not item[3] or len(item[3]) != len(item[4]):
        return line
    words: list[list[Box]] = [[]]
    for quad, piece in zip(item[3], item[4]):
        if piece.strip():
            words[-1].append(box_from_quad(quad, piece))
        elif words[-1]:
            words.append([])
    joined = tuple(Box(min(c.x0 for c in w), min(c.y0 for c in w), max(c.x1 for c in w),
                       max(c.y1 for c in w), "".join(c.text for c in w)) for w in words if w)
    return Box(line.x0, line.y0, line.x1, line.y1, line.text, joined)
