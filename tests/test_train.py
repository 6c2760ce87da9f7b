"""Training end to end: data builders, recipes, the stage runner (chaining, resume after kill -9)."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import umarvel_st
from umarvel_st.data.synthetic import make_synthetic_mbeir
from umarvel_st.data.training import custom_pairs, image_captions, mbeir_train, nli_pairs
from umarvel_st.testing import make_test_image
from umarvel_st.train.recipe import load_recipe, shipped_recipes
from umarvel_st.train.runner import train

TINY_RERANKER = Path(umarvel_st.__file__).parent / "assets" / "tiny-rerank-qwen2vl"
TINY_OVERRIDES = [
    "all_stages.max_steps=2",
    "all_stages.warmup_ratio=0",
    "all_stages.batch_size=4",
    "all_stages.lora_r=4",
    "all_stages.lora_alpha=8",
]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("train_data")
    with open(root / "nli.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["sent0", "sent1", "hard_neg"])
        for i in range(8):
            writer.writerow([f"a person number {i} walks", f"someone {i} is walking", "nobody moves"])
    (root / "imgs").mkdir()
    rows = []
    for i in range(8):
        make_test_image(56, 56, seed=i).save(root / "imgs" / f"{i}.png")
        rows.append({"caption": f"picture number {i}", "image": f"imgs/{i}.png"})
    (root / "captions.jsonl").write_text("\n".join(json.dumps(row) for row in rows))
    pairs = [
        {"query": f"query {i}", "positive": {"text": f"doc {i}", "image": f"imgs/{i}.png"}, "negatives": [f"neg {i}"]}
        for i in range(8)
    ]
    (root / "pairs.jsonl").write_text("\n".join(json.dumps(row) for row in pairs))
    make_synthetic_mbeir(root / "mbeir", test_queries=4, train_queries=8, pool_size=20)
    return root


def test_builders_make_anchor_positive_columns(data):
    nli = nli_pairs(data / "nli.csv")
    assert nli.column_names == ["anchor", "positive"] and nli[0]["anchor"] == "a person number 0 walks"
    captions = image_captions(data / "captions.jsonl")
    assert captions[3]["positive"]["image"] == str(data / "imgs" / "3.png")
    pairs = custom_pairs(data / "pairs.jsonl")
    assert pairs.column_names == ["anchor", "positive", "negative_1"]
    assert pairs[0]["anchor"]["instruction"] is None and pairs[0]["negative_1"]["text"] == "neg 0"


def test_mbeir_draws_are_seeded_per_epoch_and_carry_the_instruction_in_the_query(data):
    first = mbeir_train(data / "mbeir", epochs=2, seed=1)
    again = mbeir_train(data / "mbeir", epochs=2, seed=1)
    assert first.column_names == ["anchor", "positive"]
    assert first.to_list() == again.to_list()  # a resumed run draws the same
    assert all(row["anchor"]["instruction"] for row in first)
    half = len(first) // 2
    instructions = [row["anchor"]["instruction"] for row in first]
    assert instructions[:half] != instructions[half:]  # each epoch draws again
    plain = mbeir_train(data / "mbeir", instructions=False)
    assert all(row["anchor"]["instruction"] is None for row in plain)


def test_paths_escaping_the_data_root_are_refused(data, tmp_path):
    (tmp_path / "bad.jsonl").write_text(json.dumps({"caption": "x", "image": "../../etc/passwd"}))
    with pytest.raises(ValueError, match="leaves the data root"):
        image_captions(tmp_path / "bad.jsonl")
    with pytest.raises(ValueError, match="equal counts"):
        custom_pairs([{"query": "a", "positive": "b", "negatives": ["c"]}, {"query": "a", "positive": "b"}])


@pytest.mark.parametrize(
    ("row", "error", "message"),
    [
        ({"query": "q", "positive": "p", "negatives": "abc"}, TypeError, r"row 0: 'negatives' must be a list"),
        ({"query": "q", "positive": "p", "negatives": {"text": "n"}}, TypeError, r"row 0: 'negatives' must be a list"),
        ({"query": "q", "positive": "p", "negatives": [3]}, TypeError, r"row 0 negative 1: a side must be a string"),
        ({"query": 7, "positive": "p"}, TypeError, r"row 0 query: a side must be a string or a dict"),
        ({"query": {"text": ["a"]}, "positive": "p"}, TypeError, r"row 0 query: 'text' must be a string"),
        ({"query": "q", "positive": {"image": 5}}, TypeError, r"row 0 positive: 'image' must be a string"),
        ({"query": "q", "positive": "p", "instruction": ["x"]}, TypeError, r"row 0: 'instruction' must be a string"),
        ({"positive": "p"}, ValueError, r"row 0: 'query' is missing"),
        ("query,positive", TypeError, r"row 0: a row must be a dict"),
    ],
)
def test_custom_pair_rows_of_the_wrong_type_are_refused_naming_row_and_field(row, error, message):
    with pytest.raises(error, match=message):
        custom_pairs([row])


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("pairs.json", '[{"query": "q", "positive": "p"},\n', r"pairs\.json:2: malformed JSON"),
        (
            "pairs.json",
            '{"query": "q", "positive": "p"}',
            r"pairs\.json: a \.json data file holds a list of row objects",
        ),
        ("pairs.json", '["q", "p"]', r"pairs\.json\[0\]: a row must be a JSON object"),
        ("pairs.jsonl", '{"query": "q", "positive": "p"}\n{"query": ', r"pairs\.jsonl:2: malformed JSON"),
        ("pairs.jsonl", '{"query": "q", "positive": "p"}\n[1, 2]\n', r"pairs\.jsonl:2: a row must be a JSON object"),
        ("pairs.jsonl", '{"query": "q", "positive": "p", "negatives": "n"}\n', r"pairs\.jsonl:1: 'negatives' must"),
    ],
)
def test_malformed_data_files_are_refused_naming_the_file_and_line(tmp_path, name, text, message):
    (tmp_path / name).write_text(text)
    with pytest.raises((ValueError, TypeError), match=message):
        custom_pairs(tmp_path / name)
    (tmp_path / "latin1.jsonl").write_bytes('{"query": "caf\xe9", "positive": "p"}\n'.encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1\.jsonl: not UTF-8 text"):
        custom_pairs(tmp_path / "latin1.jsonl")


def test_recipes_validate(tmp_path):
    assert {"umarvel-qwen2vl-7b", "umarvel-qwen3vl-4b", "demo", "finetune"} <= set(shipped_recipes())
    recipe = load_recipe("umarvel-qwen2vl-7b")
    trained = [stage for stage in recipe.stages if stage.kind == "train"]
    assert [stage.lora_r for stage in trained] == [64, 128, 128, 128, 128, 128, 128]
    assert [stage.loss for stage in trained] == [
        "infonce", "symmetric", "infonce", "pointwise", "infonce", "distill", "pointwise",
    ]  # fmt: skip
    assert recipe.stages[2].learnable_temperature and recipe.stages[2].instructions
    rerankers = [stage for stage in trained if stage.loss == "pointwise"]
    assert [(stage.batch_size, stage.gradient_accumulation_steps) for stage in rerankers] == [(2, 4), (2, 4)]
    with pytest.raises(ValueError, match="stages.0.learning_rate: unknown stage key"):
        load_recipe("finetune", ["stages.0.learning_rate=1"])
    with pytest.raises(ValueError, match="data.kind"):
        load_recipe("finetune", ["stages.0.data.kind=tsv"])
    with pytest.raises(ValueError, match="shipped recipes"):
        load_recipe("no-such-recipe")


@pytest.mark.parametrize(
    ("recipe_name", "model_type"), [("umarvel-qwen2vl-7b", "qwen2_vl"), ("umarvel-qwen3vl-4b", "qwen3_vl")]
)
def test_paper_recipes_run_on_tiny_backbones_and_chain_stages(data, tmp_path, recipe_name, model_type):
    overrides = [
        f"base_model=tiny:{model_type}",
        f"output_dir={tmp_path / 'run'}",
        f"stages.0.data.path={data / 'nli.csv'}",
        f"stages.1.data.path={data / 'captions.jsonl'}",
        f"all_stages.data.root={data / 'mbeir'}",
        "stages.3.data.top_k=10",
        "stages.7.data.top_k=4",
        "stages.9.data.top_k=10",
        # The tiny backbone's tokenizer splits "Yes": the re-rankers start from the shipped tiny re-ranker checkpoint.
        f"stages.5.init_from={TINY_RERANKER}",
        f"stages.11.init_from={TINY_RERANKER}",
        *TINY_OVERRIDES,
        # After the shared ones: one step per stage after stage 3 keeps the chain's time down.
        *[f"stages.{index}.max_steps=1" for index in (5, 6, 8, 11)],
    ]
    # One call runs the whole chain: each step reads the previous one's output, with no paths to edit.
    final = train(load_recipe(recipe_name, overrides))
    run = tmp_path / "run"
    configs = {path.parent.name[3:]: json.loads(path.read_text()) for path in sorted(run.glob("*-*/run_config.json"))}
    assert list(configs) == [
        "text", "image-text", "instruction", "mine-stage3", "reranker-data", "reranker", "hard-negatives",
        "distill-data", "distillation", "mine-stage5", "reranker-plus-data", "reranker-plus",
    ]  # fmt: skip
    stage4, stage5 = configs["hard-negatives"], configs["distillation"]
    assert not stage4["stage"]["summarize_suffix"] and stage4["stage"]["batch_size"] == 4
    assert stage4["init_from"] == str(run / "03-instruction" / "model")
    # tau is carried from stage 3 (learned there) into stage 4 and 5 (one tiny step at lr 1e-5 barely moves it).
    assert abs(stage4["temperature"] - configs["instruction"]["temperature"]) < 1e-4
    assert abs(stage5["temperature"] - stage4["temperature"]) < 1e-4 < abs(stage4["temperature"] - 0.05)
    assert stage5["stage"]["max_pixels"] == 224 * 224 and stage5["stage"]["loss"] == "distill"
    assert stage5["init_from"] == str(run / "07-hard-negatives" / "model")
    # R+ reads the lists mined with the stage-5 model; stage 5's teacher is the re-ranker stage's model.
    assert configs["mine-stage5"]["init_from"] == str(run / "09-distillation" / "model")
    assert configs["reranker-plus-data"]["inputs"]["lists"] == str(run / "10-mine-stage5" / "lists")
    assert configs["distill-data"]["inputs"]["reranker"] == str(run / "06-reranker" / "model")
    assert configs["image-text"]["init_from"] == str(run / "01-text" / "model")
    assert configs["text"]["temperature"] == pytest.approx(0.05)  # fixed
    # The re-rankers keep the recipe's gradient accumulation: one optimizer step over 4 micro-batches.
    assert configs["reranker"]["stage"]["gradient_accumulation_steps"] == 4
    assert final == run / "12-reranker-plus" / "model"
    scores = umarvel_st.load_reranker(final).predict([("a query", "a candidate")])
    assert np.isfinite(scores).all()
    model = umarvel_st.load(run / "09-distillation" / "model")
    assert model[0].generation_prompt is True and np.isfinite(model.encode(["hello"])).all()
    # A rerun skips every stage and step.
    assert train(load_recipe(recipe_name, overrides)) == final


RESUME_RECIPE = """
name: resume
base_model: tiny:qwen2_vl
output_dir: {out}
seed: 3
stages:
  - name: first
    data: {{kind: nli, path: {nli}}}
    adapter: {adapter}
    lora_r: 4
    lora_alpha: 8
    lr: 1.0e-3
    batch_size: 2
    max_steps: 6
    save_steps: 1
    logging_steps: 1
    learnable_temperature: true
    gradient_checkpointing: false
