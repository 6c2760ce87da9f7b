"""Zero-shot metrics on hand-computed score matrices."""

from __future__ import annotations

import numpy as np
import pytest

from umarvel_st.data.zeroshot.readers import ZeroShotData
from umarvel_st.evaluation.zeroshot import metrics, runner
from umarvel_st.evaluation.zeroshot.tasks import TASKS


def test_hit_rate_counts_any_positive_in_the_top_k() -> None:
    scores = np.array([[0.9, 0.1, 0.5], [0.2, 0.8, 0.3]])
    positives = [[2], [0]]
    assert metrics.hit_rate_at_k(scores, positives, 1) == 0.0
    assert metrics.hit_rate_at_k(scores, positives, 2) == 0.5  # query 0: {0, 2}; query 1: {1, 2}
    assert metrics.hit_rate_at_k(scores, positives, 3) == 1.0


def test_circo_ap_at_5_with_several_positives() -> None:
    # Query 0 ranks a(0) x(4) b(1) y(5) c(2) d(3); positives a, b, c, d (4 of them).
    # P@1 = 1, P@3 = 2/3, P@5 = 3/5 -> AP@5 = (1 + 2/3 + 3/5) / min(4, 5) = 0.5667.
    # Query 1 has one positive at rank 2 -> AP@5 = (1/2) / min(1, 5) = 0.5.
    scores = np.array([[0.9, 0.7, 0.5, 0.1, 0.8, 0.6], [0.9, 0.8, 0.1, 0.2, 0.3, 0.4]])
    positives = [[0, 1, 2, 3], [1]]
    expected = ((1 + 2 / 3 + 3 / 5) / 4 + 0.5) / 2
    assert metrics.map_at_k(scores, positives, 5) == pytest.approx(expected)
    # With 6 positives the denominator is k = 5, not 6.
    assert metrics.map_at_k(scores[:1], [[0, 1, 2, 3, 4, 5]], 5) == pytest.approx(1.0)


def test_itm_accuracy_counts_ties_as_misses() -> None:
    scores = np.array([[0.5, 0.5], [0.7, 0.2], [0.1, 0.3]])
    assert metrics.pairwise_accuracy(scores, [[0, 1]] * 3) == pytest.approx(1 / 3)
    # Through the runner: image i against its texts 2i (positive) and 2i + 1 (negative) only.
    texts = np.eye(6)
    images = np.array([[0.5, 0.5, 9, 9, 9, 9], [9, 9, 0.7, 0.2, 9, 9], [9, 9, 9, 9, 0.1, 0.3]])
    data = ZeroShotData([], [], galleries=[[0, 1], [2, 3], [4, 5]])
    assert runner.score_task(TASKS["ccneg"], images, texts, data)[1] == {"accuracy": pytest.approx(1 / 3)}


def test_genecis_ranks_the_target_within_its_own_gallery_only() -> None:
    # Pool of 5 candidates; query 1's best pool candidate (0) is outside its gallery and does not count.
    scores = np.array(
        [
            [0.2, 0.1, 0.9, 0.3, 0.5],  # gallery [2, 0, 4]: target 2 is best -> R@1 hit
            [1.0, 0.4, 0.0, 0.6, 0.0],  # gallery [1, 3]: 3 beats the target -> R@1 miss, R@2 hit
            [0.0, 0.5, 0.5, 0.0, 0.0],  # gallery [1, 2]: a tie counts against the target
        ]
    )
    galleries = [[2, 0, 4], [1, 3], [1, 2]]
    assert metrics.gallery_hit_at_k(scores, galleries, 1) == pytest.approx(1 / 3)
    assert metrics.gallery_hit_at_k(scores, galleries, 2) == pytest.approx(1.0)


@pytest.mark.parametrize("block", [1024, 3])
def test_flickr_five_captions_per_image_in_both_directions(block: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner, "QUERY_BLOCK", block)  # scoring in blocks of query rows gives the same numbers
    # 10 captions, 2 images; caption j belongs to image j // 5.
    scores = np.zeros((10, 2))
    scores[np.arange(10), np.arange(10) // 5] = 1.0  # every caption prefers its own image
    scores[3] = [0.0, 1.0]  # caption 3 (image 0) prefers image 1 -> t2i miss
    scores[:, 1] *= 0.5
    scores[7, 1] = 0.9  # image 1's best caption is 7, one of its five
    scores[3, 1] = 0.95  # image 1 ranks caption 3 (image 0's) first...
    data = ZeroShotData([], [], positives=[[j // 5] for j in range(10)])
    # Candidate embeddings = the identity, so query embeddings = the score rows.
    numbers, reported = runner.score_task(TASKS["flickr30k"], scores, np.eye(2), data)
    assert reported["t2i"] == pytest.approx(0.9)
    # image 0's best caption is one of 0..4; image 1's best is caption 3 (not one of 5..9) -> i2t R@1 = 1/2
    assert reported["i2t"] == pytest.approx(0.5)
    assert numbers["i2t_r@5"] == pytest.approx(1.0)
