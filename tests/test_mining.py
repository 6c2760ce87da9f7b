"""Hard-negative mining: the lists equal a brute-force faiss-heap reference (ties included), across 2 processes too;
negative selection by hand; resume; fingerprints; the stage-4 rows; the tiny model through ``umarvel mine``."""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from umarvel_st.data.mbeir import DID_BOUND, MBEIRData, hash_id
from umarvel_st.data.synthetic import make_synthetic_mbeir
from umarvel_st.train import mining
from umarvel_st.train.mining import (
    MIXED_RANDOM_TASKS,
    MinedLists,
    mbeir_hard_negatives,
    mine,
    model_folder_fingerprint,
    random_negatives,
    rank_pools,
    select_negatives,
)


@pytest.fixture(autouse=True)
def one_faiss_thread():
    import faiss

    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(threads)


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("mining") / "data"
    make_synthetic_mbeir(root, test_queries=1, train_queries=6, pool_size=10, image_size=32)
    return root


class TieEncoder:
    """Unit vectors from a hash of the item, drawn from the 24 signed axes and (+-1/2, +-1/2, +-1/2, +-1/2) of 4-D:
    exactly unit (L2 normalisation leaves them alone), exact scores, many ties. Records calls; can stop."""

    VECTORS = np.concatenate([np.eye(4), -np.eye(4), np.array(np.meshgrid(*[[-0.5, 0.5]] * 4)).reshape(4, -1).T])

    def __init__(self, stop_at_call: int | None = None) -> None:
        self.queries: list[Any] = []
        self.documents: list[Any] = []
        self.calls = 0
        self.stop_at_call = stop_at_call

    @classmethod
    def vector(cls, item: Any) -> np.ndarray:
        seed = int(hashlib.sha1(json.dumps(item, sort_keys=True).encode()).hexdigest()[:8], 16)
        return cls.VECTORS[seed % len(cls.VECTORS)].astype(np.float32)

    def _encode(self, items: list[Any], record: list[Any], kwargs: dict[str, Any]) -> np.ndarray:
        assert kwargs["normalize_embeddings"] and kwargs["convert_to_numpy"]
        self.calls += 1
        if self.stop_at_call is not None and self.calls >= self.stop_at_call:
            raise KeyboardInterrupt  # what an interruption looks like to the store
        record.extend(items)
        return np.stack([self.vector(item) for item in items])

    def encode_query(self, items: list[Any], **kwargs: Any) -> np.ndarray:
        return self._encode(items, self.queries, kwargs)

    def encode_document(self, items: list[Any], **kwargs: Any) -> np.ndarray:
        return self._encode(items, self.documents, kwargs)


def faiss_heap_top_k(scores: np.ndarray, k: int) -> list[int]:
    """faiss's flat-index scan, literally: a size-k heap whose top is the worst entry (lowest score, then lowest
    index); a later entry replaces it only when strictly higher. Output by score, then index, descending."""
    heap: list[tuple[float, int]] = []
    for index, score in enumerate(scores.tolist()):
        if len(heap) < k:
            heap.append((score, index))
        elif score > min(heap)[0]:
            heap.remove(min(heap))
            heap.append((score, index))
    return [index for _, index in sorted(heap, reverse=True)]


# Negative selection -----------------------------------------------------------------------------------------------


def test_select_negatives_by_hand() -> None:
    # Positives are skipped, a repeated did counts once, padding (-1) is never a negative.
    assert select_negatives([11, 12, 13, 11, 14, 15, 16, -1], {12}) == [11, 13, 14, 15, 16]
    assert select_negatives([12, 13, 14, -1, -1], {12}) == [13, 14, 13, 13, 13]  # short: the first repeats
    assert select_negatives([12, 12, -1], {12}) == []  # none: the caller draws random ones
    assert select_negatives([1, 2, 3, 4, 5, 6, 7], set(), k=2) == [1, 2]


def test_random_negatives_skip_positives_are_seeded_and_repeat_when_short() -> None:
    pool = np.arange(100, 120)
    positives = {100, 101, 102}
    drawn = random_negatives(pool, positives, 5, random.Random("0:0:9:1"))
    assert drawn == random_negatives(pool, positives, 5, random.Random("0:0:9:1"))
    assert len(set(drawn)) == 5 and not set(drawn) & positives and set(drawn) <= set(pool.tolist())
    short = random_negatives(np.array([7, 8, 9]), {8}, 5, random.Random(1))
    assert sorted(set(short)) == [7, 9] and short[2:] == [short[0]] * 3
    with pytest.raises(ValueError, match="q.jsonl:3: every candidate of the query's local pool"):
        random_negatives(np.array([7, 8]), {7, 8}, 5, random.Random(1), where="q.jsonl:3")


