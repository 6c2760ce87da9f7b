"""Tiny offline backbones for tests and benchmarks.

Tests must never download a checkpoint, yet the code under test loads real Hugging Face folders through
``AutoModel`` / ``AutoProcessor`` / sentence-transformers. :func:`build_tiny_backbone` therefore writes a
complete, seeded, random checkpoint folder (config, float32 safetensors, a locally trained byte-level BPE
tokenizer with the Qwen special tokens, image and video processor configs, chat template) for each supported
Qwen-VL family, small enough that a forward pass takes milliseconds.

The per-family differences (config classes, processor classes, chat template, special tokens, patch size)
live in one registry, :data:`BACKBONES`, so the build logic exists once.

This module must not import pytest: benchmarks and other packages' tests use it too.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import PIL.Image

logger = logging.getLogger(__name__)

__all__ = [
    "BLOCK_UMARVEL_ST",
    "BACKBONES",
    "QWEN2_VL_CHAT_TEMPLATE",
    "QWEN3_VL_CHAT_TEMPLATE",
    "QWEN_VL_SPECIAL_TOKENS",
    "SIZES",
    "UMARVEL_TOKENS",
    "UMARVEL_TOKEN_ID_KEYS",
    "BackboneSpec",
    "build_tiny_backbone",
    "install_in_hub_cache",
    "make_test_image",
]

#: The three tokens U-MARVEL adds to the tokenizer, as ordinary (non-special) tokens, in this order.
UMARVEL_TOKENS: tuple[str, ...] = ("<emb>", "<instruction_start>", "<instruction_end>")

#: ``config.json`` keys that record the ids of :data:`UMARVEL_TOKENS`, in the same order.
UMARVEL_TOKEN_ID_KEYS: tuple[str, ...] = ("emb_token_id", "instruction_start_token_id", "instruction_end_token_id")

#: The 14 special tokens of the Qwen2-VL tokenizer, in the order (and so with the relative ids) they have there.
QWEN_VL_SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

#: Ordinary (non-special) added tokens that follow the specials in the Qwen2.5-VL tokenizer.
QWEN2_5_VL_EXTRA_TOKENS: tuple[str, ...] = (
    "<tool_call>",
    "</tool_call>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
)

#: Qwen3-VL adds tool-response and thinking markers after the Qwen2.5-VL ones.
QWEN3_VL_EXTRA_TOKENS: tuple[str, ...] = QWEN2_5_VL_EXTRA_TOKENS + (
    "<tool_response>",
    "</tool_response>",
    "<think>",
    "</think>",
)

#: Qwen2-VL / Qwen2.5-VL chat template: injects "You are a helpful assistant." when the first turn is not a
#: system turn. Identical to the official Qwen2-VL-Instruct template.
QWEN2_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

#: Qwen3-VL-Instruct chat template without its tool-calling branches: no default system turn, content items
#: rendered the same way as Qwen2-VL, ``<|im_start|>assistant\n`` as the generation prompt.
QWEN3_VL_CHAT_TEMPLATE = (
    "{%- set image_count = namespace(value=0) %}{%- set video_count = namespace(value=0) %}"
    "{%- macro render_content(content, do_vision_count) %}"
    "{%- if content is string %}{{- content }}"
    "{%- else %}{%- for item in content %}"
    "{%- if 'image' in item or 'image_url' in item or item.type == 'image' %}"
    "{%- if do_vision_count %}{%- set image_count.value = image_count.value + 1 %}{%- endif %}"
    "{%- if add_vision_id %}Picture {{ image_count.value }}: {% endif -%}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{%- elif 'video' in item or item.type == 'video' %}"
    "{%- if do_vision_count %}{%- set video_count.value = video_count.value + 1 %}{%- endif %}"
    "{%- if add_vision_id %}Video {{ video_count.value }}: {% endif -%}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{%- elif 'text' in item %}{{- item.text }}{%- endif %}"
    "{%- endfor %}{%- endif %}"
    "{%- endmacro %}"
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message.role + '\\n' }}"
    "{{- render_content(message.content, message.role != 'system') }}"
    "{{- '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

#: Built-in corpus the tokenizer is trained on: short captions and retrieval-style queries.
_CORPUS: tuple[str, ...] = (
    "A photo of a dog running on the beach with a red ball.",
    "Two cats sleeping on a sofa next to a window.",
    "A man riding a bicycle down a busy city street.",
    "Find me an everyday image that matches the given caption.",
    "Retrieve passages from Wikipedia that provide answers to the following question.",
    "Identify the news-related image in line with the described event.",
    "Based on the following fashion description, retrieve the best matching image.",
    "Summarize above image and sentence in one word:",
    "Summarize above sentence in one word:",
    "A woman in a blue dress standing in front of a building.",
    "The train arrives at the station in the morning.",
    "A bowl of fresh fruit with apples, oranges and bananas.",
    "Children playing football in a green park on a sunny day.",
    "What is the name of the bridge shown in this picture?",
    "An old wooden boat floating on a calm lake at sunset.",
    "A plate of pasta with tomato sauce and basil leaves.",
    "The mountain is covered with snow and the sky is clear.",
    "A group of people waiting for the bus in the rain.",
    "Show me a similar shirt with a striped pattern and short sleeves.",
    "Is this image taken during the day or at night?",
    "A black and white photograph of an old street market.",
    "The quick brown fox jumps over the lazy dog.",
    "A kitchen with white cabinets, a stove and a large window.",
    "Two birds sitting on a branch of a tree in winter.",
    "A red car parked next to a yellow house.",
    "The painting shows a woman holding a flower.",
    "Scientists discover a new species of frog in the rain forest.",
    "The city council approved the new budget on Tuesday.",
    "A close-up image of a sandwich with cheese and ham.",
    "Players celebrate after winning the championship final.",
    "An aerial view of a river winding through green hills.",
    "A laptop, a cup of coffee and a notebook on a desk.",
)


@dataclass(frozen=True)
class BackboneSpec:
    """What differs between the supported Qwen-VL families.

    Attributes:
        model_class: ``transformers`` class saved as the checkpoint's architecture.
        config_class: Top-level config class.
        processor_class: Multimodal processor class.
        image_processor_class: Image processor class (the torchvision backend; the PIL one shares its
            ``image_processor_type`` on disk and is picked at load time with ``backend="pil"``).
        video_processor_class: Video processor class.
        chat_template: Jinja chat template shared by tokenizer and processor.
        extra_tokens: Ordinary added tokens that follow the 14 Qwen-VL special tokens.
        patch_size: Vision patch size; the image side is resized to multiples of ``patch_size * 2``.
        image_mean: Per-channel normalisation mean of the image and video processors.
        image_std: Per-channel normalisation std of the image and video processors.
        mrope_fractions: M-RoPE section (temporal, height, width) of the real checkpoint, in units of
            ``head_dim / 16``; scaled to the tiny head dim.
        rope_theta: RoPE base of the real checkpoint's decoder.
        mrope_interleaved: Whether M-RoPE interleaves the (t, h, w) frequencies (Qwen3-VL) instead of
            concatenating the three sections (Qwen2-VL, Qwen2.5-VL).
        tie_word_embeddings: Whether ``lm_head`` shares the input embedding matrix (as in Qwen3-VL-4B).
    """

    model_class: str
    config_class: str
    processor_class: str
    image_processor_class: str
    video_processor_class: str
    chat_template: str
    extra_tokens: tuple[str, ...]
    patch_size: int
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]
    mrope_fractions: tuple[int, int, int]
    rope_theta: float = 1_000_000.0
    mrope_interleaved: bool = False
    tie_word_embeddings: bool = False


_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

#: Registry of supported backbones, keyed by ``config.model_type``.
BACKBONES: dict[str, BackboneSpec] = {
    "qwen2_vl": BackboneSpec(
        model_class="Qwen2VLForConditionalGeneration",
        config_class="Qwen2VLConfig",
        processor_class="Qwen2VLProcessor",
        image_processor_class="Qwen2VLImageProcessor",
        video_processor_class="Qwen2VLVideoProcessor",
        chat_template=QWEN2_VL_CHAT_TEMPLATE,
        extra_tokens=(),
        patch_size=14,
        image_mean=_CLIP_MEAN,
        image_std=_CLIP_STD,
        mrope_fractions=(2, 3, 3),
    ),
    "qwen2_5_vl": BackboneSpec(
        model_class="Qwen2_5_VLForConditionalGeneration",
        config_class="Qwen2_5_VLConfig",
        processor_class="Qwen2_5_VLProcessor",
        image_processor_class="Qwen2VLImageProcessor",
        video_processor_class="Qwen2VLVideoProcessor",
        chat_template=QWEN2_VL_CHAT_TEMPLATE,
        extra_tokens=QWEN2_5_VL_EXTRA_TOKENS,
        patch_size=14,
        image_mean=_CLIP_MEAN,
        image_std=_CLIP_STD,
        mrope_fractions=(2, 3, 3),
    ),
    "qwen3_vl": BackboneSpec(
        model_class="Qwen3VLForConditionalGeneration",
        config_class="Qwen3VLConfig",
        processor_class="Qwen3VLProcessor",
        image_processor_class="Qwen2VLImageProcessor",
        video_processor_class="Qwen3VLVideoProcessor",
        chat_template=QWEN3_VL_CHAT_TEMPLATE,
        extra_tokens=QWEN3_VL_EXTRA_TOKENS,
        patch_size=16,
        image_mean=(0.5, 0.5, 0.5),
        image_std=(0.5, 0.5, 0.5),
        mrope_fractions=(4, 2, 2),
        rope_theta=5_000_000.0,
        mrope_interleaved=True,
        tie_word_embeddings=True,
    ),
}

#: Model sizes: text decoder dimensions and vision tower dimensions.
SIZES: dict[str, dict[str, int]] = {
    "tiny": {
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "intermediate_size": 128,
        "vision_depth": 2,
        "vision_hidden_size": 32,
        "vision_intermediate_size": 64,
        "vision_num_heads": 4,
    },
    "small": {
        "hidden_size": 512,
        "num_hidden_layers": 4,
        "num_attention_heads": 8,
        "num_key_value_heads": 4,
        "intermediate_size": 1024,
        "vision_depth": 2,
        "vision_hidden_size": 64,
        "vision_intermediate_size": 128,
        "vision_num_heads": 4,
    },
}

_BPE_VOCAB_SIZE = 400


@contextlib.contextmanager
def _transformers_progress_bars_disabled() -> Iterator[None]:
    """Hide transformers' "Writing model shards" bar for one tiny save, then restore the previous setting."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _check_choice(name: str, value: str, allowed: dict[str, Any]) -> None:
    if value not in allowed:
        raise ValueError(f"Unsupported {name} {value!r}. Supported: {list(allowed)}; pass one of these.")


