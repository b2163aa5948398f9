"""Soak test: the whole daemon for half an hour under a steady trickle of documents and scheduled
kills. Does anything get lost or written twice, and does the daemon's memory stay flat?

    .venv/bin/python bench/soak.py [--minutes 30] [--ledger sqlite|postgresql] [--every-s 2]
                                   [--kill-worker-s 120] [--kill-daemon-s 420]
                                   [--restart-server-s 600] [--max-tokens 12] [--settle-s 300]

One `ocrd run` (1 worker, engine "mlx-vlm" with the tiny random-weight DeepSeek-OCR of
tests/tinymodel.py in mode "tiny", as the e2e Daemon runs it) on temp folders. Every `every_s` a new
document of distinct content is moved into the inbox (PNGs; every 5th a 2-3 page PDF). On schedule:
a worker is SIGKILLed (its pid from the ledger's workers table, busy or idle, a child of the live
daemon), the daemon is SIGKILLed and started again at once on the same config, and on PostgreSQL
(a throwaway server of tests/pgserver.py) the server is stopped ("immediate" and "fast" in turn)
and started again at once on its data. Every 60 s a sample: the daemon's and its workers' RSS
(/proc/PID/status VmRSS), documents dropped/done/failed, pages done. At the end the drops stop, the
run waits (up to `settle_s`) for every document to settle, stops the daemon with SIGTERM and
checks: each dropped file has exactly one job and it is done (0 lost, nothing left in the inbox or
spool), exactly one `.md` per document in the outbox (no `name (2).md`: 0 twice), each original in
archive/ once; RSS flat: the daemon's median RSS in the first 5 minutes vs the last 5. (The daemon
is restarted every `kill_daemon_s`, so each sample also says how long that daemon had been up.)
Prints the samples and the verdict, writes bench/results/soak-<ledger>.json. The temp folders (logs,
ledger, outbox) are kept and their path printed.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "bench")]

from configs import config_dict, to_toml  # noqa: E402
from procs import git, machine  # noqa: E402
from samples import page_image, write_image  # noqa: E402

OCRD = str(Path(sys.executable).parent / "ocrd")
LIVE_WORKER = ("busy", "idle")
SETTLED = ("done", "failed", "duplicate")


def rss_kb(pid: int | None) -> int | None:
    if pid is None:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def ppid(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("PPid:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def now_text() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class Soak:
    """The daemon under test, its folders and its ledger (SQLite file or PostgreSQL database)."""

    def __init__(self, root: Path, model: Path, *, max_tokens: int, pg: Any | None) -> None:
        self.root = root
        self.inbox, self.outbox = root / "inbox", root / "outbox"
        self.archive, self.failed = root / "archive", root / "failed"
        self.state, self.staging = root / "state", root / "staging"
        for d in (self.inbox, self.staging):
            d.mkdir(parents=True, exist_ok=True)
        self.pg = pg
        tables: dict[str, Any] = {}
        if pg is not None:
            import psycopg

            with psycopg.connect(pg.dsn("postgres"), autocommit=True) as admin:
                admin.execute("CREATE DATABASE soak")
            self.dsn = pg.dsn("soak")
            tables["ledger"] = {"url": pg.url("soak")}
        raw = config_dict(
            root, state_dir=self.state,
            model={"path": model, "mode": "tiny", "max_tokens": max_tokens, "page_timeout_s": 120,
                   "engine": "mlx-vlm"},
            workers={"count": 1}, pdf={"dpi": 72}, inbox={"stable_for_s": 0.3}, **tables)
        self.config = root / "ocrd.toml"
        self.config.write_text(to_toml(raw))
        self.log = root / "daemon.out"
        self.proc: subprocess.Popen | None = None

    # -- the daemon ----------------------------------------------------------------------------
    def start(self) -> int:
        env = {**os.environ, "OCRD_CONFIG": str(self.config)}
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen([OCRD, "run"], stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=env)
        return self.proc.pid

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)

    def stop(self, timeout: float = 120) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return None

    # -- the ledger ----------------------------------------------------------------------------
    def query(self, sql: str, *params: object) -> list[tuple] | None:
        """Rows, or None when the ledger cannot be read now (a server restarting, no schema yet)."""
        try:
            if self.pg is not None:
                import psycopg

                with psycopg.connect(self.dsn, autocommit=True, connect_timeout=5) as conn:
                    cur = conn.execute(sql.replace("%", "%%").replace("?", "%s"), params) if params \
                        else conn.execute(sql)
                    return [tuple(r) for r in cur.fetchall()]
            db = self.state / "ledger.db"
            if not db.exists():
                return None
            con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
            try:
                return con.execute(sql, params).fetchall()
            finally:
                con.close()
        except Exception:   # noqa: BLE001  (sqlite3.Error, psycopg.Error: unreadable right now)
            return None

    def live_workers(self) -> list[int]:
        """Pids of this daemon's workers, busy or idle in the ledger and alive as its children."""
        rows = self.query("SELECT pid FROM workers WHERE state IN ('busy', 'idle')") or []
        daemon = self.proc.pid if self.proc is not None else None
        return sorted({pid for (pid,) in rows if pid and ppid(pid) == daemon})

    def children(self) -> list[int]:
        daemon = self.proc.pid if self.proc is not None else None
        out = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and ppid(int(entry.name)) == daemon:
                out.append(int(entry.name))
        return sorted(out)

    def jobs(self) -> list[tuple] | None:
        return self.query("SELECT id, source_path, state, pages_total, pages_done, error FROM jobs ORDER BY id")

    def spool_files(self) -> list[Path]:
        spool = self.state / "spool"
        if not spool.exists():
            return []
        return [p for p in spool.rglob("*") if p.is_file() and not p.relative_to(spool).parts[0].startswith(".")]

    def intents_busy(self) -> bool:
        intents = self.state / "spool" / ".intents"
        return intents.is_dir() and any(intents.iterdir())

    def log_lines(self, needle: str, limit: int = 40) -> list[str]:
        """The JSON log's lines that mention `needle`, and the daemon's own output's."""
        out: list[str] = []
        for path in [*sorted((self.state / "logs").glob("ocrd.log*")), self.log]:
            try:
                out += [f"{path.name}: {line}" for line in path.read_text(errors="replace").splitlines()
                        if needle in line]
            except OSError:
                pass
        return out[-limit:]


