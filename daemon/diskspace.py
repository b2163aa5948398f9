"""Room on the state dir's disk. The ledger, the spool and the log all live there; below a small
reserve, ocrd takes no new file from an inbox (it stays there, safe) and claims no page (its text
could not be stored), and `ocrd status` says why. Everything resumes by itself once there is room.

The reserve leaves the ledger room to commit what is in flight (pages being decoded are stored,
a checkpoint can run); should the disk fill up anyway, a write fails with SQLITE_FULL, which the
ledger raises as LedgerFull and everyone waits out like an unreachable server.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import structlog

RESERVE_BYTES = 64 * 2**20      # kept free under the state dir...
RESERVE_SHARE = 0.02            # ...or this share of a smaller disk
CHECK_EVERY_S = 1.0             # RoomWatch asks the file system at most this often


def reserve_bytes(total: int) -> int:
    return min(RESERVE_BYTES, int(total * RESERVE_SHARE))


def space_problem(state_dir: Path) -> str | None:
    """One line when the state dir's disk has less than the reserve free, else None (also when
    it can't be measured: then the writes themselves will tell)."""
    probe = next((p for p in (state_dir, *state_dir.parents) if p.exists()), None)
    try:
        usage = shutil.disk_usage(probe) if probe is not None else None
    except OSError:
        return None
    if usage is None or usage.free >= reserve_bytes(usage.total):
        return None
    return (f"the state dir's disk is full ({usage.free / 1e6:.1f} MB free of {usage.total / 1e6:.0f} MB"
            f" at {state_dir}): new files wait in their inbox and no page is claimed until there is room")


class RoomWatch:
    """space_problem() asked at most every CHECK_EVERY_S (it guards every claim and every file
    ingested), and its changes logged once each: `state_dir_full`, `state_dir_has_room`."""

    def __init__(self, state_dir: Path, log: structlog.typing.FilteringBoundLogger | None = None) -> None:
        self.state_dir = state_dir
        self.log = log or structlog.get_logger()
        self._checked_at = float("-inf")
        self._problem: str | None = None

    def problem(self, now: float | None = None) -> str | None:
        now = time.monotonic() if now is None else now
        if now - self._checked_at >= CHECK_EVERY_S:
            self._checked_at = now
            problem = space_problem(self.state_dir)
            if problem and not self._problem:
                self.log.error("state_dir_full", problem=problem)
            elif self._problem and not problem:
                self.log.info("state_dir_has_room", state_dir=str(self.state_dir))
            self._problem = problem
        return self._problem

