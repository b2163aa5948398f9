"""The ingest thread: reconcile the spool once, then watch the inboxes and ingest what is ready.

A file that does not parse yet while young is held for its writer (ingest.Deferred); while the
state dir's disk is full (diskspace.py), every file waits in its inbox untouched; a failure that
is not the file's own (a read-only state dir, a disk that filled up between two looks) leaves the
file in its inbox and tries again with backoff, recorded under the ledger meta key INGEST_PROBLEM
for `ocrd status`. A file that reached the spool but could not be recorded (ingest.Unsettled: the
ledger's server went away) is finished from its intent, with the same backoff; until it is, new
files wait in their inboxes, where they are safest. A ledger found damaged ends the thread (the
supervisor stops the daemon).
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from pathlib import Path
from typing import Callable

import structlog

from ocrd.ledger import Ledger, LedgerCorrupt

from ..config import Config, InboxConfig
from ..diskspace import CHECK_EVERY_S, RoomWatch
from ..errors import first_line
from .ingest import Deferred, Ingestor, Unsettled
from .watcher import Watcher

log = structlog.get_logger()

INGEST_RETRY_S = 5.0          # a file whose ingest failed (not its own fault) is tried again after 5 s,
INGEST_RETRY_MAX_S = 300.0    # doubling up to 5 min
INGEST_PROBLEM = "ingest_problem"   # ledger meta key: what keeps failing, for `ocrd status`


class IngestService:
    """A thread that owns a Watcher and an Ingestor: reconcile once, then watch and ingest."""

    def __init__(self, config: Config, *, rescan_s: float = 60.0, empty_grace_s: float = 60.0,
                 tick_s: float = 0.1, on_corrupt: Callable[[LedgerCorrupt], None] | None = None,
                 on_queued: Callable[[], None] = lambda: None) -> None:
        self.config = config
        self.on_corrupt = on_corrupt       # the ledger is damaged: whoever must stop the daemon
        self.on_queued = on_queued         # a job was queued (the daemon nudges idle workers)
        self.room = RoomWatch(config.state_dir)
        self.ledger: Ledger | None = None    # the thread's own, while it runs
        self.rescan_s, self.empty_grace_s, self.tick_s = rescan_s, empty_grace_s, tick_s
        self.reconciled = threading.Event()   # set once the start-up reconcile ran (tests wait on it)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._new_config: Config | None = None
        self._thread: threading.Thread | None = None
        self._troubled: dict[Path, int] = {}   # files whose ingest failed, and how often
        self._unsettled: dict[str, tuple[int, float]] = {}   # spool name -> (tries, next try at)

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="ocrd-ingest", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop after the file in hand; joins the thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.error("ingest_stop_timeout", timeout_s=timeout)
            self._thread = None

    def reload(self, config: Config) -> None:
        """Apply a new config (SIGHUP) on the ingest thread at its next tick."""
        with self._lock:
            self._new_config = config

    def _run(self) -> None:
        ledger = self.ledger = self._open_ledger()
        if ledger is None:
            return
        watcher = Watcher(self.config.inboxes, rescan_s=self.rescan_s, empty_grace_s=self.empty_grace_s)
        try:
            ingestor = Ingestor(self.config, ledger, on_queued=self.on_queued)
            try:
                ingestor.reconcile()
            except Exception:
                log.exception("reconcile_failed")
            self.reconciled.set()
            watcher.start()
            while not self._stop.is_set() and ledger.corrupt is None:
                self._apply_reload(ingestor, watcher)
                self._settle_unsettled(ingestor, ledger)
                for inbox, path in watcher.tick():
                    if self._stop.is_set() or ledger.corrupt is not None:
                        break  # the rest stay in the inbox; the next start finds them
                    self._take(ingestor, ledger, watcher, inbox, path)
                self._stop.wait(self.tick_s)
        except LedgerCorrupt:   # the supervisor heard (on_corrupt) and stops the daemon
            pass
        except Exception:
            log.exception("ingest_service_crashed")
        finally:
            watcher.stop()
            ledger.close()

    def _take(self, ingestor: Ingestor, ledger: Ledger, watcher: Watcher, inbox: InboxConfig,
              path: Path) -> None:
        """Ingest one ready file; whatever stands in its way leaves it in its inbox."""
        if self._unsettled:   # the ledger can't take them yet: they wait where they are
            watcher.hold(path, INGEST_RETRY_S)
            return
        if self.room.problem() is not None:   # no room for it in the spool, nor in the ledger
            watcher.hold(path, CHECK_EVERY_S)
            return
        try:
            ingestor.ingest(inbox, path)
            self._recovered(ledger, path)
        except Deferred as deferred:
            watcher.hold(path, deferred.grace_s)
        except Unsettled as exc:
            if ledger.corrupt is None:   # damaged: its intent finishes it on a restored ledger
                self._unsettled[exc.spool_name] = (0, 0.0)
                self._retry_later(ledger, watcher, path, exc.__cause__ or exc, hold=False)
        except Exception as exc:   # e.g. a read-only state dir: the file waits in its inbox
            if ledger.corrupt is None:
                self._retry_later(ledger, watcher, path, exc)

    def _settle_unsettled(self, ingestor: Ingestor, ledger: Ledger) -> None:
        """Finish, from their intents, the files that reached the spool unrecorded."""
        now = time.monotonic()
        for name, (tries, at) in list(self._unsettled.items()):
            if now < at:
                continue
            try:
                ingestor.resume(name)
            except Exception as exc:
                delay = min(INGEST_RETRY_S * 2 ** tries, INGEST_RETRY_MAX_S)
                self._unsettled[name] = (tries + 1, now + delay)
                log.warning("ingest_unsettled_will_retry", spool_name=name, retry_in_s=delay,
                            error=first_line(exc, with_type=True))
                return      # the ledger is still away: the others wait too
            del self._unsettled[name]
            log.info("ingest_settled", spool_name=name, tries=tries + 1)
            if not self._unsettled:
                self._recovered(ledger, None)

    def _retry_later(self, ledger: Ledger, watcher: Watcher, path: Path, exc: BaseException,
                     *, hold: bool = True) -> None:
        """A failure that is not the file's (a full or read-only state dir): the file stays in its
        inbox and is tried again with backoff, without anyone touching it; `ocrd status` says so."""
        tries = self._troubled[path] = self._troubled.get(path, 0) + 1
        delay = min(INGEST_RETRY_S * 2 ** (tries - 1), INGEST_RETRY_MAX_S)
        if hold:
            watcher.hold(path, delay)
        error = first_line(exc, with_type=True)
        log.error("ingest_failed_will_retry", path=str(path), error=error, retry_in_s=delay, tries=tries,
                  exc_info=tries == 1)
        with contextlib.suppress(Exception):   # the ledger's disk may be the full one
            ledger.set_meta(INGEST_PROBLEM, json.dumps({"path": str(path), "error": error,
                                                        "retry_in_s": delay, "files": len(self._troubled)}))

    def _recovered(self, ledger: Ledger, path: Path | None) -> None:
        """`path` went in (None: every unsettled file did, which clears the files they came as)."""
        if path is None:
            was, self._troubled = bool(self._troubled), {}
        else:
            was = self._troubled.pop(path, None) is not None
        if was and not self._troubled:
            log.info("ingest_recovered", path=str(path))
            with contextlib.suppress(Exception):
                ledger.set_meta(INGEST_PROBLEM, None)

    def _apply_reload(self, ingestor: Ingestor, watcher: Watcher) -> None:
        with self._lock:
            new, self._new_config = self._new_config, None
        if new is not None:
            self.config = ingestor.config = new
            watcher.set_inboxes(new.inboxes)
            log.info("ingest_reloaded", inboxes=len(new.inboxes))

    def _open_ledger(self) -> Ledger | None:
        while not self._stop.is_set():
            try:
                return Ledger(self.config.db_url, host=self.config.host_name, on_corrupt=self.on_corrupt)
            except LedgerCorrupt:   # told to on_corrupt: the daemon stops
                return None
            except Exception:
                log.exception("ingest_ledger_unavailable")
                self._stop.wait(5.0)
        return None
