"""Custom handler for Hugging Face Inference Endpoints; published as ``handler.py`` at the root of a model repo.

Inference Endpoints import ``handler.py`` from the repository and call ``EndpointHandler(path)(data)`` per request.
It needs only sentence-transformers, Pillow and the standard library: the model's own code comes with the repo
(``trust_remote_code=True``). Request body::

    {"inputs": [{"text": "a dog"}, {"image": "<base64>"}, {"text": "red", "image": "data:image/png;base64,..."}],
     "instruction": "Find me an everyday image that matches the given caption.",
     "batch_size": 8}

Items with an instruction (or all items, with a top-level ``instruction``) are queries, the rest documents.
Response: ``{"embeddings": [[...], ...]}``, unit vectors in input order (similarity = dot product).

Requests are untrusted, so they are bounded before any work: at most :data:`MAX_ITEMS` items, base64 images of at
most :data:`MAX_IMAGE_BYTES` bytes, ``batch_size`` up to :data:`MAX_BATCH_SIZE`; the model's encoder bounds the
pixels an image may declare. Image URLs are refused by default, with the same error whatever the URL, so a client
learns nothing about the endpoint's network. A deployer who wants clients to send URLs sets the environment
variable ``UMARVEL_ALLOW_URLS=1`` on the endpoint; the handler then passes the URL to the model's encoder with its
``allow_urls`` option on, which fetches public http(s) addresses only (never private or loopback ones), bounded
in size and time. The handler itself never opens a connection.
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
MAX_BATCH_SIZE = 64
MAX_IMAGE_BYTES = 20 * 1024 * 1024
MAX_BASE64_CHARS = 4 * (MAX_IMAGE_BYTES // 3 + 1)
REQUEST_KEYS = ("inputs", "instruction", "batch_size")
ITEM_KEYS = ("text", "image", "instruction")
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


def _image(value: Any, index: int, allow_urls: bool) -> Image.Image | str:
    """A lazily opened image from base64 (or a data URI), or the URL itself when URLs are allowed."""
    if not isinstance(value, str):
        raise ValueError(
            f"Item {index}: 'image' must be a string (base64-encoded image bytes or a data:image/... URI), "
            f"got {type(value).__name__}."
        )
    if value.lower().startswith(URL_PREFIXES):
        if not allow_urls:
            raise ValueError(f"Item {index}: {URLS_DISABLED}")
        return value  # fetched by the encoder (allow_urls), within its address, size and time limits
    payload = value.partition(",")[2] if value.startswith("data:") else value
    if len(payload) > MAX_BASE64_CHARS:
        raise ValueError(
            f"Item {index}: the base64 image has {len(payload):,} characters, more than {MAX_BASE64_CHARS:,} "
            f"({MAX_IMAGE_BYTES:,} bytes); downscale or compress the image before sending it."
        )
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as error:
        raise ValueError(
            f"Item {index}: 'image' is not valid base64 ({error}); send base64-encoded image bytes, optionally as a "
            "data:image/...;base64,... URI."
        ) from None
    try:
        return Image.open(io.BytesIO(data))  # reads the header only; the encoder checks the pixel count, then decodes
    except Image.DecompressionBombError as error:
        raise ValueError(f"Item {index}: the image declares too many pixels ({error}); downscale it.") from None
    except (UnidentifiedImageError, OSError) as error:
        raise ValueError(
            f"Item {index}: the base64 'image' decodes to {len(data):,} bytes that are not an image Pillow can read "
            f"({type(error).__name__}); send PNG, JPEG, WebP or another common format."
        ) from None


def _parse(item: Any, index: int, allow_urls: bool) -> dict[str, Any]:
    if isinstance(item, str):
        return {"text": item}
    if not isinstance(item, dict) or not item.keys() & {"text", "image"} or item.keys() - set(ITEM_KEYS):
        raise ValueError(
            f"Item {index} must be a string or an object with 'text' and/or 'image' (and an optional "
            f"'instruction'), got {item!r:.200}."
        )
    for key in ("text", "instruction"):
        if key in item and not isinstance(item[key], str):
            raise ValueError(f"Item {index}: {key!r} must be a string, got {type(item[key]).__name__}.")
    parsed = {key: value for key, value in item.items() if key != "image"}
    if item.get("image") is not None:
        parsed["image"] = _image(item["image"], index, allow_urls)
    return parsed


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
            "'inputs' must be a non-empty list of items (strings or objects with 'text' and/or 'image'), or a "
            f"single item; got {inputs!r:.100}."
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
    """Embed texts, images and image+text pairs with the U-MARVEL model in ``path``.

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
        items = [_parse(item, index, self.allow_urls) for index, item in enumerate(inputs)]
        if instruction:
            for item in items:
                item.setdefault("instruction", instruction)
        embeddings = self.model.encode(items, batch_size=batch_size)
        return {"embeddings": embeddings.tolist()}
