"""The CLI and a file whose name is not UTF-8 (Latin-1 `café.png`, b"caf\\xe9.png"): listings print
it readably as `caf\\xe9.png` (the runner's stdout is strict UTF-8, like a UTF-8 terminal), never a
UnicodeEncodeError; --json escapes it as \\udce9, which json.loads turns back into the name."""

from __future__ import annotations

import json
import os
from pathlib import Path

from PIL import Image

from cli_support import invoke
from ocrd.daemon.config import load_config
from ocrd.ledger.store import Ledger
from samples import non_utf8_path, rested

SHOWN = "caf\\xe9.png"          # what a person sees: the byte, backslash-escaped


def _seed(config_file: Path) -> tuple[int, str]:
    """A running job whose original (a real file in the spool) has a Latin-1 name."""
    config = load_config(config_file)
    spool = non_utf8_path(config.spool_dir, b"0123456789abcdef-caf\xe9.png")
    Image.new("RGB", (32, 32), "white").save(spool, "PNG")
    source = str(config.inboxes[0].path / os.fsdecode(b"caf\xe9.png"))
    ledger = Ledger(config.db_url)
    try:
        job_id = ledger.add_job(inbox=config.inboxes[0].key, source_path=source, spool_path=str(spool),
                                sha256="1" * 64, size_bytes=10, pages_total=2).job_id
        ledger.claim_pages("w1", n=1)
    finally:
        ledger.close()
    return job_id, source


def test_listings_print_such_a_name_readably(config_file: Path) -> None:
    job_id, source = _seed(config_file)
    for args in (["jobs"], ["show", str(job_id)], ["status"]):
        result = invoke(config_file, *args)
        assert result.exit_code in (0, 3), (args, result.output)     # status: 3, no daemon
        assert SHOWN in result.stdout_bytes.decode("utf-8"), args    # valid UTF-8, escaped
    (row,) = json.loads(invoke(config_file, "jobs", "--json").stdout_bytes)
    assert row["source_path"] == source
    shown = json.loads(invoke(config_file, "show", str(job_id), "--json").stdout_bytes)
    assert (shown["source_path"], shown["events"][0]["detail"]) == (source, f"2 pages from {source}")
    status = json.loads(invoke(config_file, "status", "--json").stdout_bytes)
    assert status["running_jobs"][0]["source"] == source


def test_submit_and_retry_such_a_name(config_file: Path, tmp_path: Path) -> None:
    good = non_utf8_path(tmp_path / "scans")
    Image.new("RGB", (32, 32), "white").save(good, "PNG")
    result = invoke(config_file, "submit", str(good))
    assert result.exit_code == 0, result.output
    assert result.stdout_bytes.decode("utf-8").endswith(f"/scans/{SHOWN}: job 1 queued (1 page)\n")

    bad = non_utf8_path(tmp_path / "scans", b"\xe9chec.pdf")
    bad.write_bytes(b"%PDF-1.4 not really")
    rested(bad)
    result = invoke(config_file, "submit", str(bad))
    assert result.exit_code == 1 and "/scans/\\xe9chec.pdf: failed (job 2)" in result.stderr
    failed = load_config(config_file).inboxes[0].failed
    assert sorted(os.listdir(os.fsencode(failed))) == [b"\xe9chec.pdf", b"\xe9chec.pdf.error.txt"]
    result = invoke(config_file, "retry", "2")
    assert result.exit_code == 1 and "job 2: still failing" in result.stderr
    assert sorted(os.listdir(os.fsencode(failed))) == [b"\xe9chec.pdf", b"\xe9chec.pdf.error.txt"]
