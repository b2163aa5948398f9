"""DeepSeek-OCR resolution modes: one table for config (the names), engine (the image sizes),
device (the memory reserve) and bench/workers.py."""

from __future__ import annotations

from dataclasses import dataclass

GB = 10**9


@dataclass(frozen=True)
class Mode:
    name: str
    base_size: int        # the global view's side, in pixels (model card)
    image_size: int       # each crop's side, in pixels (model card)
    cropping: bool        # gundam tiles the page into crops on top of the global view
    reserve_bytes: int    # working memory per worker on top of the weights (device.plan_pool)
    page_bytes: int       # more memory per extra page in flight (its KV cache; batching)


# Reserves: vision activations, KV cache for up to max_tokens, MLX's buffer cache. Estimates scaled
# from the H100 measurement in DESIGN.md (3.3B bf16: 6.7 GB weights, 10 GB peak for one base page);
# gundam's was 28% low on the H200 (gpu/README.md). Per page in flight: the H200 run held 128
# small-mode pages of ~600 tokens in 13.3 GB more than 8 did (~0.11 GB each); these assume pages
# of ~2,000 tokens plus the mode's image tokens. Measured figures replace them.
MODES: dict[str, Mode] = {m.name: m for m in (
    Mode("tiny", 512, 512, False, int(0.75 * GB), int(0.30 * GB)),
    Mode("small", 640, 640, False, int(1.0 * GB), int(0.35 * GB)),
    Mode("base", 1024, 1024, False, int(1.5 * GB), int(0.45 * GB)),
    Mode("large", 1280, 1280, False, int(2.0 * GB), int(0.55 * GB)),
    Mode("gundam", 1024, 640, True, int(4.5 * GB), int(0.60 * GB)),   # one 1024 view + up to nine 640 crops
)}
