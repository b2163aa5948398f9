"""The config contract: every key of DESIGN.md, and one clear line for every bad value."""

from __future__ import annotations

import pickle
import tomllib
from pathlib import Path

import pytest

from configs import config_dict, to_toml
from ocrd.daemon.config import (DEFAULT_CONFIG, ApiConfig, Config, ConfigError, InboxConfig, ModelConfig,
                                PdfConfig, WorkersConfig, load_config, parse_bytes, parse_config)
from ocrd.ledger.states import OnDuplicate

INBOX = '[[inbox]]\npath = "/srv/in"\noutbox = "/srv/out"\nfailed = "/srv/failed"\n'


def parse(text: str):
    return parse_config(tomllib.loads(text))


def test_shipped_defaults_load_with_every_documented_value() -> None:
    config = load_config(DEFAULT_CONFIG)
    assert config.model.path == "mlx-community/DeepSeek-OCR-8bit"
    assert config.model.prompt == "<image>\n<|grounding|>Convert the document to markdown."
    assert (config.model.mode, config.model.max_tokens, config.model.page_timeout_s) == ("gundam", 8192, 300)
    assert (config.workers.count, config.workers.memory_budget) == (None, None)  # "auto"
    assert (config.workers.max_pages_per_worker, config.workers.max_attempts) == (500, 3)
    assert config.pdf.dpi == 144 and config.ledger_url == ""
    [inbox] = config.inboxes
    assert inbox.path == Path("~/OCR/inbox").expanduser() and inbox.archive == Path("~/OCR/archive").expanduser()
    assert (inbox.recursive, inbox.polling, inbox.stable_for_s, inbox.ignore, inbox.on_duplicate) == (
        True, False, 2.0, (), "skip")
    assert config.db_url == f"sqlite:///{config.state_dir / 'ledger.db'}"


def test_shipped_file_and_omitted_keys_both_give_the_dataclass_defaults() -> None:
    """The dataclasses hold every default once: configs/ocrd.toml must spell the same values, and a
    key left out must read as the same value."""
    for config in (load_config(DEFAULT_CONFIG), parse(INBOX)):
        assert (config.model, config.workers, config.pdf) == (ModelConfig(), WorkersConfig(), PdfConfig())
        assert config.api == ApiConfig() and config.api.address is None
        assert config.ledger_url == Config.ledger_url
        assert (config.backup_every_s, config.backup_keep) == (Config.backup_every_s, Config.backup_keep)
        [inbox] = config.inboxes
        assert inbox == InboxConfig(path=inbox.path, outbox=inbox.outbox, failed=inbox.failed,
                                    archive=inbox.outbox.parent / "archive")   # beside the outbox
        assert inbox.on_duplicate is OnDuplicate.SKIP


def test_config_is_frozen_and_picklable() -> None:
    config = parse(INBOX + 'on_duplicate = "process"\n')
    assert config.inboxes[0].on_duplicate is OnDuplicate.PROCESS
    assert pickle.loads(pickle.dumps(config)) == config
    with pytest.raises(AttributeError):
        config.inboxes[0].polling = True  # type: ignore[misc]


def test_config_path_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "mine.toml"
    path.write_text(f'state_dir = "{tmp_path}"\n' + INBOX)
    monkeypatch.setenv("OCRD_CONFIG", str(path))
    assert load_config().state_dir == tmp_path and load_config().source == path


def test_values_and_overrides() -> None:
    config = parse('[workers]\ncount = 2\nmemory_budget = "12GB"\n' + INBOX
                   + 'archive = ""\nprompt = "Free OCR."\nmode = "tiny"\nignore = ["*.bak"]\n')
    inbox = config.inboxes[0]
    assert config.workers.count == 2 and config.workers.memory_budget == 12 * 10**9
    assert inbox.archive is None and inbox.ignore == ("*.bak",)
    assert config.prompt_for(inbox) == "Free OCR." and config.mode_for(inbox) == "tiny"
    assert parse("[workers]\nmemory_budget = 0.6\n").workers.memory_budget == 0.6
    assert parse("[workers]\nbatch = 16\n").workers.batch == 16 and config.workers.batch is None  # "auto"
    assert parse_bytes("512 MiB") == 512 * 2**20


