"""The ledger's tables (SQLAlchemy Core), as of the newest migration.

Columns are the ones DESIGN.md documents for users, plus a few that the queries need:
`jobs.duplicate_of`, `pages.id` (the claim's row key), `pages.priority` (a copy of the job's, so
the claim walks one index in order instead of sorting every queued page), `pages.started_at` and
`pages.finished_at` (pages/min), `workers.error`, `events.page_no`, and the `meta` key/value table;
and, for continuous batching, `batch` and `pages_in_flight` in `workers` and `heartbeats`; for several hosts on PostgreSQL (v3),
`jobs.host` (the host that ingested the job and delivers it), `jobs.mode`/`jobs.prompt` (its inbox's,
for workers on other hosts), `blobs` (the document's bytes while it is queued or running) and
`hosts` (each daemon's heartbeat and role); for full-text search (v5) `pages.search_text` and its
index (SEARCH_DDL: made by the migration, not by this metadata, being each engine's own), and
`jobs.options` (an API upload's own mode, prompt and formats).
Times are UTC ISO-8601 text of one fixed width, so text order is time order (in any collation:
every value has its digits and punctuation at the same places).
"""

from __future__ import annotations

from sqlalchemy import (BigInteger, CheckConstraint, Column, Float, ForeignKey, Index, Integer,
                        LargeBinary, MetaData, Table, Text, UniqueConstraint, text)

from .fsnames import FsText
from .states import JobState, PageState

metadata = MetaData()

# SQLite's INTEGER is 64-bit already; PostgreSQL's is 32-bit, too small for a 16 GB memory figure
Bytes = Integer().with_variant(BigInteger(), "postgresql")


def _in(column: str, values: type) -> CheckConstraint:
    allowed = ", ".join(f"'{v.value}'" for v in values)
    return CheckConstraint(f"{column} IN ({allowed})", name=f"ck_{column}_valid")


jobs = Table(
    "jobs", metadata,
    Column("id", Integer, primary_key=True),
    Column("inbox", FsText, nullable=False),
    Column("source_path", FsText, nullable=False),
    Column("spool_path", FsText),              # where the original lies now (see store.py)
    Column("sha256", Text),
    Column("size_bytes", Bytes),
    Column("state", Text, nullable=False),
    Column("pages_total", Integer, nullable=False, default=0),
    Column("pages_done", Integer, nullable=False, default=0),
    Column("attempts", Integer, nullable=False, default=1),
    Column("priority", Integer, nullable=False, default=0),
    Column("created_at", Text, nullable=False),
    Column("updated_at", Text, nullable=False),
    Column("finished_at", Text),
    Column("output_path", FsText),
    Column("error", FsText),
    Column("duplicate_of", Integer, ForeignKey("jobs.id")),
    Column("host", Text),                      # v3: who delivers it (NULL: written before v3)
    Column("mode", Text),                      # v3: its inbox's resolution mode and prompt
    Column("prompt", Text),
    Column("options", Text),                   # v5: JSON {mode, prompt, formats} chosen for this job
    _in("state", JobState),
)

