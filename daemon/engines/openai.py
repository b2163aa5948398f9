"""Any OpenAI-compatible VLM server reads the pages: `[model] engine = "openai"`.

vLLM, SGLang, LM Studio or mlx-vlm's own server already batch a GPU well; ocrd stays the durable
front (folders, ledger, retries, outputs, status). Each page is one chat completion: the page as
a base64 image part, the prompt as a text part (without `<image>`: the server's chat template
places the image, and a second placeholder fails: "number of image tokens ... 2 != 1"),
temperature 0. Up to the in-flight limit of requests run at once, each on its own thread.

Whose fault is an error decides what happens to the page (errors.py):
- the server down, 429, 502/503/504, 401/403 (the key), 404 (the URL or a model id a server
  does not serve): ModelUnavailable. The worker gives its pages back uncharged and exits; the
  supervisor says why in the model status and probes again with backoff, as for a missing model;
- any other 4xx/5xx for a page: the same request is tried with a small blank page (`probe`).
  If that fails too, every page would (a wrong model id is a fast 400 for every page): the
  server's configuration, said once, pages kept queued. If it passes, the page alone fails:
  a 4xx for good (InputError), a 5xx retried (EngineError);
- past page_timeout_s: PageTimeout for that page, once the blank page has passed (a hung server
  is ModelUnavailable, as above); a looping answer is cut by the repetition guard
  (finish_reason "repetition"), as the in-process engine does.

httpx rather than the `openai` package: one small dependency (already the tests' HTTP client),
a thread-safe pooled client, and the raw status code and body, which decide the page's fate
here; the `openai` client's own hidden retries would blur exactly that.
"""

from __future__ import annotations

import base64
import io
import queue
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, wait
from pathlib import Path
from typing import TYPE_CHECKING, Any, Hashable

import httpx

from ..config import ModelConfig
from ..errors import EngineError, InputError, ModelUnavailable, OcrdError, PageTimeout, first_line
from .base import Finished, PageResult, find_repetition

if TYPE_CHECKING:
    from PIL import Image

CONNECT_TIMEOUT_S = 10.0
STEP_WAIT_S = 0.25           # a step waits this long for an answer (the loop admits between steps)
SERVER_DOWN = {429, 502, 503, 504}
NOT_SERVED = {401, 403, 404}  # the key, the URL or the model id: never one page's fault


