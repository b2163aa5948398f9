"""Notice files in the inboxes and tell when each one is ready to ingest.

Three sources feed one stability tracker: watchdog events (FSEvents/inotify, or polling for network
shares), an initial scan of every inbox, and a periodic full rescan as a safety net for events the
OS dropped. The watchdog handler only records candidate paths; `tick()` (called by the ingest
thread) stats them and returns the files whose size and mtime have not changed for `stable_for_s`.
The watcher never hashes, renders or moves anything.
"""

from __future__ import annotations

import os
import stat
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import structlog
from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

from ..config import InboxConfig
from .rules import is_ignored, is_permission_error, permission_fix, refusal_reason

log = structlog.get_logger()

# macOS: the file's content lives only in iCloud; reading it would block on a download.
SF_DATALESS = 0x40000000
# watchdog's inotify backend holds each move out of a folder 0.5 s, to pair it with a move in, and
# every event behind it waits as long (github.com/gorakhargosh/watchdog/issues/649). Ingest moves
# each file out of its inbox, so a file dropped just after one was ingested was noticed 0.5 s late.
# An event here only names paths to look at, so pairing buys nothing: moves are held this long.
MOVE_PAIRING_S = 0.02
WATCH_CHECK_S = 1.0      # how often each native watch is checked against its folder
_EVENTS = [FileCreatedEvent, FileModifiedEvent, FileClosedEvent, FileMovedEvent, FileDeletedEvent,
           DirCreatedEvent, DirDeletedEvent, DirMovedEvent]


@dataclass
class _Track:
    inbox: InboxConfig
    sig: tuple[int, int] | None = None   # (size, mtime_ns) when last seen
    since: float = 0.0                   # monotonic time sig last changed
    hold_s: float | None = None          # ingest asked: unchanged this long (or changed) first


class _Handler(FileSystemEventHandler):
    """Runs on the observer thread: record paths, nothing else."""

    def __init__(self, watcher: Watcher, key: str, root: Path) -> None:
        self._watcher, self._key, self._root = watcher, key, str(root)

    def on_any_event(self, event: FileSystemEvent) -> None:
        paths = [os.fsdecode(p) for p in (event.src_path, getattr(event, "dest_path", "") or "") if p]
        if isinstance(event, DirDeletedEvent) and paths[0] == self._root:
            self._watcher._note_lost(self._key)   # the watch died with its folder
        self._watcher._note(self._key, paths)


