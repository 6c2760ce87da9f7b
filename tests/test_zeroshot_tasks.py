"""Zero-shot tasks on their synthetic copies: the prompt the encoder tokenizes for one query and one candidate per
dataset against the spec's rule (section 2), the readers' relevance structures, video sampling, and bad input."""

from __future__ import annotations

import json
import logging
import pickle
import shutil
from pathlib import Path

import pytest
from PIL import Image

import umarvel_st
from umarvel_st.data.zeroshot.synthetic import make_synthetic_zeroshot
from umarvel_st.evaluation.zeroshot.items import content_item, encoded_user_text, render
from umarvel_st.evaluation.zeroshot.tasks import TASKS, get_task
from umarvel_st.modeling import video

CHECKPOINT = str(Path(umarvel_st.__file__).parent / "assets" / "tiny-umarvel-qwen2vl")

IS, IE = "<instruction_start>", "<instruction_end>"
CAPTION = "one shape: a red circle at the top left"  # synthetic item 0
T2I = f"{IS}Find me an everyday image that matches the given caption.{IE}"

# task -> (query user text, candidate user text), from the spec's section 2 on the synthetic copies' first rows.
EXPECTED = {
    "sharegpt4v": (T2I + CAPTION, "[IMG]"),
    "urban1k": (
        "one shape: a green circle at the top right",
        f"[IMG]{IS}Find an image caption describing the following everyday image.{IE}",
    ),
    "flickr30k": (
        T2I + "One shape: a red circle at the top left.\nSummarize above sentence in one word: ",
        "[IMG]\nSummarize above image in one word: ",
    ),
    "circo": (
        f"[IMG]{IS}I'm looking for a similar everyday image with the described changes.{IE} make it green",
        "[IMG]",
    ),
    "genecis_change_object": (
        f"[IMG]{IS}I want you to retrieve an similar image with the described changes. Show me an image that best "
        f"captures the following the described changes.{IE} Green.",
        "[IMG]",
    ),
    "genecis_focus_attribute": (
        f"[IMG]{IS}I want you to retrieve an image with the same attributes as described. Show me an image that best "
        f"captures the following the same attributes.{IE} Circle.",
        "[IMG]",
    ),
    "visdial": (
        f"{IS}Find me an everyday image that matches the given dialog.{IE} Q: what colour is it? A: red. "
        "Q: what shape is it? A: circle.",
        "[IMG]",
    ),
    "fashioniq_multiturn": (
        f"{IS}Find me a similar fashion image based on the following multi-round modifications.{IE}[IMG]is more "
        "green[IMG]is blue and has a circle",
        "[IMG]",
    ),
    "ccneg": ("[IMG]", CAPTION),
    "sugar_crepe_add_att": (f"[IMG]{IS}Find an image caption describing the following image.{IE}", CAPTION),
    "sugar_crepe_swap_obj": ("[IMG]", CAPTION),
    "msrvtt": (f"{IS}Find an everyday video match with caption.{IE}" + CAPTION, "[VID]"),
    "msvd": (f"{IS}Find an everyday video match with caption.{IE}" + CAPTION, "[VID]"),
}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("zeroshot")
    make_synthetic_zeroshot(root)
    return root


@pytest.fixture(scope="module")
def encoder():
    return umarvel_st.from_mllm(CHECKPOINT)[0]


def tokenized(encoder, template, raw, nframes=None) -> tuple[str, str]:
    """The template's user text and the one the encoder tokenizes (decoded from its ids) for ``raw``."""
    parts = template.apply(raw)
    return render(parts), encoded_user_text(encoder, content_item(parts, nframes))


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_encoder_tokenizes_the_spec_prompt_of_query_and_candidate(data: Path, encoder, name: str) -> None:
    task = TASKS[name]
    read = task.read(data)
    query, encoded_query = tokenized(encoder, task.query, read.queries[0], task.nframes)
    candidate, encoded_candidate = tokenized(encoder, task.candidate, read.candidates[0], task.nframes)
    assert (query, candidate) == EXPECTED[name]
    assert (encoded_query, encoded_candidate) == EXPECTED[name]  # what the model actually reads


