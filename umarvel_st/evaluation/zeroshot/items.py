"""Per-side item templates of the zero-shot tasks and the exact user text each produces (spec sections 1.2-1.4).

An item is an ordered list of parts: ``("text", str)``, ``("image", path)`` or ``("video", path)``, rendered back to
back with no separator. A :class:`Template` turns a raw dataset record into parts: the instruction (wrapped in the
literal ``<instruction_start>`` / ``<instruction_end>`` markers) goes before the record's text with a space or none,
the text is optionally formatted (Flickr, GeneCIS), and the "Summarize above ..." suffix is optional (Flickr only).

:func:`encoder_input` maps parts onto the package encoder's item (one visual, one text, one instruction);
:func:`encoder_user_text` is the user text that encoder renders for it. Where the two differ (the encoder formats
every text and always puts one space after the instruction; it takes one image) the report names the task.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from PIL import Image

from ...data.zeroshot.readers import Raw
from ...modeling.inputs import (
    INSTRUCTION_END,
    INSTRUCTION_START,
    SUFFIX_TEXT_ONLY,
    SUFFIX_WITH_IMAGE,
    Item,
    format_text,
    user_text,
)

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

    def span(self) -> str:
        """The instruction as it appears in the user text (empty without one)."""
        if not self.instruction:
            return ""
        span = f"{INSTRUCTION_START}{self.instruction}{INSTRUCTION_END}"
        return f"{{'{span}'}}" if self.set_literal else span

    def apply(self, raw: Raw) -> Parts:
        """The parts of ``raw``: visuals first, then instruction + join + text (+ suffix); rounds after the span."""
        if raw.rounds:
            parts: list[tuple[str, str]] = [("text", self.span())] if self.instruction else []
            for image, text in raw.rounds:
                parts += [("image", image), ("text", text)]
            return tuple(parts)
        visual = ("video", raw.video) if raw.video else ("image", raw.images[0]) if raw.images else None
        text = format_text(raw.text) if self.format else raw.text
        body = self.span() + (self.join if self.instruction and text else "") + text
        if self.suffix:
            body += SUFFIXES[(visual[0] if visual else None, bool(text))]
        return tuple(part for part in (visual, ("text", body)) if part and part[1])


def render(parts: Parts) -> str:
    """The exact user text of ``parts`` with ``[IMG]`` / ``[VID]`` for the vision blocks."""
    return "".join(PLACEHOLDERS.get(kind, value) if kind != "text" else value for kind, value in parts)


def _split_instruction(text: str) -> tuple[str | None, str]:
    if INSTRUCTION_START not in text:
        return None, text
    before, rest = text.split(INSTRUCTION_START, 1)
    instruction, after = rest.split(INSTRUCTION_END, 1)
    return instruction, (before + after).removeprefix("'}").removeprefix(" ")


def encoder_input(parts: Parts, suffix: bool, frames: list[Image.Image] | None = None) -> dict[str, Any]:
    """The encoder item of ``parts``: its visual (several images side by side), its instruction and its text.

    Args:
        parts: The item's parts.
        suffix: Whether the task's template adds the suffix (stripped here: the encoder adds its own).
        frames: Decoded frames of the video part, if any.
    """
    texts = "".join(value for kind, value in parts if kind == "text")
    if suffix:
        for ending in SUFFIXES.values():
            texts = texts.removesuffix(ending)
    instruction, text = _split_instruction(texts)
    item: dict[str, Any] = {"text": text, "instruction": instruction}
    images = [value for kind, value in parts if kind == "image"]
    if frames is not None:
        item["video"] = frames
    elif len(images) == 1:
        item["image"] = images[0]
    elif images:
        opened = [Image.open(path).convert("RGB") for path in images]
        height = max(image.height for image in opened)
        canvas = Image.new("RGB", (sum(image.width for image in opened), height))
        left = 0
        for image in opened:
            canvas.paste(image, (left, 0))
            left += image.width
        item["image"] = canvas
    return item


def encoder_user_text(parts: Parts, suffix: bool) -> str:
    """The user text the package encoder renders for ``parts`` (vision blocks as placeholders)."""
    item = encoder_input(parts, suffix)
    visuals = [kind for kind, _ in parts if kind != "text"]
    visual = PLACEHOLDERS[visuals[0]] if visuals else ""
    rendered = user_text(
        Item(text=item["text"], image=Image.new("RGB", (1, 1)) if visuals else None, instruction=item["instruction"]),
        summarize_suffix=suffix,
    )
    return visual + rendered
