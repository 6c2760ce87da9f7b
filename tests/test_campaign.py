"""Defects found by re-running issue 8's fault and bad-input campaign after its fixes: options that read a string as
True, mistyped paths that load or embed something else, unbounded synthetic data, and flags silently ignored."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

import umarvel_st
from umarvel_st.cli import main
from umarvel_st.data.synthetic import make_synthetic_mbeir
from umarvel_st.modeling.inputs import VIDEO_EXTENSIONS, normalize_item

ASSETS = Path(umarvel_st.__file__).parent / "assets"
CHECKPOINT = str(ASSETS / "tiny-umarvel-qwen2vl")


@pytest.fixture(scope="module")
def model():
    return umarvel_st.from_mllm(CHECKPOINT, device="cpu")


@pytest.mark.parametrize("option", ["summarize_suffix", "generation_prompt", "train_generation_prompt"])
def test_a_string_for_a_boolean_option_is_refused_not_read_as_true(option):
    with pytest.raises(TypeError, match=rf"{option} must be True or False, got 'false' \(str\)"):
        umarvel_st.from_mllm(CHECKPOINT, device="cpu", **{option: "false"})


def test_prompts_must_be_strings(model):
    with pytest.raises(TypeError, match="prompts must be a dict of name -> instruction strings"):
        umarvel_st.from_mllm(CHECKPOINT, device="cpu", prompts={"web": 5})


def test_a_cap_set_to_zero_after_building_is_refused_not_replaced_by_the_default(model):
    encoder = model[0]
    try:
        encoder.max_seq_length = 0
        with pytest.raises(ValueError, match="max_seq_length must be a positive int or None"):
            model.encode(["a dog"], show_progress_bar=False)
    finally:
        encoder.max_seq_length = 1024


@pytest.mark.parametrize("text", ["clip.mp4", "videos/cat.MOV", "/data/missing clip.mkv"])
def test_a_string_naming_a_missing_video_file_is_an_error_not_text(text):
    # A string naming a video file is a video (tests/test_content_items.py); a missing one is an error.
    with pytest.raises(ValueError, match="video file .* does not exist"):
        normalize_item(text)
    assert normalize_item("we watched clip.mp4 yesterday").text  # a sentence stays text


def test_video_extension_list_matches_sentence_transformers():
    from sentence_transformers.base.modality import is_video_url_or_path

    candidates = VIDEO_EXTENSIONS + (".webm", ".gif", ".png", ".txt", ".mpeg")
    for extension in candidates:
        assert is_video_url_or_path(f"https://example.com/v{extension}") == (extension in VIDEO_EXTENSIONS)


def test_a_mistyped_model_folder_is_named_as_missing(tmp_path):
    missing = str(tmp_path / "no" / "such-model")
    for build in (umarvel_st.from_mllm, umarvel_st.load):
        with pytest.raises(ValueError, match=r"model folder '.*such-model' does not exist"):
            build(missing)


def test_from_mllm_names_a_folder_that_is_not_a_checkpoint(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="has no config.json, so it is not a Qwen-VL checkpoint folder"):
        umarvel_st.from_mllm(str(tmp_path))


def test_load_refuses_a_folder_without_a_saved_model_instead_of_building_mean_pooling():
    with pytest.raises(ValueError, match=r"no saved sentence-transformers model \(no modules.json\).*from_mllm"):
        umarvel_st.load(CHECKPOINT)


def write_recipe(tmp_path: Path, **changes) -> Path:
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('{"query": "q", "positive": "p"}\n', encoding="utf-8")
    recipe = {
        "name": "t",
        "base_model": CHECKPOINT,
        "output_dir": str(tmp_path / "run"),
        "stages": [{"name": "s", "data": {"kind": "pairs", "path": str(pairs)}, "batch_size": 1, "max_steps": 1}],
        **changes,
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return path


def test_dry_run_refuses_a_missing_base_model_folder(tmp_path):
    recipe = write_recipe(tmp_path, base_model=str(tmp_path / "models" / "missing"))
    with pytest.raises(ValueError, match=r"base_model: The model folder '.*missing' does not exist"):
        main(["train", str(recipe), "--dry-run"])


def test_dry_run_refuses_an_output_dir_that_is_a_file(tmp_path):
    (tmp_path / "taken").write_text("x")
    recipe = write_recipe(tmp_path, output_dir=str(tmp_path / "taken"))
    with pytest.raises(ValueError, match=r"output_dir '.*taken' is a file"):
        main(["train", str(recipe), "--dry-run"])


@pytest.mark.parametrize(
    ("option", "value"),
    [("pool_size", 0), ("pool_size", 10**9), ("image_size", 100_000), ("test_queries", 10**9), ("image_size", 64.5)],
)
def test_synthetic_sizes_are_bounded_before_anything_is_written(tmp_path, option, value):
    with pytest.raises(ValueError, match=rf"{option} must be an integer from"):
        make_synthetic_mbeir(tmp_path / "data", **{option: value})
    assert not (tmp_path / "data").exists()


def test_exact_repo_id_without_portable_is_refused(tmp_path):
    with pytest.raises(ValueError, match="add --portable or drop --exact-repo-id"):
        main(
            [
                "publish",
                str(ASSETS / "umarvel-demo"),
                "org/x",
                "--dry-run",
                str(tmp_path / "repo"),
                "--exact-repo-id",
                "org/y",
            ]
        )
    assert not (tmp_path / "repo").exists()


def test_an_unknown_device_name_is_refused_before_the_worker_pool_starts(tmp_path):
    from umarvel_st.evaluation.mbeir_evaluator import MBEIREvaluator

    with pytest.raises(ValueError, match="devices: 'tpu:0' is not a torch device"):
        MBEIREvaluator(tmp_path, devices=["tpu:0", "cpu"])


def test_demo_checks_the_model_before_writing_the_benchmark(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        main(["demo", "--model", str(tmp_path / "missing-model"), "--data", str(tmp_path / "data")])
    assert not (tmp_path / "data").exists()


MEMORY_PROBE = """
import io, resource, sys
from PIL import Image
import umarvel_st
model = umarvel_st.from_mllm(sys.argv[1], device="cpu")
model.encode([Image.new("RGB", (64, 64))], show_progress_bar=False)
buffer = io.BytesIO()
Image.new("RGB", (6000, 6000), (10, 200, 30)).save(buffer, "PNG")  # 36M pixels, under max_image_pixels
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
model.encode([{"image": buffer.getvalue(), "text": str(i)} for i in range(6)], batch_size=6, show_progress_bar=False)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
"""


def test_a_batch_of_large_images_costs_one_decoded_image_not_one_per_item():
    # Six 36-megapixel PNGs of 0.1 MB each in one batch: 650 MB if all stay decoded until the processor runs.
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-c", MEMORY_PROBE, CHECKPOINT], capture_output=True, text=True, timeout=300, check=True
    )
    growth_mb = int(result.stdout.split()[-1])
    assert growth_mb < 300, f"peak memory grew by {growth_mb} MB"
