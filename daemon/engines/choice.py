"""Which engine reads the pages: `[model] engine = "auto" | "mlx-vlm" | "rapidocr" | "vision" | "openai"`.

`auto` is DeepSeek-OCR through mlx-vlm on Metal or CUDA. On a CPU-only machine DeepSeek-OCR
takes minutes a page (README, "Engines"), so `auto` picks RapidOCR there when the `cpu` extra is
installed, and says how to force DeepSeek-OCR. On a Mac whose DeepSeek-OCR weights are not
downloaded yet (4 GB), `auto` reads with Apple Vision meanwhile when `ocrmac` is installed; the
supervisor downloads the model and rolls the workers over to DeepSeek-OCR once it is local. The supervisor resolves the choice once, at start,
and hands workers the factory string (engine.make_engine builds it in each worker).
"""

from __future__ import annotations

import importlib.util
import threading
from dataclasses import dataclass
from typing import Callable

import structlog

from ..config import ENGINE_CHOICES as CHOICES
from .base import DEFAULT_ENGINE
from .weights import resolve_model_path
from ..errors import OcrdError

log = structlog.get_logger()

FACTORIES = {
    "mlx-vlm": DEFAULT_ENGINE,
    "rapidocr": "ocrd.daemon.engines.rapidocr:RapidOcrEngine",
    "vision": "ocrd.daemon.engines.vision:VisionEngine",
    "openai": "ocrd.daemon.engines.openai:OpenAiEngine",
}
MODULES = {"rapidocr": "rapidocr", "vision": "ocrmac"}   # what each optional engine imports
LINE_ENGINES = ("rapidocr", "vision")   # small CPU/ANE models: no DeepSeek memory plan, one page a step
SERVER_ENGINES = ("openai",)   # a server elsewhere reads the pages: no local model, no device plan
LINE_ENGINE_BYTES = {"rapidocr": 800 * 10**6, "vision": 400 * 10**6}   # a worker's memory, with a page
FORCE_DEEPSEEK = 'set [model] engine = "mlx-vlm" to run DeepSeek-OCR on the CPU anyway (minutes a page)'


def warns_on_cpu(engine: str) -> bool:
    """Whether a CPU-only device makes this engine crawl (DeepSeek-OCR in-process does; a line
    engine is meant for the CPU, and a server engine decodes elsewhere)."""
    return engine not in LINE_ENGINES and engine not in SERVER_ENGINES


@dataclass(frozen=True)
class EngineChoice:
    name: str        # a FACTORIES key, or "custom" for a factory given by Settings (tests, benches)
    factory: str     # "module:callable" for engine.make_engine
    reason: str      # one line: why this engine
    interim: bool = False   # auto's stand-in while the DeepSeek-OCR model downloads


def installed(module: str) -> bool:
    """Whether `module` can be imported here (without importing it)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def choose_engine(configured: str, backend: str, *, installed: Callable[[str], bool] = installed,
                  model_local: Callable[[], bool] = lambda: True) -> EngineChoice:
    """The engine for `[model] engine = configured` on a device whose MLX backend is `backend`.
    Seams: `installed` says whether an optional engine's module is importable, `model_local`
    whether DeepSeek-OCR's weights are on this machine already."""
    if configured != "auto":
        if configured not in FACTORIES:
            raise ValueError(f"unknown engine {configured!r}; choose one of {', '.join(CHOICES)}")
        return EngineChoice(configured, FACTORIES[configured], "as configured ([model] engine)")
    if backend == "metal" and installed(MODULES["vision"]) and not model_local():
        return EngineChoice("vision", FACTORIES["vision"],
                            "auto: Apple Vision while the DeepSeek-OCR model downloads; DeepSeek-OCR "
                            "takes over once it is downloaded", interim=True)
    if backend in ("metal", "cuda"):
        return EngineChoice("mlx-vlm", FACTORIES["mlx-vlm"], f"auto: DeepSeek-OCR through mlx-vlm on {backend}")
    if installed(MODULES["rapidocr"]):
        return EngineChoice("rapidocr", FACTORIES["rapidocr"],
                            f"auto: no GPU, so RapidOCR (seconds a page on the CPU); {FORCE_DEEPSEEK}")
    return EngineChoice("mlx-vlm", FACTORIES["mlx-vlm"],
                        "auto: no GPU and the `cpu` extra (RapidOCR) is not installed, so DeepSeek-OCR "
                        "on the CPU (minutes a page); .venv/bin/pip install -e '.[cpu]' for RapidOCR")


def fetch_model(path: str, done: threading.Event, *,
                resolve: Callable[[str], object] = resolve_model_path) -> threading.Thread:
    """Download DeepSeek-OCR's weights in a background thread (an interim engine reads meanwhile);
    `done` is set once they are here. A failed download is logged; a restart tries again."""
    def fetch() -> None:
        try:
            resolve(path)
        except OcrdError as exc:
            log.warning("model_download_failed", model=path, error=str(exc),
                        note="staying on the interim engine; a restart tries again")
            return
        log.info("model_downloaded", model=path, note="rolling the workers over to DeepSeek-OCR")
        done.set()

    log.info("model_downloading", model=path)
    thread = threading.Thread(target=fetch, name="model-download", daemon=True)
    thread.start()
    return thread


def name_of(factory: str) -> str:
    """The engine name for a factory string ("custom" for one that is not built in)."""
    return next((name for name, f in FACTORIES.items() if f == factory), "custom")
