"""DeepSeek-OCR's page inputs made in two halves, so that a page's CPU work never stops the decoder.

mlx-vlm's `DeepseekOCRProcessor` does all of it on the calling thread: PIL geometry (the global
view padded to the mode's size; in gundam mode the page also resized and cut into 640-pixel tiles),
then MLX arrays. On an H200 that was 40 ms a small page and 136 ms a gundam page during which all
other pages waited, and MLX arrays can only be made on the thread that runs the model ("There is
no Stream(gpu, N) in current thread"). So the work is split:

- `page_views` (any thread, the worker's feeder): PIL geometry, numpy uint8 pixels, token ids;
- `model_inputs` (the decode thread): the same pixels as MLX arrays, normalised as the processor
  does, for `get_input_embeddings`.

Together they give exactly what the processor gives (mlx-vlm 0.7.10's `tokenize_with_images` and
`process_one` for one image; tests/daemon/test_deepseek_inputs.py compares them).

`embed` then encodes the page as the model's `get_input_embeddings` does, without its host syncs:
that one asks the device whether the pixels sum to zero (`.item()`) and where the image tokens are
(`np.where`), which waits for every page encoded before it on the stream, so a page added while
others are still being encoded would stop the decode thread until they are done. Its image
encoders run compiled (`image_encoder`): the decode thread builds and launches each page's vision
graph while every other page waits, and compiled that graph is built in C++ with its elementwise
chains fused (a 6-tile gundam page: 4,450 graph nodes -> 2,700).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
from PIL import ImageOps

from ..errors import EngineError
from ..modes import MODES

if TYPE_CHECKING:
    from PIL import Image

PATCH, DOWNSAMPLE = 16, 4      # the vision encoder's patch side and token downsampling
TILE = 640                     # dynamic_preprocess's tile side (it ignores the mode's image_size)


@dataclass(frozen=True)
class PageViews:
    """One page's DeepSeek-OCR inputs, CPU half: no MLX in it."""
    ids: list[int]             # prompt token ids with the image tokens in place
    image_mask: list[bool]     # True at each image token
    global_view: np.ndarray    # uint8 (S, S, 3): the page padded to the mode's square
    tiles: np.ndarray | None   # uint8 (n, 640, 640, 3) in gundam mode on a page over 640 px
    crop: tuple[int, int]      # tiles across and down; (1, 1) without tiles
    base_size: int             # the tile stack's stand-in size when there are none

    @property
    def nbytes(self) -> int:
        return self.global_view.nbytes + (0 if self.tiles is None else self.tiles.nbytes)