def drop(soak: Soak, k: int) -> str:
    """Document number k (1-based) into the inbox: written aside, moved in whole."""
    if k % 5 == 0:
        name = f"doc-{k:05d}.pdf"
        staged = soak.staging / name
        pages = 2 + (k // 5) % 2
        images = [page_image(100000 + k * 10 + i) for i in range(pages)]
        images[0].save(staged, "PDF", resolution=72, save_all=True, append_images=images[1:])
    else:
        name = f"doc-{k:05d}.png"
        staged = write_image(soak.staging / name, "PNG", n=k)
    os.replace(staged, soak.inbox / name)
    return name


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--ledger", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--every-s", type=float, default=2)
    parser.add_argument("--kill-worker-s", type=float, default=120, help="0: never")
    parser.add_argument("--kill-daemon-s", type=float, default=420, help="0: never")
    parser.add_argument("--restart-server-s", type=float, default=600, help="PostgreSQL only; 0: never")
    parser.add_argument("--max-tokens", type=int, default=12)
    parser.add_argument("--sample-s", type=float, default=60)
    parser.add_argument("--settle-s", type=float, default=300, help="how long to wait for the queue at the end")
    args = parser.parse_args()
    logging.disable(logging.WARNING)

    root = Path(tempfile.mkdtemp(prefix=f"ocrd-soak-{args.ledger}-"))
    print(f"folders, logs and ledger in {root}", flush=True)
    from tinymodel import build_tiny_deepseekocr
    model = build_tiny_deepseekocr(root / "tiny-deepseekocr")

    pg = None
    if args.ledger == "postgresql":
        from pgserver import find_bin_dir, start_server
        bin_dir = find_bin_dir()
        if bin_dir is None:
            print("no PostgreSQL server binaries found", file=sys.stderr)
            return 2
        pg = start_server(bin_dir)
    try:
        result = run(args, root, model, pg)
    finally:
        if pg is not None:
            from pgserver import stop_server
            try:
                (root / "postgresql.log").write_bytes((pg.root / "server.log").read_bytes())
            except OSError:
                pass
            stop_server(pg)
    _write(args, result)
    print(f"folders and logs kept in {root}" + ("" if pg is not None else " (and the SQLite ledger)"))
    return 0 if result["verdict"]["ok"] else 1


