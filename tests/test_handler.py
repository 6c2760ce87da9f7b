"""The Inference Endpoints handler shipped as ``handler.py``: JSON in (texts, base64 or URL images, an optional
instruction), the model's own embeddings out."""

from __future__ import annotations

import base64
import importlib.util
import io
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import umarvel_st
from umarvel_st.hub.publish import write_repo_folder
from umarvel_st.testing import make_test_image

CHECKPOINT = Path(umarvel_st.__file__).parent / "assets" / "tiny-umarvel-qwen2vl"
INSTRUCTION = "Find me an everyday image that matches the given caption."


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The published repo folder, its handler module (imported from that folder) and the in-process model."""
    model = umarvel_st.from_mllm(str(CHECKPOINT))
    folder = write_repo_folder(model, tmp_path_factory.mktemp("handler") / "repo", "org/u-marvel")
    spec = importlib.util.spec_from_file_location("published_handler", folder / "handler.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return {"model": model, "handler": module.EndpointHandler(str(folder)), "module": module}


def png_bytes(seed: int) -> tuple[bytes, Any]:
    image = make_test_image(84, 56, seed=seed)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue(), image


def test_handler_embeds_documents_and_queries_like_the_model(published: dict[str, Any], monkeypatch) -> None:
    data, image = png_bytes(1)
    url_data, url_image = png_bytes(2)
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout: io.BytesIO(url_data))
    encoded = base64.b64encode(data).decode()
    model, handler = published["model"], published["handler"]

    documents = handler({"inputs": ["a red square", {"image": encoded}, {"text": "red", "image": encoded}]})
    queries = handler(
        {"inputs": [{"text": "a red square"}, {"image": "https://example.com/x.png"}], "instruction": INSTRUCTION}
    )
    per_item = handler({"inputs": {"text": "a red square", "instruction": INSTRUCTION}})

    expected_documents = model.encode_document(["a red square", image, {"text": "red", "image": image}])
    np.testing.assert_allclose(documents["embeddings"], expected_documents, atol=1e-5)
    np.testing.assert_allclose(
        queries["embeddings"], model.encode_query(["a red square", url_image], prompt=INSTRUCTION), atol=1e-5
    )
    np.testing.assert_allclose(per_item["embeddings"], queries["embeddings"][:1], atol=1e-5)
    assert not np.allclose(queries["embeddings"][0], documents["embeddings"][0], atol=1e-3)  # the instruction counts


@pytest.mark.parametrize(
    ("data", "message"),
    [({"texts": ["x"]}, "'inputs'"), ({"inputs": [{"image": "not base64!"}]}, "base64"), ({"inputs": [3]}, "Item 0")],
)
def test_handler_rejects_malformed_requests(published: dict[str, Any], data: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        published["handler"](data)
