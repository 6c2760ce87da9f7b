"""The chain after stage 3: re-ranker data from mined lists, distillation data (teacher scores, resume, bad rows),
steps as stage kinds of the runner (wiring by stage name, skip, refuse on change), recipe checks of the wiring."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

import umarvel_st
from umarvel_st.data.mbeir import DID_BOUND, MBEIRData, hash_id
from umarvel_st.data.synthetic import make_synthetic_mbeir
from umarvel_st.demo import DEFAULT_MODEL
from umarvel_st.train.distill import DEFAULT_TASK_WEIGHTS, distill_dataset, distillation_data, draw_queries
from umarvel_st.train.mining import MinedLists, mine, mining_instruction
from umarvel_st.train.recipe import load_recipe
from umarvel_st.train.reranker import rerank_data_from_lists, rerank_stage_dataset
from umarvel_st.train.runner import plan, train

TINY_MLLM = Path(umarvel_st.__file__).parent / "assets" / "tiny-rerank-qwen2vl"  # a raw MLLM with its LM head
TASKS = ["mscoco_task0", "webqa_task1"]


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("chain") / "data"
    make_synthetic_mbeir(root, test_queries=1, train_queries=6, pool_size=10, image_size=32)
    return root


@pytest.fixture(scope="module")
def reranker(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("reranker") / "model"
    umarvel_st.reranker_from_mllm(str(TINY_MLLM)).save(str(folder))
    return folder


def _edit_queries(root: Path, task: str, edit) -> None:
    path = root / "query" / "train" / f"mbeir_{task}_train.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    edit(rows)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def test_rerank_data_takes_one_negative_per_query_from_the_local_list_minus_positives(
    bench: Path, tmp_path: Path
) -> None:
    lists = mine(DEFAULT_MODEL, bench, tmp_path / "lists", tasks=TASKS, top_k=6, show_progress_bar=False)
    output = rerank_data_from_lists(bench, lists, tmp_path / "rerank.json", seed=3)
    content = json.loads(output.read_text())
    mined, data = MinedLists(lists), MBEIRData(bench)
    local = mined.dids("local")
    queries = {query.qid: (task, query) for task in data.resolve_tasks(TASKS, "train") for query in
               data.iter_queries(task, "train")}  # fmt: skip
    assert set(content["queries"]) == set(queries)  # every synthetic query has a positive and a negative
    for qid, (task, query) in queries.items():
        (negative,) = content["ranked"][qid]
        row = mined.rows(task.name)[list(data.iter_queries(task, "train")).index(query)]
        allowed = {int(did) for did in local[row]} - {hash_id(did, DID_BOUND) for did in query.pos_cand_list}
        assert hash_id(negative, DID_BOUND) in allowed
        assert content["positives"][qid] == list(query.pos_cand_list)
        assert content["queries"][qid]["instruction"] == mining_instruction(data, query, task)
    rows = rerank_stage_dataset(output, loss="pointwise", seed=0)
    assert len(rows) == sum(len(positives) for positives in content["positives"].values())
    # Another seed draws other negatives from the same lists (the draw is not the top-ranked non-positive).
    other = json.loads(rerank_data_from_lists(bench, lists, tmp_path / "other.json", seed=4).read_text())
    assert other["ranked"] != content["ranked"]


def test_distillation_rows_carry_the_teacher_score_of_each_candidate_and_resume(
    bench: Path, reranker: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "data"
    import shutil

    shutil.copytree(bench, root)
    pool = [json.loads(line) for line in (root / "cand_pool/global/mbeir_union_train_cand_pool.jsonl").open()]
    coco_images = [row["did"] for row in pool if row["did"].startswith("9:") and row["modality"] == "image"]

    def bad_rows(rows: list[dict]) -> None:
        rows[0]["pos_cand_list"] = ["9:999999"]  # no positive in the pool
        rows[1]["pos_cand_list"] = coco_images  # every candidate of its local pool is a positive

    _edit_queries(root, "mscoco_task0", bad_rows)
    options = {"tasks": TASKS, "fraction": 1.0, "top_k": 4, "seed": 1, "chunk_size": 4, "show_progress_bar": False}
    output = distillation_data(DEFAULT_MODEL, reranker, root, tmp_path / "distill", **options)
    index = json.loads((output / "distill.json").read_text())
    assert (index["no_positive"], index["only_positives"]) == (1, 1)
    rows = distill_dataset(output)
    assert rows.column_names == ["query", "candidate_1", "candidate_2", "candidate_3", "candidate_4", "label"]

    # The teacher score, recomputed pair by pair (no prefix sharing): (cos + w_task * P(Yes)) / 2.
    data, mined = MBEIRData(root), MinedLists(output / "lists")
    candidates = {hash_id(c.did, DID_BOUND): c for c in data.iter_candidates(data.pool_path(
        data.resolve_tasks(TASKS, "train")[0], "global", "train"))}  # fmt: skip
    scorer = umarvel_st.load_reranker(reranker)
    expected = []
    for task in data.resolve_tasks(TASKS, "train"):
        for number, query in enumerate(data.iter_queries(task, "train")):
            row = mined.rows(task.name)[number]
            if task.name == "mscoco_task0" and number < 2:
                continue  # the two bad queries
            item = data.query_item(query, mining_instruction(data, query, task))
            labels = []
            for did, cosine in zip(mined.dids("local")[row][:4], mined.scores("local")[row][:4], strict=True):
                pair = (item, data.candidate_item(candidates[int(did)]))
                p_yes = float(scorer.predict([pair], share_prefix=False)[0])
                labels.append((float(cosine) + DEFAULT_TASK_WEIGHTS.get(task.name, 1.0) * p_yes) / 2)
            expected.append(labels)
    assert DEFAULT_TASK_WEIGHTS == {"mscoco_task0": 0.5, "mscoco_task3": 0.1}
    np.testing.assert_allclose(np.array(rows["label"]), np.array(expected), atol=1e-4)

    # Interrupted after some chunks: the rerun scores only the missing chunk and writes the same rows.
    chunks = sorted((output / "chunks").glob("rows-*.jsonl"))
    kept = {path: path.stat().st_mtime_ns for path in chunks[1:]}
    lost = chunks[0].read_text()
    chunks[0].unlink()
    (output / "distill.json").write_text(json.dumps({**index, "complete": False}))
    distillation_data(DEFAULT_MODEL, reranker, root, tmp_path / "distill", **options)
    assert chunks[0].read_text() == lost and {path: path.stat().st_mtime_ns for path in kept} == kept
    # A finished folder is reused without loading the re-ranker.
    monkeypatch.setattr("umarvel_st.reranker.load_reranker", lambda *args, **kwargs: pytest.fail("scored again"))
    distillation_data(DEFAULT_MODEL, reranker, root, tmp_path / "distill", **options)
    with pytest.raises(ValueError, match="not a saved re-ranker folder"):
        distillation_data(DEFAULT_MODEL, TINY_MLLM, root, tmp_path / "x", **options)
    with pytest.raises(ValueError, match="task_weights names \\['nights_task4'\\]"):
        distillation_data(DEFAULT_MODEL, reranker, root, tmp_path / "x", **{**options, "task_weights": {
            "nights_task4": 1.0}})  # fmt: skip


def test_query_draw_is_a_seeded_share_of_the_distinct_queries() -> None:
    qids = [f"9:{number}" for number in range(40)] * 2  # a query in two tasks counts once
    drawn = draw_queries(qids, 0.1, seed=0)
    assert len(drawn) == 4 and drawn == draw_queries(list(reversed(qids)), 0.1, seed=0)
    assert drawn != draw_queries(qids, 0.1, seed=1)
    assert len(draw_queries(qids[:3], 0.1, seed=0)) == 1
    with pytest.raises(ValueError, match="fraction must be in"):
        draw_queries(qids, 0.0, seed=0)
    assert math.isclose(len(draw_queries(qids, 1.0, seed=0)), 40)


STEPS_RECIPE = """
name: steps
base_model: tiny:qwen2_vl
output_dir: {out}
stages:
  - name: lists
    kind: mine
    init_from: {model}
    data: {{root: {root}, tasks: {tasks}, top_k: 5}}
  - name: pairs
    kind: rerank-data
    data: {{root: {root}, from: lists}}
