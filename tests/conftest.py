"""Fixtures shared by every test folder."""

from __future__ import annotations

import contextlib
import subprocess
from pathlib import Path
from typing import Callable, Iterator

import pytest

from pgserver import PgServer, find_bin_dir, start_server, stop_server
from tinymodel import build_tiny_deepseekocr


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight DeepSeek-OCR checkpoint directory, built once per session (~1 s)."""
    return build_tiny_deepseekocr(tmp_path_factory.mktemp("models") / "tiny-deepseekocr")


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """A throwaway PostgreSQL server for the session (~1 s to start), stopped and deleted at the
    end: the ledger contract suite's second backend and the several-hosts tests' shared ledger.
    Skipped, with the reason, where no server binaries or no psycopg are found."""
    bin_dir = find_bin_dir()
    if bin_dir is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl, postgres) not found on PATH, in "
                    "/usr/lib/postgresql/*/bin or $OCRD_TEST_PG_BIN")
    pytest.importorskip("psycopg", reason="psycopg not installed (pip install 'ocrd[postgres]')")
    server = start_server(bin_dir)
    try:
        yield server
    finally:
        stop_server(server)


class SmallDisk:
    """A tmpfs of its own mounted at `path`: a disk that fills up for real (ENOSPC, SQLITE_FULL)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.filler = path / ".filler"

    def fill(self) -> None:
        """Write a file until the disk is full to the last byte."""
        with self.filler.open("ab", buffering=0) as f, contextlib.suppress(OSError):
            while f.write(b"x" * 4096):   # ENOSPC ends it
                pass
        with self.filler.open("ab", buffering=0) as f, contextlib.suppress(OSError):
            while f.write(b"x"):          # and the last few bytes of a partial block
                pass

    def free(self) -> None:
        self.filler.unlink()


@pytest.fixture
def small_disk() -> Iterator[Callable[..., SmallDisk]]:
    """small_disk(path, size="64k"): mount a tmpfs of `size` at `path` (made if missing), unmounted
    after the test (ask for it before make_daemon, so that the daemons are gone by then). Skipped,
    with the reason, where mounting is not permitted (it needs root or CAP_SYS_ADMIN)."""
    mounted: list[Path] = []

    def mount(path: Path, size: str = "64k") -> SmallDisk:
        path.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip("needs a small filesystem of its own (mounting a tmpfs is not permitted here: "
                        f"{done.stderr.strip() or done.returncode})")
        mounted.append(path)
        return SmallDisk(path)

    yield mount
    for path in reversed(mounted):
        subprocess.run(["umount", "-l", str(path)], capture_output=True)
