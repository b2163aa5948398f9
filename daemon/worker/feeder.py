"""The worker's front: pages claimed, rendered and preprocessed ahead of the decoder.

Claims (one at a time, each page with a lease) and each page's front work (render, then the
engine's CPU preprocessing: engines/base.py `preprocess`) run on the front pool, sized from the
cores. Prepared pages wait in `ready`, in claim order, until the session has a free slot. At most
`ahead` pages wait beyond the session's free slots, so a drop of 1,000 pages never prepares 1,000.
The feeder also owns `ocrd pause`, the idle backoff and a full disk's hold on claims.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ocrd.ledger import ClaimedPage, Ledger, LedgerUnreachable

from .. import files
from ..config import Config
from ..diskspace import RoomWatch
from ..engines.base import Engine, preprocess
from ..errors import EngineError, InputError, OcrdError, first_line
from ..logs import Outage
from ..output.delivery import fetched_dir
from ..protocol import IDLE_WAIT_S
from ..render import render_page

from .recorder import LEDGER_RETRY_S, Recorder

AHEAD = 8                  # pages prepared beyond the session's free slots (a prefill group's worth)
CLAIM_MAX = 16             # pages claimed at once; each is prepared on its own, so the first joins
                           # the batch while the others are still in the pool
PAUSE_CHECK_S = 1.0        # `ocrd pause` is read from the ledger at most this often


def front_threads(cores: int) -> int:
    """The front pool's threads: half the (performance) cores, 2 to 8. Rendering and PIL's
    resizing let go of the GIL; more threads than that only contend with the decode loop."""
    return max(2, min(8, cores // 2))


@dataclass
class Prepared:
    """A page ready for the session: what the engine's preprocessing made of its image."""
    page: ClaimedPage
    input: Any                 # engines/base.py preprocess's result (an image for most engines)
    size: tuple[int, int]      # the rendered image's, which the page's boxes refer to
    prompt: str
    mode: str


Preparing = Future[Prepared | None]    # None: the page could not be prepared (failed already)


