"""Gradient accumulation (``gradient_accumulation_steps`` of a stage): fewer optimizer steps over the same data, the
same gradient as one large batch for a loss without in-batch coupling, the cached loss and the learnable temperature
scaled as the trainer scales the loss, resume mid-stage, and a changed value refused like any other field."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from test_reranker import CHECKPOINT, fixture_pairs  # tests/ is on sys.path
from test_reranker_train import training_inputs

import umarvel_st
from umarvel_st.train.losses import Temperature
from umarvel_st.train.recipe import StageConfig, load_recipe
from umarvel_st.train.runner import stage_settings, train

EMBEDDER = """
name: accumulate
base_model: tiny:qwen2_vl
output_dir: {out}
seed: 3
stages:
  - name: only
    data: {{kind: pairs, path: {pairs}}}
    adapter: lora
    lora_r: 4
    lora_alpha: 8
    lora_dropout: 0.0
    learnable_temperature: true
    cached: {cached}
    mini_batch_size: 1
    lr: 1.0e-3
    warmup_ratio: 0.0
    batch_size: 2
    gradient_accumulation_steps: 2
    save_steps: 1
    logging_steps: 1
    gradient_checkpointing: false
"""

RERANKER = """
name: accumulate-rerank
base_model: {checkpoint}
output_dir: {out}
stages:
  - name: rerank
    init_from: base
    data: {{kind: rerank, path: {data}}}
    loss: pointwise
    adapter: full
    lr: 1.0e-4
    warmup_ratio: 0.0
    max_steps: 1
    save_steps: 1
    logging_steps: 1
    gradient_checkpointing: false
"""

TEXTS = ["query 0", "doc 5", "a person walks"]


def _log(stage: Path, step: int) -> dict:
    """The trainer's log of optimizer step ``step`` (loss and gradient norm before clipping)."""
    state = json.loads((stage / "checkpoints" / f"checkpoint-{step}" / "trainer_state.json").read_text())
    return next(entry for entry in state["log_history"] if entry["step"] == step and "loss" in entry)


def _embedder_run(tmp_path: Path, name: str, cached: bool) -> Path:
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"query": f"query {i}", "positive": f"doc {i}"}) + "\n" for i in range(8)))
    recipe = tmp_path / f"{name}.yaml"
    recipe.write_text(EMBEDDER.format(out=tmp_path / name, pairs=pairs, cached=str(cached).lower()))
    return recipe


