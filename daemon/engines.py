"""Which engine reads the pages: `[model] engine = "auto" | "mlx-vlm" | "rapidocr" | "vision"`.

`auto` is DeepSeek-OCR through mlx-vlm on Metal or CUDA. On a CPU-only machine DeepSeek-OCR
takes minutes a page (README, "Engines"), so `auto` picks RapidOCR there when the `cpu` extra is
installed, and says how to force DeepSeek-OCR. The supervisor resolves the choice once, at start,
and hands workers the factory string (engine.make_engine builds it in each worker).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Callable

from .config import ENGINE_CHOICES as CHOICES
from .engine import DEFAULT_ENGINE

FACTORIES = {
    "mlx-vlm": DEFAULT_ENGINE,
    "rapidocr": "ocrd.daemon.rapidocr_engine:RapidOcrEngine",
    "vision": "ocrd.daemon.vision_engine:VisionEngine",
}
MODULES = {"rapidocr": "rapidocr_onnxruntime", "vision": "ocrmac"}   # what each optional engine imports
LINE_ENGINES = ("rapidocr", "vision")   # small CPU/ANE models: no DeepSeek memory plan, one page a step
LINE_ENGINE_BYTES = {"rapidocr": 800 * 10**6, "vision": 400 * 10**6}   # a worker's memory, with a page
FORCE_DEEPSEEK = 'set [model] engine = "mlx-vlm" to run DeepSeek-OCR on the CPU anyway (minutes a page)'


@dataclass(frozen=True)
class EngineChoice:
    name: str        # a FACTORIES key, or "custom" for a factory given by Settings (tests, benches)
    factory: str     # "module:callable" for engine.make_engine
    reason: str      # one line: why this engine


def installed(module: str) -> bool:
    """Whether `module` can be imported here (without importing it)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def choose_engine(configured: str, backend: str, *,
                  installed: Callable[[str], bool] = installed) -> EngineChoice:
    """The engine for `[model] engine = configured` on a device whose MLX backend is `backend`.
    `installed` says whether an optional engine's module is importable (a seam for tests)."""
    if configured != "auto":
        if configured not in FACTORIES:
            raise ValueError(f"unknown engine {configured!r}; choose one of {', '.join(CHOICES)}")
        return EngineChoice(configured, FACTORIES[configured], "as configured ([model] engine)")
    if backend in ("metal", "cuda"):
        return EngineChoice("mlx-vlm", FACTORIES["mlx-vlm"], f"auto: DeepSeek-OCR through mlx-vlm on {backend}")
    if installed(MODULES["rapidocr"]):
        return EngineChoice("rapidocr", FACTORIES["rapidocr"],
                            f"auto: no GPU, so RapidOCR (seconds a page on the CPU); {FORCE_DEEPSEEK}")
    return EngineChoice("mlx-vlm", FACTORIES["mlx-vlm"],
                        "auto: no GPU and the `cpu` extra (RapidOCR) is not installed, so DeepSeek-OCR "
                        "on the CPU (minutes a page); .venv/bin/pip install -e '.[cpu]' for RapidOCR")


def name_of(factory: str) -> str:
    """The engine name for a factory string ("custom" for one that is not built in)."""
    return next((name for name, f in FACTORIES.items() if f == factory), "custom")
