"""The engine seam and the real mlx-vlm engine on a tiny checkpoint built by the tests."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from ocrd.daemon.config import ModelConfig
from ocrd.daemon.engines.base import DEFAULT_ENGINE, PageResult, find_repetition, make_engine
from ocrd.daemon.engines.mlxvlm import MlxVlmEngine, memory_stats
from ocrd.daemon.errors import EngineError, ModelUnavailable
from ocrd.daemon.modes import MODES

PROMPT = "<image>\n<|grounding|>Convert the document to markdown."


@pytest.fixture(scope="module")
def engine(tiny_model: Path) -> MlxVlmEngine:
    e = MlxVlmEngine(ModelConfig(path=str(tiny_model), mode="tiny"))
    e.load()
    return e


def page(w: int = 300, h: int = 400, color: str = "white") -> Image.Image:
    return Image.new("RGB", (w, h), color)


# --- find_repetition -------------------------------------------------------------------------

def test_no_repetition_in_ordinary_text():
    text = "".join(f"Line {i}: the quick brown fox {i * 7}.\n" for i in range(200))
    assert find_repetition(text) is None


def test_short_text_never_loops():
    assert find_repetition("") is None
    assert find_repetition("abcabcabc") is None


def test_line_loop_is_cut_after_one_copy():
    head = "# Report\n\nSome real text.\n"
    line = "| 1 | total | 42 |\n"
    text = head + line * 200
    cut = find_repetition(text)
    assert cut is not None
    assert text[:cut] == head + line


def test_token_loop_mid_word():
    head = "Intro words. "
    text = head + "Invoic" * 400 + "Inv"     # generation stopped mid-unit
    cut = find_repetition(text)
    assert cut is not None
    assert text[:cut].startswith(head) and text[:cut].count("Invoic") == 1


def test_legitimate_repeats_below_the_threshold_are_kept():
    rule = "|---" * 30 + "|\n"              # a wide markdown table rule: 121 chars
    dots = "Chapter 1 " + "." * 80 + " 7\n"  # a dot leader
    assert find_repetition("| a |\n" + rule + dots) is None
    assert find_repetition("intro\n" + "same line twice\n" * 2) is None


def test_token_ids_work_too():
    ids = [5, 6, 7] + [9, 10, 11] * 20
    assert find_repetition(ids, min_len=12) == 6
    assert find_repetition(list(range(100)), min_len=12) is None


def test_thresholds_are_parameters():
    text = "x" + "ab" * 10
    assert find_repetition(text, min_len=10, min_copies=3) == 3
    assert find_repetition(text, min_len=100, min_copies=3) is None


def test_long_unit_needs_min_copies():
    para = "".join(f"word{i} " for i in range(60)) + "\n"   # ~430 chars
    assert find_repetition("start\n" + para * 3) is None       # 3 copies < REPEAT_MIN_COPIES
    cut = find_repetition("start\n" + para * 8)
    assert cut == len("start\n" + para)


# --- make_engine ------------------------------------------------------------------------------

def test_make_engine_imports_factory():
    e = make_engine("engines:FakeEngine", ModelConfig(path="fake:x"))
    e.load()
    [r] = e.generate([page(30, 40)], "p", mode="tiny", max_tokens=5)
    assert r.text == "page 30x40 x" and r.finish_reason == "stop"


def test_make_engine_default_is_mlx_vlm():
    assert isinstance(make_engine(DEFAULT_ENGINE, ModelConfig(path="/nowhere")), MlxVlmEngine)


@pytest.mark.parametrize("bad", ["engines", "engines:", ":FakeEngine"])
def test_make_engine_rejects_malformed_factory(bad):
    with pytest.raises(ValueError, match="module:callable"):
        make_engine(bad, ModelConfig())


def test_test_engines_behave():
    m = ModelConfig(path="slow:0.2")
    with pytest.raises(EngineError):
        make_engine("engines:CrashingEngine", m).generate([page()], "p", mode="tiny", max_tokens=1)
    with pytest.raises(ModelUnavailable):
        make_engine("engines:UnloadableEngine", m).load()
    t = time.monotonic()
    [r] = make_engine("engines:SlowEngine", m).generate([page()], "p", mode="tiny", max_tokens=1)
    assert time.monotonic() - t >= 0.2 and r.text == "page 300x400 0.2"


# --- model availability -----------------------------------------------------------------------

def test_missing_local_path_is_unavailable(tmp_path):
    with pytest.raises(ModelUnavailable, match="does not exist"):
        MlxVlmEngine(ModelConfig(path=str(tmp_path / "nope"))).load()


def test_directory_without_config_is_unavailable(tmp_path):
    with pytest.raises(ModelUnavailable, match="no config.json"):
        MlxVlmEngine(ModelConfig(path=str(tmp_path))).load()


def test_broken_checkpoint_is_unavailable(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "deepseekocr"}')
    with pytest.raises(ModelUnavailable, match="cannot be loaded") as info:
        MlxVlmEngine(ModelConfig(path=str(tmp_path))).load()
    assert "\n" not in str(info.value)


def test_uncached_hub_id_offline_fails_fast(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    t = time.monotonic()
    with pytest.raises(ModelUnavailable, match="not in the Hugging Face cache"):
        MlxVlmEngine(ModelConfig(path="nobody-here/no-such-model")).load()
    assert time.monotonic() - t < 5


def test_uncached_hub_id_without_network_fails_fast(tmp_path):
    # A fresh process, so huggingface_hub reads the environment at import (it caches it).
    env = {**os.environ, "HF_HOME": str(tmp_path), "HF_HUB_OFFLINE": ""}
    code = ("from ocrd.daemon.engines.mlxvlm import MlxVlmEngine; from ocrd.daemon.config import ModelConfig\n"
            "from ocrd.daemon.errors import ModelUnavailable\n"
            "try:\n MlxVlmEngine(ModelConfig(path='nobody-here/no-such-model')).load()\n"
            "except ModelUnavailable as e:\n print('UNAVAILABLE', e)\n")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert "UNAVAILABLE model nobody-here/no-such-model" in out.stdout, out.stderr[-2000:]


# --- the real engine on the tiny model -------------------------------------------------------

def test_generate_returns_text_and_counts(engine):
    [r] = engine.generate([page()], PROMPT, mode="tiny", max_tokens=24)
    assert isinstance(r, PageResult)
    assert r.text and r.prompt_tokens > 0 and 0 < r.generation_tokens <= 24
    assert r.finish_reason in ("stop", "length", "repetition")
    assert r.seconds > 0 and r.peak_memory_bytes > 0


def test_temperature_zero_is_deterministic(engine):
    a = engine.generate([page(500, 300, "gray")], PROMPT, mode="tiny", max_tokens=24)[0]
    b = engine.generate([page(500, 300, "gray")], PROMPT, mode="tiny", max_tokens=24)[0]
    assert a.text == b.text and a.generation_tokens == b.generation_tokens


def test_max_tokens_is_honoured(engine):
    [r] = engine.generate([page()], PROMPT, mode="tiny", max_tokens=5)
    assert r.generation_tokens == 5 and r.finish_reason == "length"


@pytest.mark.parametrize("mode", list(MODES))
def test_every_resolution_mode_is_accepted(engine, mode):
    [r] = engine.generate([page(900, 1200)], PROMPT, mode=mode, max_tokens=4)
    assert r.prompt_tokens > 0 and r.generation_tokens > 0


def test_modes_change_the_image_tokens(engine):
    tiny = engine.generate([page(900, 1200)], PROMPT, mode="tiny", max_tokens=2)[0]
    base = engine.generate([page(900, 1200)], PROMPT, mode="base", max_tokens=2)[0]
    gundam = engine.generate([page(900, 1200)], PROMPT, mode="gundam", max_tokens=2)[0]
    assert tiny.prompt_tokens < base.prompt_tokens < gundam.prompt_tokens


def test_unknown_mode_is_an_engine_error(engine):
    with pytest.raises(EngineError, match="unknown resolution mode"):
        engine.generate([page()], PROMPT, mode="huge", max_tokens=2)


def test_plain_prompt_goes_through_the_chat_template(engine):
    [plain] = engine.generate([page()], "Free OCR.", mode="tiny", max_tokens=2)
    [tagged] = engine.generate([page()], "<image>\nFree OCR. ", mode="tiny", max_tokens=2)
    assert plain.prompt_tokens == tagged.prompt_tokens


def test_several_images_give_one_result_each(engine):
    results = engine.generate([page(), page(400, 300), page(200, 200)], PROMPT, mode="tiny", max_tokens=3)
    assert len(results) == 3 and all(r.generation_tokens == 3 for r in results)


def test_repetition_guard_stops_a_looping_page(engine, tiny_model):
    # This random-weight model starts by repeating one short unit ("Invoic"), though it drifts
    # after ~30 tokens, so the guard's span is lowered to catch the loop while it lasts; the
    # default span is covered by the find_repetition tests above.
    e = MlxVlmEngine(ModelConfig(path=str(tiny_model)), repeat_min_tokens=12)
    free = engine.generate([page()], PROMPT, mode="tiny", max_tokens=64)[0]
    assert free.finish_reason == "length" and free.generation_tokens == 64
    [r] = e.generate([page()], PROMPT, mode="tiny", max_tokens=64)
    assert r.finish_reason == "repetition", r
    assert r.generation_tokens < 64
    # what came before the loop, plus one copy of the unit
    assert r.text.startswith("\x19Invoic") and r.text.count("Invoic") == 1
    assert free.text.startswith(r.text) and len(r.text) < len(free.text) // 3


def test_long_generation_survives_special_tokens(tiny_model):
    # This model emits the pad token after ~1350 tokens, which mlx-vlm's streaming detokenizer
    # can't spell (KeyError): the page ends there, with its text. Guard off to reach that far.
    e = MlxVlmEngine(ModelConfig(path=str(tiny_model)), repeat_min_tokens=10**6)
    [r] = e.generate([page()], PROMPT, mode="tiny", max_tokens=1500)
    assert r.finish_reason == "stop" and 1000 < r.generation_tokens < 1500, r
    assert r.text and "pad" not in r.text


def test_generate_loads_lazily(tiny_model):
    e = MlxVlmEngine(ModelConfig(path=str(tiny_model)))
    [r] = e.generate([page()], PROMPT, mode="tiny", max_tokens=2)
    assert r.generation_tokens == 2


def test_memory_stats_has_the_heartbeat_fields(engine):
    engine.generate([page()], PROMPT, mode="tiny", max_tokens=2)
    stats = memory_stats()
    assert set(stats) == {"active_memory_bytes", "peak_memory_bytes", "cache_memory_bytes", "memory_limit_bytes"}
    assert all(isinstance(v, int) and v >= 0 for v in stats.values())
    assert stats["active_memory_bytes"] > 0


def test_hub_id_is_loaded_from_the_local_cache(tiny_model, tmp_path, monkeypatch):
    # The offline HF cache layout: refs/main names a snapshot whose files link to blobs.
    repo = tmp_path / "models--acme--tiny-ocr"
    snap = repo / "snapshots" / "rev1"
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("rev1")
    for f in tiny_model.iterdir():
        (snap / f.name).symlink_to(f)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    e = MlxVlmEngine(ModelConfig(path="acme/tiny-ocr"))
    [r] = e.generate([page()], PROMPT, mode="tiny", max_tokens=3)
    assert r.generation_tokens == 3


# --- a quantized model runs dense on CUDA ------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_q8(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mlx_vlm import convert

    out = tmp_path_factory.mktemp("q8") / "tiny-q8"
    convert(hf_path=str(tiny_model), mlx_path=str(out), quantize=True, q_bits=8, q_group_size=32)
    return out


def test_dequantize_swaps_every_quantized_layer_for_the_values_it_computes_with(tiny_q8) -> None:
    import mlx.core as mx
    import mlx.nn as nn
    import mlx_vlm
    from mlx_vlm.models.switch_layers import SwitchLinear

    from ocrd.daemon.engines.mlxvlm import dense_bytes, dequantize

    model, _ = mlx_vlm.load(str(tiny_q8))
    lm = model.language_model
    tokens = mx.array([[5, 17, 42, 99, 7, 300, 12, 64]])
    before = lm(tokens).logits
    expected_bytes = dense_bytes(model)
    assert expected_bytes > 0
    assert dequantize(model) == 20          # linears, the embedding, and 3 MoE expert stacks
    assert dense_bytes(model) == 0 and dequantize(model) == 0
    layers = dict(model.named_modules())
    assert isinstance(layers["language_model.model.layers.1.mlp.switch_mlp.up_proj"], SwitchLinear)
    assert type(layers["language_model.model.embed_tokens"]) is nn.Embedding
    assert type(layers["language_model.lm_head"]) is nn.Linear
    after = lm(tokens).logits
    assert mx.allclose(before, after, atol=1e-4).item(), mx.abs(before - after).max().item()


def test_a_quantized_model_loads_dense_on_cuda_only_where_it_fits(tiny_q8, monkeypatch) -> None:
    import mlx.nn as nn

    from ocrd.daemon import device
    from ocrd.daemon.device import GB, DeviceInfo
    from ocrd.daemon.engines.mlxvlm import dense_bytes

    def quantized_after_load(info: DeviceInfo) -> bool:
        monkeypatch.setattr(device, "detect_device", lambda: info)   # the seam: which GPU MLX sees
        e = MlxVlmEngine(ModelConfig(path=str(tiny_q8), mode="tiny"))
        e.load()
        [r] = e.generate([page()], PROMPT, mode="tiny", max_tokens=8)
        assert r.text and r.generation_tokens > 0
        return dense_bytes(e.model) > 0 and any(isinstance(m, nn.QuantizedLinear) for m in e.model.modules())

    assert not quantized_after_load(DeviceInfo("cuda", "NVIDIA H100", 80 * GB, 79 * GB, 16, gpus=1))
    assert quantized_after_load(DeviceInfo("cuda", "tiny GPU", 2 * 1024 * 1024, 1024, 16, gpus=1))
    assert quantized_after_load(DeviceInfo("metal", "Apple M3 Max", 64 * GB, 48 * GB, 16, gpus=1))
    assert quantized_after_load(DeviceInfo("cpu", "Xeon", 24 * GB, 24 * GB, 2))
