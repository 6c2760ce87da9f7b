"""`umarvel convert`: official-layout checkpoints (padded embedding matrix, no U-MARVEL tokens) get the tokens as
the official evaluation adds them, the reference options, and are saved as loadable umarvel-st models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText, AutoTokenizer

from umarvel_st.cli import main
from umarvel_st.hub.convert import convert_checkpoint
from umarvel_st.testing import UMARVEL_TOKENS, build_tiny_backbone

PADDING_ROWS = 11  # the real 7B pads 151657 tokenizer entries to 152064 rows


def build_official_layout(model_type: str, output_dir: Path) -> Path:
    """A tiny checkpoint laid out like the official ones: no U-MARVEL tokens, more embedding rows than tokens."""
    build_tiny_backbone(model_type, output_dir, with_umarvel_tokens=False)
    model = AutoModelForImageTextToText.from_pretrained(output_dir)
    torch.manual_seed(1)
    model.resize_token_embeddings(len(AutoTokenizer.from_pretrained(output_dir)) + PADDING_ROWS, mean_resizing=False)
    model.save_pretrained(output_dir)
    return output_dir


def embedding_matrix(folder: Path) -> torch.Tensor:
    weights = load_file(folder / "model.safetensors")
    (key,) = [key for key in weights if key.endswith("embed_tokens.weight")]
    return weights[key]


def official_evaluation_rows(folder: Path) -> torch.Tensor:
    """What the official evaluation does at load time: add the tokens, shrink to len+1, grow twice (mean init)."""
    model = AutoModelForImageTextToText.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.add_tokens(list(UMARVEL_TOKENS), special_tokens=False)
    vocab = len(tokenizer) - len(UMARVEL_TOKENS)
    model.resize_token_embeddings(vocab + 1)
    model.resize_token_embeddings(vocab + 2, mean_resizing=True)
    model.resize_token_embeddings(vocab + 3, mean_resizing=True)
    return model.get_input_embeddings().weight.detach()


@pytest.fixture(scope="module")
def official(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("official")
    return {
        model_type: build_official_layout(model_type, root / model_type) for model_type in ("qwen2_vl", "qwen3_vl")
    }


def test_tokens_get_the_official_evaluation_rows_and_the_rest_is_kept(official, tmp_path: Path) -> None:
    source = official["qwen2_vl"]
    vocab = len(AutoTokenizer.from_pretrained(source))
    stored = embedding_matrix(source)
    assert stored.shape[0] == vocab + PADDING_ROWS

    model, report = convert_checkpoint(str(source), tmp_path / "converted")

    assert report.token_ids == dict(zip(UMARVEL_TOKENS, range(vocab, vocab + 3), strict=True))
    assert report.initialised_rows == ("<instruction_start>", "<instruction_end>")
    assert report.mean_of_rows == (0, vocab + 1)
    converted = embedding_matrix(tmp_path / "converted")
    assert converted.shape == stored.shape  # padding rows kept, nothing re-initialised
    untouched = [row for row in range(stored.shape[0]) if row not in (vocab + 1, vocab + 2)]
    torch.testing.assert_close(converted[untouched], stored[untouched], rtol=0, atol=0)  # <emb> keeps its row
    mean = stored[: vocab + 1].mean(0)
    torch.testing.assert_close(converted[vocab + 1], mean)
    torch.testing.assert_close(converted[vocab + 2], mean)
    # The official load-time procedure lands on the same rows (it samples around the mean with 1e-9 x covariance).
    torch.testing.assert_close(converted[: vocab + 3], official_evaluation_rows(source), rtol=0, atol=1e-4)

    saved_tokenizer = AutoTokenizer.from_pretrained(tmp_path / "converted")
    assert saved_tokenizer.convert_tokens_to_ids(list(UMARVEL_TOKENS)) == list(range(vocab, vocab + 3))
    options = json.loads((tmp_path / "converted" / "sentence_bert_config.json").read_text())
    assert options["image_backend"] == "pil" and options["position_mode"] == "sequential"
    assert options["summarize_suffix"] and options["generation_prompt"] and options["max_pixels"] == 300 * 28 * 28
    assert report.dimension == model.get_embedding_dimension() == 64


def test_cli_converts_a_qwen3_vl_checkpoint_with_its_reference_options(official, tmp_path: Path, capsys) -> None:
    assert main(["convert", str(official["qwen3_vl"]), str(tmp_path / "converted")]) == 0

    printed = capsys.readouterr().out
    assert "set to the mean of embedding rows 0.." in printed and "Embedding dimension 64" in printed
    assert "float32" in printed  # "auto" keeps the checkpoint's dtype
    options = json.loads((tmp_path / "converted" / "sentence_bert_config.json").read_text())
    assert options["image_backend"] == "torchvision" and options["position_mode"] == "sequential"
    assert (tmp_path / "converted" / "encoder.py").is_file()  # saved with its modeling code


def test_a_checkpoint_that_stores_the_tokens_keeps_ids_and_rows(tiny_backbone_factory, tmp_path: Path) -> None:
    source = tiny_backbone_factory("qwen2_vl", with_umarvel_tokens=True)
    tokenizer = AutoTokenizer.from_pretrained(source)

    _, report = convert_checkpoint(str(source), tmp_path / "converted")

    assert report.initialised_rows == () and report.mean_of_rows is None
    assert list(report.token_ids.values()) == tokenizer.convert_tokens_to_ids(list(UMARVEL_TOKENS))
    torch.testing.assert_close(embedding_matrix(tmp_path / "converted"), embedding_matrix(source), rtol=0, atol=0)


def test_a_non_empty_destination_is_refused_before_any_work(official, tmp_path: Path) -> None:
    destination = tmp_path / "converted"
    destination.mkdir()
    (destination / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="is not empty; converting into it would mix"):
        main(["convert", str(official["qwen2_vl"]), str(destination)])
    with pytest.raises(ValueError, match="only replaces a folder holding a saved model"):
        main(["convert", str(official["qwen2_vl"]), str(destination), "--overwrite"])
    assert [path.name for path in destination.iterdir()] == ["notes.txt"]


def test_overwrite_replaces_a_saved_model_whole(official, tmp_path: Path) -> None:
    destination = tmp_path / "converted"
    convert_checkpoint(str(official["qwen2_vl"]), destination)
    (destination / "stale.safetensors").write_text("from an earlier run")

    assert main(["convert", str(official["qwen2_vl"]), str(destination), "--overwrite"]) == 0

    assert not (destination / "stale.safetensors").exists() and (destination / "modules.json").is_file()


@pytest.mark.parametrize("name", ["missing/checkpoint", "./missing"])
def test_a_missing_source_folder_is_named_as_such(tmp_path: Path, name: str) -> None:
    source = str(tmp_path / name) if name.startswith("missing") else name
    with pytest.raises(ValueError, match=r"checkpoint folder '.*missing.*' does not exist"):
        convert_checkpoint(source, tmp_path / "converted")