def _train_bpe(vocab_size: int = _BPE_VOCAB_SIZE) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Train a byte-level BPE with Qwen2's pre-tokenizer on the built-in corpus.

    Returns:
        The vocabulary (token -> id) and the ordered merges.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
        show_progress=False,
    )
    tokenizer.train_from_iterator(list(_CORPUS), trainer=trainer)
    model = json.loads(tokenizer.to_str())["model"]
    assert len(model["vocab"]) == vocab_size, "the built-in corpus is too small for the requested vocab size"
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return dict(model["vocab"]), merges


def _build_tokenizer(spec: BackboneSpec, with_umarvel_tokens: bool) -> Any:
    """Build the Qwen2 tokenizer: trained BPE, then the specials, extras and optional U-MARVEL tokens."""
    from tokenizers import AddedToken
    from transformers import Qwen2Tokenizer

    vocab, merges = _train_bpe()
    next_id = len(vocab)
    added: dict[int, AddedToken] = {}
    for token in QWEN_VL_SPECIAL_TOKENS:
        added[next_id] = AddedToken(token, special=True, normalized=False)
        next_id += 1
    for token in spec.extra_tokens + (UMARVEL_TOKENS if with_umarvel_tokens else ()):
        added[next_id] = AddedToken(token, special=False, normalized=False)
        next_id += 1
    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=None,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        added_tokens_decoder=added,
        extra_special_tokens=list(QWEN_VL_SPECIAL_TOKENS[1:]),
        padding_side="left",
        model_max_length=32768,
        clean_up_tokenization_spaces=False,
        errors="replace",
        split_special_tokens=False,
    )
    tokenizer.chat_template = spec.chat_template
    return tokenizer


