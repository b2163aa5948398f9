"""Moving files between inbox, spool, archive, failed and outbox without ever losing one."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """Make a rename or unlink in `path` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems (SMB) refuse fsync on directories
    finally:
        os.close(fd)


def unique_path(path: Path) -> Path:
    """`path` if free, else `name (2).ext`, `name (3).ext`, ..."""
    if not os.path.lexists(path):
        return path
    n = 2
    while True:
        candidate = path.with_name(f"{path.stem} ({n}){path.suffix}")
        if not os.path.lexists(candidate):
            return candidate
        n += 1


def move_file(src: Path, dst: Path, *, overwrite: bool = False) -> Path:
    """Move src to dst (or a numbered sibling of it unless overwrite) durably and return where it
    went. Same volume: one rename. Across volumes: copy to a temp file beside dst, fsync, rename,
    then unlink src -- a crash leaves at worst two copies, never none."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if not overwrite:
        dst = unique_path(dst)
    try:
        os.rename(src, dst)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=".ocrd-", suffix=".part")
        try:
            with open(src, "rb") as fin, os.fdopen(fd, "wb") as fout:
                shutil.copyfileobj(fin, fout, 1024 * 1024)
                fout.flush()
                os.fsync(fout.fileno())
            os.replace(tmp, dst)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        fsync_dir(dst.parent)
        os.unlink(src)
        fsync_dir(Path(src).parent)
        return dst
    fsync_dir(dst.parent)
    return dst


def atomic_write_text(path: Path, text: str) -> None:
    """Write via temp file + fsync + rename: readers see the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_error_file(original: Path, reason: str, details: str = "") -> Path:
    """`<name>.error.txt` beside a failed original: the reason in one line, then details."""
    target = original.with_name(original.name + ".error.txt")
    one_line = " ".join(reason.split()) or "unknown error"
    atomic_write_text(target, one_line + "\n" + (details.rstrip() + "\n" if details else ""))
    return target
