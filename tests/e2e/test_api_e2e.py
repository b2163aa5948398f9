"""The HTTP API through a real socket (httpx) against the real daemon (`ocrd run` with the tiny
model): uploads become jobs and outbox files through the same ingest as a dropped file, their
text comes back byte for byte, and what the API refuses leaves nothing behind."""

from __future__ import annotations

import hashlib
import io
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterator

import httpx
import pytest

import samples
from helpers import wait_for

PAGES = 3


@pytest.fixture
def serve(make_daemon) -> Iterator[Callable[..., tuple[Any, httpx.Client]]]:
    """Start a daemon with the API on a free port: (the daemon, a client with its token)."""
    clients: list[httpx.Client] = []

    def start(api: dict[str, Any] | None = None, **daemon: Any) -> tuple[Any, httpx.Client]:
        d = make_daemon(tables={"api": {"listen": "127.0.0.1:0", **(api or {})}}, **daemon)
        d.start()
        url = wait_for(lambda: d.status().get("api_url"), 90, interval=0.3, message=f"the API ({d.log})")
        token = d.cli("api", "token").stdout.strip()
        client = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=120)
        clients.append(client)
        return d, client

    yield start
    for client in clients:
        client.close()


def png_bytes(n: int = 1) -> bytes:
    out = io.BytesIO()
    samples.page_image(n).save(out, "PNG")
    return out.getvalue()


def pdf_bytes(tmp_path: Path, pages: int = PAGES) -> bytes:
    return samples.write_pdf(tmp_path / "src" / f"{pages}-pages.pdf", pages).read_bytes()


def finished(client: httpx.Client, job_id: int, timeout: float = 240) -> dict[str, Any]:
    def ended() -> dict[str, Any] | None:
        job = client.get(f"/v1/jobs/{job_id}").json()
        return job if job["state"] in ("done", "failed") else None
    return wait_for(ended, timeout, interval=0.2, message=f"job {job_id} to end")


def staged(d) -> list[Path]:
    """What is left in the API's staging folder."""
    return [p for p in (d.state / "uploads").rglob("*")] if (d.state / "uploads").exists() else []


def test_uploads_become_outbox_files_whose_text_the_api_returns_byte_for_byte(serve, tmp_path: Path) -> None:
    d, client = serve()
    png = client.post("/v1/documents?filename=scan.png", content=png_bytes(),
                      headers={"Content-Type": "image/png"})
    assert png.status_code == 202, png.text
    assert png.headers["Location"] == f"/v1/jobs/{png.json()['id']}"
    pdf = client.post("/v1/documents", files={"file": ("report.pdf", pdf_bytes(tmp_path), "application/pdf")},
                      data={"formats": "md,pdf,txt"})
    assert pdf.status_code == 202, pdf.text
    assert (pdf.json()["name"], pdf.json()["pages_total"], pdf.json()["formats"]) == \
        ("report.pdf", PAGES, ["md", "pdf", "txt"])
    assert pdf.json()["options"] == {"formats": ["md", "pdf", "txt"]}

    for job_id, stem, formats in ((png.json()["id"], "scan", ["md"]),
                                  (pdf.json()["id"], "report", ["md", "pdf", "txt"])):
        job = finished(client, job_id)
        assert (job["state"], job["progress"], job["error"]) == ("done", 1.0, None), job
        assert [p["state"] for p in job["pages"]] == ["done"] * job["pages_total"]
        outbox = sorted(p.name for p in d.outbox.iterdir() if p.stem == stem)
        assert outbox == sorted(f"{stem}.{f}" for f in formats)      # the upload's own formats
        text = client.get(f"/v1/jobs/{job_id}/text")
        assert text.status_code == 200 and text.headers["content-type"].startswith("text/markdown")
        assert text.content == (d.outbox / f"{stem}.md").read_bytes()
        for fmt in formats:
            got = client.get(f"/v1/jobs/{job_id}/files/{fmt}")
            assert got.status_code == 200 and got.content == (d.outbox / f"{stem}.{fmt}").read_bytes()
        assert job["files"] == {f: f"/v1/jobs/{job_id}/files/{f}" for f in formats}
    assert text.content.count(b"<!-- page ") == PAGES
    not_written = client.get(f"/v1/jobs/{png.json()['id']}/files/pdf")
    assert not_written.status_code == 404 and "was not written as pdf" in not_written.json()["error"]
    assert sorted(p.name for p in d.archive.iterdir()) == ["report.pdf", "scan.png"]

    again = client.post("/v1/documents?filename=copy.png", content=png_bytes())   # the same bytes
    assert again.status_code == 200 and again.json()["id"] == png.json()["id"]
    assert again.json()["upload"]["state"] == "duplicate"
    forced = client.post("/v1/documents?filename=copy.png&force=true", content=png_bytes())
    assert forced.status_code == 202 and forced.json()["id"] not in (png.json()["id"], again.json()["upload"]["job_id"])
    assert finished(client, forced.json()["id"])["state"] == "done"
    assert (d.outbox / "copy.md").exists()

    listed = client.get("/v1/jobs", params={"state": "done"}).json()["jobs"]
    assert [j["id"] for j in listed] == sorted((png.json()["id"], pdf.json()["id"], forced.json()["id"]),
                                               reverse=True)
    since = client.get("/v1/jobs", params={"since": listed[0]["updated_at"]}).json()["jobs"]
    assert listed[0]["id"] in [j["id"] for j in since] and len(since) < 4
    assert client.get("/v1/jobs/999").status_code == 404
    assert client.get("/v1/jobs", params={"since": "yesterday"}).status_code == 400
    assert staged(d) == [] and d.spool_files() == []
    assert d.stop() == 0


