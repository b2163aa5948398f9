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
