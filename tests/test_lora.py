"""LoRA on the language model: only adapters train, vision stays frozen, merging keeps the embeddings."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sentence_transformers import SentenceTransformer

import umarvel_st
from umarvel_st.testing import make_test_image
from umarvel_st.train.lora import apply_lora, freeze_vision, merge_lora

ITEMS = ["a red square", {"text": "a circle", "image": make_test_image(56, 56, seed=3)}]


@pytest.fixture
def model(tiny_backbone_factory):
    torch.manual_seed(0)
    return umarvel_st.from_mllm(str(tiny_backbone_factory("qwen2_vl")))


def trainable(model):
    return [name for name, parameter in model.named_parameters() if parameter.requires_grad]


def test_only_language_model_adapters_are_trainable(model):
    before = model.encode(ITEMS)
    apply_lora(model, r=4, alpha=8)
    names = trainable(model)
    assert names and all("lora_" in name and "language_model" in name for name in names)
    for layer in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"):
        assert any(f".{layer}.lora_A" in name for name in names), layer
    np.testing.assert_allclose(model.encode(ITEMS), before, atol=1e-6)  # LoRA B starts at zero


def test_gradient_checkpointing_with_lora_gives_adapter_gradients(model):
    apply_lora(model, r=4, alpha=8, dropout=0.0)
    model[0].model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    features = model.preprocess(ITEMS)
    out = model(features)["sentence_embedding"]
    (out[0] @ out[1]).backward()
    grads = [p.grad for n, p in model.named_parameters() if "lora_B" in n]
    assert grads and all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)


def test_merge_keeps_embeddings_and_saves_a_plain_model(model, tmp_path):
    apply_lora(model, r=4, alpha=8)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.05)
    adapted = model.encode(ITEMS)
    merge_lora(model)
    assert not any("lora_" in name for name, _ in model.named_parameters())
    np.testing.assert_allclose(model.encode(ITEMS), adapted, atol=1e-5)
    model.save(str(tmp_path / "merged"))
    reloaded = SentenceTransformer(str(tmp_path / "merged"), trust_remote_code=True)
    np.testing.assert_allclose(reloaded.encode(ITEMS), adapted, atol=1e-5)


def test_adapter_errors(model):
    with pytest.raises(ValueError, match="no LoRA adapter"):
        merge_lora(model)
    apply_lora(model, r=2, alpha=4)
    with pytest.raises(ValueError, match="already carries"):
        apply_lora(model)


def test_freeze_vision_for_full_fine_tuning(model):
    freeze_vision(model)
    names = trainable(model)
    assert names and not any("visual" in name for name in names)


def test_freeze_vision_works_on_a_reranker_too():
    """A `rerank` stage with full fine-tuning freezes the re-ranker's vision tower (it wraps the Qwen-VL model)."""
    from pathlib import Path

    import umarvel_st
    from umarvel_st.train.lora import freeze_vision

    reranker = umarvel_st.reranker_from_mllm(str(Path(umarvel_st.__file__).parent / "assets" / "tiny-rerank-qwen2vl"))
    freeze_vision(reranker)
    trainable = {name for name, parameter in reranker.named_parameters() if parameter.requires_grad}
    assert trainable and not any(".visual." in name for name in trainable)
