"""Recipes are checked completely when they load, and the run's inputs before anything trains (`--dry-run` too)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from umarvel_st.cli import main
from umarvel_st.data.synthetic import make_synthetic_mbeir
from umarvel_st.train.recipe import StageConfig, load_recipe
from umarvel_st.train.runner import train

RECIPE = """
name: checked
base_model: tiny:qwen2_vl
output_dir: {out}
stages:
  - name: only
    data: {{kind: pairs, path: {pairs}}}
    lr: 1e-4
    learnable_temperature: false
{extra}"""


def write_recipe(tmp_path: Path, extra: str = "", pairs: Path | None = None) -> Path:
    if pairs is None:
        pairs = tmp_path / "pairs.jsonl"
        pairs.write_text(json.dumps({"query": "a cat", "positive": "a cat on a mat"}) + "\n")
    path = tmp_path / "recipe.yaml"
    path.write_text(RECIPE.format(out=tmp_path / "run", pairs=pairs, extra=extra))
    return path


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ('stages.0.learnable_temperature="false"', r"stages\.0\.learnable_temperature: expected true or false"),
        ("stages.0.summarize_suffix=1", r"stages\.0\.summarize_suffix: expected true or false .*got 1 \(int\)"),
        ("stages.0.lr=.nan", r"stages\.0\.lr: expected a finite number"),
        ("stages.0.lr=.inf", r"stages\.0\.lr: expected a finite number"),
        ("stages.0.lr=0", r"stages\.0\.lr: must be > 0"),
        ('stages.0.lr="1e-4"', r"stages\.0\.lr: expected a finite number .*got '1e-4' \(str\)"),
        ("stages.0.epochs=0.5", r"stages\.0\.epochs: expected a whole number, got 0\.5"),
        ("stages.0.batch_size=2.5", r"stages\.0\.batch_size: expected a whole number"),
        ("stages.0.batch_size=true", r"stages\.0\.batch_size: expected a whole number, got True \(bool\)"),
        ("stages.0.lora_dropout=2", r"stages\.0\.lora_dropout: must be in \[0, 1\)"),
        ("stages.0.warmup_ratio=1.5", r"stages\.0\.warmup_ratio: must be in \[0, 1\)"),
        ("stages.0.max_steps=0", r"stages\.0\.max_steps: must be -1 \(all epochs\) or > 0"),
        ("stages.0.max_pixels=10", r"stages\.0\.max_pixels: must be >= 3136"),
        ("stages.0.name=../escape", r"stages\.0\.name: '\.\./escape' is not a valid stage name"),
        ("stages.0.name=/abs/stage", r"stages\.0\.name: '/abs/stage' is not a valid stage name"),
        ("stages.0.name=..", r"stages\.0\.name: '\.\.' is not a valid stage name"),
        ("stages.0.data={kind: pairs}", r"stages\.0\.data\.path: 'pairs' data needs this option"),
        (
            "stages.0.data.shuffle=true",
            r"stages\.0\.data\.shuffle: unknown 'pairs' data option.*\['image_root', 'path'\]",
        ),
        ("stages.0.data.kind=tsv", r"stages\.0\.data\.kind: 'tsv' is not one of"),
        ("stages.0.data={kind: mbeir, root: x, tasks: mscoco_task0}", r"stages\.0\.data\.tasks: expected a list"),
        ("stages.0.data={kind: mbeir, root: x, max_queries_per_task: 0}", r"max_queries_per_task: must be > 0"),
        ("base_model=3", r"base_model: expected a non-empty string, got 3 \(int\)"),
        ("seed=-1", r"seed: must be in \[0, 2\*\*32\)"),
        ("stages={a: 1}", r"stages: expected a non-empty list of stages"),
        ("stages.0=3", r"stages\.0: a stage must be a mapping"),
        ("stages.3.lr=1", r"stages\.3: '3' is not an item of this list; use 0 to 0"),
        ("stages.first.lr=1", r"stages\.first: 'first' is not an item of this list"),
        ("stages.0.lr.value=1", r"stages\.0\.lr\.value: stages\.0\.lr is 0\.0001 \(float\), which has no fields"),
        ("lr=1", r"lr: unknown recipe key.*set it as stages\.N\.lr or all_stages\.lr"),
        ("all_stages.learning_rate=1", r"stages\.0\.learning_rate: unknown stage key; the known keys are \['adapter'"),
        ("evaluate={data: x, task: [mscoco_task0]}", r"evaluate\.task: unknown evaluate option"),
        ("evaluate={data: x, pool: huge}", r"evaluate\.pool: 'huge' is not one of \['local', 'global'\]"),
        ("evaluate={data: x, batch_size: 0}", r"evaluate\.batch_size: must be > 0"),
        ("evaluate={data: x, tasks: []}", r"evaluate\.tasks: an empty list selects nothing"),
        ("evaluate={pool: local}", r"evaluate\.data: evaluate needs this option"),
        ("deepspeed=true", r"deepspeed: expected a non-empty string"),
    ],
)
def test_invalid_fields_are_refused_at_load_naming_their_path(tmp_path, override, message):
    with pytest.raises(ValueError, match=message):
        load_recipe(write_recipe(tmp_path), [override])


def test_yaml_numbers_are_read_as_yaml_1_2_does(tmp_path):
    recipe = load_recipe(write_recipe(tmp_path, extra="    weight_decay: 1E-2\n    max_grad_norm: 5e0\n"))
    stage = recipe.stages[0]
    assert stage.lr == 1e-4 and stage.weight_decay == 0.01 and stage.max_grad_norm == 5.0
    assert isinstance(stage.lr, float) and stage.learnable_temperature is False
    assert load_recipe(write_recipe(tmp_path), ["stages.0.lr=2e-4", "stages.0.epochs=3"]).stages[0].epochs == 3
    path = write_recipe(tmp_path, extra="evaluate: null\n")
    assert load_recipe(path, ["evaluate.data=runs/data"]).evaluate == {"data": "runs/data"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", r"recipe\.yaml must be a mapping .*\(the file is empty\)"),
        ("- name: x\n", r"must be a mapping .*got \[\{'name': 'x'\}\] \(list\)"),
        ("name: x\nbase_model: b\noutput_dir: o\nstages: {name: y}\n", r"stages: expected a non-empty list"),
        ("name: x\nbase_model: b\nstages: []\n", r"output_dir: the recipe needs this key"),
        ("name: [unclosed\n", r"recipe\.yaml is not valid YAML"),
    ],
)
def test_malformed_recipe_files_are_refused_naming_the_file(tmp_path, text, message):
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        load_recipe(path)


def test_stage_config_checks_types_when_built_directly():
    with pytest.raises(ValueError, match=r"learnable_temperature: expected true or false .*got .false."):
        StageConfig(name="x", data={"kind": "nli", "path": "a.csv"}, learnable_temperature="false")


@pytest.fixture(scope="module")
def mbeir(tmp_path_factory):
    root = tmp_path_factory.mktemp("mbeir")
    make_synthetic_mbeir(root, test_queries=2, train_queries=2, pool_size=6)
    return root


@pytest.mark.parametrize(
    ("evaluate", "message"),
    [
        ("{{data: {root}/missing}}", r"evaluate: M-BEIR data root .*missing is not a folder"),
        ("{{data: {root}, tasks: [mscoco_task99]}}", r"evaluate: Unknown M-BEIR task name 'mscoco_task99'"),
    ],
)
def test_a_bad_evaluate_block_fails_the_dry_run_and_the_run_before_training(tmp_path, mbeir, evaluate, message):
    path = write_recipe(tmp_path, extra=f"evaluate: {evaluate.format(root=mbeir)}\n")
    with pytest.raises(ValueError, match=message):
        main(["train", str(path), "--dry-run"])
    with pytest.raises(ValueError, match=message):
        train(load_recipe(path))
    assert not (tmp_path / "run").exists()  # nothing was built or trained


def test_the_dry_run_checks_the_data_and_prints_the_plan(tmp_path, mbeir, capsys):
    path = write_recipe(tmp_path, extra=f"evaluate: {{data: {mbeir}, tasks: [mscoco_task0]}}\n")
    assert main(["train", str(path), "--dry-run"]) == 0
    assert f"{tmp_path / 'run' / '01-only'}: train" in capsys.readouterr().out
    assert not (tmp_path / "run").exists()

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"query": "q", "positive": "p", "negatives": "not a list"}) + "\n")
    with pytest.raises(TypeError, match=rf"Stage 'only' \(stages\.0\.data\): {bad}:1: 'negatives' must be a list"):
        main(["train", str(write_recipe(tmp_path, pairs=bad)), "--dry-run"])
    with pytest.raises(ValueError, match=r"stages\.0\.data\): Data file .*absent\.jsonl does not exist"):
        main(["train", str(write_recipe(tmp_path, pairs=tmp_path / "absent.jsonl")), "--dry-run"])
    with pytest.raises(ValueError, match=r"deepspeed: no file 'ds\.json'"):
        main(["train", str(path), "--dry-run", "--set", "deepspeed=ds.json"])
    with pytest.raises(ValueError, match=r"--restart-from 'nope' is not a stage of recipe 'checked': use one of"):
        main(["train", str(path), "--dry-run", "--restart-from", "nope"])
