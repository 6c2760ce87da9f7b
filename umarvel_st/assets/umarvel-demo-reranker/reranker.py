"""The U-MARVEL re-ranker input module: a causal Qwen-VL that scores a (query, candidate) pair as the reference does.

Why this module renders and runs the pair itself instead of using the stock ``Transformer`` paths:

* **Prompt.** The official re-ranker puts one fixed pointwise instruction (with its 24-space run and the typo
  "responed", kept because the weights were trained on it), ``Query:``, the query image, the query text
  ``format(instruction + " " + text)`` as plain text, ``Candidate:``, the candidate image and the candidate text into
  one user turn, back to back with no separator. sentence-transformers' pair handling would render two messages.
* **Positions.** The reference scores with ``generate``, whose first step uses Qwen-VL's native M-RoPE positions
  counted over the non-pad tokens. transformers' forward infers positions that are not padding-aware for text-only
  batches, so the module always computes them (``position_mode="mrope"``).
* **Score.** The logits of the first generated position (the last prompt token under left padding) feed
  sentence-transformers' ``LogitScore(yes_id, no_id)``; with a sigmoid this is P(Yes) = softmax([yes, no])[0].
* **Shared query prefix.** Attention is causal, so when one query meets many candidates its prefix's keys and values
  are computed once and reused for every candidate (``share_prefix``); the scores equal the plain path's.

Every rendering and position choice is a saved option; the non-default values exist to show (in tests) what each
mistake costs, and for training, where the reference truncates texts to 256 tokens and uses 1-D positions.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Literal

import torch
from sentence_transformers.base.modules import Transformer
from transformers import AutoImageProcessor
from transformers.cache_utils import DynamicCache

from .backbones import get_backbone
from .inputs import (
    INSTRUCTION_END,
    INSTRUCTION_START,
    MAX_PIXELS,
    MIN_PIXELS,
    Item,
    format_text,
    normalize_item,
    prepare_image,
)
from .remote_code import copy_source

logger = logging.getLogger(__name__)

#: The official pointwise instruction, byte for byte (213 characters: 24 spaces before "meets", "responed").
RERANK_PROMPT = (
    "I will provide you with a query and a candidate. Please evaluate whether the candidate"
    + " " * 24
    + "meets the requirements of the query. If it does, respond with 'Yes'; if it doesn't, responed with 'No'."
)
YES, NO = "Yes", "No"

PositionMode = Literal["mrope", "sequential"]
PaddingSide = Literal["left", "right"]


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def normalize_pair(pair: Any, index: int) -> tuple[Item, Item]:
    """Normalise one ``(query, candidate)`` pair into two :class:`~umarvel_st.modeling.inputs.Item`.

    A query is text, an image, or a dict with ``text`` / ``image`` / ``instruction``; a candidate is text, an image or
    a dict with ``text`` / ``image`` (an empty text candidate is allowed: the reference renders ``Candidate:`` and
    nothing).

    Raises:
        TypeError: If the pair is not a 2-tuple/list or an item has an unsupported type (naming the pair index).
        ValueError: For an empty query, a video, a candidate instruction or an unusable image (naming the index).
    """
    if not isinstance(pair, (tuple, list)) or len(pair) != 2:
        raise TypeError(
            f"Pair {index}: expected a (query, candidate) 2-tuple, got {_describe(pair)} of type "
            f"{type(pair).__name__}. Pass a list of (query, candidate) pairs."
        )
    query_value, candidate_value = pair
    try:
        query = normalize_item(query_value)
        candidate = Item() if candidate_value == "" else normalize_item(candidate_value)
    except (TypeError, ValueError) as error:
        raise type(error)(f"Pair {index}: {error}") from error
    if query.video is not None or candidate.video is not None:
        raise ValueError(f"Pair {index}: the re-ranker scores text and images, not videos; drop the 'video' item.")
    if candidate.instruction:
        raise ValueError(
            f"Pair {index}: the candidate has an 'instruction' ({_describe(candidate.instruction)}); only the query "
            "carries one. Move it to the query dict."
        )
    return query, candidate


class UMarvelRerankerTransformer(Transformer):
    """Qwen-VL with its LM head that turns (query, candidate) pairs into the first generated position's logits.

    Follow it with ``LogitScore(yes_id, no_id)`` and a sigmoid activation (see :func:`umarvel_st.reranker_from_mllm`).
    Every option below is saved in ``sentence_bert_config.json`` and restored on load.

    Args:
        model_name_or_path: A Qwen2-VL, Qwen2.5-VL or Qwen3-VL checkpoint *with* its LM head (a
            ``...ForConditionalGeneration``), local folder or Hub id.
        rerank_prompt: The pointwise instruction that opens the user turn (the official one by default).
        position_mode: ``"mrope"``: native M-RoPE positions over non-pad tokens, as the reference's ``generate``
            (scoring); ``"sequential"``: 0..L-1 over the padded sequence on all three axes, as the reference's
            training forward (transformers 4.45 without ``position_ids``).
        padding_side: ``"left"`` (scoring: the last position is the first generated one) or ``"right"`` (training).
        item_separator: Text put between content items (the reference puts none).
        instruction_span: Wrap the query instruction in the embedder's ``<instruction_start>`` /
            ``<instruction_end>`` (the reference re-ranker does not).
        max_text_tokens: Truncate the query text (instruction included) and the candidate text to this many tokens
            (decode round trip), as the reference does in training only (256); ``None`` at scoring.
        share_prefix: Compute the query prefix once when every pair of a batch has the same query (Qwen2-VL and
            Qwen2.5-VL; Qwen3-VL always runs the plain path).
        min_pixels: Lower pixel budget of the factor-28 image pre-resize.
        max_pixels: Upper pixel budget of the factor-28 image pre-resize.
        image_backend: Image-processor backend; ``None`` picks the reference's (PIL for Qwen2-VL).
        **kwargs: Passed to :class:`sentence_transformers.base.modules.Transformer`. ``model_kwargs["dtype"]``
            defaults to float32 on CPU and bfloat16 with CUDA; ``attn_implementation`` to ``"sdpa"``.

    Raises:
        ValueError: For an invalid option, a checkpoint without an LM head, or a tokenizer where "Yes" or "No" is not
            a single token.
    """

    config_keys: list[str] = Transformer.config_keys + [
        "rerank_prompt",
        "position_mode",
        "padding_side",
        "item_separator",
        "instruction_span",
        "max_text_tokens",
        "share_prefix",
        "min_pixels",
        "max_pixels",
        "image_backend",
    ]

    def __init__(
        self,
        model_name_or_path: str,
        *,
        rerank_prompt: str = RERANK_PROMPT,
        position_mode: PositionMode = "mrope",
        padding_side: PaddingSide = "left",
        item_separator: str = "",
        instruction_span: bool = False,
        max_text_tokens: int | None = None,
        share_prefix: bool = True,
        min_pixels: int = MIN_PIXELS,
        max_pixels: int = MAX_PIXELS,
        image_backend: Literal["pil", "torchvision"] | None = None,
        **kwargs: Any,
    ) -> None:
        if position_mode not in ("mrope", "sequential"):
            raise ValueError(f"position_mode must be 'mrope' or 'sequential', got {position_mode!r}.")
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}.")
        if max_text_tokens is not None and max_text_tokens < 1:
            raise ValueError(f"max_text_tokens must be None or a positive int, got {max_text_tokens!r}.")
        if not 0 < min_pixels <= max_pixels:
            raise ValueError(
                f"Need 0 < min_pixels <= max_pixels, got min_pixels={min_pixels}, max_pixels={max_pixels}."
            )
        model_kwargs = dict(kwargs.pop("model_kwargs", None) or {})
        model_kwargs.setdefault("dtype", torch.bfloat16 if torch.cuda.is_available() else torch.float32)
        model_kwargs.setdefault("attn_implementation", "sdpa")
        kwargs.setdefault("unpad_inputs", False)
        kwargs["transformer_task"] = "any-to-any"
        super().__init__(model_name_or_path, model_kwargs=model_kwargs, **kwargs)

        self.backbone = get_backbone(self.config.model_type)
        if self.model.get_output_embeddings() is None or not any(
            name.endswith(("ForConditionalGeneration", "ForCausalLM")) for name in self.config.architectures or []
        ):
            raise ValueError(
                f"{model_name_or_path!r} has no LM head (architectures {self.config.architectures}); the re-ranker "
                "reads the logits of 'Yes' and 'No'. Load a Qwen-VL ...ForConditionalGeneration checkpoint (e.g. "
                "Qwen/Qwen2-VL-7B-Instruct or a trained re-ranker), not an embedder."
            )
        positions = self.config.get_text_config().max_position_embeddings
        if not self.max_seq_length or self.max_seq_length > positions:
            self.max_seq_length = positions  # longer pairs are refused (scoring never truncates)
        self.yes_token_id = self._single_token_id(YES)
        self.no_token_id = self._single_token_id(NO)
        self.rerank_prompt = rerank_prompt
        self.position_mode = position_mode
        self.padding_side = padding_side
        self.item_separator = item_separator
        self.instruction_span = instruction_span
        self.max_text_tokens = max_text_tokens
        self.share_prefix = share_prefix
        self.min_pixels = min_pixels
        self.max_pixels = max_pixels
        self.image_backend = image_backend or self.backbone.image_backend
        processor_kwargs = {
            key: value
            for key, value in (kwargs.get("processor_kwargs") or {}).items()
            if key in ("revision", "token", "cache_dir", "local_files_only", "trust_remote_code")
        }
        self.processor.image_processor = AutoImageProcessor.from_pretrained(
            model_name_or_path, backend=self.image_backend, **processor_kwargs
        )

    def _single_token_id(self, word: str) -> int:
        ids = self.tokenizer(word, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise ValueError(
                f"{word!r} is {len(ids)} tokens {ids} in this tokenizer; the re-ranker needs it as a single token "
                "(as in Qwen-VL's tokenizer). Use a Qwen-VL checkpoint's own tokenizer."
            )
        return ids[0]

    def save(self, output_path: str, *args: Any, **kwargs: Any) -> None:
        """Save backbone, processor and options, and the modeling source files (see ``remote_code.py``)."""
        super().save(output_path, *args, **kwargs)
        copy_source(__file__, output_path)

    @property
    def tokenizer(self):
        return self.processor.tokenizer

    # ------------------------------------------------------------------ rendering
    @property
    def mllm(self) -> Any:
        """The ``...ForConditionalGeneration`` model, also while a peft adapter wraps it (its layers are adapted in
        place)."""
        return self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model

    def _truncate(self, text: str, max_tokens: int | None) -> str:
        if max_tokens is None or not text:
            return text
        ids = self.tokenizer(text, add_special_tokens=False, truncation=True, max_length=max_tokens)["input_ids"]
        return self.tokenizer.decode(ids)

    def query_text(self, query: Item, prompt: str | None = None, max_text_tokens: int | None = None) -> str:
        """The query's text item: ``format(format(instruction) + " " + text)``, plain (or wrapped in the
        instruction span when ``instruction_span``), truncated to ``max_text_tokens`` (default: the module's);
        ``prompt`` is the instruction of a query that has none."""
        max_tokens = max_text_tokens or self.max_text_tokens
        instruction = query.instruction or prompt
        if not instruction:
            return self._truncate(format_text(query.text), max_tokens)
        if self.instruction_span:
            instruction = f"{INSTRUCTION_START}{format_text(instruction)}{INSTRUCTION_END}"
        else:
            instruction = format_text(instruction)
        return self._truncate(format_text(f"{instruction} {query.text}"), max_tokens)

    def messages(
        self,
        query: Item,
        candidate: Item,
        answer: str | None = None,
        prompt: str | None = None,
        max_text_tokens: int | None = None,
    ) -> list[dict[str, Any]]:
        """The chat of one pair: the user turn (and the assistant ``answer`` in training)."""
        content: list[dict[str, Any]] = [{"type": "text", "text": self.rerank_prompt}]
        candidate_text = self._truncate(format_text(candidate.text), max_text_tokens or self.max_text_tokens)
        for label, item, text in (
            ("Query:", query, self.query_text(query, prompt, max_text_tokens)),
            ("Candidate:", candidate, candidate_text),
        ):
            content.append({"type": "text", "text": label})
            if item.image is not None:
                content.append({"type": "image"})
            if text or item.image is None:  # an image-only item has no text item; a text-only one always has one
                content.append({"type": "text", "text": text})
        if self.item_separator:
            separated = [content[0]]
            for part in content[1:]:
                separated += [{"type": "text", "text": self.item_separator}, part]
            content = separated
        chat = [{"role": "user", "content": content}]
        if answer is not None:
            chat.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
        return chat

    def check_plain_text(self, pairs: Sequence[tuple[Item, Item]], prompt: str | None = None) -> None:
        """Refuse texts that contain a control token such as ``<|im_start|>`` or ``<|image_pad|>``: user text is
        text, and the tokenizer would otherwise parse those as the chat's own tokens.

        Raises:
            ValueError: Naming the pair index, the text and the tokens.
        """
        special = [token for token in self.tokenizer.get_added_vocab() if token.startswith("<|")]
        for index, (query, candidate) in enumerate(pairs):
            for text in (query.text, query.instruction or "", prompt or "", candidate.text):
                found = [token for token in special if token in text]
                if found:
                    raise ValueError(
                        f"Pair {index}: the text {_describe(text)} contains the special token(s) {found}; user text "
                        "must not carry control tokens. Remove them from the text."
                    )

    def render(
        self,
        pairs: Sequence[tuple[Item, Item]],
        answers: Sequence[str] | None = None,
        prompt: str | None = None,
        padding_side: PaddingSide | None = None,
        max_text_tokens: int | None = None,
    ) -> dict[str, Any]:
        """Tokenise normalised pairs: chat template (generation prompt when scoring, the answer turn when
        training), pre-resized images, padding on ``padding_side`` and text truncation to ``max_text_tokens``
        (defaults: the module's options).

        Raises:
            ValueError: If a text contains a special token (see :meth:`check_plain_text`).
        """
        self.check_plain_text(pairs, prompt)
        chats = [
            self.messages(query, candidate, None if answers is None else answers[index], prompt, max_text_tokens)
            for index, (query, candidate) in enumerate(pairs)
        ]
        texts = self.processor.apply_chat_template(chats, tokenize=False, add_generation_prompt=answers is None)
        images = [
            prepare_image(item.image, self.min_pixels, self.max_pixels)
            for pair in pairs
            for item in pair
            if item.image is not None
        ]
        self.tokenizer.padding_side = padding_side or self.padding_side
        features = self.processor(text=texts, images=images or None, padding=True, return_tensors="pt")
        return {key: value for key, value in features.items() if key != "mm_token_type_ids"}

    def preprocess(
        self, inputs: list[Any], prompt: str | None = None, task: str | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        """Turn ``(query, candidate)`` pairs into model features.

        Args:
            inputs: Pairs. A query is text, an image or a dict with ``text`` / ``image`` / ``instruction``; a
                candidate is text, an image or a dict with ``text`` / ``image``.
            prompt: The instruction of queries that carry none (from ``predict(prompt=...)``).
            task: Unused (sentence-transformers passes it).
            **kwargs: ``share_prefix`` overrides the module option for this call; other keys are ignored.

        Returns:
            ``input_ids``, ``attention_mask``, image tensors, and ``shared_prefix_length`` when the prefix is shared.
        """
        pairs = [normalize_pair(pair, index) for index, pair in enumerate(inputs)]
        features = self.render(pairs, prompt=prompt)
        lengths = features["attention_mask"].sum(-1)  # (batch,)
        if self.max_seq_length and int(lengths.max()) > self.max_seq_length:
            index = int(lengths.argmax())
            raise ValueError(
                f"Pair {index} of this batch renders to {int(lengths[index])} tokens, more than max_seq_length="
                f"{self.max_seq_length} (the reference never truncates at scoring). Shorten its texts, lower "
                "max_pixels, or set max_text_tokens."
            )
        share = kwargs.get("share_prefix", self.share_prefix)
        # Qwen3-VL feeds DeepStack image features into the decoder layers; the shared path covers Qwen2(.5)-VL.
        if share and len(pairs) > 1 and self.padding_side == "left" and self.config.model_type != "qwen3_vl":
            length = self._shared_prefix_length(pairs, features)
            if length > 0:
                features["shared_prefix_length"] = length
                features["query_images"] = int(pairs[0][0].image is not None)
        return features

    def _shared_prefix_length(self, pairs: list[tuple[Item, Item]], features: dict[str, Any]) -> int:
        """Tokens every row shares from its first real token, stopping before any candidate image and leaving each
        row at least one token of its own; 0 when the queries differ."""
        first = pairs[0][0]
        for query, _ in pairs[1:]:
            if query is not first and (
                query.text != first.text
                or query.instruction != first.instruction
                or (query.image is None) != (first.image is None)
                or (query.image is not None and query.image.tobytes() != first.image.tobytes())
            ):
                return 0
        input_ids, attention_mask = features["input_ids"], features["attention_mask"]
        lengths = attention_mask.sum(-1)  # (batch,)
        rows = [ids[-length:] for ids, length in zip(input_ids, lengths.tolist(), strict=True)]
        shortest = min(len(row) for row in rows) - 1
        same = torch.stack([row[:shortest] == rows[0][:shortest] for row in rows]).all(0)  # (shortest,)
        length = int(same.long().cumprod(0).sum())
        starts = (rows[0] == self.config.vision_start_token_id).nonzero().flatten().tolist()
        query_images = int(first.image is not None)
        if len(starts) > query_images:  # never share into a candidate's image
            length = min(length, starts[query_images])
        return length

    # ------------------------------------------------------------------ forward
    def position_ids(self, features: dict[str, Any], position_mode: PositionMode | None = None) -> torch.Tensor:
        """Positions ``(3, batch, seq)``: M-RoPE over non-pad tokens (pads at 1), or 0..L-1 on all axes
        (``"sequential"``)."""
        input_ids, attention_mask = features["input_ids"], features["attention_mask"]
        batch, length = input_ids.shape
        if (position_mode or self.position_mode) == "sequential":
            return torch.arange(length, device=input_ids.device).view(1, 1, -1).expand(3, batch, -1)
        token_types = (input_ids == self.config.image_token_id).int()  # (batch, seq): 1 = image token
        positions = self.mllm.model.get_rope_index(
            input_ids, token_types, image_grid_thw=features.get("image_grid_thw"), attention_mask=attention_mask
        )[0]  # (3, batch, seq)
        return positions.masked_fill(attention_mask == 0, 1)  # pads at 1, as the reference's transformers 4.45

    def forward(self, features: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        """Logits of the first generated position (the last one under left padding) as ``causal_logits``
        ``(batch, 1, vocab)``."""
        if "shared_prefix_length" in features:
            features["causal_logits"] = self._forward_shared(features)
            return features
        output = self.model(
            input_ids=features["input_ids"],
            attention_mask=features["attention_mask"],
            position_ids=self.position_ids(features),
            pixel_values=features.get("pixel_values"),
            image_grid_thw=features.get("image_grid_thw"),
            logits_to_keep=1,
            use_cache=False,
        )
        features["causal_logits"] = output.logits  # (batch, 1, vocab)
        return features

    def _merge_images_once(self, features: dict[str, Any], embeds: torch.Tensor, query_images: int) -> torch.Tensor:
        """Put image features into their placeholder tokens, running the vision tower on the shared query image once
        (every row's images are in ``pixel_values`` in message order, the query's first)."""
        input_ids, grid = features["input_ids"], features["image_grid_thw"]
        per_row = (input_ids == self.config.vision_start_token_id).sum(-1).tolist()  # images per row
        firsts = [sum(per_row[:row]) for row in range(len(per_row))]
        keep = [
            image
            for row, first in enumerate(firsts)
            for image in range(first + (query_images if row else 0), first + per_row[row])
        ]
        offsets = [0, *torch.cumsum(grid.prod(-1), 0).tolist()]  # patch rows of each image in pixel_values
        pixels = torch.cat([features["pixel_values"][offsets[image] : offsets[image + 1]] for image in keep])
        visual = list(self.mllm.model.get_image_features(pixels, grid[keep], return_dict=True).pooler_output)
        shared, cursor = visual[:query_images], 0
        image_mask = input_ids == self.config.image_token_id  # (batch, seq)
        embeds = embeds.clone()
        for row in range(len(per_row)):
            own = per_row[row] - (query_images if row else 0)
            row_visual = (shared if row else []) + visual[cursor : cursor + own]
            cursor += own
            if row_visual:
                embeds[row, image_mask[row]] = torch.cat(row_visual).to(embeds.dtype)  # (n_image_tokens, hidden)
        return embeds

    def _forward_shared(self, features: dict[str, Any]) -> torch.Tensor:
        """Run the shared query prefix once (batch 1), then every row's own tokens on a copy of its cache."""
        input_ids, attention_mask = features["input_ids"], features["attention_mask"]
        prefix, query_images = features["shared_prefix_length"], features["query_images"]
        batch, length = input_ids.shape
        positions = self.position_ids(features)  # (3, batch, seq)
        embeds = self.model.get_input_embeddings()(input_ids)  # (batch, seq, hidden)
        grid = features.get("image_grid_thw")
        if grid is not None:
            embeds = self._merge_images_once(features, embeds, query_images)
        starts = (length - attention_mask.sum(-1)).tolist()  # left padding: first real token per row
        cache = DynamicCache(config=self.config)
        language_model = self.mllm.model.language_model
        start = starts[0]
        language_model(
            inputs_embeds=embeds[:1, start : start + prefix],
            position_ids=positions[:, :1, start : start + prefix],
            attention_mask=attention_mask[:1, start : start + prefix],
            cache=cache,
            use_cache=True,
        )
        cache.batch_repeat_interleave(batch)
        own = length - min(starts) - prefix  # the longest row's own tokens
        own_embeds = embeds.new_zeros(batch, own, embeds.shape[-1])
        own_positions = positions.new_zeros(3, batch, own)
        own_mask = attention_mask.new_zeros(batch, own)
        for row, start in enumerate(starts):
            count = length - start - prefix
            own_embeds[row, own - count :] = embeds[row, start + prefix :]
            own_positions[:, row, own - count :] = positions[:, row, start + prefix :]
            own_mask[row, own - count :] = 1
        hidden = language_model(
            inputs_embeds=own_embeds,
            position_ids=own_positions,
            attention_mask=torch.cat([attention_mask.new_ones(batch, prefix), own_mask], dim=1),
            cache=cache,
            use_cache=True,
        ).last_hidden_state  # (batch, own, hidden)
        return self.mllm.lm_head(hidden[:, -1:])  # (batch, 1, vocab)