def page_views(processor: Any, image: Image.Image, prompt: str, mode: str) -> PageViews:
    """The CPU half for `image` in resolution `mode`; `prompt` holds one `<image>`."""
    from mlx_vlm.models.deepseekocr.processing_deepseekocr import dynamic_preprocess

    if mode not in MODES:
        raise EngineError(f"unknown resolution mode {mode!r}")
    m = MODES[mode]
    parts = prompt.split(processor.image_token)
    if len(parts) != 2:
        raise EngineError(f"the prompt must hold one {processor.image_token}, not {len(parts) - 1}")
    image = image if image.mode == "RGB" else image.convert("RGB")
    fill = tuple(int(x * 255) for x in processor.image_transform.mean)
    tiles, crop = None, (1, 1)
    if m.cropping:
        if image.width > TILE or image.height > TILE:
            crops, crop = dynamic_preprocess(image)
            tiles = np.stack([np.asarray(c) for c in crops])
        side = m.base_size
    else:
        if m.image_size <= TILE:
            image = image.resize((m.image_size, m.image_size))
        side = m.image_size
    view = np.asarray(ImageOps.pad(image, (side, side), color=fill))
    queries = math.ceil(side // PATCH / DOWNSAMPLE)
    count = (queries + 1) * queries + 1                  # the global view: rows of queries + a break
    if tiles is not None:
        per_tile = math.ceil(m.image_size // PATCH / DOWNSAMPLE)
        count += (per_tile * crop[0] + 1) * (per_tile * crop[1])
    head, tail = (processor.encode(p, bos=False, eos=False) for p in parts)
    ids = [0] + head + [processor.image_token_id] * count + tail   # 0: the processor's bos
    mask = [False] * (1 + len(head)) + [True] * count + [False] * len(tail)
    # process_one's inference mode drops the last token; a negative id is padding
    ids = [processor.pad_id if i < 0 else i for i in ids[:-1]]
    return PageViews(ids, mask[:-1], view, tiles, tuple(crop), m.base_size)


def model_inputs(views: PageViews, processor: Any) -> dict[str, Any]:
    """The decode thread's half: MLX arrays for `model.get_input_embeddings`."""
    import mlx.core as mx

    transform = processor.image_transform
    mean = mx.array(transform.mean).reshape(-1, 1, 1)
    std = mx.array(transform.std).reshape(-1, 1, 1)

    def pixels(a: np.ndarray) -> mx.array:   # ImageTransform's steps, over a stack of images
        chw = mx.transpose(mx.array(a) / 255.0, [0, 3, 1, 2])
        return ((chw - mean) / std if transform.normalize else chw).astype(mx.bfloat16)

    crops = (pixels(views.tiles) if views.tiles is not None
             else mx.zeros((1, 3, views.base_size, views.base_size)))
    return {
        "input_ids": mx.array(views.ids)[None],
        "pixel_values": [crops, pixels(views.global_view[None])],
        "images_seq_mask": mx.array(views.image_mask)[None],
        "images_spatial_crop": mx.array([list(views.crop)]),
    }


def image_encoder(model: Any, *, compiled: bool = True) -> Callable[[Any], Any]:
    """DeepSeek-OCR's image encoders over a stack of views, as `get_input_embeddings` runs them:
    (n, 3, S, S) pixels -> (n, h * w, dim) (SAM, CLIP on SAM's features, the projector). Compiled
    (`mx.compile`), it is traced once per input shape (a mode's global view; a tile count), then
    replayed with the same numbers; `compiled=False` gives the plain function (bench/pipelined.py
    compares them)."""
    import mlx.core as mx

    def encoded(images: mx.array) -> mx.array:
        nhwc = images.transpose(0, 2, 3, 1)
        sam = model.sam_model(nhwc)
        clip = model.vision_model(nhwc, sam)
        return model.projector(mx.concatenate((clip[:, 1:], sam.flatten(start_axis=1, end_axis=2)), axis=-1))

    return mx.compile(encoded) if compiled else encoded


def embed(model: Any, views: PageViews, inputs: dict[str, Any], encoded: Callable[[Any], Any]) -> Any:
    """The page's `inputs_embeds` (1, tokens, dim), lazily: DeepSeek-OCR's
    `get_input_embeddings` for one page (the same operations, so the same numbers) with the views
    encoded by `encoded` (`image_encoder`), and the image token positions taken from the views
    instead of read back from the device."""
    import mlx.core as mx

    def with_newlines(grid: mx.array) -> mx.array:  # (h, w, dim): a newline token ends each row
        h, _, dim = grid.shape
        newline = mx.broadcast_to(model.image_newline[None, None, :], (h, 1, dim))
        return mx.concatenate([grid, newline], axis=1).reshape(-1, dim)

    embeds = model.language_model.model.embed_tokens(inputs["input_ids"])
    if model.sam_model is None:                       # a model without the image encoder
        return embeds
    crops, whole = inputs["pixel_values"]
    glob = encoded(whole)[0]
    side = int(glob.shape[0] ** 0.5)
    parts = [with_newlines(glob.reshape(side, side, -1)), model.view_separator[None, :]]
    across, down = views.crop
    if views.tiles is not None and (across > 1 or down > 1):
        local = encoded(crops)
        tile = int(local.shape[1] ** 0.5)
        grid = (local.reshape(down, across, tile, tile, -1).transpose(0, 2, 1, 3, 4)
                .reshape(down * tile, across * tile, -1))
        parts.insert(0, with_newlines(grid))
    positions = [n for n, is_image in enumerate(views.image_mask) if is_image]
    embeds[0, positions] = mx.concatenate(parts, axis=0)
    return embeds
