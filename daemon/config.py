"""Load and validate the TOML config into frozen objects.

Every problem is a `ConfigError` whose message is one line naming the key, raised before the daemon
touches any file (DESIGN.md: unknown keys, wrong types and impossible values are refused at start).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..ledger.states import OnDuplicate
from .modes import MODES

ENGINE_CHOICES = ("auto", "mlx-vlm", "rapidocr", "vision", "openai")   # engines/choice.py CHOICES (it imports this module)

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "ocrd.toml"
MIN_BUDGET_BYTES = 10**6
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


class ConfigError(ValueError):
    """A config problem, in one line that names the key."""


# The dataclass defaults are the one source of every default: parse_config reads them
# (tests/daemon/test_config.py checks that configs/ocrd.toml spells the same values).

@dataclass(frozen=True)
class ModelConfig:
    path: str = "mlx-community/DeepSeek-OCR-8bit"
    prompt: str = "<image>\n<|grounding|>Convert the document to markdown."
    mode: str = "gundam"
    max_tokens: int = 8192
    page_timeout_s: float = 300.0
    engine: str = "auto"     # auto | mlx-vlm | rapidocr | vision | openai (daemon/engines/choice.py)
    # engine = "openai" (engines/openai.py): an OpenAI-compatible server reads the pages
    url: str = ""            # its base URL, e.g. http://gpu-box:8000/v1
    name: str = ""           # the model id it serves
    api_key_file: Path | None = None   # a file holding the key (never the key in the config)
    concurrency: int | None = None     # pages in flight to the server; None: "auto" (measured)
    extra_body: dict[str, Any] = field(default_factory=dict, hash=False)   # merged into each request


@dataclass(frozen=True)
class WorkersConfig:
    count: int | None = None                  # None: "auto"
    memory_budget: int | float | None = None  # None: "auto"; int: bytes; float in (0, 1]: fraction
    max_pages_per_worker: int = 500
    max_attempts: int = 3
    batch: int | None = None                  # None: "auto"; pages one worker decodes at once


@dataclass(frozen=True)
class PdfConfig:
    dpi: int = 144


FORMATS = ("md", "pdf", "json", "txt")   # what a finished document can be written as


@dataclass(frozen=True)
class OutputConfig:
    """[output]: the files each document becomes in its outbox (output/writers.py)."""
    formats: tuple[str, ...] = ("md",)


@dataclass(frozen=True)
class HooksConfig:
    """Commands run after a job ends (argv, no shell); see daemon/hooks.py."""
    on_done: tuple[str, ...] = ()
    on_failed: tuple[str, ...] = ()
    timeout_s: float = 60.0


@dataclass(frozen=True)
class MetricsConfig:
    """`listen`: "" (off) or "host:port" for Prometheus /metrics (port 0: any free port)."""
    listen: str = ""

    @property
    def address(self) -> tuple[str, int] | None:
        return listen_address(self.listen)


@dataclass(frozen=True)
class ApiConfig:
    """[api]: the HTTP API (daemon/api/). `listen` "" is off; `auth` "token" asks every request for
    the bearer token kept in the state dir, "none" serves a loopback address only; an upload over
    `max_upload` bytes is refused; `inbox` is the path of the inbox whose outbox, archive, failed
    folder and formats uploads use ("": the first inbox)."""
    listen: str = ""
    auth: str = "token"
    max_upload: int = 512 * 10**6
    inbox: str = ""

    @property
    def address(self) -> tuple[str, int] | None:
        return listen_address(self.listen)


def listen_address(listen: str) -> tuple[str, int] | None:
    """"host:port" (IPv6 in brackets) -> (host, port); "" -> None (off)."""
    if not listen:
        return None
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


def is_loopback(host: str) -> bool:
    """Whether only this machine can reach `host` (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class InboxConfig:
    # archive's default as written in a config file: expanded (~, $VARS) when the file is read

    path: Path
    outbox: Path
    archive: Path | None          # None: delete originals after success
    failed: Path
    recursive: bool = True
    polling: bool = False
    stable_for_s: float = 2.0
    ignore: tuple[str, ...] = ()
    on_duplicate: OnDuplicate = OnDuplicate.SKIP
    prompt: str | None = None
    mode: str | None = None
    formats: tuple[str, ...] | None = None   # None: [output] formats

    @property
    def key(self) -> str:
        """What the ledger stores in `jobs.inbox`."""
        return str(self.path)


@dataclass(frozen=True)
class Config:
    state_dir: Path
    ledger_url: str = ""
    host: str = ""                # [ledger] host: this host's name in a shared ledger ("": hostname)
    backup_every_s: float = 24 * 3600.0   # [ledger] backup_every ("24h"); 0: no backups (daemon/backups.py)
    backup_keep: int = 7                  # [ledger] backup_keep: the newest this many are kept
    model: ModelConfig = field(default_factory=ModelConfig)
    workers: WorkersConfig = field(default_factory=WorkersConfig)
    pdf: PdfConfig = field(default_factory=PdfConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    hooks: HooksConfig = field(default_factory=HooksConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    api: ApiConfig = field(default_factory=ApiConfig)
    inboxes: tuple[InboxConfig, ...] = ()
    source: Path | None = None    # the file this came from

    @property
    def daemon_folders(self) -> tuple[Path, ...]:
        """Where the daemon writes: never ingested, whatever an inbox's path."""
        return (self.state_dir,) + tuple(
            p for i in self.inboxes for p in (i.outbox, i.archive, i.failed) if p is not None)

    @property
    def ledger_path(self) -> Path:
        return self.state_dir / "ledger.db"

    @property
    def spool_dir(self) -> Path:
        return self.state_dir / "spool"

    @property
    def log_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def backup_dir(self) -> Path:
        return self.state_dir / "backups"

    @property
    def lock_path(self) -> Path:
        return self.state_dir / "ocrd.lock"

    @property
    def host_name(self) -> str:
        return self.host or socket.gethostname()

    @property
    def db_url(self) -> str:
        return self.ledger_url or f"sqlite:///{self.ledger_path}"

    def inbox_for(self, key: str) -> InboxConfig | None:
        return next((i for i in self.inboxes if i.key == key), None)

    def home_inbox(self, key: str) -> InboxConfig | None:
        """The inbox whose folders a job uses: its own, or for an inbox no longer configured (and
        files submitted from elsewhere) the first one."""
        return self.inbox_for(key) or (self.inboxes[0] if self.inboxes else None)

    def prompt_for(self, inbox: InboxConfig | None) -> str:
        return (inbox and inbox.prompt) or self.model.prompt

    def mode_for(self, inbox: InboxConfig | None) -> str:
        return (inbox and inbox.mode) or self.model.mode

    def formats_for(self, inbox: InboxConfig | None) -> tuple[str, ...]:
        return (inbox and inbox.formats) or self.output.formats


def default_state_dir() -> Path:
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / "ocrd"
    return Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state") / "ocrd"


def config_path(explicit: str | os.PathLike | None = None) -> Path:
    """--config, else OCRD_CONFIG, else the shipped defaults."""
    chosen = explicit or os.environ.get("OCRD_CONFIG")
    return Path(chosen).expanduser() if chosen else DEFAULT_CONFIG


def load_config(path: str | os.PathLike | None = None) -> Config:
    """Read and validate a config file (see `config_path` for which one)."""
    source = config_path(path)
    try:
        raw = tomllib.loads(source.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {source}") from None
    except OSError as exc:
        raise ConfigError(f"config file {source} cannot be read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {source} is not valid TOML: {exc}") from None
    return parse_config(raw, source=source)


def parse_config(raw: dict[str, Any], source: Path | None = None) -> Config:
    r = _Reader(raw, "")
    state_dir = r.str("state_dir", "")
    ledger = r.table("ledger")
    model = r.table("model")
    workers = r.table("workers")
    pdf = r.table("pdf")
    output = r.table("output")
    output_cfg = OutputConfig(formats=output.formats("formats", OutputConfig.formats))
    output.done()
    hooks_cfg, metrics_cfg = _parse_hooks(r.table("hooks")), _parse_metrics(r.table("metrics"))
    api_table = r.table("api")
    inbox_list = raw.get("inbox", [])
    if not isinstance(inbox_list, list) or not all(isinstance(t, dict) for t in inbox_list):
        raise ConfigError("inbox: must be an array of tables ([[inbox]])")
    r.done(extra={"inbox"})

    model_cfg = ModelConfig(
        path=model.str("path", ModelConfig.path, nonempty=True),
        prompt=model.str("prompt", ModelConfig.prompt, nonempty=True),
        mode=model.choice("mode", ModelConfig.mode, tuple(MODES)),
        max_tokens=model.int("max_tokens", ModelConfig.max_tokens, low=1),
        page_timeout_s=model.num("page_timeout_s", ModelConfig.page_timeout_s, low=1),
        engine=model.choice("engine", ModelConfig.engine, ENGINE_CHOICES),
        **_server_keys(model),
    )
    model.done()
    workers_cfg = WorkersConfig(
        count=_auto_or_positive(workers, "count", low=0),   # 0: ingest and deliver only
        batch=_auto_or_positive(workers, "batch"),
        memory_budget=_memory_budget(workers),
        max_pages_per_worker=workers.int("max_pages_per_worker", WorkersConfig.max_pages_per_worker, low=1),
        max_attempts=workers.int("max_attempts", WorkersConfig.max_attempts, low=1),
    )
    workers.done()
    pdf_cfg = PdfConfig(dpi=pdf.int("dpi", PdfConfig.dpi, low=36, high=1200))
    pdf.done()
    url = ledger.str("url", Config.ledger_url)
    if url and not url.startswith(("sqlite", "postgresql")):
        raise ConfigError(f"ledger.url: must be empty, sqlite:///... or postgresql+psycopg://..., not {url!r}")
    host = ledger.str("host", Config.host)
    if host != host.strip() or any(c.isspace() or not c.isprintable() for c in host):
        raise ConfigError(f"ledger.host: must be a name without spaces, not {host!r}")
    backup_every_s = _duration(ledger, "backup_every", Config.backup_every_s)
    backup_keep = ledger.int("backup_keep", Config.backup_keep, low=1)
    ledger.done()

    inboxes = tuple(_parse_inbox(t, n) for n, t in enumerate(inbox_list))
    api_cfg = _parse_api(api_table, inboxes)
    state = _path(state_dir) if state_dir else default_state_dir()
    _check_inboxes(inboxes)
    _check_overlaps(inboxes, state)
    return Config(
        state_dir=state,
        ledger_url=url,
        host=host,
        backup_every_s=backup_every_s,
        backup_keep=backup_keep,
        model=model_cfg,
        workers=workers_cfg,
        pdf=pdf_cfg,
        output=output_cfg,
        hooks=hooks_cfg,
        metrics=metrics_cfg,
        api=api_cfg,
        inboxes=inboxes,
        source=source,
    )


def _parse_hooks(t: _Reader) -> HooksConfig:
    hooks = HooksConfig(on_done=tuple(t.str_list("on_done", list(HooksConfig.on_done))),
                        on_failed=tuple(t.str_list("on_failed", list(HooksConfig.on_failed))),
                        timeout_s=t.num("timeout_s", HooksConfig.timeout_s, low=1))
    t.done()
    for key in ("on_done", "on_failed"):
        argv = getattr(hooks, key)
        if argv and not argv[0].strip():
            raise t.fail(key, "must start with a program (an argv list, no shell)", list(argv))
    return hooks


def _parse_metrics(t: _Reader) -> MetricsConfig:
    listen = _listen(t, MetricsConfig.listen, "127.0.0.1:9464")
    t.done()
    return MetricsConfig(listen=listen)


def _listen(t: _Reader, default: str, example: str) -> str:
    """A `listen` key: "" (off) or "host:port"."""
    listen = t.str("listen", default).strip()
    host, colon, port = listen.rpartition(":")
    if listen and not (colon and host and port.isdigit() and int(port) <= 65535):
        raise t.fail("listen", f'must be "" (off) or "host:port", e.g. "{example}"', listen)
    return listen


def _parse_api(t: _Reader, inboxes: tuple[InboxConfig, ...]) -> ApiConfig:
    """[api]; a listen that other machines can reach is refused without the token."""
    listen = _listen(t, ApiConfig.listen, "127.0.0.1:8470")
    auth = t.choice("auth", ApiConfig.auth, ("token", "none"))
    size = t.get("max_upload", ApiConfig.max_upload)
    with contextlib.suppress(ValueError):
        size = parse_bytes(size) if isinstance(size, str) else size
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise t.fail("max_upload", 'must be a size such as "512MB"', t.raw.get("max_upload"))
    inbox = t.str("inbox", ApiConfig.inbox)
    t.done()
    address = listen_address(listen)
    if auth == "none" and address is not None and not is_loopback(address[0]):
        raise ConfigError(f'{t.prefix}auth: "none" serves only a loopback listen (127.0.0.1, ::1, '
                          f'localhost), not {listen!r}: keep auth = "token" to serve other machines')
    if inbox:
        match = next((i for i in inboxes if i.path == _path(inbox)), None)
        if match is None:
            raise t.fail("inbox", "must be the path of one of the [[inbox]] tables", inbox)
        inbox = match.key
    return ApiConfig(listen=listen, auth=auth, max_upload=size, inbox=inbox)


def _parse_inbox(raw: dict[str, Any], n: int) -> InboxConfig:
    t = _Reader(raw, f"inbox[{n}].")
    path = _path(t.str("path", None, nonempty=True, required=True))
    outbox = _path(t.str("outbox", None, nonempty=True, required=True))
    # An omitted archive lives beside the outbox (~/OCR/outbox -> ~/OCR/archive), not in one
    # fixed place that a second inbox would collide with under a key nobody wrote.
    archive = t.str("archive", None)
    inbox = InboxConfig(
        path=path,
        outbox=outbox,
        archive=outbox.parent / "archive" if archive is None else (_path(archive) if archive else None),
        failed=_path(t.str("failed", None, nonempty=True, required=True)),
        recursive=t.bool("recursive", InboxConfig.recursive),
        polling=t.bool("polling", InboxConfig.polling),
        stable_for_s=t.num("stable_for_s", InboxConfig.stable_for_s, low=0),
        ignore=tuple(t.str_list("ignore", list(InboxConfig.ignore))),
        on_duplicate=OnDuplicate(t.choice("on_duplicate", InboxConfig.on_duplicate, tuple(OnDuplicate))),
        prompt=t.str("prompt", InboxConfig.prompt, nonempty=True),
        mode=t.choice("mode", InboxConfig.mode, tuple(MODES)),
        formats=t.formats("formats", InboxConfig.formats),
    )
    t.done()
    return inbox


def _check_inboxes(inboxes: tuple[InboxConfig, ...]) -> None:
    seen: dict[Path, str] = {}
    for n, inbox in enumerate(inboxes):
        for name in ("path", "outbox", "archive", "failed"):
            p = getattr(inbox, name)
            if p is None:
                continue
            if p in seen:
                unset = " (not set: archive defaults to beside the outbox)" if name == "archive" and \
                    p == inbox.outbox.parent / "archive" else ""
                raise ConfigError(f"inbox[{n}].{name}: {p}{unset} is already used as {seen[p]}")
            seen[p] = f"inbox[{n}].{name}"
        for name in ("outbox", "archive", "failed"):
            p = getattr(inbox, name)
            if p is not None and p.is_relative_to(inbox.path):
                raise ConfigError(f"inbox[{n}].{name}: {p} must not be inside the inbox {inbox.path}")


def _check_overlaps(inboxes: tuple[InboxConfig, ...], state_dir: Path) -> None:
    """The daemon never ingests its own files (DESIGN.md invariant 6): no inbox may hold the state
    dir or any inbox's outbox, archive or failed folder, nor lie inside one of them or another inbox."""
    theirs = [("state_dir", state_dir)] + [
        (f"inbox[{n}].{name}", getattr(inbox, name)) for n, inbox in enumerate(inboxes)
        for name in ("outbox", "archive", "failed") if getattr(inbox, name) is not None]
    for n, inbox in enumerate(inboxes):
        for key, folder in theirs + [(f"inbox[{m}].path", o.path) for m, o in enumerate(inboxes) if m != n]:
            if folder.is_relative_to(inbox.path):
                raise ConfigError(f"{key}: {folder} must not be inside inbox[{n}].path {inbox.path} "
                                  "(the daemon would ingest its own files)")
            if inbox.path.is_relative_to(folder):
                raise ConfigError(f"inbox[{n}].path: {inbox.path} must not be inside {key} {folder}")


def _server_keys(model: _Reader) -> dict[str, Any]:
    """`[model]` keys of engine = "openai": url and name are required there (and only read there:
    they mean nothing to a local engine)."""
    served = model.raw.get("engine") == "openai"
    url = model.str("url", "", nonempty=served, required=served)
    if url and not url.startswith(("http://", "https://")):
        raise model.fail("url", "must start with http:// or https://", url)
    key_file = model.str("api_key_file", None, nonempty=True)
    concurrency = model.get("concurrency", "auto")
    if concurrency != "auto" and (isinstance(concurrency, bool) or not isinstance(concurrency, int)
                                  or concurrency < 1):
        raise model.fail("concurrency", 'must be "auto" or an integer of at least 1', concurrency)
    extra = model.get("extra_body", {})
    if not isinstance(extra, dict):
        raise model.fail("extra_body", "must be a table", extra)
    return dict(url=url.rstrip("/"), name=model.str("name", "", nonempty=served, required=served),
                api_key_file=Path(key_file).expanduser() if key_file else None,
                concurrency=None if concurrency == "auto" else concurrency, extra_body=extra)


def _auto_or_positive(workers: _Reader, key: str, low: int = 1) -> int | None:
    """`[workers] count` and `batch`: "auto" (None) or an integer of at least `low`."""
    value = workers.get(key, "auto")
    if value == "auto":
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise workers.fail(key, f'must be "auto" or an integer of at least {low}', value)
    return value


def _memory_budget(workers: _Reader) -> int | float | None:
    """`[workers] memory_budget`: "auto" (None), bytes (an integer or "12GB"), or a fraction in (0, 1]."""
    value = workers.get("memory_budget", "auto")
    if value == "auto":
        return None
    if isinstance(value, float) and 0 < value <= 1:
        return value
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            value = parse_bytes(value)
    # `memory_budget = 1` is surely not one byte: sizes under a megabyte are refused, not obeyed
    if isinstance(value, int) and not isinstance(value, bool) and value >= MIN_BUDGET_BYTES:
        return value
    raise workers.fail("memory_budget", 'must be "auto", a size of at least 1MB such as "12GB", or a '
                       'fraction in (0, 1]', value)


_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _duration(table: _Reader, key: str, default_s: float) -> float:
    """A duration such as "90s", "30m", "24h" or "7d" in seconds; "" or "0" is 0 (off)."""
    value = table.get(key, None)
    if value is None:
        return default_s
    if (isinstance(value, str) and value.strip() in ("", "0")) or (type(value) is int and value == 0):
        return 0.0
    text = value.strip().lower() if isinstance(value, str) else ""
    with contextlib.suppress(ValueError):
        if text[-1:] in _SECONDS and 0 < float(text[:-1]) < float("inf"):
            return float(text[:-1]) * _SECONDS[text[-1]]
    raise table.fail(key, 'must be a duration such as "24h", "30m", "7d", or "" (off)', value)


def _path(value: str) -> Path:
    return Path(os.path.expandvars(value)).expanduser().absolute()


def parse_bytes(value: str) -> int:
    """'12GB' -> 12_000_000_000; '512 MiB' -> 536870912; raises ValueError."""
    text = value.strip().upper().replace(" ", "")
    digits = text.rstrip("KMGTIB")
    unit = text[len(digits):]
    if unit not in _UNITS or not digits:
        raise ValueError(value)
    return int(float(digits) * _UNITS[unit])


_MISSING = object()


class _Reader:
    """Typed access to one TOML table that remembers which keys were read."""

    def __init__(self, raw: Any, prefix: str):
        if not isinstance(raw, dict):
            raise ConfigError(f"{prefix.rstrip('.')}: must be a table")
        self.raw, self.prefix, self.seen = raw, prefix, set()

    def get(self, key: str, default: Any, required: bool = False) -> Any:
        """The raw value of `key` (marked as read), or `default` when the table lacks it."""
        self.seen.add(key)
        value = self.raw.get(key, _MISSING)
        if value is _MISSING:
            if required:
                raise ConfigError(f"{self.prefix}{key}: is required")
            return default
        return value

    def fail(self, key: str, what: str, value: Any) -> ConfigError:
        return ConfigError(f"{self.prefix}{key}: {what}, not {value!r}")

    def table(self, key: str) -> _Reader:
        self.seen.add(key)
        return _Reader(self.raw.get(key, {}), f"{self.prefix}{key}.")

    def str(self, key: str, default: Any, nonempty: bool = False, required: bool = False) -> Any:
        value = self.get(key, default, required)
        if value is None:
            return None
        if not isinstance(value, str) or (nonempty and not value.strip()):
            raise self.fail(key, "must be a non-empty string" if nonempty else "must be a string", value)
        return value

    def bool(self, key: str, default: bool) -> bool:
        value = self.get(key, default)
        if not isinstance(value, bool):
            raise self.fail(key, "must be true or false", value)
        return value

    def int(self, key: str, default: int, low: int | None = None, high: int | None = None) -> int:
        value = self.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(key, "must be an integer", value)
        self._range(key, value, low, high)
        return value

    def num(self, key: str, default: float, low: float | None = None) -> float:
        value = self.get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.fail(key, "must be a number", value)
        self._range(key, value, low, None)
        return float(value)

    def _range(self, key: str, value: float, low: float | None, high: float | None) -> None:
        if low is not None and value < low:
            raise self.fail(key, f"must be at least {low}", value)
        if high is not None and value > high:
            raise self.fail(key, f"must be at most {high}", value)

    def choice(self, key: str, default: Any, choices: tuple[str, ...]) -> Any:
        value = self.get(key, default)
        if value is not None and value not in choices:
            raise self.fail(key, f"must be one of {', '.join(choices)}", value)
        return value

    def str_list(self, key: str, default: list[str]) -> list[str]:
        value = self.get(key, default)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.fail(key, "must be a list of strings", value)
        return value

    def formats(self, key: str, default: tuple[str, ...] | None) -> tuple[str, ...] | None:
        value = self.get(key, default)
        if value is default:
            return default
        if not isinstance(value, list) or not value or any(v not in FORMATS for v in value):
            raise self.fail(key, f"must be a non-empty list of {', '.join(map(repr, FORMATS))}", value)
        return tuple(dict.fromkeys(value))

    def done(self, extra: set[str] = frozenset()) -> None:
        unknown = sorted(set(self.raw) - self.seen - set(extra))
        if unknown:
            raise ConfigError(f"{self.prefix}{unknown[0]}: unknown key")
