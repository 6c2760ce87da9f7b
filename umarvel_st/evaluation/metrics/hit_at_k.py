"""``evaluate`` metric module: hit@k of rankings against relevant ids (loads offline, see the package docstring)."""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

import evaluate

from umarvel_st.evaluation.metrics.common import compute_ranking_metric, ranking_metric_info

DESCRIPTION = """1 if any relevant id is among the first k of the ranking, else 0; averaged over queries. This is what M-BEIR and UniIR report as "Recall@k" (UniIR's compute_recall_at_k)."""


class HitAtK(evaluate.Metric):
    """hit@k; compute(predictions=rankings, references=relevant_ids, k=5) returns ``{"hit@5": ...}``."""

    def _info(self) -> Any:
        return ranking_metric_info("hit", DESCRIPTION)

    def _compute(
        self, predictions: Sequence[Sequence[Hashable]], references: Sequence[Sequence[Hashable]], k: Any = 5
    ) -> dict[str, float]:
        return compute_ranking_metric("hit", predictions, references, k)
