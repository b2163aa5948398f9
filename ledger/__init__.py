"""The job ledger: one database of jobs, pages, workers and events, and `Ledger`, its one API.

The daemon and the CLI import from here (`from ocrd.ledger import Ledger, JobState`). Names are
looked up on first use, so importing `ocrd.ledger.states` alone (the CLI at `--help`) does not
load SQLAlchemy.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:   # for type checkers and editors; at run time __getattr__ imports on first use
    from .records import (AddResult, ClaimedPage, DaemonInfo, DonePage, Job, JobOptions,  # noqa: F401
                          PageOutcome)
    from .states import (ENDED_WORKER_STATES, JobState, ModelState, ModelStatus,  # noqa: F401
                         OnDuplicate, PageState, TransitionError, WorkerState)
    from .store import BACKOFF_BASE_S, Ledger  # noqa: F401
    from ._engine import LedgerCorrupt, LedgerFull, LedgerUnreachable  # noqa: F401

_HOME = {
    **dict.fromkeys(("LedgerCorrupt", "LedgerFull", "LedgerUnreachable"), "_engine"),
    **dict.fromkeys(("BACKOFF_BASE_S", "Ledger"), "store"),
    **dict.fromkeys(("AddResult", "ClaimedPage", "DaemonInfo", "DonePage", "Job", "JobOptions",
                     "PageOutcome"), "records"),
    **dict.fromkeys(("ENDED_WORKER_STATES", "JobState", "ModelState", "ModelStatus", "OnDuplicate",
                     "PageState", "TransitionError", "WorkerState"), "states"),
}
__all__ = sorted(_HOME)


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_HOME[name]}", __name__), name)