def test_accumulation_takes_fewer_steps_matches_gradcache_and_resumes(tmp_path: Path) -> None:
    cached_recipe, plain_recipe = _embedder_run(tmp_path, "cached", True), _embedder_run(tmp_path, "plain", False)
    final = train(load_recipe(cached_recipe))
    train(load_recipe(plain_recipe))
    stage = tmp_path / "cached" / "01-only"
    # 8 pairs, batch 2: 4 micro-batches make 2 optimizer steps (4 without accumulation).
    state = json.loads((stage / "checkpoints" / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["global_step"] == 2 and state["max_steps"] == 2
    # GradCache back-propagates inside the loss; its gradients are still scaled by the trainer's 1 / accumulation,
    # as those of the plain loss are: the same loss and gradient norm at the first step.
    cached_log, plain_log = _log(stage, 1), _log(tmp_path / "plain" / "01-only", 1)
    assert cached_log["loss"] == pytest.approx(plain_log["loss"], rel=1e-4)
    assert cached_log["grad_norm"] == pytest.approx(plain_log["grad_norm"], rel=1e-3)
    tau = Temperature().load(final).value.item()
    assert tau != pytest.approx(0.05, abs=1e-6)  # learned
    assert tau == pytest.approx(Temperature().load(tmp_path / "plain" / "01-only" / "model").value.item(), rel=1e-3)
    expected = umarvel_st.load(final).encode(TEXTS)

    # Interrupted after the first optimizer step: the rerun skips its two micro-batches, restores tau and ends with
    # the same model.
    shutil.rmtree(final)
    (stage / "run_config.json").unlink()
    shutil.rmtree(stage / "checkpoints" / "checkpoint-2")
    assert train(load_recipe(cached_recipe)) == final
    np.testing.assert_allclose(umarvel_st.load(final).encode(TEXTS), expected, atol=1e-5)
    assert Temperature().load(final).value.item() == pytest.approx(tau, rel=1e-6)

    # A changed accumulation changes the model: refused like any other field.
    with pytest.raises(ValueError, match=r"stages\.0\.gradient_accumulation_steps: 2 -> 1"):
        train(load_recipe(cached_recipe, ["stages.0.gradient_accumulation_steps=1"]))


def test_reranker_batch_2_by_accumulation_1_matches_batch_1_by_accumulation_2(tmp_path: Path) -> None:
    # The pointwise loss is a token mean over sequences of equal answer length, with no in-batch coupling: two
    # accumulated micro-batches give the gradient of the whole batch.
    data = tmp_path / "rerank.json"
    data.write_text(json.dumps(training_inputs()))
    runs = {}
    for batch, accumulation in ((2, 1), (1, 2)):
        recipe = tmp_path / f"b{batch}.yaml"
        recipe.write_text(RERANKER.format(checkpoint=CHECKPOINT, out=tmp_path / f"b{batch}", data=data))
        overrides = [f"stages.0.batch_size={batch}", f"stages.0.gradient_accumulation_steps={accumulation}"]
        final = train(load_recipe(recipe, overrides))
        runs[batch] = (_log(final.parent, 1), umarvel_st.load_reranker(final).predict(fixture_pairs()))
    (large, large_scores), (small, small_scores) = runs[2], runs[1]
    assert small["loss"] == pytest.approx(large["loss"], rel=1e-4)
    assert small["grad_norm"] == pytest.approx(large["grad_norm"], rel=1e-4)  # not 2x: the loss is scaled by 1/2
    np.testing.assert_allclose(small_scores, large_scores, atol=1e-5)
    before = umarvel_st.reranker_from_mllm(str(CHECKPOINT)).predict(fixture_pairs())
    assert np.abs(large_scores - before).max() > 1e-4  # the step changed the model


def test_accumulation_is_validated_and_left_out_of_old_records_at_its_default(tmp_path: Path) -> None:
    stage = {"name": "s", "data": {"kind": "pairs", "path": "p.jsonl"}}
    for value, message in ((0, "must be > 0"), (1.5, "expected a whole number"), (True, "expected a whole number")):
        with pytest.raises(ValueError, match=rf"gradient_accumulation_steps: {message}"):
            StageConfig(**stage, gradient_accumulation_steps=value)
    # Runs recorded before the field existed hold no such key: at its default the settings are unchanged.
    assert "gradient_accumulation_steps" not in stage_settings(StageConfig(**stage), 0, "input")["stage"]
    assert (
        stage_settings(StageConfig(**stage, gradient_accumulation_steps=4), 0, "input")["stage"][
            "gradient_accumulation_steps"
        ]
        == 4
    )


@pytest.mark.parametrize("checkpointing", [True, False])
def test_training_arguments_use_the_current_checkpointing_names(checkpointing: bool, tmp_path: Path) -> None:
    """Both trainers' arguments take activation checkpointing by its current name (the deprecated
    ``gradient_checkpointing`` names printed a FutureWarning on every stage) and pin memory only with CUDA (torch
    warns on every epoch when there is nothing to pin to)."""
    import warnings

    import torch
    from sentence_transformers import SentenceTransformerTrainingArguments
    from sentence_transformers.cross_encoder import CrossEncoderTrainingArguments

    from umarvel_st.train.runner import training_arguments

    recipe = load_recipe("finetune", [f"stages.0.gradient_checkpointing={str(checkpointing).lower()}"])
    for args_class in (SentenceTransformerTrainingArguments, CrossEncoderTrainingArguments):
        with warnings.catch_warnings():
            warnings.simplefilter("error", FutureWarning)
            args = training_arguments(args_class, recipe, recipe.stages[0], tmp_path, 1)
        assert args.activation_checkpointing is checkpointing
        assert args.activation_checkpointing_kwargs == {"use_reentrant": False}
        assert args.dataloader_pin_memory is torch.cuda.is_available()
