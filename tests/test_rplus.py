"""U-MARVEL+ (recall then re-rank): the fusion on hand-made scores, the Python API and its input checks."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import umarvel_st
from umarvel_st.retrieve import RankedCandidate, fuse, retrieve_and_rerank

ASSETS = Path(umarvel_st.__file__).parent / "assets"


def _reversed_list_fusion(cosines: list[float], p_yes: list[float], weight: float) -> list[int]:
    """The official global-pool bug: each P(Yes) is added to the cosine of the mirrored position."""
    final = np.asarray(cosines[::-1]) + weight * np.asarray(p_yes)
    return np.argsort(-final, kind="stable").tolist()


@pytest.mark.parametrize(
    ("p_yes", "expected"),
    [
        ([0.0, 1.0, 1.0], [1, 0, 2]),  # final 0.75, 1.0, 0.75: the tie keeps retrieval order
        ([0.0, 0.5, 1.0], [0, 1, 2]),  # final 0.75, 0.75, 0.5: P(Yes) too small to pass a better cosine
        ([0.0, 0.0, 1.0], [0, 2, 1]),  # final 0.75, 0.5, 0.75: the re-ranker lifts the third above the second
    ],
)
def test_fusion_uses_each_candidates_own_cosine_and_resorts(p_yes: list[float], expected: list[int]) -> None:
    cosines, weight = [0.75, 0.5, 0.25], 0.5  # binary fractions: the sums and ties are exact
    order, final = fuse(cosines, p_yes, weight)
    assert order.tolist() == expected
    assert final.tolist() == [c + weight * p for c, p in zip(cosines, p_yes, strict=True)]
    assert _reversed_list_fusion(cosines, p_yes, weight) != expected  # the official global-pool order differs


def test_fusion_refuses_mismatched_or_non_finite_scores() -> None:
    with pytest.raises(ValueError, match="one of each"):
        fuse([0.5, 0.4], [0.1], 0.1)
    with pytest.raises(ValueError, match="finite"):
        fuse([0.5, math.nan], [0.1, 0.2], 0.1)


class HandMadeEmbedder:
    """Queries and candidates are named vectors, so the cosines are known."""

    def __init__(self, vectors: dict[str, list[float]]) -> None:
        self.vectors = vectors
        self.calls = 0

    def _encode(self, items: list[Any]) -> np.ndarray:
        self.calls += 1
        rows = np.asarray([self.vectors[item["text"] if isinstance(item, dict) else item] for item in items])
        return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)

    def encode_query(self, items: list[Any], **kwargs: Any) -> np.ndarray:
        return self._encode(items)

    def encode_document(self, items: list[Any], **kwargs: Any) -> np.ndarray:
        return self._encode(items)


class HandMadeReranker:
    """P(Yes) per candidate text; records the pairs it scores."""

    def __init__(self, p_yes: dict[str, float]) -> None:
        self.p_yes = p_yes
        self.pairs: list[tuple[Any, Any]] = []

    def predict(self, pairs: list[tuple[Any, Any]], **kwargs: Any) -> np.ndarray:
        self.pairs.extend(pairs)
        return np.asarray([self.p_yes[candidate] for _, candidate in pairs], dtype=np.float32)


def test_api_reranks_the_top_n_and_keeps_the_rest_after_them() -> None:
    # cosines with the query: a 1.0, b 0.8, c 0.6, d 0.0 (unit vectors at chosen angles)
    vectors = {"q": [1.0, 0.0], "a": [1.0, 0.0], "b": [0.8, 0.6], "c": [0.6, 0.8], "d": [0.0, 1.0]}
    reranker = HandMadeReranker({"a": 0.0, "b": 0.1, "c": 1.0, "d": 1.0})
    query = {"text": "q", "instruction": "Find it."}
    [hits] = retrieve_and_rerank(
        HandMadeEmbedder(vectors), reranker, [query], ["d", "c", "b", "a"], top_k=4, rerank_top=3, weight=0.5
    )
    # re-ranked: a 1.0 + 0, b 0.8 + 0.05, c 0.6 + 0.5 -> c, a, b; d (below the top 3) follows, without P(Yes)
    assert [hit.corpus_id for hit in hits] == [1, 3, 2, 0]
    assert hits[0] == pytest.approx(RankedCandidate(1, 1.1, 0.6, 1.0))
    assert hits[3].p_yes is None and hits[3].score == pytest.approx(0.0, abs=1e-6)
    assert reranker.pairs == [(query, "a"), (query, "b"), (query, "c")]  # the query with its instruction
    corpus = ["d", "c", "b", "a"]
    [short] = retrieve_and_rerank(HandMadeEmbedder(vectors), reranker, [query], corpus, top_k=2, weight=2.0)
    assert [hit.corpus_id for hit in short] == [1, 0]  # the default top 50 holds all four: c 2.6, d 2.0, a 1.0


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"rerank_top": 0}, "rerank_top must be an integer >= 1"),
        ({"rerank_top": 2.5}, "rerank_top must be an integer >= 1"),
        ({"weight": math.nan}, "weight must be a finite number"),
        ({"weight": math.inf}, "weight must be a finite number"),
        ({"weight": "0.1"}, "weight must be a finite number"),
        ({"top_k": 0}, "top_k must be an integer >= 1"),
    ],
)
def test_bad_settings_are_refused_before_encoding(options: dict[str, Any], message: str) -> None:
    embedder = HandMadeEmbedder({"q": [1.0]})
    with pytest.raises(ValueError, match=message):
        retrieve_and_rerank(embedder, HandMadeReranker({}), ["q"], ["q"], **options)
    assert embedder.calls == 0


def test_an_embedder_folder_is_not_taken_for_a_reranker() -> None:
    embedder = HandMadeEmbedder({"q": [1.0]})
    with pytest.raises(ValueError, match="not a U-MARVEL re-ranker"):
        retrieve_and_rerank(embedder, str(ASSETS / "umarvel-demo"), ["q"], ["q"])
    with pytest.raises(TypeError, match="list of items"):
        retrieve_and_rerank(embedder, HandMadeReranker({}), "q", ["q"])
    with pytest.raises(ValueError, match="corpus is empty"):
        retrieve_and_rerank(embedder, HandMadeReranker({}), ["q"], [])
    assert embedder.calls == 0


def test_api_on_the_tiny_models_scores_each_pair_with_its_own_cosine() -> None:
    embedder = umarvel_st.load(ASSETS / "umarvel-demo", device="cpu")
    reranker = umarvel_st.reranker_from_mllm(str(ASSETS / "tiny-rerank-qwen2vl"), device="cpu")
    query = {"text": "a striped shirt", "instruction": "Find a fashion image that matches the given description."}
    corpus = ["a red car", "a bowl of soup", {"image": str(ASSETS / "images/img_stripes_70x50.png")}, "a dog"]
    [hits] = retrieve_and_rerank(embedder, reranker, [query], corpus, top_k=4, rerank_top=4, weight=0.1)
    assert sorted(hit.corpus_id for hit in hits) == [0, 1, 2, 3]
    cosines = embedder.similarity(embedder.encode_query([query]), embedder.encode_document(corpus))[0]
    p_yes = reranker.predict([(query, candidate) for candidate in corpus])
    for hit in hits:
        assert hit.cosine == pytest.approx(float(cosines[hit.corpus_id]), abs=1e-5)
        assert hit.p_yes == pytest.approx(float(p_yes[hit.corpus_id]), abs=1e-5)
        assert hit.score == pytest.approx(hit.cosine + 0.1 * hit.p_yes, abs=1e-6)
    assert [hit.score for hit in hits] == sorted((hit.score for hit in hits), reverse=True)
