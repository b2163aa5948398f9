"""engine = "openai": config keys, the pool plan, and whose fault each server answer is.

The real server path is tests/e2e/test_openai_e2e.py (mlx-vlm's server). Answers a real server
can't be made to give on cue (429, 503, a 500 for one page, a looping answer) come here from a
stub HTTP server on a loopback port: the seam is the network, the engine and httpx are real."""

from __future__ import annotations

import json
import threading
import time
import tomllib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable, Iterator

import pytest
from PIL import Image

from ocrd.daemon.config import ConfigError, parse_config
from ocrd.daemon.device import DeviceInfo, plan_for_config
from ocrd.daemon.engines.choice import choose_engine
from ocrd.daemon.engines.openai import OpenAiEngine, server_report
from ocrd.daemon.errors import EngineError, InputError, ModelUnavailable, PageTimeout

INBOX = '[[inbox]]\npath = "/srv/in"\noutbox = "/srv/out"\nfailed = "/srv/failed"\n'
SERVED = '[model]\nengine = "openai"\nurl = "http://gpu-box:8000/v1/"\nname = "deepseek-ai/DeepSeek-OCR"\n'


def parse(text: str):
    return parse_config(tomllib.loads(text + INBOX))


def test_server_keys_parse_and_bad_ones_are_one_line(tmp_path: Path) -> None:
    model = parse(SERVED + 'concurrency = 32\napi_key_file = "~/key"\n'
                  'extra_body = { skip_special_tokens = false, vllm_xargs = { ngram_size = 30 } }\n').model
    assert (model.url, model.name, model.concurrency) == ("http://gpu-box:8000/v1", "deepseek-ai/DeepSeek-OCR", 32)
    assert model.api_key_file == Path("~/key").expanduser()
    assert model.extra_body == {"skip_special_tokens": False, "vllm_xargs": {"ngram_size": 30}}
    assert parse(SERVED).model.concurrency is None            # "auto"
    for text, said in [('[model]\nengine = "openai"\nname = "m"\n', "model.url: is required"),
                       ('[model]\nengine = "openai"\nurl = "http://h/v1"\n', "model.name: is required"),
                       (SERVED.replace("http://", "ftp://"), "model.url: must start with http://"),
                       (SERVED + "concurrency = 0\n", 'model.concurrency: must be "auto" or an integer'),
                       (SERVED + 'api_key = "sk-1"\n', "model.api_key: unknown key")]:
        with pytest.raises(ConfigError) as err:
            parse(text)
        assert str(err.value).startswith(said) and "\n" not in str(err.value)


def test_pool_is_sized_by_concurrency_not_by_the_device() -> None:
    cpu = DeviceInfo("cpu", "Xeon", 4 * 10**9, 4 * 10**9, 2)
    engine = choose_engine("openai", cpu.backend)
    assert engine.name == "openai"
    auto = plan_for_config(cpu, parse(SERVED), engine=engine.name)
    assert (auto.count, auto.tune_batch, auto.batch_start, auto.recycle_bytes) == (1, True, 4, 0)
    assert auto.batch >= 64 and "doubled while the server's tokens/s rises" in auto.batch_reason
    fixed = plan_for_config(cpu, parse(SERVED + "concurrency = 100\n"), engine=engine.name)
    assert (fixed.count, fixed.batch, fixed.tune_batch) == (1, 100, False)


class Stub:
    """A loopback HTTP server whose /v1/chat/completions answers come from `answer(body)`
    -> (status, json); every request body is kept."""

    def __init__(self, answer: Callable[[dict], tuple[int, dict]]) -> None:
        self.answer, self.bodies = answer, []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                stub.bodies.append(body)
                self._send(*stub.answer(body))

            def do_GET(self) -> None:
                self._send(200, {"object": "list", "data": [{"id": "stub-model"}]})

            def _send(self, status: int, payload: dict) -> None:
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass     # the client gave up (a timeout test)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture
def stub() -> Iterator[Callable[..., Stub]]:
    made: list[Stub] = []

    def make(answer: Callable[[dict], tuple[int, dict]]) -> Stub:
        made.append(Stub(answer))
        return made[-1]

    yield make
    for s in made:
        s.httpd.shutdown()
        s.httpd.server_close()


def answer(text: str, finish: str = "stop") -> tuple[int, dict]:
    return 200, {"choices": [{"message": {"content": text}, "finish_reason": finish}],
                 "usage": {"prompt_tokens": 100, "completion_tokens": 7}}


def engine_for(server: Stub, tmp_path: Path, extra: str = "") -> OpenAiEngine:
    config = parse(f'[model]\nengine = "openai"\nurl = "{server.url}"\nname = "stub-model"\n{extra}')
    return OpenAiEngine(config.model)


