"""Fixtures for the ledger tests: one contract suite over both backends (huey's StorageTests).

Every test that uses `db` (or `db_url`, `ledger`) runs once on a fresh SQLite file and once on a
fresh PostgreSQL database of a throwaway server started for the session (skipped, with the reason,
where no server binaries or no psycopg are found). Tests of one engine's own machinery carry
`@pytest.mark.sqlite_only` or `@pytest.mark.postgresql_only`.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Iterator

import pytest
from pgserver import PgServer
from ledger_testkit import Db

from ocrd.ledger.store import Ledger

BACKENDS = ("sqlite", "postgresql")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "sqlite_only: tests SQLite itself (pragmas, file, locks)")
    config.addinivalue_line("markers", "postgresql_only: tests PostgreSQL itself (sessions, locks)")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "backend" not in metafunc.fixturenames:
        return
    names = [b for b in BACKENDS if not any(metafunc.definition.get_closest_marker(f"{other}_only")
                                            for other in BACKENDS if other != b)]
    metafunc.parametrize("backend", names, indirect=True)


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def db(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Db]:
    """A fresh, empty database of this test's backend."""
    if backend == "sqlite":
        path = str(tmp_path / "ledger.db")
        yield Db("sqlite", f"sqlite:///{path}", path=path)
        return
    import psycopg

    server: PgServer = request.getfixturevalue("pg_server")
    name = f"ledger_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server.dsn("postgres"), autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    yield Db("postgresql", server.url(name), dsn=server.dsn(name))
    with psycopg.connect(server.dsn("postgres"), autocommit=True) as admin:
        # FORCE: a SIGKILLed child's connection may not be gone yet
        admin.execute(f"DROP DATABASE {name} WITH (FORCE)")


@pytest.fixture
def db_url(db: Db) -> str:
    return db.url


@pytest.fixture
def ledger(db_url: str) -> Iterator[Ledger]:
    led = Ledger(db_url)
    yield led
    # a connection still checked out means a transaction leaked out of a method
    assert led._engine.pool.checkedout() == 0
    led.close()
