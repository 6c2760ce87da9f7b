"""Component tests through sentence-transformers for every supported backbone (tiny random checkpoints)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sentence_transformers import SentenceTransformer

import umarvel_st
from umarvel_st.modeling import BACKBONES
from umarvel_st.testing import make_test_image

BACKBONE_TYPES = sorted(BACKBONES)


def items():
    return [
        "a small red square",
        make_test_image(84, 56, seed=1),
        {"text": "a blue circle", "image": make_test_image(56, 84, seed=2)},
        {"text": "green stripes", "instruction": "Find the matching image."},
    ]


@pytest.fixture(scope="module", params=BACKBONE_TYPES)
def backbone(request, tiny_backbone_factory):
    path = tiny_backbone_factory(request.param)
    return request.param, path, umarvel_st.from_mllm(str(path))


def test_encode_gives_unit_vectors_of_hidden_size(backbone):
    _, _, model = backbone
    embeddings = model.encode(items())
    assert embeddings.shape == (4, model[0].config.get_text_config().hidden_size)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    assert np.abs(embeddings[0] - embeddings[3]).max() > 1e-3


def test_save_and_reload_gives_identical_embeddings(backbone, tmp_path):
    _, _, model = backbone
    model.save(str(tmp_path / "saved"))
    reloaded = SentenceTransformer(str(tmp_path / "saved"), trust_remote_code=True)
    assert type(reloaded[0]).__name__ == type(model[0]).__name__  # the saved code runs (see remote_code.py)
    for key in model[0].config_keys:
        assert getattr(reloaded[0], key) == getattr(model[0], key), key
    np.testing.assert_array_equal(reloaded.encode(items()), model.encode(items()))


def test_a_later_token_changes_an_earlier_tokens_output(backbone):
    _, _, model = backbone
    encoder = model[0]
    features = encoder.preprocess(["one two three four five"])
    changed = {key: value.clone() if torch.is_tensor(value) else value for key, value in features.items()}
    position = int((features["input_ids"][0] == encoder.tokenizer.convert_tokens_to_ids("<emb>")).nonzero()[0])
    changed["input_ids"][0, position] = 5  # change a token near the end
    with torch.no_grad():
        first = encoder(dict(features))["token_embeddings"][0, 0]
        second = encoder(changed)["token_embeddings"][0, 0]
    assert (first - second).abs().max() > 1e-4  # causal attention would leave position 0 unchanged


def test_base_mllm_gets_the_three_tokens(backbone):
    _, path, model = backbone
    tokenizer = model[0].tokenizer
    ids = tokenizer.convert_tokens_to_ids(["<emb>", "<instruction_start>", "<instruction_end>"])
    assert ids == list(range(ids[0], ids[0] + 3))
    assert model[0].model.get_input_embeddings().weight.shape[0] >= ids[-1] + 1
    assert not any(token.special for token in tokenizer.added_tokens_decoder.values() if token.content == "<emb>")


@pytest.mark.parametrize("model_type", BACKBONE_TYPES)
def test_umarvel_checkpoint_keeps_its_token_ids_and_rows(tiny_backbone_factory, model_type):
    from transformers import AutoModel

    path = tiny_backbone_factory(model_type, with_umarvel_tokens=True)
    stored = AutoModel.from_pretrained(str(path)).get_input_embeddings().weight.detach()
    model = umarvel_st.from_mllm(str(path))
    ids = model[0].tokenizer.convert_tokens_to_ids(["<emb>", "<instruction_start>", "<instruction_end>"])
    config = model[0].config
    assert ids == [config.emb_token_id, config.instruction_start_token_id, config.instruction_end_token_id]
    torch.testing.assert_close(model[0].model.get_input_embeddings().weight, stored, rtol=0, atol=0)


def test_no_vocabulary_logits_on_the_embedding_path(backbone):
    _, _, model = backbone
    assert not hasattr(model[0].model, "lm_head")


def test_qwen3_vl_rules(tiny_backbone_factory):
    model = umarvel_st.from_mllm(str(tiny_backbone_factory("qwen3_vl")))
    encoder = model[0]
    assert encoder.image_backend == "torchvision"
    rendered = encoder.tokenizer.decode(encoder.preprocess(["hi"])["input_ids"][0])
    assert rendered.startswith("<|im_start|>user\n")  # no system turn
    # 100x40 is pre-resized (factor 28) to 112x28, then resized by the processor (factor 32) to 128x32: a 2x8
    # patch grid. The processor alone would give 128x64 (4x8): the factor-28 pre-resize must come first.
    image = make_test_image(100, 40)
    assert encoder.preprocess([image])["image_grid_thw"][0].tolist() == [1, 2, 8]
    assert encoder.processor.image_processor(images=[image])["image_grid_thw"][0].tolist() == [1, 4, 8]

    # DeepStack features are computed and discarded: zeroing their mergers changes nothing.
    image = make_test_image(84, 84, seed=4)
    before = model.encode([image])
    with torch.no_grad():
        for merger in encoder.model.visual.deepstack_merger_list:
            for parameter in merger.parameters():
                parameter.add_(torch.randn_like(parameter))
    np.testing.assert_array_equal(model.encode([image]), before)


def test_unknown_backbone_lists_the_supported_ones(tmp_path):
    from umarvel_st.modeling import get_backbone

    with pytest.raises(ValueError, match="qwen2_5_vl.*qwen2_vl.*qwen3_vl"):
        get_backbone("llava")


def test_grown_token_rows_are_the_deterministic_mean(tiny_backbone_factory):
    path = str(tiny_backbone_factory("qwen2_vl"))
    first, second = umarvel_st.from_mllm(path), umarvel_st.from_mllm(path)
    weight = first[0].model.get_input_embeddings().weight
    ids = first[0].tokenizer.convert_tokens_to_ids(["<emb>", "<instruction_start>", "<instruction_end>"])
    torch.testing.assert_close(weight[ids], weight[: ids[0]].mean(0).expand(3, -1))
    torch.testing.assert_close(second[0].model.get_input_embeddings().weight, weight, rtol=0, atol=0)