"""


def test_steps_run_as_stages_wired_by_name_skip_when_done_and_refuse_a_change(bench: Path, tmp_path: Path) -> None:
    recipe = tmp_path / "steps.yaml"
    recipe.write_text(STEPS_RECIPE.format(out=tmp_path / "run", model=DEFAULT_MODEL, root=bench, tasks=TASKS))
    final = train(load_recipe(recipe))
    assert final == tmp_path / "run" / "02-pairs" / "rerank.json"
    assert MinedLists(tmp_path / "run" / "01-lists" / "lists").top_k == 5
    config = json.loads((tmp_path / "run" / "02-pairs" / "run_config.json").read_text())
    assert config["inputs"]["lists"] == str(tmp_path / "run" / "01-lists" / "lists")
    assert len(rerank_stage_dataset(final, loss="bce", seed=0)) > 0
    stamp = final.stat().st_mtime_ns
    assert train(load_recipe(recipe)) == final and final.stat().st_mtime_ns == stamp  # skipped
    # A changed step is refused before anything runs, naming the key; the step reading it is refused as well.
    with pytest.raises(ValueError, match="stages.0.data: .*'top_k': 5.* -> .*'top_k': 6"):
        train(load_recipe(recipe, ["stages.0.data.top_k=6"]))
    # An interrupted step resumes: started (settings recorded) but unfinished, it runs again, the others skip.
    (final.parent / "run_config.json").unlink()
    final.unlink()
    assert [item.status for item in plan(load_recipe(recipe))] == ["done", "resume"]
    assert train(load_recipe(recipe)) == final and final.is_file()
    # A step's input is checked before anything runs.
    with pytest.raises(ValueError, match="Stage 'lists' \\(stages.0.data\\): .*no-such-root"):
        train(
            load_recipe(
                recipe, [f"output_dir={tmp_path / 'other'}", f"stages.0.data.root={tmp_path / 'no-such-root'}"]
            )
        )
    assert not (tmp_path / "other" / "01-lists").exists()
    # The step reading the lists records their settings: a change to them changes its settings too.
    changed = plan(load_recipe(recipe, ["stages.0.data.top_k=6"]), restart_from="lists")
    assert changed[1].settings["reads"]["lists"] != plan(load_recipe(recipe))[1].settings["reads"]["lists"]
    assert changed[1].settings["stage"] == plan(load_recipe(recipe))[1].settings["stage"]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("stages.6.data.from=reranker-data", "stages.6.data.from: 'reranker-data' is not an earlier 'mine' step"),
        ("stages.8.init_from=previous", "stages.8.init_from: 'previous' gives the 'distill-data' step's output"),
        ("stages.6.init_from=reranker", "stages.6.init_from: 'reranker' gives a re-ranker"),
        ("stages.7.data.reranker=hard-negatives", "stages.7.data.reranker: 'hard-negatives' is not an earlier re-r"),
        ("stages.8.loss=infonce", "stages.8.loss: 'infonce' is not one of \\['distill'\\]"),
        ("stages.7.data.fraction=1.5", "stages.7.data.fraction: must be in \\(0, 1\\]"),
        ("stages.7.data.top_k=0", "stages.7.data.top_k: must be > 0"),
        ("stages.3.kind=index", "stages.3.kind: 'index' is not one of"),
    ],
)
def test_recipe_wiring_is_checked_at_load(override: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_recipe("umarvel-qwen2vl-7b", [override])


def test_stage5_reads_a_path_or_a_step_but_not_both() -> None:
    with pytest.raises(ValueError, match="exactly one of path .* and from"):
        load_recipe("umarvel-qwen2vl-7b", ["stages.8.data.path=rows"])


def test_umarvel_distill_data_command(bench: Path, reranker: Path, tmp_path: Path) -> None:
    from umarvel_st.cli import main

    command = ["distill-data", "--model", str(DEFAULT_MODEL), "--reranker", str(reranker), "--data", str(bench)]
    command += ["--output", str(tmp_path / "d"), "--tasks", "mscoco_task3", "--fraction", "0.5", "--top-k", "3"]
    with pytest.raises(ValueError, match="--weight 'mscoco_task3' is not TASK=NUMBER"):
        main([*command, "--weight", "mscoco_task3", "--no-progress-bar"])
    assert main([*command, "--weight", "mscoco_task3=0", "--no-progress-bar"]) == 0
    rows, mined = distill_dataset(tmp_path / "d"), MinedLists(tmp_path / "d" / "lists")
    assert len(rows) == 3 and len(rows[0]["label"]) == 3  # half of the 6 queries, 3 candidates each
    # Weight 0: the teacher is cos / 2, the cosine of the candidate in that column.
    cosines = {round(float(value) / 2, 5) for value in np.asarray(mined.scores("local")).ravel()}
    assert {round(value, 5) for row in rows["label"] for value in row} <= cosines


DISTILL_WORKER = """
import json, os, sys
import umarvel_st.reranker
from umarvel_st.train.distill import distillation_data

