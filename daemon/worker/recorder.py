"""The worker's store thread: a page's end (its result or its failure) written to the ledger, and
the leases its heartbeats renew.

Stores never run on the decode thread, nor wait behind renders. A ledger that is unreachable is
waited for (a result is worth it; once the server is back a lost lease refuses it), while stopping
for one lease at most. A page whose end can't be written is let go: no heartbeat renews it, its
lease runs out and it comes back (or the supervisor finishes a document whose pages all got stored).
"""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

from ocrd.ledger import ClaimedPage, Ledger, LedgerUnreachable

from ..engines.base import PageResult
from ..errors import OcrdError, first_line
from ..logs import Outage
from ..output.blocks import parse_grounding, to_dicts
from ..protocol import Message, WorkerEvent
from ..search_index import search_text

LEDGER_RETRY_S = 2.0       # an unreachable ledger is asked again this often


class Recorder:
    """`lease(pages)` when claimed; `stored(...)` or `fail(...)` once each page ends; `held()` is
    what heartbeats renew."""

    def __init__(self, *, worker_id: str, ledger: Ledger, engine_name: str, max_attempts: Callable[[], int],
                 lease_s: float, send: Callable[[Message], None], stopping: threading.Event,
                 outage: Outage, log: Any) -> None:
        self.worker_id, self.ledger, self.engine_name = worker_id, ledger, engine_name
        self.max_attempts, self.lease_s, self.send = max_attempts, lease_s, send
        self.stopping, self.outage, self.log = stopping, outage, log
        self.pages_done = 0
        self._leased: set[tuple[int, int]] = set()   # claimed, not yet stored or failed
        self._lock = threading.Lock()
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="store")

    def lease(self, pages: list[ClaimedPage]) -> None:
        with self._lock:
            self._leased.update((p.job_id, p.page_no) for p in pages)

    def held(self) -> list[tuple[int, int]]:
        with self._lock:
            return list(self._leased)

    def let_go(self, page: ClaimedPage) -> None:
        with self._lock:
            self._leased.discard((page.job_id, page.page_no))

    def stored(self, page: ClaimedPage, result: PageResult, size: tuple[int, int], peak: int,
               in_flight: int) -> None:
        self._thread.submit(self._record, page, self._store, result, size, peak, in_flight)

    def fail(self, page: ClaimedPage, exc: OcrdError) -> None:
        self._thread.submit(self._record, page, self._store_failure, exc)

    def close(self) -> None:
        """Let the writes in flight finish."""
        self._thread.shutdown(wait=True)

    def _record(self, page: ClaimedPage, write: Callable[..., None], *args: object) -> None:
        started = time.monotonic()
        while True:
            try:
                write(page, *args)
                self.outage.up()
                break
            except LedgerUnreachable as exc:
                self.outage.down(exc, job_id=page.job_id, page=page.page_no)
                if not self.stopping.is_set() or time.monotonic() - started < self.lease_s:
                    time.sleep(LEDGER_RETRY_S)
                    continue
                self.log.error("store_failed", job_id=page.job_id, page=page.page_no, error=str(exc))
                break
            except Exception as exc:  # on the store thread nothing else would see it
                self.log.error("store_failed", job_id=page.job_id, page=page.page_no,
                               error=first_line(exc, with_type=True))
                break
        self.let_go(page)

    def _store(self, page: ClaimedPage, result: PageResult, size: tuple[int, int], peak: int,
               in_flight: int) -> None:
        """The page's text and its blocks (a line engine's lines, or DeepSeek-OCR's grounding
        boxes) with the size of the image they refer to, and its words for the search index; the
        supervisor finishes the document."""
        blocks = result.blocks or parse_grounding(result.text, *size)[0]
        complete = self.ledger.complete_page(
            page.job_id, page.page_no, self.worker_id, text=result.text,
            prompt_tokens=result.prompt_tokens, generation_tokens=result.generation_tokens,
            seconds=result.seconds, finish_reason=result.finish_reason,
            blocks=json.dumps(to_dicts(blocks, *size), ensure_ascii=False) if blocks else None,
            width=size[0], height=size[1], engine=self.engine_name,
            search_text=search_text(result.text))
        if complete is None:   # its lease ran out (this host slept): another worker has the page
            self.log.warning("page_result_refused", job_id=page.job_id, page=page.page_no,
                             reason="lease lost: the page went to another worker")
        else:
            self.pages_done += 1
            self.log.info("page_done", job_id=page.job_id, page=page.page_no, seconds=round(result.seconds, 3),
                          tokens=result.generation_tokens, finish_reason=result.finish_reason,
                          peak_memory_bytes=peak, in_flight=in_flight)
        self.send(Message(WorkerEvent.PAGE_STORED, pages=in_flight, peak_memory_bytes=peak,
                          page=f"{page.job_id}:{page.page_no}"))
        if complete:
            self.send(Message(WorkerEvent.DOCUMENT_ENDED, job=page.job_id))

    def _store_failure(self, page: ClaimedPage, exc: OcrdError) -> None:
        outcome = self.ledger.fail_page(page.job_id, page.page_no, self.worker_id, str(exc),
                                        retryable=exc.retryable, max_attempts=self.max_attempts())
        self.log.warning("page_failed", job_id=page.job_id, page=page.page_no, reason=str(exc),
                         kind=exc.kind, outcome=str(outcome.state))
        if outcome.job_failed:
            self.send(Message(WorkerEvent.DOCUMENT_ENDED, job=page.job_id))
