"""Build tiny random-weight mlx-vlm checkpoints on disk, offline, in a few seconds.

No machine here reaches the Hugging Face hub, so the tests load these with the real, unmodified
`mlx_vlm.load` (see /work/shared/TINY_MODELS.md for the facts behind every field). The output is
gibberish; the pipeline, not the model, is under test.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

# The DeepSeek processor hard-codes bos 0; eos, pad and the image token follow (TINY_MODELS.md).
_SPECIALS = ["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜▁pad▁｜>", "<image>",
             "<|ref|>", "<|/ref|>", "<|det|>", "<|/det|>", "<|grounding|>", "<|User|>", "<|Assistant|>"]
_CORPUS = [
    "Convert the document to markdown.", "Free OCR.", "# Title\n\nSome text on a page.",
    "| a | b |\n|---|---|\n| 1 | 2 |", "The quick brown fox jumps over the lazy dog.",
    "Invoice number 12345, total 67.89 EUR, due 2024-01-31.", "- item one\n- item two\n",
]
_FILES = ("config.json", "model.safetensors", "processor_config.json", "tokenizer.json",
          "tokenizer_config.json")
_DONE = ".tiny-complete"  # written last: a half-built directory is never taken for a build


def build_tiny_deepseekocr(target: Path) -> Path:
    """Write a ~1 MB `deepseekocr` checkpoint (language model + projector weights) into `target`.

    Returns `target`. If it already holds a complete build it is returned untouched, so a
    session-scoped fixture or a benchmark can call this freely.
    """
    target = Path(target)
    if _complete(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Build beside the target and rename, so a crash or a concurrent builder never leaves a
    # half-written checkpoint that looks complete.
    tmp = Path(tempfile.mkdtemp(prefix=".tiny-", dir=target.parent))
    try:
        vocab_size = _write_tokenizer(tmp)
        _write_deepseekocr_config(tmp, vocab_size)
        _write_deepseekocr_weights(tmp)
        (tmp / _DONE).write_text("ok\n")
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _complete(target: Path) -> bool:
    return (target / _DONE).exists() and all((target / f).exists() for f in _FILES)


def _write_tokenizer(out: Path) -> int:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=_SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=_SPECIALS[0], eos_token=_SPECIALS[1], pad_token=_SPECIALS[2],
        additional_special_tokens=_SPECIALS[3:])
    fast.save_pretrained(str(out))
    cfg_path = out / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["tokenizer_class"] = "LlamaTokenizerFast"
    cfg["add_bos_token"] = False
    cfg_path.write_text(json.dumps(cfg, indent=1))
    for stray in ("special_tokens_map.json",):
        (out / stray).unlink(missing_ok=True)
    ids = [fast.convert_tokens_to_ids(t) for t in _SPECIALS[:4]]
    assert ids == [0, 1, 2, 3], ids
    return len(fast)


def _write_deepseekocr_config(out: Path, vocab_size: int) -> None:
    text = {
        "model_type": "deepseek_v2", "vocab_size": vocab_size, "hidden_size": 64,
        "intermediate_size": 128, "moe_intermediate_size": 32, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 4, "n_shared_experts": 1,
        "n_routed_experts": 4, "num_experts_per_tok": 2, "first_k_dense_replace": 1,
        "qk_nope_head_dim": 0, "qk_rope_head_dim": 0, "v_head_dim": 16, "kv_lora_rank": 16,
        "q_lora_rank": None, "max_position_embeddings": 8192, "topk_method": "greedy",
    }
    config = {
        "model_type": "deepseekocr", "architectures": ["DeepseekOCRForCausalLM"],
        "image_token_index": 3, "pad_id": 2, "eos_token_id": [1], "bos_token_id": 0,
        "tile_tag": "2D", "global_view_pos": "head", "vocab_size": vocab_size,
        "text_config": text, "language_config": None,
        "vision_config": {"model_type": "vision", "hidden_size": 1024, "layers": 1, "width": 64},
        "projector_config": {"projector_type": "linear", "input_dim": 2048, "n_embed": 64},
    }
    config.pop("language_config")
    (out / "config.json").write_text(json.dumps(config, indent=1))
    processor = {
        "processor_class": "DeepseekOCRProcessor", "candidate_resolutions": [[1024, 1024]],
        "patch_size": 16, "downsample_ratio": 4, "image_token": "<image>", "pad_token": _SPECIALS[2],
        "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "normalize": True,
        "add_special_token": False, "sft_format": "deepseek", "mask_prompt": False, "ignore_id": -100,
    }
    (out / "processor_config.json").write_text(json.dumps(processor, indent=1))
    (out / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": 0, "eos_token_id": 1, "do_sample": False}, indent=1))


def _write_deepseekocr_weights(out: Path) -> None:
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_vlm.models.deepseekocr import deepseekocr as ds
    from mlx_vlm.models.deepseekocr.config import ModelConfig

    config = ModelConfig.from_dict(json.loads((out / "config.json").read_text()))
    mx.random.seed(0)  # same bytes every build: tests compare outputs across processes
    weights: dict[str, mx.array] = {}
    # Only the language model and projector: the SAM/CLIP encoders are full size in mlx-vlm
    # whatever the config says (~400 MB); load() drops them with a warning (TINY_MODELS.md).
    for prefix, module in (("language_model", ds.LanguageModel(config.text_config)),
                           ("projector", ds.MlpProjector(config))):
        for name, value in tree_flatten(module.parameters()):
            weights[f"{prefix}.{name}"] = value
    std = 1 / 8.0
    weights["image_newline"] = mx.random.normal((64,)) * std
    weights["view_separator"] = mx.random.normal((64,)) * std
    mx.save_safetensors(str(out / "model.safetensors"), weights, metadata={"format": "mlx"})
