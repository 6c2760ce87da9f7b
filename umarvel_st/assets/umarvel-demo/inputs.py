"""Turning user items into the exact text and images the U-MARVEL reference embeds.

The rules (spec section 1): ``format`` the text, wrap a query's instruction in ``<instruction_start>`` /
``<instruction_end>`` inside the user turn, append a "Summarize above ..." suffix, convert images to RGB by
dropping alpha, and pre-resize them to multiples of 28 within a pixel budget (Qwen's ``smart_resize``).
"""

from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass
from typing import Any

from PIL import Image, UnidentifiedImageError

INSTRUCTION_START = "<instruction_start>"
INSTRUCTION_END = "<instruction_end>"
EMB_TOKEN = "<emb>"
UMARVEL_TOKENS = (EMB_TOKEN, INSTRUCTION_START, INSTRUCTION_END)

SUFFIX_WITH_IMAGE = "\nSummarize above image and sentence in one word: "
SUFFIX_TEXT_ONLY = "\nSummarize above sentence in one word: "

IMAGE_FACTOR = 28
MIN_PIXELS = 4 * 28 * 28
MAX_PIXELS = 300 * 28 * 28
MAX_ASPECT_RATIO = 200

ITEM_KEYS = {"text", "image", "video", "instruction"}


@dataclass
class Item:
    """One normalised input: optional text, optional image or video frames, optional instruction."""

    text: str = ""
    image: Image.Image | None = None
    video: list[Image.Image] | None = None
    instruction: str | None = None

    @property
    def has_visual(self) -> bool:
        return self.image is not None or self.video is not None


def format_text(text: str) -> str:
    """The reference ``format``: drop ``\\r``, strip spaces and surrounding double quotes, upper-case the first
    character, and end with ``.`` unless the text already ends in ``.``, ``?`` or ``!``. Empty stays empty."""
    text = text.replace("\r", "").strip(" ").strip('"')
    if not text:
        return ""
    text = text[0].upper() + text[1:]
    if not text.endswith((".", "?", "!")):
        text += "."
    return text


def user_text(item: Item, summarize_suffix: bool) -> str:
    """The text of the user turn: formatted text, the instruction span for queries, then the suffix."""
    if item.instruction:
        text = format_text(f"{INSTRUCTION_START}{format_text(item.instruction)}{INSTRUCTION_END} {item.text}")
    else:
        text = format_text(item.text)
    if summarize_suffix:
        text += SUFFIX_WITH_IMAGE if item.has_visual else SUFFIX_TEXT_ONLY
    return text


def smart_resize(
    height: int, width: int, factor: int = IMAGE_FACTOR, min_pixels: int = MIN_PIXELS, max_pixels: int = MAX_PIXELS
) -> tuple[int, int]:
    """Qwen's ``smart_resize``: the nearest size with both sides multiples of ``factor`` and the pixel count in
    ``[min_pixels, max_pixels]``, keeping the aspect ratio. Rounds half to even (Python's ``round``)."""
    if max(height, width) / min(height, width) > MAX_ASPECT_RATIO:
        raise ValueError(
            f"aspect ratio must be below {MAX_ASPECT_RATIO}, got {max(height, width) / min(height, width):.0f} "
            f"({width}x{height}); crop or pad the image"
        )
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def prepare_image(image: Image.Image, min_pixels: int = MIN_PIXELS, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """RGB conversion (alpha dropped, not composited; L replicated) and the factor-28 pre-resize (PIL bicubic)."""
    image = image.convert("RGB")
    height, width = smart_resize(image.height, image.width, min_pixels=min_pixels, max_pixels=max_pixels)
    if (width, height) != image.size:
        image = image.resize((width, height), resample=Image.Resampling.BICUBIC)
    return image


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _open_image(value: Any, index: int) -> Image.Image:
    """Open an image given as a PIL image, a path or raw bytes; errors name the item index."""
    if isinstance(value, Image.Image):
        image = value
    elif isinstance(value, (str, os.PathLike)):
        if not os.path.isfile(value):
            raise ValueError(
                f"Batch item {index}: image file {os.fspath(value)!r} does not exist. Pass an existing path."
            )
        try:
            image = Image.open(value)
            image.load()
        except (UnidentifiedImageError, OSError) as error:
            raise ValueError(f"Batch item {index}: cannot decode image file {os.fspath(value)!r}: {error}") from error
    elif isinstance(value, (bytes, bytearray)):
        try:
            image = Image.open(io.BytesIO(value))
            image.load()
        except (UnidentifiedImageError, OSError) as error:
            raise ValueError(f"Batch item {index}: cannot decode {len(value)} image bytes: {error}") from error
    else:
        raise TypeError(
            f"Batch item {index}: an image must be a PIL.Image.Image, a file path or bytes, got {type(value).__name__}."
        )
    if image.width == 0 or image.height == 0:
        raise ValueError(f"Batch item {index}: the image has no pixels ({image.width}x{image.height}).")
    return image


def normalize_item(value: Any, index: int) -> Item:
    """Normalise one user input into an :class:`Item`.

    Accepted: ``str`` (text), ``PIL.Image.Image``, a list of PIL images (video frames), or a dict with keys
    among ``text``, ``image`` (PIL image, path or bytes), ``video`` (list of frames) and ``instruction``.

    ``index`` is the item's position in the batch being preprocessed (``encode`` sorts inputs by length before
    batching), so errors also name the offending value.

    Raises:
        TypeError: For an unsupported type, naming the index and what was received.
        ValueError: For an empty item, unknown keys, or an image that cannot be used.
    """
    if isinstance(value, str):
        item = Item(text=value)
    elif isinstance(value, Image.Image):
        item = Item(image=_open_image(value, index))
    elif isinstance(value, (list, tuple)) and value and all(isinstance(frame, Image.Image) for frame in value):
        item = Item(video=[_open_image(frame, index) for frame in value])
    elif isinstance(value, dict):
        unknown = set(value) - ITEM_KEYS
        if unknown:
            raise ValueError(
                f"Batch item {index}: unknown keys {sorted(unknown)}; an item dict may have {sorted(ITEM_KEYS)}."
            )
        text = value.get("text")
        if text is not None and not isinstance(text, str):
            raise TypeError(f"Batch item {index}: 'text' must be a string or None, got {type(text).__name__}.")
        instruction = value.get("instruction")
        if instruction is not None and not isinstance(instruction, str):
            raise TypeError(
                f"Batch item {index}: 'instruction' must be a string or None, got {type(instruction).__name__}."
            )
        image = value.get("image")
        video = value.get("video")
        if image is not None and video is not None:
            raise ValueError(f"Batch item {index}: give either 'image' or 'video', not both.")
        item = Item(
            text=text or "",
            image=None if image is None else _open_image(image, index),
            video=None if video is None else [_open_image(frame, index) for frame in video],
            instruction=instruction,
        )
    else:
        raise TypeError(
            f"Batch item {index}: unsupported input {_describe(value)} of type {type(value).__name__}. Pass a str, a "
            "PIL.Image.Image, a list of PIL images (video frames), or a dict with 'text' / 'image' / 'instruction'."
        )
    if not item.has_visual and not item.text.strip():
        raise ValueError(
            f"Batch item {index}: nothing to embed (no image and empty text {_describe(item.text)}). "
            "Give some text or an image."
        )
    return item