def run(args: argparse.Namespace, root: Path, model: Path, pg: Any | None) -> dict:
    soak = Soak(root, model, max_tokens=args.max_tokens, pg=pg)
    events: list[dict] = []
    samples: list[dict] = []
    dropped: list[str] = []
    kills = {"worker": 0, "worker_none_live": 0, "daemon": 0, "server": 0, "daemon_exited_by_itself": 0}
    anomalies: list[dict] = []

    def event(kind: str, **detail: Any) -> None:
        e = {"t_s": round(time.monotonic() - t0, 1), "at": now_text(), "kind": kind, **detail}
        events.append(e)
        print(f"  [{e['t_s']:7.1f} s] {kind} {json.dumps(detail)}", flush=True)

    t0 = time.monotonic()
    daemon_started = t0
    soak.start()
    event("daemon_started", pid=soak.proc.pid)
    end = t0 + args.minutes * 60
    next_drop = t0
    next_worker = t0 + args.kill_worker_s if args.kill_worker_s else float("inf")
    next_daemon = t0 + args.kill_daemon_s if args.kill_daemon_s else float("inf")
    next_server = t0 + args.restart_server_s if pg is not None and args.restart_server_s else float("inf")
    next_sample = t0 + args.sample_s
    worker_due_since: float | None = None
    awaiting_comeback: tuple[int, float] | None = None   # (daemon pid, its start) until a live worker
    server_modes = ["immediate", "fast"]

    def sample(phase: str) -> dict:
        pid = soak.proc.pid if soak.proc is not None and soak.proc.poll() is None else None
        workers = soak.live_workers() if pid else []
        jobs = soak.jobs()
        pages = soak.query("SELECT COUNT(*) FROM pages WHERE state = 'done'")
        states: dict[str, int] = {}
        for row in jobs or []:
            states[row[2]] = states.get(row[2], 0) + 1
        s = {"t_s": round(time.monotonic() - t0, 1), "at": now_text(), "phase": phase,
             "daemon_pid": pid, "daemon_up_s": round(time.monotonic() - daemon_started, 1),
             "daemon_rss_kb": rss_kb(pid), "worker_pids": workers,
             "workers_rss_kb": [rss_kb(w) for w in workers],
             "dropped": len(dropped), "jobs": None if jobs is None else len(jobs),
             "done": states.get("done") if jobs is not None else None,
             "failed": states.get("failed", 0) if jobs is not None else None,
             "duplicate": states.get("duplicate", 0) if jobs is not None else None,
             "pages_done": pages[0][0] if pages else None,
             "inbox": len(list(soak.inbox.iterdir())), "spool": len(soak.spool_files()),
             "kills": dict(kills)}
        samples.append(s)
        _show(s)
        return s

    _header()
    while time.monotonic() < end:
        now = time.monotonic()
        if soak.proc.poll() is not None:     # the daemon ended without being killed by us
            code = soak.proc.returncode
            kills["daemon_exited_by_itself"] += 1
            anomalies.append({"kind": "daemon_exited", "exit_code": code, "at": now_text(),
                              "log_tail": soak.log.read_text(errors="replace").splitlines()[-20:]})
            event("daemon_exited_by_itself", exit_code=code)
            soak.start()
            daemon_started = time.monotonic()
            awaiting_comeback = (soak.proc.pid, daemon_started)
            event("daemon_started", pid=soak.proc.pid)
        if now >= next_drop:
            dropped.append(drop(soak, len(dropped) + 1))
            next_drop += args.every_s
        if now >= next_worker:
            if worker_due_since is None:
                worker_due_since = now
            live = soak.live_workers()
            if live:
                os.kill(live[0], signal.SIGKILL)
                kills["worker"] += 1
                event("worker_killed", pid=live[0], waited_s=round(now - worker_due_since, 1))
                next_worker += args.kill_worker_s
                worker_due_since = None
            elif now - worker_due_since > 60:
                kills["worker_none_live"] += 1
                event("worker_kill_skipped_none_live")
                next_worker += args.kill_worker_s
                worker_due_since = None
        if now >= next_daemon:
            old = soak.proc.pid
            soak.kill()
            kills["daemon"] += 1
            soak.start()
            daemon_started = time.monotonic()
            awaiting_comeback = (soak.proc.pid, daemon_started)
            event("daemon_killed_and_started", killed=old, pid=soak.proc.pid)
            next_daemon += args.kill_daemon_s
        if now >= next_server:
            mode = server_modes[kills["server"] % 2]
            started = time.monotonic()
            pg.stop(mode)
            pg.resume()
            kills["server"] += 1
            event("server_restarted", mode=mode, took_s=round(time.monotonic() - started, 1))
            next_server += args.restart_server_s
        if awaiting_comeback is not None and soak.live_workers():
            pid, since = awaiting_comeback
            event("daemon_back", pid=pid, worker_live_after_s=round(time.monotonic() - since, 1))
            awaiting_comeback = None
        elif awaiting_comeback is not None and time.monotonic() - awaiting_comeback[1] > 180:
            anomalies.append({"kind": "daemon_not_back", "pid": awaiting_comeback[0], "at": now_text(),
                              "log_tail": soak.log.read_text(errors="replace").splitlines()[-20:]})
            event("daemon_not_back_after_180_s", pid=awaiting_comeback[0])
            awaiting_comeback = None
        if now >= next_sample:
            sample("run")
            next_sample += args.sample_s
        time.sleep(0.2)

    # -- settle ------------------------------------------------------------------------------------
    event("drops_stopped", dropped=len(dropped))
    names = set(dropped)
    deadline = time.monotonic() + args.settle_s
    settled_after = None
    while time.monotonic() < deadline:
        if soak.proc.poll() is not None:
            kills["daemon_exited_by_itself"] += 1
            anomalies.append({"kind": "daemon_exited", "exit_code": soak.proc.returncode, "at": now_text(),
                              "log_tail": soak.log.read_text(errors="replace").splitlines()[-20:]})
            event("daemon_exited_by_itself", exit_code=soak.proc.returncode)
            soak.start()
            daemon_started = time.monotonic()
        jobs = soak.jobs()
        if jobs is not None:
            settled = {Path(src).name for _, src, state, *_ in jobs if state in SETTLED}
            if names <= settled and not soak.intents_busy() and not any(soak.inbox.iterdir()):
                settled_after = round(time.monotonic() - end, 1)
                break
        if time.monotonic() >= next_sample:
            sample("settle")
            next_sample += args.sample_s
        time.sleep(1)
    last = sample("end")
    event("settled" if settled_after is not None else "settle_deadline_passed", after_s=settled_after)
    code = soak.stop()
    event("daemon_stopped", exit_code=code)
    return {"dropped": dropped, "samples": samples, "events": events, "kills": kills,
            "settled_after_s": settled_after, "daemon_exit_code": code, "root": str(root),
            "verdict": check(args, soak, dropped, samples, anomalies), "last": last}


