"""umarvel-st: U-MARVEL universal multimodal retrieval embedders on sentence-transformers."""

from __future__ import annotations

from .hub.publish import publish
from .model import from_mllm, load

__all__ = ["from_mllm", "load", "publish"]
__version__ = "0.1.0"
