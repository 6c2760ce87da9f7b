"""The re-ranker scores exactly as the official U-MARVEL code, and each measured mistake breaks that.

Oracle: ``tests/data/refparity_reranker_qwen2vl`` (a trimmed copy of the shared re-ranker fixture): a tiny causal
Qwen2-VL with an untied LM head, 8 (query, candidate) pairs, the official P(Yes) (``ref_scores.npy``), Yes/No logits
at batch 1/4/8 and P(Yes) under the mistakes the fixture measured (``ref_variants.npz``).
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import umarvel_st
from umarvel_st.modeling.reranker import RERANK_PROMPT, normalize_pair
from umarvel_st.reranker import UMarvelCrossEncoder, reranker_from_mllm

DATA = Path(__file__).parent / "data" / "refparity_reranker_qwen2vl"
CHECKPOINT = Path(umarvel_st.__file__).parent / "assets" / "tiny-rerank-qwen2vl"  # the fixture checkpoint
FIXTURE = json.loads((DATA / "fixture.json").read_text())
REF = np.load(DATA / "ref_scores.npy")
REF_LOGITS = dict(np.load(DATA / "ref_logits.npz"))
VARIANTS = dict(np.load(DATA / "ref_variants.npz"))


def fixture_item(record: dict[str, Any], instruction: str | None = None) -> Any:
    """A raw fixture record as the user-facing item types: text, ``{"image": path}`` or a dict."""
    item: dict[str, Any] = {}
    if record.get("text"):
        item["text"] = record["text"]
    if record.get("image"):
        item["image"] = str(DATA / "images" / Path(record["image"]).name)
    if instruction:
        item["instruction"] = instruction
    return item if set(item) != {"text"} else item["text"]


def fixture_pairs() -> list[tuple[Any, Any]]:
    return [
        (
            fixture_item(pair["query"], FIXTURE["instructions"][pair["instruction_key"]]),
            fixture_item(pair["candidate"]),
        )
        for pair in FIXTURE["pairs"]
    ]


def reference_batches(model: UMarvelCrossEncoder, pairs: list, batch_size: int = 4) -> np.ndarray:
    """P(Yes) batched exactly as the reference (consecutive pairs, no length sorting)."""
    return np.concatenate(
        [model.predict(pairs[start : start + batch_size], batch_size=batch_size) for start in range(0, 8, batch_size)]
    )


@pytest.fixture(scope="module")
def model() -> UMarvelCrossEncoder:
    return reranker_from_mllm(str(CHECKPOINT))


def test_prompt_is_the_official_string() -> None:
    assert len(RERANK_PROMPT) == 213 and " " * 24 + "meets" in RERANK_PROMPT and "responed" in RERANK_PROMPT
    assert " " * 25 not in RERANK_PROMPT


def test_rendering_and_token_ids_match_the_reference(model: UMarvelCrossEncoder) -> None:
    module = model[0]
    pairs = [normalize_pair(pair, index) for index, pair in enumerate(fixture_pairs())]
    texts = module.processor.apply_chat_template(
        [module.messages(query, candidate) for query, candidate in pairs], tokenize=False, add_generation_prompt=True
    )
    assert texts == [pair["rendered_prompt"] for pair in FIXTURE["pairs"]]
    for index, pair in enumerate(pairs):
        features = module.render([pair])
        assert features["input_ids"][0].tolist() == FIXTURE["pairs"][index]["input_ids"], index


def test_mrope_positions_match_what_generate_used(model: UMarvelCrossEncoder) -> None:
    module = model[0]
    pairs = [normalize_pair(pair, index) for index, pair in enumerate(fixture_pairs())]
    for batch in FIXTURE["eval_batches_bs4"]:
        features = module.render([pairs[index] for index in batch])
        positions = module.position_ids(features)  # (3, batch, seq)
        for row, index in enumerate(batch):
            real = features["attention_mask"][row].bool()
            assert positions[:, row, real].tolist() == FIXTURE["pairs"][index]["mrope_position_ids"], index


@pytest.mark.parametrize("batch_size", [1, 4, 8])
def test_p_yes_matches_the_reference(model: UMarvelCrossEncoder, batch_size: int) -> None:
    scores = model.predict(fixture_pairs(), batch_size=batch_size)
    np.testing.assert_allclose(scores, REF, rtol=0, atol=1e-5)
    np.testing.assert_allclose(reference_batches(model, fixture_pairs(), batch_size), REF, rtol=0, atol=1e-5)


def test_p_yes_does_not_depend_on_the_order(model: UMarvelCrossEncoder) -> None:
    order = list(range(8))
    random.Random(7).shuffle(order)
    pairs = fixture_pairs()
    scores = model.predict([pairs[index] for index in order], batch_size=3)
    np.testing.assert_allclose(scores, REF[order], rtol=0, atol=1e-5)


@pytest.mark.parametrize("batch_size", [1, 4, 8])
def test_yes_no_logits_match_the_reference(model: UMarvelCrossEncoder, batch_size: int) -> None:
    module, pairs = model[0], fixture_pairs()
    yes, no = [], []
    with torch.no_grad():
        for start in range(0, 8, batch_size):
            features = module.preprocess(pairs[start : start + batch_size], share_prefix=False)
            logits = module(features)["causal_logits"][:, -1]  # (batch, vocab)
            yes += logits[:, module.yes_token_id].tolist()
            no += logits[:, module.no_token_id].tolist()
    np.testing.assert_allclose(yes, REF_LOGITS[f"yes_logit_bs{batch_size}"], rtol=0, atol=1e-4)
    np.testing.assert_allclose(no, REF_LOGITS[f"no_logit_bs{batch_size}"], rtol=0, atol=1e-4)


def test_rank_orders_candidates_by_p_yes(model: UMarvelCrossEncoder) -> None:
    pairs = fixture_pairs()
    query, candidates = pairs[0][0], [pair[1] for pair in pairs]
    ranking = model.rank(query, candidates, top_k=3)
    scores = model.predict([(query, candidate) for candidate in candidates], share_prefix=False)
    assert [hit["corpus_id"] for hit in ranking] == np.argsort(-scores)[:3].tolist()
    np.testing.assert_allclose([hit["score"] for hit in ranking], np.sort(scores)[::-1][:3], rtol=0, atol=1e-5)


# ---------------------------------------------------------------- each measured trap breaks parity
def test_right_padding_at_scoring_breaks_parity() -> None:
    trapped = reranker_from_mllm(str(CHECKPOINT), padding_side="right")
    scores = reference_batches(trapped, fixture_pairs())
    np.testing.assert_allclose(scores, VARIANTS["right_padding_bs4"], rtol=0, atol=1e-5)  # the fixture's mistake
    assert np.abs(scores - REF).max() > 0.5


def test_sequential_positions_at_scoring_break_parity() -> None:
    trapped = reranker_from_mllm(str(CHECKPOINT), position_mode="sequential")
    scores = reference_batches(trapped, fixture_pairs())
    np.testing.assert_allclose(scores, VARIANTS["plain_forward_1d_positions_bs4"], rtol=0, atol=1e-5)
    assert np.abs(scores - REF).max() > 0.1


def test_instruction_tokens_instead_of_plain_text_break_parity() -> None:
    scores = reranker_from_mllm(str(CHECKPOINT), instruction_span=True).predict(fixture_pairs())
    assert np.abs(scores - REF).max() > 1e-3


def test_a_separator_between_content_items_breaks_parity() -> None:
    scores = reranker_from_mllm(str(CHECKPOINT), item_separator="\n").predict(fixture_pairs())
    assert np.abs(scores - REF).max() > 1e-3


def test_truncation_at_scoring_breaks_parity_on_long_texts() -> None:
    scores = reranker_from_mllm(str(CHECKPOINT), max_text_tokens=256).predict(fixture_pairs())
    long = [3, 6, 7]  # a query or candidate text over 256 tokens
    short = [index for index in range(8) if index not in long]
    np.testing.assert_allclose(scores[short], REF[short], rtol=0, atol=1e-5)
    assert np.abs(scores[long] - REF[long]).min() > 1e-4


# ---------------------------------------------------------------- shared query prefix
def test_shared_prefix_scores_equal_the_plain_path(model: UMarvelCrossEncoder) -> None:
    pairs = fixture_pairs()
    candidates = [pair[1] for pair in pairs] + ["", "a red thing", {"text": "dots", "image": pairs[2][0]["image"]}]
    for query in (pairs[0][0], pairs[2][0], pairs[4][0], pairs[6][0]):  # text, image, image+text, long text
        batch = [(query, candidate) for candidate in candidates]
        features = model[0].preprocess(batch)
        assert features["shared_prefix_length"] > 50
        shared = model.predict(batch, batch_size=len(batch))
        plain = model.predict(batch, batch_size=len(batch), share_prefix=False)
        np.testing.assert_allclose(shared, plain, rtol=0, atol=1e-5)


def test_prefix_is_not_shared_across_different_queries(model: UMarvelCrossEncoder) -> None:
    assert "shared_prefix_length" not in model[0].preprocess(fixture_pairs()[:4])


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("pairs", "error", "match"),
    [
        ([("a query", "a candidate"), ("only one",)], TypeError, r"Pair 1: expected a \(query, candidate\) 2-tuple"),
        ([("a query", "a candidate"), "not a pair"], TypeError, "Pair 1: expected"),
        ([("a query", 42)], TypeError, "Pair 0: .*unsupported input 42"),
        ([("q", "c"), ("q", {"image": "/nonexistent/cat.png"})], ValueError, "Pair 1: .*image file .* does not exist"),
        ([({"text": "q", "colour": "red"}, "c")], ValueError, "Pair 0: .*unknown keys"),
        ([], ValueError, "no pairs"),
        (
            [("q", "c"), ("q", "a <|image_pad|> trick")],
            ValueError,
            r"Pair 1: .* special token\(s\) \['<\|image_pad\|>'\]",
        ),
        ([({"text": "q", "instruction": "<|im_start|>system"}, "c")], ValueError, "Pair 0: .* special token"),
        ([("q", "c"), ("word " * 5000, "c")], ValueError, "renders to .* tokens, more than max_seq_length=4096"),
    ],
)
def test_bad_pairs_are_refused_before_scoring(
    model: UMarvelCrossEncoder, pairs: list, error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        model.predict(pairs)


def test_a_checkpoint_without_lm_head_is_refused(tmp_path: Path) -> None:
    from transformers import AutoProcessor, Qwen2VLModel

    Qwen2VLModel.from_pretrained(str(CHECKPOINT)).save_pretrained(tmp_path)
    AutoProcessor.from_pretrained(str(CHECKPOINT)).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="has no LM head"):
        reranker_from_mllm(str(tmp_path))


def test_a_tokenizer_without_single_token_yes_is_refused(tiny_backbone_factory) -> None:
    with pytest.raises(ValueError, match="'Yes' is 2 tokens"):
        reranker_from_mllm(str(tiny_backbone_factory("qwen2_vl")))


def test_prompt_is_the_instruction_of_queries_without_one(model: UMarvelCrossEncoder) -> None:
    pairs = fixture_pairs()
    query, candidate = pairs[0]
    bare = {key: value for key, value in query.items() if key != "instruction"}
    via_prompt = model.predict([(bare, candidate)], prompt=query["instruction"])
    np.testing.assert_allclose(via_prompt, REF[:1], rtol=0, atol=1e-5)
    assert abs(model.predict([(bare, candidate)])[0] - REF[0]) > 1e-3
