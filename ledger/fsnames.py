"""File names that are not UTF-8, in the ledger's text columns.

On Linux a file name is bytes. Python names a file whose name is not UTF-8 (a Latin-1 `café.pdf`
from an old SMB share or zip: b"caf\\xe9.pdf") with a str holding one lone surrogate per byte that
does not decode, U+DC80..U+DCFF for the bytes 0x80..0xFF (os.fsdecode, PEP 383), and every `os`
function turns that str back into the same bytes. SQLite and PostgreSQL refuse lone surrogates, so
the path-bearing columns are `FsText`: on the way in each such surrogate becomes the private-use
character U+F780..U+F7FF (U+F700 + the byte), on the way out it becomes the surrogate again. A
reader of the column gets the str that names the file; `sqlite3` shows the byte as a private-use
character. A valid UTF-8 name has no lone surrogate and is stored as it is.

The one ambiguity: a name that really holds a character of U+F780..U+F7FF (private use; clear of
the U+F001..U+F07F that SMB and WSL use for characters Windows forbids) reads back as the byte that
character stands for, so ocrd would look for a file that is not there.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Text
from sqlalchemy.types import TypeDecorator

_SURROGATE, _PRIVATE = 0xDC00, 0xF700                # + a byte 0x80..0xFF
_TO_STORED = {_SURROGATE + b: _PRIVATE + b for b in range(0x80, 0x100)}
_FROM_STORED = {v: k for k, v in _TO_STORED.items()}


def to_stored(text: str) -> str:
    """A name as the ledger stores it: its undecodable bytes as U+F780..U+F7FF."""
    return text.translate(_TO_STORED)


def from_stored(text: str) -> str:
    """The reverse of to_stored: the str the `os` functions turn into the name's bytes."""
    return text.translate(_FROM_STORED)


class FsText(TypeDecorator[str]):
    """Text that may hold file names as os.fsdecode gives them (see the module's docstring)."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Any) -> Any:
        return to_stored(value) if isinstance(value, str) else value

    def process_result_value(self, value: Any, dialect: Any) -> Any:
        return from_stored(value) if isinstance(value, str) else value