def check(args: argparse.Namespace, soak: Soak, dropped: list[str], samples: list[dict],
          anomalies: list[dict]) -> dict:
    jobs = soak.jobs() or []
    by_name: dict[str, list[tuple]] = {}
    for row in jobs:
        by_name.setdefault(Path(row[1]).name, []).append(row)
    lost, twice, failed, not_ours = [], [], [], sorted(set(by_name) - set(dropped))
    outbox = sorted(p.relative_to(soak.outbox).as_posix() for p in soak.outbox.rglob("*.md")) \
        if soak.outbox.exists() else []
    archive = sorted(p.relative_to(soak.archive).as_posix() for p in soak.archive.rglob("*") if p.is_file()) \
        if soak.archive.exists() else []
    failed_dir = sorted(p.name for p in soak.failed.rglob("*") if p.is_file()) if soak.failed.exists() else []
    inbox_left = sorted(p.name for p in soak.inbox.iterdir())
    spool_left = sorted(p.name for p in soak.spool_files())
    for name in dropped:
        rows = by_name.get(name, [])
        done = [r for r in rows if r[2] == "done"]
        stem = Path(name).stem
        mds = [o for o in outbox if Path(o).stem == stem or Path(o).stem.startswith(stem + " (")]
        kept = [a for a in archive if Path(a).stem == stem or Path(a).stem.startswith(stem + " (")]
        if any(r[2] == "failed" for r in rows):
            failed.append({"name": name, "jobs": rows})
        if not done or not mds:
            lost.append({"name": name, "jobs": rows, "outbox": mds, "archive": kept,
                         "in_inbox": name in inbox_left, "in_spool": [s for s in spool_left if name in s]})
        if len(rows) > 1 or len(done) > 1 or len(mds) > 1 or len(kept) > 1:
            twice.append({"name": name, "jobs": rows, "outbox": mds, "archive": kept})
    for item in [*lost, *twice, *failed]:
        ids = [r[0] for r in item["jobs"]]
        item["events"] = [list(e) for e in soak.query(
            f"SELECT job_id, page_no, at, kind, detail FROM events WHERE job_id IN ({','.join(map(str, ids))}) "
            "ORDER BY id") or []] if ids else []
        item["log"] = soak.log_lines(Path(item["name"]).stem)
    minutes = args.minutes
    first = [s["daemon_rss_kb"] for s in samples if s["phase"] == "run" and s["t_s"] <= 300 and s["daemon_rss_kb"]]
    lastw = [s["daemon_rss_kb"] for s in samples
             if s["phase"] == "run" and s["t_s"] >= minutes * 60 - 300 and s["daemon_rss_kb"]]
    all_rss = [s["daemon_rss_kb"] for s in samples if s["daemon_rss_kb"]]
    worker_rss = [r for s in samples for r in s["workers_rss_kb"] if r]
    rss = {"daemon_first_5min_median_kb": statistics.median(first) if first else None,
           "daemon_last_5min_median_kb": statistics.median(lastw) if lastw else None,
           "daemon_max_kb": max(all_rss) if all_rss else None,
           "worker_max_kb": max(worker_rss) if worker_rss else None}
    rss["ratio_last_over_first"] = round(rss["daemon_last_5min_median_kb"] / rss["daemon_first_5min_median_kb"], 3) \
        if first and lastw else None
    rss["flat"] = rss["ratio_last_over_first"] is not None and rss["ratio_last_over_first"] <= 1.2
    verdict = {"dropped": len(dropped), "jobs": len(jobs),
               "done": sum(1 for r in jobs if r[2] == "done"),
               "failed": sum(1 for r in jobs if r[2] == "failed"),
               "duplicate_jobs": sum(1 for r in jobs if r[2] == "duplicate"),
               "outbox_md": len(outbox), "archive_files": len(archive), "failed_dir": failed_dir,
               "inbox_left": inbox_left, "spool_left": spool_left, "jobs_not_dropped": not_ours,
               "lost": lost, "twice": twice, "failed_docs": failed, "anomalies": anomalies, "rss": rss}
    verdict["ok"] = (not lost and not twice and not failed and not anomalies and not inbox_left
                     and not spool_left and len(outbox) == len(dropped) and len(archive) == len(dropped)
                     and rss["flat"])
    return verdict