class OpenAiEngine:
    """An OpenAI-compatible server behind the Engine protocol. `load` checks it with a probe
    page (reachable, the key accepted, the model served); `open_session` keeps requests in flight."""

    def __init__(self, model: ModelConfig) -> None:
        self.config = model
        self.client: httpx.Client | None = None

    @property
    def where(self) -> str:
        return f"{self.config.url} ({self.config.name})"

    def load(self) -> None:
        """Build the client and send the probe page; ModelUnavailable with one line if it fails."""
        if self.client is not None:
            return
        self.client = make_client(self.config)
        try:
            self.probe()
        except ModelUnavailable:
            self.client.close()
            self.client = None
            raise

    def probe(self) -> None:
        """A small blank page through the whole path; raises ModelUnavailable when even that fails."""
        try:
            self.read(encode_page(_blank_page()), self.config.prompt, max_tokens=1, probing=True)
        except ModelUnavailable:
            raise
        except OcrdError as exc:
            raise ModelUnavailable(f"server {self.where} fails even a blank page (check [model] name, url, "
                                   f"extra_body): {exc}") from None

    def preprocess(self, image: Image.Image, prompt: str, mode: str) -> str:
        """The page as a data URL, on the worker's front threads (PNG: lossless, and small for text)."""
        return encode_page(image)

    def generate(self, images: list[Image.Image], prompt: str, *, mode: str,
                 max_tokens: int) -> list[PageResult]:
        self.load()
        return [self.read(encode_page(image), prompt, max_tokens=max_tokens) for image in images]

    def open_session(self, *, capacity: int, page_budget_s: float | None = None) -> OpenAiSession:
        self.load()
        return OpenAiSession(self, capacity=capacity)

    def read(self, page: str, prompt: str, *, max_tokens: int, probing: bool = False) -> PageResult:
        """One page, one request; raises the error that says whose fault a failure is."""
        started = time.perf_counter()
        body = {**self.config.extra_body, "model": self.config.name, "temperature": 0,
                "max_tokens": max_tokens, "messages": [{"role": "user", "content": [
                    {"type": "image_url", "image_url": {"url": page}},
                    {"type": "text", "text": prompt.replace("<image>", "").strip()}]}]}
        try:
            response = self.client.post("chat/completions", json=body)
        except httpx.ConnectTimeout as exc:
            raise ModelUnavailable(f"server {self.where} unreachable: {first_line(exc, with_type=True)}") from None
        except httpx.TimeoutException:
            if not probing:
                self.probe()   # a hung server times out a blank page too: not this page's fault
            raise PageTimeout(f"page timed out after {time.perf_counter() - started:.0f} s "
                              f"(page_timeout_s {self.config.page_timeout_s:g}) at {self.where}") from None
        except httpx.HTTPError as exc:
            raise ModelUnavailable(f"server {self.where} unreachable: {first_line(exc, with_type=True)}") from None
        if response.status_code >= 400:
            raise self._refused(response, probing)
        return self._result(response, started)

    def _refused(self, response: httpx.Response, probing: bool) -> OcrdError:
        code, detail = response.status_code, _detail(response)
        if code in SERVER_DOWN:
            return ModelUnavailable(f"server {self.where} busy or down: {code} {detail}")
        if code in NOT_SERVED:
            what = "refused the API key ([model] api_key_file)" if code in (401, 403) else \
                "does not serve this model or URL ([model] name, url)"
            return ModelUnavailable(f"server {self.where} {what}: {code} {detail}")
        if probing:
            return EngineError(f"{code} {detail}")
        self.probe()        # a blank page fails too: the server's configuration, not this page
        if code < 500:
            return InputError(f"server rejected this page: {code} {detail}")
        return EngineError(f"server failed this page: {code} {detail}")

    def _result(self, response: httpx.Response, started: float) -> PageResult:
        try:
            answer = response.json()
            choice = answer["choices"][0]
            text = choice["message"]["content"] or ""
        except (ValueError, KeyError, IndexError, TypeError):
            raise EngineError(f"server {self.where} sent no answer: {response.text[:200]!r}") from None
        usage = answer.get("usage") or {}
        finish = choice.get("finish_reason") or "stop"
        cut = find_repetition(text)
        if cut is not None:
            text, finish = text[:cut], "repetition"
        return PageResult(text=text.rstrip("\ufffd"), prompt_tokens=int(usage.get("prompt_tokens") or 0),
                          generation_tokens=int(usage.get("completion_tokens") or 0),
                          seconds=time.perf_counter() - started,
                          finish_reason=finish if finish in ("stop", "length", "repetition") else "stop")


