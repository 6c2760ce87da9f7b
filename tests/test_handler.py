"""The Inference Endpoints handler shipped as ``handler.py``: JSON in (texts, base64 images, an optional
instruction), the model's own embeddings out; URLs refused unless the deployer enables them, requests bounded and
every malformed request refused with a message that names the item."""

from __future__ import annotations

import base64
import importlib.util
import io
import json
import re
import socket
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
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.delenv(module.ALLOW_URLS_ENV, raising=False)  # the default deployment
        handler = module.EndpointHandler(str(folder))
    return {"model": model, "handler": handler, "module": module, "folder": folder}


def png_base64(seed: int) -> tuple[str, Any]:
    image = make_test_image(84, 56, seed=seed)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode(), image


@pytest.fixture
def no_network(monkeypatch) -> list[Any]:
    """Record (and refuse) every attempt to open a connection or URL."""
    attempts: list[Any] = []

    def refuse(*args: Any, **kwargs: Any) -> None:
        attempts.append(args)
        raise OSError("network use in a test")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    return attempts


def test_handler_embeds_documents_and_queries_like_the_model(published: dict[str, Any]) -> None:
    encoded, image = png_base64(1)
    other, other_image = png_base64(2)
    model, handler = published["model"], published["handler"]

    documents = handler({"inputs": ["a red square", {"image": encoded}, {"text": "red", "image": encoded}]})
    queries = handler(
        {"inputs": [{"text": "a red square"}, {"image": f"data:image/png;base64,{other}"}], "instruction": INSTRUCTION}
    )
    per_item = handler({"inputs": {"text": "a red square", "instruction": INSTRUCTION}, "batch_size": 1})

    expected_documents = model.encode_document(["a red square", image, {"text": "red", "image": image}])
    np.testing.assert_allclose(documents["embeddings"], expected_documents, atol=1e-5)
    np.testing.assert_allclose(
        queries["embeddings"], model.encode_query(["a red square", other_image], prompt=INSTRUCTION), atol=1e-5
    )
    np.testing.assert_allclose(per_item["embeddings"], queries["embeddings"][:1], atol=1e-5)
    assert not np.allclose(queries["embeddings"][0], documents["embeddings"][0], atol=1e-3)  # the instruction counts


def test_content_items_embed_verbatim_like_the_model(published: dict[str, Any]) -> None:
    """Content items (base64 or data URI image parts) give exactly model.encode's embeddings of the same items with
    the PIL images; with a top-level instruction a content item keeps its own instruction part and gets nothing
    added, while plain items take the top-level instruction."""
    encoded, image = png_base64(3)
    other, other_image = png_base64(4)
    model, handler = published["model"], published["handler"]

    def query(image: Any) -> dict[str, Any]:
        return {
            "content": [
                {"type": "instruction", "text": "Find a similar image."},
                {"type": "image", "image": image},
                {"type": "text", "text": "is darker"},
            ]
        }

    def document(image: Any) -> dict[str, Any]:
        return {"content": [{"type": "text", "text": "a shirt, "}, {"type": "image", "image": image}]}

    documents = handler({"inputs": [query(encoded), document(f"data:image/png;base64,{other}")]})
    mixed = handler({"inputs": [query(encoded), "a red square"], "instruction": INSTRUCTION, "batch_size": 1})

    expected = model.encode([query(image), document(other_image)])
    np.testing.assert_allclose(documents["embeddings"], expected, atol=1e-5)
    np.testing.assert_allclose(mixed["embeddings"][0], expected[0], atol=1e-5)  # its own instruction, as is
    expected_text = model.encode([{"text": "a red square", "instruction": INSTRUCTION}])[0]
    np.testing.assert_allclose(mixed["embeddings"][1], expected_text, atol=1e-5)
    plain = model.encode([{"text": "is darker", "image": image, "instruction": "Find a similar image."}])[0]
    assert not np.allclose(documents["embeddings"][0], plain, atol=1e-3)  # rendered verbatim, not as a plain item


def test_the_readme_request_is_accepted(published: dict[str, Any]) -> None:
    """The README's example request, its image placeholders filled in, embeds as the model does."""
    readme = (Path(umarvel_st.__file__).parent.parent / "README.md").read_text()
    request = json.loads(re.search(r"```json\n(.*?)```", readme, re.S).group(1))
    encoded, image = png_base64(5)
    request["inputs"][1]["image"] = encoded
    request["inputs"][2]["content"][1]["image"] = f"data:image/png;base64,{encoded}"

    embeddings = published["handler"](request)["embeddings"]

    content = request["inputs"][2]["content"]
    expected = published["model"].encode(
        [
            {"text": "a red square", "instruction": request["instruction"]},
            {"text": "red", "image": image, "instruction": request["instruction"]},
            {"content": [content[0], {"type": "image", "image": image}, content[2]]},
        ]
    )
    np.testing.assert_allclose(embeddings, expected, atol=1e-5)


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:8080/x.png", "http://10.0.0.7/admin", "https://example.com/cat.jpg", "HTTP://localhost:1/"],
)
def test_urls_are_refused_by_default_with_one_message_and_no_connection(
    published: dict[str, Any], no_network: list[Any], url: str
) -> None:
    with pytest.raises(ValueError) as error:
        published["handler"]({"inputs": [{"image": url}]})
    assert str(error.value) == f"Item 0: {published['module'].URLS_DISABLED}"  # the same whatever the host or port
    assert "UMARVEL_ALLOW_URLS=1" in str(error.value)
    content = {"content": [{"type": "text", "text": "red"}, {"type": "image", "image": url}]}
    with pytest.raises(ValueError) as error:
        published["handler"]({"inputs": ["x", content]})
    assert str(error.value) == f"Item 1, part 1: {published['module'].URLS_DISABLED}"  # content parts alike
    assert no_network == []


