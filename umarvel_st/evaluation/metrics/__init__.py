"""hit@k, recall@k and mAP@k as ``evaluate`` metric modules that load offline from this package.

Hub-hosted ``evaluate`` metrics need the network; these are plain module files shipped with ``umarvel_st``, so
``evaluate.load`` reads them from disk. Each wraps the single implementation in
:mod:`umarvel_st.evaluation.ranking`.

Example:
    >>> from umarvel_st.evaluation.metrics import load_metric
    >>> hit = load_metric("hit_at_k")  # doctest: +SKIP
    >>> hit.compute(predictions=[["9:3", "9:1"]], references=[["9:1"]], k=1)  # doctest: +SKIP
    {'hit@1': 0.0}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

METRIC_NAMES = ("hit_at_k", "recall_at_k", "map_at_k")


def metric_path(name: str) -> Path:
    """The module file of metric ``name`` (one of :data:`METRIC_NAMES`), for ``evaluate.load``.

    Raises:
        ValueError: For an unknown name (the message lists the known ones).
    """
    if name not in METRIC_NAMES:
        raise ValueError(f"Unknown metric {name!r}; umarvel_st ships {list(METRIC_NAMES)}.")
    return Path(__file__).with_name(f"{name}.py")


def load_metric(name: str, **kwargs: Any) -> Any:
    """``evaluate.load`` one of our metric modules from disk (no network).

    Args:
        name: ``"hit_at_k"``, ``"recall_at_k"`` or ``"map_at_k"``.
        **kwargs: Passed to ``evaluate.load`` (e.g. ``keep_in_memory=True``).

    Returns:
        An ``evaluate.EvaluationModule``; call ``.compute(predictions=..., references=..., k=...)``.
    """
    import evaluate

    return evaluate.load(str(metric_path(name)), **kwargs)