def _build_config(spec: BackboneSpec, model_type: str, dims: dict[str, int], token_ids: dict[str, int]) -> Any:
    """Build the top-level config with the tiny text and vision sub-configs and the tokenizer's ids."""
    import transformers

    head_dim = dims["hidden_size"] // dims["num_attention_heads"]
    assert head_dim % 16 == 0, f"head_dim {head_dim} must be a multiple of 16 to scale mrope_section"
    unit = head_dim // 16  # mrope_fractions are in sixteenths of head_dim, i.e. eighths of head_dim / 2
    rope: dict[str, Any] = {
        "rope_type": "default",
        "rope_theta": spec.rope_theta,
        "mrope_section": [f * unit for f in spec.mrope_fractions],  # sums to head_dim / 2
    }
    if spec.mrope_interleaved:
        rope["mrope_interleaved"] = True
    text_config: dict[str, Any] = {
        "vocab_size": token_ids["vocab_size"],
        "hidden_size": dims["hidden_size"],
        "intermediate_size": dims["intermediate_size"],
        "num_hidden_layers": dims["num_hidden_layers"],
        "num_attention_heads": dims["num_attention_heads"],
        "num_key_value_heads": dims["num_key_value_heads"],
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-6,
        "rope_parameters": rope,
        "bos_token_id": token_ids["bos_token_id"],
        "eos_token_id": token_ids["eos_token_id"],
        "pad_token_id": token_ids["pad_token_id"],
        "tie_word_embeddings": spec.tie_word_embeddings,
    }
    vision_config: dict[str, Any] = {
        "depth": dims["vision_depth"],
        "num_heads": dims["vision_num_heads"],
        "patch_size": spec.patch_size,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "in_channels": 3,
    }
    if model_type == "qwen2_vl":
        text_config["max_window_layers"] = dims["num_hidden_layers"]
        vision_config.update(
            embed_dim=dims["vision_hidden_size"],
            mlp_ratio=dims["vision_intermediate_size"] // dims["vision_hidden_size"],
            hidden_size=dims["hidden_size"],
        )
    else:
        vision_config.update(
            hidden_size=dims["vision_hidden_size"],
            intermediate_size=dims["vision_intermediate_size"],
            out_hidden_size=dims["hidden_size"],
        )
    if model_type == "qwen2_5_vl":
        text_config["max_window_layers"] = dims["num_hidden_layers"]
        vision_config.update(window_size=112, fullatt_block_indexes=[dims["vision_depth"] - 1], tokens_per_second=2)
    if model_type == "qwen3_vl":
        text_config["head_dim"] = head_dim
        vision_config.update(num_position_embeddings=64, deepstack_visual_indexes=list(range(dims["vision_depth"])))

    config_class = getattr(transformers, spec.config_class)
    # bos/eos/pad live in text_config; they are repeated at the top level, where generic code looks for them.
    extra_ids = {k: v for k, v in token_ids.items() if k.endswith("_token_id")}
    return config_class(
        text_config=text_config,
        vision_config=vision_config,
        tie_word_embeddings=spec.tie_word_embeddings,
        architectures=[spec.model_class],
        dtype="float32",
        **extra_ids,
    )


