"""The code that travels with every saved U-MARVEL model (imports only torch, transformers,
sentence_transformers and its siblings)."""

from __future__ import annotations

from .backbones import BACKBONES, BackboneSpec, get_backbone
from .encoder import UMarvelTransformer
from .instructions import MBEIR_INSTRUCTIONS
from .pooling import InstructionMaskedMeanPooling
from .reranker import RERANK_PROMPT, UMarvelRerankerTransformer

__all__ = [
    "BACKBONES",
    "BackboneSpec",
    "InstructionMaskedMeanPooling",
    "MBEIR_INSTRUCTIONS",
    "RERANK_PROMPT",
    "UMarvelRerankerTransformer",
    "UMarvelTransformer",
    "get_backbone",
]
