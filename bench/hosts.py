"""Several hosts on one PostgreSQL ledger: pages/s of one daemon vs two, and claims/s at 1, 2, 4.

    .venv/bin/python bench/hosts.py [--docs 48] [--rounds 3] [--max-tokens 16] [--batch auto]
                                    [--claim-seconds 10] [--claim-pages 20000] [--procs 1,2,4]
                                    [--claim-rounds 2] [--skip-daemons] [--skip-claims]
                                    [--out FILE] [--keep DIR]

About 4 minutes on a 2-core machine with the defaults.

A throwaway PostgreSQL server (tests/pgserver.py), then:

1. pages/s, drop -> last outbox file, with the tiny random-weight DeepSeek-OCR (tests/tinymodel.py,
   engine "mlx-vlm", mode "tiny"), every run on `--docs` fresh single-page PNGs (distinct text, so
   none is a duplicate):
     one:      daemon A alone (`ocrd run`, [ledger] host = "a", the inbox, 1 worker);
     two:      A plus daemon B (host = "b", no [[inbox]], 1 worker): B's worker fetches the
               document from `blobs`, and A's supervisor delivers the pages B stored (output/delivery.py);
     one-x2:   the control: A alone with 2 workers (the same two worker processes, one host).
   Each round runs the three in this order; each keeps its best round (the machine is noisy).
   The two-daemon run also reports how many pages each host's workers did (pages.lease_owner ->
   workers.host) and the delivery lag (the page stored -> its job done) for each host's pages:
   A's delivery writes a document at once when its own worker says the last page is stored; a
   page of B waits for A's delivery round (every 1 s). Each daemon's log is scanned for error
   lines and the documents it delivered.
   Both daemons share this machine's cores, so two/one measures what the mechanism costs or
   gains here (blob fetch, remote delivery), not what a second machine would add; two/one-x2 is
   the mechanism against the same two workers on one host.
2. claims/s: 1, 2, 4 processes, each with its own `Ledger(url, host="h<i>")`, looping
   claim_pages(n=1) + complete_page (+ finish_job on a job's last page, as bench/ledger.py) for
   `--claim-seconds` on a queue of `--claim-pages` pages (50 per job, fake spool paths: no blobs),
   a fresh copy of it per run (CREATE DATABASE ... TEMPLATE); then checks that every claim ended
   done exactly once (page_running / page_done events per page, done pages == claims). The same at
   1 process on SQLite for reference. `--claim-rounds` rounds; each level keeps its best.

Prints tables and writes bench/results/hosts.json (machine, `when`, every run, the ratios).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests")]

from PIL import Image, ImageDraw  # noqa: E402
from procs import log_entries, machine, run_together  # noqa: E402  (bench/procs.py)

OCRD = str(Path(sys.executable).parent / "ocrd")
RESULTS = ROOT / "bench" / "results" / "hosts.json"
PAGES_PER_JOB = 50               # the claims queue


# -- the server --------------------------------------------------------------------------------------
class Pg:
    """The throwaway server and a few admin statements."""

    def __init__(self) -> None:
        from pgserver import find_bin_dir, start_server

        bin_dir = find_bin_dir()
        if bin_dir is None:
            raise SystemExit("PostgreSQL server binaries (initdb, pg_ctl, postgres) not found")
        self.server = start_server(bin_dir)
        self.version = self.sql("postgres", "SHOW server_version")[0][0]

    def create(self, name: str, template: str | None = None) -> str:
        self.sql("postgres", f"CREATE DATABASE {name}" + (f" TEMPLATE {template}" if template else ""),
                 autocommit=True)
        return self.server.url(name)

    def sql(self, db: str, statement: str, *params: object, autocommit: bool = False) -> list[tuple]:
        import psycopg

        with psycopg.connect(self.server.dsn(db), autocommit=autocommit) as conn:
            cur = conn.execute(statement, params or None)
            return cur.fetchall() if cur.description else []

    def stop(self) -> None:
        from pgserver import stop_server

        stop_server(self.server)


# -- part 1: daemons ---------------------------------------------------------------------------------
def make_docs(folder: Path, prefix: str, n: int) -> list[Path]:
    """n single-page letter-size PNGs whose text names them (no two alike)."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for k in range(n):
        im = Image.new("RGB", (612, 792), "white")
        draw = ImageDraw.Draw(im)
        for line in range(26):
            draw.text((40, 24 + line * 28), f"{prefix} document {k + 1}, line {line + 1}: "
                      f"invoice {10000 + 37 * k + line} total {k}.{line:02d}", fill="black")
        path = folder / f"{prefix}-{k + 1:03d}.png"
        im.save(path)
        out.append(path)
    return out


