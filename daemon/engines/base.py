"""The engine seam: what a worker needs of a model, whatever reads the pages.

Workers get only a "module:callable" factory string and a ModelConfig (both picklable), so test
engines (tests/engines.py) come in through `make_engine`, never through patching. The engines:
mlxvlm.py (DeepSeek-OCR through mlx-vlm, the default), rapidocr.py and vision.py (line engines,
laid out by layout.py); choice.py picks one for `[model] engine`.
"""

from __future__ import annotations

import importlib
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Hashable, Protocol, Sequence

from ..config import ModelConfig
from ..errors import EngineError, OcrdError, first_line

if TYPE_CHECKING:
    from PIL import Image

DEFAULT_ENGINE = "ocrd.daemon.engines.mlxvlm:MlxVlmEngine"   # the factory string workers get by default
# Ledger meta key: what the workers read with, where an engine says (`models`: RapidOCR's
# models); empty for DeepSeek-OCR, which [model] path and mode name. `ocrd status` shows it.
ENGINE_MODELS = "engine_models"

# Repetition guard. A looping page otherwise burns max_tokens (8192 by default: minutes of
# decode). Thresholds are generous because OCR output repeats legitimately (table rules, dot
# leaders, empty <td></td> cells): a loop must cover the minimum span AND REPEAT_MIN_COPIES.
# The engine checks token ids, not text: mlx-vlm's streaming detokenizer holds text back until
# a space, so a loop without spaces ("<td></td><td></td>...") would never show up as text.
REPEAT_MIN_CHARS = 1200
REPEAT_MIN_TOKENS = 300       # ~1200 characters of markdown
REPEAT_MIN_COPIES = 6
REPEAT_WINDOW = 6000
REPEAT_CHECK_EVERY = 16       # tokens between checks: the check is O(window * units)


@dataclass
class PageResult:
    text: str
    prompt_tokens: int
    generation_tokens: int
    seconds: float
    finish_reason: str  # "stop" | "length" | "repetition"
    peak_memory_bytes: int = 0
    blocks: list = field(default_factory=list)   # output.blocks.Block: a line engine's lines;
                                                 # DeepSeek-OCR's come from its text (grounding)


@dataclass(frozen=True)
class Finished:
    """A page that left a decode session: its result, or the error that failed it alone."""
    key: Hashable
    result: PageResult | None = None
    error: OcrdError | None = None


class Session(Protocol):
    """Pages decoding together: add pages, step until they finish (`open_session`).
    `generated` counts the tokens generated so far (aggregate tokens/s, tuning). The worker sets
    `limit`, the most pages decoding at once (its tuner's); a session may take `ahead` pages
    beyond it, to start their work on the device while the others decode."""
    generated: int
    limit: int
    ahead: int

    def __len__(self) -> int: ...

    def add(self, key: Hashable, image: Image.Image, *, prompt: str, mode: str,
            max_tokens: int) -> Finished | None: ...

    def step(self) -> list[Finished]: ...

    def cancel(self, key: Hashable) -> None: ...

    def close(self) -> None: ...


class Engine(Protocol):
    """What a worker needs of a model. An engine may also offer `open_session(capacity=,
    page_budget_s=) -> Session` for continuous batching; `open_session` falls back to one
    page per step through `generate` for engines that don't (test engines)."""
    def load(self) -> None: ...

    def generate(self, images: list[Image.Image], prompt: str, *, mode: str,
                 max_tokens: int) -> list[PageResult]: ...


def make_engine(factory: str, model: ModelConfig) -> Engine:
    """Import `factory` ("module:callable") and call it with the model config."""
    module_name, sep, attr = factory.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"engine factory must look like 'module:callable', not {factory!r}")
    target: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        target = getattr(target, part)
    return target(model)


def find_repetition(text: Sequence, *, min_len: int = REPEAT_MIN_CHARS,
                    min_copies: int = REPEAT_MIN_COPIES, window: int = REPEAT_WINDOW) -> int | None:
    """Where the looping tail of `text` should be cut, or None if the tail does not loop.

    `text` is a str or a list of token ids. A loop is a unit of length p repeated back to back
    at the very end, covering at least max(min_len, min_copies * p) items. The returned index
    keeps everything before the loop plus ONE copy of the unit (a line legitimately written
    twice is not lost): the caller keeps `text[:index]`.
    """
    n = len(text)
    tail = text[-window:]
    for p in range(1, len(tail) // min_copies + 1):
        span = max(min_len, min_copies * p)
        if span > len(tail):
            break
        if tail[-1] != tail[-1 - p]:
            continue                     # cheap pre-check: most periods fail on the last item
        seg = tail[-span:]
        if seg[:-p] != seg[p:]:          # has period p  <=>  it equals itself shifted by p
            continue
        start = n - span
        while start > 0 and text[start - 1] == text[start - 1 + p]:
            start -= 1
        if isinstance(text, str):
            # The periodic run may begin mid-line ("\n| a |" rather than "| a |\n"): end the
            # kept copy at a line break when the unit holds one.
            newline = text.find("\n", start + p, start + 2 * p)
            if newline >= 0:
                return newline + 1
        return start + p
    return None


def preprocess(engine: Engine, image: Image.Image, prompt: str, mode: str) -> Any:
    """A page's CPU work before the engine sees it, on the worker's front threads (never the
    decode thread): an engine may offer `preprocess(image, prompt, mode)` (DeepSeek-OCR's views);
    others take the image as it is. What comes back goes to `Session.add`."""
    own = getattr(engine, "preprocess", None)
    return own(image, prompt, mode) if callable(own) else image


def open_session(engine: Engine, *, capacity: int, page_budget_s: float | None = None) -> Session:
    """The engine's batched session if it has one, else one page per step."""
    opener = getattr(engine, "open_session", None)
    if callable(opener):
        return opener(capacity=capacity, page_budget_s=page_budget_s)
    return SerialSession(engine)


class SerialSession:
    """Any Engine, one page per step: test engines (fake, crashing, hanging) and engines that
    can't batch. The supervisor's page timeout covers a step that hangs."""

    ahead = 0

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._pages: deque[tuple[Hashable, Image.Image, str, str, int]] = deque()
        self.generated = 0
        self.limit = 1

    def __len__(self) -> int:
        return len(self._pages)

    def add(self, key: Hashable, image: Image.Image, *, prompt: str, mode: str,
            max_tokens: int) -> Finished | None:
        self._pages.append((key, image, prompt, mode, max_tokens))
        return None

    def step(self) -> list[Finished]:
        key, image, prompt, mode, max_tokens = self._pages.popleft()
        try:
            [result] = self.engine.generate([image], prompt, mode=mode, max_tokens=max_tokens)
        except OcrdError as exc:
            return [Finished(key, error=exc)]
        except Exception as exc:   # an engine's surprise fails this page, not the worker
            return [Finished(key, error=EngineError(first_line(exc, with_type=True)))]
        self.generated += result.generation_tokens
        return [Finished(key, result=result)]

    def cancel(self, key: Hashable) -> None:
        self._pages = deque(p for p in self._pages if p[0] != key)

    def close(self) -> None:
        self._pages.clear()