class Stopped(Exception):
    """Ends a request once the encoder has been handed its items."""


URL = "https://example.com/cat.jpg"


@pytest.mark.parametrize(
    "item",
    [{"text": "red", "image": URL}, {"content": [{"type": "text", "text": "red"}, {"type": "image", "image": URL}]}],
)
def test_a_deployer_enables_urls_and_the_encoder_fetches_them(
    published: dict[str, Any], no_network: list[Any], monkeypatch, item: dict[str, Any]
) -> None:
    """With UMARVEL_ALLOW_URLS=1 the handler turns on the encoder's allow_urls and hands it the URL unopened, in a
    plain item or a content item's image part."""
    module = published["module"]
    monkeypatch.setenv(module.ALLOW_URLS_ENV, "1")
    handler = module.EndpointHandler(str(published["folder"]))
    received: list[Any] = []

    def encode(items: list[dict[str, Any]], **kwargs: Any) -> None:
        received.append(items)
        raise Stopped  # what the encoder does with the URL is the encoder's own (tested) business

    monkeypatch.setattr(handler.model, "encode", encode)
    with pytest.raises(Stopped):
        handler({"inputs": [item]})

    assert handler.model[0].allow_urls is True
    assert received == [[item]] and no_network == []


@pytest.mark.parametrize("value", ["yes", "2", "on"])
def test_an_unclear_url_setting_is_refused(published: dict[str, Any], monkeypatch, value: str) -> None:
    monkeypatch.setenv(published["module"].ALLOW_URLS_ENV, value)
    with pytest.raises(ValueError, match="UMARVEL_ALLOW_URLS must be 1"):
        published["module"].urls_allowed()


NOT_AN_IMAGE = base64.b64encode(b"GIF89a but not really").decode()
TEXT = {"type": "text", "text": "a shirt"}
INSTRUCTION_PART = {"type": "instruction", "text": "Find a similar image."}
VIDEO = {"type": "video", "video": "clip.mp4", "nframes": 12}
BAD_IMAGE = {"type": "image", "image": "not base64!"}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (["a red square"], "request body must be a JSON object"),
        ({"texts": ["x"]}, "needs an 'inputs' field"),
        ({"inputs": ["x"], "parameters": {}}, r"may have \['instruction', 'batch_size'\]"),
        ({"inputs": 3}, "'inputs' must be a non-empty list"),
        ({"inputs": []}, "'inputs' must be a non-empty list"),
        ({"inputs": ["x"] * 65}, "65 items, more than 64"),
        ({"inputs": [3]}, "Item 0 must be a string or an object"),
        ({"inputs": ["x", {"content": [VIDEO]}]}, "Item 1, part 0: video parts are not accepted .* as image parts"),
        ({"inputs": [{"content": [TEXT, {"type": "audio", "audio": "x"}]}]}, "Item 0, part 1: .* not a supported"),
        ({"inputs": [{"content": [{"type": "text", "text": "x", "image": "y"}]}]}, r"part 0: a 'text' part has"),
        ({"inputs": [{"content": [TEXT], "instruction": "x"}]}, "Item 0: a content item has only the key 'content'"),
        ({"inputs": [{"content": []}]}, "Item 0: 'content' must be a non-empty list"),
        ({"inputs": [{"content": [TEXT] * 33}]}, "Item 0 has 33 content parts, more than 32"),
        ({"inputs": [{"content": [{"type": "text", "text": 3}]}]}, "Item 0, part 0: 'text' must be a string, got int"),
        ({"inputs": [{"content": [{"type": "instruction", "text": None}, TEXT]}]}, "part 0: 'text' must be a string"),
        ({"inputs": [{"content": [INSTRUCTION_PART, TEXT, INSTRUCTION_PART]}]}, "Item 0 has 2 instruction parts"),
        ({"inputs": [{"content": [INSTRUCTION_PART]}]}, "Item 0 has nothing to embed"),
        ({"inputs": [{"content": [{"type": "image", "image": 3}]}]}, "Item 0, part 0: 'image' must be a string"),
        ({"inputs": ["x", {"content": [TEXT]}], "instruction": "q"}, "Item 1 is a content item without an instr"),
        ({"inputs": [{"content": [BAD_IMAGE] * 22}] * 3}, "66 images, more than 64"),  # counted before decoding
        ({"inputs": ["x", {"text": 3}]}, "Item 1: 'text' must be a string, got int"),
        ({"inputs": ["x", {"image": 3}]}, "Item 1: 'image' must be a string"),
        ({"inputs": ["x", "y", {"image": "not base64!"}]}, "Item 2: 'image' is not valid base64"),
        ({"inputs": [{"image": NOT_AN_IMAGE}]}, "Item 0: the base64 'image' decodes to 21 bytes that are not an"),
        ({"inputs": [{"image": "A" * (28 * 1024 * 1024)}]}, "Item 0: the base64 image has 29,360,128 characters"),
        ({"inputs": ["x"], "instruction": 5}, "'instruction' must be a string"),
        ({"inputs": ["x"], "batch_size": "8"}, "'batch_size' must be an integer from 1 to 64"),
        ({"inputs": ["x"], "batch_size": 0}, "'batch_size' must be an integer from 1 to 64"),
        ({"inputs": ["x"], "batch_size": 10_000}, "'batch_size' must be an integer from 1 to 64"),
        ({"inputs": ["x"], "batch_size": True}, "'batch_size' must be an integer from 1 to 64"),
    ],
)
def test_handler_rejects_malformed_requests(published: dict[str, Any], data: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        published["handler"](data)