class Daemon:
    """One `ocrd run` process on the shared ledger: host `name`, an inbox or none."""

    def __init__(self, root: Path, name: str, url: str, model: Path, args: argparse.Namespace,
                 *, inbox: bool) -> None:
        self.root, self.name, self.url = root, name, url
        self.inbox, self.outbox = root / "inbox", root / "outbox"
        self.has_inbox = inbox
        self.model, self.args = model, args
        self.proc: subprocess.Popen | None = None
        self.log = root / "daemon.log"
        root.mkdir(parents=True, exist_ok=True)

    def start(self, workers: int, stamp: str) -> None:
        """`stamp`: the ledger's clock now (to_text); wait_loaded counts workers started after it."""
        from configs import to_toml

        raw: dict = {
            "state_dir": str(self.root / "state"),
            "ledger": {"url": self.url, "host": self.name},
            "model": {"path": str(self.model), "mode": "tiny", "max_tokens": self.args.max_tokens,
                      "engine": "mlx-vlm", "page_timeout_s": 300},
            "workers": {"count": workers, "batch": self.args.batch},
            "pdf": {"dpi": 72},
        }
        if self.has_inbox:
            self.inbox.mkdir(exist_ok=True)
            raw["inbox"] = [{"path": str(self.inbox), "outbox": str(self.outbox), "archive": "",
                             "failed": str(self.root / "failed"), "stable_for_s": 0.2}]
        config = self.root / "ocrd.toml"
        config.write_text(to_toml(raw))
        with open(self.log, "ab") as out:
            out.write(f"\n==== start: {workers} worker(s) ====\n".encode())
            out.flush()
            self.proc = subprocess.Popen([OCRD, "run"], stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL,
                                         env={**os.environ, "OCRD_CONFIG": str(config)})
        self.workers, self.stamp = workers, stamp

    def wait_loaded(self, pg: Pg, db: str, timeout: float = 300) -> float:
        """Seconds until every worker of this start has loaded the model (idle or busy in the
        ledger; `model_status` alone would still read the previous start's "ok")."""
        started = time.monotonic()

        def loaded() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon {self.name} exited {self.proc.returncode}; see {self.log}:\n"
                                   + self.log.read_text()[-3000:])
            [(n,)] = pg.sql(db, "SELECT count(*) FROM workers WHERE host = %s AND started_at >= %s "
                                "AND state IN ('idle', 'busy')", self.name, self.stamp)
            return n >= self.workers

        _wait(loaded, timeout, f"daemon {self.name}'s model ({self.log})")
        return time.monotonic() - started

    def stop(self, timeout: float = 60) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None


def timed_drop(daemon: Daemon, docs: list[Path], staging: Path) -> float:
    """Move the documents into the inbox (each whole at once); seconds until every one of them
    has its outbox file."""
    staging.mkdir(parents=True, exist_ok=True)
    staged = []
    for doc in docs:
        copy = staging / doc.name
        shutil.copyfile(doc, copy)
        staged.append(copy)
    wanted = {d.with_suffix(".md").name for d in docs}
    started = time.perf_counter()
    for copy in staged:
        os.replace(copy, daemon.inbox / copy.name)

    def all_out() -> bool:
        if daemon.proc.poll() is not None:
            raise RuntimeError(f"daemon {daemon.name} exited {daemon.proc.returncode}; see {daemon.log}")
        have = {p.name for p in daemon.outbox.glob("*.md")} if daemon.outbox.is_dir() else set()
        return wanted <= have

    _wait(all_out, 600, f"{len(docs)} outbox files ({daemon.log})", interval=0.02)
    return time.perf_counter() - started


