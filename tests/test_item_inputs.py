"""Item forms sentence-transformers accepts, image safety limits and clear errors (issue 8 items 4, 7, 13, 19).

Every network test talks to a server on 127.0.0.1 started here; nothing leaves the machine.
"""

from __future__ import annotations

import base64
import http.server
import io
import ipaddress
import json
import re
import struct
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile
from sentence_transformers.base.modality import infer_modality, is_image_url_or_path

import umarvel_st
from umarvel_st.modeling import inputs
from umarvel_st.modeling.inputs import IMAGE_EXTENSIONS, fetch_url, is_public_address, normalize_item, prepare_image

CHECKPOINT = str(Path(umarvel_st.__file__).parent / "assets" / "tiny-umarvel-qwen2vl")


@pytest.fixture(scope="module")
def model():
    return umarvel_st.from_mllm(CHECKPOINT)


def random_image(height: int, width: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8))


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


def huge_png(width: int, height: int) -> bytes:
    """A valid all-black 1-bit PNG: a few kB on disk, ``width * height`` pixels once decoded."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" * (1 + (width + 7) // 8)
    compressor = zlib.compressobj(9)
    data = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


# ------------------------------------------------------------------ item 4: strings that name images
def test_image_path_string_embeds_as_the_image(model, tmp_path):
    image = random_image(56, 84)
    path = tmp_path / "photo.png"
    image.save(path)
    as_path, as_image = model.encode([str(path), image])
    np.testing.assert_allclose(as_path, as_image, atol=1e-6)


@pytest.mark.parametrize("path", ["photos/missing.JPG", "missing.png", "/data/My Photos/missing.webp"])
def test_missing_image_path_string_is_an_error_not_text(path):
    with pytest.raises(ValueError, match=f"Item .*: .*{re.escape(repr(path))} does not exist"):
        normalize_item(path)


def test_sentences_ending_in_a_file_name_stay_text():
    for text in ("a photo saved as cat.jpg", "a caption that mentions\nfile.png"):
        assert normalize_item(text).text == text
    assert normalize_item({"text": "photos/missing.jpg"}).text == "photos/missing.jpg"  # dict text is text


def test_extension_list_matches_sentence_transformers():
    candidates = IMAGE_EXTENSIONS + (".svg", ".ico", ".tif", ".heic", ".avif", ".jfif", ".ppm", ".mp4", ".txt")
    for extension in candidates:
        url = f"https://example.com/a{extension.upper()}"
        assert is_image_url_or_path(url) == (extension in IMAGE_EXTENSIONS), extension


def test_data_uri_string_is_decoded():
    image = random_image(40, 60)
    uri = "data:image/png;base64," + base64.b64encode(png_bytes(image)).decode()
    np.testing.assert_array_equal(pixels(normalize_item(uri).image), pixels(image))
    np.testing.assert_array_equal(pixels(normalize_item({"image": uri}).image), pixels(image))


def test_bad_data_uris_are_clear_errors(monkeypatch):
    with pytest.raises(ValueError, match="Item .*: .*not valid base64"):
        normalize_item("data:image/png;base64,@@@@")
    with pytest.raises(ValueError, match="only base64 image data URIs"):
        normalize_item({"image": "data:image/png,rawbytes"})
    monkeypatch.setattr(inputs, "MAX_IMAGE_BYTES", 1000)
    uri = "data:image/png;base64," + base64.b64encode(png_bytes(random_image(64, 64))).decode()
    with pytest.raises(ValueError, match="more than 1,000 bytes"):
        normalize_item(uri)


def test_video_file_string_is_a_video_and_an_undecodable_one_names_the_file(tmp_path):
    path = (
        tmp_path / "clip.mp4"
    )  # ST's convention: a string naming a video file is a video (tests/test_content_items.py)
    path.write_bytes(b"\x00" * 16)
    with pytest.raises(ValueError, match=r"Item .*: video file '.*clip\.mp4' cannot be decoded"):
        normalize_item(str(path))


# ------------------------------------------------------------------ item 4 / 11: URLs
class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        self.server.requests.append(self.path)
        if self.path == "/img.png":
            body = self.server.png
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif self.path == "/slow.png":  # one byte every 25 ms, for at most 10 s
            self.send_response(200)
            self.send_header("Content-Length", "1000000")
            self.end_headers()
            try:
                for _ in range(400):
                    self.wfile.write(b"\x00")
                    self.wfile.flush()
                    time.sleep(0.025)
            except OSError:
                return
        elif self.path == "/undeclared-big.png":
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"\x00" * 5000)
        elif self.path == "/declared-big.png":
            self.send_response(200)
            self.send_header("Content-Length", str(10**9))
            self.end_headers()
        else:
            self.send_response(302)
            self.send_header("Location", "http://10.0.0.1/img.png")
            self.end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    httpd.requests = []
    httpd.png = png_bytes(random_image(32, 48, seed=5))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield httpd
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def loopback_allowed(monkeypatch):
    """Let downloads reach the test server on 127.0.0.1 (everything else about them stays as in production)."""
    monkeypatch.setattr(inputs, "is_public_address", lambda address: address.is_loopback)


def test_urls_are_refused_by_default_without_a_request(model, server):
    url = f"{server.url}/img.png"
    with pytest.raises(ValueError, match="URLs are not fetched unless the encoder option allow_urls"):
        model.encode([url])
    with pytest.raises(ValueError, match="Item .*: .*allow_urls"):
        normalize_item({"image": url})
    assert server.requests == []


def test_allowed_urls_still_refuse_loopback_without_a_request(server):
    with pytest.raises(ValueError, match="public internet addresses only"):
        normalize_item({"image": f"{server.url}/img.png"}, allow_urls=True)
    with pytest.raises(ValueError, match="public internet addresses only"):  # same answer for unknown hosts
        normalize_item({"image": "http://no-such-host.invalid/a.png"}, allow_urls=True)
    assert server.requests == []


def test_allowed_url_is_fetched_and_decoded(model, server, loopback_allowed):
    url = f"{server.url}/img.png"
    item = normalize_item(url, allow_urls=True)
    np.testing.assert_array_equal(pixels(item.image), pixels(Image.open(io.BytesIO(server.png))))
    model[0].allow_urls = True
    try:
        np.testing.assert_array_equal(model.encode([url]), model.encode([Image.open(io.BytesIO(server.png))]))
    finally:
        model[0].allow_urls = False
    assert server.requests == ["/img.png", "/img.png"]


def test_trickling_server_is_cut_at_the_total_time_bound(server, loopback_allowed):
    start = time.monotonic()
    with pytest.raises(ValueError, match="took longer than 0.5 s"):
        fetch_url(f"{server.url}/slow.png", timeout=0.5)
    assert time.monotonic() - start < 3.0  # each byte arrives well within any per-read timeout


@pytest.mark.parametrize("path", ["/declared-big.png", "/undeclared-big.png"])
def test_oversized_body_is_cut_at_the_size_bound(server, loopback_allowed, path):
    with pytest.raises(ValueError, match="larger than 1,000 bytes"):
        fetch_url(server.url + path, max_bytes=1000)


def test_redirects_and_other_schemes_are_refused(server, loopback_allowed):
    with pytest.raises(ValueError, match="HTTP 302.*redirects are not followed"):
        fetch_url(f"{server.url}/elsewhere.png")
    with pytest.raises(ValueError, match="only http:// and https://"):
        normalize_item({"image": "ftp://example.com/a.png"}, allow_urls=True)


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("8.8.8.8", True),
        ("2606:4700:4700::1111", True),
        ("127.0.0.1", False),
        ("10.1.2.3", False),
        ("192.168.0.1", False),
        ("169.254.169.254", False),
        ("100.64.0.1", False),
        ("0.0.0.0", False),
        ("224.0.0.1", False),
        ("240.0.0.1", False),
        ("::1", False),
        ("fe80::1", False),
        ("fd00::1", False),
        ("::ffff:127.0.0.1", False),
        ("2002:7f00:1::", False),
        ("64:ff9b::a00:1", False),
    ],
)
def test_public_address_rule(address, public):
    assert is_public_address(ipaddress.ip_address(address)) is public


def test_image_options_are_saved_validated_and_reloaded(tmp_path):
    model = umarvel_st.from_mllm(CHECKPOINT, allow_urls=True, max_image_pixels=12345)
    model.save(str(tmp_path / "saved"))
    reloaded = umarvel_st.load(tmp_path / "saved")
    # the pixel limit travels; network access never does (a downloaded folder must not be able to turn it on)
    assert (reloaded[0].allow_urls, reloaded[0].max_image_pixels) == (False, 12345)
    config = json.loads((tmp_path / "saved" / "sentence_bert_config.json").read_text())
    config["allow_urls"] = True
    (tmp_path / "saved" / "sentence_bert_config.json").write_text(json.dumps(config))
    assert umarvel_st.load(tmp_path / "saved")[0].allow_urls is False
    with pytest.raises(TypeError, match="allow_urls must be True or False, got 'yes'"):
        umarvel_st.from_mllm(CHECKPOINT, allow_urls="yes")
    with pytest.raises(ValueError, match="max_image_pixels must be positive"):
        umarvel_st.from_mllm(CHECKPOINT, max_image_pixels=0)


# ------------------------------------------------------------------ item 7: arrays and chat messages
def test_numpy_and_torch_images_embed_as_the_image(model):
    image = random_image(56, 84)
    hwc = np.asarray(image)
    chw = torch.tensor(hwc).permute(2, 0, 1)
    embeddings = model.encode([image, hwc, chw, hwc.astype(np.float32) / 255, chw.float() / 255])
    for row in embeddings[1:]:
        np.testing.assert_allclose(row, embeddings[0], atol=1e-6)


def test_four_d_array_is_a_video(model):
    frames = [random_image(56, 56, seed=seed) for seed in range(4)]
    stacked = np.stack([np.asarray(frame) for frame in frames])  # (frames, height, width, channels)
    np.testing.assert_allclose(model.encode([stacked])[0], model.encode([frames])[0], atol=1e-6)


@pytest.mark.parametrize(
    ("value", "error", "match"),
    [
        (np.zeros((8, 8), np.uint8), ValueError, r"must be 3-D \(an image\) or 4-D"),
        (np.zeros((8, 8, 5), np.uint8), ValueError, "neither its first nor its last axis holds 1, 3 or 4 channels"),
        (np.full((8, 8, 3), 2.0, np.float32), ValueError, r"values outside \[0, 1\]"),
        (np.full((8, 8, 3), np.nan, np.float32), ValueError, r"values outside \[0, 1\]"),
        (np.zeros((8, 8, 3), np.int32), TypeError, "dtype torch.int32; pass uint8"),
        ({"image": np.zeros((2, 8, 8, 3), np.uint8)}, ValueError, "'image' must be one image"),
    ],
)
def test_bad_arrays_are_clear_errors(value, error, match):
    with pytest.raises(error, match=f"Item .*: .*{match}"):
        normalize_item(value)


def test_chat_messages_map_onto_one_item(model):
    image = random_image(56, 56)
    conversation = [
        {"role": "system", "content": [{"type": "text", "text": "Find a matching image."}]},
        {"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "a red kite"}]},
    ]
    item = {"text": "a red kite", "image": image, "instruction": "Find a matching image."}
    np.testing.assert_array_equal(model.encode([conversation]), model.encode([item]))
    np.testing.assert_array_equal(model.encode(conversation), model.encode(item))  # one conversation = one item
    single = {"role": "user", "content": "a red kite"}
    np.testing.assert_array_equal(model.encode([[single]]), model.encode(["a red kite"]))


@pytest.mark.parametrize(
    ("messages", "match"),
    [
        ([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], r"message 1 \(role 'user'\)"),
        ([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], "role 'assistant'"),
        ([{"role": "system", "content": "find"}], "no 'user' message"),
        (
            [{"role": "user", "content": [{"type": "image", "image": np.zeros((8, 8, 3), np.uint8)}] * 2}],
            "0 text and 2 image/video parts",
        ),
        (
            [{"role": "system", "content": [{"type": "image", "image": np.zeros((8, 8, 3), np.uint8)}]}],
            r"\(system\) must hold one text",
        ),
        ([{"role": "user", "content": [{"type": "audio", "audio": b""}]}], "content part .* is not supported"),
    ],
)
def test_unmappable_messages_say_what_is_supported(messages, match):
    with pytest.raises(ValueError, match=f"Item .*: .*{match}"):
        normalize_item(messages)


def test_advertised_modalities_are_the_accepted_ones(model):
    examples = {
        "text": "a red kite",
        "image": random_image(56, 56),
        "video": {"video": [random_image(56, 56), random_image(56, 56, seed=1)]},
        "message": [{"role": "user", "content": "a red kite"}],
    }
    assert sorted(model.modalities) == sorted(examples)
    for modality, example in examples.items():
        assert infer_modality(example) == modality
        assert model.encode([example]).shape == (1, 64)


# ------------------------------------------------------------------ item 13: pixel limit before decoding
@pytest.fixture
def no_decoding(monkeypatch):
    def refuse(self):
        raise AssertionError("the image was decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", refuse)


def test_huge_image_is_refused_from_its_header(tmp_path, no_decoding):
    data = huge_png(12000, 12000)
    assert len(data) < 50_000
    path = tmp_path / "bomb.png"
    path.write_bytes(data)
    for value in (str(path), {"image": data}):
        with pytest.raises(ValueError, match="Item .*: .*too large to decode safely"):
            normalize_item(value)


def test_own_limit_applies_below_pils_limit(no_decoding):
    data = huge_png(9000, 9000)  # 81 MP: above the default 64 MP, below PIL's 89 MP warning
    with pytest.raises(ValueError, match="9000x9000 = 81,000,000 pixels; this encoder's max_image_pixels is 64000000"):
        normalize_item({"image": data})
    with pytest.raises(ValueError, match="max_image_pixels is 1000"):
        normalize_item({"image": png_bytes(random_image(56, 56))}, max_image_pixels=1000)


def test_pils_decompression_bomb_error_is_the_same_clear_error(no_decoding):
    with pytest.raises(ValueError, match="too large to decode safely .*exceeds limit"):
        normalize_item({"image": huge_png(15000, 15000)}, max_image_pixels=None)


def test_pixel_limit_covers_every_image_form_and_is_read_by_the_encoder(model):
    image = random_image(56, 56)
    assert normalize_item(image, max_image_pixels=None).image.size == (56, 56)
    for value in (image, np.asarray(image), [image, image]):
        with pytest.raises(ValueError, match="too large"):
            normalize_item(value, max_image_pixels=1000)
    model[0].max_image_pixels = 1000
    try:
        with pytest.raises(ValueError, match="too large"):
            model.encode([image])
    finally:
        model[0].max_image_pixels = inputs.MAX_IMAGE_PIXELS


# ------------------------------------------------------------------ item 19: 16-bit and float images
def gray(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(56, 84), dtype=np.uint8)


@pytest.mark.parametrize("mode", ["I;16", "I;16B", "I"])
def test_sixteen_bit_images_scale_by_range(mode):
    eight_bit = gray()
    stored = eight_bit.astype(np.uint16) * 257  # the 8-bit image stored as 16 bits
    wide = Image.fromarray(stored.astype(">u2")) if mode == "I;16B" else Image.fromarray(stored).convert(mode)
    assert wide.mode == mode
    np.testing.assert_array_equal(pixels(prepare_image(wide)), pixels(prepare_image(Image.fromarray(eight_bit))))


def test_sixteen_bit_photo_is_not_nearly_white(model):
    eight_bit = gray(1)
    wide = Image.fromarray(eight_bit.astype(np.uint16) * 257)
    assert wide.mode == "I;16"
    assert abs(pixels(prepare_image(wide)).mean() - eight_bit.mean()) < 1
    np.testing.assert_allclose(model.encode([wide]), model.encode([Image.fromarray(eight_bit)]), atol=1e-6)


def test_float_images_scale_by_range():
    eight_bit = gray(2)
    unit = Image.fromarray(eight_bit.astype(np.float32) / 255)
    assert unit.mode == "F"
    np.testing.assert_array_equal(pixels(prepare_image(unit)), pixels(prepare_image(Image.fromarray(eight_bit))))
    wide = Image.fromarray(eight_bit.astype(np.float32) * 4 - 100)  # outside [0, 1]: min-max
    scaled = pixels(prepare_image(wide))[..., 0].astype(int)
    expected = (eight_bit.astype(float) - eight_bit.min()) * 255 / (eight_bit.max() - eight_bit.min())
    assert np.abs(scaled - np.round(expected)).max() <= 1 and scaled.min() == 0 and scaled.max() == 255
    infinite = Image.fromarray(np.array([[0.0, np.inf]], np.float32))
    with pytest.raises(ValueError, match="Item .*: .*infinite values"):
        normalize_item(infinite)


# ------------------------------------------------------------------ item 5 (unclear errors): videos and decoding
@pytest.mark.parametrize(
    ("value", "match"),
    [
        ({"video": []}, "the video has no frames"),
        (
            {"video": [random_image(56, 56), random_image(56, 84)]},
            r"the video frames have different sizes \(56x56, 84x56\)",
        ),
        ({"video": random_image(56, 56)}, "'video' got a single image; pass it as 'image'"),
        ({"video": np.zeros((8, 8, 3), np.uint8)}, "'video' got a single image"),
        ({"image": [random_image(56, 56)] * 2}, "'image' must be one image; pass video frames as 'video'"),
        ({"video": [random_image(56, 56), "missing.png"]}, "video frame 1: image file 'missing.png' does not exist"),
    ],
)
def test_video_mistakes_are_clear_errors(value, match):
    with pytest.raises(ValueError, match=f"Item .*: {match}"):
        normalize_item(value)


def test_one_frame_video_works_on_qwen3_vl(tiny_backbone_factory):
    model = umarvel_st.from_mllm(str(tiny_backbone_factory("qwen3_vl")))
    frame = random_image(56, 56)
    np.testing.assert_allclose(model.encode([[frame]]), model.encode([[frame, frame]]), atol=1e-6)


def test_lazily_opened_truncated_and_closed_images_are_clear_errors(tmp_path):
    path = tmp_path / "cut.png"
    data = png_bytes(random_image(64, 64))
    path.write_bytes(data[: len(data) // 2])
    lazy = Image.open(path)  # reads the header only
    with pytest.raises(ValueError, match="Item .*: cannot decode the image .*truncated"):
        normalize_item(lazy)
    with pytest.raises(ValueError, match=r"Item .*: cannot decode the image \(file .*cut\.png'\)"):
        normalize_item(str(path))
    closed = random_image(8, 8)
    closed.close()
    with pytest.raises(ValueError, match="Item .*: cannot decode the image .*closed"):
        normalize_item({"image": closed})


def test_bytes_that_are_not_an_image_say_so():
    with pytest.raises(
        ValueError, match=r"Item .*: cannot decode the image \(9 bytes\): it is not in an image"
    ) as info:
        normalize_item({"image": b"not a png"})
    assert "BytesIO" not in str(info.value)


def test_errors_quote_the_users_item_not_a_sorted_position(model):
    """sentence-transformers sorts a batch by length before preprocessing; a position would point at another item."""
    with pytest.raises((TypeError, ValueError), match=r"Item \(1, 2\): ") as error:
        model.encode_document(["a much longer text that sorts before the others", "short", (1, 2)])
    assert "Batch item" not in str(error.value)