COLUMNS = ("t_s", "daemon_up_s", "daemon_rss_kb", "workers_rss_kb", "dropped", "done", "failed",
           "pages_done", "inbox", "spool")


def _header() -> None:
    print(f"{'t s':>7} {'up s':>7} {'daemon RSS':>11} {'workers RSS':>14} {'dropped':>8} {'done':>6} "
          f"{'failed':>7} {'pages':>6} {'inbox':>6} {'spool':>6}  kills w/d/s", flush=True)


def _show(s: dict) -> None:
    def mb(kb: int | None) -> str:
        return "-" if kb is None else f"{kb / 1024:.0f} MB"
    k = s["kills"]
    print(f"{s['t_s']:>7.0f} {s['daemon_up_s']:>7.0f} {mb(s['daemon_rss_kb']):>11} "
          f"{','.join(mb(r) for r in s['workers_rss_kb']) or '-':>14} {s['dropped']:>8} "
          f"{'-' if s['done'] is None else s['done']:>6} {'-' if s['failed'] is None else s['failed']:>7} "
          f"{'-' if s['pages_done'] is None else s['pages_done']:>6} {s['inbox']:>6} {s['spool']:>6}  "
          f"{k['worker']}/{k['daemon']}/{k['server']}  {s['phase']}", flush=True)


