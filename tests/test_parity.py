"""Number-for-number parity with embeddings the official U-MARVEL code produced (tests/data/refparity_qwen2vl).

Each trap test fails on one known way to get U-MARVEL wrong; the `*_is_detectable` checks show the fixture is
sensitive to that trap, so the parity assertion is not vacuous.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import umarvel_st

DATA = Path(__file__).parent / "data" / "refparity_qwen2vl"
ASSETS = Path(umarvel_st.__file__).parent / "assets"
CHECKPOINT = str(ASSETS / "tiny-umarvel-qwen2vl")
TOL = 1e-5


@pytest.fixture(scope="module")
def reference():
    inputs = json.loads((DATA / "inputs.json").read_text())
    rendered = json.loads((DATA / "rendered.json").read_text())
    items, roles = [], []
    for entry in inputs["items"]:
        raw = entry["raw_record"]
        if entry["role"] == "candidate":
            item = {"text": raw["txt"], "image": str(ASSETS / raw["img_path"]) if raw["img_path"] else None}
        else:
            image = raw["query_img_path"]
            item = {"text": raw["query_txt"], "image": str(ASSETS / image) if image else None}
            item["instruction"] = entry["instruction_raw"]
        items.append(item)
        roles.append(entry["role"])
    return {
        "items": items,
        "roles": roles,
        "rendered": rendered["items"],
        "embeddings": np.load(DATA / "ref_embeddings.npy"),
        "pixels": np.load(DATA / "ref_pixel_values.npz"),
    }


@pytest.fixture(scope="module")
def model():
    return umarvel_st.from_mllm(CHECKPOINT)


def encode_all(model, items, batch_size=16):
    """Candidates through encode_document, queries through encode_query(prompt=instruction)."""
    out = []
    for item in items:
        if "instruction" in item:
            plain = {key: value for key, value in item.items() if key != "instruction"}
            out.append(model.encode_query([plain], prompt=item["instruction"], batch_size=batch_size)[0])
        else:
            out.append(model.encode_document([item], batch_size=batch_size)[0])
    return np.stack(out)


def max_diff(a, b):
    return float(np.abs(np.asarray(a) - np.asarray(b)).max())


def test_rendered_prompts_and_ids_match_reference(model, reference):
    encoder = model[0]
    for item, expected in zip(reference["items"], reference["rendered"], strict=True):
        features = encoder.preprocess([item])
        ids = features["input_ids"][0].tolist()
        assert ids == expected["input_ids_unpadded"], expected["id"]
        assert int(features["pooling_mask"].sum()) == expected["n_pooled"], expected["id"]
        if "image_grid_thw" in expected:
            assert features["image_grid_thw"][0].tolist() == expected["image_grid_thw"]


@pytest.mark.parametrize("batch_size", [1, 2, 3, 16])
def test_embeddings_match_reference_at_any_batch_size(model, reference, batch_size):
    candidates = [item for item in reference["items"] if "instruction" not in item]
    queries = [item for item in reference["items"] if "instruction" in item]
    docs = model.encode_document(candidates, batch_size=batch_size)
    qs = model.encode_query(queries, batch_size=batch_size)  # per-item instructions
    assert max_diff(np.concatenate([docs, qs]), reference["embeddings"]) <= TOL


def test_embeddings_match_reference_in_shuffled_mixed_order(model, reference):
    order = list(range(len(reference["items"])))
    random.Random(3).shuffle(order)
    shuffled = [reference["items"][i] for i in order]
    embeddings = model.encode(shuffled, batch_size=4)  # queries and candidates mixed in one batch
    assert max_diff(embeddings, reference["embeddings"][order]) <= TOL


def test_prompt_argument_equals_per_item_instruction(model, reference):
    assert max_diff(encode_all(model, reference["items"]), reference["embeddings"]) <= TOL


def test_single_item_batches_stay_bidirectional(model, reference):
    # A batch of one has no padding; transformers then returns no mask, which means causal attention.
    for item, expected in zip(reference["items"], reference["embeddings"], strict=True):
        assert max_diff(model.encode([item], batch_size=1)[0], expected) <= TOL


def test_causal_attention_is_detectable(model, reference):
    encoder = model[0]
    layers = [module for module in encoder.model.language_model.modules() if hasattr(module, "is_causal")]
    features = encoder.preprocess(reference["items"][:1])
    # Emulate the bug: no explicit mask and causal layers.
    for layer in layers:
        layer.is_causal = True
    try:
        embeds = encoder.model.get_input_embeddings()(features["input_ids"])
        out = encoder.model.language_model(inputs_embeds=embeds, position_ids=encoder._position_ids(features, embeds))
        pooled = out.last_hidden_state[0][features["pooling_mask"][0]].mean(0)
        pooled = (pooled / pooled.norm()).detach().numpy()
    finally:
        for layer in layers:
            layer.is_causal = False
    assert max_diff(pooled, reference["embeddings"][0]) > 1e-2


def test_instruction_tokens_are_not_pooled(model, reference):
    queries = [item for item in reference["items"] if "instruction" in item]
    assert max_diff(model.encode_query(queries), reference["embeddings"][7:]) <= TOL
    pooled = umarvel_st.from_mllm(CHECKPOINT, pool_instruction=True).encode_query(queries)
    assert max_diff(pooled, reference["embeddings"][7:]) > 1e-2  # the trap is detectable


def test_sequential_positions_not_mrope(model, reference):
    image_rows = [i for i, item in enumerate(reference["items"]) if item.get("image")]
    items = [reference["items"][i] for i in image_rows]
    assert max_diff(model.encode(items), reference["embeddings"][image_rows]) <= TOL
    mrope = umarvel_st.from_mllm(CHECKPOINT, position_mode="mrope").encode(items)
    assert max_diff(mrope, reference["embeddings"][image_rows]) > 1e-2  # the trap is detectable


def test_pil_image_backend_pixels_match_reference(model, reference):
    for key in reference["pixels"].files:
        item = reference["items"][int(key.split("_")[0][3:])]
        assert max_diff(model[0].preprocess([item])["pixel_values"], reference["pixels"][key]) <= 1e-6


def test_torchvision_image_backend_is_not_the_default(model):
    # The fixture's images need no processor resize, where both backends agree; an image above the processor's
    # pixel limit is resized by the processor, and there the torchvision backend drifts from PIL.
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, size=(140, 168, 3), dtype=np.uint8))
    pil = Qwen2VLImageProcessorPil.from_pretrained(CHECKPOINT)(images=[image], return_tensors="np")["pixel_values"]
    assert max_diff(model[0].preprocess([image])["pixel_values"], pil) <= 1e-6
    torchvision = umarvel_st.from_mllm(CHECKPOINT, image_backend="torchvision")
    assert max_diff(torchvision[0].preprocess([image])["pixel_values"], pil) > 1e-3  # the trap is detectable


def test_rgba_alpha_is_dropped_not_composited(model):
    rng = np.random.default_rng(0)
    rgba = Image.fromarray(rng.integers(0, 256, size=(56, 84, 4), dtype=np.uint8), mode="RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    composited = Image.alpha_composite(white, rgba).convert("RGB")
    got = model.encode_document([rgba])[0]
    assert max_diff(got, model.encode_document([rgba.convert("RGB")])[0]) <= 1e-6
    assert max_diff(got, model.encode_document([composited])[0]) > 1e-3
