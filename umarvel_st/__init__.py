"""umarvel-st: U-MARVEL universal multimodal retrieval embedders on sentence-transformers.

The public functions are imported on first use, so ``import umarvel_st`` (and every ``umarvel`` command's first
output) does not wait for torch and sentence-transformers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .hub.publish import publish
    from .model import from_mllm, load, open_model
    from .reranker import load_reranker, reranker_from_mllm
    from .retrieve import retrieve_and_rerank

# public name -> the module that defines it
_EXPORTS = {
    "from_mllm": ".model",
    "load": ".model",
    "open_model": ".model",
    "publish": ".hub.publish",
    "reranker_from_mllm": ".reranker",
    "load_reranker": ".reranker",
    "retrieve_and_rerank": ".retrieve",
}

__all__ = ["from_mllm", "load", "load_reranker", "open_model", "publish", "reranker_from_mllm", "retrieve_and_rerank"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'umarvel_st' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
