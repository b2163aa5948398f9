"""Test engines, passed through the engine seam as factory strings such as "engines:FakeEngine".

Each is a callable(ModelConfig) -> Engine. A worker process receives only the factory string and
the ModelConfig, so behaviour is configured through ModelConfig.path ("slow:1.5", "fake:tag").
`tests/` is on pytest's pythonpath; a worker spawned outside pytest needs PYTHONPATH=tests too.
"""

from __future__ import annotations

import os
import threading
import time

from PIL import Image

from ocrd.daemon.config import ModelConfig
from ocrd.daemon.engines.base import PageResult
from ocrd.daemon.errors import EngineError, ModelUnavailable


def _arg(model: ModelConfig, default: str = "") -> str:
    """The part of model.path after 'name:' ('slow:1.5' -> '1.5')."""
    _, sep, rest = model.path.partition(":")
    return rest if sep else default


class FakeEngine:
    """Deterministic text per image: 'page <w>x<h>' (plus ' <tag>' if path is 'fake:<tag>')."""

    def __init__(self, model: ModelConfig):
        self.model = model
        self.loaded = False
        self.calls = 0

    def load(self) -> None:
        self.loaded = True

    def _text(self, image: Image.Image) -> str:
        tag = _arg(self.model)
        return f"page {image.width}x{image.height}" + (f" {tag}" if tag else "")

    def generate(self, images: list[Image.Image], prompt: str, *, mode: str,
                 max_tokens: int) -> list[PageResult]:
        self.calls += 1
        out = []
        for image in images:
            text = self._text(image)
            out.append(PageResult(text=text, prompt_tokens=len(prompt.split()) + 1,
                                  generation_tokens=len(text.split()), seconds=0.001,
                                  finish_reason="stop", peak_memory_bytes=1 << 20))
        return out


class CrashingEngine(FakeEngine):
    """Loads fine; every generate raises EngineError."""

    def generate(self, images, prompt, *, mode, max_tokens):
        raise EngineError("crashing engine: generate always fails")


class DyingEngine(FakeEngine):
    """Loads fine; every generate ends the process at once (a native crash: a segfault in a kernel)."""

    def generate(self, images, prompt, *, mode, max_tokens):
        os._exit(1)


class HangingEngine(FakeEngine):
    """Loads fine; generate never returns (a sleep loop, so signals still get through)."""

    def generate(self, images, prompt, *, mode, max_tokens):
        while True:
            time.sleep(0.05)


class SlowEngine(FakeEngine):
    """Like FakeEngine but each generate call takes `slow:<seconds>` (default 1.0) per image."""

    def generate(self, images, prompt, *, mode, max_tokens):
        delay = float(_arg(self.model, "1.0"))
        deadline = time.monotonic() + delay * len(images)
        while (left := deadline - time.monotonic()) > 0:
            time.sleep(min(left, 0.05))
        return super().generate(images, prompt, mode=mode, max_tokens=max_tokens)


class UnloadableEngine(FakeEngine):
    """load() raises ModelUnavailable, as the real engine does for a missing model."""

    def load(self) -> None:
        raise ModelUnavailable(f"model {self.model.path} is unavailable (test engine)")


class PidEngine(FakeEngine):
    """Text names the process that produced it ('page <w>x<h> pid <pid>'): shows which worker ran a page."""

    def _text(self, image: Image.Image) -> str:
        return f"page {image.width}x{image.height} pid {os.getpid()}"


class PickyEngine(FakeEngine):
    """Has CPU preprocessing (run on the worker's front threads), which refuses pages over twice
    as tall as wide; notes the threads it ran on."""

    def __init__(self, model: ModelConfig):
        super().__init__(model)
        self.threads: set[str] = set()

    def preprocess(self, image: Image.Image, prompt: str, mode: str) -> Image.Image:
        self.threads.add(threading.current_thread().name)
        if image.height > 2 * image.width:
            raise ValueError("tall pages are refused by this test engine")
        return image


class AheadEngine(FakeEngine):
    """Counts pages preprocessed and pages generated: the most prepared ahead of the engine."""

    def __init__(self, model: ModelConfig):
        super().__init__(model)
        self.prepared = self.generated = self.most_ahead = 0
        self._lock = threading.Lock()

    def preprocess(self, image: Image.Image, prompt: str, mode: str) -> Image.Image:
        with self._lock:
            self.prepared += 1
            self.most_ahead = max(self.most_ahead, self.prepared - self.generated)
        return image

    def generate(self, images, prompt, *, mode, max_tokens):
        with self._lock:
            self.generated += len(images)
        return super().generate(images, prompt, mode=mode, max_tokens=max_tokens)