def test_status_pause_and_resume_agree_with_the_cli(serve) -> None:
    d, client = serve()
    job = client.post("/v1/documents?filename=one.png", content=png_bytes()).json()
    finished(client, job["id"])
    paused = client.post("/v1/pause")
    assert paused.json() == {"paused": True, "changed": True}
    api, cli = client.get("/v1/status").json(), d.status()
    assert api["paused"] is cli["paused"] is True
    for key in ("daemon", "device", "model", "engine", "pool", "jobs", "pages", "api_url", "host",
                "state_dir", "metrics_url", "hosts", "warnings"):
        if key == "hosts":
            api[key] = [{k: v for k, v in h.items() if k != "seen_age_s"} for h in api[key]]
            cli[key] = [{k: v for k, v in h.items() if k != "seen_age_s"} for h in cli[key]]
        assert api[key] == cli[key], key
    assert [(w["id"], w["pid"], w["state"], w["backend"], w["pages_done"]) for w in api["workers"]] == \
        [(w["id"], w["pid"], w["state"], w["backend"], w["pages_done"]) for w in cli["workers"]]
    assert api["workers"] and all(w["heartbeat_age_s"] is not None for w in api["workers"])
    assert api["daemon"] == {"running": True, "pid": d.proc.pid}
    assert client.post("/v1/pause").json()["changed"] is False
    assert client.post("/v1/resume").json() == {"paused": False, "changed": True}
    assert d.status()["paused"] is False
    assert d.stop() == 0


def test_an_uploads_own_mode_and_prompt_reach_the_worker(serve) -> None:
    d, client = serve()
    short = client.post("/v1/documents?filename=a.png", content=png_bytes(4),
                        params={"prompt": "<image>\nFree OCR.", "mode": "tiny"})
    long = client.post("/v1/documents?force=true", files={   # multipart: the prompt as a field
        "file": ("b.png", png_bytes(4), "image/png"),
        "prompt": (None, "<image>\n" + "Read every word of this page. " * 8)})
    assert short.status_code == long.status_code == 202, (short.text, long.text)
    assert short.json()["options"] == {"mode": "tiny", "prompt": "<image>\nFree OCR."}
    for job in (short.json(), long.json()):
        finished(client, job["id"])
    tokens = dict(d.query("SELECT job_id, prompt_tokens FROM pages WHERE job_id IN (?, ?)",
                          short.json()["id"], long.json()["id"]))
    assert tokens[long.json()["id"]] > tokens[short.json()["id"]] + 30   # each page had its own prompt
    assert d.query("SELECT mode, prompt FROM jobs WHERE id = ?", short.json()["id"]) == \
        [("tiny", "<image>\nFree OCR.")]
    assert d.stop() == 0


