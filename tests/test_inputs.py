"""Input handling: text formatting, image preparation, and clear errors for bad items."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import umarvel_st
from umarvel_st.modeling.inputs import (
    MAX_PIXELS,
    Item,
    format_text,
    normalize_item,
    prepare_image,
    smart_resize,
    user_text,
)

CHECKPOINT = str(Path(umarvel_st.__file__).parent / "assets" / "tiny-umarvel-qwen2vl")


@pytest.fixture(scope="module")
def model():
    return umarvel_st.from_mllm(CHECKPOINT)


def random_image(height: int, width: int, mode: str = "RGB", seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)).convert(mode)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("a red square", "A red square."),
        ('  "quoted text"  ', "Quoted text."),
        ("is it?", "Is it?"),
        ("wow!", "Wow!"),
        ("line\r\nbreak", "Line\nbreak."),
        ("", ""),
    ],
)
def test_format_text(raw, expected):
    assert format_text(raw) == expected


def test_query_text_wraps_instruction_and_image_only_query_ends_with_period():
    item = Item(text="", image=random_image(56, 56), instruction="find the image")
    assert user_text(item, summarize_suffix=True) == (
        "<instruction_start>Find the image.<instruction_end>.\nSummarize above image and sentence in one word: "
    )
    assert user_text(Item(text="hello"), summarize_suffix=False) == "Hello."


def test_smart_resize_rounds_half_to_even_and_respects_budget():
    assert smart_resize(50, 70) == (56, 56)  # 70/28 = 2.5 rounds to 2
    height, width = smart_resize(8000, 10000)
    assert height % 28 == 0 and width % 28 == 0 and height * width <= MAX_PIXELS
    with pytest.raises(ValueError, match="aspect ratio"):
        smart_resize(1, 500)


def test_far_oversized_image_is_downscaled_within_budget():
    image = prepare_image(Image.new("RGB", (6000, 4000), (10, 20, 30)))
    assert image.width * image.height <= MAX_PIXELS


@pytest.mark.parametrize("mode", ["L", "RGBA", "CMYK", "P"])
def test_image_modes_are_converted_to_rgb(model, mode):
    image = random_image(56, 84, mode=mode)
    embedding = model.encode_document([image])[0]
    assert np.isfinite(embedding).all()
    assert np.abs(embedding - model.encode_document([image.convert("RGB")])[0]).max() <= 1e-6


def test_mixed_batch_of_item_forms(model, tmp_path):
    path = tmp_path / "img.png"
    random_image(56, 56).save(path)
    items = ["plain text", random_image(56, 56, seed=1), {"image": str(path)}, {"text": "both", "image": path}]
    embeddings = model.encode(items)
    assert embeddings.shape == (4, 64)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    assert np.abs(embeddings[2] - model.encode([random_image(56, 56)])[0]).max() <= 1e-6  # path == PIL


def test_video_frames_embed_differently_from_a_single_frame(model):
    frames = [random_image(56, 56, seed=seed) for seed in range(4)]
    video = model.encode([frames])[0]
    assert np.isfinite(video).all()
    assert np.abs(video - model.encode([frames[0]])[0]).max() > 1e-3


@pytest.mark.parametrize(
    ("value", "error", "match"),
    [
        (None, TypeError, "Item .*: unsupported input None"),
        (42, TypeError, "unsupported input 42"),
        ({"text": None}, ValueError, "nothing to embed"),
        ("", ValueError, "nothing to embed"),
        ("   ", ValueError, "nothing to embed"),
        ({"image": "does/not/exist.png"}, ValueError, "does not exist"),
        ({"image": b"not an image"}, ValueError, "cannot decode"),
        ({"image": 3.5}, TypeError, "must be a PIL.Image.Image, a 3-D numpy array or torch tensor, a file path"),
        ({"text": "x", "caption": "y"}, ValueError, "unknown keys"),
        ({"text": 7}, TypeError, "'text' must be a string"),
        ({"image": Image.new("RGB", (0, 10))}, ValueError, "no pixels"),
    ],
)
def test_bad_items_raise_clear_errors(value, error, match):
    with pytest.raises(error, match=match):
        normalize_item(value)


def test_undecodable_file_names_the_path(tmp_path):
    path = tmp_path / "broken.png"
    path.write_bytes(b"\x89PNG garbage")
    with pytest.raises(ValueError, match="broken.png"):
        normalize_item({"image": str(path)})


def test_image_bytes_are_decoded():
    buffer = io.BytesIO()
    random_image(56, 56).save(buffer, format="PNG")
    assert normalize_item({"image": buffer.getvalue()}).image.size == (56, 56)


def test_missing_image_path_is_an_error_through_encode(model):
    with pytest.raises(ValueError, match="does not exist"):
        model.encode([{"image": "missing.png"}])


def test_long_text_is_truncated_but_image_tokens_are_kept(model):
    encoder = model[0]
    image = random_image(84, 84)
    long_text = " ".join(["word"] * 2000)
    features = encoder.preprocess([{"text": long_text, "image": image}], max_length=96)
    ids = features["input_ids"][0]
    assert ids.shape[0] <= 96
    image_pad = encoder.config.image_token_id
    grid = features["image_grid_thw"][0]
    assert int((ids == image_pad).sum()) == int(grid.prod()) // 4  # every image token survives
    tail = encoder.tokenizer.decode(ids[-12:])
    assert tail.endswith("<emb>.<|im_end|>\n<|im_start|>assistant\n")  # the template suffix survives


def test_template_alone_over_max_length_is_an_error(model):
    with pytest.raises(ValueError, match="Lower max_pixels or raise max_seq_length"):
        model[0].preprocess([{"text": "some words here", "image": random_image(84, 84)}], max_length=20)


def test_named_instructions_ship_with_the_model(model):
    from umarvel_st.modeling import MBEIR_INSTRUCTIONS

    assert len(MBEIR_INSTRUCTIONS) == 16 and model.prompts["mscoco_task0"] == MBEIR_INSTRUCTIONS["mscoco_task0"]
    named = model.encode_query(["a dog on a beach"], prompt_name="mscoco_task0")
    explicit = model.encode_query(["a dog on a beach"], prompt=MBEIR_INSTRUCTIONS["mscoco_task0"])
    plain = model.encode_document(["a dog on a beach"])
    np.testing.assert_array_equal(named, explicit)
    assert np.abs(named - plain).max() > 1e-3  # encode_document adds no instruction
    with pytest.raises(ValueError, match="not found"):
        model.encode_query(["x"], prompt_name="no_such_task")


def test_item_instruction_wins_over_prompt(model):
    item = {"text": "a dog", "instruction": "Find a caption."}
    both = model.encode_query([item], prompt="Find an image.")
    own = model.encode_query([item])
    np.testing.assert_array_equal(both, own)
