"""A worker's raw output (what mlx-vlm and huggingface_hub print) reaches the log line by line."""

from __future__ import annotations

import io

from ocrd.daemon.pool import _pump_lines

DOWNLOAD = (b"Fetching 5 files\nmodel.safetensors:  10%|#    |\rmodel.safetensors:  55%|###  |"
            b"\rmodel.safetensors: 100%|#####|\ndone\ntail without newline")


def pump(data: bytes, every: float) -> list[str]:
    lines: list[str] = []
    _pump_lines(io.BufferedReader(io.BytesIO(data)), lines.append, progress_every_s=every)
    return lines


def test_progress_bars_become_log_lines() -> None:
    assert pump(DOWNLOAD, every=0) == [
        "Fetching 5 files", "model.safetensors:  10%|#    |", "model.safetensors:  55%|###  |",
        "model.safetensors: 100%|#####|", "done", "tail without newline"]


def test_progress_redraws_are_throttled_but_the_last_state_is_kept() -> None:
    lines = pump(DOWNLOAD, every=3600)
    assert "model.safetensors:  55%|###  |" not in lines
    assert "model.safetensors: 100%|#####|" in lines and lines[-1] == "tail without newline"
