"""DeepSeek-OCR's weights on this machine: a local folder or the Hugging Face cache."""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..errors import ModelUnavailable, first_line

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


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
