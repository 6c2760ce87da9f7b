"""Backbone registry: what differs between the Qwen-VL families U-MARVEL is built on.

Everything else (formatting, attention, pooling) is shared. A backbone is chosen by ``config.model_type``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class BackboneSpec:
    """Per-family rules of the reference embedding path.

    Attributes:
        sequential_positions: How the reference forms its 1-D positions (the same value on all three M-RoPE
            axes): ``"arange"`` = 0..L-1 over the padded sequence (Qwen2-VL reference, which calls the decoder
            without position ids); ``"cumsum"`` = ``attention_mask.cumsum(-1) - 1`` with pads set to 1 (Qwen3-VL
            reference). RoPE is relative and pads are masked, so both give the same result up to rounding; we
            follow each reference exactly.
        image_backend: The image-processor backend the reference used (``"pil"`` or ``"torchvision"``).
    """

    sequential_positions: Literal["arange", "cumsum"]
    image_backend: Literal["pil", "torchvision"]


BACKBONES: dict[str, BackboneSpec] = {
    "qwen2_vl": BackboneSpec(sequential_positions="arange", image_backend="pil"),
    "qwen2_5_vl": BackboneSpec(sequential_positions="arange", image_backend="pil"),
    "qwen3_vl": BackboneSpec(sequential_positions="cumsum", image_backend="torchvision"),
}


def get_backbone(model_type: str) -> BackboneSpec:
    """Return the rules for ``model_type``.

    Raises:
        ValueError: If the backbone is not supported, with the supported list.
    """
    try:
        return BACKBONES[model_type]
    except KeyError:
        raise ValueError(
            f"Unsupported backbone model_type {model_type!r}. U-MARVEL supports: {sorted(BACKBONES)}. "
            "Load a Qwen2-VL, Qwen2.5-VL or Qwen3-VL checkpoint."
        ) from None