def _build_processor(spec: BackboneSpec, tokenizer: Any) -> Any:
    """Build the multimodal processor with small pixel budgets (4 to 16 merged-patch tokens per image)."""
    import transformers

    factor = spec.patch_size * 2
    size = {"shortest_edge": 4 * factor * factor, "longest_edge": 16 * factor * factor}
    common = {
        "size": size,
        "patch_size": spec.patch_size,
        "temporal_patch_size": 2,
        "merge_size": 2,
        "image_mean": list(spec.image_mean),
        "image_std": list(spec.image_std),
    }
    image_processor = getattr(transformers, spec.image_processor_class)(**common)
    video_processor = getattr(transformers, spec.video_processor_class)(**common, cap_pixels_per_frame=True)
    processor_class = getattr(transformers, spec.processor_class)
    return processor_class(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=spec.chat_template,
    )


def build_tiny_backbone(
    model_type: str,
    output_dir: str | Path,
    *,
    seed: int = 0,
    size: str = "tiny",
    with_umarvel_tokens: bool = False,
) -> Path:
    """Write a complete, random, offline Qwen-VL checkpoint folder.

    The folder holds ``config.json``, ``generation_config.json``, float32 ``model.safetensors``, the
    tokenizer (byte-level BPE trained locally on a built-in corpus, 400 tokens, then the 14 Qwen-VL special
    tokens in Qwen's order and the family's ordinary added tokens), the image / video processor configs and the
    chat template. ``transformers.AutoModel``, ``AutoModelForImageTextToText``, ``AutoProcessor`` and
    ``sentence_transformers.base.modules.Transformer`` load it without network access.

    Args:
        model_type: ``config.model_type`` of the backbone, one of ``"qwen2_vl"``, ``"qwen2_5_vl"`` and
            ``"qwen3_vl"`` (see :data:`BACKBONES`).
        output_dir: Folder to write; created if missing. Existing files with the same names are overwritten.
        seed: Seed for ``torch.manual_seed`` before the weights are initialised. The same seed gives
            byte-identical weights; the tokenizer does not depend on the seed.
        size: ``"tiny"`` (hidden 64, 2 layers, about 210k parameters, under 1 MB) for tests, or ``"small"`` (hidden 512,
            4 layers) for speed benchmarks. See :data:`SIZES`.
        with_umarvel_tokens: Also add ``<emb>``, ``<instruction_start>`` and ``<instruction_end>`` as ordinary
            (non-special) tokens, in that order, and record their ids in ``config.json`` as ``emb_token_id``,
            ``instruction_start_token_id`` and ``instruction_end_token_id``.

    Returns:
        The checkpoint folder, as a ``Path``.

    Raises:
        ValueError: If ``model_type`` or ``size`` is not supported.

    Example:
        >>> from umarvel_st.testing import build_tiny_backbone
        >>> path = build_tiny_backbone("qwen2_vl", "tiny-qwen2vl", with_umarvel_tokens=True)  # doctest: +SKIP
    """
    _check_choice("model_type", model_type, BACKBONES)
    _check_choice("size", size, SIZES)
    import torch
    import transformers

    spec = BACKBONES[model_type]
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)

    tokenizer = _build_tokenizer(spec, with_umarvel_tokens)
    token_ids = {
        "vocab_size": len(tokenizer),
        "bos_token_id": tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "image_token_id": tokenizer.convert_tokens_to_ids("<|image_pad|>"),
        "video_token_id": tokenizer.convert_tokens_to_ids("<|video_pad|>"),
        "vision_start_token_id": tokenizer.convert_tokens_to_ids("<|vision_start|>"),
        "vision_end_token_id": tokenizer.convert_tokens_to_ids("<|vision_end|>"),
    }
    if with_umarvel_tokens:
        for key, token in zip(UMARVEL_TOKEN_ID_KEYS, UMARVEL_TOKENS, strict=True):
            token_ids[key] = tokenizer.convert_tokens_to_ids(token)
    config = _build_config(spec, model_type, SIZES[size], token_ids)

    # Seed a forked RNG so the caller's global torch RNG state is left as it was.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = getattr(transformers, spec.model_class)(config)
    model = model.to(torch.float32).eval()
    with _transformers_progress_bars_disabled():
        model.save_pretrained(output_dir)
    _build_processor(spec, tokenizer).save_pretrained(output_dir)
    logger.info(
        "Built %s %s backbone (%d parameters, seed %d) in %s",
        size,
        model_type,
        sum(p.numel() for p in model.parameters()),
        seed,
        output_dir,
    )
    return output_dir