def big(body: dict) -> bool:
    """The stub's test pages are larger than the 64x64 probe page."""
    return len(body["messages"][0]["content"][0]["image_url"]["url"]) > 400   # the probe page is ~230


def test_request_shape_and_a_looping_answer_cut(stub, tmp_path: Path) -> None:
    loop = "intro\n" + "| a | b |\n" * 400
    server = stub(lambda body: answer(loop, "length") if big(body) else answer("ok"))
    engine = engine_for(server, tmp_path, 'extra_body = { skip_special_tokens = false }\n')
    engine.load()
    [result] = engine.generate([Image.new("RGB", (300, 400), "white")], "<image>\n<|grounding|>Go.",
                               mode="gundam", max_tokens=50)
    body = server.bodies[-1]
    assert (body["model"], body["temperature"], body["max_tokens"], body["skip_special_tokens"]) == (
        "stub-model", 0, 50, False)
    image, text = body["messages"][0]["content"]
    assert image["image_url"]["url"].startswith("data:image/png;base64,")
    assert text == {"type": "text", "text": "<|grounding|>Go."}       # no second <image>
    assert result.finish_reason == "repetition" and result.text.count("| a | b |") == 1
    assert (result.prompt_tokens, result.generation_tokens) == (100, 7)


@pytest.mark.parametrize("status", [429, 503, 400, 500])
def test_an_answer_every_page_gets_is_the_servers_problem(stub, tmp_path: Path, status) -> None:
    """Busy (429, 503), or refusing even the blank probe page (a wrong model id's fast 400):
    ModelUnavailable at load, once, before any page is charged."""
    engine = engine_for(stub(lambda body: (status, {"error": {"message": "nope"}})), tmp_path)
    with pytest.raises(ModelUnavailable, match=f"{status} nope"):
        engine.load()


@pytest.mark.parametrize("status, error", [
    (500, EngineError),     # the blank page passes: this page's failure, retried
    (400, InputError),      # the blank page passes: this page is refused for good
    (429, ModelUnavailable),   # busy is never one page's fault
])
def test_an_answer_one_page_gets_fails_that_page_alone(stub, tmp_path: Path, status, error) -> None:
    server = stub(lambda body: (status, {"error": {"message": "nope"}}) if big(body) else answer("ok"))
    engine = engine_for(server, tmp_path)
    session = engine.open_session(capacity=2)
    session.add("bad", Image.new("RGB", (300, 400), "white"), prompt="p", mode="gundam", max_tokens=5)
    finished = []
    while len(session):
        finished += session.step()
    session.close()
    [bad] = finished
    assert bad.key == "bad" and type(bad.error) is error and "nope" in str(bad.error)


@pytest.mark.parametrize("blank_too, error", [(False, PageTimeout), (True, ModelUnavailable)])
def test_a_page_past_its_time_budget_fails_alone_unless_the_server_hangs(stub, tmp_path: Path,
                                                                         blank_too, error) -> None:
    def slow(body: dict) -> tuple[int, dict]:
        if big(body) or (blank_too and len(stub_bodies) > 1):
            time.sleep(1.6)
        return answer("ok")

    server = stub(slow)
    stub_bodies = server.bodies
    engine = engine_for(server, tmp_path, "page_timeout_s = 1\n")
    engine.load()                        # the first blank page is quick either way
    with pytest.raises(error):
        engine.read(engine.preprocess(Image.new("RGB", (300, 400)), "p", "gundam"), "p", max_tokens=5)


def test_a_stopping_worker_waits_for_no_request_in_flight(stub, tmp_path: Path) -> None:
    """close() gives the pages up at once; the request threads are daemon threads, so the worker
    process exits without joining a request still waiting on the server."""
    server = stub(lambda body: (time.sleep(1.5), answer("late"))[1] if big(body) else answer("ok"))
    session = engine_for(server, tmp_path).open_session(capacity=4)
    session.add("slow", Image.new("RGB", (300, 400), "white"), prompt="p", mode="gundam", max_tokens=5)
    assert session.step(wait_s=0.1) == []
    session.close()
    assert len(session) == 0
    assert [t for t in threading.enumerate() if t.name.startswith("openai") and not t.daemon] == []


def test_server_report_lists_models_and_says_when_unreachable(stub, tmp_path: Path) -> None:
    server = stub(lambda body: answer("ok"))
    report = server_report(engine_for(server, tmp_path).config)
    assert report["reachable"] and report["models"] == ["stub-model"] and report["serves_name"]
    gone = parse('[model]\nengine = "openai"\nurl = "http://127.0.0.1:9/v1"\nname = "m"\n').model
    report = server_report(gone)
    assert not report["reachable"] and "Connect" in report["error"]
