"""deepseek_inputs.py against mlx-vlm's own DeepSeek-OCR processor, on the tiny model: the two
halves (views on a feeder thread, MLX arrays on the decode thread) give exactly what the processor
gives, in every mode, for pages small, tall, wide, grey and transparent."""

from __future__ import annotations

import threading

import mlx.core as mx
import numpy as np
import pytest
from PIL import Image, ImageDraw

from ocrd.daemon.config import ModelConfig
from ocrd.daemon.engines.deepseek_inputs import PageViews, model_inputs, page_views
from ocrd.daemon.engines.mlxvlm import MlxVlmEngine
from ocrd.daemon.errors import EngineError
from ocrd.daemon.modes import MODES

PROMPT = "<image>\n<|grounding|>Convert the document to markdown."


@pytest.fixture(scope="module")
def engine(tiny_model) -> MlxVlmEngine:
    e = MlxVlmEngine(ModelConfig(path=str(tiny_model)))
    e.load()
    return e


def page(size: tuple[int, int], mode: str = "RGB") -> Image.Image:
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    for y in range(10, size[1] - 20, 30):
        draw.text((10, y), "Portez ce vieux whisky au juge blond 1234", fill=(20, 40, 90))
    draw.rectangle((size[0] // 3, size[1] // 3, size[0] // 2, size[1] // 2), fill=(200, 30, 30))
    return image.convert(mode)


def processor_inputs(engine: MlxVlmEngine, image: Image.Image, mode: str) -> dict:
    from mlx_vlm.utils import prepare_inputs

    m = MODES[mode]
    return prepare_inputs(engine.processor, images=[image], prompts=PROMPT, add_special_tokens=False,
                          base_size=m.base_size, image_size=m.image_size, cropping=m.cropping)


@pytest.mark.parametrize("mode", sorted(MODES))
@pytest.mark.parametrize("size,color", [((1700, 2200), "RGB"), ((500, 400), "RGB"), ((3000, 700), "L"),
                                        ((900, 640), "RGBA")])
def test_the_two_halves_give_what_the_processor_gives(engine, mode, size, color):
    image = page(size, color)
    want = processor_inputs(engine, image, mode)
    views = page_views(engine.processor, image, PROMPT, mode)
    got = model_inputs(views, engine.processor)
    assert got["input_ids"].tolist() == want["input_ids"].tolist()
    assert got["images_seq_mask"].tolist() == want["images_seq_mask"].tolist()
    assert got["images_spatial_crop"].tolist() == want["images_spatial_crop"].tolist()
    for ours, theirs in zip(got["pixel_values"], want["pixel_values"], strict=True):
        assert ours.shape == theirs.shape and ours.dtype == theirs.dtype
        assert mx.array_equal(ours, theirs).item()


@pytest.mark.parametrize("mode", sorted(MODES))
@pytest.mark.parametrize("size", [(1700, 2200), (3000, 700), (600, 500)])
def test_embeddings_from_views_equal_the_processor_path(engine, mode, size):
    """engine.prepare encodes the views without reading back from the device (deepseek_inputs.embed)
    and gives exactly the model's own get_input_embeddings on the processor's inputs: tiled and
    untiled pages, wide and small."""
    image = page(size)
    ids, embedded = engine.prepare(page_views(engine.processor, image, PROMPT, mode), PROMPT, mode)
    want = processor_inputs(engine, image, mode)
    theirs = engine.model.get_input_embeddings(want["input_ids"], want["pixel_values"],
                                               mask=want["attention_mask"],
                                               images_seq_mask=want["images_seq_mask"],
                                               images_spatial_crop=want["images_spatial_crop"])
    assert ids == want["input_ids"].squeeze(0).tolist()
    assert mx.array_equal(embedded["inputs_embeds"], theirs.inputs_embeds).item()


@pytest.fixture(scope="module")
def seeing_engine(tiny_model) -> MlxVlmEngine:
    """The tiny model with DeepSeek-OCR's image encoders (random weights): the checkpoint leaves
    them out and mlx_vlm.load drops them (TINY_MODELS.md). SAM is cut to 2 narrow layers (SAM-B
    takes minutes a page on this CPU); its output keeps the 1024 channels CLIP and the projector take."""
    from mlx_vlm.models.deepseekocr.deepseekocr import VisionModel
    from mlx_vlm.models.deepseekocr.sam import SAMEncoder

    e = MlxVlmEngine(ModelConfig(path=str(tiny_model)))
    e.load()
    mx.random.seed(1)
    e.model.sam_model = SAMEncoder(img_size=1024, patch_size=16, embed_dim=32, depth=2, num_heads=2,
                                   window_size=14, global_attn_indexes=(1,))
    e.model.vision_model = VisionModel(e.model.config.vision_config)
    return e


@pytest.mark.parametrize("mode,size", [("small", (1700, 2200)), ("gundam", (1300, 700))])
def test_pages_encoded_without_device_reads_equal_the_model_s_own_encoding(seeing_engine, mode, size):
    """With the image encoders in place (a gundam page of 2 x 1 tiles and its global view; a
    small page), deepseek_inputs.embed gives exactly get_input_embeddings' numbers."""
    engine, image = seeing_engine, page(size)
    views = page_views(engine.processor, image, PROMPT, mode)
    assert (views.tiles is not None) == (mode == "gundam")
    ids, embedded = engine.prepare(views, PROMPT, mode)
    want = processor_inputs(engine, image, mode)
    theirs = engine.model.get_input_embeddings(want["input_ids"], want["pixel_values"],
                                               images_seq_mask=want["images_seq_mask"],
                                               images_spatial_crop=want["images_spatial_crop"])
    image_rows = mx.array([n for n, is_image in enumerate(views.image_mask) if is_image])
    assert not mx.array_equal(embedded["inputs_embeds"][0, image_rows], engine.model.language_model.model
                              .embed_tokens(want["input_ids"])[0, image_rows]).item()   # the image is in
    assert mx.array_equal(embedded["inputs_embeds"], theirs.inputs_embeds).item()


def test_views_are_made_off_the_model_thread_and_hold_no_mlx(engine):
    """The feeder's half runs on another thread (MLX arrays can't be made there) and is numpy."""
    made: list[PageViews] = []
    thread = threading.Thread(target=lambda: made.append(engine.preprocess(page((1700, 2200)), PROMPT, "gundam")))
    thread.start()
    thread.join(timeout=60)
    (views,) = made
    assert isinstance(views.global_view, np.ndarray) and isinstance(views.tiles, np.ndarray)
    assert views.tiles.shape[1:] == (640, 640, 3) and views.nbytes > 1024 * 1024 * 3
    ids, _ = engine.prepare(views, PROMPT, "gundam")
    assert len(ids) == len(views.ids)


def test_a_prompt_without_one_image_token_and_an_unknown_mode_are_refused(engine):
    with pytest.raises(EngineError, match="one <image>"):
        page_views(engine.processor, page((100, 100)), "<image><image> twice", "small")
    with pytest.raises(EngineError, match="unknown resolution mode"):
        page_views(engine.processor, page((100, 100)), PROMPT, "huge")