def _write(args: argparse.Namespace, result: dict) -> None:
    v = result["verdict"]
    rss = v["rss"]
    print()
    print(f"dropped {v['dropped']}, jobs {v['jobs']}, done {v['done']}, failed {v['failed']}, "
          f"duplicate jobs {v['duplicate_jobs']}, outbox .md {v['outbox_md']}, archive {v['archive_files']}")
    print(f"kills: worker {result['kills']['worker']} (skipped, none live: {result['kills']['worker_none_live']}), "
          f"daemon {result['kills']['daemon']}, server restarts {result['kills']['server']}, "
          f"daemon exits by itself {result['kills']['daemon_exited_by_itself']}")
    print(f"settled {result['settled_after_s']} s after the drops stopped; daemon exit {result['daemon_exit_code']}")
    kb = lambda x: "-" if x is None else f"{x / 1024:.0f} MB"   # noqa: E731
    print(f"daemon RSS: first 5 min median {kb(rss['daemon_first_5min_median_kb'])}, last 5 min median "
          f"{kb(rss['daemon_last_5min_median_kb'])}, ratio {rss['ratio_last_over_first']}, max "
          f"{kb(rss['daemon_max_kb'])}; worker max {kb(rss['worker_max_kb'])}")
    print(f"lost {len(v['lost'])}, twice {len(v['twice'])}, failed {len(v['failed_docs'])}, "
          f"anomalies {len(v['anomalies'])}, left in inbox {len(v['inbox_left'])}, in spool {len(v['spool_left'])}, "
          f"RSS flat {rss['flat']}  ->  {'OK' if v['ok'] else 'NOT OK'}")
    for item in [*v["lost"], *v["twice"], *v["failed_docs"]]:
        print(f"  {item['name']}: jobs {item['jobs']}")
    out = ROOT / "bench" / "results" / f"soak-{args.ledger}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "when": now_text(),
        "machine": machine(),
        "commit": git("rev-parse", "--short", "HEAD"),
        "parameters": {k: getattr(args, k) for k in ("minutes", "ledger", "every_s", "kill_worker_s",
                                                     "kill_daemon_s", "restart_server_s", "max_tokens",
                                                     "sample_s", "settle_s")}
        | {"workers": 1, "engine": "mlx-vlm", "model": "tiny random-weight DeepSeek-OCR", "mode": "tiny"},
        "kills": result["kills"], "settled_after_s": result["settled_after_s"],
        "daemon_exit_code": result["daemon_exit_code"], "verdict": v, "samples": result["samples"],
        "events": result["events"], "folders": result["root"]}, indent=2, default=str) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    sys.exit(main())
