"""Ranking metrics on hand-computed toy rankings, their offline ``evaluate`` modules, and faiss tie order."""

from __future__ import annotations

import numpy as np
import pytest

from umarvel_st.evaluation.metrics import METRIC_NAMES, load_metric, metric_path
from umarvel_st.evaluation.ranking import average_precision_at_k, hit_at_k, mean_metric, recall_at_k
from umarvel_st.evaluation.search import exact_search

# Three queries over candidates "a".."f"; rankings best first.
RANKINGS = [["a", "b", "c", "d"], ["e", "a", "f", "b"], ["c", "d", "e", "f"]]
RELEVANT = [["b", "d"], ["f"], ["a"]]


@pytest.mark.parametrize(
    ("k", "hit", "recall", "ap"),
    [
        # q1: b at rank 2, d at rank 4; q2: f at rank 3; q3: no hit
        (1, [0, 0, 0], [0, 0, 0], [0, 0, 0]),
        (2, [1, 0, 0], [1 / 2, 0, 0], [(1 / 2) / 2, 0, 0]),
        (3, [1, 1, 0], [1 / 2, 1, 0], [(1 / 2) / 2, (1 / 3) / 1, 0]),
        (4, [1, 1, 0], [1, 1, 0], [(1 / 2 + 2 / 4) / 2, (1 / 3) / 1, 0]),
        (10, [1, 1, 0], [1, 1, 0], [(1 / 2 + 2 / 4) / 2, (1 / 3) / 1, 0]),  # k beyond the ranking
    ],
)
def test_toy_rankings(k: int, hit: list[float], recall: list[float], ap: list[float]) -> None:
    for ranking, relevant, h, r, a in zip(RANKINGS, RELEVANT, hit, recall, ap, strict=True):
        assert hit_at_k(ranking, relevant, k) == h
        assert recall_at_k(ranking, relevant, k) == pytest.approx(r)
        assert average_precision_at_k(ranking, relevant, k) == pytest.approx(a)
    assert mean_metric("hit", RANKINGS, RELEVANT, k) == pytest.approx(sum(hit) / 3)
    assert mean_metric("recall", RANKINGS, RELEVANT, k) == pytest.approx(sum(recall) / 3)
    assert mean_metric("map", RANKINGS, RELEVANT, k) == pytest.approx(sum(ap) / 3)


def test_hit_differs_from_recall_with_several_positives() -> None:
    # M-BEIR's "Recall@k" is a hit rate: one of two positives found counts fully.
    assert hit_at_k(["x", "p1", "y"], ["p1", "p2"], 3) == 1.0
    assert recall_at_k(["x", "p1", "y"], ["p1", "p2"], 3) == 0.5


def test_map_normalises_by_min_of_k_and_positives() -> None:
    # 3 positives, k = 2, both top results relevant: AP@2 = (1/1 + 2/2) / min(2, 3) = 1.
    assert average_precision_at_k(["p1", "p2", "x"], ["p1", "p2", "p3"], 2) == 1.0


def test_query_without_positives_scores_zero() -> None:
    assert hit_at_k(["a"], [], 1) == recall_at_k(["a"], [], 1) == average_precision_at_k(["a"], [], 1) == 0.0


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="positive integer"):
        hit_at_k(["a"], ["a"], 0)
    with pytest.raises(ValueError, match="duplicates"):
        hit_at_k(["a", "a"], ["a"], 2)
    with pytest.raises(ValueError, match="Unknown ranking metric"):
        mean_metric("ndcg", RANKINGS, RELEVANT, 1)
    with pytest.raises(ValueError, match="one of each"):
        mean_metric("hit", RANKINGS, RELEVANT[:2], 1)


def test_evaluate_modules_load_offline_and_agree() -> None:
    hit = load_metric("hit_at_k", keep_in_memory=True)
    assert hit.compute(predictions=RANKINGS, references=RELEVANT, k=[2, 3]) == {
        "hit@2": pytest.approx(1 / 3),
        "hit@3": pytest.approx(2 / 3),
    }
    # integer ids work too
    int_rankings = [[ord(c) for c in ranking] for ranking in RANKINGS]
    int_relevant = [[ord(c) for c in relevant] for relevant in RELEVANT]
    recall = load_metric("recall_at_k", keep_in_memory=True)
    assert recall.compute(predictions=int_rankings, references=int_relevant, k=4) == {"recall@4": pytest.approx(2 / 3)}
    mean_ap = load_metric("map_at_k", keep_in_memory=True)
    expected = ((1 / 2 + 2 / 4) / 2 + 1 / 3) / 3
    assert mean_ap.compute(predictions=RANKINGS, references=RELEVANT, k=4) == {"map@4": pytest.approx(expected)}


def test_unknown_metric_module_lists_known_ones() -> None:
    with pytest.raises(ValueError, match="hit_at_k"):
        metric_path("ndcg_at_k")
    assert all(metric_path(name).is_file() for name in METRIC_NAMES)


def _faiss_flat(queries: np.ndarray, database: np.ndarray, k: int) -> np.ndarray:
    import faiss

    index = faiss.IndexFlatIP(database.shape[1])
    index.add(database)
    return index.search(queries, k)[1]


def test_exact_ties_follow_faiss_order() -> None:
    # One query, candidates 0..3 all tied at score 1: faiss keeps the first two scanned and lists them by
    # id descending, so the depth-2 ranking is [1, 0] (a stable sort would give [0, 1]).
    query = np.array([[1.0, 0.0]], dtype=np.float32)
    tied = np.array([[1, 0], [1, 0], [1, 0], [1, 0]], dtype=np.float32)
    _, ids = exact_search(query, tied, 2, shard_size=3)
    assert ids.tolist() == [[1, 0]] == _faiss_flat(query, tied, 2).tolist()
    assert hit_at_k(ids[0].tolist(), [1], 1) == 1.0  # UniIR reads Recall@1 off the deeper list
    assert hit_at_k(ids[0].tolist(), [0], 1) == 0.0
    assert hit_at_k(ids[0].tolist(), [2], 2) == 0.0  # tied with the top, but not kept

    # A higher score scanned later evicts the lowest-id tie: candidate 0 drops out although it ties candidate 1.
    evicting = np.array([[1, 0], [1, 0], [1, 0], [2, 0]], dtype=np.float32)
    _, ids = exact_search(query, evicting, 2, shard_size=2)
    assert ids.tolist() == [[3, 1]] == _faiss_flat(query, evicting, 2).tolist()
    assert hit_at_k(ids[0].tolist(), [0], 2) == 0.0
    assert hit_at_k(ids[0].tolist(), [1], 2) == 1.0
