"""The watcher on real folders: ignore rules, stability, real observers, symlink and permission safety."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from helpers import wait_for
from ocrd.daemon.config import InboxConfig
from ocrd.daemon.intake.rules import is_ignored, refusal_reason
from ocrd.daemon.intake.watcher import Watcher


def make_inbox(root: Path, name: str = "inbox", **kw) -> InboxConfig:
    kw.setdefault("stable_for_s", 0.3)
    return InboxConfig(path=root / name, outbox=root / f"{name}-out", archive=root / f"{name}-arch",
                       failed=root / f"{name}-failed", **kw)


@pytest.fixture
def inbox(tmp_path: Path) -> InboxConfig:
    box = make_inbox(tmp_path)
    box.path.mkdir()
    return box


@pytest.fixture
def watcher_factory():
    made: list[Watcher] = []

    def make(*inboxes: InboxConfig, **kw) -> Watcher:
        w = Watcher(tuple(inboxes), **kw)
        made.append(w)
        return w

    yield make
    for w in made:
        w.stop()


def collect(w: Watcher, want: int, timeout: float = 15.0) -> list[Path]:
    """Tick until `want` files were returned; fail on more."""
    got: list[Path] = []

    def enough() -> bool:
        got.extend(p for _, p in w.tick())
        return len(got) >= want

    wait_for(enough, timeout=timeout, message=f"{want} ready files")
    return got


@pytest.mark.parametrize("rel", [
    ".hidden.pdf", ".DS_Store", "._scan.pdf", "~$report.docx", "a.pdf.part", "a.pdf.crdownload",
    "a.pdf.download", "x.tmp", "X.TMP", ".scan.pdf.icloud", "sub/.git/config", ".sync/a.pdf",
    "drafts/a.pdf", "notes.txt",
])
def test_ignored_names(tmp_path: Path, rel: str) -> None:
    box = make_inbox(tmp_path, ignore=("drafts/*", "*.txt"))
    assert is_ignored(box, box.path / rel)


@pytest.mark.parametrize("rel", ["scan.pdf", "sub/dir/page.png", "a.part.pdf", "tmp/a.pdf", "draftsy.pdf"])
def test_not_ignored_names(tmp_path: Path, rel: str) -> None:
    box = make_inbox(tmp_path, ignore=("drafts/*", "*.txt"))
    assert not is_ignored(box, box.path / rel)


def test_stability_by_size_and_mtime_with_fake_clock(inbox: InboxConfig, watcher_factory) -> None:
    w = watcher_factory(inbox, rescan_s=1000)
    f = inbox.path / "a.pdf"
    f.write_bytes(b"one")
    assert w.tick(now=0.0) == []          # first sight
    assert w.tick(now=0.1) == []          # unchanged, not yet stable_for_s
    with f.open("ab") as fh:
        fh.write(b"two")                  # grew: the clock starts again
    w._note(inbox.key, [str(f)])
    assert w.tick(now=0.35) == []
    assert w.tick(now=0.5) == []
    assert w.tick(now=0.7) == [(inbox, f)]
    assert w.tick(now=5.0) == []          # returned once
    w._note(inbox.key, [str(f)])
    assert w.tick(now=6.0) == []          # an event without a change returns nothing
    os.utime(f, ns=(1, 1))                # changed mtime: ready again once stable
    w._note(inbox.key, [str(f)])
    assert w.tick(now=7.0) == []
    assert w.tick(now=7.4) == [(inbox, f)]


def test_rescan_finds_files_without_events_and_returns_each_once(inbox: InboxConfig, watcher_factory) -> None:
    w = watcher_factory(inbox, rescan_s=1.0)   # never started: only scans
    assert w.tick(now=0.0) == []
    (inbox.path / "late.png").write_bytes(b"x")
    assert w.tick(now=0.5) == []               # no event, no rescan yet
    assert w.tick(now=1.0) == []               # rescan: first sight
    assert w.tick(now=1.4) == [(inbox, inbox.path / "late.png")]
    assert w.tick(now=2.1) == []               # the next rescan does not return it again
    assert w.tick(now=2.5) == []


def test_empty_file_waits_for_the_grace_then_is_returned(inbox: InboxConfig, watcher_factory) -> None:
    w = watcher_factory(inbox, rescan_s=1000, empty_grace_s=10.0)
    (inbox.path / "empty.pdf").touch()
    assert w.tick(now=0.0) == []
    assert w.tick(now=5.0) == []               # stable_for_s passed, but empty: a scanner may still write
    assert w.tick(now=10.5) == [(inbox, inbox.path / "empty.pdf")]


def test_native_observer_sees_create_move_and_new_subfolders(tmp_path: Path, watcher_factory) -> None:
    box = make_inbox(tmp_path)                 # the inbox does not exist yet: start creates it
    w = watcher_factory(box, rescan_s=1000)
    w.start()
    assert box.path.is_dir()
    w.tick()                                   # initial scan (empty)
    (box.path / "a.pdf").write_bytes(b"a")
    outside = tmp_path / "b.pdf"
    outside.write_bytes(b"b")
    shutil.move(outside, box.path / "b.pdf")   # move-into
    nested = tmp_path / "batch"
    (nested / "deep").mkdir(parents=True)
    (nested / "deep" / "c.pdf").write_bytes(b"c")
    shutil.move(nested, box.path / "batch")    # a whole folder moved in
    (box.path / "new" / "sub").mkdir(parents=True)
    (box.path / "new" / "sub" / "d.pdf").write_bytes(b"d")
    (box.path / "new" / ".hidden.pdf").write_bytes(b"h")
    got = collect(w, 4)
    assert sorted(p.relative_to(box.path).as_posix() for p in got) == [
        "a.pdf", "b.pdf", "batch/deep/c.pdf", "new/sub/d.pdf"]


def test_polling_observer_sees_new_files(tmp_path: Path, watcher_factory) -> None:
    box = make_inbox(tmp_path, polling=True)
    box.path.mkdir()
    w = watcher_factory(box, rescan_s=1000)
    w.start()
    w.tick()
    (box.path / "p.pdf").write_bytes(b"p")
    assert collect(w, 1) == [box.path / "p.pdf"]


def test_files_present_before_start_are_found(inbox: InboxConfig, watcher_factory) -> None:
    for n in range(5):
        (inbox.path / f"old{n}.pdf").write_bytes(b"%d" % n)
    w = watcher_factory(inbox, rescan_s=1000)
    w.start()
    assert len(set(collect(w, 5))) == 5


def test_non_recursive_inbox_ignores_subfolders(tmp_path: Path, watcher_factory) -> None:
    box = make_inbox(tmp_path, recursive=False)
    (box.path / "sub").mkdir(parents=True)
    (box.path / "sub" / "x.pdf").write_bytes(b"x")
    (box.path / "top.pdf").write_bytes(b"t")
    w = watcher_factory(box, rescan_s=1000)
    assert w.tick(now=0) == []
    assert w.tick(now=1) == [(box, box.path / "top.pdf")]


def test_symlinks_out_of_the_inbox_are_refused_and_logged_once(inbox: InboxConfig, tmp_path: Path,
                                                               watcher_factory) -> None:
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "target.pdf").write_bytes(b"secret")
    (inbox.path / "link.pdf").symlink_to(secret / "target.pdf")
    (inbox.path / "linkdir").symlink_to(secret)
    (inbox.path / "ok.pdf").write_bytes(b"ok")
    assert refusal_reason(inbox, inbox.path / "link.pdf") == "symlink"
    assert refusal_reason(inbox, inbox.path / "linkdir" / "target.pdf") == "outside inbox"
    assert refusal_reason(inbox, inbox.path / "ok.pdf") is None
    w = watcher_factory(inbox, rescan_s=1.0)
    with capture_logs() as logs:
        # events naming the path through the symlinked folder (as inotify may report) are refused too
        w._note(inbox.key, [str(inbox.path / "linkdir" / "target.pdf")])
        ready = [p for t in (0.0, 0.5, 1.0, 1.5, 2.0, 2.5) for _, p in w.tick(now=t)]
    assert ready == [inbox.path / "ok.pdf"]
    refused = [e for e in logs if e["event"] == "file_refused"]
    assert sorted(e["reason"] for e in refused) == ["outside inbox", "symlink", "symlink folder"]
    assert (secret / "target.pdf").read_bytes() == b"secret"
    assert (inbox.path / "link.pdf").is_symlink()


def test_set_inboxes_keeps_state_of_unchanged_inboxes(tmp_path: Path, watcher_factory) -> None:
    a, b = make_inbox(tmp_path, "a"), make_inbox(tmp_path, "b")
    a.path.mkdir()
    b.path.mkdir()
    (a.path / "1.pdf").write_bytes(b"1")
    w = watcher_factory(a, rescan_s=1000)
    assert w.tick(now=0) == []
    assert w.tick(now=1) == [(a, a.path / "1.pdf")]
    (b.path / "2.pdf").write_bytes(b"2")
    w.set_inboxes((a, b))
    assert w.tick(now=2) == []                 # b scanned; a's file is not returned again
    assert w.tick(now=3) == [(b, b.path / "2.pdf")]
    w.set_inboxes((b,))
    (a.path / "3.pdf").write_bytes(b"3")
    w._note(a.key, [str(a.path / "3.pdf")])
    assert w.tick(now=4) == [] and w.tick(now=5) == []


_EPERM_CHILD = """
import json, os, sys, pathlib
from structlog.testing import capture_logs
from ocrd.daemon.config import InboxConfig
from ocrd.daemon.intake.watcher import Watcher
os.setgid(65534); os.setuid(65534)  # after the imports: the interpreter's files may be root-only
root = pathlib.Path(sys.argv[1])
box = InboxConfig(path=root / "inbox", outbox=root / "o", archive=None, failed=root / "f", stable_for_s=0)
w = Watcher((box,), rescan_s=0.0)
with capture_logs() as logs:
    w.start()
    ready = [str(p) for t in range(4) for _, p in w.tick(now=float(t))]
    w.stop()
