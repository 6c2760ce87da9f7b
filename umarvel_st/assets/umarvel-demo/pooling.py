"""Masked mean pooling over the tokens the U-MARVEL reference averages."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from sentence_transformers.base.modules import Module

from .remote_code import copy_source


class InstructionMaskedMeanPooling(Module):
    """Mean of ``token_embeddings`` over ``pooling_mask`` (non-pad tokens outside the instruction span).

    System prompt, role tokens, image tokens, suffix, ``<emb>`` and the generation prompt are all averaged, as in
    the reference. Set ``pool_instruction=True`` to average the instruction span as well (the plain-ST
    behaviour; it moves the official model's embeddings by about 0.1).

    Args:
        pool_instruction: Also average the instruction tokens (uses ``attention_mask`` instead).
    """

    config_keys: list[str] = ["pool_instruction"]

    def __init__(self, pool_instruction: bool = False) -> None:
        super().__init__()
        self.pool_instruction = pool_instruction

    def forward(self, features: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        tokens = features["token_embeddings"]  # (batch, seq, hidden)
        mask = features["attention_mask"] if self.pool_instruction else features["pooling_mask"]
        mask = mask.unsqueeze(-1).to(torch.float32)  # (batch, seq, 1)
        summed = (tokens.to(torch.float32) * mask).sum(1)  # (batch, hidden)
        embedding = summed / mask.sum(1).clamp(min=1)  # (batch, hidden)
        features["sentence_embedding"] = embedding.to(tokens.dtype)
        return features

    def save(self, output_path: str, *args: Any, **kwargs: Any) -> None:
        """Save the config in this module's folder and the source files in the model root (``remote_code.py``)."""
        self.save_config(output_path)
        copy_source(__file__, Path(output_path).parent)  # types resolve from the root, not the module's folder

    @classmethod
    def load(cls, model_name_or_path: str, **kwargs: Any) -> InstructionMaskedMeanPooling:
        keys = ("subfolder", "token", "cache_folder", "revision", "local_files_only")
        config = cls.load_config(model_name_or_path, **{key: kwargs[key] for key in keys if key in kwargs})
        return cls(**{key: value for key, value in config.items() if key in cls.config_keys})
