"""Verbatim ``{"content": [parts]}`` items and video file paths in the encoder (issue 11 leftovers, items 1-2)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import umarvel_st
from umarvel_st.modeling import video
from umarvel_st.modeling.inputs import SUFFIX_TEXT_ONLY, SUFFIX_WITH_IMAGE

CHECKPOINT = str(Path(umarvel_st.__file__).parent / "assets" / "tiny-umarvel-qwen2vl")


@pytest.fixture(scope="module")
def model():
    return umarvel_st.from_mllm(CHECKPOINT)


def random_image(height: int, width: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8))


def write_mp4(path: Path, frames: int = 30, fps: int = 10) -> Path:
    """A clip running from green to red, ``frames`` frames at ``fps``."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for index in range(frames):
            image = Image.new("RGB", (64, 48), (index * 255 // frames, 255 - index * 255 // frames, 0))
            container.mux(stream.encode(av.VideoFrame.from_image(image)))
        container.mux(stream.encode())
    return path


def text(value: str) -> dict[str, str]:
    return {"type": "text", "text": value}


def instruction(value: str) -> dict[str, str]:
    return {"type": "instruction", "text": value}


def image(value) -> dict:
    return {"type": "image", "image": value}


IMAGE = random_image(56, 84)
FRAMES = [random_image(56, 56, seed) for seed in range(4)]


# ------------------------------------------------------------------ same meaning, same ids
@pytest.mark.parametrize(
    ("legacy", "content"),
    [
        ("a red kite", [text("A red kite." + SUFFIX_TEXT_ONLY)]),
        (
            {"image": IMAGE, "text": "a red kite", "instruction": "find it"},
            [image(IMAGE), instruction("Find it."), text(" a red kite." + SUFFIX_WITH_IMAGE)],
        ),
        (
            {"text": "a red kite", "instruction": "Find the image"},
            [instruction("Find the image."), text(" a red kite." + SUFFIX_TEXT_ONLY)],
        ),
        ({"video": FRAMES}, [{"type": "video", "video": FRAMES}, text(SUFFIX_WITH_IMAGE)]),
    ],
    ids=["text", "image-instruction-text", "instruction-text", "video"],
)
def test_content_item_equal_in_meaning_renders_the_same_ids(model, legacy, content):
    encoder = model[0]
    old, new = encoder.preprocess([legacy]), encoder.preprocess([{"content": content}])
    assert torch.equal(old["input_ids"], new["input_ids"])
    assert torch.equal(old["pooling_mask"], new["pooling_mask"])
    np.testing.assert_array_equal(*model.encode([legacy, {"content": content}]))


def test_two_images_are_two_vision_blocks_in_order(model):
    encoder = model[0]
    first, second = random_image(56, 84, seed=1), random_image(56, 56, seed=2)
    item = {"content": [text("before"), image(first), text("between"), image(second), text("after")]}
    features = encoder.preprocess([item, "a mixed batch"])
    grids = features["image_grid_thw"].tolist()
    assert grids == [[1, 4, 6], [1, 4, 4]]  # both images, in order: 56x84 then 56x56 on 14-px patches
    user = encoder.tokenizer.decode(features["input_ids"][0][features["attention_mask"][0].bool()])
    pad = "<|image_pad|>"
    assert (
        f"user\nbefore<|vision_start|>{pad * 6}<|vision_end|>between<|vision_start|>{pad * 4}<|vision_end|>after<|im_end|>"
        in user
    )
    side_by_side = Image.new("RGB", (140, 56))
    side_by_side.paste(first, (0, 0))
    side_by_side.paste(second, (84, 0))
    joined = {"content": [text("before"), image(side_by_side), text("betweenafter")]}
    two, one = model.encode([item, joined])
    assert np.abs(two - one).max() > 1e-3


def test_two_images_take_multimodal_positions_in_order(model):
    """With ``position_mode="mrope"`` the backbone's ``get_rope_index`` reads both images' grids in order."""
    encoder = model[0]
    item = {"content": [image(random_image(56, 84, seed=1)), text("and"), image(random_image(56, 56, seed=2))]}
    features = encoder.preprocess([item])
    encoder.position_mode = "mrope"
    try:
        positions = encoder._position_ids(features)  # (3, batch, seq)
    finally:
        encoder.position_mode = "sequential"
    ids = features["input_ids"][0]
    pads = (ids == encoder.config.image_token_id).nonzero().flatten()
    first, second = pads[:6], pads[6:]
    assert positions[1, 0, first].unique().numel() == 2 and positions[2, 0, first].unique().numel() == 3
    assert positions[0, 0, second].min() > positions[0, 0, first].max()  # the second block comes later


def test_instruction_part_is_the_real_tokens_and_masked(model):
    encoder = model[0]
    item = {"content": [image(IMAGE), instruction("find it"), text("<instruction_start>typed<instruction_end>")]}
    features = encoder.preprocess([item])
    ids, pooled = features["input_ids"][0], features["pooling_mask"][0]
    starts = (ids == encoder.instruction_start_id).nonzero().flatten().tolist()
    ends = (ids == encoder.instruction_end_id).nonzero().flatten().tolist()
    assert len(starts) == len(ends) == 1  # the typed markers are text
    assert not pooled[starts[0] : ends[0] + 1].any()
    assert pooled[ends[0] + 1 :][features["attention_mask"][0][ends[0] + 1 :].bool()].all()


def test_literal_special_tokens_in_a_text_part_stay_text(model):
    encoder = model[0]
    typed = {"content": [text("a<|im_end|>b<|image_pad|>")]}
    plain = {"content": [text("ab")]}
    typed_ids, plain_ids = (encoder.preprocess([item])["input_ids"][0].tolist() for item in (typed, plain))
    for token in ("<|im_end|>", "<|image_pad|>"):
        token_id = encoder.tokenizer.convert_tokens_to_ids(token)
        assert typed_ids.count(token_id) == plain_ids.count(token_id)
    assert "a<|im_end|>b<|image_pad|><|im_end|>" in encoder.tokenizer.decode(typed_ids)


def test_text_is_cut_from_the_end_within_the_cap(model):
    encoder = model[0]
    words = " ".join(f"w{index}" for index in range(200))
    item = {"content": [text(words), image(IMAGE), text(" tail text")]}
    full = encoder.preprocess([item], max_length=10_000)["input_ids"][0].tolist()
    for cap in (len(full) - 3, len(full) - 40):
        cut = encoder.preprocess([item], max_length=cap)
        ids = cut["input_ids"][0][cut["attention_mask"][0].bool()].tolist()
        assert len(ids) == cap
        assert ids[-12:] == full[-12:]  # the template's end stays
        decoded = encoder.tokenizer.decode(ids)
        assert "<|vision_start|>" in decoded and "w0 w1 w2" in decoded  # the image and the first words stay
    assert "tail text" not in decoded  # the last text run went first
    with pytest.raises(ValueError, match=r"Item \{'content'.*alone take \d+ tokens.*max_seq_length=20"):
        encoder.preprocess([item], max_length=20)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ([text("a"), {"type": "audio", "audio": b""}], r"content part 1 .* has no supported 'type'"),
        ([{"type": "text"}], r"content part 0 .*'text' part has the keys"),
        ([{"type": "text", "text": "a", "image": IMAGE}], r"content part 0 .*'text' part has the keys"),
        ([{"type": "text", "text": 3}], r"content part 0 .*must be a string, got int"),
        ([instruction("a"), instruction("b"), text("c")], "more than one instruction part"),
        ([{"type": "video", "video": FRAMES, "nframes": 4}], r"content part 0 .*needs a video file path"),
        ([image("missing.png")], r"content part 0 .*'missing.png' does not exist"),
        ([instruction("a"), text("")], "nothing to embed"),
        ("a kite", "'content' must be a list of parts"),
    ],
)
def test_bad_parts_name_the_item_and_the_part(model, content, match):
    with pytest.raises((ValueError, TypeError), match=f"Item .*{match}"):
        model.encode([{"content": content}])


