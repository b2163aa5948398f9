"""Time as the ledger stores it: aware UTC datetimes in, fixed-width ISO-8601 text out; and whose
clock "now" is (one host's on SQLite, the database server's on PostgreSQL)."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, text

# A test seam: OCRD_TEST_CLOCK_SKEW_S=600 sets this host's clock 10 minutes fast (several-hosts tests)
_SKEW = timedelta(seconds=float(os.environ.get("OCRD_TEST_CLOCK_SKEW_S") or 0))
OFFSET_REFRESH_S = 60.0              # how often a PostgreSQL ledger re-measures its clock's offset


def utc_now(now: datetime | None = None) -> datetime:
    """`now` as an aware UTC datetime (naive values are taken as UTC); None: this host's clock."""
    if now is None:
        return datetime.now(UTC) + _SKEW
    return now.replace(tzinfo=UTC) if now.tzinfo is None else now.astimezone(UTC)


def to_text(moment: datetime) -> str:
    """The one stored time format: fixed width, so text order is time order; sqlite3's date
    functions read it."""
    return utc_now(moment).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def from_text(value: str) -> datetime:
    return datetime.fromisoformat(value)


class LedgerClock:
    """The ledger's "now". On SQLite one host writes every time: its own clock. On PostgreSQL
    hosts compare times they did not write (leases, heartbeats, run_after), so every time is the
    database server's: this host's clock plus an offset measured against `clock_timestamp()`
    (corrected by half the round trip) every OFFSET_REFRESH_S, so a host whose clock is minutes
    off neither steals live leases nor keeps dead ones, at no extra round trip per write."""

    def __init__(self, engine: Engine | None) -> None:
        self._engine = engine            # None: this host's clock (SQLite)
        self._offset = timedelta(0)
        self._next = 0.0                 # time.monotonic() of the next measurement

    def __call__(self, now: datetime | None = None) -> datetime:
        if now is not None:
            return utc_now(now)
        if self._engine is not None and time.monotonic() >= self._next:
            self._measure()
        return utc_now() + self._offset

    @property
    def offset_s(self) -> float:
        return self._offset.total_seconds()

    def _measure(self) -> None:
        try:
            with self._engine.connect() as conn:
                sent = utc_now()
                server = conn.execute(text("SELECT clock_timestamp()")).scalar_one()
                back = utc_now()
        except Exception:  # the database is away: keep the last offset, ask again soon
            self._next = time.monotonic() + 5.0
            return
        self._offset = utc_now(server) - (sent + (back - sent) / 2)
        self._next = time.monotonic() + OFFSET_REFRESH_S