class Watcher:
    """Tracks candidate files in every inbox; `tick()` returns the ones that became ready."""

    def __init__(self, inboxes: tuple[InboxConfig, ...], *, rescan_s: float = 60.0,
                 empty_grace_s: float = 60.0) -> None:
        self.rescan_s = rescan_s
        self.empty_grace_s = empty_grace_s
        self._inboxes: dict[str, InboxConfig] = {i.key: i for i in inboxes}
        self._observers: dict[str, BaseObserver] = {}
        self._watched: dict[str, tuple[int, int]] = {}   # inbox key -> (st_dev, st_ino) watched
        self._lost: set[str] = set()     # inboxes whose folder was deleted under their watch
        self._next_watch_check = 0.0
        self._lock = threading.Lock()
        self._candidates: set[tuple[str, str]] = set()
        self._pending: dict[Path, _Track] = {}
        self._returned: dict[Path, tuple[int, int]] = {}
        self._reported: set[tuple[str, str]] = set()
        self._to_scan: set[str] = set(self._inboxes)
        self._next_rescan: float | None = None
        self._started = False

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        """Create missing inbox folders and start one observer per inbox; the first tick scans."""
        self._started = True
        _shorten_move_pairing()
        for inbox in self._inboxes.values():
            self._start_observer(inbox)

    def stop(self) -> None:
        """Stop and join every observer thread."""
        self._started = False
        observers, self._observers = list(self._observers.values()), {}
        self._watched.clear()
        for obs in observers:
            obs.stop()
        for obs in observers:
            obs.join(timeout=5)

    def set_inboxes(self, inboxes: tuple[InboxConfig, ...]) -> None:
        """Apply a reloaded config (SIGHUP); unchanged inboxes keep their observer and tracking.
        Call from the thread that calls tick()."""
        new = {i.key: i for i in inboxes}
        for key, old in list(self._inboxes.items()):
            if new.get(key) != old:
                self._drop_inbox(key)
        for key, inbox in new.items():
            if self._inboxes.get(key) != inbox:
                self._inboxes[key] = inbox
                self._to_scan.add(key)
                if self._started:
                    self._start_observer(inbox)

    def _drop_inbox(self, key: str) -> None:
        self._stop_observer(key)
        del self._inboxes[key]
        self._to_scan.discard(key)
        for table in (self._pending, self._returned):
            for path in [p for p in table if self._owner(p) is None]:
                del table[path]
        with self._lock:
            self._candidates = {c for c in self._candidates if c[0] != key}

    def _start_observer(self, inbox: InboxConfig) -> None:
        if inbox.key in self._observers:
            return
        try:
            if not inbox.path.is_dir():
                inbox.path.mkdir(parents=True, exist_ok=True)
                log.info("inbox_created", inbox=inbox.key)
            obs = PollingObserver(timeout=1.0) if inbox.polling else Observer()
            obs.schedule(_Handler(self, inbox.key, inbox.path), str(inbox.path), recursive=inbox.recursive,
                         event_filter=_EVENTS)
            obs.daemon = True
            obs.start()
            st = os.stat(inbox.path)
        except OSError as exc:
            # Not fatal: the periodic rescan retries, and the folder may appear later.
            self._report_os_error(inbox, inbox.path, exc, "inbox_unavailable")
            return
        self._observers[inbox.key] = obs
        self._watched[inbox.key] = (st.st_dev, st.st_ino)

    def _stop_observer(self, key: str) -> None:
        self._watched.pop(key, None)
        obs = self._observers.pop(key, None)
        if obs is not None:
            obs.stop()
            obs.join(timeout=5)

    def _check_watches(self) -> None:
        """A native watch dies silently with its folder: an inbox removed (or replaced) and made
        again would only be seen by the periodic rescan. Re-arm it, scan it, and say so."""
        with self._lock:
            lost, self._lost = self._lost, set()
        for key in list(self._observers):
            inbox = self._inboxes[key]
            try:
                st = os.stat(inbox.path)
                now_watching = (st.st_dev, st.st_ino)
            except OSError:
                now_watching = None
            # a folder made again may get its old inode number back: the deletion event tells
            if now_watching == self._watched.get(key) and key not in lost:
                continue
            log.warning("inbox_watch_lost", inbox=key,
                        reason="folder removed" if now_watching is None else "folder replaced")
            self._stop_observer(key)
            self._start_observer(inbox)
            if key in self._observers:
                self._to_scan.add(key)
                log.info("inbox_watch_rearmed", inbox=key)

    # -- the observer side ----------------------------------------------------------------------
    def _note_lost(self, key: str) -> None:
        with self._lock:
            self._lost.add(key)

    def _note(self, key: str, paths: list[str]) -> None:
        with self._lock:
            for p in paths:
                self._candidates.add((key, p))

    # -- the tick -------------------------------------------------------------------------------
    def tick(self, now: float | None = None) -> list[tuple[InboxConfig, Path]]:
        """Fold in new events (and a full rescan when due); return files that became ready."""
        now = time.monotonic() if now is None else now
        if self._started and now >= self._next_watch_check:
            self._next_watch_check = now + WATCH_CHECK_S
            self._check_watches()
        if self._next_rescan is None or now >= self._next_rescan:
            self._next_rescan = now + self.rescan_s
            self._to_scan.update(self._inboxes)
            if self._started:
                for inbox in self._inboxes.values():
                    self._start_observer(inbox)
        for key in list(self._to_scan):
            self._to_scan.discard(key)
            inbox = self._inboxes.get(key)
            if inbox is not None:
                self._scan(inbox, inbox.path, prune=True, now=now)
        with self._lock:
            candidates, self._candidates = self._candidates, set()
        for key, text in candidates:
            inbox = self._inboxes.get(key)
            if inbox is not None:
                self._consider(inbox, Path(text), now)
        return self._check_pending(now)

    def _consider(self, inbox: InboxConfig, path: Path, now: float) -> None:
        if path == inbox.path or not path.is_relative_to(inbox.path) or is_ignored(inbox, path):
            return
        if self._owner(path) is not inbox:
            return  # an inbox nested inside another one owns this path
        if path.is_dir() and not path.is_symlink():
            if inbox.recursive:  # a folder created or moved in: events for its content may be lost
                self._scan(inbox, path, prune=False, now=now)
            return
        if not inbox.recursive and path.parent != inbox.path:
            return
        self._pending.setdefault(path, _Track(inbox))

    def _owner(self, path: Path) -> InboxConfig | None:
        """The innermost inbox that holds `path`."""
        best = None
        for inbox in self._inboxes.values():
            if path.is_relative_to(inbox.path) and (best is None or inbox.path.is_relative_to(best.path)):
                best = inbox
        return best

    def _scan(self, inbox: InboxConfig, top: Path, *, prune: bool, now: float) -> None:
        seen: set[Path] = set()
        others = {i.path for i in self._inboxes.values() if i is not inbox}
        errors: list[OSError] = []
        for dirpath, dirnames, filenames in os.walk(top, onerror=errors.append, followlinks=False):
            base = Path(dirpath)
            keep = []
            for d in dirnames:
                sub = base / d
                if sub in others or is_ignored(inbox, sub):
                    continue
                if sub.is_symlink():
                    self._report_once("refused", sub, "file_refused", inbox=inbox.key, path=str(sub),
                                      reason="symlink folder")
                    continue
                keep.append(d)
            dirnames[:] = keep if inbox.recursive else []
            for name in filenames:
                path = base / name
                if not is_ignored(inbox, path):
                    seen.add(path)
                    self._pending.setdefault(path, _Track(inbox))
        for exc in errors:
            self._report_os_error(inbox, Path(exc.filename or top), exc, "scan_failed")
        if prune and not errors:
            for path in [p for p, _ in self._returned.items() if p.is_relative_to(top) and p not in seen]:
                del self._returned[path]

    def _check_pending(self, now: float) -> list[tuple[InboxConfig, Path]]:
        ready: list[tuple[InboxConfig, Path]] = []
        for path, track in list(self._pending.items()):
            inbox = track.inbox
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                self._forget(path)
                continue
            except OSError as exc:
                self._report_os_error(inbox, path, exc, "stat_failed")
                del self._pending[path]
                continue
            if stat.S_ISLNK(st.st_mode):
                self._refuse(inbox, path, "symlink")
                continue
            if not stat.S_ISREG(st.st_mode):
                del self._pending[path]
                continue
            if getattr(st, "st_flags", 0) & SF_DATALESS:
                self._report_once("dataless", path, "file_not_local", path=str(path))
                continue  # keep watching until the sync tool brings the content down
            sig = (st.st_size, st.st_mtime_ns)
            if self._returned.get(path) == sig:
                del self._pending[path]
                continue
            if sig != track.sig:
                if track.sig is not None:
                    track.hold_s = None          # it changed: its writer is back
                track.sig, track.since = sig, now
                continue
            needed = track.hold_s or (self.empty_grace_s if st.st_size == 0 else inbox.stable_for_s)
            if now - track.since < needed:
                continue
            try:
                why = refusal_reason(inbox, path)  # a parent folder may be a symlink out of the inbox
                if why is not None:
                    self._refuse(inbox, path, why)
                    continue
                with open(path, "rb"):
                    pass
            except FileNotFoundError:
                self._forget(path)
                continue
            except OSError as exc:
                if is_permission_error(exc):
                    self._report_os_error(inbox, path, exc, "open_failed")
                    del self._pending[path]
                continue  # e.g. locked by a writer on a network share: try again next tick
            del self._pending[path]
            self._returned[path] = sig
            log.info("file_ready", inbox=inbox.key, path=str(path), size=st.st_size)
            ready.append((inbox, path))
        return ready

    def hold(self, path: Path, rest_s: float, now: float | None = None) -> None:
        """Return `path` again once it changes and settles, or once it has rested `rest_s` more
        (ingest deferred it: it does not parse yet). Call from the thread that calls tick()."""
        inbox = self._owner(path)
        sig = self._returned.pop(path, None)
        if inbox is not None:
            now = time.monotonic() if now is None else now
            self._pending[path] = _Track(inbox, sig=sig, since=now, hold_s=rest_s)

    def _refuse(self, inbox: InboxConfig, path: Path, why: str) -> None:
        self._report_once("refused", path, "file_refused", inbox=inbox.key, path=str(path), reason=why)
        del self._pending[path]

    def _forget(self, path: Path) -> None:
        self._pending.pop(path, None)
        self._returned.pop(path, None)
        if self._reported:  # a path that comes back later is reported again
            self._reported = {r for r in self._reported if r[1] != str(path)}

    # -- reporting, once per path ---------------------------------------------------------------
    def _report_once(self, kind: str, target: Path, event: str, **fields: object) -> None:
        key = (kind, str(target))
        if key not in self._reported:
            self._reported.add(key)
            log.warning(event, **fields)

    def _report_os_error(self, inbox: InboxConfig, path: Path, exc: OSError, event: str) -> None:
        if is_permission_error(exc):
            self._report_once("eperm", path, "permission_denied", inbox=inbox.key, path=str(path),
                              error=exc.strerror, fix=permission_fix(path))
        else:
            self._report_once(event, path, event, inbox=inbox.key, path=str(path), error=str(exc))

    # -- for tests and status -------------------------------------------------------------------
    @property
    def pending_count(self) -> int:
        return len(self._pending)


def _shorten_move_pairing() -> None:
    """MOVE_PAIRING_S for watchdog's inotify move pairing (its class in recent watchdog, or the
    older InotifyBuffer); nothing elsewhere (FSEvents and polling hold nothing)."""
    if not sys.platform.startswith("linux"):
        return
    import importlib

    for module, name in (("watchdog.observers.inotify_move_event_grouper", "InotifyMoveEventGrouper"),
                         ("watchdog.observers.inotify_buffer", "InotifyBuffer")):
        try:
            holder = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            continue
        holder.delay = MOVE_PAIRING_S
        return