def test_verbatim_items_take_no_prompt(model):
    with pytest.raises(ValueError, match="verbatim item is rendered as given"):
        model.encode_query([{"content": [text("a kite")]}], prompt="Find it.")


# ------------------------------------------------------------------ video files
def test_video_path_string_is_a_sampled_video(model, tmp_path):
    path = write_mp4(tmp_path / "clip.mp4")  # 3 s at 10 fps -> 6 frames at 2 fps
    frames = video.read_video_frames(path)
    assert len(frames) == 6 and frames[0].size[0] % 28 == 0
    as_path, as_part, as_frames = model.encode(
        [str(path), {"content": [{"type": "video", "video": str(path)}]}, {"video": frames}]
    )
    np.testing.assert_allclose(as_path, as_frames, atol=1e-6)  # the decoded, sampled frames
    features = model[0].preprocess([{"content": [{"type": "video", "video": str(path), "nframes": 4}]}])
    assert features["video_grid_thw"][0, 0].item() == 2  # 4 frames in temporal patches of 2
    assert not np.allclose(as_path, model.encode([{"video": frames[:2]}])[0], atol=1e-3)


def test_bad_video_files_are_refused_naming_the_file(tmp_path):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00" * 16)
    from umarvel_st.modeling.inputs import normalize_item

    with pytest.raises(ValueError, match=r"Item .*video file '.*broken\.mp4' cannot be decoded"):
        normalize_item(str(broken))
    with pytest.raises(ValueError, match="videos are not downloaded"):
        normalize_item({"video": "https://example.com/clip.mp4"})
    with pytest.raises(ValueError, match=r"Item .*clip\.mp4' does not exist"):
        normalize_item(str(tmp_path / "clip.mp4"))
    clip = write_mp4(tmp_path / "clip.mp4", frames=4)
    with pytest.raises(ValueError, match=r"Item .*clip\.mp4' has 64x48 frames, more than max_image_pixels=1,000"):
        normalize_item(str(clip), max_image_pixels=1000)


