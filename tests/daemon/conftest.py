"""Fixtures of the ingest tests: a config with its inbox made, and a real SQLite ledger."""

from __future__ import annotations

from pathlib import Path

import pytest

from ingest_runner import make_config
from ocrd.daemon.config import Config
from ocrd.ledger.store import Ledger


@pytest.fixture
def config(tmp_path: Path) -> Config:
    cfg = make_config(tmp_path)
    cfg.inboxes[0].path.mkdir(parents=True)
    return cfg


@pytest.fixture
def ledger(config: Config):
    led = Ledger(config.db_url)
    yield led
    led.close()
