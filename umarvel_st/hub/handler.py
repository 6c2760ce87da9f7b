"""Custom handler for Hugging Face Inference Endpoints; published as ``handler.py`` at the root of a model repo.

Inference Endpoints import ``handler.py`` from the repository and call ``EndpointHandler(path)(data)`` per request.
It needs only sentence-transformers, Pillow and the standard library: the model's own code comes with the repo
(``trust_remote_code=True``). Request body::

    {"inputs": [{"text": "a dog"}, {"image": "<base64>"}, {"text": "red", "image": "data:image/png;base64,..."}],
     "instruction": "Find me an everyday image that matches the given caption.",
     "batch_size": 8}

Items with an instruction (or all items, with a top-level ``instruction``) are queries, the rest documents.
An item may also be a verbatim content item, rendered exactly as given (the model's ``{"content": [parts]}``)::

    {"inputs": [{"content": [
        {"type": "instruction", "text": "Find me a similar fashion image based on the following modification."},
        {"type": "image", "image": "<base64>"},
        {"type": "text", "text": "is darker"}]}]}

Its parts are ``text``, ``image`` (base64 or a data URI, as for plain items) and at most one ``instruction``.
The handler adds nothing to a content item, so with a top-level ``instruction`` every content item must carry its
own instruction part. Video parts are refused: the endpoint does not decode untrusted video files (send sampled
frames as image parts instead; they are embedded as separate images, not as one video).
Response: ``{"embeddings": [[...], ...]}``, unit vectors in input order (similarity = dot product).

Requests are untrusted, so they are bounded before any work: at most :data:`MAX_ITEMS` items, :data:`MAX_PARTS`
parts per content item and :data:`MAX_IMAGES` images in all (one per item at most without content items), base64
images of at most :data:`MAX_IMAGE_BYTES` bytes, ``batch_size`` up to :data:`MAX_BATCH_SIZE`; the model's encoder
bounds the pixels an image may declare. Image URLs are refused by default, with the same error whatever the URL,
so a client learns nothing about the endpoint's network. A deployer who wants clients to send URLs sets the
environment variable ``UMARVEL_ALLOW_URLS=1`` on the endpoint; the handler then passes the URL to the model's
encoder with its ``allow_urls`` option on, which fetches public http(s) addresses only (never private or loopback
ones), bounded in size and time. The handler itself never opens a connection.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
from typing import Any

from PIL import Image, UnidentifiedImageError
from sentence_transformers import SentenceTransformer

ALLOW_URLS_ENV = "UMARVEL_ALLOW_URLS"
MAX_ITEMS = 64
#: Parts per content item.
MAX_PARTS = 32
#: Images per request, plain items and content parts together (as many as ``MAX_ITEMS`` plain items can hold).
MAX_IMAGES = 64
MAX_BATCH_SIZE = 64
MAX_IMAGE_BYTES = 20 * 1024 * 1024
MAX_BASE64_CHARS = 4 * (MAX_IMAGE_BYTES // 3 + 1)
REQUEST_KEYS = ("inputs", "instruction", "batch_size")
ITEM_KEYS = ("text", "image", "instruction")
PART_KEYS = {"text": {"type", "text"}, "instruction": {"type", "text"}, "image": {"type", "image"}}
CONTENT_SUPPORTED = (
    "A content item is {'content': [parts]} with parts {'type': 'text', 'text': str}, {'type': 'image', 'image': "
    "base64 or data URI} and at most one {'type': 'instruction', 'text': str}."
)
URL_PREFIXES = ("http://", "https://")
URLS_DISABLED = (
    "image URLs are disabled on this endpoint; send the image bytes as base64 (optionally as a data:image/... URI). "
    f"The endpoint's deployer can enable URLs by setting the environment variable {ALLOW_URLS_ENV}=1."
)


def urls_allowed() -> bool:
    """Whether the deployer enabled image URLs (``UMARVEL_ALLOW_URLS`` is ``1``/``true``; unset or ``0`` is off).

    Raises:
        ValueError: If the variable holds anything else.
    """
    value = os.environ.get(ALLOW_URLS_ENV, "0").strip().lower()
    if value not in ("0", "1", "false", "true", ""):
        raise ValueError(
            f"{ALLOW_URLS_ENV} must be 1 (image URLs allowed) or 0 (refused, the default), got {value!r}."
        )
    return value in ("1", "true")


def _image(value: Any, where: str, allow_urls: bool) -> Image.Image | str:
    """A lazily opened image from base64 (or a data URI), or the URL itself when URLs are allowed; errors start with
    ``where`` (the item, and the part of a content item)."""
    if not isinstance(value, str):
        raise ValueError(
            f"{where}: 'image' must be a string (base64-encoded image bytes or a data:image/... URI), "
            f"got {type(value).__name__}."
        )
    if value.lower().startswith(URL_PREFIXES):
        if not allow_urls:
            raise ValueError(f"{where}: {URLS_DISABLED}")
        return value  # fetched by the encoder (allow_urls), within its address, size and time limits
    payload = value.partition(",")[2] if value.startswith("data:") else value
    if len(payload) > MAX_BASE64_CHARS:
        raise ValueError(
            f"{where}: the base64 image has {len(payload):,} characters, more than {MAX_BASE64_CHARS:,} "
            f"({MAX_IMAGE_BYTES:,} bytes); downscale or compress the image before sending it."
        )
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as error:
        raise ValueError(
            f"{where}: 'image' is not valid base64 ({error}); send base64-encoded image bytes, optionally as a "
            "data:image/...;base64,... URI."
        ) from None
    try:
        return Image.open(io.BytesIO(data))  # reads the header only; the encoder checks the pixel count, then decodes
    except Image.DecompressionBombError as error:
        raise ValueError(f"{where}: the image declares too many pixels ({error}); downscale it.") from None
    except (UnidentifiedImageError, OSError) as error:
        raise ValueError(
            f"{where}: the base64 'image' decodes to {len(data):,} bytes that are not an image Pillow can read "
            f"({type(error).__name__}); send PNG, JPEG, WebP or another common format."
        ) from None


def _part(part: Any, where: str) -> dict[str, Any]:
    """A copy of one content part, its type, keys and text checked (its image is decoded later)."""
    kind = part.get("type") if isinstance(part, dict) else None
    if kind == "video":
        raise ValueError(
            f"{where}: video parts are not accepted by this endpoint (it does not decode untrusted video files). "
            "Sample frames yourself and send them as image parts (they are embedded as separate images)."
        )
    if not isinstance(kind, str) or kind not in PART_KEYS:
        raise ValueError(f"{where}: {part!r:.100} is not a supported part. {CONTENT_SUPPORTED}")
    if part.keys() != PART_KEYS[kind]:
        raise ValueError(f"{where}: a {kind!r} part has the keys {sorted(PART_KEYS[kind])}, got {sorted(part)}.")
    if kind in ("text", "instruction") and not isinstance(part["text"], str):
        raise ValueError(f"{where}: 'text' must be a string, got {type(part['text']).__name__}.")
    if kind == "instruction" and not part["text"]:
        raise ValueError(f"{where}: the instruction is empty; drop the part instead.")
    return dict(part)


def _parse_content(item: dict[str, Any], index: int, instruction: str | None) -> dict[str, Any]:
    """A checked copy of a content item; the request's top-level instruction must already be one of its parts."""
    if item.keys() != {"content"}:
        raise ValueError(
            f"Item {index}: a content item has only the key 'content' (an instruction goes in a part), got keys "
            f"{sorted(item)}. {CONTENT_SUPPORTED}"
        )
    parts = item["content"]
    if not isinstance(parts, list) or not parts:
        raise ValueError(f"Item {index}: 'content' must be a non-empty list of parts, got {parts!r:.100}.")
    if len(parts) > MAX_PARTS:
        raise ValueError(f"Item {index} has {len(parts)} content parts, more than {MAX_PARTS}; shorten the item.")
    parts = [_part(part, f"Item {index}, part {position}") for position, part in enumerate(parts)]
    kinds = [part["type"] for part in parts]
    if kinds.count("instruction") > 1:
        raise ValueError(f"Item {index} has {kinds.count('instruction')} instruction parts; join them into one.")
    if instruction and "instruction" not in kinds:
        raise ValueError(
            f"Item {index} is a content item without an instruction part, but the request has a top-level "
            "'instruction' (its items are queries). A content item is embedded exactly as given, so the handler "
            "does not insert the instruction: add {'type': 'instruction', 'text': ...} to the item's parts where "
            "it belongs, or send the item in a request without 'instruction' to embed it as a document."
        )
    if not any(part["type"] == "image" or (part["type"] == "text" and part["text"]) for part in parts):
        raise ValueError(f"Item {index} has nothing to embed (no image and no non-empty text part).")
    return {"content": parts}


