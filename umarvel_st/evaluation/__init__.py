"""Evaluation: ranking metrics (also as offline ``evaluate`` modules), exact sharded search, the M-BEIR evaluator
and its reports.

Heavy optional dependencies (faiss, evaluate, datasets, matplotlib) are imported only by the functions that use
them.
"""

from __future__ import annotations

from .embeddings import EmbeddingStore, encode_to_store
from .mbeir_evaluator import MBEIREvaluator
from .ranking import average_precision_at_k, hit_at_k, mean_metric, recall_at_k
from .report import write_report
from .search import exact_search, search_shards

__all__ = [
    "EmbeddingStore",
    "MBEIREvaluator",
    "average_precision_at_k",
    "encode_to_store",
    "exact_search",
    "hit_at_k",
    "mean_metric",
    "recall_at_k",
    "search_shards",
    "write_report",
]