"""


# Planted in the checkpoints of the killed run: resuming must never import code from the checkpoint folder.
PLANTED_CODE = """
from pathlib import Path

Path({marker!r}).write_text("code from the checkpoint folder ran")
"""


@pytest.mark.parametrize("adapter", ["full", "lora"])
def test_kill_9_then_rerun_resumes_and_matches_an_uninterrupted_run(data, tmp_path, adapter):
    killed = tmp_path / "killed.yaml"
    killed.write_text(RESUME_RECIPE.format(out=tmp_path / "killed", nli=data / "nli.csv", adapter=adapter))
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen([sys.executable, "-m", "umarvel_st.cli", "train", str(killed)], env=env)
    checkpoint = tmp_path / "killed" / "01-first" / "checkpoints" / "checkpoint-3" / "temperature.json"
    deadline = time.time() + 300
    while not checkpoint.is_file() and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert checkpoint.is_file() and not (tmp_path / "killed" / "01-first" / "run_config.json").exists()
    marker = tmp_path / "planted-code-ran"
    for folder in (tmp_path / "killed" / "01-first" / "checkpoints").glob("checkpoint-*"):
        for name in ("encoder.py", "pooling.py"):  # the files its modules.json types name
            (folder / name).write_text(PLANTED_CODE.format(marker=str(marker)))

    resumed = train(load_recipe(killed))
    assert not marker.exists()  # resumed with the installed classes
    fresh_recipe = tmp_path / "fresh.yaml"
    fresh_recipe.write_text(RESUME_RECIPE.format(out=tmp_path / "fresh", nli=data / "nli.csv", adapter=adapter))
    fresh = train(load_recipe(fresh_recipe))
    resumed_config = json.loads((tmp_path / "killed" / "01-first" / "run_config.json").read_text())
    fresh_config = json.loads((tmp_path / "fresh" / "01-first" / "run_config.json").read_text())
    assert resumed_config["temperature"] == pytest.approx(fresh_config["temperature"], rel=1e-5)
    items = ["a person walks", "someone is walking"]
    a = umarvel_st.load(resumed).encode(items)
    b = umarvel_st.load(fresh).encode(items)
    np.testing.assert_allclose(a, b, atol=1e-4)
    assert train(load_recipe(killed)) == resumed  # a finished run redoes nothing


TWO_STAGES = """
name: two
base_model: tiny:qwen2_vl
output_dir: {out}
seed: 1
stages:
  - name: first
    data: {{kind: nli, path: {nli}}}
    adapter: full
    lr: 1.0e-3
    batch_size: 4
    max_steps: 1
    save_steps: 1
    gradient_checkpointing: false
  - name: second
    data: {{kind: nli, path: {nli}}}
    lora_r: 4
    lora_alpha: 8
    lr: 1.0e-3
    batch_size: 4
    max_steps: 1
    save_steps: 1
    gradient_checkpointing: false
