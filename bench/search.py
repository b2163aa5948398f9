"""Full-text search latency: `Ledger.search` (the query `ocrd search` and the API's /v1/search run,
snippets and job rows included) on a ledger of 100,000 done pages, SQLite (FTS5) and PostgreSQL
(tsvector + GIN).

    .venv/bin/python bench/search.py [--pages 100000] [--words 300] [--queries 40] [--limit 20]
                                     [--skip-sqlite] [--skip-postgresql] [--out FILE]

Writes bench/results/search.json. Each ledger is made by the real migrations (v5: the FTS5 table
and its triggers on SQLite, the page_search table, its GIN index and trigger on PostgreSQL), then
filled with raw inserts in big transactions (going through claim/complete would take an hour):
jobs of 10 pages, every page done with `text` and `search_text` set, so the triggers index them
as they index a worker's complete_page. PostgreSQL is a throwaway server
(tests/pgserver.py: fsync off, 32 MB shared_buffers) and is ANALYZEd and VACUUMed after the build,
as autovacuum would have by then.

Page text: `--words` words drawn from a 30,000-word made-up vocabulary with Zipf's law (s = 1.1:
the ten commonest words are on nearly every page), and every 97th page a word of its own, so
queries run from a word on every page to a word on one. Query kinds, `--queries` of each, drawn
afresh for each query: common (rank 1-10), middling (rank 100-1000), rare (rank > 20,000: still
on dozens of pages), one page (a word on one page only), absent (on no page), two words (a common
and a middling one), a phrase (two adjacent words of a page like the ledger's), OR of two rare
words, a common word minus a middling one. Latency is the wall time of `Ledger.search(query,
limit)` in this process, after one warm-up round of every kind.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Callable

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))          # pgserver.py

from ocrd.ledger import Ledger                    # noqa: E402
from ocrd.ledger.clock import to_text             # noqa: E402

RESULTS = ROOT / "bench" / "results" / "search.json"
VOCABULARY = 30_000
ZIPF_S = 1.1
PAGES_PER_JOB = 10
UNIQUE_EVERY = 97
_SYLLABLES = ("ka ri mo te lu sa ne vo pi da go re mi ta lo be fu ha ki no ra su we yo zi "
              "bar den fol gar hin jor kel lam mor nis pol ran sel tor vin wex").split()


def vocabulary(rng: random.Random) -> list[str]:
    """VOCABULARY distinct made-up words of 2-4 syllables, commonest first."""
    words: dict[str, None] = {}
    while len(words) < VOCABULARY:
        words["".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 4)))] = None
    return list(words)


def page_texts(vocab: list[str], pages: int, words: int, seed: int = 7):
    """Yield each page's text: `words` words drawn by Zipf's law; every UNIQUE_EVERY-th page also
    holds a word of its own (`solo<n>`), found on that page only."""
    ranks = np.arange(1, len(vocab) + 1, dtype=np.float64)
    p = ranks ** -ZIPF_S
    p /= p.sum()
    gen = np.random.default_rng(seed)
    arr = np.array(vocab, dtype=object)
    for start in range(0, pages, 1000):
        n = min(1000, pages - start)
        drawn = arr[gen.choice(len(vocab), size=(n, words), p=p)]
        for i, row in enumerate(drawn, start=start):
            yield " ".join(row) + (f" solo{i}" if i % UNIQUE_EVERY == 0 else "")


def queries(vocab: list[str], sample_page: Callable[[], str], per_kind: int, pages: int,
            rng: random.Random) -> dict[str, list[str]]:
    def pick(lo: int, hi: int) -> str:
        return vocab[rng.randrange(lo, hi)]

    def phrase() -> str:
        words = sample_page().split()
        i = rng.randrange(len(words) - 1)
        return f'"{words[i]} {words[i + 1]}"'

    kinds: dict[str, Callable[[], str]] = {
        "common": lambda: pick(0, 10),
        "middling": lambda: pick(100, 1000),
        "rare": lambda: pick(20_000, VOCABULARY),
        "one page": lambda: f"solo{rng.randrange(0, pages, UNIQUE_EVERY)}",
        "absent": lambda: "zq" + pick(0, VOCABULARY),
        "two words": lambda: f"{pick(0, 10)} {pick(100, 1000)}",
        "phrase": phrase,
        "or": lambda: f"{pick(20_000, VOCABULARY)} OR {pick(20_000, VOCABULARY)}",
        "minus": lambda: f"{pick(0, 10)} -{pick(100, 1000)}",
    }
    return {kind: [make() for _ in range(per_kind)] for kind, make in kinds.items()}


# -- filling a ledger --------------------------------------------------------------------------------
def _rows(texts, pages: int, stamp: str):
    """(job rows, page rows) in one pass: jobs of PAGES_PER_JOB done pages."""
    jobs, page_rows = [], []
    for i, text in enumerate(texts):
        job = i // PAGES_PER_JOB + 1
        if i % PAGES_PER_JOB == 0:
            jobs.append((job, "/in", f"/in/scans/{job}.pdf", "done", PAGES_PER_JOB, PAGES_PER_JOB,
                         stamp, stamp, stamp, f"/out/scans/{job}.md"))
        page_rows.append((job, i % PAGES_PER_JOB + 1, "done", stamp, text, text))
    return jobs, page_rows


_JOB_COLS = ("id, inbox, source_path, state, pages_total, pages_done, created_at, updated_at, "
             "finished_at, output_path")
_PAGE_COLS = "job_id, page_no, state, finished_at, text, search_text"


def fill_sqlite(path: Path, texts, pages: int, stamp: str) -> None:
    Ledger(f"sqlite:///{path}").close()              # the schema through the real migrations
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA synchronous = OFF")
    jobs, rows = _rows(texts, pages, stamp)
    conn.execute("BEGIN")
    conn.executemany(f"INSERT INTO jobs ({_JOB_COLS}, attempts, priority) VALUES (?,?,?,?,?,?,?,?,?,?,1,0)", jobs)
    conn.executemany(f"INSERT INTO pages ({_PAGE_COLS}, attempts, priority) VALUES (?,?,?,?,?,?,1,0)", rows)
    conn.execute("COMMIT")
    conn.close()


def fill_postgresql(url: str, dsn: str, texts, pages: int, stamp: str) -> None:
    import psycopg

    Ledger(url).close()
    jobs, rows = _rows(texts, pages, stamp)
    with psycopg.connect(dsn) as conn:
        with conn.cursor() as cur:
            with cur.copy(f"COPY jobs ({_JOB_COLS}, attempts, priority) FROM STDIN") as copy:
                for job in jobs:
                    copy.write_row((*job, 1, 0))
            with cur.copy(f"COPY pages ({_PAGE_COLS}, attempts, priority) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row((*row, 1, 0))
            cur.execute("SELECT setval('jobs_id_seq', (SELECT max(id) FROM jobs))")
    with psycopg.connect(dsn, autocommit=True) as conn:
        for table in ("pages", "page_search", "jobs"):
            conn.execute(f"VACUUM ANALYZE {table}")


# -- timing ------------------------------------------------------------------------------------------
def time_queries(ledger: Ledger, kinds: dict[str, list[str]], limit: int) -> dict:
    for qs in kinds.values():                      # warm-up: caches, prepared plans
        ledger.search(qs[0], limit)
    out, every = {}, []
    for kind, qs in kinds.items():
        ms, hits = [], []
        for q in qs:
            t0 = time.perf_counter()
            found = ledger.search(q, limit)
            ms.append((time.perf_counter() - t0) * 1000)
            hits.append(len(found))
        every += ms
        out[kind] = {"p50_ms": round(statistics.median(ms), 2), "p95_ms": round(_p95(ms), 2),
                     "max_ms": round(max(ms), 2), "mean_hits": round(statistics.mean(hits), 1),
                     "example": qs[0]}
    out["all"] = {"p50_ms": round(statistics.median(every), 2), "p95_ms": round(_p95(every), 2),
                  "max_ms": round(max(every), 2), "queries": len(every)}
    return out


def _p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20, method="inclusive")[-1]


def report(name: str, made: dict, timing: dict) -> None:
    print(f"\n{name}: {made['pages']:,} pages, built in {made['build_s']} s"
          + (f", {made['file_mb']} MB" if "file_mb" in made else ""))
    print(f"  {'query':<10} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8} {'hits':>6}  example")
    for kind, t in timing.items():
        if kind != "all":
            print(f"  {kind:<10} {t['p50_ms']:>8} {t['p95_ms']:>8} {t['max_ms']:>8} {t['mean_hits']:>6}  {t['example']}")
    a = timing["all"]
    print(f"  {'all':<10} {a['p50_ms']:>8} {a['p95_ms']:>8} {a['max_ms']:>8}          (p95 target <= 50 ms)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=100_000)
    parser.add_argument("--words", type=int, default=300, help="words per page")
    parser.add_argument("--queries", type=int, default=40, help="queries of each kind")
    parser.add_argument("--limit", type=int, default=20)
    parser.add_argument("--skip-sqlite", action="store_true")
    parser.add_argument("--skip-postgresql", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    rng = random.Random(11)
    vocab = vocabulary(rng)
    sample = list(page_texts(vocab, 200, args.words, seed=99))     # pages like the ledger's, for phrases
    kinds = queries(vocab, lambda: rng.choice(sample), args.queries, args.pages, rng)
    stamp = to_text(datetime.now(UTC))
    results: dict = {"when": stamp, "python": platform.python_version(), "sqlite_version": sqlite3.sqlite_version,
                     "platform": platform.platform(), "cpus": os.cpu_count(), "pages": args.pages,
                     "words_per_page": args.words, "vocabulary": VOCABULARY, "zipf_s": ZIPF_S,
                     "limit": args.limit, "queries_per_kind": args.queries}
    with tempfile.TemporaryDirectory(prefix="ocrd-bench-search-") as tmp:
        if not args.skip_sqlite:
            path = Path(tmp) / "ledger.db"
            t0 = time.monotonic()
            fill_sqlite(path, page_texts(vocab, args.pages, args.words), args.pages, stamp)
            made = {"pages": args.pages, "build_s": round(time.monotonic() - t0, 1),
                    "file_mb": round(path.stat().st_size / 1e6, 1)}
            with Ledger(f"sqlite:///{path}") as ledger:
                timing = time_queries(ledger, kinds, args.limit)
            results["sqlite"] = {**made, "queries": timing}
            report("SQLite (FTS5)", made, timing)
        if not args.skip_postgresql:
            from pgserver import find_bin_dir, start_server, stop_server
            import psycopg

            bin_dir = find_bin_dir()
            if bin_dir is None:
                raise SystemExit("PostgreSQL server binaries not found (or --skip-postgresql)")
            server = start_server(bin_dir)
            try:
                with psycopg.connect(server.dsn("postgres"), autocommit=True) as admin:
                    admin.execute("CREATE DATABASE search")
                    version = admin.execute("SHOW server_version").fetchone()[0]
                t0 = time.monotonic()
                fill_postgresql(server.url("search"), server.dsn("search"),
                                page_texts(vocab, args.pages, args.words), args.pages, stamp)
                made = {"pages": args.pages, "build_s": round(time.monotonic() - t0, 1),
                        "server": version}
                with Ledger(server.url("search")) as ledger:
                    timing = time_queries(ledger, kinds, args.limit)
                results["postgresql"] = {**made, "queries": timing}
                report(f"PostgreSQL {version} (page_search: tsvector + GIN)", made, timing)
            finally:
                stop_server(server)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
