"""Fixtures for tests/cli/ (helpers live in cli_support.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import structlog

from cli_support import write_config


@pytest.fixture
def config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A valid config under tmp_path; OCRD_CONFIG cleared so nothing else leaks in."""
    monkeypatch.delenv("OCRD_CONFIG", raising=False)
    return write_config(tmp_path)


@pytest.fixture(autouse=True)
def _reset_structlog():
    """The CLI quiets structlog process-wide; don't let that leak into other tests' log capture."""
    yield
    structlog.reset_defaults()
