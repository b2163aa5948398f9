"""Fixtures shared by every test folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from tinymodel import build_tiny_deepseekocr


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight DeepSeek-OCR checkpoint directory, built once per session (~1 s)."""
    return build_tiny_deepseekocr(tmp_path_factory.mktemp("models") / "tiny-deepseekocr")
