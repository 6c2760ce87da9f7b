"""Shared test fixtures.

The test session runs offline: ``HF_HUB_OFFLINE=1`` is set before anything imports ``huggingface_hub``, so an
accidental download fails loudly instead of silently fetching a checkpoint.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from umarvel_st.testing import build_tiny_backbone  # noqa: E402


@pytest.fixture(scope="session")
def tiny_backbone_factory(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """Build tiny offline backbones once per session and hand out their folders.

    Call it as ``tiny_backbone_factory("qwen2_vl", with_umarvel_tokens=True)``; folders are cached per
    ``(model_type, with_umarvel_tokens)`` (seed 0, size ``"tiny"``). They are shared by every test: load from
    them, never write into them (save to your own ``tmp_path`` instead).
    """
    root = tmp_path_factory.mktemp("tiny_backbones")
    cache: dict[tuple[str, bool], Path] = {}

    def factory(model_type: str = "qwen2_vl", *, with_umarvel_tokens: bool = False) -> Path:
        key = (model_type, with_umarvel_tokens)
        if key not in cache:
            name = f"{model_type}-umarvel" if with_umarvel_tokens else model_type
            cache[key] = build_tiny_backbone(model_type, root / name, with_umarvel_tokens=with_umarvel_tokens)
        return cache[key]

    return factory
