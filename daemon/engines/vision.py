"""Apple's Vision framework (through `ocrmac`, on pyobjc): text recognition on a Mac's Neural
Engine, nothing to download. `engine = "vision"`; macOS only.

Vision returns lines with normalised boxes whose origin is the bottom left; layout.py turns them
into markdown like RapidOCR's. The recogniser is a seam: tests pass a fake, since nothing here can
run Vision (the real path is NOT run by this repository's tests).
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Callable

from ..config import ModelConfig
from ..errors import ModelUnavailable
from .layout import Box, LineEngine

if TYPE_CHECKING:
    from PIL import Image


# (text, confidence, (x, y, width, height)): Vision's normalised box, origin bottom left
Observation = tuple[str, float, tuple[float, float, float, float]]
Recognizer = Callable[["Image.Image"], list[Observation]]
MIN_CONFIDENCE = 0.0


def ocrmac_recognizer() -> Recognizer:
    """The real recogniser: accurate recognition level with language correction, through ocrmac.
    ModelUnavailable off macOS or without ocrmac."""
    if sys.platform != "darwin":
        raise ModelUnavailable("the vision engine needs macOS (Apple's Vision framework)")
    try:
        from ocrmac import ocrmac
    except ImportError:
        raise ModelUnavailable("the vision engine needs ocrmac: .venv/bin/pip install ocrmac") from None

    def recognize(image: Image.Image) -> list[Observation]:
        # ocrmac's OCR asks Vision for VNRequestTextRecognitionLevelAccurate with language
        # correction on (usesLanguageCorrection) unless told otherwise
        return list(ocrmac.OCR(image, recognition_level="accurate").recognize())

    return recognize


class VisionEngine(LineEngine):
    """Vision loaded once per worker (the recogniser); each image read to markdown (layout.LineEngine)."""

    name = "Vision"
    models = "Apple Vision (VNRecognizeTextRequest, accurate level)"

    def __init__(self, model: ModelConfig, *, recognizer: Callable[[], Recognizer] = ocrmac_recognizer) -> None:
        self.config = model
        self._make = recognizer
        self.recognize: Recognizer | None = None

    def load(self) -> None:
        if self.recognize is None:
            self.recognize = self._make()

    def find_boxes(self, image: Image.Image) -> list[Box]:
        width, height = image.size
        return [vision_box(o, width, height) for o in self.recognize(image) if o[1] >= MIN_CONFIDENCE]


def vision_box(observation: Observation, width: int, height: int) -> Box:
    """A Vision observation as a layout Box in pixels, origin top left."""
    text, score, (x, y, w, h) = observation
    return Box(x * width, (1 - y - h) * height, (x + w) * width, (1 - y) * height, text, score=score)
