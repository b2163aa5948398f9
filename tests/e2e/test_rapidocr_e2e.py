"""A synthetic scan through the real daemon with the RapidOCR engine: the words come out right
and in order, under the same page markers and outbox rules as DeepSeek-OCR's."""

from __future__ import annotations

import re

import pytest

import textpages

pytest.importorskip("rapidocr")
jiwer = pytest.importorskip("jiwer")


def words(text: str) -> list[str]:
    text = re.sub(r"<!--.*?-->", " ", text)
    return re.sub(r"^\|( --- \|)+$", "", text, flags=re.M).replace("|", " ").split()


def test_scan_through_the_daemon_with_rapidocr(make_daemon) -> None:
    d = make_daemon(engine="rapidocr", max_tokens=8192, page_timeout_s=120)
    page = textpages.prose_page()
    d.start()
    page.image.save(d.inbox / "scan.png")
    assert d.wait_settled(1, timeout=240) == {"scan.png": "done"}
    out = (d.outbox / "scan.md").read_text()
    assert out.startswith("<!-- page 1 of 1 -->")
    got, want = words(out), page.truth.split()
    assert jiwer.cer(" ".join(want), " ".join(got)) <= 0.05, out
    # in order: every source line's first word is found after the previous one's
    text, at = " ".join(got), 0
    for line in page.truth.splitlines():
        found = text.find(line.split()[0], at)
        assert found >= at, (line, out)
        at = found
    status = d.status()
    assert status["engine"]["name"] == "rapidocr" and status["engine"]["reason"]
    assert not any("CPU mode" in w for w in status["warnings"])
    assert d.stop() == 0


def test_auto_on_the_cpu_reads_a_skewed_two_column_page_and_french(make_daemon) -> None:
    """Issue 24 through the real daemon with `engine = "auto"`: a two-column page scanned 3 degrees
    askew is read column by column, French keeps its accents and spaces, and the log and
    `ocrd status` name what reads (RapidOCR's models, not DeepSeek-OCR's path and mode)."""
    from ocrd.daemon.device import detect_device
    from ocrd.daemon.engines.choice import choose_engine

    if choose_engine("auto", detect_device().backend).name != "rapidocr":
        pytest.skip("engine = auto picks DeepSeek-OCR on this host (a GPU)")
    d = make_daemon(engine="auto", max_tokens=8192, page_timeout_s=120)
    columns, french = textpages.rotated_columns_page(3), textpages.french_page()
    d.start()
    columns.image.save(d.inbox / "columns.png")
    french.image.save(d.inbox / "french.png")
    assert d.wait_settled(2, timeout=240) == {"columns.png": "done", "french.png": "done"}
    text = " ".join(words((d.outbox / "columns.md").read_text()))
    assert jiwer.cer(" ".join(columns.truth.split()), text) <= 0.05, text
    at = [text.find(line) for line in columns.truth.splitlines()]   # every line whole, in order
    assert all(a >= 0 for a in at) and at == sorted(at), text
    got = " ".join(words((d.outbox / "french.md").read_text()))
    assert jiwer.cer(" ".join(french.truth.split()), got) <= 0.02, got
    assert "son île intérieure, à côté de l'alcôve" in got, got
    status = d.status()
    assert status["engine"]["name"] == "rapidocr"
    assert "PP-OCRv6" in status["model"]["reads"], status["model"]
    assert "PP-OCRv6" in d.cli("status").stdout and "gundam" not in d.cli("status").stdout
    loaded = [ln for ln in d.log.read_text().splitlines() if "model_loaded" in ln]
    assert loaded and all("PP-OCRv6" in ln and "DeepSeek" not in ln for ln in loaded), loaded
    beats = [e for e in d.events() if e.get("event") == "device_heartbeat"]
    assert beats and not [e for e in beats if "warning" in e], beats[0]   # "minutes a page" is DeepSeek's
    assert d.stop() == 0
