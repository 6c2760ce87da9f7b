"""umarvel-st: U-MARVEL universal multimodal retrieval embedders on sentence-transformers."""

from __future__ import annotations

from .hub.publish import publish
from .model import from_mllm, load
from .reranker import load_reranker, reranker_from_mllm

__all__ = ["from_mllm", "load", "load_reranker", "publish", "reranker_from_mllm"]
__version__ = "0.1.0"
