"""The held-out re-ranker check's metrics (benchmarks/results/ablation_demo/rerank_check.py) on hand-made lists."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "results" / "ablation_demo" / "rerank_check.py"


@pytest.fixture(scope="module")
def check():
    spec = importlib.util.spec_from_file_location("rerank_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_pair_auc_counts_ordered_pairs_and_half_ties(check) -> None:
    positive = np.array([True, False, True, False, False])
    # positives 0.9 and 0.4; negatives 0.5, 0.4, 0.1: 0.9 beats 3, 0.4 beats 1 and ties 1 -> (3 + 1 + 0.5) / 6
    assert check.pair_auc(np.array([0.9, 0.5, 0.4, 0.4, 0.1]), positive) == pytest.approx(4.5 / 6)
    assert check.pair_auc(np.full(5, 0.5), positive) == pytest.approx(0.5)  # a constant score is chance


def test_hit_at_5_looks_only_at_the_first_five_of_the_order(check) -> None:
    positive = np.zeros(8, dtype=bool)
    positive[6] = True
    assert check.hit_at_5(np.arange(8), positive) == 0.0
    assert check.hit_at_5(np.array([7, 6, 0, 1, 2, 3, 4, 5]), positive) == 1.0
