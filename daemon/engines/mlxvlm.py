"""DeepSeek-OCR through mlx-vlm on Metal, CUDA or the CPU: the default engine."""

from __future__ import annotations

import contextlib
import io
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Hashable, Iterator

import structlog

from ..config import ModelConfig
from ..errors import EngineError, ModelUnavailable, OcrdError, PageTimeout, first_line
from .deepseek_inputs import PageViews, embed, image_encoder, model_inputs, page_views
from .base import REPEAT_CHECK_EVERY, REPEAT_MIN_TOKENS, Finished, PageResult, find_repetition
from .weights import resolve_model_path

_log = structlog.get_logger()

if TYPE_CHECKING:
    from PIL import Image

PREFILL_GROUP = 8             # waiting pages prefilled together (never more than the batch holds)


def memory_stats() -> dict[str, int]:
    """MLX allocator numbers for heartbeats. memory_limit_bytes is MLX's own allocation limit,
    `mx.get_memory_limit()` (142.6 GB on an H200, not the card's total); the device's size only
    where MLX can't say, 0 when nothing is known."""
    import mlx.core as mx

    limit = 0
    with contextlib.suppress(Exception):
        limit = int(mx.get_memory_limit())
    if not limit:
        with contextlib.suppress(Exception):
            info = mx.device_info()
            limit = int(info.get("max_recommended_working_set_size") or info.get("total_memory") or 0)
    return {
        "active_memory_bytes": int(mx.get_active_memory()),
        "peak_memory_bytes": int(mx.get_peak_memory()),
        "cache_memory_bytes": int(mx.get_cache_memory()),
        "memory_limit_bytes": limit,
    }


def take_peak_memory() -> int:
    """MLX's peak memory since the last call, then the count restarts (what one stretch of
    decoding needed, not the worker's whole life)."""
    import mlx.core as mx

    peak = int(mx.get_peak_memory())
    mx.reset_peak_memory()
    return peak


def _quantized(model: Any) -> list[tuple[str, Any]]:
    import mlx.nn as nn
    from mlx_vlm.models.switch_layers import QuantizedSwitchLinear

    kinds = (nn.QuantizedLinear, nn.QuantizedEmbedding, QuantizedSwitchLinear)
    return [(name, layer) for name, layer in model.named_modules() if isinstance(layer, kinds)]


def dense_bytes(model: Any) -> int:
    """Bytes the model's quantized weights would take dense (in their scales' dtype); 0 when
    nothing is quantized."""
    return sum(layer.weight.size * 32 // layer.bits * layer.scales.dtype.size
               for _, layer in _quantized(model))


def dequantize(model: Any) -> int:
    """Replace the model's quantized layers (linear, embedding, MoE experts) by dense ones holding
    the values the quantized kernels compute with (`mx.dequantize`); returns how many."""
    import mlx.core as mx
    import mlx.nn as nn
    from mlx.utils import tree_unflatten
    from mlx_vlm.models.switch_layers import QuantizedSwitchLinear, SwitchLinear

    swaps = []
    for name, layer in _quantized(model):
        weight = mx.dequantize(layer.weight, layer.scales, layer.get("biases"), group_size=layer.group_size,
                               bits=layer.bits, mode=getattr(layer, "mode", "affine"))
        if isinstance(layer, QuantizedSwitchLinear):
            dense = SwitchLinear(weight.shape[2], weight.shape[1], weight.shape[0], bias="bias" in layer)
        elif isinstance(layer, nn.QuantizedLinear):
            dense = nn.Linear(weight.shape[1], weight.shape[0], bias="bias" in layer)
        else:
            dense = nn.Embedding(weight.shape[0], weight.shape[1])
        dense.weight = weight
        if "bias" in layer:
            dense.bias = layer.bias
        swaps.append((name, dense))
        mx.eval(weight)   # layer by layer, small graphs (the peak holds both copies)
    if swaps:
        model.update_modules(tree_unflatten(swaps))
    return len(swaps)