def run_stats(pg: Pg, db: str, docs: list[Path]) -> dict:
    """From the ledger, for this run's documents: pages per host (the worker that stored each
    page), job states, and the delivery lag (page stored -> job done) per host."""
    names = [d.name for d in docs]
    rows = pg.sql(db, """
        SELECT w.host, j.state, j.host, p.finished_at, j.finished_at
        FROM jobs j JOIN pages p ON p.job_id = j.id LEFT JOIN workers w ON w.id = p.lease_owner
        WHERE reverse(split_part(reverse(j.source_path), '/', 1)) = ANY(%s)""", names)
    per_host: dict[str, int] = {}
    lags: dict[str, list[float]] = {}
    states: dict[str, int] = {}
    for worker_host, job_state, _job_host, page_done, job_done in rows:
        key = worker_host or "?"
        per_host[key] = per_host.get(key, 0) + 1
        states[job_state] = states.get(job_state, 0) + 1
        if page_done and job_done:
            lag = (datetime.fromisoformat(job_done) - datetime.fromisoformat(page_done)).total_seconds()
            lags.setdefault(key, []).append(lag)
    return {"pages_by_worker_host": dict(sorted(per_host.items())), "job_states": states,
            "delivery_lag_s": {h: {"median": round(statistics.median(v), 3), "max": round(max(v), 3)}
                               for h, v in sorted(lags.items())}}


def bench_daemons(pg: Pg, root: Path, args: argparse.Namespace) -> dict:
    from tinymodel import build_tiny_deepseekocr

    from ocrd.ledger import Ledger
    from ocrd.ledger.clock import to_text

    model = build_tiny_deepseekocr(root / "tiny-deepseekocr")
    db = "hosts_daemons"
    url = pg.create(db)
    ledgers: dict[str, Ledger] = {}

    def ledger_for(host: str) -> Ledger:
        if host not in ledgers:
            ledgers[host] = Ledger(url, host=host)
        return ledgers[host]

    a = Daemon(root / "a", "a", url, model, args, inbox=True)
    b = Daemon(root / "b", "b", url, model, args, inbox=False)
    runs: dict[str, list[dict]] = {"one": [], "two": [], "one-x2": []}
    print(f"pages/s, drop -> last outbox file, {args.docs} single-page PNGs per run "
          f"(tiny model, max_tokens {args.max_tokens}, batch {args.batch})")
    print(f"{'round':>5} {'run':8} {'daemons':>7} {'workers':>7} {'seconds':>8} {'pages/s':>8}  pages by host")
    try:
        for r in range(1, args.rounds + 1):
            for name in runs:
                docs = make_docs(root / "docs", f"r{r}-{name}", args.docs)
                a_workers = 2 if name == "one-x2" else 1
                if a.proc is None or a.workers != a_workers:
                    a.stop()
                    a.start(a_workers, to_text(ledger_for("a").clock()))
                    a.wait_loaded(pg, db)
                if name == "two":
                    b.start(1, to_text(ledger_for("b").clock()))
                    b.wait_loaded(pg, db)
                seconds = timed_drop(a, docs, root / "staging")
                if name == "two":
                    b.stop()
                stats = run_stats(pg, db, docs)
                row = {"round": r, "run": name, "daemons": 2 if name == "two" else 1,
                       "workers": a_workers + (1 if name == "two" else 0), "pages": len(docs),
                       "seconds": round(seconds, 3), "pages_per_s": round(len(docs) / seconds, 3),
                       **stats}
                runs[name].append(row)
                print(f"{r:>5} {name:8} {row['daemons']:>7} {row['workers']:>7} {seconds:>8.2f} "
                      f"{row['pages_per_s']:>8.2f}  {row['pages_by_worker_host']}", flush=True)
            a.stop()   # a fresh A every round (the one-x2 run left it with 2 workers)
        hosts = ledger_for("a").hosts_status()
    finally:
        for d in (b, a):
            try:
                d.stop()
            finally:
                _kill_workers(pg, db, d.name)
        for ledger in ledgers.values():
            ledger.close()
    return _summary(runs, {d.name: _log_summary(d.log) for d in (a, b)}, hosts, args)


