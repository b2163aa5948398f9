"""Moving files between inbox, spool, archive, failed and outbox without ever losing one."""

from __future__ import annotations

import contextlib
import glob
import errno
import fcntl
import hashlib
import os
import shutil
import stat
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

NAME_MAX = 255          # bytes in one file name on APFS, ext4, btrfs, xfs and SMB shares
_ERROR_SUFFIX = ".error.txt"


def fit_name(name: str, limit: int = NAME_MAX) -> str:
    """`name`, its stem shortened at a character boundary until it encodes to at most `limit`
    bytes; the extension is kept. Names a person can drop (up to 255 bytes) grow when we add
    ` (2)`, `.error.txt` or a temp-file prefix, and the OS refuses names past NAME_MAX."""
    if len(os.fsencode(name)) <= limit:
        return name
    stem, suffix = os.path.splitext(name)
    if len(os.fsencode(suffix)) > 32:         # not really an extension: shorten the whole name
        stem, suffix = name, ""
    room = limit - len(os.fsencode(suffix))
    while stem and len(os.fsencode(stem)) > room:
        stem = stem[:-1]
    return stem + suffix


def error_file_for(original: Path) -> Path:
    """Where `<name>.error.txt` of a failed original goes (its name shortened if it must be)."""
    return original.with_name(fit_name(original.name, NAME_MAX - len(_ERROR_SUFFIX)) + _ERROR_SUFFIX)


@contextmanager
def flocked(path: Path, *, exclusive: bool = True) -> Iterator[None]:
    """Hold an flock on `path` (created if missing) for the `with` block; the kernel drops it if
    the process dies, even by kill -9."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, PRIVATE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)


def make_private_dir(path: Path) -> Path:
    """Create `path` (and parents) and make it 0700: what lies in it is the daemon's alone."""
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


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
    """`path` if free, else `name (2).ext`, `name (3).ext`, ... (a name too long for the OS is
    shortened, see fit_name)."""
    return next(p for p in numbered(path) if not os.path.lexists(p))


def numbered(path: Path) -> Iterator[Path]:
    """`path`, then the numbered siblings unique_path would pick in turn."""
    path = path.with_name(fit_name(path.name))
    yield path
    n = 2
    while True:
        tag = f" ({n})"
        short = Path(fit_name(path.name, NAME_MAX - len(tag)))
        yield path.with_name(f"{short.stem}{tag}{short.suffix}")
        n += 1


def sha256_file(path: Path) -> str:
    """Stream a file's sha256."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


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
        copy_file(src, dst)
        os.unlink(src)
        fsync_dir(Path(src).parent)
        return dst
    fsync_dir(dst.parent)
    return dst


PRIVATE = 0o600      # the state dir's files: the ledger holds every page's text (DESIGN.md invariant 7)


def umask() -> int:
    """The process's umask, read without changing it where the OS tells (/proc on Linux)."""
    with contextlib.suppress(OSError, ValueError, StopIteration):
        status = Path("/proc/self/status").read_text()
        return int(next(line for line in status.splitlines() if line.startswith("Umask:")).split()[1], 8)
    with _UMASK_LOCK:   # elsewhere the only way to read it is to set it
        old = os.umask(0o077)
        os.umask(old)
    return old


_UMASK_LOCK = threading.Lock()


@contextmanager
def _replacing(path: Path, prefix: str, suffix: str, mode: int | None = None) -> Iterator[BinaryIO]:
    """A hidden temp file beside `path` that becomes `path` (fsync, rename) only if the block
    completes: readers see the old file or the whole new one, never part of it. Its mode is `mode`,
    or what a plain new file gets under the umask (mkstemp alone would make every output 0600)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=prefix, suffix=suffix)
    try:
        os.fchmod(fd, 0o666 & ~umask() if mode is None else mode)
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def copy_file(src: Path, dst: Path) -> None:
    """Copy durably: dst is whole or absent, with src's permission bits (as a rename keeps them)."""
    mode = stat.S_IMODE(os.stat(src).st_mode)
    with open(src, "rb") as fin, _replacing(dst, ".ocrd-", ".part", mode) as fout:
        shutil.copyfileobj(fin, fout, 1024 * 1024)


def _temp_prefix(path: Path) -> str:
    # mkstemp adds 8 characters and the suffix to the prefix: keep the whole under NAME_MAX.
    return "." + fit_name(path.name, NAME_MAX - 16) + "."


@contextmanager
def atomic_writer(path: Path) -> Iterator[BinaryIO]:
    """A binary file that becomes `path` only when the block completes (temp + fsync + rename),
    with the umask's mode: for outputs a library writes itself (the searchable PDF)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with _replacing(path, _temp_prefix(path), ".tmp") as f:
        yield f


def remove_stale_temps(path: Path) -> None:
    """The temp files a kill -9 left while `path` was being written (atomic_write_text's and
    atomic_writer's): only its writer, about to write it again, may call this."""
    if path.parent.is_dir():
        for stale in path.parent.glob(glob.escape(_temp_prefix(path)) + "*.tmp"):
            stale.unlink(missing_ok=True)


def atomic_write_text(path: Path, text: str, *, mode: int | None = None) -> None:
    """Write via temp file + fsync + rename: readers see the old file or the whole new one. The
    file follows the umask (outbox files are the user's) unless `mode` is given (PRIVATE). A file
    name in `text` that is not UTF-8 (an error naming it) is written with its own bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with _replacing(path, _temp_prefix(path), ".tmp", mode) as f:
        f.write(text.encode("utf-8", "surrogateescape"))


def write_error_file(original: Path, reason: str, details: str = "") -> Path:
    """`<name>.error.txt` beside a failed original: the reason in one line, then details."""
    target = error_file_for(original)
    one_line = " ".join(reason.split()) or "unknown error"
    atomic_write_text(target, one_line + "\n" + (details.rstrip() + "\n" if details else ""))
    return target
