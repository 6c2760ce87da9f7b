"""What the three ranking metric modules share: their ``MetricInfo`` and their compute."""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

from ..ranking import mean_metric

CITATION = """\
@article{wei2023uniir,
  title={UniIR: Training and Benchmarking Universal Multimodal Information Retrievers},
  author={Wei, Cong and Chen, Yang and Chen, Haonan and Hu, Hexiang and Zhang, Ge and Fu, Jie and Ritter, Alan
          and Chen, Wenhu},
  journal={arXiv preprint arXiv:2311.17136},
  year={2023}
}
"""

INPUTS_DESCRIPTION = """
Args:
    predictions: One ranking per query: candidate ids (str or int), best first, each id at most once.
    references: One list of relevant (positive) candidate ids per query, same id type as the predictions.
    k: A positive int, or a list of them; only the first k of each ranking count.
Returns:
    ``{"<metric>@<k>": mean over queries}`` for each k. A query without relevant ids scores 0.
"""


def ranking_metric_info(name: str, description: str) -> Any:
    """``evaluate.MetricInfo`` for a ranking metric; ids may be strings or integers."""
    import datasets
    import evaluate

    features = [
        datasets.Features(
            {
                "predictions": datasets.Sequence(datasets.Value(dtype)),
                "references": datasets.Sequence(datasets.Value(dtype)),
            }
        )
        for dtype in ("string", "int64")
    ]
    return evaluate.MetricInfo(
        module_type="metric",
        description=description,
        citation=CITATION,
        inputs_description=INPUTS_DESCRIPTION,
        features=features,
        reference_urls=["https://github.com/TIGER-AI-Lab/UniIR"],
    )


def compute_ranking_metric(
    name: str,
    predictions: Sequence[Sequence[Hashable]],
    references: Sequence[Sequence[Hashable]],
    k: int | Sequence[int],
) -> dict[str, float]:
    """``{f"{name}@{k}": mean}`` for each k (see :func:`umarvel_st.evaluation.ranking.mean_metric`)."""
    ks = [k] if isinstance(k, int) else list(k)
    return {f"{name}@{value}": mean_metric(name, predictions, references, value) for value in ks}
