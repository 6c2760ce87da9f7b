"""The generated model cards: metadata (model-index from reports, base model, tags...), sections, and every Python
code block run as written against the tiny model, loaded by Hub id from an offline cache without umarvel_st; also
the card sentence-transformers writes after training a U-MARVEL model."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

import umarvel_st
from umarvel_st.hub.card import CardData, format_size
from umarvel_st.hub.publish import write_repo_folder
from umarvel_st.testing import BLOCK_UMARVEL_ST, install_in_hub_cache, make_test_image

CHECKPOINT = Path(umarvel_st.__file__).parent / "assets" / "tiny-umarvel-qwen2vl"
REPO_ID = "org/u-marvel"
PORTABLE_REPO_ID = "org/u-marvel-portable"
TRAINED_REPO_ID = "org/u-marvel-trained"
CODE_BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)

# argv = the two card files; runs each card's Python blocks in order, in one namespace per card, without umarvel_st.
RUN_CARDS = (
    BLOCK_UMARVEL_ST
    + r"""
import re
import sys

blocks = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)
for card in sys.argv[1:]:
    namespace = {}
    for index, block in enumerate(blocks.findall(open(card).read())):
        exec(compile(block, f"{card}:block{index}", "exec"), namespace)
    print("ran", card, "model", type(namespace["model"][0]).__name__)
"""
)


def write_inputs(root: Path) -> dict[str, Path]:
    report = root / "results.json"
    report.write_text(
        json.dumps(
            {
                "pool": "local",
                "split": "test",
                "synthetic": True,
                "tasks": {"mscoco_task0": {"k": 5, "score": 0.5}, "fashion200k_task0": {"k": 10, "score": 0.25}},
                "average": 0.375,
            }
        )
    )
    recipe = root / "stage3.yaml"
    recipe.write_text("stage: instruction\nlora: {r: 128, alpha: 256}\nlearning_rate: 0.0004\n")
    return {"report": report, "recipe": recipe}


@pytest.fixture(scope="module")
def cards(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("cards")
    inputs = write_inputs(root)
    card = CardData(
        base_model="org/base",
        datasets=["TIGER-Lab/M-BEIR"],
        run_configs=[inputs["recipe"]],
        eval_reports=[inputs["report"]],
        exact_repo_id=REPO_ID,
    )
    model = umarvel_st.from_mllm(str(CHECKPOINT))
    exact = write_repo_folder(model, root / "exact", REPO_ID, card=card)
    portable = write_repo_folder(model, root / "portable", PORTABLE_REPO_ID, card=card, portable=True)
    return {"root": root, "exact": exact, "portable": portable}


def front_matter(card: str) -> dict[str, Any]:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def test_exact_card_metadata_and_sections(cards: dict[str, Any]) -> None:
    text = (cards["exact"] / "README.md").read_text()
    metadata = front_matter(text)
    assert metadata["library_name"] == "sentence-transformers" and metadata["pipeline_tag"] == "sentence-similarity"
    assert metadata["base_model"] == "org/base" and metadata["datasets"] == ["TIGER-Lab/M-BEIR"]
    assert metadata["license"] == "apache-2.0" and "u-marvel" in metadata["tags"]
    (index,) = metadata["model-index"]
    metrics = {metric["name"]: metric["value"] for metric in index["results"][0]["metrics"]}
    assert metrics == {"mscoco_task0 hit@5": 50.0, "fashion200k_task0 hit@10": 25.0, "average": 37.5}
    assert "| `lora.r` | 128 |" in text and "| `learning_rate` | 0.0004 |" in text  # the run config
    assert "| mscoco_task0 | 5 | 50.0 |" in text and "synthetic benchmark" in text
    assert "| `cirr_task7` | Retrieve a day-to-day image" in text  # named instructions
    assert "trust_remote_code=True" in text and "max_pixels" in text and "arXiv:2507.14902" in text
    assert "Embedding dimension:** 64" in text and "handler.py" in text and "`UMARVEL_ALLOW_URLS=1`" in text
    parameters = int(re.search(r"Weights:\*\* ([\d,]+) parameters", text).group(1).replace(",", ""))
    assert parameters < 1e6 and f"about {format_size(2 * parameters)} in bfloat16" in text
    assert " KB in bfloat16" in text and "0.0 GB" not in text and "0.00 GB" not in text  # a tiny model: KB


def test_sizes_are_printed_in_a_unit_that_fits() -> None:
    assert format_size(15_231_000_000) == "15.2 GB"
    assert format_size(4_500_000) == "4.5 MB"
    assert format_size(310_420) == "310.4 KB"
    assert format_size(999) == "999 bytes"


def test_portable_card_reports_the_measured_drift(cards: dict[str, Any]) -> None:
    text = (cards["portable"] / "README.md").read_text()
    drift = json.loads((cards["portable"] / "drift.json").read_text())
    assert f"mean {drift['mean']:.4f}, minimum {drift['min']:.4f}" in text
    assert f"on {drift['items']} sample items" in text and "built-in method" not in text
    assert "trust_remote_code" not in text.split("## Usage")[1]
    assert "portable" in front_matter(text)["tags"] and f"`{REPO_ID}`" in text


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A U-MARVEL model trained one step by the sentence-transformers trainer on text queries and image documents,
    then saved with its Hub id: the card is sentence-transformers' own."""
    from datasets import Dataset, Features, Value
    from datasets import Image as ImageFeature
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    root = tmp_path_factory.mktemp("trained")
    model = umarvel_st.from_mllm(str(CHECKPOINT))
    dataset = Dataset.from_dict(
        {
            "query": ["a red square", "a blue circle", "green stripes", "a yellow star"],
            "document": [make_test_image(56, 56, seed=seed) for seed in range(4)],
        },
        features=Features({"query": Value("string"), "document": ImageFeature()}),
    )
    args = SentenceTransformerTrainingArguments(
        output_dir=str(root / "run"),
        max_steps=1,
        per_device_train_batch_size=4,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
    )
    loss = MultipleNegativesRankingLoss(model)
    SentenceTransformerTrainer(model=model, args=args, train_dataset=dataset, loss=loss).train()
    model.model_card_data.set_model_id(TRAINED_REPO_ID)
    model.save(str(root / "model"))
    return root / "model"


