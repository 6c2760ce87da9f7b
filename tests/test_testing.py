"""Tests for the tiny offline backbone builders in `umarvel_st.testing`."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForImageTextToText,
    AutoProcessor,
    AutoTokenizer,
)

from umarvel_st.testing import (
    BACKBONES,
    QWEN_VL_SPECIAL_TOKENS,
    UMARVEL_TOKEN_ID_KEYS,
    UMARVEL_TOKENS,
    build_tiny_backbone,
    make_test_image,
)

MODEL_TYPES = list(BACKBONES)
SYSTEM_TURN = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
USER_TURN = "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>A dog on the beach.<|im_end|>\n"
GENERATION_PROMPT = "<|im_start|>assistant\n"


def _messages(image: object) -> list[dict]:
    return [
        {
            "role": "user",
            "content": [{"type": "image", "image": image}, {"type": "text", "text": "A dog on the beach."}],
        }
    ]


def test_supported_model_types() -> None:
    assert MODEL_TYPES == ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"]


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_build_writes_complete_checkpoint(tiny_backbone_factory, model_type: str) -> None:
    path = tiny_backbone_factory(model_type)
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        assert (path / name).is_file(), name
    assert (path / "processor_config.json").is_file() or (path / "preprocessor_config.json").is_file()
    config = json.loads((path / "config.json").read_text())
    assert config["model_type"] == model_type
    assert config["architectures"] == [BACKBONES[model_type].model_class]
    weights = load_file(path / "model.safetensors")
    assert {t.dtype for t in weights.values()} == {torch.float32}
    assert (path / "model.safetensors").stat().st_size < 1_200_000  # tiny: well under a few MB


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_loads_offline_and_runs_text_image_chat(tiny_backbone_factory, model_type: str) -> None:
    path = tiny_backbone_factory(model_type, with_umarvel_tokens=True)
    processor = AutoProcessor.from_pretrained(path)
    assert type(processor).__name__ == BACKBONES[model_type].processor_class
    assert type(processor.tokenizer).__name__ == "Qwen2Tokenizer"
    model = AutoModel.from_pretrained(path).eval()
    inputs = processor.apply_chat_template(
        _messages(make_test_image(90, 60, seed=1)),
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
    )
    merge = processor.image_processor.merge_size
    n_image_tokens = int(inputs["image_grid_thw"].prod()) // merge**2
    assert 4 <= n_image_tokens <= 16  # the tiny pixel budget
    assert int((inputs["input_ids"] == model.config.image_token_id).sum()) == n_image_tokens
    with torch.no_grad():
        hidden = model(**inputs).last_hidden_state
    assert hidden.shape == (1, inputs["input_ids"].shape[1], 64)  # (batch, seq, hidden)
    assert torch.isfinite(hidden).all()

    lm = AutoModelForImageTextToText.from_pretrained(path).eval()
    with torch.no_grad():
        logits = lm(**inputs).logits
    assert logits.shape[-1] == len(processor.tokenizer) == model.config.get_text_config().vocab_size


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_sentence_transformers_module_loads(tiny_backbone_factory, model_type: str) -> None:
    from sentence_transformers.base.modules import Transformer

    module = Transformer(str(tiny_backbone_factory(model_type)))
    image = make_test_image(56, 84, seed=2)
    features = module.preprocess(["A red car.", image, {"text": "A red car.", "image": image}])
    output = module(features)
    assert output["token_embeddings"].shape[0] == 3
    assert output["token_embeddings"].shape[-1] == 64


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_seed_determines_weights(tmp_path: Path, model_type: str) -> None:
    rng_before = torch.get_rng_state()
    first = build_tiny_backbone(model_type, tmp_path / "a", seed=7)
    again = build_tiny_backbone(model_type, tmp_path / "b", seed=7)
    other = build_tiny_backbone(model_type, tmp_path / "c", seed=8)
    assert torch.equal(torch.get_rng_state(), rng_before)  # the caller's RNG is left alone

    assert (first / "model.safetensors").read_bytes() == (again / "model.safetensors").read_bytes()
    assert (first / "tokenizer.json").read_bytes() == (again / "tokenizer.json").read_bytes()
    w_first, w_other = load_file(first / "model.safetensors"), load_file(other / "model.safetensors")
    assert w_first.keys() == w_other.keys()
    assert any(not torch.equal(w_first[k], w_other[k]) for k in w_first)


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_tokenizer_specials_match_config(tiny_backbone_factory, model_type: str) -> None:
    path = tiny_backbone_factory(model_type)
    tokenizer = AutoTokenizer.from_pretrained(path)
    config = AutoConfig.from_pretrained(path)
    text_config = config.get_text_config()

    ids = tokenizer.convert_tokens_to_ids(list(QWEN_VL_SPECIAL_TOKENS))
    assert ids == list(range(400, 400 + len(QWEN_VL_SPECIAL_TOKENS)))  # 400 BPE tokens, then Qwen's order
    assert all(tokenizer.added_tokens_decoder[i].special for i in ids)
    extra = BACKBONES[model_type].extra_tokens
    extra_ids = tokenizer.convert_tokens_to_ids(list(extra))
    assert extra_ids == list(range(ids[-1] + 1, ids[-1] + 1 + len(extra)))
    assert not any(tokenizer.added_tokens_decoder[i].special for i in extra_ids)

    assert config.image_token_id == tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert config.video_token_id == tokenizer.convert_tokens_to_ids("<|video_pad|>")
    assert config.vision_start_token_id == tokenizer.convert_tokens_to_ids("<|vision_start|>")
    assert config.vision_end_token_id == tokenizer.convert_tokens_to_ids("<|vision_end|>")
    assert tokenizer.pad_token == "<|endoftext|>"
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.padding_side == "left"
    for cfg in (config, text_config):
        assert cfg.pad_token_id == tokenizer.pad_token_id
        assert cfg.eos_token_id == tokenizer.eos_token_id
        assert cfg.bos_token_id == tokenizer.convert_tokens_to_ids("<|endoftext|>")
    assert text_config.vocab_size == len(tokenizer)
    assert not hasattr(config, "emb_token_id")
    assert "<emb>" not in tokenizer.get_vocab()

    # Left padding with <|endoftext|>.
    batch = tokenizer(["A dog.", "A dog on the beach."], padding=True)
    assert batch["input_ids"][0][0] == tokenizer.pad_token_id
    assert batch["attention_mask"][0][0] == 0


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_umarvel_tokens_are_ordinary_consecutive_and_recorded(tiny_backbone_factory, model_type: str) -> None:
    path = tiny_backbone_factory(model_type, with_umarvel_tokens=True)
    tokenizer = AutoTokenizer.from_pretrained(path)
    config = AutoConfig.from_pretrained(path)

    ids = tokenizer.convert_tokens_to_ids(list(UMARVEL_TOKENS))
    n = len(tokenizer)
    assert ids == [n - 3, n - 2, n - 1]
    assert [getattr(config, key) for key in UMARVEL_TOKEN_ID_KEYS] == ids
    assert json.loads((path / "config.json").read_text())["emb_token_id"] == ids[0]
    for token_id in ids:
        assert not tokenizer.added_tokens_decoder[token_id].special
        assert token_id not in tokenizer.all_special_ids
    assert config.get_text_config().vocab_size == n
    # Each is one token in running text, and survives decoding with skip_special_tokens (it is not special).
    encoded = tokenizer("<instruction_start>Find it.<instruction_end> A dog.<emb>.", add_special_tokens=False)
    assert [i for i in encoded["input_ids"] if i in ids] == [ids[1], ids[2], ids[0]]
    assert "<emb>" in tokenizer.decode(encoded["input_ids"], skip_special_tokens=True)


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_chat_template_system_turn(tiny_backbone_factory, model_type: str) -> None:
    path = tiny_backbone_factory(model_type)
    processor = AutoProcessor.from_pretrained(path)
    messages = _messages(make_test_image(56, 56))
    rendered = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    system = SYSTEM_TURN if model_type in ("qwen2_vl", "qwen2_5_vl") else ""
    assert rendered == system + USER_TURN + GENERATION_PROMPT
    assert processor.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False) == rendered

    without_prompt = processor.apply_chat_template(messages, add_generation_prompt=False, tokenize=False)
    assert without_prompt == system + USER_TURN
    # An explicit system turn replaces the default one in both templates.
    with_system = [{"role": "system", "content": "Be brief."}, *messages]
    rendered = processor.apply_chat_template(with_system, tokenize=False)
    assert rendered == "<|im_start|>system\nBe brief.<|im_end|>\n" + USER_TURN


# sha256 of the official code's chat_template.json in the reference-parity fixture (tiny_checkpoint_meta.json).
REFERENCE_QWEN2_VL_TEMPLATE_SHA256 = "94174d7176c52a7192f96fc34eb2cf23c7c2059d63cdbfadca1586ba89731fb7"


def test_qwen2_vl_template_is_the_reference_one(tiny_backbone_factory) -> None:
    template = (tiny_backbone_factory("qwen2_vl") / "chat_template.jinja").read_text()
    # The reference stored it the transformers 4.x way: chat_template.json, indent 2, trailing newline.
    legacy_file = json.dumps({"chat_template": template}, indent=2) + "\n"
    assert hashlib.sha256(legacy_file.encode()).hexdigest() == REFERENCE_QWEN2_VL_TEMPLATE_SHA256


@pytest.mark.parametrize(("model_type", "factor"), [("qwen2_vl", 28), ("qwen2_5_vl", 28), ("qwen3_vl", 32)])
def test_image_processor_budget_and_pil_backend(tiny_backbone_factory, model_type: str, factor: int) -> None:
    path = tiny_backbone_factory(model_type)
    torchvision_ip = AutoImageProcessor.from_pretrained(path)
    pil_ip = AutoImageProcessor.from_pretrained(path, backend="pil")
    assert type(torchvision_ip).__name__ == "Qwen2VLImageProcessor"
    assert type(pil_ip).__name__ == "Qwen2VLImageProcessorPil"
    assert torchvision_ip.patch_size * torchvision_ip.merge_size == factor
    assert (torchvision_ip.size.shortest_edge, torchvision_ip.size.longest_edge) == (4 * factor**2, 16 * factor**2)

    image = make_test_image(300, 200, seed=3)  # above the budget: resized down to at most 16 merged tokens
    grid_tv = torchvision_ip(image, return_tensors="pt")["image_grid_thw"]
    grid_pil = pil_ip(image, return_tensors="pt")["image_grid_thw"]
    assert torch.equal(grid_tv, grid_pil)
    assert int(grid_tv.prod()) // 4 <= 16
    # AutoProcessor(backend="pil") fails on the video processor (torchvision only); pass the image processor.
    processor = AutoProcessor.from_pretrained(path, image_processor=pil_ip)
    assert type(processor.image_processor).__name__ == "Qwen2VLImageProcessorPil"


def test_small_size_config(tmp_path: Path) -> None:
    path = build_tiny_backbone("qwen3_vl", tmp_path / "small", size="small")
    text = AutoConfig.from_pretrained(path).get_text_config()
    assert (text.hidden_size, text.num_hidden_layers, text.num_attention_heads) == (512, 4, 8)
    head_dim = text.hidden_size // text.num_attention_heads
    assert sum(text.rope_parameters["mrope_section"]) == head_dim // 2


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_mrope_section_sums_to_half_head_dim(tiny_backbone_factory, model_type: str) -> None:
    text = AutoConfig.from_pretrained(tiny_backbone_factory(model_type)).get_text_config()
    assert sum(text.rope_parameters["mrope_section"]) == text.hidden_size // text.num_attention_heads // 2


def test_unknown_model_type_raises_with_supported_list(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"'llava'.*\['qwen2_vl', 'qwen2_5_vl', 'qwen3_vl'\]"):
        build_tiny_backbone("llava", tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_unknown_size_raises_with_supported_list(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"'huge'.*\['tiny', 'small'\]"):
        build_tiny_backbone("qwen2_vl", tmp_path / "x", size="huge")


@pytest.mark.parametrize(("mode", "shape"), [("RGB", (30, 20, 3)), ("RGBA", (30, 20, 4)), ("L", (30, 20))])
def test_make_test_image(mode: str, shape: tuple[int, ...]) -> None:
    import numpy as np

    image = make_test_image(20, 30, seed=5, mode=mode)
    assert image.mode == mode
    assert np.asarray(image).shape == shape
    assert np.array_equal(np.asarray(image), np.asarray(make_test_image(20, 30, seed=5, mode=mode)))
    assert not np.array_equal(np.asarray(image), np.asarray(make_test_image(20, 30, seed=6, mode=mode)))