class Feeder:
    """`fill(free)` claims so that `free` slots plus AHEAD pages are in hand, `collect()` takes in
    a claim that came back, `take()` gives the next prepared page in claim order."""

    def __init__(self, *, worker_id: str, ledger: Ledger, engine: Engine, recorder: Recorder,
                 config: Callable[[], Config], prompt_and_mode: Callable[[ClaimedPage], tuple[str, str]],
                 lease_s: float, threads: int, outage: Outage, log: Any,
                 idle_wait_s: tuple[float, float] = IDLE_WAIT_S) -> None:
        self.worker_id, self.ledger, self.engine, self.recorder = worker_id, ledger, engine, recorder
        self.config, self.prompt_and_mode, self.lease_s = config, prompt_and_mode, lease_s
        self.outage, self.log = outage, log
        self.claimed = 0               # pages claimed, against max_pages_per_worker
        self.claim_lost = False        # the last claim met an outage: its answer may be lost
        self.ready: deque[Preparing] = deque()
        self._claim: Future[list[Preparing]] | None = None
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="front")
        self._fetching = threading.Lock()
        self.idle_wait_s = idle_wait_s   # (first, longest): a document queued here nudges at once
        self._idle_s = idle_wait_s[0]
        self.claim_after = 0.0         # an empty queue is not asked again before this
        self._paused: tuple[float, bool] = (float("-inf"), False)   # (checked at, paused)
        self.room = RoomWatch(config().state_dir, log)               # no claims on a full disk

    @property
    def in_hand(self) -> bool:
        """Pages prepared or preparing, or a claim out."""
        return bool(self.ready) or self._claim is not None

    @property
    def exhausted(self) -> bool:
        """The page budget is claimed and nothing is left in hand: time to recycle."""
        return self.claimed >= self.config().workers.max_pages_per_worker and not self.in_hand

    def fill(self, free: int, limit: int) -> None:
        """Claim so that the session's `free` slots and up to AHEAD (never more than the batch
        `limit`) pages are in hand; one claim at a time, an empty queue asked again later."""
        if self._claim is not None or time.monotonic() < self.claim_after:
            return
        if self.paused() or self.room.problem() is not None:
            return
        budget = self.config().workers.max_pages_per_worker - self.claimed
        want = min(free + min(limit, AHEAD) - len(self.ready), budget, CLAIM_MAX)
        if want > 0:
            self._claim = self._pool.submit(self._claim_and_prepare, want, self.claim_lost)

    def collect(self, *, wait_for_it: bool) -> None:
        """Take in the claim if it came back (or wait for it)."""
        if self._claim is None or not (wait_for_it or self._claim.done()):
            return
        claim, self._claim = self._claim, None
        try:
            got = claim.result()
        except LedgerUnreachable as exc:   # a server restarting: not the pages' fault, nor ours
            self.outage.down(exc)
            self.claim_after = time.monotonic() + LEDGER_RETRY_S
            self.claim_lost = True        # it may have committed: the next claim adopts its pages
            return
        self.outage.up()
        self.claim_lost = False
        self.ready.extend(got)
        if got:
            self.claim_soon()
        else:   # the queue is empty: ask again after 0.1 s, backing off to 1 s
            self.claim_after = time.monotonic() + self._idle_s
            self._idle_s = min(self._idle_s * 2, self.idle_wait_s[1])

    def claim_soon(self) -> None:
        """Pages came: the next fill() asks at once (not while a lost connection's retry wait runs)."""
        if not self.claim_lost:
            self._idle_s, self.claim_after = self.idle_wait_s[0], 0.0

    def nudged(self) -> None:
        """A document was queued here: ask at once, reading `ocrd pause` afresh (a drop just after
        a pause must not be claimed on the last second's answer)."""
        self._paused = (float("-inf"), self._paused[1])
        self.claim_soon()

    def take(self, *, block: bool) -> Prepared | None:
        """The next page in claim order once it is prepared (waiting for it if `block`); pages
        that failed to prepare are skipped (they are failed already)."""
        while self.ready:
            if not self.ready[0].done():
                if not block:
                    return None
                wait([self.ready[0]])
            prepared = self.ready.popleft().result()
            if prepared is not None:
                return prepared
        return None

    def close(self) -> None:
        """Wait for a claim out and the front work in flight (stop() then releases the pages)."""
        if self._claim is not None:
            self.collect(wait_for_it=True)
        self._pool.shutdown(wait=True)

    def paused(self, now: float | None = None) -> bool:
        """`ocrd pause` holds new claims (pages in hand finish); read from the ledger's meta at
        most every PAUSE_CHECK_S, so an idle worker's poll costs no more than it did."""
        now = time.monotonic() if now is None else now
        if now - self._paused[0] >= PAUSE_CHECK_S:
            try:
                paused = self.ledger.paused_since() is not None
            except Exception as exc:  # a busy ledger: keep the last answer, ask again next time
                self.log.warning("pause_check_failed", error=str(exc))
                paused = self._paused[1]
            if paused != self._paused[1]:
                self.log.info("claims_paused" if paused else "claims_resumed")
            self._paused = (now, paused)
        return self._paused[1]

    # -- on the front pool ------------------------------------------------------------------------
    def _claim_and_prepare(self, n: int, after_lost: bool) -> list[Preparing]:
        adopt = self.recorder.held() if after_lost else None   # ledger.claim_pages: a lost answer
        pages = self.ledger.claim_pages(self.worker_id, n=n, lease_s=self.lease_s, adopt=adopt)
        self.recorder.lease(pages)
        self.claimed += len(pages)
        return [self._pool.submit(self._prepare, page) for page in pages]

    def _prepare(self, page: ClaimedPage) -> Prepared | None:
        """Render the page and run the engine's CPU preprocessing on it; a page that can't be
        rendered or prepared is failed here, alone."""
        try:
            image = render_page(self._source(page), page.page_no, self.config().pdf.dpi)
        except OcrdError as exc:
            self.recorder.fail(page, exc)
            return None
        except LedgerUnreachable as exc:   # another host's document not fetched: its lease runs out
            self.outage.down(exc, job_id=page.job_id, page=page.page_no)
            self.recorder.let_go(page)
            return None
        except Exception as exc:  # a renderer bug is this page's problem, not the worker's
            self.recorder.fail(page, InputError(f"cannot render page: {first_line(exc, with_type=True)}"))
            return None
        try:
            prompt, mode = self.prompt_and_mode(page)
            return Prepared(page, preprocess(self.engine, image, prompt, mode), image.size, prompt, mode)
        except Exception as exc:  # this page's problem alone
            self.recorder.fail(page, exc if isinstance(exc, OcrdError)
                               else EngineError(f"cannot prepare page: {first_line(exc, with_type=True)}"))
            return None

    def _source(self, page: ClaimedPage) -> Path:
        """The page's document: the spool file of a job of this host, else (a PostgreSQL ledger
        shared by several hosts) a copy fetched from the ledger once per job."""
        if self.ledger.delivers(page.host):
            return Path(page.spool_path)
        folder = fetched_dir(self.config())
        copy = folder / files.fit_name(f"{page.job_id}-{Path(page.spool_path).name}", 120)
        with self._fetching:           # pages of one document render side by side: fetch it once
            if not copy.exists():
                folder.mkdir(mode=0o700, exist_ok=True)
                if not self.ledger.fetch_document(page.job_id, copy):
                    raise InputError(f"the document is not in the ledger (host {page.host} holds it)")
        return copy
