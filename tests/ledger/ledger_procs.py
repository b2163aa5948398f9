"""Child-process bodies for the ledger's multi-process tests (spawned: must be importable)."""

from __future__ import annotations

import os
import random
import sys
import time
import traceback
from typing import Any


def claim_and_complete(url: str, worker_id: str, max_batch: int, seed: int, start: Any,
                       results: Any) -> None:
    """Claim 1..max_batch pages at a time and complete them until no page is left; put
    (worker_id, claims, finishers, errors) on `results`. Every exception is reported, not raised,
    so the parent sees a "database is locked" that reached this caller."""
    from ocrd.ledger import Ledger, WorkerState

    rng = random.Random(seed)
    claims: list[tuple[int, int]] = []
    finished: list[int] = []
    errors: list[str] = []
    ledger = Ledger(url)
    try:
        ledger.register_worker(worker_id, host="test", pid=os.getpid(), backend="cpu",
                               device_name="cpu", state=WorkerState.IDLE)
        start.wait(120)                     # a Barrier: every process and the parent
        while True:
            try:
                # no backoff in play here: an empty claim means nothing is queued any more
                batch = ledger.claim_pages(worker_id, n=rng.randint(1, max_batch))
                if not batch:
                    break
                for page in batch:
                    claims.append((page.job_id, page.page_no))
                    if ledger.complete_page(page.job_id, page.page_no, worker_id,
                                            text=f"{page.job_id}/{page.page_no}", seconds=0.001):
                        if ledger.finish_job(page.job_id, f"/out/{page.job_id}.md"):
                            finished.append(page.job_id)
            except Exception:  # noqa: BLE001 -- the parent asserts there were none
                errors.append(traceback.format_exc())
                if len(errors) > 20:
                    break
    finally:
        ledger.close()
        results.put((worker_id, claims, finished, errors))


def claim_then_hang(url: str, worker_id: str, n: int, lease_s: float) -> None:
    """Claim n pages, say so on stdout, then wait to be killed."""
    from ocrd.ledger.store import Ledger

    ledger = Ledger(url)
    claimed = ledger.claim_pages(worker_id, n=n, lease_s=lease_s)
    print(" ".join(f"{p.job_id}:{p.page_no}" for p in claimed), flush=True)
    sys.stdin.read()          # the test SIGKILLs us here
    time.sleep(3600)