# The search ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", [None, "cpu"])  # faiss, and the torch matrix product the accelerator runs
def test_rank_pools_on_a_fixed_score_matrix(device: str | None) -> None:
    # A one-hot query against pool rows [s_i]: the scores are exactly s_i.
    scores = np.array([0.5, 0.9, 0.5, 0.1, 0.9, 0.7], dtype=np.float32)
    pool = [scores[:4, None], scores[4:, None]]  # two shards
    query = np.ones((1, 1), dtype=np.float32)
    local_members = [np.array([0, 2, 3, 5])]
    found = rank_pools(query, np.array([0]), pool, local_members, 4, device=device)
    # faiss keeps row 2, not row 0, of the tied 0.5s: row 0 is the heap's top when row 5 arrives.
    assert found["global"][1].tolist() == [[4, 1, 5, 2]]
    assert found["global"][0].tolist() == [[scores[4], scores[1], scores[5], scores[2]]]
    assert found["local"][1].tolist() == [[5, 2, 0, 3]]  # ties by row descending
    wide = rank_pools(query, np.array([0]), pool, local_members, 6, device=device)["local"]
    assert wide[1].tolist() == [[5, 2, 0, 3, -1, -1]] and np.isneginf(wide[0][0, 4:]).all()
    # Stage 4 walks the global list, skipping the positive (row 4); short of 5, the first repeats.
    assert select_negatives(found["global"][1][0], {4}) == [1, 5, 2, 1, 1]


@pytest.mark.parametrize("device", [None, "cpu"])
def test_rank_pools_equals_a_brute_force_faiss_heap(device: str | None) -> None:
    rng = np.random.default_rng(0)
    pool = rng.integers(-1, 2, size=(230, 3)).astype(np.float32)  # exact scores, massive ties
    queries = rng.integers(-1, 2, size=(17, 3)).astype(np.float32)
    members = [np.sort(rng.choice(230, size=size, replace=False)) for size in (40, 150, 7)]
    local_pool = rng.integers(0, 3, size=17)
    shards = [pool[start : start + 64] for start in range(0, 230, 64)]
    found = rank_pools(queries, local_pool, shards, members, 20, device=device)
    exact = queries.astype(np.float64) @ pool.T.astype(np.float64)  # (queries, pool)
    for row in range(17):
        assert found["global"][1][row].tolist() == faiss_heap_top_k(exact[row], 20)
        subset = members[local_pool[row]]
        expected = subset[faiss_heap_top_k(exact[row, subset], 20)].tolist()
        assert found["local"][1][row].tolist() == expected + [-1] * (20 - len(expected))
        listed = found["local"][1][row] >= 0
        np.testing.assert_array_equal(found["local"][0][row][listed], exact[row, found["local"][1][row][listed]])


# Mining end to end (hash encoder) -----------------------------------------------------------------------------------


def reference_lists(root: Path, k: int) -> dict[str, np.ndarray]:
    """The lists by brute force: every item embedded alone, every query against every pool row, faiss's heap."""
    data = MBEIRData(root)
    tasks = data.tasks("train")
    pool_path = data.pool_path(tasks[0], "global", "train")
    candidates = list(data.iter_candidates(pool_path))
    pool = np.stack([TieEncoder.vector(data.candidate_item(c)) for c in candidates])
    dids = np.array([hash_id(c.did, DID_BOUND) for c in candidates])
    result: dict[str, list[list[int]]] = {"global": [], "local": []}
    for task in tasks:
        shared = (5, 6) if task.dataset_id in (5, 6) else (task.dataset_id,)
        local = np.array(
            [
                i
                for i, c in enumerate(candidates)
                if c.modality == task.candidate_modality and dids[i] // DID_BOUND in shared
            ]
        )
        for query in data.iter_queries(task, "train"):
            first = data.instructions_for(int(query.qid.split(":")[0]), query.modality, task.candidate_modality)[0]
            vector = TieEncoder.vector(data.query_item(query, first))
            scores = pool.astype(np.float64) @ vector.astype(np.float64)
            result["global"].append(dids[faiss_heap_top_k(scores, k)].tolist())
            ranked = dids[local[faiss_heap_top_k(scores[local], k)]].tolist()
            result["local"].append(ranked + [-1] * (k - len(ranked)))
    return {name: np.array(rows) for name, rows in result.items()}