pages = Table(
    "pages", metadata,
    Column("id", Integer, primary_key=True),
    Column("job_id", Integer, ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
    Column("page_no", Integer, nullable=False),
    Column("state", Text, nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("priority", Integer, nullable=False, default=0),
    Column("run_after", Text),                 # NULL: claimable now
    Column("lease_owner", Text),
    Column("lease_expires_at", Text),
    Column("started_at", Text),
    Column("finished_at", Text),               # set only when done
    Column("text", Text),
    Column("prompt_tokens", Integer),
    Column("generation_tokens", Integer),
    Column("seconds", Float),
    Column("finish_reason", Text),
    Column("error", FsText),
    Column("blocks", Text),                    # JSON: [{text, kind, label, box, box_fraction}]
    Column("width", Integer),                  # the image the boxes refer to, in pixels
    Column("height", Integer),
    Column("engine", Text),                    # what read the page (mlx-vlm, rapidocr, vision)
    Column("search_text", Text),               # v5: its words for search (NULL: not indexed yet)
    UniqueConstraint("job_id", "page_no", name="uq_pages_job_page"),
    _in("state", PageState),
)

workers = Table(
    "workers", metadata,
    Column("id", Text, primary_key=True),
    Column("host", Text, nullable=False),
    Column("pid", Integer, nullable=False),
    Column("backend", Text),
    Column("device_name", Text),
    Column("state", Text, nullable=False),
    Column("started_at", Text, nullable=False),
    Column("last_heartbeat_at", Text),
    Column("current_page", Text),
    Column("pages_done", Integer, nullable=False, default=0),
    Column("error", Text),
    # v2 (continuous batching): the worker's in-flight limit now, and the pages in its batch
    Column("batch", Integer, nullable=False, default=1, server_default=text("1")),
    Column("pages_in_flight", Integer, nullable=False, default=0, server_default=text("0")),
)

heartbeats = Table(
    "heartbeats", metadata,
    Column("id", Integer, primary_key=True),
    # no foreign key: a heartbeat must never fail because of worker bookkeeping
    Column("worker_id", Text, nullable=False),
    Column("at", Text, nullable=False),
    Column("backend", Text),
    Column("active_memory_bytes", Bytes),
    Column("peak_memory_bytes", Bytes),
    Column("cache_memory_bytes", Bytes),
    Column("memory_limit_bytes", Bytes),
    Column("pages_done", Integer),
    Column("tokens_per_s", Float),             # generated tokens/s over all pages in flight
    Column("batch", Integer),                  # v2; NULL in heartbeats written before it
    Column("pages_in_flight", Integer),        # v2
)

events = Table(
    "events", metadata,
    Column("id", Integer, primary_key=True),
    Column("job_id", Integer, ForeignKey("jobs.id", ondelete="CASCADE")),
    Column("page_no", Integer),
    Column("at", Text, nullable=False),
    Column("kind", Text, nullable=False),
    Column("detail", FsText, nullable=False, default=""),
)

schema_version = Table(
    "schema_version", metadata,
    Column("version", Integer, primary_key=True, autoincrement=False),   # not SERIAL
    Column("applied_at", Text, nullable=False),
    Column("description", Text, nullable=False),
)

meta = Table(
    "meta", metadata,
    Column("key", Text, primary_key=True),
    Column("value", Text, nullable=False),
)

blobs = Table(                                 # v3: PostgreSQL only, SQLite keeps the spool file
    "blobs", metadata,
    Column("job_id", Integer, ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True),
    Column("chunk_no", Integer, primary_key=True, autoincrement=False),
    Column("data", LargeBinary, nullable=False),
)

hosts = Table(                                 # v3
    "hosts", metadata,
    Column("name", Text, primary_key=True),
    Column("pid", Integer, nullable=False),
    Column("state", Text, nullable=False),     # running | stopped (dead: seen_at too old)
    Column("started_at", Text, nullable=False),
    Column("seen_at", Text, nullable=False),
    Column("inboxes", Integer, nullable=False),
    Column("workers", Integer, nullable=False),  # planned pool size (0: ingest and deliver only)
    Column("backend", Text),
    Column("device_name", Text),
    Column("instance", Text),                  # the machine's state dir (its host-id file)
)

# The claim walks this index in ORDER BY order and filters run_after from it without touching rows;
# its `state` prefix also serves the counts and the lease rescue.
Index("ix_pages_claim", pages.c.state, pages.c.priority.desc(), pages.c.job_id, pages.c.page_no,
      pages.c.run_after)
Index("ix_pages_finished_at", pages.c.finished_at)
Index("ix_jobs_state", jobs.c.state)
Index("ix_jobs_sha256", jobs.c.sha256)
Index("ix_jobs_spool_path", jobs.c.spool_path)
Index("ix_jobs_host_state", jobs.c.host, jobs.c.state)
Index("ix_heartbeats_worker_at", heartbeats.c.worker_id, heartbeats.c.at)
Index("ix_heartbeats_at", heartbeats.c.at)               # the 24 h retention delete
Index("ix_events_job_id", events.c.job_id)
Index("ix_workers_host_pid", workers.c.host, workers.c.pid)

# Full-text search over pages.search_text (v5), each engine its own way, kept in step by triggers
# with whatever writes the column. SQLite: an FTS5 table that reads its text from `pages` (external
# content: the words are stored once). PostgreSQL: `page_search`, a narrow side table of each
# page's tsvector with a GIN index; narrow (the tsvector kept out of line) so that collecting the
# ids of thousands of matching pages touches a few MB of heap, not the wide `pages` rows.
# The `simple` configuration and unicode61 both lower-case and split on punctuation without
# stemming: a word matches as written, in any language. SQLite also folds accents (cafe finds
# café); PostgreSQL does not (unaccent is not immutable).
FTS_TABLE = "pages_fts"
PG_SEARCH_TABLE = "page_search"
SEARCH_DDL = {
    "sqlite": [
        f"CREATE VIRTUAL TABLE {FTS_TABLE} USING fts5(search_text, content='pages', "
        "content_rowid='id', tokenize='unicode61 remove_diacritics 2')",
        f"CREATE TRIGGER pages_fts_insert AFTER INSERT ON pages WHEN new.search_text IS NOT NULL "
        f"BEGIN INSERT INTO {FTS_TABLE}(rowid, search_text) VALUES (new.id, new.search_text); END",
        f"CREATE TRIGGER pages_fts_update AFTER UPDATE OF search_text ON pages BEGIN "
        f"INSERT INTO {FTS_TABLE}({FTS_TABLE}, rowid, search_text) "
        "SELECT 'delete', old.id, old.search_text WHERE old.search_text IS NOT NULL; "
        f"INSERT INTO {FTS_TABLE}(rowid, search_text) "
        "SELECT new.id, new.search_text WHERE new.search_text IS NOT NULL; END",
        f"CREATE TRIGGER pages_fts_delete AFTER DELETE ON pages WHEN old.search_text IS NOT NULL "
        f"BEGIN INSERT INTO {FTS_TABLE}({FTS_TABLE}, rowid, search_text) "
        "VALUES ('delete', old.id, old.search_text); END",
    ],
    "postgresql": [
        f"CREATE TABLE {PG_SEARCH_TABLE} (page_id INTEGER PRIMARY KEY REFERENCES pages (id) "
        "ON DELETE CASCADE, search_vector TSVECTOR NOT NULL) WITH (toast_tuple_target = 128)",
        f"ALTER TABLE {PG_SEARCH_TABLE} ALTER COLUMN search_vector SET STORAGE EXTERNAL",
        f"CREATE INDEX ix_{PG_SEARCH_TABLE} ON {PG_SEARCH_TABLE} USING gin (search_vector)",
        "CREATE FUNCTION pages_search_sync() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        f"DELETE FROM {PG_SEARCH_TABLE} WHERE page_id = NEW.id; "
        f"IF NEW.search_text IS NOT NULL THEN INSERT INTO {PG_SEARCH_TABLE} (page_id, search_vector) "
        "VALUES (NEW.id, to_tsvector('simple', NEW.search_text)); END IF; RETURN NULL; END $$",
        "CREATE TRIGGER pages_search_sync AFTER INSERT OR UPDATE OF search_text ON pages "
        "FOR EACH ROW EXECUTE FUNCTION pages_search_sync()",
    ],
}
