"""engine = "openai" against a real server: mlx-vlm's own (`python -m mlx_vlm.server`, through
tests/mlxvlm_server.py) serving the tiny model on a free port, shared by the module. The server's
MAX_KV_SIZE makes it reject a page of a tall shape with 400 (context budget) while A4 pages fit:
a real page-specific refusal."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Iterator

import pytest
from PIL import Image

import samples
from helpers import wait_for
from mlxvlm_server import MlxVlmServer

KEY = "test-key-not-secret"
CONTEXT = 1100      # tokens: an A4 page at 72 dpi asks ~920, a 300x3000 strip ~1300


@pytest.fixture(scope="module")
def server(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlxVlmServer]:
    log = tmp_path_factory.mktemp("mlxvlm-server") / "server.log"
    served = MlxVlmServer(tiny_model, log, api_key=KEY, env={"MAX_KV_SIZE": str(CONTEXT)})
    served.start()
    yield served
    served.kill()


@pytest.fixture
def served_daemon(make_daemon, server: MlxVlmServer, tiny_model: Path, tmp_path: Path):
    """A daemon whose pages go to `server`; keyword arguments override [model] keys."""
    def make(key: str = KEY, **model_keys):
        key_file = tmp_path / f"key-{len(key)}-{abs(hash(key))}"
        key_file.write_text(key + "\n")
        keys = {"url": server.url, "name": str(tiny_model), "api_key_file": str(key_file),
                "concurrency": 4, **model_keys}
        daemon = make_daemon(engine="openai", max_tokens=12, model_keys=keys)
        daemon.config_url, daemon.served = keys["url"], keys["name"]
        return daemon
    return make


def a4(path: Path, n: int = 1) -> Path:
    samples.page_image(n, (595, 842)).save(path, "PNG")
    return path


def test_documents_go_through_the_server_to_the_outbox_once(served_daemon) -> None:
    d = served_daemon()
    d.start()
    pdf = d.inbox / "letter.pdf"
    images = [samples.page_image(n, (595, 842)) for n in (1, 2, 3)]
    images[0].save(pdf, "PDF", resolution=72, save_all=True, append_images=images[1:])
    a4(d.inbox / "scan.png")
    assert d.wait_settled(2, timeout=120) == {"letter.pdf": "done", "scan.png": "done"}
    assert sorted(p.name for p in d.outbox.iterdir()) == ["letter.md", "scan.md"]
    assert (d.outbox / "letter.md").read_text().count("<!-- page ") == 3
    # each page read once, and the server's answer (its token counts) stored
    assert d.query("SELECT MIN(attempts), MAX(attempts), MIN(generation_tokens) FROM pages") == [(1, 1, 12)]
    assert d.scalar("SELECT MIN(prompt_tokens) FROM pages") > 500      # the image reached the model
    status = d.status()
    assert status["engine"]["name"] == "openai" and status["model_status"] == "ok"
    assert status["server"]["reachable"] and status["server"]["serves_name"]
    assert not any("CPU mode" in w for w in status["warnings"])
    device = d.cli("device").stdout
    assert f"server   {d.config_url}: reachable; models {d.served}" in device
    assert "CPU mode" not in device
    doctor = d.cli("doctor", check=False).stdout
    assert f"server            {d.config_url} serves {d.served}" in doctor and "CPU mode" not in doctor
    assert d.stop() == 0


def test_server_killed_mid_run_pages_wait_uncharged_then_all_finish(served_daemon, server) -> None:
    d = served_daemon()
    d.start()
    samples.write_pdf(d.inbox / "long.pdf", 16)
    wait_for(lambda: d.scalar("SELECT COUNT(*) FROM pages WHERE state = 'done'") >= 1, 120, 0.05,
             "a first page read")
    server.kill()
    status = wait_for(lambda: ((s := d.status())["model_status"] or "").startswith("unavailable") and s,
                      60, 0.3, "status to say the server is unavailable")
    assert server.url in status["model_status"] and "unreachable" in status["model_status"]
    assert d.scalar("SELECT COUNT(*) FROM pages WHERE state != 'done'") > 0, "killed too late"
    assert d.scalar("SELECT COUNT(*) FROM pages WHERE state = 'failed'") == 0
    server.start()
    assert d.wait_settled(1, timeout=180) == {"long.pdf": "done"}
    assert d.query("SELECT MAX(attempts) FROM pages") == [(1,)]     # no page charged for the outage
    assert (d.outbox / "long.md").read_text().count("<!-- page ") == 16
    unavailable = [e for e in d.events() if e.get("event") == "model_unavailable"]
    assert unavailable and all("unreachable" in e["reason"] for e in unavailable)
    assert d.stop() == 0


@pytest.mark.parametrize("wrong, said", [
    ({"key": "not-the-key"}, "refused the API key"),
    ({"name": "no-such/model"}, "fails even a blank page (check [model] name, url, extra_body): 400"),
])
def test_a_wrong_key_or_model_id_is_one_clear_line_and_pages_wait(served_daemon, wrong, said) -> None:
    d = served_daemon(**wrong)
    d.start()
    a4(d.inbox / "page.png")
    status = wait_for(lambda: ((s := d.status())["model_status"] or "").startswith("unavailable") and s,
                      60, 0.3, "model unavailable in status")
    assert said in status["model_status"], status["model_status"]
    assert status["pages"]["queued"] == 1 and status["pages"]["failed"] == 0
    assert d.stop() == 0
    lines = [e for e in d.events() if e.get("event") == "model_unavailable"]
    assert len({e["reason"] for e in lines}) == 1, lines      # one reason, said once per change
    assert d.query("SELECT state, attempts FROM pages") == [("queued", 0)]


def test_a_wrong_model_id_fixed_by_a_sighup_reads_the_waiting_page(served_daemon, tiny_model: Path) -> None:
    d = served_daemon(name="no-such/model")
    d.start()
    a4(d.inbox / "page.png")
    wait_for(lambda: ((s := d.status())["model_status"] or "").startswith("unavailable") and s,
             60, 0.3, "model unavailable in status")
    d.config.write_text(d.config.read_text().replace('"no-such/model"', json.dumps(str(tiny_model))))
    d.proc.send_signal(signal.SIGHUP)
    assert d.wait_settled(1, timeout=60) == {"page.png": "done"}
    assert d.query("SELECT attempts FROM pages") == [(1,)]
    assert d.stop() == 0
    # the served model's id is part of what a worker loads: the change rolled the workers over
    assert [e["served"] for e in d.events() if e.get("event") == "model_changed"] == [str(tiny_model)]


def test_a_page_the_server_rejects_fails_alone(served_daemon) -> None:
    d = served_daemon()
    d.start()
    a4(d.inbox / "good.png")
    Image.new("RGB", (300, 3000), "white").save(d.inbox / "strip.png")   # over the server's context
    assert d.wait_settled(2, timeout=120) == {"good.png": "done", "strip.png": "failed"}
    [(error, attempts)] = d.query("SELECT error, attempts FROM pages WHERE state = 'failed'")
    assert error.startswith("server rejected this page: 400") and attempts == 1, error
    assert (d.outbox / "good.md").exists()
    wait_for(lambda: (d.failed / "strip.png").exists(), 30, 0.1, "the refused original in failed/")
    assert d.status()["model_status"] == "ok"
    assert d.stop() == 0
