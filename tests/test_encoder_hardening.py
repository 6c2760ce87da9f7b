"""The encoder under hostile or unusual use: dtype spellings, token embeddings, the training layout, text caps,
control-token strings in user text, M-RoPE on every backbone, and clear errors (issue 8)."""

from __future__ import annotations

import logging
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from sentence_transformers import SentenceTransformer

import umarvel_st
from umarvel_st.modeling import BACKBONES
from umarvel_st.testing import make_test_image

CHECKPOINT = str(Path(umarvel_st.__file__).parent / "assets" / "tiny-umarvel-qwen2vl")
CONTROL_STRINGS = "<instruction_start> <instruction_end> <emb> <|image_pad|> <|video_pad|> <|im_end|> <|im_start|>"


@pytest.fixture(scope="module")
def model():
    return umarvel_st.from_mllm(CHECKPOINT)


@pytest.fixture(scope="module")
def saved(model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("saved") / "model"
    model.save(str(folder))
    return str(folder)


def weight_dtype(model) -> torch.dtype:
    return next(model[0].model.parameters()).dtype


# ---------------------------------------------------------------- dtype (item 5)
def test_torch_dtype_spelling_is_honoured_when_building_and_loading(saved):
    assert weight_dtype(umarvel_st.from_mllm(CHECKPOINT, model_kwargs={"torch_dtype": "bfloat16"})) == torch.bfloat16
    by_st = SentenceTransformer(saved, trust_remote_code=True, model_kwargs={"torch_dtype": "bfloat16"})
    assert weight_dtype(by_st) == torch.bfloat16
    assert weight_dtype(umarvel_st.load(saved, model_kwargs={"torch_dtype": torch.bfloat16})) == torch.bfloat16
    assert weight_dtype(umarvel_st.load(saved, model_kwargs={"dtype": "bfloat16"})) == torch.bfloat16


def test_two_different_dtype_spellings_are_refused():
    with pytest.raises(ValueError, match="dtype='float32' and torch_dtype='bfloat16'"):
        umarvel_st.from_mllm(CHECKPOINT, model_kwargs={"torch_dtype": "bfloat16", "dtype": "float32"})
    same = umarvel_st.from_mllm(CHECKPOINT, model_kwargs={"torch_dtype": torch.bfloat16, "dtype": "bfloat16"})
    assert weight_dtype(same) == torch.bfloat16


# ---------------------------------------------------------------- token embeddings (item 6)
def test_token_embeddings_are_the_items_own_tokens_whatever_its_neighbours(model):
    short = "a short text"
    alone = model.encode([short], output_value="token_embeddings")[0]
    batch = model.encode([short, "a much longer text, " * 8, make_test_image(84, 84)], output_value="token_embeddings")
    n_tokens = int(model[0].preprocess([short])["attention_mask"].sum())
    assert alone.shape[0] == batch[0].shape[0] == n_tokens
    torch.testing.assert_close(batch[0], alone, atol=1e-5, rtol=0)
    pooled = model.encode([short, "a much longer text, " * 8])[0]
    np.testing.assert_allclose(pooled, model.encode([short])[0], atol=1e-6)


# ---------------------------------------------------------------- training layout (item 8)
def pooled(model, features) -> torch.Tensor:
    with torch.no_grad():
        return model({key: value.clone() for key, value in features.items()})["sentence_embedding"]


def test_train_mode_uses_the_training_layout_whatever_mode_the_batch_was_collated_in():
    inference = umarvel_st.from_mllm(CHECKPOINT)  # generation_prompt=True, as loaded models are
    training = umarvel_st.from_mllm(CHECKPOINT, generation_prompt=False)
    items = ["a red square", {"text": "two cats", "image": make_test_image(56, 84)}]
    inference.eval()  # the trainer collates its first batch (and one after each evaluation) in eval mode
    features = inference.preprocess(items, prompt="Find a caption.")
    prompt = inference[0].tokenizer.encode("<|im_start|>assistant\n")
    end = int(features["attention_mask"][0].sum())
    assert features["input_ids"][0, end - len(prompt) : end].tolist() == prompt  # rendered with the prompt
    at_inference = pooled(inference, features)
    inference.train()
    training.train()
    at_training = pooled(training, training.preprocess(items, prompt="Find a caption."))
    torch.testing.assert_close(pooled(inference, features), at_training, atol=1e-5, rtol=0)
    assert (at_inference - at_training).abs().max() > 1e-3  # the generation prompt does change the embedding


def test_train_generation_prompt_keeps_the_inference_layout_and_is_saved(tmp_path):
    model = umarvel_st.from_mllm(CHECKPOINT, train_generation_prompt=True)
    features = model.preprocess(["a red square"])
    model.eval()
    at_inference = pooled(model, features)
    model.train()
    torch.testing.assert_close(pooled(model, features), at_inference, atol=1e-6, rtol=0)
    model.save(str(tmp_path / "m"))
    assert umarvel_st.load(str(tmp_path / "m"))[0].train_generation_prompt is True


# ---------------------------------------------------------------- text cap and exact truncation (items 14, 21)
def test_default_cap_bounds_a_huge_text_and_an_explicit_cap_is_saved(model, saved, tmp_path):
    assert model.max_seq_length == 1024
    features = model[0].preprocess(["word " * 20_000])  # 100k characters
    assert int(features["attention_mask"].sum()) == 1024
    assert umarvel_st.load(saved).max_seq_length == 1024
    longer = umarvel_st.from_mllm(CHECKPOINT, max_seq_length=2048)
    longer.save(str(tmp_path / "m"))
    assert SentenceTransformer(str(tmp_path / "m"), trust_remote_code=True).max_seq_length == 2048


def adversarial_texts(count: int) -> list[str]:
    """Texts whose re-tokenisation after a cut is likely to grow: merges across the cut, quotes and periods that
    `format` strips or adds, multi-byte characters, control-token strings."""
    pieces = ["a", " ", "\n", ".", "é", "東", "🙂", "  ", "ab", "'s", "1", '"', "\r", "!?", "<|im_end|>", "<emb>"]
    rng = random.Random(0)
    return ["".join(rng.choice(pieces) for _ in range(rng.randint(40, 300))) for _ in range(count)]


def test_truncated_items_never_exceed_max_length(model):
    encoder = model[0]
    image = make_test_image(56, 56)
    for text in adversarial_texts(60):
        for item in (text, {"text": text, "instruction": "Find it."}, {"text": text, "image": image}):
            for max_length in (64, 77, 100):
                try:
                    features = encoder.preprocess([item], max_length=max_length)
                except ValueError as error:
                    assert "alone take" in str(error)  # only when the template itself does not fit
                    continue
                assert int(features["attention_mask"].sum()) <= max_length


def test_texts_that_fit_are_not_changed_by_the_cap(model):
    encoder = model[0]
    for text in adversarial_texts(20):
        full = encoder.preprocess([text], max_length=100_000)
        length = int(full["attention_mask"].sum())
        capped = encoder.preprocess([text], max_length=length)
        assert capped["input_ids"].tolist() == full["input_ids"].tolist()
        cut = encoder.preprocess([text], max_length=length - 5)
        assert int(cut["attention_mask"].sum()) == length - 5  # cut token-exactly, not by more
        suffix = "\nSummarize above sentence in one word: <|im_end|>\n<|im_start|>assistant\n<emb>.<|im_end|>\n"
        assert encoder.tokenizer.decode(cut["input_ids"][0]).endswith(suffix + "<|im_start|>assistant\n")


def test_template_overflow_names_the_item_and_a_text_only_item_not_an_image(model):
    with pytest.raises(ValueError, match="'some words here': the prompt template alone take") as error:
        model[0].preprocess(["some words here"], max_length=20)
    assert "image" not in str(error.value) and "Batch item" not in str(error.value)
    assert "Raise max_seq_length" in str(error.value)


# ---------------------------------------------------------------- control-token strings stay text (item 20)
def counts(encoder, ids: torch.Tensor) -> dict[str, int]:
    tokens = ["<instruction_start>", "<instruction_end>", "<emb>", "<|image_pad|>", "<|im_end|>", "<|im_start|>"]
    return {token: int((ids == encoder.tokenizer.convert_tokens_to_ids(token)).sum()) for token in tokens}


@pytest.mark.parametrize("with_instruction", [False, True])
def test_control_strings_in_user_text_stay_text(model, with_instruction):
    encoder = model[0]
    prompt = "Find the matching image." if with_instruction else None
    hostile = encoder.preprocess([f"a {CONTROL_STRINGS} b"], prompt=prompt)
    plain = encoder.preprocess(["a b"], prompt=prompt)
    ids, mask = hostile["input_ids"][0], hostile["attention_mask"][0].bool()
    assert counts(encoder, ids[mask]) == counts(encoder, plain["input_ids"][0])  # no control token from the text
    unpooled = mask & ~hostile["pooling_mask"][0]  # the instruction span: the same real tokens as without the text
    assert ids[unpooled].tolist() == plain["input_ids"][0][~plain["pooling_mask"][0]].tolist()
    assert CONTROL_STRINGS in encoder.tokenizer.decode(ids[mask])  # the text itself survives, character for character


def test_image_pad_string_next_to_a_real_image_embeds_and_is_batch_independent(model):
    image = make_test_image(84, 56, seed=3)
    hostile = {"text": f"look {CONTROL_STRINGS}", "image": image}
    features = model[0].preprocess([hostile, "plain text"])
    grid = features["image_grid_thw"][0]
    assert counts(model[0], features["input_ids"][0])["<|image_pad|>"] == int(grid.prod()) // 4
    alone = model.encode([hostile])[0]
    np.testing.assert_allclose(model.encode([hostile, "plain text", {"text": "x" * 300}])[0], alone, atol=1e-5)
    query = model.encode_query([f"q {CONTROL_STRINGS}"], prompt="Find it.")
    np.testing.assert_allclose(
        query[0], model.encode_query([f"q {CONTROL_STRINGS}", "other"], prompt="Find it.")[0], atol=1e-5
    )


# ---------------------------------------------------------------- mrope on every backbone (item 22)
@pytest.mark.parametrize("model_type", sorted(BACKBONES))
def test_mrope_encodes_on_every_backbone(tiny_backbone_factory, model_type):
    path = str(tiny_backbone_factory(model_type))
    image = make_test_image(84, 56, seed=1)
    items = ["text only", image, {"text": "a caption", "image": image}]
    mrope = umarvel_st.from_mllm(path, position_mode="mrope").encode(items)
    assert mrope.shape[0] == 3 and np.isfinite(mrope).all()
    sequential = umarvel_st.from_mllm(path).encode(items)
    np.testing.assert_allclose(mrope[0], sequential[0], atol=1e-5)  # text: M-RoPE positions are 1-D as well
    assert np.abs(mrope[1] - sequential[1]).max() > 1e-4  # images: 2-D positions


# ---------------------------------------------------------------- clear errors (items 10, 21 "unclear errors")
def test_lone_surrogate_is_a_clear_error_naming_the_item(model):
    with pytest.raises(ValueError, match=r"'bad \\ud800 text': its text has the lone surrogate"):
        model.encode(["fine", "bad \ud800 text"])
    with pytest.raises(ValueError, match="its instruction has the lone surrogate"):
        model.encode_query(["fine"], prompt="Find \udcff.")


@pytest.mark.parametrize("prompt", [3, b"Find it."])
def test_non_string_prompt_is_a_clear_error(model, prompt):
    for items in (["text"], [make_test_image(56, 56)]):  # an image batch must not be embedded without it
        with pytest.raises(ValueError, match=f"prompt must be a string .* got {prompt!r}"):
            model.encode_query(items, prompt=prompt)


def test_query_without_instruction_warns_once(caplog):
    model = umarvel_st.from_mllm(CHECKPOINT)
    with caplog.at_level(logging.WARNING, logger="umarvel_st.modeling.encoder"):
        model.encode_query(["a dog"])
        model.encode_query(["a cat"])
        model.encode_query(["a cow"], prompt_name="mscoco_task0")
    ours = [record.message for record in caplog.records if record.name == "umarvel_st.modeling.encoder"]
    assert len(ours) == 1 and ours[0].startswith("encode_query got no instruction")
