"""The engine seam: one small protocol between workers and the model, and the real mlx-vlm engine.

Workers get only a "module:callable" factory string and a ModelConfig (both picklable), so test
engines (tests/engines.py) come in through `make_engine`, never through patching.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, Sequence

from .config import ModelConfig
from .errors import EngineError, ModelUnavailable, first_line
from .modes import MODES

if TYPE_CHECKING:
    from PIL import Image

DEFAULT_ENGINE = "ocrd.daemon.engine:MlxVlmEngine"   # the factory string workers get by default

# Repetition guard. A looping page otherwise burns max_tokens (8192 by default: minutes of
# decode). Thresholds are generous because OCR output repeats legitimately (table rules, dot
# leaders, empty <td></td> cells): a loop must cover the minimum span AND REPEAT_MIN_COPIES.
# The engine checks token ids, not text: mlx-vlm's streaming detokenizer holds text back until
# a space, so a loop without spaces ("<td></td><td></td>...") would never show up as text.
REPEAT_MIN_CHARS = 1200
REPEAT_MIN_TOKENS = 300       # ~1200 characters of markdown
REPEAT_MIN_COPIES = 6
REPEAT_WINDOW = 6000
REPEAT_CHECK_EVERY = 16       # tokens between checks: the check is O(window * units)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass
class PageResult:
    text: str
    prompt_tokens: int
    generation_tokens: int
    seconds: float
    finish_reason: str  # "stop" | "length" | "repetition"
    peak_memory_bytes: int = 0


class Engine(Protocol):
    def load(self) -> None: ...

    def generate(self, images: list[Image.Image], prompt: str, *, mode: str,
                 max_tokens: int) -> list[PageResult]: ...


def make_engine(factory: str, model: ModelConfig) -> Engine:
    """Import `factory` ("module:callable") and call it with the model config."""
    module_name, sep, attr = factory.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"engine factory must look like 'module:callable', not {factory!r}")
    target: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        target = getattr(target, part)
    return target(model)


def find_repetition(text: Sequence, *, min_len: int = REPEAT_MIN_CHARS,
                    min_copies: int = REPEAT_MIN_COPIES, window: int = REPEAT_WINDOW) -> int | None:
    """Where the looping tail of `text` should be cut, or None if the tail does not loop.

    `text` is a str or a list of token ids. A loop is a unit of length p repeated back to back
    at the very end, covering at least max(min_len, min_copies * p) items. The returned index
    keeps everything before the loop plus ONE copy of the unit (a line legitimately written
    twice is not lost): the caller keeps `text[:index]`.
    """
    n = len(text)
    tail = text[-window:]
    for p in range(1, len(tail) // min_copies + 1):
        span = max(min_len, min_copies * p)
        if span > len(tail):
            break
        if tail[-1] != tail[-1 - p]:
            continue                     # cheap pre-check: most periods fail on the last item
        seg = tail[-span:]
        if seg[:-p] != seg[p:]:          # has period p  <=>  it equals itself shifted by p
            continue
        start = n - span
        while start > 0 and text[start - 1] == text[start - 1 + p]:
            start -= 1
        if isinstance(text, str):
            # The periodic run may begin mid-line ("\n| a |" rather than "| a |\n"): end the
            # kept copy at a line break when the unit holds one.
            newline = text.find("\n", start + p, start + 2 * p)
            if newline >= 0:
                return newline + 1
        return start + p
    return None


def memory_stats() -> dict[str, int]:
    """MLX allocator numbers for heartbeats; memory_limit_bytes is 0 when unknown."""
    import mlx.core as mx

    limit = 0
    with contextlib.suppress(Exception):
        info = mx.device_info()
        limit = int(info.get("max_recommended_working_set_size") or info.get("total_memory") or 0)
    return {
        "active_memory_bytes": int(mx.get_active_memory()),
        "peak_memory_bytes": int(mx.get_peak_memory()),
        "cache_memory_bytes": int(mx.get_cache_memory()),
        "memory_limit_bytes": limit,
    }


def resolve_model_path(path: str) -> Path:
    """A local checkpoint directory for `path` (a directory or a Hugging Face id), or ModelUnavailable.

    A hub id is taken from the local cache first; it is downloaded only when HF_HUB_OFFLINE is
    unset, with short timeouts, so a missing model fails fast instead of hanging a worker.
    """
    local = Path(path).expanduser()
    if local.exists():
        if not (local / "config.json").is_file():
            raise ModelUnavailable(f"model directory {local} has no config.json")
        return local
    if not _HUB_ID.match(path):
        raise ModelUnavailable(f"model path {path} does not exist")
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.safetensors", "*.py", "*.model", "*.tiktoken", "*.txt", "*.jinja"]
    try:
        return Path(snapshot_download(path, allow_patterns=patterns, local_files_only=True,
                                      cache_dir=hf_cache_dir()))
    except Exception:
        pass
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        raise ModelUnavailable(f"model {path} is not in the Hugging Face cache and HF_HUB_OFFLINE is set")
    try:
        return Path(snapshot_download(path, allow_patterns=patterns, etag_timeout=10,
                                      cache_dir=hf_cache_dir()))
    except Exception as exc:
        reason = first_line(exc, with_type=True)
        raise ModelUnavailable(f"model {path} could not be downloaded: {reason}") from None


def model_size_bytes(path: str) -> int | None:
    """Bytes of *.safetensors weights for a local model dir, or a hub id in the local HF cache."""
    local = Path(path).expanduser()
    if not local.exists():
        try:
            from huggingface_hub import snapshot_download

            local = Path(snapshot_download(path, local_files_only=True, cache_dir=hf_cache_dir(),
                                           allow_patterns=["*.safetensors", "*.json"]))
        except Exception:
            return None
    files = list(local.glob("*.safetensors"))
    if not files:
        return None
    return sum(f.stat().st_size for f in files)   # stat follows the HF cache's symlinks to blobs


def hf_cache_dir() -> str | None:
    """HF_HUB_CACHE as set now (huggingface_hub reads it once, at import), else its default."""
    return os.environ.get("HF_HUB_CACHE") or None


class MlxVlmEngine:
    """The real engine: mlx_vlm.load once, then greedy stream_generate with a repetition guard.

    Several images are run one after another, not through mlx_vlm.batch_generate: in mlx-vlm
    0.7.10 batch_generate runs on the tiny deepseekocr model but ignores the resolution mode
    (base_size/image_size/cropping), reports only batch-wide token counts and no finish reason,
    and cannot stop a looping page early. The protocol takes a list so batching can come later.
    """

    def __init__(self, model: ModelConfig, *, repeat_min_tokens: int = REPEAT_MIN_TOKENS):
        self.config = model
        self.repeat_min_tokens = repeat_min_tokens
        self.model: Any = None
        self.processor: Any = None

    def load(self) -> None:
        """Load the model once (idempotent). Raises ModelUnavailable with one clear line."""
        if self.model is not None:
            return
        local = resolve_model_path(self.config.path)
        import mlx_vlm

        try:
            # The DeepSeek processor prints set-up lines; keep a worker's stdout clean.
            with contextlib.redirect_stdout(sys.stderr):
                self.model, self.processor = mlx_vlm.load(str(local))
        except Exception as exc:
            reason = first_line(exc, with_type=True)
            raise ModelUnavailable(f"model {self.config.path} cannot be loaded: {reason}") from None

    @property
    def model_type(self) -> str:
        return getattr(self.model.config, "model_type", "") if self.model is not None else ""

    def generate(self, images: list[Image.Image], prompt: str, *, mode: str,
                 max_tokens: int) -> list[PageResult]:
        """One PageResult per image, in order; EngineError if a page fails."""
        self.load()
        return [self._generate_one(image, prompt, mode=mode, max_tokens=max_tokens) for image in images]

    def _generate_one(self, image: Image.Image, prompt: str, *, mode: str, max_tokens: int) -> PageResult:
        import mlx.core as mx
        import mlx_vlm

        kwargs: dict[str, Any] = {"max_tokens": max_tokens, "temperature": 0.0}
        if self.model_type == "deepseekocr":
            kwargs.update(_mode_kwargs(mode))
        if "<image>" not in prompt:
            prompt = mlx_vlm.apply_chat_template(self.processor, self.model.config, prompt, num_images=1)
        tokenizer = getattr(self.processor, "tokenizer", self.processor)
        started = time.perf_counter()
        mx.reset_peak_memory()
        text, ids, last, finish, cut = "", [], None, None, None
        try:
            # mlx_vlm.generate resets the stop tokens before each call; stream_generate does not.
            criteria = getattr(tokenizer, "stopping_criteria", None)
            if criteria is not None:
                criteria.reset(self.model.config.eos_token_id)
            with contextlib.redirect_stdout(sys.stderr):
                stream = mlx_vlm.stream_generate(self.model, self.processor, prompt, image=[image], **kwargs)
                try:
                    for n, chunk in enumerate(stream, 1):
                        text += chunk.text
                        last = chunk
                        finish = chunk.finish_reason or finish
                        if chunk.token is not None and chunk.finish_reason is None:
                            ids.append(int(chunk.token))
                        if n % REPEAT_CHECK_EVERY == 0 and (cut := self._find_loop(ids)) is not None:
                            finish = "repetition"
                            break
                except KeyError:
                    # mlx-vlm's streaming BPE detokenizer can't spell special tokens written with
                    # non-byte-level characters ("<｜▁pad▁｜>", bos): a model that emits one has
                    # ended its text, which the detokenizer may still hold back: decode it whole.
                    # (Banning those tokens with logit_bias instead costs ~5% on every token.)
                    text, finish = _decode(tokenizer, ids), "stop"
                finally:
                    stream.close()
        except Exception as exc:
            raise EngineError(f"generate failed: {first_line(exc, with_type=True)}") from exc
        finally:
            mx.clear_cache()
        if finish == "length" and (cut := self._find_loop(ids)) is not None:
            finish = "repetition"   # the loop ran into max_tokens between two checks
        if finish == "repetition" and cut is not None:
            text = _decode(tokenizer, ids[:cut])
        clean = getattr(self.processor, "clean_output", None)
        if callable(clean):
            text = clean(text)
        return PageResult(
            text=text,
            prompt_tokens=int(last.prompt_tokens) if last else 0,
            generation_tokens=int(last.generation_tokens) if last else 0,
            seconds=time.perf_counter() - started,
            finish_reason=finish or "length",
            peak_memory_bytes=int(mx.get_peak_memory()),
        )

    def _find_loop(self, ids: list[int]) -> int | None:
        return find_repetition(ids, min_len=self.repeat_min_tokens)


def _mode_kwargs(mode: str) -> dict[str, Any]:
    """mlx-vlm's DeepSeek-OCR resolution arguments for a mode name; EngineError if unknown."""
    if mode not in MODES:
        raise EngineError(f"unknown resolution mode {mode!r}")
    m = MODES[mode]
    return {"base_size": m.base_size, "image_size": m.image_size, "cropping": m.cropping}


def _decode(tokenizer: Any, ids: list[int]) -> str:
    # Token ids cut anywhere can end inside a multi-byte character: drop the dangling half.
    return tokenizer.decode(ids, skip_special_tokens=True).rstrip("\ufffd")