"""


def test_a_changed_recipe_is_refused_before_training_naming_the_changed_keys(data, tmp_path, monkeypatch):
    from umarvel_st.modeling import UMarvelTransformer

    endings = []  # the last tokens of every sequence the stages train on (left padding: the real ends)
    forward = UMarvelTransformer.forward

    def spy(self, features, **kwargs):
        if self.training:
            endings.extend(self.tokenizer.batch_decode(features["input_ids"][:, -3:]))
        return forward(self, features, **kwargs)

    monkeypatch.setattr(UMarvelTransformer, "forward", spy)
    path = tmp_path / "two.yaml"
    path.write_text(TWO_STAGES.format(out=tmp_path / "run", nli=data / "nli.csv"))
    final = train(load_recipe(path))
    # Training renders the chat without the generation prompt; the saved model renders with it (inference).
    assert endings and all(ending.endswith("<|im_end|>\n") for ending in endings), endings[:2]
    assert umarvel_st.load(final)[0].generation_prompt is True
    first, second = (tmp_path / "run" / name / "run_config.json" for name in ("01-first", "02-second"))
    records = {config: config.read_text() for config in (first, second, tmp_path / "run" / "recipe.json")}

    assert train(load_recipe(path)) == final  # the same recipe: both stages are done
    with pytest.raises(ValueError, match=r"Stage 'second' .*stages\.1\.lr: 0\.001 -> 0\.002.*--restart-from second"):
        train(load_recipe(path, ["stages.1.lr=2e-3"]))
    with pytest.raises(ValueError, match=r"Stage 'first' .*stages\.0\.adapter: 'full' -> 'lora'"):
        train(load_recipe(path, ["stages.0.adapter=lora"]))
    with pytest.raises(ValueError, match=r"base model .*base_model: 'tiny:qwen2_vl' -> 'tiny:qwen3_vl'"):
        train(load_recipe(path, ["base_model=tiny:qwen3_vl"]))
    with pytest.raises(ValueError, match=r"base model .*seed: 1 -> 2"):  # the tiny backbone's random weights
        train(load_recipe(path, ["seed=2"]))
    assert {config: config.read_text() for config in records} == records  # nothing ran, nothing was rewritten

    second.unlink()  # the stage is now only checkpointed: resuming it under other settings is refused too
    with pytest.raises(ValueError, match=r"Stage 'second' .*stages\.1\.max_steps: 1 -> 2"):
        train(load_recipe(path, ["stages.1.max_steps=2"]))
    train(load_recipe(path, ["stages.1.lr=2e-3"]), restart_from="second")
    assert json.loads(second.read_text())["stage"]["lr"] == 2e-3 and first.read_text() == records[first]
    assert train(load_recipe(path, ["stages.1.lr=2e-3"])) == final  # the new settings are now the recorded ones
    shutil.rmtree(tmp_path / "run" / "01-first")  # a changed first stage would be retrained: the second's input
    with pytest.raises(ValueError, match=r"Stage 'second' .*changed: input model"):
        train(load_recipe(path, ["stages.1.lr=2e-3", "stages.0.lr=5e-4"]))


def test_fine_tune_a_model_loaded_by_hub_id_from_a_local_cache(tmp_path):
    from umarvel_st.testing import install_in_hub_cache

    checkpoint = Path(umarvel_st.__file__).parent / "assets" / "tiny-umarvel-qwen2vl"
    umarvel_st.from_mllm(str(checkpoint)).save(str(tmp_path / "saved"))
    install_in_hub_cache(tmp_path / "saved", tmp_path / "hub", "org/u-marvel")
    rows = [{"query": f"query {i}", "positive": f"document {i}"} for i in range(4)]
    (tmp_path / "pairs.jsonl").write_text("\n".join(json.dumps(row) for row in rows))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub")}
    command = [sys.executable, "-m", "umarvel_st.cli", "train", "finetune", "--set", "base_model=org/u-marvel"]
    command += ["--set", f"stages.0.data.path={tmp_path / 'pairs.jsonl'}", "--set", f"output_dir={tmp_path / 'run'}"]
    subprocess.run(command, env=env, check=True, timeout=600)
    config = json.loads((tmp_path / "run" / "01-pairs" / "run_config.json").read_text())
    assert config["train"]["train_loss"] > 0 and (tmp_path / "run" / "01-pairs" / "model" / "modules.json").is_file()


@pytest.mark.slow
def test_embedded_demo_model_beats_the_untrained_baseline(tmp_path):
    """The shipped model on the default synthetic benchmark's held-out split (as in benchmarks/results)."""
    from umarvel_st.evaluation.mbeir_evaluator import MBEIREvaluator

    make_synthetic_mbeir(tmp_path / "data")
    model = umarvel_st.load(Path(umarvel_st.__file__).parent / "assets" / "umarvel-demo")
    results = MBEIREvaluator(tmp_path / "data", show_progress_bar=False).evaluate(model)
    assert results["tasks"]["mscoco_task0"]["score"] >= 0.8 and results["average"] >= 0.5  # untrained: 0.036


def test_a_saved_base_model_keeps_its_options(tmp_path: Path) -> None:
    """A base given as a saved U-MARVEL model is taken as saved (its options and prompts), not rebuilt with defaults."""
    from umarvel_st.train.runner import prepare_base

    saved = tmp_path / "saved"
    umarvel_st.from_mllm(
        str(Path(umarvel_st.__file__).parent / "assets" / "tiny-umarvel-qwen2vl"),
        min_pixels=8 * 28 * 28,
        prompts={"mine": "Find it."},
    ).save(str(saved))
    recipe = load_recipe("finetune", [f"base_model={saved}", f"output_dir={tmp_path / 'run'}"])
    base = umarvel_st.load(prepare_base(recipe))
    assert base[0].min_pixels == 8 * 28 * 28 and base.prompts["mine"] == "Find it."