class MlxVlmEngine:
    """The real engine: mlx_vlm.load once, then pages decoded together in an `MlxSession`.

    `generate` runs a few images through a session to the end (one code path for one page or
    many); workers keep a session open and feed it page by page (continuous batching).
    """

    def __init__(self, model: ModelConfig, *, repeat_min_tokens: int = REPEAT_MIN_TOKENS):
        self.config = model
        self.repeat_min_tokens = repeat_min_tokens
        self.model: Any = None
        self.processor: Any = None
        self.encode_images: Callable[[Any], Any] | None = None   # DeepSeek-OCR's compiled image encoders (deepseek_inputs.py)

    def load(self) -> None:
        """Load the model once (idempotent). Raises ModelUnavailable with one clear line."""
        if self.model is not None:
            return
        local = resolve_model_path(self.config.path)
        import mlx_vlm

        try:
            with library_prints():
                self.model, self.processor = mlx_vlm.load(str(local))
        except Exception as exc:
            reason = first_line(exc, with_type=True)
            raise ModelUnavailable(f"model {self.config.path} cannot be loaded: {reason}") from None
        self._dense_on_cuda()
        if self.model_type == "deepseekocr":
            self.encode_images = image_encoder(self.model)

    def _dense_on_cuda(self) -> None:
        """MLX's quantized kernels on CUDA decode far slower than dense ones (an H100, gundam, 64
        pages in flight: 31.6 ms a step 8-bit, 9.2 ms bf16), so on CUDA a quantized model runs
        dense (the same values, `dequantize`) where its dense weights fit in a third of the GPU's
        memory. On Metal and the CPU it stays as it is (Metal's quantized kernels are the fast ones)."""
        from ..device import detect_device

        device = detect_device()
        if device.backend != "cuda":
            return
        dense = dense_bytes(self.model)
        if not dense:
            return
        if dense > device.memory_bytes // 3:
            _log.info("model_kept_quantized", dense_gb=round(dense / 1e9, 1),
                      gpu_gb=round(device.memory_bytes / 1e9, 1))
            return
        layers = dequantize(self.model)
        _log.info("model_dequantized", layers=layers, dense_gb=round(dense / 1e9, 1),
                  reason="quantized kernels are slower than dense ones on CUDA")

    @property
    def model_type(self) -> str:
        return getattr(self.model.config, "model_type", "") if self.model is not None else ""

    def open_session(self, *, capacity: int, page_budget_s: float | None = None) -> MlxSession:
        """A decode session for up to `capacity` pages in flight."""
        self.load()
        return MlxSession(self, capacity=capacity, page_budget_s=page_budget_s)

    def generate(self, images: list[Image.Image], prompt: str, *, mode: str,
                 max_tokens: int) -> list[PageResult]:
        """One PageResult per image, in order, decoded together; the first page's error is raised."""
        session = self.open_session(capacity=max(len(images), 1))
        results: dict[int, PageResult] = {}
        try:
            finished = [f for n, image in enumerate(images)
                        if (f := session.add(n, image, prompt=prompt, mode=mode, max_tokens=max_tokens))]
            while len(session) or finished:
                for f in finished:
                    if f.error is not None:
                        raise f.error
                    results[f.key] = f.result
                finished = session.step() if len(session) else []
        finally:
            session.close()
        return [results[n] for n in range(len(images))]

    def preprocess(self, image: Image.Image, prompt: str, mode: str) -> PageViews | WholePage:
        """A page's CPU work, on any thread (the worker's feeder runs it ahead of the decoder):
        DeepSeek-OCR's views and token ids (deepseek_inputs.py); another model's page is left
        whole for its processor. The chat template is applied only to a prompt that does not
        already hold `<image>` (it would add a second one)."""
        if "<image>" not in prompt:
            import mlx_vlm

            prompt = mlx_vlm.apply_chat_template(self.processor, self.model.config, prompt, num_images=1)
        if self.model_type == "deepseekocr":
            return page_views(self.processor, image, prompt, mode)
        return WholePage(image, prompt)

    def prepare(self, page: PageViews | WholePage | Image.Image, prompt: str,
                mode: str) -> tuple[list[int], dict[str, Any]]:
        """A page's prompt token ids and the embeddings BatchGenerator takes (`inputs_embeds`,
        with the image encoded in the page's resolution mode), on the decode thread. `page` is
        what `preprocess` made of it, or a raw image (preprocessed here, then)."""
        if not isinstance(page, (PageViews, WholePage)):
            page = self.preprocess(page, prompt, mode)
        if isinstance(page, PageViews):   # DeepSeek-OCR: encoded without waiting on the device
            inputs = model_inputs(page, self.processor)
            return page.ids, {"inputs_embeds": embed(self.model, page, inputs, self.encode_images)}
        from mlx_vlm.utils import prepare_inputs

        with library_prints():
            inputs = prepare_inputs(self.processor, images=[page.image], prompts=page.prompt,
                                    image_token_index=getattr(self.model.config, "image_token_index", None),
                                    add_special_tokens=False)
        ids, pixels, mask = inputs["input_ids"], inputs.get("pixel_values"), inputs.get("attention_mask")
        extra = {k: v for k, v in inputs.items() if k not in ("input_ids", "pixel_values", "attention_mask")}
        embedded = self.model.get_input_embeddings(ids, pixels, mask=mask, **extra)
        # The embeddings only: the processor's image inputs (images_seq_mask, ...) are spent, and
        # per-row arrays of a page's own length can't join a group prefill of other lengths.
        return ids.squeeze(0).tolist(), {k: v for k, v in embedded.to_dict().items() if v is not None}

    def finish_text(self, ids: list[int]) -> str:
        text = _decode(getattr(self.processor, "tokenizer", self.processor), ids)
        clean = getattr(self.processor, "clean_output", None)
        return clean(text) if callable(clean) else text


