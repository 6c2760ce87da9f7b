"""``evaluate`` metric module: recall@k of rankings against relevant ids (loads offline, see the package docstring)."""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

import evaluate

from umarvel_st.evaluation.metrics.common import compute_ranking_metric, ranking_metric_info

DESCRIPTION = """The fraction of a query's relevant ids found among the first k of its ranking; averaged over queries (textbook recall, not M-BEIR's "Recall@k", which is hit@k)."""


class RecallAtK(evaluate.Metric):
    """recall@k; compute(predictions=rankings, references=relevant_ids, k=5) returns ``{"recall@5": ...}``."""

    def _info(self) -> Any:
        return ranking_metric_info("recall", DESCRIPTION)

    def _compute(
        self, predictions: Sequence[Sequence[Hashable]], references: Sequence[Sequence[Hashable]], k: Any = 5
    ) -> dict[str, float]:
        return compute_ranking_metric("recall", predictions, references, k)