def test_ocr_waits_for_the_text_or_answers_with_the_job(serve) -> None:
    d, client = serve()
    done = client.post("/v1/ocr?wait=60&filename=letter.png", content=png_bytes(2))
    assert done.status_code == 200, done.text
    assert done.content == (d.outbox / "letter.md").read_bytes()
    job_id = int(done.headers["X-Ocrd-Job"])
    later = client.post("/v1/ocr?wait=0", files={"file": ("later.png", png_bytes(3), "image/png")})
    # answered at once: queued, or already claimed by the worker its queueing woke
    assert later.status_code == 202 and later.json()["state"] in ("queued", "running"), later.text
    assert later.json()["id"] != job_id and later.headers["Location"] == later.json()["url"]
    assert finished(client, later.json()["id"])["state"] == "done"
    again = client.post("/v1/ocr?wait=0&filename=letter-again.png", content=png_bytes(2))
    assert again.status_code == 200 and again.content == done.content     # known bytes: at once
    assert d.stop() == 0


def test_fifty_concurrent_uploads_are_each_queued_once(serve) -> None:
    d, client = serve()
    client.post("/v1/pause")            # nothing is decoded meanwhile: the test is the intake
    bodies = [png_bytes(n) for n in range(1, 51)]

    def upload(n: int) -> httpx.Response:
        return client.post(f"/v1/documents?filename=doc{n:02d}.png", content=bodies[n - 1])

    with ThreadPoolExecutor(50) as pool:
        answers = list(pool.map(upload, range(1, 51)))
        same = list(pool.map(lambda _: client.post("/v1/documents?filename=same.png",
                                                   content=png_bytes(99)), range(8)))
    assert [a.status_code for a in answers] == [202] * 50, [a.text for a in answers if a.status_code != 202]
    ids = [a.json()["id"] for a in answers]
    assert len(set(ids)) == 50
    rows = d.query("SELECT id, state, source_path, sha256 FROM jobs WHERE state != 'duplicate'")
    assert sorted(r[0] for r in rows if Path(r[2]).name.startswith("doc")) == sorted(ids)
    assert {r[1] for r in rows} == {"queued"}
    assert len({r[3] for r in rows}) == len(rows)                       # no content twice
    assert sorted(a.status_code for a in same) == [200] * 7 + [202]     # the same bytes: one job
    assert len({a.json()["id"] for a in same}) == 1
    assert len(d.spool_files()) == 51 and staged(d) == []
    assert d.stop() == 0


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads RSS from /proc")
def test_a_100_mb_upload_is_streamed_not_held_in_memory(serve, tmp_path: Path) -> None:
    pikepdf = pytest.importorskip("pikepdf")
    big = tmp_path / "big.pdf"
    with pikepdf.new() as pdf:                  # a valid one-page PDF carrying 100 MB
        pdf.add_blank_page()
        pdf.attachments["scan.raw"] = pikepdf.AttachedFileSpec(pdf, __import__("os").urandom(100 * 10**6))
        pdf.save(big)
    d, client = serve()
    client.post("/v1/pause")
    for _ in range(3):                           # the server's code paths warmed up first
        client.post("/v1/documents?filename=warm.png", content=png_bytes())
    baseline, peak, stop = _rss_kb(d.proc.pid), [0], threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], _rss_kb(d.proc.pid))
            stop.wait(0.01)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        with open(big, "rb") as body:
            answer = client.post("/v1/documents?filename=big.pdf", content=body)
    finally:
        stop.set()
        sampler.join()
    assert answer.status_code == 202, answer.text
    grew_mb = (peak[0] - baseline) / 1024
    print(f"daemon RSS {baseline / 1024:.1f} MB, peak during a {big.stat().st_size / 1e6:.0f} MB "
          f"upload {peak[0] / 1024:.1f} MB: +{grew_mb:.1f} MB")
    assert grew_mb < 20, f"the daemon grew {grew_mb:.1f} MB"
    [spooled] = [p for p in d.spool_files() if p.name.endswith("-big.pdf")]
    assert hashlib.sha256(spooled.read_bytes()).hexdigest() == hashlib.sha256(big.read_bytes()).hexdigest()
    assert staged(d) == []
    assert d.stop() == 0