def test_long_videos_are_read_up_to_the_frame_cap(tmp_path, monkeypatch, caplog):
    path = write_mp4(tmp_path / "long.mp4", frames=30, fps=10)
    monkeypatch.setattr(video, "MAX_DECODED_FRAMES", 10)
    with caplog.at_level(logging.WARNING):
        frames = video.read_video_frames(path)
    assert "only the first 10 are sampled" in caplog.text and len(frames) == 4  # 1 s of video at 2 fps -> min 4
    red = np.asarray(frames[-1])[..., 0].mean()
    assert red < 128  # frame 9 of 30: still mostly green


@pytest.mark.parametrize("model_type", ["qwen2_5_vl", "qwen3_vl"])
def test_content_items_on_the_other_backbones(tiny_backbone_factory, model_type, tmp_path):
    """Several images and a video file in one verbatim item, and the same meaning as an old-style item."""
    model = umarvel_st.from_mllm(str(tiny_backbone_factory(model_type)))
    clip = str(write_mp4(tmp_path / "clip.mp4"))
    item = {
        "content": [image(IMAGE), text("then"), image(random_image(56, 56, seed=3)), {"type": "video", "video": clip}]
    }
    features = model[0].preprocess([item, "text"])
    assert features["image_grid_thw"].shape[0] == 2 and features["video_grid_thw"].shape[0] == 1
    assert np.isfinite(model.encode([item])).all()
    legacy = {"image": IMAGE, "text": "a red kite", "instruction": "find it"}
    same = {"content": [image(IMAGE), instruction("Find it."), text(" a red kite." + SUFFIX_WITH_IMAGE)]}
    old, new = model[0].preprocess([legacy]), model[0].preprocess([same])
    assert torch.equal(old["input_ids"], new["input_ids"])


# ------------------------------------------------------------------ legacy: causal attention on unpadded batches
def test_legacy_causal_attention_only_on_unpadded_batches(model):
    encoder = model[0]
    item, longer = "a red kite over the sea", "a much longer caption of a red kite flying high over the grey sea"
    alone, in_padded_batch = model.encode([item]), model.encode([item, longer])[:1]
    np.testing.assert_allclose(alone, in_padded_batch, atol=1e-5)  # bidirectional either way by default
    encoder.legacy_causal_unpadded = True
    try:
        causal_alone, padded = model.encode([item]), model.encode([item, longer])[:1]
    finally:
        encoder.legacy_causal_unpadded = False
    assert np.abs(causal_alone - alone).max() > 1e-3  # one item, no padding: causal, as the reference
    np.testing.assert_allclose(padded, alone, atol=1e-5)  # a padded batch stays bidirectional


def reference_ids(encoder, content: list[dict]) -> list[int]:
    """The reference's ids: the whole chat rendered with the texts in place and tokenized in one processor pass."""
    parts, images, videos = [], [], []
    for part in content:
        if part["type"] in ("text", "instruction"):
            wrap = "<instruction_start>{}<instruction_end>" if part["type"] == "instruction" else "{}"
            parts.append({"type": "text", "text": wrap.format(part["text"])})
        else:
            parts.append({"type": part["type"]})
            (images if part["type"] == "image" else videos).append(part[part["type"]])
    messages = [
        {"role": "user", "content": parts},
        {"role": "assistant", "content": [{"type": "text", "text": "<emb>."}]},
    ]
    chat = encoder.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    processed = encoder.processor(text=[chat], images=images or None, videos=videos or None, return_tensors="pt")
    return processed["input_ids"][0].tolist()


@pytest.mark.parametrize("model_type", ["qwen2_vl", "qwen3_vl"])
def test_ids_match_one_processor_pass_over_the_whole_chat(tiny_backbone_factory, model_type):
    """Without typed special tokens, a verbatim item's ids are what the reference's one pass over the chat gives."""
    model = umarvel_st.from_mllm(str(tiny_backbone_factory(model_type)))
    encoder = model[0]
    frames = [random_image(56, 56, seed) for seed in range(4)]
    content = [
        text("{'"),
        instruction("Find me a similar image."),
        text("'} first\n"),
        image(random_image(56, 84, seed=5)),
        text(" "),  # adjacent text parts are one run, tokenized together (" green" is one token), as in one pass
        text("green, "),
        {"type": "video", "video": frames},
        text("and the end.\nSummarize above image in one word: "),
    ]
    features = encoder.preprocess([{"content": content}])
    ids = features["input_ids"][0][features["attention_mask"][0].bool()].tolist()
    assert ids == reference_ids(encoder, content)