def _parse(item: Any, index: int, instruction: str | None) -> dict[str, Any]:
    """A checked copy of one item (a string, a plain object or a content item); its images are decoded later."""
    if isinstance(item, str):
        return {"text": item}
    if isinstance(item, dict) and "content" in item:
        return _parse_content(item, index, instruction)
    if not isinstance(item, dict) or not item.keys() & {"text", "image"} or item.keys() - set(ITEM_KEYS):
        raise ValueError(
            f"Item {index} must be a string or an object with 'text' and/or 'image' (and an optional "
            f"'instruction'), or a content item {{'content': [parts]}}; got {item!r:.200}."
        )
    for key in ("text", "instruction"):
        if key in item and not isinstance(item[key], str):
            raise ValueError(f"Item {index}: {key!r} must be a string, got {type(item[key]).__name__}.")
    return {key: value for key, value in item.items() if key != "image" or value is not None}


def _image_slots(item: dict[str, Any], index: int) -> list[tuple[dict[str, Any], str]]:
    """The dicts of a parsed item that hold an image, each with the label its errors start with."""
    if "content" in item:
        return [
            (part, f"Item {index}, part {position}")
            for position, part in enumerate(item["content"])
            if part["type"] == "image"
        ]
    return [(item, f"Item {index}")] if "image" in item else []


