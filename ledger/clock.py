"""Time as the ledger stores it: aware UTC datetimes in, fixed-width ISO-8601 text out."""

from __future__ import annotations

from datetime import UTC, datetime


def utc_now(now: datetime | None = None) -> datetime:
    """`now` as an aware UTC datetime (naive values are taken as UTC)."""
    if now is None:
        return datetime.now(UTC)
    return now.replace(tzinfo=UTC) if now.tzinfo is None else now.astimezone(UTC)


def to_text(moment: datetime) -> str:
    """The one stored time format: fixed width, so text order is time order; sqlite3's date
    functions read it."""
    return utc_now(moment).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def from_text(value: str) -> datetime:
    return datetime.fromisoformat(value)