def make_test_image(width: int, height: int, *, seed: int = 0, mode: str = "RGB") -> PIL.Image.Image:
    """Make a seeded random-noise PIL image.

    Args:
        width: Image width in pixels.
        height: Image height in pixels.
        seed: Seed of the ``numpy`` generator; the same arguments give the same pixels.
        mode: PIL mode, ``"RGB"``, ``"RGBA"`` or ``"L"``.

    Returns:
        The image, ``width`` x ``height``, in ``mode``.

    Raises:
        ValueError: If ``mode`` is not supported.
    """
    import numpy as np
    from PIL import Image

    channels = {"RGB": 3, "RGBA": 4, "L": 1}
    _check_choice("mode", mode, channels)
    pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width, channels[mode]), dtype=np.uint8)
    return Image.fromarray(pixels[..., 0] if mode == "L" else pixels)


def install_in_hub_cache(model_dir: str | Path, hub_cache: str | Path, repo_id: str = "org/u-marvel") -> Path:
    """Lay a saved model folder out as a snapshot in a local Hugging Face cache, to load it by Hub id offline.

    The layout is the one ``huggingface_hub`` reads: ``<hub_cache>/models--<org>--<name>/snapshots/<revision>/``
    holds the files (plain copies, no blobs) and ``refs/main`` names the revision. Point ``HF_HUB_CACHE`` at
    ``hub_cache`` and set ``HF_HUB_OFFLINE=1``, then load ``repo_id`` as if it had been downloaded.

    Args:
        model_dir: A saved model folder (e.g. from ``SentenceTransformer.save``).
        hub_cache: The cache root (what ``HF_HUB_CACHE`` will be); created if missing.
        repo_id: The Hub id to load it by, ``"<org>/<name>"``.

    Returns:
        The snapshot folder. Its name, the revision, is a SHA-1 of the files' paths and bytes, so the same folder
        gets the same revision.

    Raises:
        ValueError: If ``repo_id`` is not ``"<org>/<name>"`` or ``model_dir`` is not a folder.
    """
    import hashlib
    import shutil

    org, _, name = repo_id.partition("/")
    if not org or not name or "/" in name:
        raise ValueError(f"repo_id must look like 'org/name', got {repo_id!r}.")
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ValueError(f"model_dir {str(model_dir)!r} is not a folder; pass the folder a model was saved to.")
    digest = hashlib.sha1()
    for file in sorted(path for path in model_dir.rglob("*") if path.is_file()):
        digest.update(file.relative_to(model_dir).as_posix().encode() + b"\0" + file.read_bytes())
    revision = digest.hexdigest()
    repo_root = Path(hub_cache) / f"models--{org}--{name}"
    snapshot = repo_root / "snapshots" / revision
    shutil.copytree(model_dir, snapshot, dirs_exist_ok=True)
    (repo_root / "refs").mkdir(exist_ok=True)
    (repo_root / "refs" / "main").write_text(revision)
    return snapshot


#: Python source to put first in a subprocess script: it makes every ``umarvel_st`` import fail, so the script shows
#: what works with only sentence-transformers installed (a saved model, a published card).
BLOCK_UMARVEL_ST = """
import importlib.abc
import sys


class BlockUmarvel(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "umarvel_st" or name.startswith("umarvel_st."):
            raise ImportError(f"{name} is blocked: this must run without umarvel_st")
        return None


sys.meta_path.insert(0, BlockUmarvel())
"""
