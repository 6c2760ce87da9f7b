"""The synthetic benchmark: deterministic, in M-BEIR's real layout, with the properties the docstring promises."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from PIL import Image

from umarvel_st.cli import main
from umarvel_st.data.mbeir import DATASET_IDS, MBEIRData, MBEIRTask
from umarvel_st.data.synthetic import TASKS, caption, edit, listing, make_synthetic_mbeir, paraphrase, random_scene

SMALL = {"test_queries": 8, "train_queries": 8, "pool_size": 40, "image_size": 32}


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    make_synthetic_mbeir(root, **SMALL)
    return root


def _digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_deterministic_per_seed(bench: Path, tmp_path: Path) -> None:
    make_synthetic_mbeir(tmp_path / "same", **SMALL)
    make_synthetic_mbeir(tmp_path / "other", seed=1, **SMALL)
    assert _digest(tmp_path / "same") == _digest(bench)
    assert _digest(tmp_path / "other") != _digest(bench)


def test_real_layout(bench: Path) -> None:
    data = MBEIRData(bench)
    assert [task.name for task in data.tasks("test")] == [
        "mscoco_task0",
        "webqa_task1",
        "webqa_task2",
        "mscoco_task3",
        "nights_task4",
        "oven_task6",
        "cirr_task7",
    ]  # the paper's column order
    assert {task.name for task in data.tasks("train")} == set(TASKS)
    for task in data.tasks("test"):
        for split in ("test", "train"):
            assert data.query_path(task, split).is_file()
            assert data.qrels_path(task, split).is_file()
        assert data.pool_path(task, "local", "test").is_file()
    # MSCOCO keeps per-split local pools, as in the real data
    assert (bench / "cand_pool/local/mbeir_mscoco_task0_test_cand_pool.jsonl").is_file()
    assert not (bench / "cand_pool/local/mbeir_mscoco_task0_cand_pool.jsonl").exists()
    for split in ("test", "train"):
        assert (bench / f"cand_pool/global/mbeir_union_{split}_cand_pool.jsonl").is_file()
    header, *rows = (bench / "instructions/query_instructions.tsv").read_text().splitlines()
    assert header.split("\t")[:4] == ["query_modality", "cand_modality", "dataset", "dataset_id"]
    assert len(rows) == len(TASKS) and all(len(row.split("\t")) == 8 for row in rows)  # four phrasings each
    marker = json.loads((bench / "synthetic.json").read_text())
    assert marker["arguments"]["seed"] == 0 and "not comparable" in marker["note"]


def test_records_ids_qrels_and_pools_are_consistent(bench: Path) -> None:
    data = MBEIRData(bench)
    union = {c.did: c for c in data.iter_candidates(bench / "cand_pool/global/mbeir_union_test_cand_pool.jsonl")}
    several = 0
    for task in data.tasks("test"):
        pool = {c.did: c for c in data.iter_candidates(data.pool_path(task, "local", "test"))}
        assert all(did.split(":")[0] == str(task.dataset_id) for did in pool)
        assert all(c.modality == task.candidate_modality for c in pool.values())
        texts = [c.text for c in pool.values() if c.image_path is None]
        assert len(texts) == len(set(texts)), f"duplicate candidate texts in {task.name}"
        qrels = data.load_qrels(task, "test")
        for query in data.iter_queries(task, "test"):
            assert query.qid.split(":")[0] == str(task.dataset_id)
            assert query.modality == task.query_modality and query.task_id == task.task_id
            assert list(query.pos_cand_list) == qrels[query.qid]
            assert set(query.pos_cand_list) <= set(pool) <= set(union)
            several += len(query.pos_cand_list) > 1
            if query.image_path:
                with Image.open(data.resolve_image(query.image_path)) as image:
                    assert image.size == (32, 32) and image.mode == "RGB"
        assert len(pool) >= SMALL["pool_size"] or task.name == "oven_task6"
    assert several > 0


def test_test_scenes_are_not_train_queries(bench: Path) -> None:
    data = MBEIRData(bench)
    for task in data.tasks("test"):
        scenes = {split: {q.src_content for q in data.iter_queries(task, split)} for split in ("test", "train")}
        assert not scenes["test"] & scenes["train"], task.name


def test_phrasings_and_edits() -> None:
    import numpy as np

    rng = np.random.default_rng(0)
    scene = random_scene(rng)
    assert caption(scene) != paraphrase(scene) != listing(scene)
    for _ in range(50):
        edited, text = edit(scene, rng)
        assert edited != scene and text.startswith("same scene but ")


def test_cli_writes_and_refuses_to_clobber(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["make-synthetic", str(tmp_path / "b"), "--test-queries", "4", "--train-queries", "4", "--pool-size", "20"]
    assert main(args) == 0
    assert "webqa_task2" in capsys.readouterr().out
    with pytest.raises(ValueError, match="overwrite"):
        main(args)
    assert main([*args, "--overwrite"]) == 0
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not a synthetic benchmark"):
        make_synthetic_mbeir(tmp_path / "foreign")


def test_tasks_reuse_real_ids() -> None:
    for name in TASKS:
        task = MBEIRTask.from_name(name)
        assert DATASET_IDS[task.dataset] == task.dataset_id and task.k == 5
