"""Small formatters for compact, aligned human output."""

from __future__ import annotations

import codecs
import contextlib
import io
import json
import sys
from datetime import datetime
from pathlib import Path
from typing import Any, Sequence

UNDECODABLE = "ocrd-undecodable"     # the error handler below, for sys.stdout and sys.stderr


def size(n: int | float | None) -> str:
    """1500 -> '1.5 KB'; None -> '-'. Decimal units, like the config's "12GB" and device.py."""
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if abs(value) < 1000:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} TB"


def duration(seconds: float | None) -> str:
    """75 -> '1m15s'; None -> '-'."""
    if seconds is None:
        return "-"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def when(iso: str | None) -> str:
    """An ISO-8601 UTC timestamp as local 'YYYY-MM-DD HH:MM:SS'."""
    if not iso:
        return "-"
    try:
        return datetime.fromisoformat(iso).astimezone().strftime("%Y-%m-%d %H:%M:%S")
    except ValueError:
        return iso


def one_line(text: Any, width: int = 60) -> str:
    flat = " ".join(str(text or "").split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def tail(text: Any, width: int = 40) -> str:
    """one_line, shortened from the front: a path keeps its file name ("…/scans/a.pdf")."""
    flat = " ".join(str(text or "").split())
    return flat if len(flat) <= width else "…" + flat[len(flat) - width + 1:]


def bar(done: int, total: int, width: int = 20) -> str:
    """A progress bar: bar(5, 20, 10) -> '[##--------]'."""
    filled = 0 if total <= 0 else min(width, int(width * done / total))
    return "[" + "#" * filled + "-" * (width - filled) + "]"


def name_of(path: str | None) -> str:
    return Path(path).name if path else "-"


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], right: Sequence[int] = ()) -> str:
    """Columns padded to their widest cell; the last column is not padded."""
    cells = [[str(h) for h in headers]] + [["-" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for r in cells:
        parts = [c.rjust(widths[i]) if i in right else c.ljust(widths[i]) for i, c in enumerate(r)]
        lines.append("  ".join(parts[:-1] + [r[-1]]).rstrip())
    return "\n".join(lines)


def to_json(obj: Any, *, pretty: bool = True) -> str:
    return json.dumps(obj, indent=2 if pretty else None, sort_keys=False, default=str)


def _escape(exc: UnicodeError) -> tuple[str, int]:
    """A codecs error handler: a file name's byte that is not UTF-8 (os.fsdecode's lone surrogate
    U+DC80..U+DCFF) as `\\xe9`, any other character the stream cannot encode as `\\u00e9`."""
    if not isinstance(exc, UnicodeEncodeError):
        raise exc
    bad = (ord(c) for c in exc.object[exc.start:exc.end])
    return "".join(f"\\x{n - 0xDC00:02x}" if 0xDC80 <= n <= 0xDCFF else
                   f"\\u{n:04x}" if n <= 0xFFFF else f"\\U{n:08x}" for n in bad), exc.end


codecs.register_error(UNDECODABLE, _escape)


def readable_output() -> None:
    """Print a file name that is not UTF-8 as `caf\\xe9.pdf`: never a UnicodeEncodeError on a strict
    UTF-8 terminal, never a raw byte that makes the output invalid UTF-8. (JSON output is ASCII:
    such a byte is a `\\udce9` escape there, which json.loads turns back into the name.)"""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(AttributeError, ValueError, io.UnsupportedOperation):
            stream.reconfigure(errors=UNDECODABLE)