load = umarvel_st.reranker.load_reranker
scored = []


def counting_load(*args, **kwargs):
    model = load(*args, **kwargs)
    predict = model.predict
    model.predict = lambda pairs, **options: scored.append(len(pairs)) or predict(pairs, **options)
    return model


umarvel_st.reranker.load_reranker = counting_load
model, reranker, root, output = sys.argv[1:5]
options = json.loads(sys.argv[5])
distillation_data(model, reranker, root, output, **options)
with open(os.path.join(output, "..", f"rank-{os.environ['RANK']}.json"), "w") as handle:
    json.dump(scored, handle)
"""


def test_two_processes_write_the_distillation_data_of_one_process(bench: Path, reranker: Path, tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    from test_mining import _free_port

    options = {"tasks": TASKS, "fraction": 1.0, "top_k": 4, "seed": 1, "chunk_size": 2, "show_progress_bar": False}
    one = distillation_data(DEFAULT_MODEL, reranker, bench, tmp_path / "one", **options)
    script = tmp_path / "worker.py"
    script.write_text(DISTILL_WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    env.pop("WORLD_SIZE", None)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port"]
    arguments = [str(DEFAULT_MODEL), str(reranker), str(bench), str(tmp_path / "two"), json.dumps(options)]
    double = subprocess.run(
        [*command, str(_free_port()), str(script), *arguments], env=env, capture_output=True, text=True, timeout=300
    )
    assert double.returncode == 0, double.stderr[-4000:]
    two = tmp_path / "two"
    # Each rank scored its own chunks (12 queries, 2 per chunk: 3 chunks each, every pair once in all).
    scored = [json.loads((tmp_path / f"rank-{rank}.json").read_text()) for rank in (0, 1)]
    assert all(len(calls) == 6 for calls in scored) and sum(map(sum, scored)) == 12 * 4
    assert json.loads((two / "distill.json").read_text()) == json.loads((one / "distill.json").read_text())
    files = sorted(path.name for path in (one / "chunks").iterdir())
    assert files == sorted(path.name for path in (two / "chunks").iterdir()) and len(files) == 12
    for name in files:
        assert (two / "chunks" / name).read_text() == (one / "chunks" / name).read_text(), name
    assert distill_dataset(two)["label"] == distill_dataset(one)["label"]

    # Interrupted (chunks of both ranks lost): one process resumes the two processes' run to the same rows.
    for name in ("rows-00000.jsonl", "rows-00003.jsonl"):
        (two / "chunks" / name).unlink()
    index = json.loads((two / "distill.json").read_text())
    (two / "distill.json").write_text(json.dumps({**index, "complete": False}))
    distillation_data(DEFAULT_MODEL, reranker, bench, two, **options)
    for name in files:
        assert (two / "chunks" / name).read_text() == (one / "chunks" / name).read_text(), name
