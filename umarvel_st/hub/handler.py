"""Custom handler for Hugging Face Inference Endpoints; published as ``handler.py`` at the root of a model repo.

Inference Endpoints import ``handler.py`` from the repository and call ``EndpointHandler(path)(data)`` per request.
It needs only sentence-transformers, Pillow and the standard library: the model's own code comes with the repo
(``trust_remote_code=True``). Request body::

    {"inputs": [{"text": "a dog"}, {"image": "<base64 or https URL>"}, {"text": "red", "image": "..."}],
     "instruction": "Find me an everyday image that matches the given caption."}

Items with an instruction (or all items, with a top-level ``instruction``) are queries, the rest documents.
Response: ``{"embeddings": [[...], ...]}``, unit vectors in input order (similarity = dot product).
"""

from __future__ import annotations

import base64
import binascii
import io
import urllib.request
from typing import Any

from PIL import Image
from sentence_transformers import SentenceTransformer

ITEM_KEYS = {"text", "image", "instruction"}


def _load_image(value: str, index: int) -> Image.Image:
    if value.startswith(("http://", "https://")):
        with urllib.request.urlopen(value, timeout=30) as response:  # noqa: S310 (the caller chose the URL)
            return Image.open(io.BytesIO(response.read())).convert("RGB")
    try:
        return Image.open(io.BytesIO(base64.b64decode(value.split(",")[-1], validate=True))).convert("RGB")
    except (binascii.Error, OSError) as error:
        raise ValueError(
            f"Item {index}: 'image' must be base64-encoded image bytes (optionally a data: URL) or an http(s) URL; "
            f"could not decode it ({error})."
        ) from None


def _parse(item: Any, index: int) -> dict[str, Any]:
    if isinstance(item, str):
        return {"text": item}
    if not isinstance(item, dict) or not item.keys() & {"text", "image"} or item.keys() - ITEM_KEYS:
        raise ValueError(
            f"Item {index} must be a string or an object with 'text' and/or 'image' (and an optional "
            f"'instruction'), got {item!r:.200}."
        )
    parsed = {key: value for key, value in item.items() if key != "image"}
    if item.get("image"):
        parsed["image"] = _load_image(item["image"], index)
    return parsed


class EndpointHandler:
    """Embed texts, images and image+text pairs with the U-MARVEL model in ``path``.

    Args:
        path: The repository folder the endpoint downloaded.
    """

    def __init__(self, path: str = "") -> None:
        self.model = SentenceTransformer(path, trust_remote_code=True)

    def __call__(self, data: dict[str, Any]) -> dict[str, list[list[float]]]:
        """Embed ``data["inputs"]`` (one item or a list), with ``data["instruction"]`` for queries.

        Raises:
            ValueError: If an item or the request is malformed, saying what is expected.
        """
        inputs = data.get("inputs")
        if inputs is None:
            raise ValueError(f"The request needs an 'inputs' field (a list of items); got keys {sorted(data)}.")
        items = [_parse(item, index) for index, item in enumerate(inputs if isinstance(inputs, list) else [inputs])]
        instruction = data.get("instruction")
        if instruction:
            for item in items:
                item.setdefault("instruction", instruction)
        embeddings = self.model.encode(items, batch_size=int(data.get("batch_size", 8)))
        return {"embeddings": embeddings.tolist()}