def test_instruction_is_the_real_marker_tokens_and_masked_in_task_items(data: Path, encoder) -> None:
    task = TASKS["fashioniq_multiturn"]
    features = encoder.preprocess([content_item(task.query.apply(task.read(data).queries[0]))])
    ids, pooled = features["input_ids"][0], features["pooling_mask"][0]
    start = (ids == encoder.instruction_start_id).nonzero().item()
    end = (ids == encoder.instruction_end_id).nonzero().item()
    assert not pooled[start : end + 1].any() and pooled[end + 1]  # the span is masked, the round image after it is not
    image_pad = encoder.config.image_token_id
    assert features["image_grid_thw"].shape[0] == 2  # FashionIQ's two round images, each its own vision block
    runs = "".join("I" if token == image_pad else "." for token in ids.tolist()).split(".")
    assert len([run for run in runs if run]) == 2


def test_urban1k_set_literal_is_an_opt_in_legacy_flag(data: Path, encoder) -> None:
    task = get_task("urban1k", ("urban1k_set_literal",))
    candidate, encoded = tokenized(encoder, task.candidate, task.read(data).candidates[0])
    assert candidate == encoded == f"[IMG]{{'{IS}Find an image caption describing the following everyday image.{IE}'}}"
    assert TASKS["urban1k"].image_max_pixels == 16384 * 28 * 28
    with pytest.raises(ValueError, match="Unknown legacy flags"):
        get_task("urban1k", ("causal",))


def test_every_dataset_of_the_paper_is_registered_and_read(data: Path) -> None:
    datasets = {task.dataset for task in TASKS.values()}
    assert len(datasets) == 11
    assert sum(task.group == "genecis" for task in TASKS.values()) == 4
    assert sum(task.group == "sugar_crepe" for task in TASKS.values()) == 7
    flickr = TASKS["flickr30k"].read(data)
    assert len(flickr.queries) == 5 * len(flickr.candidates)
    assert flickr.positives[7] == [1]
    circo = TASKS["circo"].read(data)
    assert len(circo.positives[0]) == 2  # several ground truths; the reference image stays in the pool
    genecis = TASKS["genecis_change_object"].read(data)
    assert all(len(gallery) == 3 for gallery in genecis.galleries)  # target + its own 2-image gallery
    assert TASKS["ccneg"].read(data).galleries[1] == [2, 3]


def test_ccneg_keeps_the_last_rows_and_strips_commas(data: Path) -> None:
    from umarvel_st.data.zeroshot.readers import read_ccneg

    read = read_ccneg(data / "ccneg", last_rows=2)
    assert len(read.queries) == 2 and read.queries[0].images[0].endswith("000000004.jpg")
    assert read.candidates[1].text == "one shape a orange circle at the top left"  # caption of item 5, comma gone


