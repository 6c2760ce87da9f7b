"""The U-MARVEL encoder: a sentence-transformers ``Transformer`` that embeds exactly as the reference does.

Why this module overrides ``preprocess`` and ``forward`` instead of using the stock Transformer paths:

* **Inputs.** U-MARVEL does not use a system prompt for instructions (ST's default for chat models); it puts the
  instruction inside the user turn between ``<instruction_start>`` and ``<instruction_end>``, formats the text,
  appends a "Summarize above ..." suffix and an ``<emb>.`` assistant turn, and pre-resizes images to
  multiples of 28. So the module renders the chat itself.
* **Attention.** The official weights were trained with *bidirectional* attention over non-pad tokens, while the
  Qwen-VL decoders are causal. transformers skips materialising a padding-free mask (and then falls back to
  causal), so the module builds an explicit 4-D bidirectional mask for every batch and also marks each decoder
  attention layer non-causal (per instance, for attention kernels that only read ``is_causal``).
* **Positions.** The official weights were trained with plain 1-D positions on all three M-RoPE axes, not
  Qwen-VL's 2-D image positions: the module passes them explicitly (``position_mode="sequential"``).
* **No DeepStack, no logits.** Image features are merged into the token embeddings here and the language model
  is called directly: Qwen3-VL's DeepStack features are computed by its vision tower and discarded, as in the
  reference, and the vocabulary projection never runs.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

import torch
from sentence_transformers.base.modules import Transformer
from transformers import AutoImageProcessor
from transformers.masking_utils import create_bidirectional_mask

from .backbones import get_backbone
from .inputs import (
    EMB_TOKEN,
    INSTRUCTION_END,
    INSTRUCTION_START,
    MAX_PIXELS,
    MIN_PIXELS,
    UMARVEL_TOKENS,
    Item,
    normalize_item,
    prepare_image,
    user_text,
)
from .remote_code import copy_source

logger = logging.getLogger(__name__)

PositionMode = Literal["sequential", "mrope"]
ImageBackend = Literal["pil", "torchvision"]


class UMarvelTransformer(Transformer):
    """Qwen-VL backbone that turns items into U-MARVEL token embeddings (pool them with
    :class:`~umarvel_st.modeling.pooling.InstructionMaskedMeanPooling`).

    Every option below is saved in ``sentence_bert_config.json`` and restored on load.

    Args:
        model_name_or_path: A Qwen2-VL, Qwen2.5-VL or Qwen3-VL checkpoint (local folder or Hub id).
        summarize_suffix: Append "Summarize above ... in one word: " to the user text (on at inference and in
            recipe stages 1-3, off in stages 4-5).
        generation_prompt: End the chat with the assistant generation prompt (on for inference, as the reference
            evaluation; off for training, as the reference training).
        min_pixels: Lower pixel budget of the factor-28 image pre-resize.
        max_pixels: Upper pixel budget of the factor-28 image pre-resize (300*28*28 by default; 224*224 in stage 5).
        position_mode: ``"sequential"`` 1-D positions as the official weights were trained, or ``"mrope"`` for
            Qwen-VL's native multimodal rotary positions.
        image_backend: Image-processor backend; ``None`` picks the reference's (PIL for Qwen2-VL, torchvision for
            Qwen3-VL).
        **kwargs: Passed to :class:`sentence_transformers.base.modules.Transformer` (``model_kwargs``,
            ``processor_kwargs``, ``max_seq_length``...). ``model_kwargs["dtype"]`` defaults to float32 on CPU and
            bfloat16 when CUDA is available; ``attn_implementation`` to ``"sdpa"``.
    """

    config_keys: list[str] = Transformer.config_keys + [
        "summarize_suffix",
        "generation_prompt",
        "min_pixels",
        "max_pixels",
        "position_mode",
        "image_backend",
    ]

    def __init__(
        self,
        model_name_or_path: str,
        *,
        summarize_suffix: bool = True,
        generation_prompt: bool = True,
        min_pixels: int = MIN_PIXELS,
        max_pixels: int = MAX_PIXELS,
        position_mode: PositionMode = "sequential",
        image_backend: ImageBackend | None = None,
        **kwargs: Any,
    ) -> None:
        if position_mode not in ("sequential", "mrope"):
            raise ValueError(f"position_mode must be 'sequential' or 'mrope', got {position_mode!r}.")
        if image_backend not in (None, "pil", "torchvision"):
            raise ValueError(f"image_backend must be 'pil', 'torchvision' or None, got {image_backend!r}.")
        if not 0 < min_pixels <= max_pixels:
            raise ValueError(
                f"Need 0 < min_pixels <= max_pixels, got min_pixels={min_pixels}, max_pixels={max_pixels}."
            )
        model_kwargs = dict(kwargs.pop("model_kwargs", None) or {})
        model_kwargs.setdefault("dtype", torch.bfloat16 if torch.cuda.is_available() else torch.float32)
        model_kwargs.setdefault("attn_implementation", "sdpa")
        if model_kwargs["dtype"] in (torch.float16, "float16"):
            logger.warning("float16 overflows in Qwen2-VL activations; use bfloat16 or float32.")
        kwargs.setdefault("unpad_inputs", False)
        super().__init__(model_name_or_path, model_kwargs=model_kwargs, **kwargs)

        self.backbone = get_backbone(self.config.model_type)
        self.summarize_suffix = summarize_suffix
        self.generation_prompt = generation_prompt
        self.min_pixels = min_pixels
        self.max_pixels = max_pixels
        self.position_mode = position_mode
        self.image_backend = image_backend or self.backbone.image_backend

        processor_kwargs = {
            key: value
            for key, value in (kwargs.get("processor_kwargs") or {}).items()
            if key in ("revision", "token", "cache_dir", "local_files_only", "trust_remote_code")
        }
        self.processor.image_processor = AutoImageProcessor.from_pretrained(
            model_name_or_path, backend=self.image_backend, **processor_kwargs
        )
        self.tokenizer.padding_side = "left"
        self._add_umarvel_tokens()
        for module in self.model.language_model.modules():
            if hasattr(module, "is_causal"):
                module.is_causal = False
        ids = self.tokenizer.convert_tokens_to_ids([INSTRUCTION_START, INSTRUCTION_END])
        self.instruction_start_id, self.instruction_end_id = ids

    def _add_umarvel_tokens(self) -> None:
        """Add ``<emb>``, ``<instruction_start>``, ``<instruction_end>`` as ordinary tokens, keeping stored rows.

        A checkpoint that already has them (a U-MARVEL model) keeps their ids and rows. A base MLLM gets them
        appended; the embedding matrix only grows when the ids fall beyond it (on Qwen2-VL-7B they land on existing
        rows, which are never re-initialised), and grown rows are set to the mean of the existing rows, so the
        result is deterministic (transformers' ``mean_resizing`` samples them at random).
        """
        missing = [token for token in UMARVEL_TOKENS if token not in self.tokenizer.get_vocab()]
        if len(missing) not in (0, len(UMARVEL_TOKENS)):
            raise ValueError(
                f"The tokenizer has only some of the U-MARVEL tokens (missing {missing}); "
                "add all of them or none. Use `umarvel convert` for official checkpoints."
            )
        if missing:
            self.tokenizer.add_tokens(list(UMARVEL_TOKENS), special_tokens=False)
            ids = self.tokenizer.convert_tokens_to_ids(list(UMARVEL_TOKENS))
            logger.info("Added %s as ids %s", UMARVEL_TOKENS, ids)
        rows = self.model.get_input_embeddings().weight.shape[0]
        if len(self.tokenizer) > rows:
            self.model.resize_token_embeddings(len(self.tokenizer), mean_resizing=False)
            with torch.no_grad():
                weight = self.model.get_input_embeddings().weight  # (vocab, hidden)
                weight[rows:] = weight[:rows].mean(0)

    def save(self, output_path: str, *args: Any, **kwargs: Any) -> None:
        """Save backbone, processor and options, and the modeling source files (see ``remote_code.py``)."""
        super().save(output_path, *args, **kwargs)
        copy_source(__file__, output_path)

    @property
    def tokenizer(self):
        return self.processor.tokenizer

    # ------------------------------------------------------------------ preprocessing
    def _messages(self, item: Item) -> list[dict[str, Any]]:
        content: list[dict[str, Any]] = []
        if item.image is not None:
            content.append({"type": "image"})
        elif item.video is not None:
            content.append({"type": "video"})
        content.append({"type": "text", "text": user_text(item, self.summarize_suffix)})
        return [
            {"role": "user", "content": content},
            {"role": "assistant", "content": [{"type": "text", "text": f"{EMB_TOKEN}."}]},
        ]

    def _process(self, items: list[Item]) -> dict[str, Any]:
        texts = self.processor.apply_chat_template(
            [self._messages(item) for item in items], tokenize=False, add_generation_prompt=self.generation_prompt
        )  # one call renders the batch
        images = [prepare_image(item.image, self.min_pixels, self.max_pixels) for item in items if item.image]
        videos = [
            [prepare_image(frame, self.min_pixels, self.max_pixels) for frame in item.video]
            for item in items
            if item.video is not None
        ]
        return self.processor(
            text=texts, images=images or None, videos=videos or None, padding=True, return_tensors="pt"
        )

    def _truncate(self, items: list[Item], features: dict[str, Any], max_length: int) -> bool:
        """Cut the text of items longer than ``max_length`` tokens (image tokens are never cut).

        Returns:
            Whether any item was changed.
        """
        changed = False
        for index, (item, length) in enumerate(zip(items, features["attention_mask"].sum(-1).tolist(), strict=True)):
            excess = length - max_length
            if excess <= 0:
                continue
            text_ids = self.tokenizer(item.text, add_special_tokens=False)["input_ids"]
            keep = len(text_ids) - excess - 1  # one spare token for the period `format` may append
            if keep <= 0:
                raise ValueError(
                    f"Batch item {index}: the image and prompt template alone take {length - len(text_ids)} tokens, "
                    f"more than max_seq_length={max_length}. Lower max_pixels or raise max_seq_length."
                )
            item.text = self.tokenizer.decode(text_ids[:keep])
            changed = True
        return changed

    def preprocess(
        self, inputs: list[Any], prompt: str | None = None, task: str | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        """Turn items into model features.

        Args:
            inputs: Items: ``str``, ``PIL.Image.Image``, a list of frames (video) or a dict with ``text``,
                ``image``, ``video`` and ``instruction``.
            prompt: An instruction for every item (from ``encode_query(prompt=...)`` or ``prompt_name``). It goes
                into the U-MARVEL instruction span, not a system turn. An item's own ``instruction`` wins.
            task: ``"query"`` / ``"document"`` from ``encode_query`` / ``encode_document`` (not needed: an item
                is a query exactly when it carries an instruction).
            **kwargs: ``max_length`` overrides ``max_seq_length``; other keys are ignored.

        Returns:
            ``input_ids``, ``attention_mask``, ``pooling_mask`` (1 = averaged), and the image/video tensors.
        """
        items = [normalize_item(value, index) for index, value in enumerate(inputs)]
        if prompt:
            for item in items:
                if item.instruction is None:
                    item.instruction = prompt
        features = self._process(items)
        max_length = kwargs.get("max_length") or self.max_seq_length
        if max_length and self._truncate(items, features, max_length):
            features = self._process(items)
        features = dict(features)
        features["pooling_mask"] = self._pooling_mask(features["input_ids"], features["attention_mask"])
        return features

    def _pooling_mask(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Non-pad tokens outside the instruction span (``<instruction_start>`` .. ``<instruction_end>``)."""
        starts = input_ids == self.instruction_start_id  # (batch, seq)
        ends = input_ids == self.instruction_end_id  # (batch, seq)
        in_span = (starts.cumsum(-1) - ends.cumsum(-1) + ends.long()) > 0  # (batch, seq), end inclusive
        return attention_mask.bool() & ~in_span

    # ------------------------------------------------------------------ forward
    def _position_ids(self, features: dict[str, Any], inputs_embeds: torch.Tensor) -> torch.Tensor:
        attention_mask = features["attention_mask"]
        batch, length = attention_mask.shape
        if self.position_mode == "mrope":
            return self.model.compute_3d_position_ids(
                input_ids=features["input_ids"],
                inputs_embeds=inputs_embeds,
                image_grid_thw=features.get("image_grid_thw"),
                video_grid_thw=features.get("video_grid_thw"),
                attention_mask=attention_mask,
                mm_token_type_ids=features.get("mm_token_type_ids"),
            )
        if self.backbone.sequential_positions == "arange":
            positions = torch.arange(length, device=attention_mask.device).expand(batch, length)  # (batch, seq)
        else:
            positions = (attention_mask.long().cumsum(-1) - 1).masked_fill(attention_mask == 0, 1)  # (batch, seq)
        return positions.unsqueeze(0).expand(3, batch, length)  # (3, batch, seq): same value on every M-RoPE axis

    def _merge_visual(self, features: dict[str, Any], inputs_embeds: torch.Tensor) -> torch.Tensor:
        """Scatter image/video features into their placeholder tokens (DeepStack features are dropped)."""
        for pixels_key, grid_key, token_id in (
            ("pixel_values", "image_grid_thw", self.config.image_token_id),
            ("pixel_values_videos", "video_grid_thw", self.config.video_token_id),
        ):
            if features.get(pixels_key) is None:
                continue
            get_features = (
                self.model.get_image_features if pixels_key == "pixel_values" else self.model.get_video_features
            )
            output = get_features(features[pixels_key], features[grid_key], return_dict=True)
            visual = torch.cat(output.pooler_output, dim=0).to(inputs_embeds.dtype)  # (n_visual_tokens, hidden)
            mask = (features["input_ids"] == token_id).unsqueeze(-1).expand_as(inputs_embeds)  # (batch, seq, hidden)
            inputs_embeds = inputs_embeds.masked_scatter(mask, visual)
        return inputs_embeds

    def forward(self, features: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        """Final hidden states (post-norm) under bidirectional attention, as ``token_embeddings``."""
        input_ids = features["input_ids"]
        attention_mask = features["attention_mask"]
        inputs_embeds = self.model.get_input_embeddings()(input_ids)  # (batch, seq, hidden)
        inputs_embeds = self._merge_visual(features, inputs_embeds)
        position_ids = self._position_ids(features, inputs_embeds)  # (3, batch, seq)
        text_config = self.model.language_model.config
        mask = create_bidirectional_mask(
            config=text_config,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            allow_is_bidirectional_skip=False,
        )  # materialised even without padding: `None` would mean causal
        output = self.model.language_model(
            inputs_embeds=inputs_embeds, attention_mask=mask, position_ids=position_ids, use_cache=False
        )
        features["token_embeddings"] = output.last_hidden_state  # (batch, seq, hidden)
        return features
