"""The in-flight limit a worker keeps its decode session at, tuned by measurement.

A GPU is filled by sequences, not processes (DESIGN.md, "Batches"): one worker keeps up to its
in-flight limit of pages decoding in one session. `InFlightTuner` chooses the limit when
`[workers] batch = "auto"`: batching gains differ by device and weights (8-bit matmuls gain less
on M1/M2 than on M3+), and nothing here can measure a Mac.
"""

from __future__ import annotations

import time
from typing import Callable

TUNE_GAIN = 1.10          # a doubling must raise aggregate tokens/s by 10% to be kept
TUNE_WINDOW_S = 3.0       # tokens/s is measured over this long with the batch full


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
