"""Re-ranker training: the official loss reproduces the reference's first-step loss, the data builder draws negatives
as the reference does, and short trainer runs (official loss with full fine-tuning or LoRA, BCE on the score) change
the scores and survive merge + save + load."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from sentence_transformers.cross_encoder import CrossEncoderTrainer, CrossEncoderTrainingArguments
from sentence_transformers.cross_encoder.losses import BinaryCrossEntropyLoss
from test_reranker import CHECKPOINT, FIXTURE, fixture_item, fixture_pairs  # tests/ is on sys.path

import umarvel_st
from umarvel_st.modeling.reranker import normalize_pair
from umarvel_st.train.lora import apply_lora, merge_lora
from umarvel_st.train.reranker import PointwiseLMLoss, assistant_labels, build_rerank_dataset

TRAIN = FIXTURE["train"]
TRAIN_QUERIES = {query["qid"]: query for query in FIXTURE["train_queries"]}
# The instruction key is (query dataset, query modality, modality of the query's positive).
INSTRUCTIONS = {"7:41": "7, image,text, image", "4:42": "4, text, text"}


def training_inputs() -> dict[str, Any]:
    """The fixture's training batch as items: queries, candidates, positives and ranked lists by id."""
    queries = {
        qid: fixture_item(
            {"text": query["query_txt"], "image": query["query_img_path"]}, FIXTURE["instructions"][INSTRUCTIONS[qid]]
        )
        for qid, query in TRAIN_QUERIES.items()
    }
    candidates = {
        candidate["did"]: fixture_item({"text": candidate["txt"], "image": candidate["img_path"]})
        for candidate in FIXTURE["candidates"]
    }
    positives = {qid: query["rerank"]["gt_docs"] for qid, query in TRAIN_QUERIES.items()}
    ranked = {qid: query["rerank"]["top100_docs"] for qid, query in TRAIN_QUERIES.items()}
    return {"queries": queries, "candidates": candidates, "positives": positives, "ranked": ranked}


@pytest.fixture(scope="module")
def model() -> umarvel_st.reranker.UMarvelCrossEncoder:
    return umarvel_st.reranker_from_mllm(str(CHECKPOINT))


def fixture_columns() -> list[list[Any]]:
    dataset = build_rerank_dataset(**training_inputs())
    return [dataset["query"], dataset["positive"], dataset["negative"]]


def test_training_batch_renders_and_masks_as_the_reference(model) -> None:
    queries, positives, negatives = fixture_columns()
    raw = [*zip(queries, positives, strict=True), *zip(queries, negatives, strict=True)]
    pairs = [normalize_pair(pair, index) for index, pair in enumerate(raw)]
    features = model[0].render(pairs, answers=["Yes", "Yes", "No", "No"], padding_side="right", max_text_tokens=256)
    assert features["input_ids"].tolist() == [row["input_ids_padded"] for row in TRAIN["sequences"]]
    assert features["attention_mask"].tolist() == [row["attention_mask_padded"] for row in TRAIN["sequences"]]
    labels = assistant_labels(features["input_ids"], features["attention_mask"], model[0].tokenizer)
    assert labels.tolist() == [row["labels"] for row in TRAIN["sequences"]]
    assert ((labels != -100).sum(-1) == 6).all()  # <|im_start|> assistant \n Yes|No <|im_end|> \n


def test_official_loss_reproduces_the_reference(model) -> None:
    with torch.no_grad():
        loss = PointwiseLMLoss(model)(fixture_columns())
    assert abs(float(loss) - TRAIN["loss"]) <= 1e-5


def test_official_loss_with_mrope_positions_is_the_reference_variant(model) -> None:
    with torch.no_grad():
        loss = PointwiseLMLoss(model, position_mode="mrope")(fixture_columns())
    assert abs(float(loss) - TRAIN["variants"]["loss_with_mrope_position_ids"]) <= 1e-5
    assert abs(float(loss) - TRAIN["loss"]) > 0.1


def test_official_loss_without_truncation_differs(model) -> None:
    with torch.no_grad():
        loss = PointwiseLMLoss(model, max_text_tokens=None)(fixture_columns())
    assert abs(float(loss) - TRAIN["loss"]) > 1e-3  # the 4:42 rows have texts over 256 tokens


