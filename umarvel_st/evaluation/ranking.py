"""Ranking metrics on one ranked candidate list per query.

These are the single implementation behind the ``evaluate`` metric modules in :mod:`umarvel_st.evaluation.metrics`
and the M-BEIR evaluator. A ranking is a sequence of candidate ids (best first, each id once; ties are already
broken by the search, see :mod:`umarvel_st.evaluation.search`); the relevant ids of a query are its positives.

- ``hit@k`` is what M-BEIR / UniIR report as "Recall@k": 1 if any relevant id is among the first k, else 0
  (UniIR's ``compute_recall_at_k``).
- ``recall@k`` is the textbook recall: the fraction of the relevant ids found among the first k.
- ``map@k`` is mean average precision at k as CIRCO reports it: for each query the sum of precision@i over the
  ranks i <= k that hold a relevant id, divided by ``min(k, number of relevant ids)``.

A query without relevant ids scores 0 on every metric (as in UniIR); a corpus-level score is the plain mean over
queries.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Hashable, Sequence


def _check(ranking: Sequence[Hashable], k: int) -> list[Hashable]:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}.")
    top = list(ranking[:k])
    if len(set(top)) != len(top):
        raise ValueError(f"A ranking lists each candidate at most once; got duplicates in the top {k}: {top}.")
    return top


def hit_at_k(ranking: Sequence[Hashable], relevant: Collection[Hashable], k: int) -> float:
    """1.0 if any relevant id is among the first ``k`` of ``ranking``, else 0.0 (M-BEIR's "Recall@k")."""
    top = _check(ranking, k)
    relevant = set(relevant)
    return float(any(candidate in relevant for candidate in top))


def recall_at_k(ranking: Sequence[Hashable], relevant: Collection[Hashable], k: int) -> float:
    """Fraction of the relevant ids found among the first ``k`` of ``ranking`` (0.0 without relevant ids)."""
    top = _check(ranking, k)
    relevant = set(relevant)
    if not relevant:
        return 0.0
    return sum(candidate in relevant for candidate in top) / len(relevant)


def average_precision_at_k(ranking: Sequence[Hashable], relevant: Collection[Hashable], k: int) -> float:
    """Average precision at ``k``, normalised by ``min(k, len(relevant))`` (0.0 without relevant ids)."""
    top = _check(ranking, k)
    relevant = set(relevant)
    if not relevant:
        return 0.0
    hits = 0
    total = 0.0
    for rank, candidate in enumerate(top, start=1):
        if candidate in relevant:
            hits += 1
            total += hits / rank
    return total / min(k, len(relevant))


METRICS: dict[str, Callable[[Sequence[Hashable], Collection[Hashable], int], float]] = {
    "hit": hit_at_k,
    "recall": recall_at_k,
    "map": average_precision_at_k,
}


def mean_metric(
    name: str, rankings: Sequence[Sequence[Hashable]], relevant: Sequence[Collection[Hashable]], k: int
) -> float:
    """Mean of metric ``name`` (``"hit"``, ``"recall"`` or ``"map"``) at ``k`` over queries.

    Raises:
        ValueError: For an unknown metric name, no queries, or rankings and relevant lists of different lengths.
    """
    if name not in METRICS:
        raise ValueError(f"Unknown ranking metric {name!r}; use one of {list(METRICS)}.")
    if len(rankings) != len(relevant):
        raise ValueError(
            f"Got {len(rankings)} rankings but {len(relevant)} relevant-id lists; give one of each per query."
        )
    if not rankings:
        raise ValueError("No queries to score; give at least one ranking.")
    metric = METRICS[name]
    return sum(metric(ranking, positives, k) for ranking, positives in zip(rankings, relevant, strict=True)) / len(
        rankings
    )