print(json.dumps({"ready": ready, "logs": [e for e in logs if e["event"] == "permission_denied"]}))
"""


@pytest.mark.skipif(not hasattr(os, "setuid") or os.geteuid() != 0, reason="needs root to drop to nobody")
def test_permission_denied_is_reported_once_with_the_fix_and_never_crashes() -> None:
    # Root reads everything, so a child drops to `nobody` to meet a real EACCES.
    root = Path(tempfile.mkdtemp(prefix="ocrd-eperm-"))
    try:
        os.chmod(root, 0o777)
        (root / "inbox" / "locked").mkdir(parents=True)
        (root / "inbox" / "locked" / "x.pdf").write_bytes(b"x")
        (root / "inbox" / "secret.pdf").write_bytes(b"s")
        (root / "inbox" / "fine.pdf").write_bytes(b"f")
        os.chmod(root / "inbox", 0o777)
        for p in (root / "inbox" / "fine.pdf",):
            os.chmod(p, 0o644)
        os.chmod(root / "inbox" / "locked", 0o000)
        os.chmod(root / "inbox" / "secret.pdf", 0o000)
        out = subprocess.run([sys.executable, "-c", _EPERM_CHILD, str(root)], capture_output=True,
                             text=True, timeout=60, cwd="/")
        assert out.returncode == 0, out.stderr
        result = json.loads(out.stdout.strip().splitlines()[-1])
        assert result["ready"] == [str(root / "inbox" / "fine.pdf")]
        paths = sorted(Path(e["path"]).name for e in result["logs"])
        assert paths == ["locked", "secret.pdf"]          # once each, despite four rescans
        assert all(e["fix"] for e in result["logs"])
    finally:
        os.chmod(root / "inbox" / "locked", 0o755)
        shutil.rmtree(root)


def test_an_inbox_removed_and_made_again_is_watched_again_within_seconds(inbox: InboxConfig,
                                                                         watcher_factory) -> None:
    w = watcher_factory(inbox, rescan_s=3600)   # no rescan to fall back on: only the re-armed watch
    w.start()
    w.tick()
    with capture_logs() as logs:
        shutil.rmtree(inbox.path)
        inbox.path.mkdir()
        wait_for(lambda: w.tick() is not None and any(e["event"] == "inbox_watch_rearmed" for e in logs),
                 10, 0.05, "the watch re-armed")
        (inbox.path / "after.pdf").write_bytes(b"%PDF")
        got = collect(w, 1)
    assert [p.name for p in got] == ["after.pdf"]
    lost = [e for e in logs if e["event"] == "inbox_watch_lost"]
    assert lost and lost[0]["reason"] in ("folder removed", "folder replaced")


def test_a_held_file_comes_back_once_it_rested_or_changed(inbox: InboxConfig, watcher_factory) -> None:
    w = watcher_factory(inbox, rescan_s=1000)
    f = inbox.path / "partial.pdf"
    f.write_bytes(b"%PDF-1.7 half")
    w.tick(now=0.0)
    assert w.tick(now=0.5) == [(inbox, f)]
    w.hold(f, 60.0, now=0.5)               # ingest: it does not parse yet, its writer may be back
    assert w.tick(now=30.0) == []          # unchanged, but not for the whole grace
    assert w.tick(now=60.6) == [(inbox, f)]   # rested: returned (ingest now fails it)
    w.hold(f, 60.0, now=61.0)
    with f.open("ab") as fh:
        fh.write(b" and the rest")         # the writer came back: the usual stability applies
    w._note(inbox.key, [str(f)])
    assert w.tick(now=62.0) == []
    assert w.tick(now=62.4) == [(inbox, f)]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="inotify's move pairing")
def test_a_file_moved_in_just_after_one_moved_out_is_seen_at_once(tmp_path: Path, watcher_factory) -> None:
    """Ingest moves each file out of its inbox; watchdog held a move out 0.5 s to pair it, and every
    event behind it waited, so the next file dropped was noticed 0.5 s late."""
    box = make_inbox(tmp_path, stable_for_s=0.0)
    box.path.mkdir()
    spool = tmp_path / "spool"
    spool.mkdir()
    w = watcher_factory(box, rescan_s=1000)
    w.start()
    w.tick()
    seen_after = []
    for n in range(3):
        (box.path / f"taken-{n}.pdf").write_bytes(b"t")
        assert collect(w, 1) == [box.path / f"taken-{n}.pdf"]
        dropped = tmp_path / f"dropped-{n}.pdf"
        dropped.write_bytes(b"d")
        os.rename(box.path / f"taken-{n}.pdf", spool / f"taken-{n}.pdf")   # as ingest does
        start = time.monotonic()
        os.rename(dropped, box.path / dropped.name)
        assert collect(w, 1, timeout=5) == [box.path / dropped.name]
        seen_after.append(time.monotonic() - start)
    assert min(seen_after) < 0.3, f"noticed {seen_after} s after the drop (watchdog holds a move 0.5 s)"
