"""Continuous batching in a worker: the decode session it keeps full, and how full it keeps it.

A GPU is filled by sequences, not processes (DESIGN.md, "Batches"): one worker keeps up to its
in-flight limit of pages decoding in one `Session` (engines/base.py), a finished page leaves and the
next joins. `open_session` gives the engine's own batched session, or `SerialSession` (one page
per step through `generate`) for engines that can't batch. `InFlightTuner` chooses the limit by
measurement when `[workers] batch = "auto"`: batching gains differ by device and weights (8-bit
matmuls gain less on M1/M2 than on M3+), and nothing here can measure a Mac.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Callable, Hashable

from PIL import Image

from .engines.base import Engine, Finished, Session
from .errors import EngineError, OcrdError, first_line

TUNE_GAIN = 1.10          # a doubling must raise aggregate tokens/s by 10% to be kept
TUNE_WINDOW_S = 3.0       # tokens/s is measured over this long with the batch full


def open_session(engine: Engine, *, capacity: int, page_budget_s: float | None = None) -> Session:
    """The engine's batched session if it has one, else one page per step."""
    opener = getattr(engine, "open_session", None)
    if callable(opener):
        return opener(capacity=capacity, page_budget_s=page_budget_s)
    return SerialSession(engine)


class SerialSession:
    """Any Engine, one page per step: test engines (fake, crashing, hanging) and engines that
    can't batch. The supervisor's page timeout covers a step that hangs."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._pages: deque[tuple[Hashable, Image.Image, str, str, int]] = deque()
        self.generated = 0

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


class InFlightTuner:
    """The in-flight limit, tuned by measurement: start at `start`, double while aggregate
    generated tokens/s rises by TUNE_GAIN per doubling (up to `cap`, what memory allows), then
    settle on the best level seen. Only windows with the batch full count (a queue that ran dry
    says nothing about a bigger batch). `fixed` (a configured batch) never moves."""

    def __init__(self, start: int, cap: int, *, fixed: bool = False, window_s: float = TUNE_WINDOW_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.cap = max(cap, 1)
        self.limit = min(max(start, 1), self.cap)
        self.settled = fixed or self.limit >= self.cap
        self.window_s = window_s
        self.clock = clock
        self.best: tuple[int, float] | None = None    # (limit, tokens/s)
        self._since: float | None = None
        self._tokens = 0

    def observe(self, tokens: int, in_flight: int) -> None:
        """After a step that generated `tokens` with `in_flight` pages in the session."""
        if self.settled:
            return
        now = self.clock()
        if in_flight < self.limit:
            self._since, self._tokens = None, 0
            return
        if self._since is None:
            self._since, self._tokens = now, 0
            return
        self._tokens += tokens
        if now - self._since >= self.window_s:
            self._decide(self._tokens / (now - self._since))
            self._since, self._tokens = None, 0

    def hold(self) -> None:
        """Memory says no more: settle where the best measurement was (or here)."""
        if self.best is not None:
            self.limit = self.best[0]
        self.settled = True

    def _decide(self, rate: float) -> None:
        if self.best is None or rate >= self.best[1] * TUNE_GAIN:
            self.best = (self.limit, rate)
            if self.limit < self.cap:
                self.limit = min(self.limit * 2, self.cap)
                return
        self.limit = self.best[0]
        self.settled = True