def test_loss_needs_a_negative_column(model) -> None:
    queries, positives, _ = fixture_columns()
    with pytest.raises(ValueError, match="expects \\(query, positive, negative, ...\\) columns, got 2"):
        PointwiseLMLoss(model)([queries, positives])


def test_negatives_come_from_the_ranked_list_minus_positives() -> None:
    inputs = training_inputs()
    dataset = build_rerank_dataset(**inputs)
    assert len(dataset) == 2
    candidates = inputs["candidates"]
    # The only non-positive in each fixture top-100 list: 7:41 -> 7:304, 4:42 -> 3:303 (the reference's draws).
    assert dataset[0]["negative"]["text"] == candidates["7:304"]["text"]
    assert dataset[1]["negative"]["text"] == candidates["3:303"]
    pairs = build_rerank_dataset(**inputs, output_format="labeled-pair")
    assert pairs["label"] == [1.0, 1.0, 0.0, 0.0] and pairs["candidate"][2] == dataset[0]["negative"]


def test_negative_draw_is_seeded_and_never_a_positive() -> None:
    queries = {"q": "a query"}
    candidates = {f"d{index}": f"doc {index}" for index in range(20)}
    ranked = {"q": [f"d{index}" for index in range(20)]}
    draws = {
        build_rerank_dataset(queries, candidates, {"q": ["d0", "d1"]}, ranked, seed=seed)["negative"][0]["text"]
        for seed in range(30)
    }
    assert len(draws) > 3 and not draws & {"doc 0", "doc 1"}
    one = build_rerank_dataset(queries, candidates, {"q": ["d0"]}, ranked, seed=3)
    assert one["negative"] == build_rerank_dataset(queries, candidates, {"q": ["d0"]}, ranked, seed=3)["negative"]


