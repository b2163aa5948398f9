"""The ingest crash journal: one fsynced sidecar per file in flight, in `spool/.intents/`.

An intent is written before the file leaves its inbox and again before each later move whose
target must be known after a kill -9 (failed/, archive/, back into the spool for a retry); it is
dropped once the ledger knows where the file lies. Reconcile reads what is left at the next start.
The JSON keys are those of the dicts older versions wrote, so a journal survives an upgrade.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

from ..files import PRIVATE, atomic_write_text


class Stage(StrEnum):
    """How far the file got, for reconcile to finish what a crash interrupted."""
    NEW = "new"              # on its way into the spool, or being settled there
    FAILED = "failed"        # bad input, on its way to failed/ (`dest`)
    DUPLICATE = "duplicate"  # a duplicate job (`job_id`), on its way to archive/ (`dest`) or deleted
    RETRY = "retry"          # `ocrd retry` moving job `job_id`'s original back into the spool


@dataclass(frozen=True)
class Intent:
    """One file in flight: where it came from, its spool name, and how far it got."""
    inbox: str               # InboxConfig.key
    source_path: str         # where it was dropped (os.fsdecode's str: see ledger/fsnames.py)
    relative_path: str       # below its inbox: the path it keeps under archive/ and failed/
    spool_name: str          # its name in the spool; also names the sidecar
    size: int = 0            # size and mtime when taken
    mtime_ns: int = 0
    copied: bool = False     # not from an inbox (`ocrd submit` from elsewhere, an API upload): ours to drop
    force: bool = False      # `submit --force`: processed even if its content is a known job's
    options: str = ""        # an upload's own mode, prompt and formats (JobOptions JSON; "": its inbox's)
    stage: Stage = Stage.NEW
    dest: str = ""           # where it is being moved ("" : deleted, or not chosen yet)
    job_id: int | None = None
    reason: str = ""         # stage FAILED: the one-line reason and its details, and the
    details: str = ""        #   digest and size that add_failed_job records
    sha256: str = ""
    size_bytes: int = 0

    def advance(self, stage: Stage, **changes: Any) -> Intent:
        """This intent at a later stage."""
        return replace(self, stage=stage, **changes)

    @property
    def dest_path(self) -> Path | None:
        return Path(self.dest) if self.dest else None

    @classmethod
    def from_json(cls, text: str) -> Intent:
        """Parse a sidecar; raises ValueError when it is not one (KeyError: a required key is missing)."""
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("an intent is a JSON object")
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["stage"] = Stage(data.get("stage") or Stage.NEW)   # older sidecars: no stage, or ""
        values["dest"] = values.get("dest") or ""
        for key in ("inbox", "source_path", "relative_path", "spool_name"):
            values[key] = data[key]
        return cls(**values)

    def to_json(self) -> str:
        # ASCII: a name's undecodable bytes (lone surrogates) are written as \udcXX escapes,
        # which json.loads turns back into the same surrogates
        return json.dumps(asdict(self), ensure_ascii=True)


def intent_path(folder: Path, spool_name: str) -> Path:
    """The sidecar of the spool file `spool_name`."""
    return folder / (spool_name + ".json")


def write_intent(folder: Path, intent: Intent) -> None:
    """Write (or replace) the sidecar durably: it is whole or absent, never half written."""
    atomic_write_text(intent_path(folder, intent.spool_name), intent.to_json(), mode=PRIVATE)


def drop_intent(folder: Path, intent: Intent) -> None:
    intent_path(folder, intent.spool_name).unlink(missing_ok=True)


def load_intent(path: Path) -> Intent:
    """Read a sidecar; OSError or ValueError when it cannot be read or is not an intent."""
    return Intent.from_json(path.read_text(encoding="utf-8"))
