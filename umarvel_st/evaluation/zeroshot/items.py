"""Per-side item templates of the zero-shot tasks, as the encoder's verbatim items (spec sections 1.2-1.4).

An item is an ordered list of parts, ``("text", str)``, ``("instruction", str)``, ``("image", path)`` or
``("video", path)``, rendered back to back with no separator as the reference's chat template renders its content
list. A :class:`Template` turns a raw dataset record into parts: the instruction goes before the record's text with
a space or none (or first, before FashionIQ's rounds; or after the image with nothing behind it, Urban1K), the text
is optionally formatted (Flickr, GeneCIS), and the "Summarize above ..." suffix is written as text (Flickr only).
:func:`content_item` makes the encoder's verbatim ``{"content": [...]}`` item of the parts, which the encoder
renders exactly as :func:`render` writes it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ...data.zeroshot.readers import Raw
from ...modeling.inputs import INSTRUCTION_END, INSTRUCTION_START, SUFFIX_TEXT_ONLY, SUFFIX_WITH_IMAGE, format_text

#: prompt1 of the reference (index 0 visual + text, 1 text only, 2 visual only); videos say "video".
SUFFIXES = {
    ("image", True): SUFFIX_WITH_IMAGE,
    (None, True): SUFFIX_TEXT_ONLY,
    ("image", False): "\nSummarize above image in one word: ",
    ("video", True): "\nSummarize above video and sentence in one word: ",
    ("video", False): "\nSummarize above video in one word: ",
}
PLACEHOLDERS = {"image": "[IMG]", "video": "[VID]"}

Parts = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Template:
    """How one side of a task writes its items.

    Attributes:
        instruction: Instruction text, or ``None``.
        join: What separates the instruction span from the text: ``""`` or ``" "``.
        format: Apply the reference ``format_string`` to the record's text.
        suffix: Append the "Summarize above ..." suffix (prompt1).
        set_literal: Urban1K's legacy quirk: the instruction text item is written as a Python set ``{'...'}``.
    """

    instruction: str | None = None
    join: str = ""
    format: bool = False
    suffix: bool = False
    set_literal: bool = False

    def span(self) -> list[tuple[str, str]]:
        """The instruction parts (none without an instruction; braces around it with ``set_literal``)."""
        if not self.instruction:
            return []
        span = [("instruction", self.instruction)]
        return [("text", "{'"), *span, ("text", "'}")] if self.set_literal else span

    def apply(self, raw: Raw) -> Parts:
        """The parts of ``raw``: visuals first, then instruction + join + text (+ suffix); rounds after the span."""
        if raw.rounds:
            parts = self.span()
            for image, text in raw.rounds:
                parts += [("image", image), ("text", text)]
            return tuple(part for part in parts if part[1])
        visual = ("video", raw.video) if raw.video else ("image", raw.images[0]) if raw.images else None
        text = format_text(raw.text) if self.format else raw.text
        body = (self.join if self.instruction and text else "") + text
        if self.suffix:
            body += SUFFIXES[(visual[0] if visual else None, bool(text))]
        return tuple(part for part in (visual, *self.span(), ("text", body)) if part and part[1])


def render(parts: Parts) -> str:
    """The exact user text of ``parts`` with ``[IMG]`` / ``[VID]`` for the vision blocks."""
    written = {"instruction": lambda value: f"{INSTRUCTION_START}{value}{INSTRUCTION_END}", "text": str}
    return "".join(written[kind](value) if kind in written else PLACEHOLDERS[kind] for kind, value in parts)


def content_item(parts: Parts, nframes: int | None = None) -> dict[str, Any]:
    """The encoder's verbatim item of ``parts``; video parts sample ``nframes`` frames (``None``: 2 fps)."""
    content: list[dict[str, Any]] = []
    for kind, value in parts:
        if kind == "video":
            content.append({"type": "video", "video": value, **({"nframes": nframes} if nframes else {})})
        else:
            content.append({"type": kind, "text" if kind in ("text", "instruction") else kind: value})
    return {"content": content}


_VISION = re.compile(r"<\|vision_start\|>(?:<\|(image|video)_pad\|>)+<\|vision_end\|>")
_ASSISTANT = "<|im_end|>\n<|im_start|>assistant\n<emb>."


def encoded_user_text(encoder: Any, item: Any) -> str:
    """The user turn the encoder tokenizes for ``item``, decoded from its ids, vision blocks as ``[IMG]`` / ``[VID]``.

    Args:
        encoder: A :class:`~umarvel_st.modeling.UMarvelTransformer` (``model[0]``).
        item: One encoder item.
    """
    features = encoder.preprocess([item])
    ids = features["input_ids"][0][features["attention_mask"][0].bool()]  # (seq,)
    text = encoder.tokenizer.decode(ids, skip_special_tokens=False)
    user = text[text.index("<|im_start|>user\n") + len("<|im_start|>user\n") : text.rindex(_ASSISTANT)]
    return _VISION.sub(lambda match: PLACEHOLDERS[match.group(1)], user)
