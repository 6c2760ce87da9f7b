"""Zero-shot metrics on score matrices (spec section 1.9 and section 2).

Rankings sort by score, highest first; equal scores keep the lower candidate row first (the reference's
``torch.topk`` leaves that order unspecified). Per-query galleries and image-text matching count a tie against the
target: a hit needs a strictly higher score.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..ranking import average_precision_at_k


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Row-wise indices of the ``k`` best columns, best first, ties to the lower index.  # (queries, k)"""
    order = np.argsort(-scores, axis=1, kind="stable")
    return order[:, :k]


def hit_rate_at_k(scores: np.ndarray, positives: Sequence[Sequence[int]], k: int) -> float:
    """Share of queries with any positive among their top ``k`` candidates (the reference's ``recall@k``)."""
    top = top_k(scores, k)
    return float(np.mean([bool(set(row.tolist()) & set(pos)) for row, pos in zip(top, positives, strict=True)]))


def map_at_k(scores: np.ndarray, positives: Sequence[Sequence[int]], k: int) -> float:
    """CIRCO's mAP@k: per query the sum of precision at each relevant rank <= k over ``min(|positives|, k)``."""
    top = top_k(scores, k)
    return float(
        np.mean([average_precision_at_k(row.tolist(), pos, k) for row, pos in zip(top, positives, strict=True)])
    )


def gallery_hit_at_k(scores: np.ndarray, galleries: Sequence[Sequence[int]], k: int) -> float:
    """Share of queries whose target (``gallery[0]``) beats all but fewer than ``k`` of its own gallery.

    The target's rank is 1 + the number of gallery items scoring at least as high (ties count against it).
    """
    hits = []
    for row, gallery in zip(scores, galleries, strict=True):
        values = row[list(gallery)]
        hits.append(1 + int((values[1:] >= values[0]).sum()) <= k)
    return float(np.mean(hits))


def pairwise_accuracy(scores: np.ndarray, galleries: Sequence[Sequence[int]]) -> float:
    """Image-text matching accuracy: share of queries scoring their positive strictly above their negative."""
    return float(np.mean([row[pos] > row[neg] for row, (pos, neg) in zip(scores, galleries, strict=True)]))