def test_mined_lists_equal_brute_force_with_first_phrasing_instructions(bench: Path, tmp_path: Path) -> None:
    encoder = TieEncoder()
    output = mine(
        encoder, bench, tmp_path / "lists", model_tag="hash", top_k=30, shard_size=16, show_progress_bar=False
    )
    lists = MinedLists(output)
    reference = reference_lists(bench, 30)
    for name in ("global", "local"):
        np.testing.assert_array_equal(lists.dids(name), reference[name])
    data = MBEIRData(bench)
    firsts = {phrasings[0] for phrasings in data.instructions.values()}
    assert {item["instruction"] for item in encoder.queries} <= firsts  # the first phrasing, as the spec asks
    assert len(encoder.documents) == lists.index["pool_size"] and len(encoder.queries) == len(lists.qids)
    assert lists.rows("oven_task6") == range(*lists.ranges["oven_task6"])
    assert not (output / "blocks").exists()  # per-block results are folded into the lists


def test_mining_resumes_after_an_interruption_and_reuses_finished_lists(
    bench: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reference = mine(
        TieEncoder(), bench, tmp_path / "reference", model_tag="hash", top_k=10, shard_size=8, show_progress_bar=False
    )
    output = tmp_path / "lists"
    with pytest.raises(KeyboardInterrupt):  # stops while encoding the queries (5th encode call)
        mine(
            TieEncoder(stop_at_call=5),
            bench,
            output,
            model_tag="hash",
            top_k=10,
            shard_size=8,
            show_progress_bar=False,
        )

    searched: list[int] = []
    original = mining.rank_pools

    def stop_after_two_blocks(*args: Any, **kwargs: Any) -> Any:
        if len(searched) == 2:
            raise KeyboardInterrupt
        searched.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(mining, "rank_pools", stop_after_two_blocks)
    resumed = TieEncoder()
    with pytest.raises(KeyboardInterrupt):
        mine(resumed, bench, output, model_tag="hash", top_k=10, shard_size=8, show_progress_bar=False)
    total = MinedLists(reference).index
    # The 4 shards written before the stop are not encoded again.
    assert len(resumed.queries) + len(resumed.documents) == total["num_queries"] + total["pool_size"] - 4 * 8
    assert len(list((output / "blocks").glob("block-*.npz"))) == 2

    monkeypatch.setattr(mining, "rank_pools", original)
    calls: list[int] = []
    monkeypatch.setattr(mining, "rank_pools", lambda *a, **k: calls.append(1) or original(*a, **k))
    last = TieEncoder()
    mine(last, bench, output, model_tag="hash", top_k=10, shard_size=8, show_progress_bar=False)
    assert last.calls == 0 and len(calls) == -(-total["num_queries"] // 8) - 2  # only the missing blocks
    for name in ("global", "local"):
        np.testing.assert_array_equal(MinedLists(output).dids(name), MinedLists(reference).dids(name))
        np.testing.assert_array_equal(MinedLists(output).scores(name), MinedLists(reference).scores(name))

    again = TieEncoder()
    mine(again, bench, output, model_tag="hash", top_k=10, shard_size=8, show_progress_bar=False)
    assert again.calls == 0 and len(calls) == -(-total["num_queries"] // 8) - 2  # finished lists are reused


def test_lists_from_another_model_or_other_data_are_refused(bench: Path, tmp_path: Path) -> None:
    models = {}
    for name in ("stage3", "other"):
        models[name] = tmp_path / name
        models[name].mkdir()
        (models[name] / "model.safetensors").write_bytes(name.encode())
        (models[name] / "modules.json").write_text("[]")
    output = mine(
        TieEncoder(),
        bench,
        tmp_path / "lists",
        model_tag=model_folder_fingerprint(models["stage3"]),
        top_k=10,
        shard_size=64,
        show_progress_bar=False,
    )
    data = MBEIRData(bench)
    lists = MinedLists(output)
    lists.check(data, data.tasks("train"), models["stage3"])
    with pytest.raises(ValueError, match="were mined with model .*stage3"):
        lists.check(data, data.tasks("train"), models["other"])
    with pytest.raises(ValueError, match="were mined with model"):
        mbeir_hard_negatives(bench, output, model=models["other"])

    edited = tmp_path / "edited"
    shutil.copytree(bench, edited)
    pool = edited / "cand_pool" / "global" / "mbeir_union_train_cand_pool.jsonl"
    pool.write_text("".join(pool.read_text().splitlines(keepends=True)[:-1]))
    with pytest.raises(ValueError, match="were mined over pool"):
        mbeir_hard_negatives(edited, output)
    with pytest.raises(ValueError, match="holds no finished mined lists.*umarvel mine"):
        MinedLists(tmp_path / "nothing")
    with pytest.raises(ValueError, match="Run `umarvel mine --model .*stage3 --data .* --output .*nothing`"):
        mbeir_hard_negatives(bench, tmp_path / "nothing", model=models["stage3"])
    with pytest.raises(ValueError, match="is not a saved model folder"):
        mine(str(tmp_path), bench, tmp_path / "lists")


def test_bad_pools_and_queries_raise_before_encoding(bench: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(bench, broken)
    pool = broken / "cand_pool" / "global" / "mbeir_union_train_cand_pool.jsonl"
    lines = pool.read_text().splitlines(keepends=True)
    pool.write_text("".join(lines + lines[:1]))
    encoder = TieEncoder()
    did = json.loads(lines[0])["did"]
    with pytest.raises(ValueError, match=f"did '{did}' appears more than once"):
        mine(encoder, broken, tmp_path / "out", model_tag="hash", show_progress_bar=False)
    pool.write_text("".join(lines))
    queries = broken / "query" / "train" / "mbeir_cirr_task7_train.jsonl"
    query_lines = queries.read_text().splitlines(keepends=True)
    queries.write_text("".join(query_lines + query_lines[:1]))
    with pytest.raises(ValueError, match=r"mbeir_cirr_task7_train.jsonl:\d+: qid .* appears more than once"):
        mine(encoder, broken, tmp_path / "out", model_tag="hash", show_progress_bar=False)
    assert encoder.calls == 0


# Stage-4 rows -------------------------------------------------------------------------------------------------------


def row_key(item: str | dict[str, Any]) -> str:
    """A candidate item as a stage-4 cell holds it: ``{"text", "image"}``."""
    cell = {"text": item, "image": None} if isinstance(item, str) else {"text": None, "image": None, **item}
    return json.dumps(cell, sort_keys=True)


def test_stage4_rows_draw_like_mbeir_train_and_take_mined_negatives(bench: Path, tmp_path: Path) -> None:
    from umarvel_st.data.training import mbeir_train

    output = mine(
        TieEncoder(), bench, tmp_path / "lists", model_tag="hash", top_k=100, shard_size=64, show_progress_bar=False
    )
    rows = mbeir_hard_negatives(bench, output, epochs=2, seed=3)
    plain = mbeir_train(bench, epochs=2, seed=3)
    assert rows.column_names == ["anchor", "positive"] + [f"negative_{i}" for i in range(1, 6)]
    assert rows["anchor"] == plain["anchor"] and rows["positive"] == plain["positive"]  # same draws per epoch

    data = MBEIRData(bench)
    lists = MinedLists(output)
    pool_file = bench / "cand_pool" / "global" / "mbeir_union_train_cand_pool.jsonl"
    by_item = {row_key(data.candidate_item(c)): hash_id(c.did, DID_BOUND) for c in data.iter_candidates(pool_file)}
    queries = [(task, query) for task in data.tasks("train") for query in data.iter_queries(task, "train")]
    assert len(rows) == 2 * len(queries)  # every synthetic query has a positive in the pool
    mixed = mbeir_hard_negatives(bench, output, epochs=1, seed=3, negatives="mixed")
    differs = 0
    for row, (task, query) in enumerate(queries):
        negatives = [by_item[row_key(rows[row][f"negative_{i}"])] for i in range(1, 6)]
        positives = {hash_id(did, DID_BOUND) for did in query.pos_cand_list}
        assert negatives == select_negatives(lists.dids("global")[row], positives)
        assert not set(negatives) & positives
        random_ones = [by_item[row_key(mixed[row][f"negative_{i}"])] for i in range(1, 6)]
        if task.name in MIXED_RANDOM_TASKS:  # random draws from the task's local pool
            local = set(lists.dids("local")[row].tolist())  # the synthetic local pools hold < 100 rows here
            assert set(random_ones) <= local and not set(random_ones) & positives
            differs += random_ones != negatives
        else:
            assert random_ones == negatives
    assert differs > 0
    with pytest.raises(ValueError, match=r"Unknown negatives preset 'hard'; use one of \['mined', 'mixed'\]"):
        mbeir_hard_negatives(bench, output, negatives="hard")


def test_stage4_skips_queries_without_positive_in_the_pool(
    bench: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    copy = tmp_path / "data"
    shutil.copytree(bench, copy)
    queries = copy / "query" / "train" / "mbeir_webqa_task1_train.jsonl"
    records = [json.loads(line) for line in queries.read_text().splitlines()]
    records[0]["pos_cand_list"] = ["2:9999999"]  # not in the pool
    queries.write_text("".join(json.dumps(record) + "\n" for record in records))
    output = mine(
        TieEncoder(), copy, tmp_path / "lists", model_tag="hash", top_k=10, shard_size=64, show_progress_bar=False
    )
    total = MinedLists(output).index["num_queries"]
    assert len(mbeir_hard_negatives(copy, output)) == total - 1
    assert "1 queries have no positive" in caplog.text


# Two processes -------------------------------------------------------------------------------------------------------

WORKER = """
import sys
sys.path.insert(0, sys.argv[3])
from test_mining import TieEncoder
from umarvel_st.train.mining import mine

mine(TieEncoder(), sys.argv[1], sys.argv[2], model_tag="hash", top_k=12, shard_size=8, show_progress_bar=False)
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_processes_write_the_lists_of_one_process(bench: Path, tmp_path: Path) -> None:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    env.pop("WORLD_SIZE", None)
    tests = str(Path(__file__).parent)
    # The hash encoder's vectors and scores are exact, so this process's run is the one-process reference.
    mine(TieEncoder(), bench, tmp_path / "one", model_tag="hash", top_k=12, shard_size=8, show_progress_bar=False)
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(_free_port()),
    ]
    double = subprocess.run(
        [*command, str(script), str(bench), str(tmp_path / "two"), tests],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert double.returncode == 0, double.stderr[-4000:]
    one, two = MinedLists(tmp_path / "one"), MinedLists(tmp_path / "two")
    for name in ("global", "local"):
        np.testing.assert_array_equal(two.dids(name), one.dids(name))
        np.testing.assert_array_equal(two.scores(name), one.scores(name))
    np.testing.assert_array_equal(two.qids, one.qids)
    for kind in ("queries", "pool"):  # each rank encoded its own half
        parts = sorted(path.name for path in (tmp_path / "two" / "embeddings" / kind).iterdir())
        assert parts == ["part-000-of-002", "part-001-of-002"]
        assert all(list((tmp_path / "two" / "embeddings" / kind / part).glob("shard-*.npy")) for part in parts)


# The tiny model through the command line ---------------------------------------------------------------------------


def test_umarvel_mine_embeds_as_at_evaluation_whatever_the_saved_settings(bench: Path, tmp_path: Path) -> None:
    import umarvel_st
    from umarvel_st.cli import main
    from umarvel_st.demo import DEFAULT_MODEL

    model_dir = tmp_path / "model"
    shutil.copytree(DEFAULT_MODEL, model_dir)
    config_path = model_dir / "sentence_bert_config.json"
    config = json.loads(config_path.read_text())
    config.update(summarize_suffix=False, generation_prompt=False)  # as a stage-4 model is saved for training
    config_path.write_text(json.dumps(config))
    output = tmp_path / "lists"
    command = ["mine", "--model", str(model_dir), "--data", str(bench), "--output", str(output), "--top-k", "5"]
    assert main([*command, "--tasks", "mscoco_task0", "oven_task6", "--device", "cpu", "--no-progress-bar"]) == 0

    lists = MinedLists(output)
    lists.check(MBEIRData(bench), MBEIRData(bench).resolve_tasks(["mscoco_task0"], "train"), model_dir)
    data = MBEIRData(bench)
    candidates = {
        hash_id(c.did, DID_BOUND): c
        for c in data.iter_candidates(data.root / "cand_pool/global/mbeir_union_train_cand_pool.jsonl")
    }
    model = umarvel_st.load(model_dir, device="cpu")
    for task in data.resolve_tasks(["mscoco_task0", "oven_task6"], "train"):
        queries = list(data.iter_queries(task, "train"))[:2]
        first = data.instructions_for(task.dataset_id, task.query_modality, task.candidate_modality)[0]
        items = [data.query_item(query, first) for query in queries]
        saved = model.encode_query(items, convert_to_numpy=True)  # the saved settings: suffix and prompt off
        model[0].summarize_suffix = model[0].generation_prompt = True
        evaluation = model.encode_query(items, convert_to_numpy=True)
        for number, row in enumerate(lists.rows(task.name)[:2]):
            for name in ("global", "local"):
                listed = [candidates[int(did)] for did in lists.dids(name)[row]]
                documents = model.encode_document([data.candidate_item(c) for c in listed], convert_to_numpy=True)
                np.testing.assert_allclose(lists.scores(name)[row], documents @ evaluation[number], atol=2e-5)
                assert not np.allclose(lists.scores(name)[row], documents @ saved[number], atol=1e-3)
            assert all(c.modality == task.candidate_modality for c in listed)  # the local pool
        model[0].summarize_suffix = model[0].generation_prompt = False