def _check_request(data: Any) -> tuple[list[Any], str | None, int]:
    """The request's items, instruction and batch size, each checked."""
    if not isinstance(data, dict):
        raise ValueError(
            'The request body must be a JSON object like {"inputs": [...], "instruction": "..."}, '
            f"got {type(data).__name__}."
        )
    unknown = sorted(data.keys() - set(REQUEST_KEYS))
    if "inputs" not in data or unknown:
        raise ValueError(
            f"The request needs an 'inputs' field (a list of items) and may have {list(REQUEST_KEYS[1:])}; "
            f"got keys {sorted(data)}."
        )
    inputs = data["inputs"]
    items = inputs if isinstance(inputs, list) else [inputs] if isinstance(inputs, (str, dict)) else None
    if not items:
        raise ValueError(
            "'inputs' must be a non-empty list of items (strings, objects with 'text' and/or 'image', or content "
            f"items {{'content': [parts]}}), or a single item; got {inputs!r:.100}."
        )
    if len(items) > MAX_ITEMS:
        raise ValueError(f"'inputs' has {len(items)} items, more than {MAX_ITEMS} per request; split the request.")
    instruction = data.get("instruction")
    if instruction is not None and not isinstance(instruction, str):
        raise ValueError(f"'instruction' must be a string, got {type(instruction).__name__}.")
    batch_size = data.get("batch_size", 8)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or not 1 <= batch_size <= MAX_BATCH_SIZE:
        raise ValueError(f"'batch_size' must be an integer from 1 to {MAX_BATCH_SIZE}, got {batch_size!r:.50}.")
    return items, instruction, batch_size


class EndpointHandler:
    """Embed texts, images, image+text pairs and verbatim content items with the U-MARVEL model in ``path``.

    Args:
        path: The repository folder the endpoint downloaded.

    Raises:
        ValueError: If ``UMARVEL_ALLOW_URLS`` holds something other than 1 or 0.
    """

    def __init__(self, path: str = "") -> None:
        self.allow_urls = urls_allowed()
        self.model = SentenceTransformer(path, trust_remote_code=True)
        if self.allow_urls:
            self.model[0].allow_urls = True

    def __call__(self, data: Any) -> dict[str, list[list[float]]]:
        """Embed ``data["inputs"]`` (one item or a list), with ``data["instruction"]`` for queries.

        Raises:
            ValueError: If the request or an item is malformed or too large, saying which item and what is expected.
        """
        inputs, instruction, batch_size = _check_request(data)
        items = [_parse(item, index, instruction) for index, item in enumerate(inputs)]
        slots = [slot for index, item in enumerate(items) for slot in _image_slots(item, index)]
        if len(slots) > MAX_IMAGES:
            raise ValueError(
                f"The request has {len(slots)} images, more than {MAX_IMAGES} per request (items and content parts "
                "together); split the request."
            )
        for holder, where in slots:
            holder["image"] = _image(holder["image"], where, self.allow_urls)
        if instruction:
            for item in items:
                if "content" not in item:  # a content item already holds its instruction part (checked)
                    item.setdefault("instruction", instruction)
        embeddings = self.model.encode(items, batch_size=batch_size)
        return {"embeddings": embeddings.tolist()}
