"""``evaluate`` metric module: map@k of rankings against relevant ids (loads offline, see the package docstring)."""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

import evaluate

from umarvel_st.evaluation.metrics.common import compute_ranking_metric, ranking_metric_info

DESCRIPTION = """Mean average precision at k as CIRCO reports it: per query, the sum of precision@i over the ranks i <= k holding a relevant id, divided by min(k, number of relevant ids); averaged over queries."""


class MapAtK(evaluate.Metric):
    """map@k; compute(predictions=rankings, references=relevant_ids, k=5) returns ``{"map@5": ...}``."""

    def _info(self) -> Any:
        return ranking_metric_info("map", DESCRIPTION)

    def _compute(
        self, predictions: Sequence[Sequence[Hashable]], references: Sequence[Sequence[Hashable]], k: Any = 5
    ) -> dict[str, float]:
        return compute_ranking_metric("map", predictions, references, k)