def test_refused_requests_leave_nothing_behind(serve, tmp_path: Path) -> None:
    d, client = serve(api={"max_upload": "1MB"})
    assert (d.state / "api-token").stat().st_mode & 0o777 == 0o600
    client.post("/v1/pause")
    jobs_before = d.scalar("SELECT COUNT(*) FROM jobs")

    with httpx.Client(base_url=client.base_url) as stranger:
        anonymous = stranger.post("/v1/documents?filename=a.png", content=png_bytes())
        assert anonymous.status_code == 401 and anonymous.headers["WWW-Authenticate"] == "Bearer"
        assert "bearer token" in anonymous.json()["error"]
        assert stranger.get("/v1/jobs", headers={"Authorization": "Bearer nope"}).status_code == 401
        assert stranger.get("/v1/status").status_code == 401
        assert stranger.get("/openapi.json").json()["paths"]["/v1/documents"]   # the spec is public

    too_big = client.post("/v1/documents?filename=big.pdf", content=b"%PDF-" + b"x" * 1_100_000)
    assert too_big.status_code == 413 and "max_upload" in too_big.json()["error"]

    def chunks() -> Iterator[bytes]:            # no Content-Length: refused while it streams
        yield b"%PDF-"
        for _ in range(40):
            yield b"y" * 65536

    streamed = client.post("/v1/documents?filename=big2.pdf", content=chunks())
    assert streamed.status_code == 413
    assert client.post("/v1/documents?filename=empty.pdf", content=b"").status_code == 400
    bad_mode = client.post("/v1/documents?filename=m.png&mode=huge", content=png_bytes())
    assert bad_mode.status_code == 400 and bad_mode.json()["error"].startswith("mode: must be one of")
    assert client.post("/v1/documents", content=b"--x--", headers={
        "Content-Type": "multipart/form-data; boundary=x"}).status_code == 400
    assert d.scalar("SELECT COUNT(*) FROM jobs") == jobs_before
    assert staged(d) == [] and d.spool_files() == []
    assert client.get("/v1/nowhere").json()["error"].startswith("no such endpoint")

    # a name with folders in it: its last part, and the file stays in the spool
    traversal = client.post("/v1/documents", files={"file": ("../x.pdf", pdf_bytes(tmp_path, 1), "application/pdf")})
    assert traversal.status_code == 202 and traversal.json()["name"] == "x.pdf"
    raw = client.post("/v1/documents", params={"filename": "..\\..\\y.png"}, content=png_bytes(7))
    assert raw.status_code == 202 and raw.json()["name"] == "y.png"
    spooled = sorted(p.name.split("-", 1)[1] for p in d.spool_files())
    assert spooled == ["x.pdf", "y.png"]
    assert [p for p in d.root.rglob("*") if p.name in ("x.pdf", "y.png")] == []

    # an unsupported file: 415, and the same failed/ record as one dropped into the inbox
    memo = client.post("/v1/documents?filename=memo.txt", content=b"just some words\n")
    assert memo.status_code == 415 and memo.json()["error"] == "memo.txt: unsupported file type"
    (d.inbox / "notes.txt").write_bytes(b"other words\n")
    d.wait_settled(d.scalar("SELECT COUNT(*) FROM jobs WHERE state = 'failed'") + 1, timeout=60)
    failed = {Path(src).name: (state, error, pages, Path(spool).parent)
              for src, state, error, pages, spool in d.query(
                  "SELECT source_path, state, error, pages_total, spool_path FROM jobs WHERE state = 'failed'")}
    assert failed["memo.txt"] == failed["notes.txt"] == ("failed", "unsupported file type", 0, d.failed)
    assert memo.json()["job"]["id"] == d.scalar("SELECT id FROM jobs WHERE source_path LIKE '%memo.txt'")
    for name in ("memo.txt", "notes.txt"):
        assert (d.failed / f"{name}.error.txt").read_text().splitlines()[0] == "unsupported file type"
    assert staged(d) == []
    assert d.stop() == 0


def test_retry_through_the_api(serve) -> None:
    d, client = serve()
    memo = client.post("/v1/documents?filename=memo.txt", content=b"words\n").json()["job"]
    assert client.post(f"/v1/jobs/{memo['id']}/retry").json()["error"] == \
        f"job {memo['id']}: still failing: unsupported file type"
    ok = client.post("/v1/ocr?wait=60&filename=ok.png", content=png_bytes())
    job_id = int(ok.headers["X-Ocrd-Job"])
    not_failed = client.post(f"/v1/jobs/{job_id}/retry")
    assert not_failed.status_code == 409 and "is done, not failed" in not_failed.json()["error"]
    assert client.post("/v1/jobs/999/retry").status_code == 404
    (d.failed / "memo.txt").write_bytes(png_bytes(5))          # the user fixed the file in failed/
    retried = client.post(f"/v1/jobs/{memo['id']}/retry")
    assert retried.status_code == 200 and retried.json()["retry"]["outcome"] == "reopened"
    assert finished(client, memo["id"])["state"] == "done"
    assert d.stop() == 0