@dataclass(frozen=True)
class WholePage:
    """A page of a model other than DeepSeek-OCR: its processor prepares it on the decode thread."""
    image: Image.Image
    prompt: str


@dataclass
class _InFlight:
    key: Hashable
    prompt_tokens: int
    started: float
    ids: list[int] = field(default_factory=list)
    company: int = 1     # the most pages in flight with it: its time budget scales with them


def prefill_group(capacity: int) -> int:
    """Pages prefilled together: up to PREFILL_GROUP, and never more than an eighth of the batch,
    so at most that share of its slots waits free for a group (a batch of 2 refills each slot at
    once; 64 admits 8 at a time)."""
    return max(1, min(PREFILL_GROUP, capacity // 8))


class MlxSession:
    """Pages decoding together in one mlx-vlm `BatchGenerator` (the continuous-batching engine
    under its batch_generate and its server). mlx-vlm's batch_generate itself won't do: it ignores
    resolution modes, gives no per-page counts or finish reasons, and serialises pages of different
    sizes. Here each page is prepared alone in its own mode, joins when a slot frees
    (prefill_batch_size 1), and leaves alone: at its stop token, at max_tokens, when it loops
    (checked on its own token ids), or past its wall-clock budget: page_budget_s for each page
    that decoded beside it (as the supervisor's page timeout always scaled with the pages in one
    engine call), since a page in a batch of n shares the device n ways.

    Waiting pages are prefilled in groups (prefill_group; BatchGenerator admits a group once that
    many slots are free, decoding first every step): on an H200 admitting 64 small-mode pages took
    0.4 s in groups of 8 and 14 s one by one, while the other pages waited.

    A page's image is encoded on the device as soon as it is added (`mx.async_eval` on the
    thread's default stream, while BatchGenerator decodes on its own), and the session takes a
    prefill group of pages beyond its decoding `limit` (`ahead`): when slots free, the pages that
    join have their embeddings ready instead of encoding them while every other page waits (on an
    H200 16 ms a small page, 46 ms a gundam page)."""

    def __init__(self, engine: MlxVlmEngine, *, capacity: int, page_budget_s: float | None) -> None:
        from mlx_vlm.generate.ar import BatchGenerator

        self.engine = engine
        self.page_budget_s = page_budget_s
        tokenizer = getattr(engine.processor, "tokenizer", engine.processor)
        criteria = getattr(tokenizer, "stopping_criteria", None)
        if criteria is not None:   # mlx_vlm.generate resets it per call; a session must too
            criteria.reset(engine.model.config.eos_token_id)
        # A model that emits a special token the detokenizer can't spell (pad, bos) has ended
        # its text: stop that page there (greedy decoding would not recover from it anyway).
        stops = {t for t in (getattr(tokenizer, "pad_token_id", None), getattr(tokenizer, "bos_token_id", None))
                 if isinstance(t, int)}
        self._gen = BatchGenerator(engine.model.language_model, engine.processor, stop_tokens=stops,
                                   prefill_batch_size=prefill_group(capacity),
                                   completion_batch_size=max(capacity, 1),
                                   compute_logprobs=False)
        self._pages: dict[int, _InFlight] = {}
        self.generated = 0
        self.ahead = self._gen.prefill_batch_size

    @property
    def limit(self) -> int:
        return self._gen.completion_batch_size

    @limit.setter
    def limit(self, pages: int) -> None:
        # never under a prefill group: BatchGenerator admits a group only once it has that much room
        self._gen.completion_batch_size = max(pages, self._gen.prefill_batch_size)

    def __len__(self) -> int:
        return len(self._pages)

    def add(self, key: Hashable, image: Image.Image, *, prompt: str, mode: str,
            max_tokens: int) -> Finished | None:
        """Queue one page; a page that can't be prepared comes back at once, failed alone."""
        try:
            ids, kwargs = self.engine.prepare(image, prompt, mode)
        except OcrdError as exc:
            return Finished(key, error=exc)
        except Exception as exc:
            return Finished(key, error=EngineError(f"cannot prepare page: {first_line(exc, with_type=True)}"))
        import mlx.core as mx

        mx.async_eval(*(v for v in kwargs.values() if isinstance(v, mx.array)))   # encode it now
        (uid,) = self._gen.insert([ids], max_tokens=max_tokens, prompt_kwargs=[kwargs])
        self._pages[uid] = _InFlight(key, len(ids), time.perf_counter())
        return None

    def step(self) -> list[Finished]:
        """One decode step (or a prefill) for every page in flight; the pages that ended."""
        import mlx.core as mx

        try:
            _, responses = self._gen.next()
        except Exception as exc:   # the whole batch is lost (an OOM, a kernel error)
            raise EngineError(f"batch step failed: {first_line(exc, with_type=True)}") from exc
        done = []
        for r in responses:
            page = self._pages.get(r.uid)
            if page is None:
                continue
            if r.finish_reason != "stop":
                page.ids.append(int(r.token))
                self.generated += 1
            if r.finish_reason is not None:       # BatchGenerator has let it go already
                done.append(self._end(r.uid, r.finish_reason))
            elif len(page.ids) % REPEAT_CHECK_EVERY == 0 and self._loop_at(page) is not None:
                self._gen.remove(r.uid)           # this page alone leaves the batch
                done.append(self._end(r.uid, "repetition"))
        done += self._over_budget()
        if done:
            mx.clear_cache()
        return done

    def cancel(self, key: Hashable) -> None:
        for uid, page in list(self._pages.items()):
            if page.key == key:
                self._gen.remove(uid)
                del self._pages[uid]

    def close(self) -> None:
        import mlx.core as mx

        self._gen.close()
        self._pages.clear()
        mx.clear_cache()

    def _loop_at(self, page: _InFlight) -> int | None:
        return find_repetition(page.ids, min_len=self.engine.repeat_min_tokens)

    def _end(self, uid: int, finish: str) -> Finished:
        import mlx.core as mx

        page = self._pages.pop(uid)
        cut = self._loop_at(page) if finish in ("length", "repetition") else None
        if cut is not None:
            finish = "repetition"   # a loop that ran into max_tokens between two checks, too
        text = self.engine.finish_text(page.ids[:cut] if cut is not None else page.ids)
        return Finished(page.key, PageResult(
            text=text, prompt_tokens=page.prompt_tokens, generation_tokens=len(page.ids),
            seconds=time.perf_counter() - page.started, finish_reason=finish,
            peak_memory_bytes=int(mx.get_peak_memory())))

    def _over_budget(self) -> list[Finished]:
        if not self.page_budget_s:
            return []
        now, out, n = time.perf_counter(), [], len(self._pages)
        for uid, page in list(self._pages.items()):
            page.company = max(page.company, n)
            if now - page.started > self.page_budget_s * page.company:
                self._gen.remove(uid)
                del self._pages[uid]
                out.append(Finished(page.key, error=PageTimeout(
                    f"page timed out after {now - page.started:.0f} s ({self.page_budget_s:g} s for each "
                    f"of the {page.company} pages decoding with it)")))
        return out


@contextlib.contextmanager
def library_prints() -> Iterator[None]:
    """mlx-vlm prints as it works (DeepSeek-OCR's processor says "directly resize" for every
    page): its prints become debug events, kept out of the log and of the worker's stdout."""
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            yield
    finally:
        for line in printed.getvalue().splitlines():
            if line.strip():
                _log.debug("engine_output", line=line)


def _decode(tokenizer: Any, ids: list[int]) -> str:
    # Token ids cut anywhere can end inside a multi-byte character: drop the dangling half.
    return tokenizer.decode(ids, skip_special_tokens=True).rstrip("\ufffd")
