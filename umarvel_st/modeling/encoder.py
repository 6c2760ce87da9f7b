"""The U-MARVEL encoder: a sentence-transformers ``Transformer`` that embeds exactly as the reference does.

Why this module overrides ``preprocess`` and ``forward`` instead of using the stock Transformer paths:

* **Inputs.** U-MARVEL does not use a system prompt for instructions (ST's default for chat models); it puts the
  instruction inside the user turn between ``<instruction_start>`` and ``<instruction_end>``, formats the text,
  appends a "Summarize above ..." suffix and an ``<emb>.`` assistant turn, and pre-resizes images to
  multiples of 28. So the module renders the chat itself. A verbatim item (``{"content": [parts]}``) skips the
  formatting and the suffix: its text, instruction, image and video parts are rendered in order exactly as given,
  as the reference's zero-shot evaluation writes its items (several images, text around them, no separators).
* **User text stays text.** The chat template is tokenized without the user's text, which is tokenized on its
  own by the plain BPE pipeline (no added-token matching) and spliced in: ``<|im_end|>``, ``<|image_pad|>``,
  ``<instruction_start>`` ... typed by a user are ordinary characters, never control tokens. Each run of plain
  text between two added tokens (template text included) is tokenized in one pass, as the reference's one pass
  over the whole chat does. Text that does not fit ``max_seq_length`` is cut token-exactly (images, videos, the
  instruction and the template are never cut).
* **Training layout.** The reference trains without the trailing generation prompt and evaluates with it. The
  sentence-transformers trainer collates a batch *before* it puts the model in train mode, so the choice is
  made in ``forward``: in train mode the generation-prompt tokens are masked out (neither attended nor pooled),
  which under bidirectional attention is the same as not rendering them.
* **Right padding**, so ``encode(output_value="token_embeddings")`` returns exactly each item's own tokens.
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
import re
from typing import Any, Literal

import torch
from sentence_transformers.base.modules import Transformer
from transformers import AutoImageProcessor
from transformers.masking_utils import create_bidirectional_mask, create_causal_mask

from .backbones import get_backbone
from .inputs import (
    EMB_TOKEN,
    INSTRUCTION_END,
    INSTRUCTION_START,
    MAX_IMAGE_PIXELS,
    MAX_PIXELS,
    MIN_PIXELS,
    UMARVEL_TOKENS,
    Content,
    Item,
    check_image_options,
    format_text,
    is_content_item,
    normalize_content,
    normalize_item,
    prepare_image,
    user_text,
)
from .remote_code import copy_source

logger = logging.getLogger(__name__)

PositionMode = Literal["sequential", "mrope"]
ImageBackend = Literal["pil", "torchvision"]

MAX_SEQ_LENGTH = 1024  # the reference's M-BEIR evaluation cuts candidate sequences at 1024 tokens
_USER_TEXT = "\ue000"  # private-use character marking where the user text goes in the rendered template
_MAX_CONTENT_SHAPES = 256  # verbatim-item chat templates kept rendered (one per sequence of part kinds)


class UMarvelTransformer(Transformer):
    """Qwen-VL backbone that turns items into U-MARVEL token embeddings (pool them with
    :class:`~umarvel_st.modeling.pooling.InstructionMaskedMeanPooling`).

    Every option below is saved in ``sentence_bert_config.json`` and restored on load.

    Args:
        model_name_or_path: A Qwen2-VL, Qwen2.5-VL or Qwen3-VL checkpoint (local folder or Hub id).
        summarize_suffix: Append "Summarize above ... in one word: " to the user text (on at inference and in
            recipe stages 1-3, off in stages 4-5).
        generation_prompt: End the chat with the assistant generation prompt (on for inference, as the reference
            evaluation; train mode leaves it out unless ``train_generation_prompt``, as the reference training).
        min_pixels: Lower pixel budget of the factor-28 image pre-resize.
        max_pixels: Upper pixel budget of the factor-28 image pre-resize (300*28*28 by default; 224*224 in stage 5).
        position_mode: ``"sequential"`` 1-D positions as the official weights were trained, or ``"mrope"`` for
            Qwen-VL's native multimodal rotary positions.
        image_backend: Image-processor backend; ``None`` picks the reference's (PIL for Qwen2-VL, torchvision for
            Qwen3-VL).
        allow_urls: Fetch ``http(s)://`` image URLs (bounded in size and time, public hosts only); refused if False.
            Deliberately not saved: a downloaded folder cannot turn network access on; set it on the loaded model
            (``model[0].allow_urls = True``).
        max_image_pixels: Refuse images whose header declares more pixels (checked before decoding); ``None``
            turns this check off (PIL's own ``Image.MAX_IMAGE_PIXELS`` still applies).
        train_generation_prompt: Keep the generation prompt while the module is in train mode. ``False`` (the
            reference's training layout): in train mode the generation-prompt tokens are masked out in ``forward``,
            whatever mode the batch was collated in; ``generation_prompt`` then only affects inference.
        legacy_causal_unpadded: Reproduce a bug of the reference (off by default): a batch without padding (one
            item, or items of equal length) gets causal attention instead of bidirectional, because the reference
            passes no mask there and the attention kernel then falls back to causal. The official zero-shot numbers
            have it on every video (encoded one at a time) and on many equal-size image batches.
        max_seq_length: Most tokens per item (``None``: 1024, the cut of the reference's M-BEIR evaluation). Only
            text is cut, token-exactly, after the last token that fits; image tokens and the template are never cut
            (an item whose image and template alone exceed it is an error). Raise it for long documents.
        **kwargs: Passed to :class:`sentence_transformers.base.modules.Transformer` (``model_kwargs``,
            ``processor_kwargs``...). ``model_kwargs["dtype"]`` (or its older spelling ``"torch_dtype"``; giving
            both with different values is an error) defaults to float32 on CPU and bfloat16 when CUDA is available;
            ``attn_implementation`` to ``"sdpa"``.

    Batches are padded on the right. ``encode(output_value="token_embeddings")`` returns each item's own tokens
    (system turn, user turn, ``<emb>``, generation prompt), the same whatever its batch neighbours.

    Items: text, images (PIL, arrays, paths, data URIs), videos (frame lists, 4-D arrays, or a video file path,
    sampled at 2 fps as the reference), dicts with ``text`` / ``image`` / ``video`` / ``instruction``, chat
    messages (see :func:`~umarvel_st.modeling.inputs.normalize_item`). Those are written as the reference's M-BEIR
    evaluation writes them (formatted text, a space after the instruction, the suffix). A **verbatim item** is
    rendered exactly as given instead, for prompts such as the reference's zero-shot ones::

        {"content": [
            {"type": "image", "image": "shirt_1.jpg"},
            {"type": "text", "text": "is darker"},
            {"type": "image", "image": "shirt_2.jpg"},
            {"type": "instruction", "text": "Find a similar image."},  # at most one; masked from pooling
            {"type": "text", "text": " with long sleeves"},
            {"type": "video", "video": "clip.mp4", "nframes": 12},  # frames, or a file (2 fps, or nframes)
        ]}

    Its parts are rendered in order with nothing added between them (no formatting, no spaces, no suffix: write a
    suffix as a text part), inside the same chat (system turn, user turn, ``<emb>.`` assistant turn, generation
    prompt). Text parts are always text, never special tokens; the instruction part is wrapped in the real
    ``<instruction_start>`` / ``<instruction_end>`` tokens and excluded from pooling; several images and videos
    each get their own vision block. ``encode(..., prompt=...)`` does not apply to verbatim items (write the
    instruction part instead). Over ``max_seq_length``, the last text tokens are dropped.
    """

    config_keys: list[str] = Transformer.config_keys + [
        "summarize_suffix",
        "generation_prompt",
        "min_pixels",
        "max_pixels",
        "position_mode",
        "image_backend",
        "max_image_pixels",
        "train_generation_prompt",
        "legacy_causal_unpadded",
        "max_seq_length",
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
        allow_urls: bool = False,
        max_image_pixels: int | None = MAX_IMAGE_PIXELS,
        train_generation_prompt: bool = False,
        legacy_causal_unpadded: bool = False,
        max_seq_length: int | None = None,
        **kwargs: Any,
    ) -> None:
        flags = {
            "summarize_suffix": summarize_suffix,
            "generation_prompt": generation_prompt,
            "train_generation_prompt": train_generation_prompt,
            "legacy_causal_unpadded": legacy_causal_unpadded,
        }
        for name, value in flags.items():
            if not isinstance(value, bool):  # a string such as "false" would silently read as True
                raise TypeError(f"{name} must be True or False, got {value!r} ({type(value).__name__}).")
        if position_mode not in ("sequential", "mrope"):
            raise ValueError(f"position_mode must be 'sequential' or 'mrope', got {position_mode!r}.")
        if image_backend not in (None, "pil", "torchvision"):
            raise ValueError(f"image_backend must be 'pil', 'torchvision' or None, got {image_backend!r}.")
        if not 0 < min_pixels <= max_pixels:
            raise ValueError(
                f"Need 0 < min_pixels <= max_pixels, got min_pixels={min_pixels}, max_pixels={max_pixels}."
            )
        check_image_options(allow_urls, max_image_pixels)
        if max_seq_length is not None and (isinstance(max_seq_length, bool) or not isinstance(max_seq_length, int)):
            raise TypeError(f"max_seq_length must be a positive int or None, got {max_seq_length!r}.")
        if max_seq_length is not None and max_seq_length <= 0:
            raise ValueError(f"max_seq_length must be a positive int or None, got {max_seq_length}.")
        model_kwargs = _with_dtype(dict(kwargs.pop("model_kwargs", None) or {}))
        model_kwargs.setdefault("attn_implementation", "sdpa")
        if model_kwargs["dtype"] in (torch.float16, "float16"):
            logger.warning("float16 overflows in Qwen2-VL activations; use bfloat16 or float32.")
        kwargs.setdefault("unpad_inputs", False)
        super().__init__(
            model_name_or_path, model_kwargs=model_kwargs, max_seq_length=max_seq_length or MAX_SEQ_LENGTH, **kwargs
        )

        self.backbone = get_backbone(self.config.model_type)
        self.summarize_suffix = summarize_suffix
        self.generation_prompt = generation_prompt
        self.min_pixels = min_pixels
        self.max_pixels = max_pixels
        self.position_mode = position_mode
        self.image_backend = image_backend or self.backbone.image_backend
        self.allow_urls = allow_urls
        self.max_image_pixels = max_image_pixels
        self.train_generation_prompt = train_generation_prompt
        self.legacy_causal_unpadded = legacy_causal_unpadded
        self._templates: dict[tuple[str, bool], tuple[str, str, str, list[int]]] = {}
        self._content_templates: dict[tuple[tuple[str, ...], bool], list[tuple[str, str]]] = {}
        self._warned_query_without_instruction = False

        processor_kwargs = {
            key: value
            for key, value in (kwargs.get("processor_kwargs") or {}).items()
            if key in ("revision", "token", "cache_dir", "local_files_only", "trust_remote_code")
        }
        self.processor.image_processor = AutoImageProcessor.from_pretrained(
            model_name_or_path, backend=self.image_backend, **processor_kwargs
        )
        self._add_umarvel_tokens()
        # Added tokens (special or not) that a user's text must never produce; see `_text_ids`.
        self._added_token_texts = sorted(self.tokenizer.get_added_vocab(), key=len, reverse=True)
        for module in self.model.language_model.modules():
            if hasattr(module, "is_causal"):
                module.is_causal = False
        ids = self.tokenizer.convert_tokens_to_ids([INSTRUCTION_START, INSTRUCTION_END])
        self.instruction_start_id, self.instruction_end_id = ids

    @classmethod
    def _load_init_kwargs(cls, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """sentence-transformers' saved-config reader, minus ``allow_urls``: network access is never read from a
        folder (a downloaded model could otherwise switch it on), only set in code."""
        init_kwargs = super()._load_init_kwargs(*args, **kwargs)
        init_kwargs.pop("allow_urls", None)
        return init_kwargs

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
    def _template(self, kind: str, generation_prompt: bool) -> tuple[str, str, str, list[int]]:
        """The chat around the user text of an item kind (``"text"``, ``"image"`` or ``"video"``), rendered once.

        Returns:
            ``(head, lead, tail, tail_ids)``: ``head`` runs to the last added token before the user text and
            ``tail`` from the first one after it (the processor tokenizes ``head + tail`` and expands the image or
            video placeholder); ``lead`` is the plain template text in between (``"user\\n"``), tokenized together
            with the user text as one pass over the whole chat would; ``tail_ids`` are the ids of ``tail``.
        """
        key = (kind, generation_prompt)
        if key not in self._templates:
            content: list[dict[str, Any]] = [] if kind == "text" else [{"type": kind}]
            messages = [
                {"role": "user", "content": [*content, {"type": "text", "text": _USER_TEXT}]},
                {"role": "assistant", "content": [{"type": "text", "text": f"{EMB_TOKEN}."}]},
            ]
            rendered = self.processor.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=generation_prompt
            )
            before, after = rendered.split(_USER_TEXT)
            cut = max(
                (before.rfind(token) + len(token) for token in self._added_token_texts if token in before), default=0
            )
            tail_ids = self.tokenizer.backend_tokenizer.encode(after, add_special_tokens=False).ids
            self._templates[key] = (before[:cut], before[cut:], after, tail_ids)
        return self._templates[key]

    def _content_atoms(self, kinds: tuple[str, ...], generation_prompt: bool) -> list[tuple[str, str]]:
        """The chat of a verbatim item whose parts have ``kinds``, as atoms, rendered once per shape.

        Returns:
            ``("plain", text)`` template text, ``("added", token)`` an added token of the template, ``("part", "")``
            where the next text or instruction part goes, and ``("visual", block)`` an image or video block
            (``<|vision_start|><|image_pad|><|vision_end|>``, expanded by the processor), in order.
        """
        key = (kinds, generation_prompt)
        if key not in self._content_templates:
            content: list[dict[str, Any]] = []
            for kind in kinds:
                if kind == "text":
                    content.append({"type": "text", "text": _USER_TEXT})
                elif kind == "instruction":
                    content.append({"type": "text", "text": f"{INSTRUCTION_START}{_USER_TEXT}{INSTRUCTION_END}"})
                else:
                    content.append({"type": kind})
            messages = [
                {"role": "user", "content": content},
                {"role": "assistant", "content": [{"type": "text", "text": f"{EMB_TOKEN}."}]},
            ]
            rendered = self.processor.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=generation_prompt
            )
            pattern = "|".join(re.escape(token) for token in [_USER_TEXT, *self._added_token_texts])
            atoms: list[tuple[str, str]] = []
            for piece in re.split(f"({pattern})", rendered):
                if piece == _USER_TEXT:
                    atoms.append(("part", ""))
                elif piece in self._added_token_texts:
                    atoms.append(("added", piece))
                elif piece:
                    atoms.append(("plain", piece))
            pads = self.tokenizer.convert_ids_to_tokens([self.config.image_token_id, self.config.video_token_id])
            for index in range(len(atoms) - 2, 0, -1):  # <|vision_start|> pad <|vision_end|> -> one visual atom
                if atoms[index][0] == "added" and atoms[index][1] in pads:
                    assert atoms[index - 1][0] == atoms[index + 1][0] == "added", "a pad sits between vision tokens"
                    atoms[index - 1 : index + 2] = [
                        ("visual", "".join(atom[1] for atom in atoms[index - 1 : index + 2]))
                    ]
            assert sum(atom[0] == "visual" for atom in atoms) == sum(kind in ("image", "video") for kind in kinds)
            if len(self._content_templates) >= _MAX_CONTENT_SHAPES:
                self._content_templates.clear()
            self._content_templates[key] = atoms
        return self._content_templates[key]

    def _content_ids(self, content: Content, blocks: list[list[int]], max_length: int) -> list[int]:
        """Ids of a verbatim item: template atoms, its parts and the processor-expanded vision ``blocks``.

        Each run of plain text between added tokens (template text and text parts) is tokenized in one pass by
        :meth:`_text_ids`. Over ``max_length``, the last text-part tokens are dropped, run by run from the end
        (the template, the instruction and the vision blocks are kept).
        """
        atoms = self._content_atoms(tuple(part.kind for part in content.parts), self.generation_prompt)
        texts = iter(part for part in content.parts if part.kind in ("text", "instruction"))
        visuals = iter(blocks)
        pieces: list[list[int] | list[tuple[str, str]]] = []  # fixed ids, or a run of (source, text)
        run: list[tuple[str, str]] = []
        for kind, value in atoms:
            if kind in ("plain", "part"):
                part = next(texts) if kind == "part" else None
                run.append(("template", value) if part is None else (part.kind, part.value))
                continue
            if run:
                pieces.append(run)
                run = []
            pieces.append(next(visuals) if kind == "visual" else self.tokenizer.convert_tokens_to_ids([value]))
        if run:
            pieces.append(run)
        ids = [self._text_ids("".join(text for _, text in piece)) if _is_run(piece) else piece for piece in pieces]
        excess = sum(map(len, ids)) - max_length
        if excess <= 0:
            return [token for piece in ids for token in piece]
        text_runs = [
            index
            for index, piece in enumerate(pieces)
            if _is_run(piece) and any(source == "text" and text for source, text in piece)
        ]
        emptied = 0
        for index in reversed(text_runs):
            if excess <= 0:
                break
            sources = [source for source, _ in pieces[index]]
            first, last = sources.index("text"), len(sources) - sources[::-1].index("text")
            assert set(sources[first:last]) == {"text"}, "template text only around the text parts of a run"
            lead, body, trail = (
                "".join(text for _, text in pieces[index][start:stop])
                for start, stop in ((0, first), (first, last), (last, None))
            )
            lead_ids, body_ids, trail_ids = self._text_ids(lead), self._text_ids(body), self._text_ids(trail)
            keep = max(0, len(ids[index]) - excess - len(lead_ids) - len(trail_ids))
            cut = lead_ids + body_ids[:keep] + trail_ids
            excess -= len(ids[index]) - len(cut)
            ids[index] = cut
            emptied += keep == 0
        if excess > 0 or emptied == len(text_runs):
            raise ValueError(
                f"Item {_describe(content)}: its images, videos, instruction and the prompt template alone take "
                f"{sum(map(len, ids))} tokens, leaving no room for its text within max_seq_length={max_length}. "
                "Lower max_pixels or raise max_seq_length."
            )
        return [token for piece in ids for token in piece]

    def _text_ids(self, text: str) -> list[int]:
        """Token ids of user text that never contain an added token: ``"<|im_end|>"`` typed by a user stays text.

        Runs the tokenizer's normalizer, pre-tokenizer and BPE model without its added-token matching; text that
        contains no added token's string takes the (identical, faster) full tokenizer.
        """
        backend = self.tokenizer.backend_tokenizer
        if not any(token in text for token in self._added_token_texts):
            return backend.encode(text, add_special_tokens=False).ids
        text = backend.normalizer.normalize_str(text) if backend.normalizer else text
        pieces = backend.pre_tokenizer.pre_tokenize_str(text)
        return [token.id for piece, _ in pieces for token in backend.model.tokenize(piece)]

    def _user_ids(self, item: Item, lead: str, budget: int, max_length: int) -> list[int]:
        """Ids of ``lead`` and the item's user-turn text, its own text cut to fit ``budget`` ids.

        The instruction markers are the real ``<instruction_start>`` / ``<instruction_end>`` ids; everything the
        user wrote goes through :meth:`_text_ids`. A cut keeps the instruction and the suffix and drops the text's
        last tokens, so the result never exceeds ``budget``.
        """
        body = user_text(item, summarize_suffix=False)
        suffix = user_text(item, self.summarize_suffix)[len(body) :]
        fixed: list[int] = []
        if item.instruction:
            instruction = format_text(item.instruction)
            span = f"{INSTRUCTION_START}{instruction}{INSTRUCTION_END}"
            assert body.startswith(span), "format_text keeps the instruction span at the start"
            fixed = [
                *self._text_ids(lead),
                self.instruction_start_id,
                *self._text_ids(instruction),
                self.instruction_end_id,
            ]
            lead, body = "", body[len(span) :]
        ids = fixed + self._text_ids(lead + body + suffix)  # one pass over the text, as in the reference
        if len(ids) <= budget:
            return ids
        lead_ids, body_ids, suffix_ids = self._text_ids(lead), self._text_ids(body), self._text_ids(suffix)
        keep = budget - len(fixed) - len(lead_ids) - len(suffix_ids)
        if keep <= 0:
            parts = "the image and prompt template" if item.has_visual else "the prompt template"
            parts += " and instruction" if item.instruction else ""
            fixes = "Lower max_pixels or raise max_seq_length" if item.has_visual else "Raise max_seq_length"
            fixes += " or shorten the instruction" if item.instruction else ""
            raise ValueError(
                f"Item {_describe(item)}: {parts} alone take {max_length - keep} tokens, leaving no room for its text "
                f"within max_seq_length={max_length}. {fixes}."
            )
        return fixed + lead_ids + body_ids[:keep] + suffix_ids

    def _normalize(self, value: Any) -> Item | Content:
        """One input as an :class:`Item` (or a verbatim :class:`Content`), its images or frames already resized to
        the pixel budget: only one full-size decoded image per item is alive at a time, so a batch of large images
        costs the budget, not their size. Frames from a video file keep the video rule's size."""
        options = {"allow_urls": self.allow_urls, "max_image_pixels": self.max_image_pixels}
        if is_content_item(value):
            return normalize_content(
                value, **options, prepare=lambda image: prepare_image(image, self.min_pixels, self.max_pixels)
            )
        item = normalize_item(value, **options)
        if item.image is not None:
            item.image = prepare_image(item.image, self.min_pixels, self.max_pixels)
        if item.video is not None and not item.video_sized:
            item.video = [prepare_image(frame, self.min_pixels, self.max_pixels) for frame in item.video]
        return item

    def _process(self, items: list[Item | Content]) -> tuple[list[list[list[int]]], dict[str, Any]]:
        """Run the processor once over the batch (images and videos included): an :class:`Item`'s template, and
        each image or video block of a :class:`Content` on its own.

        Returns:
            Each item's processor rows (ids without padding; one per Item, one per vision block of a Content) and
            the processor outputs.
        """
        texts: list[str] = []
        images: list[Any] = []
        videos: list[Any] = []
        owners: list[int] = []
        for index, item in enumerate(items):
            if isinstance(item, Content):
                atoms = self._content_atoms(tuple(part.kind for part in item.parts), self.generation_prompt)
                texts += [block for kind, block in atoms if kind == "visual"]
                images += [part.value for part in item.parts if part.kind == "image"]
                videos += [part.value for part in item.parts if part.kind == "video"]
                owners += [index] * sum(part.kind in ("image", "video") for part in item.parts)
                continue
            head, _, tail, _ = self._template(_kind(item), self.generation_prompt)
            texts.append(head + tail)
            images += [item.image] if item.image is not None else []
            videos += [item.video] if item.video is not None else []
            owners.append(index)
        rows: list[list[list[int]]] = [[] for _ in items]
        if not texts:
            return rows, {}
        processed = self.processor(
            text=texts, images=images or None, videos=videos or None, padding=True, return_tensors="pt"
        )
        for owner, ids, mask in zip(owners, processed["input_ids"], processed["attention_mask"], strict=True):
            rows[owner].append(ids[mask.bool()].tolist())
        return rows, processed

    def preprocess(
        self, inputs: list[Any], prompt: str | None = None, task: str | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        """Turn items into model features.

        Args:
            inputs: Items: ``str`` (text, or an image or video file path), ``PIL.Image.Image``, a list of frames
                (video), a dict with ``text``, ``image``, ``video`` and ``instruction``, or a verbatim
                ``{"content": [parts]}`` item (see the class docstring).
            prompt: An instruction for every item (from ``encode_query(prompt=...)`` or ``prompt_name``). It goes
                into the U-MARVEL instruction span, not a system turn. An item's own ``instruction`` wins.
            task: ``"query"`` / ``"document"`` from ``encode_query`` / ``encode_document``. An item is a query
                exactly when it carries an instruction, so ``encode_query`` without any instruction embeds
                documents (the model's ``prompts["query"]`` is ``""``); that is logged once.
            **kwargs: ``max_length`` overrides ``max_seq_length``; other keys are ignored.

        Returns:
            ``input_ids``, ``attention_mask`` (right-padded), ``pooling_mask`` (1 = averaged), and the image/video
            tensors.

        Raises:
            ValueError: If ``prompt`` is not a string or is given with a verbatim item, for text that is not valid
                Unicode, or for an item whose images and template do not fit ``max_seq_length``; the message quotes
                the item.
        """
        if prompt is not None and not isinstance(prompt, str):
            # A ValueError: sentence-transformers retries a preprocess that raises TypeError without the prompt.
            raise ValueError(
                f"prompt must be a string (the instruction) or None, got {prompt!r} of type {type(prompt).__name__}. "
                "Pass the instruction text, or prompt_name= one of model.prompts."
            )
        items = [self._normalize(value) for value in inputs]
        for item in items:
            if prompt and isinstance(item, Content):
                raise ValueError(
                    f"Item {_describe(item)}: a verbatim item is rendered as given, so the prompt {prompt!r} does not "
                    "apply to it. Write the instruction as a {'type': 'instruction', 'text': ...} part instead."
                )
            if prompt and item.instruction is None:
                item.instruction = prompt
            _check_unicode(item)
        if task == "query" and not self._warned_query_without_instruction and not any(i.instruction for i in items):
            self._warned_query_without_instruction = True
            logger.warning(
                "encode_query got no instruction (prompt and prompt_name unset, no item 'instruction'), so the "
                "queries are embedded exactly as encode_document would. Pass prompt=... or prompt_name=..."
            )
        max_length = kwargs.get("max_length") or self.max_seq_length
        max_length = MAX_SEQ_LENGTH if max_length is None else max_length
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length <= 0:
            raise ValueError(f"max_seq_length must be a positive int or None (1024), got {max_length!r}.")
        processor_rows, processed = self._process(items)
        rows = []
        for item, item_rows in zip(items, processor_rows, strict=True):
            if isinstance(item, Content):
                rows.append(self._content_ids(item, item_rows, max_length))
                continue
            _, lead, _, tail_ids = self._template(_kind(item), self.generation_prompt)
            (ids,) = item_rows
            split = len(ids) - len(tail_ids)
            assert ids[split:] == tail_ids, "the template tail starts with an added token"
            rows.append(ids[:split] + self._user_ids(item, lead, max_length - len(ids), max_length) + ids[split:])
        input_ids = torch.full((len(rows), max(map(len, rows))), self.tokenizer.pad_token_id)  # (batch, seq)
        attention_mask = torch.zeros_like(input_ids)  # (batch, seq)
        for index, row in enumerate(rows):
            input_ids[index, : len(row)] = torch.tensor(row)
            attention_mask[index, : len(row)] = 1
        # Per-token processor outputs are rebuilt for the spliced ids (`mm_token_type_ids` in `_position_ids`).
        per_token = ("input_ids", "attention_mask", "mm_token_type_ids")
        features = {key: value for key, value in processed.items() if key not in per_token}
        features["input_ids"] = input_ids
        features["attention_mask"] = attention_mask
        features["pooling_mask"] = self._pooling_mask(input_ids, attention_mask)
        return features

    def _pooling_mask(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Non-pad tokens outside the instruction span (``<instruction_start>`` .. ``<instruction_end>``)."""
        starts = input_ids == self.instruction_start_id  # (batch, seq)
        ends = input_ids == self.instruction_end_id  # (batch, seq)
        in_span = (starts.cumsum(-1) - ends.cumsum(-1) + ends.long()) > 0  # (batch, seq), end inclusive
        return attention_mask.bool() & ~in_span

    # ------------------------------------------------------------------ forward
    def _position_ids(self, features: dict[str, Any], inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
        """Position ids, ``(3, batch, seq)``; they depend on the ids and mask only (``inputs_embeds`` is unused)."""
        attention_mask = features["attention_mask"]
        batch, length = attention_mask.shape
        if self.position_mode == "mrope":
            input_ids = features["input_ids"]
            modality = (input_ids == self.config.image_token_id).int() + 2 * (
                input_ids == self.config.video_token_id
            ).int()
            positions, _ = self.model.get_rope_index(
                input_ids,
                mm_token_type_ids=modality,  # (batch, seq): 0 text, 1 image, 2 video
                image_grid_thw=features.get("image_grid_thw"),
                video_grid_thw=features.get("video_grid_thw"),
                attention_mask=attention_mask,
                second_per_grid_ts=features.get("second_per_grid_ts"),  # Qwen2.5-VL videos; ignored by the others
            )
            return positions  # (3, batch, seq)
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

    def _generation_prompt_ids(self) -> list[int]:
        with_prompt = self._template("text", True)[3]
        without = self._template("text", False)[3]
        assert with_prompt[: len(without)] == without, "the generation prompt is appended after the chat"
        return with_prompt[len(without) :]

    def _hide_generation_prompt(self, features: dict[str, Any]) -> None:
        """Mask a trailing generation prompt out of attention and pooling (the reference's training layout)."""
        prompt = torch.tensor(self._generation_prompt_ids(), device=features["input_ids"].device)  # (k,)
        mask = features["attention_mask"]  # (batch, seq), right-padded
        lengths = mask.sum(-1, keepdim=True)  # (batch, 1)
        columns = (lengths - len(prompt) + torch.arange(len(prompt), device=mask.device)).clamp(min=0)  # (batch, k)
        ends_with_prompt = (features["input_ids"].gather(1, columns) == prompt).all(-1, keepdim=True)  # (batch, 1)
        ends_with_prompt &= lengths >= len(prompt)
        hide = torch.zeros_like(mask, dtype=torch.bool).scatter(1, columns, ends_with_prompt.expand_as(columns))
        features["attention_mask"] = mask.masked_fill(hide, 0)
        features["pooling_mask"] = features["pooling_mask"] & ~hide

    def forward(self, features: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        """Final hidden states (post-norm) under bidirectional attention (see ``legacy_causal_unpadded``), as
        ``token_embeddings``.

        In train mode (unless ``train_generation_prompt``) a trailing generation prompt is masked out of
        ``attention_mask`` and ``pooling_mask`` first; see the module docstring.
        """
        if self.training and not self.train_generation_prompt:
            self._hide_generation_prompt(features)
        input_ids = features["input_ids"]
        attention_mask = features["attention_mask"]
        inputs_embeds = self.model.get_input_embeddings()(input_ids)  # (batch, seq, hidden)
        inputs_embeds = self._merge_visual(features, inputs_embeds)
        position_ids = self._position_ids(features)  # (3, batch, seq)
        text_config = self.model.language_model.config
        if self.legacy_causal_unpadded and bool(attention_mask.all()):  # the reference's unpadded-batch fallback
            mask = create_causal_mask(
                config=text_config,
                inputs_embeds=inputs_embeds,
                attention_mask=attention_mask,
                cache=None,
                allow_is_causal_skip=False,
            )
        else:
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


def _dtype_name(dtype: Any) -> str:
    return str(dtype).removeprefix("torch.")


def _with_dtype(model_kwargs: dict[str, Any]) -> dict[str, Any]:
    """Accept ``dtype`` and its older spelling ``torch_dtype`` (refusing two different values), with the default."""
    if "torch_dtype" in model_kwargs:
        torch_dtype = model_kwargs.pop("torch_dtype")
        dtype = model_kwargs.setdefault("dtype", torch_dtype)
        if _dtype_name(dtype) != _dtype_name(torch_dtype):
            raise ValueError(
                f"model_kwargs has dtype={dtype!r} and torch_dtype={torch_dtype!r}: two spellings of one option with "
                "different values. Give only one of them (dtype is the current name)."
            )
    model_kwargs.setdefault("dtype", torch.bfloat16 if torch.cuda.is_available() else torch.float32)
    return model_kwargs


def _kind(item: Item) -> str:
    """The template kind of an :class:`Item`: ``"image"``, ``"video"`` or ``"text"``."""
    return "image" if item.image is not None else "video" if item.video is not None else "text"


def _is_run(piece: list[Any]) -> bool:
    """Whether a piece of :meth:`UMarvelTransformer._content_ids` is a run of texts (not fixed ids)."""
    return bool(piece) and isinstance(piece[0], tuple)


def _describe(item: Item | Content) -> str:
    """A short description of an item for error messages (``encode`` reorders items, so no index)."""
    if isinstance(item, Content):
        parts = [repr(part.value[:20]) if isinstance(part.value, str) else part.kind for part in item.parts]
        return "{'content': [" + ", ".join(parts[:6]) + (", ..." if len(parts) > 6 else "") + "]}"
    text = item.text if len(item.text) <= 40 else item.text[:37] + "..."
    parts = [repr(text)] if item.text else []
    if item.image is not None:
        parts.append(f"with a {item.image.width}x{item.image.height} image")
    if item.video is not None:
        parts.append(f"with {len(item.video)} video frames")
    return " ".join(parts)


def _check_unicode(item: Item | Content) -> None:
    """Refuse text that cannot be encoded as UTF-8 (lone surrogates, e.g. from a bad ``surrogateescape`` decode)."""
    if isinstance(item, Content):
        fields = [(f"{part.kind} part", part.value) for part in item.parts if isinstance(part.value, str)]
    else:
        fields = [(field, getattr(item, field) or "") for field in ("text", "instruction")]
    for field, value in fields:
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as error:
            raise ValueError(
                f"Item {_describe(item)}: its {field} has the lone surrogate {value[error.start]!r} at character "
                f"{error.start}, which is not valid Unicode text. Remove it, or decode the source with "
                "errors='replace'."
            ) from None
