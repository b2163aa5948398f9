"""The one config builder for every test folder (importable as `configs`: tests/ is on pythonpath).

`config_dict` gives the raw dict that `parse_config` reads; `to_toml` writes it out for the tests
that need a file (the e2e daemon, the CLI, tests/ingest_runner.py). Anything not given keeps the
defaults of ocrd.daemon.config's dataclasses.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ocrd.daemon.config import Config, parse_config


def config_dict(root: Path, *, folders: Path | None = None, inbox: dict[str, Any] | None = None,
                **tables: Any) -> dict[str, Any]:
    """State in root/state and one inbox whose inbox/, outbox/, archive/ and failed/ sit in
    `folders` (default: root). `inbox` overrides that inbox's keys ({"archive": ""}: no archive);
    every other keyword is a top-level key or table (state_dir, model, workers, pdf, ledger).
    Paths may be given as Path objects."""
    where = folders or root
    box = {"path": where / "inbox", "outbox": where / "outbox", "archive": where / "archive",
           "failed": where / "failed", **(inbox or {})}
    return _plain({"state_dir": root / "state", **tables, "inbox": [box]})


def make_config(root: Path, **kwargs: Any) -> Config:
    """`parse_config(config_dict(root, **kwargs))`: the checked, frozen Config."""
    return parse_config(config_dict(root, **kwargs))


def to_toml(raw: dict[str, Any]) -> str:
    """TOML text for a dict of scalars, tables and arrays of tables (what config_dict returns)."""
    scalars = {k: v for k, v in raw.items() if not isinstance(v, (dict, list)) or _is_array(v)}
    lines = [f"{k} = {_value(v)}" for k, v in scalars.items()]
    for key, value in raw.items():
        if isinstance(value, dict):
            lines += [f"[{key}]", *(f"{k} = {_value(v)}" for k, v in value.items())]
        elif isinstance(value, list) and not _is_array(value):
            for table in value:
                lines += [f"[[{key}]]", *(f"{k} = {_value(v)}" for k, v in table.items())]
    return "\n".join(lines) + "\n"


def _is_array(value: Any) -> bool:
    # a list of tables is written as [[key]] sections; any other list is an inline array
    return isinstance(value, list) and not (value and all(isinstance(v, dict) for v in value))


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    # JSON's string escapes (\" \\ \n \uXXXX) are valid in a TOML basic string
    return json.dumps(str(value), ensure_ascii=False)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return str(value) if isinstance(value, Path) else value
