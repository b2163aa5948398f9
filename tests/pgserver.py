"""A throwaway PostgreSQL server for the ledger tests: initdb into a temp dir, listen on a unix
socket only, stop and delete everything afterwards.

The server runs as the calling user, or as `nobody` when that is root (initdb refuses root);
subprocess's user/group switch needs no runuser/setpriv. Durability is off (fsync, full page
writes, synchronous commit): a crash loses a database the tests throw away anyway; a server a test
crashes on purpose (`durable=True`) keeps it on, as a user's does, or it loses commits ocrd was told
of (a page stored before `pg_ctl stop -m immediate` came back running).
"""

from __future__ import annotations

import glob
import os
import pwd
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SUPERUSER = "postgres"
PORT = 5432                     # names the socket file only: listen_addresses is empty (no TCP)
UNSAFE = {"fsync": "off", "full_page_writes": "off", "synchronous_commit": "off"}
SETTINGS = {
    "listen_addresses": "''",
    "max_connections": "60",
    "shared_buffers": "32MB",
    "log_min_messages": "warning",
}


def find_bin_dir() -> Path | None:
    """A directory holding initdb, pg_ctl and postgres: $OCRD_TEST_PG_BIN when set (set it empty
    to test without PostgreSQL), else PATH's, then the newest /usr/lib/postgresql/*/bin (Debian
    keeps the server binaries off PATH), then a few usual prefixes."""
    if "OCRD_TEST_PG_BIN" in os.environ:
        candidates = [os.environ["OCRD_TEST_PG_BIN"]]
    else:
        on_path = shutil.which("pg_ctl")
        versions = sorted(glob.glob("/usr/lib/postgresql/*/bin"),
                          key=lambda p: int(re.sub(r"\D", "", p) or 0), reverse=True)
        candidates = [str(Path(on_path).resolve().parent) if on_path else "", *versions,
                      "/usr/local/pgsql/bin", "/opt/homebrew/bin", "/usr/local/opt/postgresql/bin"]
    for candidate in filter(None, candidates):
        path = Path(candidate)
        if all((path / exe).is_file() for exe in ("initdb", "pg_ctl", "postgres")):
            return path
    return None


@dataclass
class PgServer:
    bin_dir: Path
    root: Path                  # the temp dir: data/, sock/, server.log
    run_as: dict[str, Any]      # subprocess user/group switch ({} when not root)
    durable: bool = False       # fsync and synchronous commit on: for a test that crashes it

    @property
    def socket_dir(self) -> Path:
        return self.root / "sock"

    def url(self, dbname: str) -> str:
        return f"postgresql+psycopg://{SUPERUSER}@/{dbname}?host={self.socket_dir}&port={PORT}"

    def dsn(self, dbname: str) -> str:
        """For psycopg.connect (a user's own client, not the Ledger)."""
        return f"host={self.socket_dir} port={PORT} user={SUPERUSER} dbname={dbname}"

    def _run(self, *args: str) -> None:
        result = subprocess.run([str(self.bin_dir / args[0]), *args[1:]], cwd=self.root,
                                capture_output=True, text=True, timeout=120, **self.run_as)
        if result.returncode != 0:
            log = self.root / "server.log"
            raise RuntimeError(f"{args[0]} failed ({result.returncode}): {result.stderr.strip()}\n"
                               + (log.read_text() if log.exists() else ""))

    def start(self) -> None:
        data = self.root / "data"
        self._run("initdb", "-D", str(data), "-U", SUPERUSER, "--auth=trust", "--no-sync",
                  "--no-instructions", "--encoding=UTF8", "--locale=C")
        settings = {**SETTINGS, **({} if self.durable else UNSAFE), "unix_socket_directories": f"'{self.socket_dir}'", "port": str(PORT)}
        with open(data / "postgresql.conf", "a") as conf:
            conf.writelines(f"{k} = {v}\n" for k, v in settings.items())
        self.resume()

    def resume(self) -> None:
        """Start the server on its existing data (after `stop`): what a restart does."""
        self._run("pg_ctl", "start", "-w", "-t", "60", "-D", str(self.root / "data"),
                  "-l", str(self.root / "server.log"))

    def stop(self, mode: str = "immediate") -> None:
        """Stop (at once by default: nothing to keep; "fast" as a clean shutdown does) and wait
        for the postmaster to exit."""
        if (self.root / "data" / "postmaster.pid").exists():
            self._run("pg_ctl", "stop", "-w", "-t", "60", "-m", mode,
                      "-D", str(self.root / "data"))


def start_server(bin_dir: Path, durable: bool = False) -> PgServer:
    """initdb + pg_ctl start in a fresh temp dir; on failure nothing is left behind."""
    # a short base: a unix socket path must fit in ~100 bytes (macOS's $TMPDIR is long)
    root = Path(tempfile.mkdtemp(prefix="ocrd-pg-", dir="/tmp" if os.path.isdir("/tmp") else None))
    server = PgServer(bin_dir, root, {}, durable)
    try:
        (root / "sock").mkdir()
        if os.geteuid() == 0:
            nobody = pwd.getpwnam("nobody")
            server.run_as = dict(user=nobody.pw_uid, group=nobody.pw_gid, extra_groups=[])
            for path in (root, root / "sock"):
                os.chown(path, nobody.pw_uid, nobody.pw_gid)
        server.start()
    except BaseException:
        stop_server(server)
        raise
    return server


def stop_server(server: PgServer) -> None:
    """Stop the server (if it runs) and delete its directory, whatever happens."""
    try:
        server.stop()
    finally:
        shutil.rmtree(server.root, ignore_errors=True)
