"""Real-world files dropped into a running `ocrd run`, checked against DESIGN.md's Folders contract.

One daemon takes ~50 odd files at once: PDFs of every shape, images in every mode, broken and
unsupported files, awkward names, a slow writer, a folder moved in, symlinks and temp files. Every
accepted file must end in exactly one of archive/ (with outbox/<rel>.md, one page marker per page)
or failed/ (with <name>.error.txt, a one-line reason first), with the ledger saying where, the spool
empty and the daemon alive. The 0-byte file is left out: it waits a 60 s grace (test_watcher covers
it with a clock).
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import samples
from helpers import wait_for

from ocrd.daemon.files import error_file_for

LONG = "L" * 240 + ".png"                     # 244 bytes: `<name>.error.txt` and temp names overflow
CJK = "中" * 80 + ".png"                      # 244 bytes in UTF-8 (80 characters)
DEEP = Path(*[f"level{i}" for i in range(20)])

# name (relative to the inbox) -> pages of a good file
GOOD = {
    "long report.pdf": 22,
    "poster and stamp.pdf": 3,             # a 200 x 200 inch page, a 10 x 10 pt page, a letter page
    "mixed rotated.pdf": 4,                # portrait, landscape /Rotate 90, tall, /Rotate 270
    "really a png.pdf": 1,                 # sniffed by content, not by extension
    "alpha.png": 1, "palette.png": 1, "sixteen bit.png": 1, "bilevel.png": 1, "gray.png": 1,
    "cmyk.jpg": 1, "progressive.jpg": 1, "exif rotated.jpg": 1,
    "mixed modes.tiff": 5, "fax g4.tif": 3,
    "animated.gif": 1, "lossy.webp": 1, "lossless.webp": 1, "animated.webp": 1, "old.bmp": 1,
    "plan 80 megapixel.png": 1,            # 10000 x 8000, just under Pillow's limit
    "name with  two spaces.png": 1, "Überweisung café.png": 1, "receipt 🧾.jpg": 1,
    LONG: 1, CJK: 1, "noext": 1,
    "x.pdf/inside.png": 1,                 # a folder named like a file
    str(DEEP / "deep.png"): 1,
    "moved folder/one.png": 1, "moved folder/sub/two.pdf": 2,   # a whole folder moved in
    "a.pdf": 1, "a.png": 1,                # outbox clash: a.md and a (2).md
    "slow writer.pdf": 6,                  # written in chunks while the daemon watches
}
# name -> start of the first line of its .error.txt
BAD = {
    "zero pages.pdf": "PDF has no pages",
    "truncated.pdf": "corrupt PDF",
    "locked.pdf": "PDF is password-protected",
    "truncated.jpg": "corrupt image",
    "bomb.png": "image too large",
    "photo.heic": "unsupported file type", "drawing.svg": "unsupported file type",
    "notes.txt": "unsupported file type", "letter.docx": "unsupported file type",
    "bundle.zip": "unsupported file type",
    "E" * 248 + ".docx": "unsupported file type",
    "bad frame.tiff": "page 2: corrupt image",   # counts fine, fails on the worker
}
DUPLICATE = "gray copy.png"
LEFT_ALONE = [".hidden.png", "~$lock.docx", "download.pdf.part", "link out.png", "link dir"]


def _make_files(stage: Path, work: Path) -> None:
    """Everything above except the slow writer, the duplicate and the links, under `stage`."""
    work.mkdir(parents=True)
    samples.write_pdf(stage / "long report.pdf", 22)
    samples.write_pdf_pages(stage / "poster and stamp.pdf", [(14400, 14400), (10, 10), (612, 792)])
    samples.write_pdf_pages(stage / "mixed rotated.pdf", [(612, 792), (842, 595), (300, 900), (612, 792)],
                            rotate={1: 90, 3: 270})
    samples.page_image(3).save(stage / "really a png.pdf", "PNG")
    samples.write_mode_image(stage / "alpha.png", "PNG", "RGBA", n=4)
    samples.write_mode_image(stage / "palette.png", "PNG", "P", n=5, transparency=0)
    samples.write_mode_image(stage / "sixteen bit.png", "PNG", "I;16", n=6)
    samples.write_mode_image(stage / "bilevel.png", "PNG", "1", n=7)
    samples.write_mode_image(stage / "gray.png", "PNG", "L", n=8)
    samples.write_mode_image(stage / "cmyk.jpg", "JPEG", "CMYK", n=9)
    samples.write_mode_image(stage / "progressive.jpg", "JPEG", "RGB", n=10, progressive=True)
    samples.write_exif_rotated_jpeg(stage / "exif rotated.jpg", n=11)
    samples.write_mixed_tiff(stage / "mixed modes.tiff", n=12)
    samples.write_mode_image(stage / "fax g4.tif", "TIFF", "1", n=17, save_all=True, compression="group4",
                             append_images=[samples.page_image(18).convert("1"),
                                            samples.page_image(19).convert("1")])
    samples.write_image(stage / "animated.gif", "GIF", frames=4, n=20)
    samples.write_mode_image(stage / "lossy.webp", "WEBP", "RGB", n=24, quality=60)
    samples.write_mode_image(stage / "lossless.webp", "WEBP", "RGB", n=25, lossless=True)
    samples.write_image(stage / "animated.webp", "WEBP", frames=3, n=26)
    samples.write_image(stage / "old.bmp", "BMP", n=29)
    samples.write_blank_png(stage / "plan 80 megapixel.png", (10000, 8000))
    for n, name in enumerate(["name with  two spaces.png", "Überweisung café.png", LONG, CJK], 30):
        samples.write_image(stage / name, "PNG", n=n)
    samples.write_image(stage / "receipt 🧾.jpg", "JPEG", n=34)
    samples.write_image(stage / "noext", "PNG", n=35)
    samples.write_image(stage / "x.pdf" / "inside.png", "PNG", n=36)
    samples.write_image(stage / DEEP / "deep.png", "PNG", n=37)
    samples.write_pdf(stage / "a.pdf", 1)
    samples.write_image(stage / "a.png", "PNG", n=38)

    samples.write_zero_page_pdf(stage / "zero pages.pdf")
    samples.write_truncated(stage / "truncated.pdf", samples.write_pdf(work / "whole.pdf", 6).read_bytes())
    samples.write_encrypted_pdf(stage / "locked.pdf")
    whole_jpeg = samples.write_image(work / "whole.jpg", "JPEG", n=40).read_bytes()
    samples.write_truncated(stage / "truncated.jpg", whole_jpeg)
    samples.write_blank_png(stage / "bomb.png", (14000, 14000))          # 196 M pixels, 50 KB
    (stage / "photo.heic").write_bytes(b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(64))
    (stage / "drawing.svg").write_text('<svg xmlns="http://www.w3.org/2000/svg"/>')
    (stage / "notes.txt").write_text("not a scan\n")
    samples.write_docx(stage / "letter.docx")
    samples.write_docx(stage / ("E" * 248 + ".docx"))
    (stage / "bundle.zip").write_bytes(b"PK\x05\x06" + bytes(18))     # an empty zip archive
    samples.write_tiff_with_bad_frame(stage / "bad frame.tiff")


def _slow_write(path: Path, data: bytes, chunks: int = 10, pause_s: float = 0.05) -> None:
    # Pauses shorter than stable_for_s (0.3 s): the watcher must wait for the last chunk.
    step = len(data) // chunks + 1
    with open(path, "wb") as f:
        for i in range(0, len(data), step):
            f.write(data[i:i + step])
            f.flush()
            time.sleep(pause_s)


# One daemon, ~50 files: ~20-35 s on this 2-core machine (ingest of the big images, 80 pages).
def test_real_world_files_end_in_archive_or_failed(make_daemon) -> None:
    d = make_daemon(workers=2, max_tokens=4)
    d.start()
    wait_for(lambda: d.status()["daemon"]["running"], 60, 0.2, "daemon up")
    stage, outside = d.root / "stage", d.root / "outside"
    _make_files(stage, d.root / "work")
    moved = samples.write_image(d.root / "folder" / "one.png", "PNG", n=41).parent
    samples.write_pdf(moved / "sub" / "two.pdf", 2)

    # Drop: top-level entries renamed in (what `mv` and Finder do), a whole folder moved in last.
    gray = (stage / "gray.png").read_bytes()
    for entry in sorted(stage.iterdir()):
        os.rename(entry, d.inbox / entry.name)
    os.rename(moved, d.inbox / "moved folder")
    # The copy comes once the original is a job, so which of the two is the duplicate is fixed.
    wait_for(lambda: d.query("SELECT id FROM jobs WHERE source_path LIKE '%/gray.png'"), 60, 0.05,
             "gray.png queued")
    (d.inbox / DUPLICATE).write_bytes(gray)
    samples.write_image(outside / "secret.png", "PNG", n=42)
    os.symlink(outside / "secret.png", d.inbox / "link out.png")
    os.symlink(outside, d.inbox / "link dir")
    (d.inbox / ".hidden.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (d.inbox / "~$lock.docx").write_bytes(b"lock")
    (d.inbox / "download.pdf.part").write_bytes(b"%PDF-1.4 partial")
    writer = threading.Thread(target=_slow_write, args=(
        d.inbox / "slow writer.pdf", samples.write_pdf(d.root / "work" / "slow.pdf", 6).read_bytes()))
    writer.start()
    writer.join()

    total = len(GOOD) + len(BAD) + 1
    states = d.wait_settled(total, timeout=150)
    assert d.proc.poll() is None, "the daemon died"
    # a page that failed its document on a worker: the delivery moves the original just after
    wait_for(lambda: not d.query("SELECT id FROM jobs WHERE state = 'failed' AND spool_path LIKE ?",
                                 f"{d.state / 'spool'}/%"), 30, 0.1, "failed originals moved to failed/")
    rows = d.query("SELECT source_path, state, spool_path, output_path, pages_total, error FROM jobs")
    jobs = {Path(row[0]).relative_to(d.inbox).as_posix(): row[1:] for row in rows}
    assert len(jobs) == total, sorted(set(jobs) ^ (set(GOOD) | set(BAD) | {DUPLICATE}))
    assert {n: s for n, s in states.items() if s != "done"} == {
        **{Path(n).name: "failed" for n in BAD}, DUPLICATE: "duplicate"}

    for name, pages in GOOD.items():
        state, spool, out, total_pages, _ = jobs[name]
        assert (state, total_pages) == ("done", pages), name
        text = Path(out).read_text(encoding="utf-8")
        assert [text.count(f"<!-- page {n} of {pages} -->") for n in range(1, pages + 1)] == [1] * pages, name
        assert Path(spool).is_file() and Path(spool).is_relative_to(d.archive), name
        assert Path(out).parent == (d.outbox / name).parent, name   # mirrors the inbox folders
    for name, reason in BAD.items():
        state, spool, _, _, err = jobs[name]
        assert state == "failed" and Path(spool).is_file() and Path(spool).is_relative_to(d.failed), name
        first = error_file_for(Path(spool)).read_text(encoding="utf-8").splitlines()[0]
        assert first.startswith(reason) and first == err, (name, first)
    state, spool, *_ = jobs[DUPLICATE]
    assert Path(spool).is_file() and Path(spool).is_relative_to(d.archive)

    # a.pdf and a.png: neither output overwrites the other.
    assert {Path(jobs["a.pdf"][2]).name, Path(jobs["a.png"][2]).name} == {"a.md", "a (2).md"}
    # Names longer than NAME_MAX once suffixed still produce their files (shortened).
    assert Path(jobs[LONG][2]).name == LONG[:-4] + ".md"
    assert len(os.fsencode(error_file_for(Path(jobs["E" * 248 + ".docx"][1])).name)) <= 255

    # Nothing in limbo: the inbox holds only what it must leave alone, the spool nothing.
    left = sorted(p.name for p in d.inbox.iterdir() if p.is_symlink() or p.is_file())
    assert left == sorted(LEFT_ALONE)
    assert sorted(p.name for p in d.inbox.rglob("*") if p.is_file() and not p.is_symlink()
                  and "link dir" not in p.parts) == sorted(n for n in LEFT_ALONE if "link" not in n)
    assert (outside / "secret.png").exists()
    assert d.spool_files() == [] and list((d.state / "spool" / ".intents").iterdir()) == []
    archived = [p for p in d.archive.rglob("*") if p.is_file()]
    failed = [p for p in d.failed.rglob("*") if p.is_file() and not p.name.endswith(".error.txt")]
    assert len(archived) == len(GOOD) + 1 and len(failed) == len(BAD)

    # The CLI stays sane with all of it in the ledger.
    status = d.status()
    assert status["daemon"]["running"] and status["jobs"]["done"] == len(GOOD)
    assert status["jobs"]["failed"] == len(BAD) and status["jobs"]["duplicate"] == 1
    assert status["pages"].get("queued", 0) == status["pages"].get("running", 0) == 0
    listed = json.loads(d.cli("jobs", "--json", "--limit", "500").stdout)
    assert len(listed) == total
    assert "receipt 🧾.jpg" in d.cli("jobs", "--limit", "500").stdout
    bad_frame = next(j for j in listed if j["source_path"].endswith("bad frame.tiff"))
    shown = json.loads(d.cli("show", str(bad_frame["id"]), "--json").stdout)
    errors = {p["page_no"]: p["error"] for p in shown["pages"]}
    assert errors[2].startswith("corrupt image") and shown["state"] == "failed"
    assert d.cli("show", str(bad_frame["id"])).stdout.count("\n") > 10
    assert d.stop() == 0


def _names(folder: Path) -> list[bytes]:
    return sorted(os.listdir(os.fsencode(folder)))


def test_a_name_that_is_not_utf8_keeps_its_bytes(make_daemon, monkeypatch) -> None:
    """A Latin-1 `café.png` (b"caf\\xe9.png", from an old SMB share or zip) and a broken
    b"\\xe9chec.pdf": archive/, failed/ and the outbox keep the byte 0xE9, and the CLI lists them
    on a strict UTF-8 terminal."""
    monkeypatch.setenv("PYTHONIOENCODING", "utf-8:strict")   # the daemon and every `ocrd` below
    d = make_daemon(max_tokens=4)
    good = samples.write_image(samples.non_utf8_path(d.root / "stage"), "PNG", n=3)
    bad = samples.write_corrupt_pdf(samples.non_utf8_path(d.root / "stage", b"\xe9chec.pdf"))
    d.start()
    wait_for(lambda: d.status()["daemon"]["running"], 60, 0.2, "daemon up")
    for path in (good, bad):
        os.rename(path, d.inbox / path.name)
    # what sqlite3 shows: the byte as the private-use character U+F7E9
    assert d.wait_settled(2) == {"caf\uf7e9.png": "done", "\uf7e9chec.pdf": "failed"}

    assert _names(d.archive) == [b"caf\xe9.png"] and _names(d.outbox) == [b"caf\xe9.md"]
    assert _names(d.failed) == [b"\xe9chec.pdf", b"\xe9chec.pdf.error.txt"]
    markdown = (d.outbox / os.fsdecode(b"caf\xe9.md")).read_text(encoding="utf-8")
    assert markdown.count("<!-- page 1 of 1 -->") == 1
    assert d.spool_files() == []

    listed = {os.fsencode(Path(j["source_path"]).name): j for j in json.loads(d.cli("jobs", "--json").stdout)}
    assert sorted(listed) == [b"caf\xe9.png", b"\xe9chec.pdf"]
    assert os.fsencode(listed[b"caf\xe9.png"]["output_path"]) == os.fsencode(d.outbox) + b"/caf\xe9.md"
    table = d.cli("jobs").stdout
    assert "caf\\xe9.png" in table and "\\xe9chec.pdf" in table
    for job in listed.values():
        assert str(d.inbox).encode() in d.cli("show", str(job["id"])).stdout.encode()
    assert d.cli("status").returncode == 0
    retried = d.cli("retry", str(listed[b"\xe9chec.pdf"]["id"]), check=False)   # still broken
    assert retried.returncode == 1 and "still failing" in retried.stderr
    assert _names(d.failed) == [b"\xe9chec.pdf", b"\xe9chec.pdf.error.txt"]
    assert d.stop() == 0