@pytest.mark.parametrize(
    ("positives", "ranked", "match"),
    [({"q": []}, {"q": ["d0"]}, "has no positive"), ({"q": ["d0"]}, {"q": ["d0"]}, "no candidate besides")],
)
def test_data_builder_refuses_unusable_queries(positives: dict, ranked: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build_rerank_dataset({"q": "query"}, {"d0": "doc"}, positives, ranked)


def _train(model, dataset, loss, output_dir: Path, steps: int = 3) -> None:
    args = CrossEncoderTrainingArguments(
        output_dir=str(output_dir),
        per_device_train_batch_size=2,
        max_steps=steps,
        learning_rate=5e-3,
        report_to=[],
        save_strategy="no",
        logging_steps=1,
        use_cpu=True,
    )
    CrossEncoderTrainer(model=model, args=args, train_dataset=dataset, loss=loss).train()


def test_full_fine_tuning_with_the_official_loss_lowers_it(tmp_path: Path) -> None:
    model = umarvel_st.reranker_from_mllm(str(CHECKPOINT))
    columns = fixture_columns()
    with torch.no_grad():
        before = float(PointwiseLMLoss(model)(columns))
    _train(model, build_rerank_dataset(**training_inputs()), PointwiseLMLoss(model), tmp_path)
    with torch.no_grad():
        after = float(PointwiseLMLoss(model)(columns))
    assert after < before - 0.5


def test_lora_training_merges_saves_and_loads(tmp_path: Path) -> None:
    model = umarvel_st.reranker_from_mllm(str(CHECKPOINT))
    before = model.predict(fixture_pairs())
    apply_lora(model, r=4, alpha=8, dropout=0.0)
    _train(model, build_rerank_dataset(**training_inputs()), PointwiseLMLoss(model), tmp_path / "run")
    adapted = model.predict(fixture_pairs())
    assert np.abs(adapted - before).max() > 1e-3
    merge_lora(model)
    merged = model.predict(fixture_pairs())
    np.testing.assert_allclose(merged, adapted, rtol=0, atol=1e-5)
    model.save(str(tmp_path / "saved"))
    np.testing.assert_allclose(
        umarvel_st.load_reranker(tmp_path / "saved").predict(fixture_pairs()), merged, atol=1e-6
    )


def test_bce_on_the_score_is_the_native_alternative(tmp_path: Path) -> None:
    model = umarvel_st.reranker_from_mllm(str(CHECKPOINT))
    dataset = build_rerank_dataset(**training_inputs(), output_format="labeled-pair")
    pairs = list(zip(dataset["query"], dataset["candidate"], strict=True))
    before = model.predict(pairs)
    _train(model, dataset, BinaryCrossEntropyLoss(model), tmp_path, steps=4)
    after = model.predict(pairs)
    gap_before, gap_after = before[:2].mean() - before[2:].mean(), after[:2].mean() - after[2:].mean()
    assert gap_after > gap_before + 0.1  # positives up, negatives down


RECIPE = """
name: rerank-test
base_model: {checkpoint}
output_dir: {output}
stages:
  - name: rerank
    data: {{kind: rerank, path: {data}}}
    loss: pointwise
    init_from: base
    adapter: lora
    lora_r: 4
    lora_alpha: 8
    lora_dropout: 0.0
    batch_size: 2
    max_steps: 2
    save_steps: 1
    lr: 0.005
    gradient_checkpointing: false
    logging_steps: 1
"""


def test_rerank_stage_of_a_recipe_trains_and_resumes(tmp_path: Path) -> None:
    import json
    import shutil

    from umarvel_st.train.recipe import load_recipe
    from umarvel_st.train.runner import train

    (tmp_path / "rerank.json").write_text(json.dumps(training_inputs()))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(RECIPE.format(checkpoint=CHECKPOINT, output=tmp_path / "run", data=tmp_path / "rerank.json"))
    final = train(load_recipe(recipe))
    stage = tmp_path / "run" / "01-rerank"
    assert final == stage / "model"
    trained = umarvel_st.load_reranker(final).predict(fixture_pairs())
    assert np.abs(trained - umarvel_st.reranker_from_mllm(str(CHECKPOINT)).predict(fixture_pairs())).max() > 1e-3

    # Interrupted after its last checkpoint: the rerun resumes there and ends with the same model, without running
    # the code files the checkpoint carries (planted ones would raise).
    shutil.rmtree(final)
    (stage / "run_config.json").unlink()
    for checkpoint in (stage / "checkpoints").glob("checkpoint-*"):
        for code in checkpoint.glob("*.py"):
            code.write_text("raise RuntimeError('checkpoint code ran')\n")
    assert train(load_recipe(recipe)) == final
    assert json.loads((stage / "run_config.json").read_text())["resumed_from"].endswith("checkpoint-2")
    np.testing.assert_allclose(umarvel_st.load_reranker(final).predict(fixture_pairs()), trained, atol=1e-5)


@pytest.mark.parametrize(
    ("kind", "loss", "ok"), [("rerank", "bce", True), ("rerank", "infonce", False), ("pairs", "pointwise", False)]
)
def test_rerank_stage_losses_are_validated(kind: str, loss: str, ok: bool) -> None:
    from umarvel_st.train.recipe import StageConfig

    if ok:
        assert StageConfig(name="s", data={"kind": kind, "path": "d.json"}, loss=loss).loss == loss
    else:
        with pytest.raises(ValueError, match=f"loss: {loss!r} is not one of"):
            StageConfig(name="s", data={"kind": kind, "path": "d.json"}, loss=loss)


def test_an_official_lora_checkpoint_converts_to_a_reranker(tmp_path: Path) -> None:
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForImageTextToText

    from umarvel_st.reranker import convert_official_reranker

    torch.manual_seed(0)
    base = AutoModelForImageTextToText.from_pretrained(str(CHECKPOINT))
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False)
    get_peft_model(base, config).save_pretrained(tmp_path / "adapter")  # what the official training leaves

    converted = convert_official_reranker(str(CHECKPOINT), tmp_path / "adapter", tmp_path / "out")
    reference = umarvel_st.reranker_from_mllm(str(CHECKPOINT))
    plain = reference.predict(fixture_pairs())
    reference[0].model = PeftModel.from_pretrained(reference[0].model, str(tmp_path / "adapter"))  # adapter unmerged
    expected = reference.predict(fixture_pairs())
    assert np.abs(expected - plain).max() > 1e-3
    np.testing.assert_allclose(converted.predict(fixture_pairs()), expected, rtol=0, atol=1e-5)
    assert (tmp_path / "out" / "modules.json").is_file() and (tmp_path / "out" / "reranker.py").is_file()
