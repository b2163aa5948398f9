"""Inbox rules: which files are never ours to touch, which may not be read, and how a person lets
the daemon read a folder. The watcher, ingest and `ocrd doctor` all ask here.
"""

from __future__ import annotations

import errno
import fnmatch
import os
import stat
import sys
from pathlib import Path

from ..config import InboxConfig

# Partial downloads, editor lock files and sync placeholders: never ours to touch.
_IGNORED_NAMES = ("~$*", "*.part", "*.crdownload", "*.download", "*.tmp", "*.icloud")


def is_ignored(inbox: InboxConfig, path: Path) -> bool:
    """Hidden files and folders, partial downloads, lock files, iCloud placeholders and the
    inbox's own `ignore` globs (matched against the name and the path relative to the inbox)."""
    try:
        rel = path.relative_to(inbox.path)
    except ValueError:
        rel = Path(path.name)
    if any(part.startswith(".") for part in rel.parts):
        return True  # also .DS_Store, ._AppleDouble and `.name.pdf.icloud`
    name = path.name
    lowered = name.lower()
    if any(fnmatch.fnmatchcase(lowered, pattern) for pattern in _IGNORED_NAMES):
        return True
    rel_text = rel.as_posix()
    return any(fnmatch.fnmatch(name, g) or fnmatch.fnmatch(rel_text, g) for g in inbox.ignore)


def refusal_reason(inbox: InboxConfig, path: Path) -> str | None:
    """Why `path` must not be read or moved (a symlink, or it resolves outside the inbox), else
    None. Raises OSError (FileNotFoundError, PermissionError) from lstat."""
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        return "symlink"
    real = Path(os.path.realpath(path))
    if not real.is_relative_to(os.path.realpath(inbox.path)):
        return "outside inbox"
    return None


def permission_fix(path: Path, *, platform: str | None = None) -> str:
    """One line telling a person how to let the daemon read `path` (`platform` as sys.platform)."""
    if (platform or sys.platform) == "darwin":
        # TCC judges the real binary behind the venv's python symlink, so that is the one to name.
        return (f"give Full Disk Access to {os.path.realpath(sys.executable)} (System Settings > "
                "Privacy & Security > Full Disk Access), or move the folder out of ~/Documents, "
                "~/Desktop, ~/Downloads and iCloud Drive")
    return f"give the daemon's user read and write access to {path} (check `ls -ld {path.parent}`)"


def is_permission_error(exc: BaseException) -> bool:
    """A denial (Unix permissions or macOS privacy controls), as opposed to a missing or busy file."""
    return isinstance(exc, OSError) and exc.errno in (errno.EPERM, errno.EACCES)