def test_the_card_written_after_training_loads_the_model_as_it_must(trained: Path) -> None:
    """sentence-transformers' own card (trainer, then ``model.save``) loads with trust_remote_code and opens the
    example images as images (it runs as written in the next test)."""
    (snippet,) = CODE_BLOCK.findall((trained / "README.md").read_text())
    assert f'model = SentenceTransformer("{TRAINED_REPO_ID}", trust_remote_code=True)' in snippet
    assert f'image_0 = Image.open(hf_hub_download("{TRAINED_REPO_ID}", "assets/image_0.jpg"))' in snippet
    assert "'assets/" not in snippet and "encode_query(queries)" in snippet  # images are opened, not passed as paths


def test_the_card_of_a_model_trained_on_mbeir_rows_shows_their_items(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The package's training rows hold items as dicts with unused keys set to None (here a text query with its
    instruction and image positives). The card's examples are those items, images saved under assets/, and the
    snippet's similarities are computed; sentence-transformers alone showed None and failed to run the snippet."""
    from umarvel_st.data.synthetic import make_synthetic_mbeir
    from umarvel_st.data.training import mbeir_train

    make_synthetic_mbeir(tmp_path / "data", test_queries=1, train_queries=3, pool_size=4, show_progress_bar=False)
    rows = mbeir_train(tmp_path / "data", tasks=["mscoco_task0"])
    model = umarvel_st.from_mllm(str(CHECKPOINT))
    with caplog.at_level(logging.WARNING):
        model.model_card_data.set_widget_examples(rows)  # what the trainer calls with its training rows
        model.model_card_data.set_model_id(TRAINED_REPO_ID)
        model.save(str(tmp_path / "model"))
    assert [record.getMessage() for record in caplog.records if "snippet" in record.getMessage()] == []
    (snippet,) = CODE_BLOCK.findall((tmp_path / "model" / "README.md").read_text())
    assert "None" not in snippet and f"'instruction': '{rows[0]['anchor']['instruction']}'" in snippet
    assert f'image_0 = Image.open(hf_hub_download("{TRAINED_REPO_ID}", "assets/image_0.jpg"))' in snippet
    assert "# tensor([[1.0000," in snippet and (tmp_path / "model" / "assets" / "image_0.jpg").is_file()


def test_every_code_block_runs_as_written_from_the_hub_cache(cards: dict[str, Any], trained: Path) -> None:
    """The published cards and the card written after training, in one subprocess without umarvel_st."""
    root = cards["root"]
    hf_home = root / "hf_home"
    published = ((REPO_ID, cards["exact"]), (PORTABLE_REPO_ID, cards["portable"]), (TRAINED_REPO_ID, trained))
    for repo_id, folder in published:
        install_in_hub_cache(folder, hf_home / "hub", repo_id)
        assert CODE_BLOCK.findall((folder / "README.md").read_text())
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(hf_home), "HF_HUB_CACHE": str(hf_home / "hub")}
    result = subprocess.run(
        [sys.executable, "-c", RUN_CARDS, *(str(folder / "README.md") for _, folder in published)],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    ran = [line for line in result.stdout.splitlines() if line.startswith("ran ")]
    assert [line.rsplit(" model ", 1)[1] for line in ran] == [
        "UMarvelTransformer",
        "Transformer",
        "UMarvelTransformer",
    ]
