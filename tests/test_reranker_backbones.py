"""The re-ranker module carries Qwen2.5-VL and Qwen3-VL too: their own chat templates (Qwen3-VL: no system turn),
M-RoPE positions, and rows independent of their batch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import umarvel_st
from umarvel_st.modeling.reranker import normalize_pair
from umarvel_st.testing import build_tiny_backbone, make_test_image


def reranker_backbone(model_type: str, folder: Path) -> Path:
    """A tiny random backbone whose tokenizer has "Yes" and "No" as single tokens (rows appended)."""
    from transformers import AutoModelForImageTextToText, AutoTokenizer

    build_tiny_backbone(model_type, folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.add_tokens(["Yes", "No"])
    model = AutoModelForImageTextToText.from_pretrained(folder)
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("model_type", ["qwen2_5_vl", "qwen3_vl"])
def test_other_backbones_score_batch_independently(model_type: str, tmp_path: Path) -> None:
    model = umarvel_st.reranker_from_mllm(str(reranker_backbone(model_type, tmp_path)))
    image = make_test_image(84, 56, seed=1)
    query = {"text": "a red block", "instruction": "Find an image that matches the caption."}
    candidates = ["a red square", image, {"text": "a blue block", "image": image}, ""]
    pairs = [(query, candidate) for candidate in candidates] + [({"image": image}, "some shapes")]

    rendered = model[0].processor.apply_chat_template(
        [model[0].messages(*normalize_pair(pairs[0], 0))], tokenize=False, add_generation_prompt=True
    )[0]
    assert ("<|im_start|>system" in rendered) == (model_type != "qwen3_vl")
    assert rendered.endswith(
        "Query:Find an image that matches the caption. a red block.Candidate:A red square.<|im_end|>\n<|im_start|>assistant\n"
    )

    batched = model.predict(pairs, batch_size=len(pairs))
    alone = np.array([model.predict([pair], batch_size=1)[0] for pair in pairs])
    np.testing.assert_allclose(batched, alone, rtol=0, atol=1e-5)
    assert ((batched > 0) & (batched < 1)).all()
    shared = model.predict(pairs[:4], batch_size=4)  # one query: shared prefix on Qwen2.5-VL, plain on Qwen3-VL
    np.testing.assert_allclose(shared, alone[:4], rtol=0, atol=1e-5)
