"""Helpers for tests/cli/: a temp config, an in-process runner, and a recording service runner."""

from __future__ import annotations

import subprocess
import tomllib
from pathlib import Path
from typing import Any

from click.testing import CliRunner, Result

import configs
from ocrd.cli.main import main

OCRD = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "ocrd"


def write_config(tmp_path: Path, *, extra: str = "", outbox: Path | None = None,
                 name: str = "ocrd.toml", **tables: Any) -> Path:
    """A config file with its state dir and one inbox (folders in tmp_path/ocr) under tmp_path.
    `extra` is TOML text of further tables ("[model]\\npath = ..."); `tables` the same as dicts."""
    inbox = {"outbox": outbox} if outbox else {}
    raw = configs.config_dict(tmp_path, folders=tmp_path / "ocr", inbox=inbox,
                              **tomllib.loads(extra), **tables)
    path = tmp_path / name
    path.write_text(configs.to_toml(raw))
    return path


class Recorder:
    """The service runner seam: records command lines, answers with canned return codes."""

    def __init__(self, codes: dict[str, int] | None = None) -> None:
        self.calls: list[list[str]] = []
        self.codes = codes or {}

    def __call__(self, cmd: list[str]) -> subprocess.CompletedProcess:
        self.calls.append(list(cmd))
        code = next((c for word, c in self.codes.items() if word in cmd), 0)
        return subprocess.CompletedProcess(cmd, code, f"out of {cmd[-1]}\n", "oops\n" if code else "")


def invoke(config: Path | None, *args: str, obj: dict[str, Any] | None = None,
           env: dict[str, str] | None = None) -> Result:
    """Run `ocrd [--config config] args...` in-process."""
    argv = (["--config", str(config)] if config else []) + list(args)
    return CliRunner().invoke(main, argv, obj=obj, env=env, catch_exceptions=False)