def test_video_sampling_rules(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert video.frame_count(300, 30.0) == 20  # 10 s at 2 fps
    assert video.frame_count(10, 30.0) == 4  # at least 4
    assert video.frame_count(7, 1.0) == 6  # at most the clip's frames, even
    assert video.frame_count(100, 25.0, nframes=12) == 12
    assert video.frame_pixels(12) == 768 * 28 * 28
    assert video.frame_pixels(2000) == int(128 * 28 * 28 * 1.05)
    frames = [Image.new("RGB", (48, 36), (i * 20, 0, 0)) for i in range(5)]
    path = tmp_path / "short.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100)
    with caplog.at_level(logging.WARNING):
        sampled = video.read_video_frames(path, nframes=12)
    assert len(sampled) == 12 and "fewer than the 12" in caplog.text  # short clip: frames repeated, warned
    width, height = sampled[0].size
    assert width % 28 == 0 and height % 28 == 0 and width * height >= 128 * 28 * 28  # small videos upscaled


def test_bad_videos_are_refused(tmp_path: Path) -> None:
    broken = tmp_path / "broken.gif"
    broken.write_bytes(b"GIF89a not really")
    with pytest.raises(ValueError, match="cannot be decoded"):
        video.read_video_frames(broken)
    with pytest.raises(ValueError, match="does not exist"):
        video.read_video_frames(tmp_path / "missing.gif")


def test_wrong_layout_names_the_missing_file_and_the_layout(data: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"flickr_text\.json is missing.*5 captions per image"):
        TASKS["flickr30k"].read(tmp_path)
    copy = tmp_path / "msvd"
    shutil.copytree(data / "msvd", copy)
    (copy / "YouTubeClips" / "clip_2.gif").unlink()
    with pytest.raises(ValueError, match=r"no video clip_2"):
        TASKS["msvd"].read(copy)


def test_targets_outside_the_pool_are_refused(data: Path, tmp_path: Path) -> None:
    copy = tmp_path / "circo"
    shutil.copytree(data / "circo", copy)
    queries = json.loads((copy / "annotations/val.json").read_text())
    queries[1]["gt_img_ids"].append(99)
    (copy / "annotations/val.json").write_text(json.dumps(queries))
    with pytest.raises(ValueError, match=r"query 1 .* \[99\]"):
        TASKS["circo"].read(copy)
    copy = tmp_path / "fashioniq_multiturn"
    shutil.copytree(data / "fashioniq_multiturn", copy)
    rows = json.loads((copy / "data/all.val.json").read_text())
    rows[0]["target"][1] = "nowhere"
    (copy / "data/all.val.json").write_text(json.dumps(rows))
    with pytest.raises(ValueError, match="'nowhere', which is not in"):
        TASKS["fashioniq_multiturn"].read(copy)


class _Gadget:
    def __reduce__(self):
        return (print, ("ran",))


def test_msvd_captions_pickle_may_not_name_code(data: Path, tmp_path: Path) -> None:
    copy = tmp_path / "msvd"
    shutil.copytree(data / "msvd", copy)
    (copy / "raw-captions.pkl").write_bytes(pickle.dumps({"clip_0": _Gadget()}))
    with pytest.raises(ValueError, match="only plain dicts"):
        TASKS["msvd"].read(copy)


def test_circo_ground_truth_must_start_with_the_target(data: Path, tmp_path: Path) -> None:
    copy = tmp_path / "circo"
    shutil.copytree(data / "circo", copy)
    queries = json.loads((copy / "annotations/val.json").read_text())
    queries[2]["gt_img_ids"].reverse()
    (copy / "annotations/val.json").write_text(json.dumps(queries))
    with pytest.raises(ValueError, match="query 2 .* must start with target_img_id"):
        TASKS["circo"].read(copy)


def test_a_video_without_frames_is_refused(tmp_path: Path) -> None:
    import av

    empty = tmp_path / "empty.mp4"
    with av.open(str(empty), "w") as container:  # a container closed before any frame was written
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        container.start_encoding()
    with pytest.raises(ValueError, match=r"empty\.mp4' holds no"):
        video.read_video_frames(empty)


def write_mp4(path: Path, count: int) -> Path:
    """A 64x48 MPEG-4 clip of ``count`` frames at 10 fps, running from green to red."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for index in range(count):
            image = Image.new("RGB", (64, 48), (index * 255 // count, 255 - index * 255 // count, 0))
            container.mux(stream.encode(av.VideoFrame.from_image(image)))
        container.mux(stream.encode())
    return path


def test_an_mp4_video_decodes_with_pyav(tmp_path: Path) -> None:
    """MSR-VTT and MSVD ship .mp4 / .avi files: they decode through PyAV (a base dependency) at their own frame rate."""
    import numpy as np

    path = write_mp4(tmp_path / "clip.mp4", 30)  # 3 s at 10 fps
    sampled = video.read_video_frames(path)
    assert len(sampled) == video.frame_count(30, 10.0) == 6  # 2 fps over 3 s
    first, last = np.asarray(sampled[0].convert("RGB")), np.asarray(sampled[-1].convert("RGB"))
    assert first[..., 1].mean() > last[..., 1].mean() + 100  # the frames run from green to red, in order


def test_only_the_sampled_frames_are_converted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every frame up to the last sampled one is decoded, but only the sampled ones become images (memory and time
    stay bounded by the sampled frames, not the clip's length)."""
    import av

    converted: list[int] = []
    to_image = av.VideoFrame.to_image

    def counting(frame: av.VideoFrame, *args, **kwargs) -> Image.Image:
        converted.append(round(frame.time * 10))  # the frame index at 10 fps
        return to_image(frame, *args, **kwargs)

    monkeypatch.setattr(av.VideoFrame, "to_image", counting)
    sampled = video.read_video_frames(write_mp4(tmp_path / "long.mp4", 60), nframes=4)
    assert len(sampled) == 4
    assert converted == [0, 20, 39, 59]  # linspace(0, 59, 4).round(): the first and last frames and two between