def _summary(runs: dict[str, list[dict]], logs: dict, hosts: list[dict], args: argparse.Namespace) -> dict:
    """The daemons' part of the results: every run, the best of each kind and their ratios."""
    for name, summary in logs.items():
        for line in summary["errors_first"]:
            print(f"daemon {name} logged: {line}")
    best = {name: min(rs, key=lambda x: x["seconds"]) for name, rs in runs.items()}
    two = best["two"]
    ratios = {"two/one": round(two["pages_per_s"] / best["one"]["pages_per_s"], 3),
              "two/one-x2": round(two["pages_per_s"] / best["one-x2"]["pages_per_s"], 3),
              "one-x2/one": round(best["one-x2"]["pages_per_s"] / best["one"]["pages_per_s"], 3)}
    print("best of each: " + ", ".join(f"{n} {r['pages_per_s']:.2f} pages/s" for n, r in best.items()))
    print(f"two-daemon best run: pages by host {two['pages_by_worker_host']}, delivery lag (page "
          f"stored -> job done) {two['delivery_lag_s']}")
    print("ratios: " + ", ".join(f"{k} = {v}" for k, v in ratios.items()))
    return {"docs": args.docs, "rounds": args.rounds, "max_tokens": args.max_tokens, "batch": args.batch,
            "model": "tiny random-weight deepseekocr (tests/tinymodel.py), engine mlx-vlm, mode tiny",
            "runs": [row for rs in runs.values() for row in rs], "best": best, "ratios": ratios,
            "daemon_logs": logs,
            "hosts_at_end": [{k: h[k] for k in ("name", "state", "inboxes", "workers", "backend")}
                             for h in hosts]}


def _log_summary(path: Path) -> dict:
    """Errors a daemon logged (structlog JSON lines), and the documents its delivery wrote
    (output/outbox.py's job_done: every document, whichever host's worker stored its pages)."""
    errors, delivered = [], 0
    for entry in log_entries(path):
        delivered += entry.get("event") == "job_done"
        if entry.get("level") in ("error", "critical", "exception"):
            errors.append(json.dumps(entry)[:500])
    return {"error_lines": len(errors), "errors_first": errors[:5], "jobs_delivered": delivered}


def _kill_workers(pg: Pg, db: str, host: str) -> None:
    """Never leak a worker of a daemon this bench started, whatever happened to the daemon."""
    try:
        pids = [p for (p,) in pg.sql(db, "SELECT pid FROM workers WHERE host = %s AND state NOT IN "
                                         "('stopped', 'dead')", host)]
    except Exception:
        return
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, TypeError, PermissionError):
            pass


# -- part 2: claims/s --------------------------------------------------------------------------------
def _claimer(url: str, host: str, worker_id: str, seconds: float, ready, start, done) -> None:
    from ocrd.ledger import Ledger, WorkerState

    ledger = Ledger(url, host=host)
    try:
        ledger.register_worker(worker_id, host=host, pid=os.getpid(), backend="cpu",
                               device_name="cpu", state=WorkerState.IDLE)
        ready.put(worker_id)
        start.wait()
        t0 = time.monotonic()
        claims = 0
        dry = False
        while time.monotonic() - t0 < seconds:
            pages = ledger.claim_pages(worker_id, n=1)
            if not pages:
                dry = True
                break
            for p in pages:
                claims += 1
                if ledger.complete_page(p.job_id, p.page_no, worker_id, text="x" * 200, seconds=0.0):
                    ledger.finish_job(p.job_id, f"/out/{p.job_id}.md")
        done.put((worker_id, claims, time.monotonic() - t0, dry))
    finally:
        ledger.close()


