"""End-to-end fixtures: a real `ocrd run` subprocess on temp folders with the tiny model."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest

from configs import config_dict, to_toml
from helpers import wait_for

OCRD = str(Path(sys.executable).parent / "ocrd")


def pg_query(dsn: str, sql: str, *params: object) -> list[tuple]:
    """One statement on a PostgreSQL ledger (`?` placeholders, as sqlite3 takes them); [] while
    its schema is not there yet."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        try:
            cursor = conn.execute(sql.replace("%", "%%").replace("?", "%s"), params) if params \
                else conn.execute(sql)
        except psycopg.errors.UndefinedTable:
            return []
        return [tuple(r) for r in cursor.fetchall()] if cursor.description else []


class Daemon:
    """One `ocrd run` process and the folders of its single inbox."""

    def __init__(self, root: Path, model: str | Path, *, workers: int = 1, page_timeout_s: int = 120,
                 max_attempts: int = 3, max_tokens: int = 12, inbox_keys: dict[str, Any] | None = None,
                 state_dir: Path | None = None, tables: dict[str, Any] | None = None,
                 engine: str = "mlx-vlm", has_inbox: bool = True, env: dict[str, str] | None = None,
                 pg_dsn: str | None = None, model_keys: dict[str, Any] | None = None) -> None:
        """`model_keys`: more [model] keys (engine = "openai": url, name, ...); `has_inbox` False: a worker-only host (no [[inbox]], no inbox folder made); `env`: extra
        environment of `ocrd run` (test seams); `pg_dsn`: the PostgreSQL ledger that `query`
        reads (its URL goes in tables={"ledger": {...}})."""
        self.root = root
        self.inbox, self.outbox = root / "inbox", root / "outbox"
        self.archive, self.failed = root / "archive", root / "failed"
        self.state = state_dir or root / "state"
        root.mkdir(parents=True, exist_ok=True)
        if has_inbox:
            self.inbox.mkdir(exist_ok=True)
        self.env, self.pg_dsn = env or {}, pg_dsn
        raw = config_dict(
            root, state_dir=self.state,
            # engine "mlx-vlm": the tiny model, even where `auto` would pick RapidOCR (a CPU-only host)
            model={"path": model, "mode": "tiny", "max_tokens": max_tokens, "page_timeout_s": page_timeout_s,
                   "engine": engine, **(model_keys or {})},
            workers={"count": workers, "max_attempts": max_attempts},
            pdf={"dpi": 72},
            inbox={"stable_for_s": 0.3, **(inbox_keys or {})}, **(tables or {}))
        if not has_inbox:
            del raw["inbox"]
        self.config = root / "ocrd.toml"
        self.config.write_text(to_toml(raw))
        self.proc: subprocess.Popen | None = None
        self.log = root / "daemon.out"

    def start(self) -> subprocess.Popen:
        env = {**os.environ, **self.env, "OCRD_CONFIG": str(self.config)}
        out = open(self.log, "ab")
        self.proc = subprocess.Popen([OCRD, "run"], stdout=out, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=env)
        out.close()
        return self.proc

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run([OCRD, "--config", str(self.config), *args], capture_output=True,
                                text=True, timeout=120, stdin=subprocess.DEVNULL)
        if check and result.returncode != 0:
            raise AssertionError(f"ocrd {' '.join(args)} exited {result.returncode}: {result.stderr}")
        return result

    def status(self) -> dict:
        result = self.cli("status", "--json", check=False)   # 3: not running (yet)
        if result.returncode not in (0, 3):
            raise AssertionError(f"ocrd status exited {result.returncode}: {result.stderr}")
        return json.loads(result.stdout)

    def query(self, sql: str, *params: object) -> list[tuple]:
        if self.pg_dsn is not None:
            return pg_query(self.pg_dsn, sql, *params)
        db = self.state / "ledger.db"
        if not db.exists():
            return []
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
        try:
            return con.execute(sql, params).fetchall()
        except sqlite3.DatabaseError:
            return []  # the schema is not there yet (or a test made the file corrupt on purpose)
        finally:
            con.close()

    def events(self) -> list[dict]:
        """The daemon's log events (its stderr: JSON lines off a terminal)."""
        out = []
        for line in self.log.read_text(errors="replace").splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    def spool_files(self) -> list[Path]:
        """Originals in the spool (the ingest's own dot-files aside)."""
        spool = self.state / "spool"
        return [p for p in spool.rglob("*") if p.is_file() and not p.relative_to(spool).parts[0].startswith(".")]

    def scalar(self, sql: str, *params: object) -> int:
        rows = self.query(sql, *params)
        return rows[0][0] if rows and rows[0][0] is not None else 0

    def job_states(self) -> dict[str, str]:
        """source file name -> job state."""
        return {Path(src).name: state for src, state in self.query("SELECT source_path, state FROM jobs")}

    def wait_settled(self, count: int, timeout: float = 180) -> dict[str, str]:
        def settled() -> dict[str, str] | None:
            states = self.job_states()
            done = [s for s in states.values() if s in ("done", "failed", "duplicate")]
            # ...and ingest has finished its last step (a duplicate's row lands before its move)
            intents = self.state / "spool" / ".intents"
            busy = intents.is_dir() and any(intents.iterdir())
            return states if len(done) >= count and not busy else None
        return wait_for(settled, timeout, interval=0.2, message=f"{count} jobs to settle ({self.log})")

    def stop(self, timeout: float = 40) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


@pytest.fixture
def pg_ledger(pg_server: Any) -> Iterator[tuple[str, str]]:
    """A fresh PostgreSQL database for one test: (its ledger URL, its psycopg DSN). Ask for it
    before make_daemon, so that the daemons are gone before it is dropped."""
    import uuid

    import psycopg

    name = f"e2e_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server.dsn("postgres"), autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    yield pg_server.url(name), pg_server.dsn(name)
    with psycopg.connect(pg_server.dsn("postgres"), autocommit=True) as admin:
        admin.execute(f"DROP DATABASE {name} WITH (FORCE)")   # a killed host's sessions may linger


@pytest.fixture
def make_daemon(tmp_path: Path, tiny_model: Path) -> Iterator:
    made: list[Daemon] = []

    def make(**kwargs) -> Daemon:
        daemon = Daemon(tmp_path / f"d{len(made)}", kwargs.pop("model", tiny_model), **kwargs)
        made.append(daemon)
        return daemon

    yield make
    for daemon in made:
        daemon.kill()
        pids = [p for (p,) in daemon.query("SELECT pid FROM workers WHERE state NOT IN ('stopped','dead')")]
        for pid in pids:  # never leak a worker, whatever the test did
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, TypeError):
                pass
