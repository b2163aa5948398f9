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


# The models inside the `rapidocr` wheel (no download at run time): PP-OCRv6's small detector and
# its small multilingual recogniser (Latin with accents, spaces between words, CJK). Measured
# against rapidocr-onnxruntime 1.4's PP-OCRv4 (English/Chinese, no accents, spaces dropped) in
# bench/results/accuracy-*.json and README's accuracy table.
MODELS = {"Det.ocr_version": "PP-OCRv6", "Det.model_type": "small",
          "Rec.ocr_version": "PP-OCRv6", "Rec.model_type": "small"}


class RapidOcrEngine(LineEngine):
    """RapidOCR loaded once per worker; each image read to markdown (layout.LineEngine)."""

    name = "RapidOCR"
    # Its confidence in OCRmyPDF's real scans and tests/textpages read upright: 0.976-1.0; upside
    # down: 0.58-0.75 (README, "Pages on their side or upside down").
    unsure = 0.85

    def __init__(self, model: ModelConfig, *, threads: int | None = None) -> None:
        self.config = model
        self.threads = threads or max(1, min(os.cpu_count() or 1, THREADS_PER_WORKER))
        self.ocr: Any = None

    @property
    def models(self) -> str:
        """What reads, for the `model_loaded` log line and `ocrd status`."""
        return (f"RapidOCR {_version()}: {MODELS['Det.ocr_version']} det {MODELS['Det.model_type']} + "
                f"rec {MODELS['Rec.model_type']} (onnxruntime)")

    def load(self) -> None:
        """Build the ONNX sessions once (idempotent); ModelUnavailable when the extra is missing."""
        if self.ocr is not None:
            return
        try:
            from rapidocr import ModelType, OCRVersion, RapidOCR
        except ImportError:
            raise ModelUnavailable(f"RapidOCR is not installed (the `cpu` extra): {CPU_EXTRA_FIX}") from None
        models = {k: (OCRVersion if k.endswith("version") else ModelType)(v) for k, v in MODELS.items()}
        params = {**models, "Global.log_level": "warning", "Global.use_cls": False,
                  "EngineConfig.onnxruntime.intra_op_num_threads": self.threads,
                  "EngineConfig.onnxruntime.inter_op_num_threads": 1}
        try:
            self.ocr = RapidOCR(params=params)
        except Exception as exc:
            raise ModelUnavailable(f"RapidOCR cannot be loaded: {first_line(exc, with_type=True)}") from None

    def find_boxes(self, image: Image.Image) -> list[Box]:
        import numpy as np
        from PIL import ImageOps

        # Contrast stretched first: on a grey, blurred scan the recogniser ran words together
        # (tests/textpages.py's noisy page: WER 14.8% as is, 1.3% stretched; clean pages and
        # OCRmyPDF's scans unchanged). Grey, so RapidOCR's BGR order does not matter.
        grey = np.asarray(ImageOps.autocontrast(image.convert("L"), cutoff=1))
        pixels = np.ascontiguousarray(np.repeat(grey[:, :, None], 3, axis=2))
        # No 180-degree line classifier: on upright pages it turned whole lines upside down
        # (a clean sans page lost a line to it: CER 12.5% with it, 2.2% without).
        # Word boxes let layout split a line the detector joined across a narrow column gutter.
        found = self.ocr(pixels, use_cls=False, return_word_box=True)
        if found.boxes is None:
            return []
        words = found.word_results or [()] * len(found.boxes)
        return [box_from_quad(quad, text, tuple(box_from_quad(q, t) for t, _, q in line if t.strip()), score)
                for quad, text, line, score in zip(found.boxes, found.txts, words, found.scores)]


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("rapidocr")
    except PackageNotFoundError:
        return "?"