def fill_queue(url: str, pages: int) -> None:
    from ocrd.ledger import Ledger

    with Ledger(url, host="filler") as ledger:
        for j in range(pages // PAGES_PER_JOB):
            ledger.add_job(inbox="/in", source_path=f"/in/{j}.pdf", spool_path=f"/spool/{j}.pdf",
                           sha256=f"sha{j}", size_bytes=1, pages_total=PAGES_PER_JOB)


def run_claims(url: str, procs: int, seconds: float) -> dict:
    _, reports = run_together(_claimer, [(url, f"h{i}", f"h{i}-w", seconds) for i in range(procs)],
                              "claimer")
    claims = sum(r[1] for r in reports)
    wall = max(r[2] for r in reports)
    return {"processes": procs, "claims": claims, "seconds": round(wall, 3),
            "claims_per_s": round(claims / wall, 1),
            "per_process": [{"host": r[0].split("-")[0], "claims": r[1], "claims_per_s": round(r[1] / r[2], 1)}
                            for r in sorted(reports)],
            "ran_dry": any(r[3] for r in reports)}


def check_claims(url: str, row: dict) -> dict:
    """Every claim ended done exactly once: done pages == claims == page_done events, no page
    claimed or completed twice, none left running."""
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            one = lambda q: conn.execute(text(q)).scalar_one()  # noqa: E731
            check = {
                "done_pages": one("SELECT count(*) FROM pages WHERE state = 'done'"),
                "running_pages": one("SELECT count(*) FROM pages WHERE state = 'running'"),
                "page_done_events": one("SELECT count(*) FROM events WHERE kind = 'page_done'"),
                "pages_done_twice": one("SELECT count(*) FROM (SELECT job_id, page_no FROM events "
                                        "WHERE kind = 'page_done' GROUP BY job_id, page_no "
                                        "HAVING count(*) > 1) t"),
                "pages_claimed_twice": one("SELECT count(*) FROM (SELECT job_id, page_no FROM events "
                                           "WHERE kind = 'page_running' GROUP BY job_id, page_no "
                                           "HAVING count(*) > 1) t"),
                "done_pages_by_host": dict(conn.execute(text(
                    "SELECT w.host, count(*) FROM pages p JOIN workers w ON w.id = p.lease_owner "
                    "WHERE p.state = 'done' GROUP BY w.host ORDER BY w.host")).all()),
            }
    finally:
        engine.dispose()
    check["ok"] = (check["done_pages"] == check["page_done_events"] == row["claims"]
                   and check["pages_done_twice"] == check["pages_claimed_twice"] == check["running_pages"] == 0)
    return check


def bench_claims(pg: Pg, root: Path, args: argparse.Namespace) -> dict:
    procs_list = [int(p) for p in args.procs.split(",")]
    print(f"\nclaims/s: claim_pages(n=1) + complete_page for {args.claim_seconds:g} s per run, "
          f"queue of {args.claim_pages} pages ({PAGES_PER_JOB} per job), one Ledger per process")
    print(f"{'round':>5} {'backend':10} {'processes':>9} {'claims':>7} {'claims/s':>9}  "
          f"{'per process (claims/s)':40} check")
    fill_queue(pg.create("claims_tpl"), args.claim_pages)
    sqlite_tpl = root / "claims-tpl.db"
    fill_queue(f"sqlite:///{sqlite_tpl}", args.claim_pages)   # closed: checkpointed into one file
    rows = []
    for r in range(1, args.claim_rounds + 1):
        for n in procs_list:
            url = pg.create(f"claims_r{r}_p{n}", template="claims_tpl")
            row = {"round": r, "backend": "postgresql", **run_claims(url, n, args.claim_seconds)}
            row["check"] = check_claims(url, row)
            rows.append(_show_claims(row))
        path = root / f"claims-r{r}.db"
        shutil.copyfile(sqlite_tpl, path)
        url = f"sqlite:///{path}"
        row = {"round": r, "backend": "sqlite", **run_claims(url, 1, args.claim_seconds)}
        row["check"] = check_claims(url, row)
        rows.append(_show_claims(row))
    best: dict[str, dict] = {}
    for row in rows:
        key = f"{row['backend']} {row['processes']}"
        if key not in best or row["claims_per_s"] > best[key]["claims_per_s"]:
            best[key] = row
    ratios = {}
    if "postgresql 1" in best:
        one = best["postgresql 1"]["claims_per_s"]
        ratios.update({f"{k} / postgresql 1": round(v["claims_per_s"] / one, 3)
                       for k, v in best.items() if k.startswith("postgresql") and k != "postgresql 1"})
        if "sqlite 1" in best:
            ratios["postgresql 1 / sqlite 1"] = round(one / best["sqlite 1"]["claims_per_s"], 3)
    print("best of each: " + ", ".join(f"{k} {v['claims_per_s']:.1f} claims/s" for k, v in best.items()))
    print("ratios: " + ", ".join(f"{k} = {v}" for k, v in ratios.items()))
    return {"seconds_per_run": args.claim_seconds, "queue_pages": args.claim_pages,
            "pages_per_job": PAGES_PER_JOB, "rounds": args.claim_rounds,
            "loop": "claim_pages(n=1) + complete_page (+ finish_job on a job's last page)",
            "all_checks_ok": all(r["check"]["ok"] for r in rows),
            "runs": rows, "best": {k: {"claims_per_s": v["claims_per_s"], "round": v["round"],
                                       "per_process": v["per_process"]} for k, v in best.items()},
            "ratios": ratios}


def _show_claims(row: dict) -> dict:
    per = ", ".join(f"{p['host']} {p['claims_per_s']}" for p in row["per_process"])
    c = row["check"]
    verdict = "ok" if c["ok"] else f"MISMATCH {c}"
    dry = "  (queue ran dry)" if row["ran_dry"] else ""
    print(f"{row['round']:>5} {row['backend']:10} {row['processes']:>9} {row['claims']:>7} "
          f"{row['claims_per_s']:>9.1f}  {per:40} {verdict}{dry}", flush=True)
    return row


# -- main --------------------------------------------------------------------------------------------
def _wait(condition, timeout: float, what: str, interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(interval)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=48, help="single-page PNGs per daemon run")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of (one, two, one-x2); best kept")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--batch", default="auto", help='[workers] batch: "auto" or an integer')
    parser.add_argument("--claim-seconds", type=float, default=10.0)
    parser.add_argument("--claim-pages", type=int, default=20000)
    parser.add_argument("--procs", default="1,2,4", help="claimer processes per PostgreSQL run")
    parser.add_argument("--claim-rounds", type=int, default=2, help="rounds of claims runs; best kept")
    parser.add_argument("--skip-daemons", action="store_true")
    parser.add_argument("--skip-claims", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--keep", type=Path, help="work in this new folder and keep it (daemon logs)")
    args = parser.parse_args()
    if args.batch != "auto":
        args.batch = int(args.batch)


    started = time.monotonic()
    result: dict = {"when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    "load_average_at_start": [round(v, 2) for v in os.getloadavg()]}
    pg = Pg()
    try:
        result["machine"] = {**machine(device=True),
                             "postgresql": pg.version,
                             "postgresql_settings": "unix socket; fsync, full_page_writes, "
                                                    "synchronous_commit off (tests/pgserver.py)"}
        result["note"] = ("Every daemon, worker, claimer and the PostgreSQL server share this machine's "
                          f"{os.cpu_count()} cores: two/one is the mechanism's cost or gain here (blob "
                          "fetch, remote delivery), not what a second machine would add.")
        with tempfile.TemporaryDirectory(prefix="ocrd-hosts-") as tmp:
            root = Path(tmp)
            if args.keep:
                root = args.keep
                root.mkdir(parents=True, exist_ok=False)
            if not args.skip_daemons:
                result["daemons"] = bench_daemons(pg, root, args)
            if not args.skip_claims:
                result["claims"] = bench_claims(pg, root, args)
    finally:
        pg.stop()
    result["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]
    result["bench_seconds"] = round(time.monotonic() - started, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.out} ({result['bench_seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