def test_api_keys() -> None:
    config = parse('[api]\nlisten = "[::1]:0"\nauth = "none"\nmax_upload = "2MB"\ninbox = "/srv/in"\n' + INBOX)
    assert config.api == ApiConfig(listen="[::1]:0", auth="none", max_upload=2 * 10**6,
                                   inbox=config.inboxes[0].key)
    assert config.api.address == ("::1", 0)
    assert config.home_inbox(config.api.inbox) == config.inboxes[0]
    assert parse('[api]\nlisten = "0.0.0.0:8470"\nmax_upload = 1000\n').api.max_upload == 1000


@pytest.mark.parametrize(("text", "message"), [
    ("colour = 1", "colour: unknown key"),
    ('[api]\nlisten = "8470"', 'api.listen: must be "" (off) or "host:port", e.g. "127.0.0.1:8470"'),
    ('[api]\nauth = "basic"', "api.auth: must be one of token, none, not 'basic'"),
    ('[api]\nmax_upload = "lots"', 'api.max_upload: must be a size such as "512MB", not \'lots\''),
    ('[api]\nmax_upload = 0', 'api.max_upload: must be a size such as "512MB", not 0'),
    ('[api]\nlisten = "0.0.0.0:8470"\nauth = "none"', 'api.auth: "none" serves only a loopback listen'),
    ('[api]\ninbox = "/srv/other"\n' + INBOX, "api.inbox: must be the path of one of the [[inbox]] tables"),
    ('[api]\nport = 1', "api.port: unknown key"),
    ("[model]\nmode = \"huge\"", "model.mode: must be one of tiny, small, base, large, gundam, not 'huge'"),
    ("[model]\nmax_tokens = 0", "model.max_tokens: must be at least 1, not 0"),
    ("[model]\nmax_tokens = \"many\"", "model.max_tokens: must be an integer, not 'many'"),
    ("[model]\npath = \"\"", "model.path: must be a non-empty string, not ''"),
    ("[workers]\ncount = -1", "workers.count: must be \"auto\" or an integer of at least 0, not -1"),
    ("[workers]\ncount = true", "workers.count: must be \"auto\" or an integer of at least 0, not True"),
    ("[workers]\nbatch = 0", "workers.batch: must be \"auto\" or an integer of at least 1, not 0"),
    ("[workers]\nbatch = \"max\"", "workers.batch: must be \"auto\" or an integer of at least 1, not 'max'"),
    ("[workers]\nmemory_budget = \"lots\"", "workers.memory_budget: must be \"auto\", a size of at least 1MB"),
    ("[workers]\nmemory_budget = 1.5", "workers.memory_budget: must be \"auto\", a size of at least 1MB"),
    ("[workers]\nmemory_budget = 1", "workers.memory_budget: must be \"auto\", a size of at least 1MB"),
    ("[workers]\nmemory_budget = \"512KB\"", "workers.memory_budget: must be \"auto\", a size of at least 1MB"),
    ("[pdf]\ndpi = 10", "pdf.dpi: must be at least 36, not 10"),
    ("[ledger]\nurl = \"mysql://x\"", "ledger.url: must be empty, sqlite:///... or postgresql+psycopg://..."),
    ("[ledger]\nbackup_every = \"daily\"", "ledger.backup_every: must be a duration such as \"24h\""),
    ("[ledger]\nbackup_every = 24", "ledger.backup_every: must be a duration such as \"24h\""),
    ("[ledger]\nbackup_every = \"-1h\"", "ledger.backup_every: must be a duration such as \"24h\""),
    ("[ledger]\nbackup_keep = 0", "ledger.backup_keep: must be at least 1, not 0"),
    ("[ledger]\nbackup_keep = \"all\"", "ledger.backup_keep: must be an integer, not 'all'"),
    ("[ledger]\nbackups = 3", "ledger.backups: unknown key"),
    ("model = 3", "model: must be a table"),
    ("inbox = 3", "inbox: must be an array of tables ([[inbox]])"),
    ('[[inbox]]\npath = "/in"\nfailed = "/f"', "inbox[0].outbox: is required"),
    (INBOX + "polling = \"yes\"", "inbox[0].polling: must be true or false, not 'yes'"),
    (INBOX + "on_duplicate = \"merge\"", "inbox[0].on_duplicate: must be one of skip, process, not 'merge'"),
    (INBOX + "stable_for_s = -1", "inbox[0].stable_for_s: must be at least 0, not -1"),
    (INBOX + "ignore = \"*.tmp\"", "inbox[0].ignore: must be a list of strings, not '*.tmp'"),
    (INBOX + "speed = 1", "inbox[0].speed: unknown key"),
    ('[[inbox]]\npath = "/in"\noutbox = "/in/out"\nfailed = "/f"', "inbox[0].outbox: /in/out must not be inside the inbox /in"),
    (INBOX + INBOX, "inbox[1].path: /srv/in is already used as inbox[0].path"),
])
def test_bad_values_are_one_line_naming_the_key(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse(text)
    assert str(caught.value).startswith(message) and "\n" not in str(caught.value)


@pytest.mark.parametrize(("value", "seconds"), [
    ('"24h"', 86400), ('"30m"', 1800), ('"90s"', 90), ('"7d"', 7 * 86400), ('"1.5h"', 5400),
    ('""', 0), ('"0"', 0), ("0", 0)])
def test_backup_every_is_a_duration_and_empty_or_zero_is_off(value: str, seconds: float) -> None:
    config = parse(f"[ledger]\nbackup_every = {value}\nbackup_keep = 3\n")
    assert (config.backup_every_s, config.backup_keep) == (seconds, 3)
    assert config.backup_dir == config.state_dir / "backups"


def test_unreadable_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("[model\npath = 1")
    with pytest.raises(ConfigError, match="is not valid TOML"):
        load_config(broken)


def test_the_tests_config_builder_writes_what_it_builds(tmp_path: Path) -> None:
    """tests/configs.py: the dict and its TOML file give the same Config (quotes, lists, floats)."""
    raw = config_dict(tmp_path / 'a "quoted" dir', model={"prompt": "<image>\nFree OCR.", "mode": "tiny"},
                      workers={"count": 2, "memory_budget": 0.5}, pdf={"dpi": 72},
                      inbox={"ignore": ["*.bak", "~*"], "polling": True, "stable_for_s": 0.3})
    assert tomllib.loads(to_toml(raw)) == raw
    path = tmp_path / "built.toml"
    path.write_text(to_toml(raw))
    assert load_config(path) == parse_config(raw, source=path)


@pytest.mark.parametrize(("text", "message"), [
    # the hostile trial's two: the ledger inside an inbox, and one inbox's output inside another
    ('state_dir = "/srv/in/.ocrd"\n' + INBOX, "state_dir: /srv/in/.ocrd must not be inside inbox[0].path /srv/in"),
    (INBOX + '[[inbox]]\npath = "/srv/in2"\noutbox = "/srv/in/out2"\nfailed = "/srv/f2"\narchive = ""\n',
     "inbox[1].outbox: /srv/in/out2 must not be inside inbox[0].path /srv/in"),
    (INBOX + '[[inbox]]\npath = "/srv/failed/more"\noutbox = "/srv/o2"\nfailed = "/srv/f2"\narchive = ""\n',
     "inbox[1].path: /srv/failed/more must not be inside inbox[0].failed /srv/failed"),
    (INBOX + '[[inbox]]\npath = "/srv/in/nested"\noutbox = "/srv/o2"\nfailed = "/srv/f2"\narchive = ""\n',
     "inbox[1].path: /srv/in/nested must not be inside inbox[0].path /srv/in"),
    ('state_dir = "/srv"\n' + INBOX, "inbox[0].path: /srv/in must not be inside state_dir /srv"),
])
def test_folders_the_daemon_writes_may_not_overlap_an_inbox(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse(text)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_an_omitted_archive_lives_beside_the_outbox_and_a_clash_says_so() -> None:
    assert parse(INBOX).inboxes[0].archive == Path("/srv/archive")
    with pytest.raises(ConfigError, match=r"inbox\[1\]\.archive: /srv/archive \(not set: archive defaults to "
                                          r"beside the outbox\) is already used as inbox\[0\]\.archive"):
        parse(INBOX + '[[inbox]]\npath = "/srv/in2"\noutbox = "/srv/out2"\nfailed = "/srv/f2"\n')