class OpenAiSession:
    """Pages in flight to the server: one request each, on up to `capacity` threads. `step`
    returns the pages answered within STEP_WAIT_S (or at once when some are). The threads are
    daemon threads: a worker that stops (its pages given back) exits at once, not after the
    requests still in flight (ThreadPoolExecutor's threads are joined at exit)."""

    ahead = 0

    def __init__(self, engine: OpenAiEngine, *, capacity: int) -> None:
        self.engine = engine
        self.capacity = self.limit = max(capacity, 1)
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._pages: dict[Future, Hashable] = {}
        self.generated = 0

    def __len__(self) -> int:
        return len(self._pages)

    def add(self, key: Hashable, image: Image.Image | str, *, prompt: str, mode: str,
            max_tokens: int) -> Finished | None:
        page = image if isinstance(image, str) else encode_page(image)
        future: Future = Future()
        self._pages[future] = key
        self._queue.put((future, page, prompt, max_tokens))
        if len(self._threads) < min(self.capacity, len(self._pages)):
            thread = threading.Thread(target=self._serve, name=f"openai-{len(self._threads)}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return None

    def _serve(self) -> None:
        while (item := self._queue.get()) is not None:
            future, page, prompt, max_tokens = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(self.engine.read(page, prompt, max_tokens=max_tokens))
            except BaseException as exc:   # handed to step(), which decides
                future.set_exception(exc)

    def step(self, wait_s: float = STEP_WAIT_S) -> list[Finished]:
        done, _ = wait(list(self._pages), timeout=wait_s, return_when=FIRST_COMPLETED)
        out = []
        for future in done:
            key = self._pages.pop(future)
            try:
                result = future.result()
            except OcrdError as exc:
                out.append(Finished(key, error=exc))
                continue
            except Exception as exc:   # a surprise fails this page, not the worker
                out.append(Finished(key, error=EngineError(first_line(exc, with_type=True))))
                continue
            self.generated += result.generation_tokens
            out.append(Finished(key, result=result))
        return out

    def cancel(self, key: Hashable) -> None:
        for future, held in list(self._pages.items()):
            if held == key:
                future.cancel()
                del self._pages[future]

    def close(self) -> None:
        for future in self._pages:
            future.cancel()
        self._pages.clear()
        for _ in self._threads:
            self._queue.put(None)


def make_client(model: ModelConfig) -> httpx.Client:
    """A pooled client for the server, with the key from api_key_file (ModelUnavailable if unreadable)."""
    headers = {}
    if model.api_key_file is not None:
        headers["Authorization"] = f"Bearer {read_api_key(model.api_key_file)}"
    timeout = httpx.Timeout(model.page_timeout_s, connect=CONNECT_TIMEOUT_S)
    return httpx.Client(base_url=model.url.rstrip("/") + "/", headers=headers, timeout=timeout,
                        limits=httpx.Limits(max_connections=None, max_keepalive_connections=256))


def read_api_key(path: Path) -> str:
    try:
        key = path.read_text().strip()
    except OSError as exc:
        raise ModelUnavailable(f"[model] api_key_file {path} cannot be read: {exc.strerror}") from None
    if not key:
        raise ModelUnavailable(f"[model] api_key_file {path} is empty")
    return key


def server_report(model: ModelConfig, *, timeout_s: float = 5.0) -> dict[str, Any]:
    """What `ocrd device`, `status` and `doctor` show of the server: its URL, whether it answers
    GET /models, the model ids it lists, and whether the configured one is among them."""
    report: dict[str, Any] = {"url": model.url, "name": model.name, "reachable": False, "models": [],
                              "serves_name": False, "error": None}
    try:
        with make_client(model) as client:
            response = client.get("models", timeout=timeout_s)
    except (OcrdError, httpx.HTTPError) as exc:
        report["error"] = str(exc) if isinstance(exc, OcrdError) else first_line(exc, with_type=True)
        return report
    if response.status_code >= 400:
        report["error"] = f"GET /models: {response.status_code} {_detail(response)}"
        return report
    report["reachable"] = True
    try:
        report["models"] = [m["id"] for m in response.json().get("data", [])]
    except (ValueError, KeyError, TypeError, AttributeError):
        report["error"] = "GET /models: not an OpenAI model list"
    report["serves_name"] = model.name in report["models"]
    return report


def encode_page(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _blank_page() -> Image.Image:
    from PIL import Image

    return Image.new("RGB", (64, 64), "white")


def _detail(response: httpx.Response) -> str:
    """The server's own words for an error, in one line (OpenAI's error.message, FastAPI's detail)."""
    try:
        body = response.json()
    except ValueError:
        return first_line(Exception(response.text[:300]))
    if isinstance(body, dict):
        error = body.get("error")
        message = error.get("message") if isinstance(error, dict) else error or body.get("detail") or body.get("message")
        if message:
            return first_line(Exception(str(message)))[:300]
    return first_line(Exception(str(body)))[:300]
