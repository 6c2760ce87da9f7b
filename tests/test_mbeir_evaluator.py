"""The M-BEIR evaluator, its reports and ``umarvel eval mbeir``: fake encoders for the logic, the tiny model end to
end."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from PIL import Image

from umarvel_st.cli import main
from umarvel_st.data.mbeir import MBEIRData
from umarvel_st.data.synthetic import make_synthetic_mbeir
from umarvel_st.evaluation import MBEIREvaluator, write_report
from umarvel_st.evaluation.mbeir_evaluator import chance_hit_at_k


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("evaluator")
    make_synthetic_mbeir(root, test_queries=6, train_queries=2, pool_size=30, image_size=32)
    return root


@pytest.fixture
def bench_copy(bench: Path, tmp_path: Path) -> Path:
    shutil.copytree(bench, tmp_path / "copy")
    return tmp_path / "copy"


def _key(item: Any) -> tuple[str | None, str | None]:
    return item["text"], item.get("image")


class OracleEncoder:
    """Knows the answers: a candidate is the one-hot of its did, a query the sum of its positives' one-hots.

    Records the items it is given, and can be told to stop (KeyboardInterrupt) at a given ``encode_document`` call.
    """

    def __init__(self, root: Path, interrupt_document_call: int | None = None) -> None:
        data = MBEIRData(root)
        self.index: dict[tuple[str | None, str | None], int] = {}
        self.positives: dict[tuple[str | None, str | None], list[str]] = {}
        dids: list[str] = []
        for split in ("test",):
            for task in data.tasks(split):
                for candidate in data.iter_candidates(data.pool_path(task, "local", split)):
                    self.index[_key(data.candidate_item(candidate))] = len(dids)
                    dids.append(candidate.did)
                qrels = data.load_qrels(task, split)
                for query in data.iter_queries(task, split):
                    self.positives[_key(data.query_item(query, None))] = qrels.get(query.qid, [])
        self.did_row = {did: row for row, did in enumerate(dids)}
        self.dim = len(dids)
        self.queries: list[dict[str, Any]] = []
        self.documents: list[Any] = []
        self.document_calls = 0
        self.interrupt_document_call = interrupt_document_call
        self.model_card_data = SimpleNamespace(set_evaluation_metrics=lambda *args: None)

    def encode_query(self, items: list[dict[str, Any]], **kwargs: Any) -> np.ndarray:
        assert kwargs["normalize_embeddings"] and kwargs["convert_to_numpy"]
        self.queries.extend(items)
        vectors = np.zeros((len(items), self.dim), dtype=np.float32)
        for row, item in enumerate(items):
            for did in self.positives[_key(item)]:
                if did in self.did_row:
                    vectors[row, self.did_row[did]] = 1.0
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)

    def encode_document(self, items: list[Any], **kwargs: Any) -> np.ndarray:
        self.document_calls += 1
        if self.document_calls == self.interrupt_document_call:
            raise KeyboardInterrupt("simulated interruption")
        self.documents.extend(items)
        vectors = np.zeros((len(items), self.dim), dtype=np.float32)
        for row, item in enumerate(items):
            vectors[row, self.index[_key(item)]] = 1.0
        return vectors


class Unused:
    """Encodes queries as constant vectors and refuses to encode a pool: bad pools must fail before encoding."""

    def encode_query(self, items: list[Any], **kwargs: Any) -> np.ndarray:
        return np.eye(1, 4, dtype=np.float32).repeat(len(items), axis=0)

    def encode_document(self, items: list[Any], **kwargs: Any) -> np.ndarray:
        raise AssertionError("the pool should be refused before it is encoded")


def test_oracle_scores_one_everywhere_and_queries_carry_instructions(bench: Path) -> None:
    oracle = OracleEncoder(bench)
    results = MBEIREvaluator(bench, show_progress_bar=False).evaluate(oracle, model_tag="oracle")
    assert results["average"] == 1.0
    assert all(
        row["score"] == row["hit@5"] == row["recall@5"] == row["map@5"] == 1.0 for row in results["tasks"].values()
    )
    assert results["synthetic"] and not results["all_16_tasks"] and results["num_tasks"] == 7
    data = MBEIRData(bench)
    allowed = {phrase for phrasings in data.instructions.values() for phrase in phrasings}
    assert len(oracle.queries) == 7 * 6 and all(item["instruction"] in allowed for item in oracle.queries)
    assert len({item["instruction"] for item in oracle.queries}) > 4  # several phrasings in use
    images = [item["image"] for item in oracle.queries if item["image"]]
    assert images and all(Path(image).is_file() and Path(image).is_relative_to(bench) for image in images)


def test_global_pool_searches_the_union(bench: Path) -> None:
    oracle = OracleEncoder(bench)
    results = MBEIREvaluator(bench, ["webqa_task1", "cirr_task7"], pool="global", show_progress_bar=False).evaluate(
        oracle
    )
    union_size = sum(
        1 for _ in MBEIRData(bench).iter_candidates(bench / "cand_pool/global/mbeir_union_test_cand_pool.jsonl")
    )
    assert {row["pool_size"] for row in results["tasks"].values()} == {union_size}
    assert len(oracle.documents) == union_size  # the union is encoded once for both tasks
    assert results["tasks"]["cirr_task7"]["score"] == 1.0


def test_interrupted_evaluation_resumes(bench: Path, tmp_path: Path) -> None:
    settings = {"tasks": ["mscoco_task0"], "shard_size": 8, "show_progress_bar": False, "cache_dir": tmp_path}
    with pytest.raises(KeyboardInterrupt):
        MBEIREvaluator(bench, **settings).evaluate(OracleEncoder(bench, interrupt_document_call=3))
    resumed = OracleEncoder(bench)
    results = MBEIREvaluator(bench, **settings).evaluate(resumed)
    pool_size = results["tasks"]["mscoco_task0"]["pool_size"]
    assert len(resumed.documents) == pool_size - 2 * 8  # two shards were kept
    assert resumed.queries == []  # the queries were complete before the interruption
    fresh = MBEIREvaluator(bench, **{**settings, "cache_dir": tmp_path / "fresh"}).evaluate(OracleEncoder(bench))
    assert results["tasks"] == fresh["tasks"]


def test_trainer_call_returns_prefixed_metrics_and_writes_csv(bench: Path, tmp_path: Path) -> None:
    evaluator = MBEIREvaluator(bench, ["nights_task4", "oven_task6"], show_progress_bar=False)
    metrics = evaluator(OracleEncoder(bench), output_path=str(tmp_path), epoch=1, steps=10)
    assert metrics == {"mbeir_nights_task4_hit@5": 1.0, "mbeir_oven_task6_hit@5": 1.0, "mbeir_average": 1.0}
    assert evaluator.primary_metric == "mbeir_average"
    evaluator(OracleEncoder(bench), output_path=str(tmp_path), epoch=2, steps=20)
    lines = (tmp_path / evaluator.csv_file).read_text().splitlines()
    assert lines[0].startswith("epoch,steps,nights_task4_hit@5") and lines[2].startswith("2,20,1.0")


def test_query_without_positive_is_refused(bench_copy: Path) -> None:
    qrels = bench_copy / "qrels/test/mbeir_webqa_task1_test_qrels.txt"
    lines = qrels.read_text().splitlines()
    dropped = lines[0].split()[0]
    qrels.write_text("\n".join(line for line in lines if not line.startswith(dropped + " ")) + "\n")
    with pytest.raises(ValueError, match=rf"1 webqa_task1 queries have no positive .*'{dropped}'"):
        MBEIREvaluator(bench_copy, ["webqa_task1"], show_progress_bar=False).evaluate(None)  # before encoding


def test_positives_missing_from_the_pool_are_counted(bench_copy: Path, caplog: pytest.LogCaptureFixture) -> None:
    qrels = bench_copy / "qrels/test/mbeir_webqa_task1_test_qrels.txt"
    qid = qrels.read_text().split()[0]
    with qrels.open("a") as handle:
        handle.write(f"{qid} 0 2:9999999 1 1\n")
    results = MBEIREvaluator(bench_copy, ["webqa_task1"], show_progress_bar=False).evaluate(OracleEncoder(bench_copy))
    row = results["tasks"]["webqa_task1"]
    assert row["missing_positives"] == 1 and row["queries_without_positive_in_pool"] == 0
    assert row["hit@5"] == 1.0 and row["recall@5"] < 1.0  # the absent positive can never be found
    assert "not in the searched pool" in caplog.text


def test_missing_image_and_duplicate_did_are_refused(bench_copy: Path) -> None:
    pool = bench_copy / "cand_pool/local/mbeir_nights_task4_cand_pool.jsonl"
    first = json.loads(pool.read_text().splitlines()[0])
    (bench_copy / first["img_path"]).unlink()
    with pytest.raises(ValueError, match=rf"{pool}:1: image file .*{Path(first['img_path']).name} does not exist"):
        MBEIREvaluator(bench_copy, ["nights_task4"], show_progress_bar=False).evaluate(Unused())
    text_pool = bench_copy / "cand_pool/local/mbeir_webqa_task1_cand_pool.jsonl"
    lines = text_pool.read_text().splitlines()
    text_pool.write_text("\n".join([*lines, lines[3]]) + "\n")
    with pytest.raises(ValueError, match="appears more than once"):
        MBEIREvaluator(bench_copy, ["webqa_task1"], show_progress_bar=False).evaluate(Unused())


def test_unknown_task_and_pool_are_refused(bench: Path) -> None:
    with pytest.raises(ValueError, match="Tasks present: mscoco_task0"):
        MBEIREvaluator(bench, ["infoseek_task8"])
    with pytest.raises(ValueError, match="Unknown pool"):
        MBEIREvaluator(bench, pool="union")


def test_chance_level() -> None:
    assert chance_hit_at_k(10, 1, 5) == pytest.approx(0.5)
    assert chance_hit_at_k(10, 2, 1) == pytest.approx(0.2)
    assert chance_hit_at_k(4, 1, 5) == 1.0


def test_reports(bench: Path, tmp_path: Path) -> None:
    results = MBEIREvaluator(bench, show_progress_bar=False).evaluate(OracleEncoder(bench), model_tag="oracle")
    paths = write_report(results, tmp_path, command="umarvel eval mbeir --model oracle")
    stored = json.loads(paths["json"].read_text())
    assert (
        stored["command"] == "umarvel eval mbeir --model oracle" and stored["tasks"].keys() == results["tasks"].keys()
    )
    markdown = paths["markdown"].read_text()
    header = next(line for line in markdown.splitlines() if line.startswith("| model |"))
    assert header.split(" | ")[1:4] == ["mscoco_task0", "webqa_task1", "webqa_task2"]  # the paper's order
    assert "| UniIR CLIP_SF (published) | - |" in markdown and "| 50.6 |" in markdown  # local-pool average
    assert "| **ours** | 100.0 |" in markdown and "umarvel eval mbeir --model oracle" in markdown
    assert "synthetic benchmark" in markdown
    with Image.open(paths["png"]) as image:
        assert image.format == "PNG" and image.width > 500


def test_cli_end_to_end_on_the_tiny_model(
    bench: Path, tmp_path: Path, tiny_backbone_factory: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    model = tiny_backbone_factory("qwen2_vl")
    args = ["eval", "mbeir", "--model", str(model), "--data", str(bench), "--tasks", "mscoco_task0", "cirr_task7"]
    args += ["--output", str(tmp_path / "out"), "--device", "cpu", "--batch-size", "8", "--no-progress-bar"]
    assert main(args) == 0
    assert "cirr_task7" in capsys.readouterr().out
    results = json.loads((tmp_path / "out/results.json").read_text())
    assert set(results["tasks"]) == {"mscoco_task0", "cirr_task7"}
    assert all(0.0 <= row["score"] <= 1.0 for row in results["tasks"].values())
    assert results["command"].startswith(f"umarvel eval mbeir --model {model} --data {bench} --tasks mscoco_task0")
    assert (tmp_path / "out/report.md").is_file() and (tmp_path / "out/report.png").is_file()
    shards = sorted((tmp_path / "out/embeddings").rglob("shard-*.npy"))
    stamps = [path.stat().st_mtime_ns for path in shards]
    assert main(args) == 0  # the rerun reuses every cached embedding
    assert [path.stat().st_mtime_ns for path in shards] == stamps
    assert json.loads((tmp_path / "out/results.json").read_text())["tasks"] == results["tasks"]
    (tmp_path / "report.txt").write_text("")
    with pytest.raises(ValueError, match="report.txt' is a file, not a folder"):
        main([*args, "--output", str(tmp_path / "report.txt" / "sub")])  # the last --output wins


@pytest.mark.slow
def test_cli_global_pool_with_process_pool_on_default_benchmark(
    tmp_path: Path, tiny_backbone_factory: Callable[..., Path]
) -> None:
    assert main(["make-synthetic", str(tmp_path / "data")]) == 0
    model = str(tiny_backbone_factory("qwen2_vl"))
    common = ["eval", "mbeir", "--model", model, "--data", str(tmp_path / "data"), "--no-progress-bar"]
    assert main([*common, "--pool", "global", "--output", str(tmp_path / "global"), "--devices", "cpu", "cpu"]) == 0
    results = json.loads((tmp_path / "global/results.json").read_text())
    assert results["num_tasks"] == 7 and {row["pool_size"] for row in results["tasks"].values()} == {1435}


def test_bad_task_lists_and_files_are_refused_before_encoding(bench_copy: Path) -> None:
    with pytest.raises(ValueError, match="tasks is empty"):
        MBEIREvaluator(bench_copy, [])
    queries = bench_copy / "query/test/mbeir_webqa_task1_test.jsonl"
    saved = queries.read_text()
    queries.write_text("\n")
    with pytest.raises(ValueError, match=rf"{queries} holds no queries"):
        MBEIREvaluator(bench_copy, ["webqa_task1"], show_progress_bar=False).evaluate(None)
    queries.write_text(saved)
    pool = bench_copy / "cand_pool/local/mbeir_webqa_task1_cand_pool.jsonl"
    pool.write_text("")
    with pytest.raises(ValueError, match=rf"{pool} holds no candidates"):
        MBEIREvaluator(bench_copy, ["webqa_task1"], show_progress_bar=False).evaluate(None)
    (bench_copy / "instructions/query_instructions.tsv").unlink()
    with pytest.raises(ValueError, match="Instruction file .* does not exist"):
        MBEIREvaluator(bench_copy, ["webqa_task1"], show_progress_bar=False).evaluate(None)


def test_damaged_cache_files_are_not_used(bench: Path, tmp_path: Path) -> None:
    settings = {"tasks": ["mscoco_task0"], "shard_size": 8, "show_progress_bar": False, "cache_dir": tmp_path}
    first = MBEIREvaluator(bench, **settings).evaluate(OracleEncoder(bench))
    assert first["tasks"]["mscoco_task0"]["score"] == 1.0
    pool = tmp_path / "pool-mbeir_mscoco_task0_test_cand_pool"
    ids = np.load(pool / "ids.npy")
    np.save(pool / "ids.npy", ids[::-1])  # permuted: would pair every embedding with another candidate
    (pool / "shard-00001.npy").unlink()  # a gap in the middle: the search would stop there
    resumed = OracleEncoder(bench)
    again = MBEIREvaluator(bench, **settings).evaluate(resumed)
    assert again["tasks"] == first["tasks"]
    assert len(resumed.documents) == 8  # only the missing shard was encoded


def _stored(folder: Path) -> np.ndarray:
    return np.concatenate([np.load(path) for path in sorted(folder.glob("shard-*.npy"))])


def test_cache_follows_the_model_weights_and_options(
    bench: Path, tmp_path: Path, tiny_backbone_factory: Callable[..., Path]
) -> None:
    import torch

    from umarvel_st import from_mllm

    model = from_mllm(str(tiny_backbone_factory("qwen2_vl")), device="cpu")
    evaluator = MBEIREvaluator(bench, ["webqa_task1"], cache_dir=tmp_path, show_progress_bar=False, batch_size=8)
    data = MBEIRData(bench)
    task = data.resolve_tasks(["webqa_task1"])[0]
    documents = [data.candidate_item(c) for c in data.iter_candidates(data.pool_path(task, "local", "test"))]
    queries = [data.query_item(q, data.eval_instruction(q, task)) for q in data.iter_queries(task, "test")]
    pool_dir, query_dir = tmp_path / "pool-mbeir_webqa_task1_cand_pool", tmp_path / "queries-test-webqa_task1"

    evaluator.evaluate(model)
    with torch.no_grad():
        model[0].model.language_model.layers[-1].mlp.down_proj.weight.mul_(-3.0)  # the weights change in place
    evaluator.evaluate(model)
    np.testing.assert_allclose(_stored(pool_dir), model.encode_document(documents, batch_size=8), atol=1e-6)

    model[0].summarize_suffix = False  # an option changes
    evaluator.evaluate(model)
    np.testing.assert_allclose(_stored(query_dir), model.encode_query(queries, batch_size=8), atol=1e-6)


def test_eval_loads_a_saved_model_by_hub_id_with_its_options(
    tmp_path: Path, tiny_backbone_factory: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub

    from umarvel_st import from_mllm
    from umarvel_st.evaluation.cli import load_model
    from umarvel_st.modeling import UMarvelTransformer
    from umarvel_st.testing import install_in_hub_cache

    base = tiny_backbone_factory("qwen2_vl")
    from_mllm(str(base), device="cpu", summarize_suffix=False).save(str(tmp_path / "saved"))
    install_in_hub_cache(tmp_path / "saved", tmp_path / "hub", "org/u-marvel")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    for name in ("org/u-marvel", str(tmp_path / "saved")):
        loaded = load_model(name, "cpu")
        assert isinstance(loaded[0], UMarvelTransformer) and loaded[0].summarize_suffix is False, name
    assert load_model(str(base), "cpu")[0].summarize_suffix is True  # a Qwen-VL checkpoint: from_mllm defaults
    with pytest.raises(ValueError, match="not an existing folder and not a Hub id"):
        load_model(str(tmp_path / "no" / "such" / "model"))


# U-MARVEL+ (recall then re-rank) ------------------------------------------------------------------------------


class BlindEncoder(OracleEncoder):
    """Candidates as the oracle encodes them, queries as seeded random directions: retrieval near chance."""

    def encode_query(self, items: list[dict[str, Any]], **kwargs: Any) -> np.ndarray:
        self.queries.extend(items)
        vectors = np.stack(
            [np.random.default_rng(sum(map(ord, str(_key(item))))).normal(size=self.dim) for item in items]
        )
        return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


class OracleReranker:
    """P(Yes) = 1 for a query's qrels positives, else 0; records its pairs; can stop at a given ``predict`` call."""

    def __init__(self, oracle: OracleEncoder, interrupt_call: int | None = None) -> None:
        self.oracle = oracle
        self.dids = {row: did for did, row in oracle.did_row.items()}
        self.pairs: list[tuple[Any, Any]] = []
        self.calls = 0
        self.interrupt_call = interrupt_call

    def predict(self, pairs: list[tuple[Any, Any]], **kwargs: Any) -> np.ndarray:
        self.calls += 1
        if self.calls == self.interrupt_call:
            raise KeyboardInterrupt("simulated interruption")
        self.pairs.extend(pairs)
        scores = [
            float(self.dids[self.oracle.index[_key(candidate)]] in self.oracle.positives[_key(query)])
            for query, candidate in pairs
        ]
        return np.asarray(scores, dtype=np.float32)


@pytest.mark.parametrize("pool", ["local", "global"])
def test_rerank_lifts_the_positives_of_the_top_n(bench: Path, tmp_path: Path, pool: str) -> None:
    blind = BlindEncoder(bench)
    reranker = OracleReranker(blind)
    tasks = ["mscoco_task0", "cirr_task7", "oven_task6"]
    evaluator = MBEIREvaluator(
        bench, tasks, pool=pool, show_progress_bar=False, reranker=reranker, rerank_top=400, rerank_weight=3.0
    )
    results = evaluator.evaluate(blind)
    assert results["rerank"] == {"reranker": "OracleReranker", "top": 400, "weight": 3.0, "average": 1.0}
    assert results["average"] < 0.9  # retrieval alone is near chance, reported beside
    plain = MBEIREvaluator(bench, tasks, pool=pool, show_progress_bar=False).evaluate(BlindEncoder(bench))
    assert {t: row["score"] for t, row in plain["tasks"].items()} == {
        t: row["score"] for t, row in results["tasks"].items()
    }
    # the re-ranker saw each query with its instruction (the re-ranker module renders instruction + " " + text)
    assert all(query["instruction"] for query, _ in reranker.pairs)
    pool_sizes = {t: row["pool_size"] for t, row in results["tasks"].items()}
    assert len(reranker.pairs) == sum(6 * min(400, size) for size in pool_sizes.values())
    metrics = MBEIREvaluator(bench, tasks, show_progress_bar=False, reranker=reranker, rerank_top=5)(blind)
    assert {"mbeir_rerank_average", "mbeir_cirr_task7_rerank_hit@5", "mbeir_average"} <= set(metrics)


def test_rerank_top_n_bounds_what_the_reranker_can_fix(bench: Path) -> None:
    blind = BlindEncoder(bench)
    tasks = ["mscoco_task0", "oven_task6"]
    common = {"show_progress_bar": False, "rerank_weight": 3.0}
    one = MBEIREvaluator(bench, tasks, reranker=OracleReranker(blind), rerank_top=1, **common).evaluate(blind)
    # top 1 re-ranked: the list order is unchanged, so the re-ranked scores are the retrieval scores
    assert {t: row["rerank"]["score"] for t, row in one["tasks"].items()} == {
        t: row["score"] for t, row in one["tasks"].items()
    }


def test_rerank_scores_are_cached_and_resume(bench: Path, tmp_path: Path) -> None:
    blind = BlindEncoder(bench)
    options = {"show_progress_bar": False, "cache_dir": tmp_path / "cache", "rerank_top": 20}
    tasks = ["mscoco_task0", "cirr_task7"]
    stopped = OracleReranker(blind, interrupt_call=8)  # one predict call per query: stops in the second task
    with pytest.raises(KeyboardInterrupt):
        MBEIREvaluator(bench, tasks, reranker=stopped, **options).evaluate(blind)
    resumed = OracleReranker(blind)
    first = MBEIREvaluator(bench, tasks, reranker=resumed, **options).evaluate(blind)
    assert resumed.calls == 6  # the first task's 6 queries were cached; only the second task is scored again
    again = OracleReranker(blind)
    second = MBEIREvaluator(bench, tasks, reranker=again, rerank_weight=0.5, **options).evaluate(blind)
    assert again.calls == 0  # another weight reuses the cached P(Yes)
    fresh = MBEIREvaluator(bench, tasks, reranker=OracleReranker(blind), show_progress_bar=False, rerank_top=20)
    assert first["tasks"] == fresh.evaluate(blind)["tasks"]  # resumed = uninterrupted
    assert second["rerank"]["weight"] == 0.5


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"rerank_top": 0}, "rerank_top must be an integer >= 1"),
        ({"rerank_weight": float("nan")}, "weight must be a finite number"),
        ({"reranker": "umarvel_st/assets/umarvel-demo"}, "not a U-MARVEL re-ranker"),
    ],
)
def test_bad_rerank_settings_are_refused_before_work(bench: Path, options: dict[str, Any], message: str) -> None:
    options = {"reranker": OracleReranker(OracleEncoder(bench)), **options}
    if isinstance(options["reranker"], str):
        options["reranker"] = str(Path(__file__).parents[1] / options["reranker"])
    with pytest.raises(ValueError, match=message):
        MBEIREvaluator(bench, ["mscoco_task0"], **options)


def test_rerank_report_shows_retrieval_and_reranked_side_by_side(bench: Path, tmp_path: Path) -> None:
    blind = BlindEncoder(bench)
    evaluator = MBEIREvaluator(bench, show_progress_bar=False, reranker=OracleReranker(blind), rerank_weight=3.0)
    paths = write_report(evaluator.evaluate(blind, model_tag="blind"), tmp_path)
    markdown = paths["markdown"].read_text()
    assert "| U-MARVEL+ (Qwen2-VL-7B) (published) |" in markdown and "| 64.8 |" in markdown
    assert "| **ours + re-rank** | 100.0 |" in markdown
    assert "| mscoco_task0 | 5 |" in markdown and "re-ranked hit@k" in markdown
    assert "cos + 3 * P(Yes)" in markdown
    with Image.open(paths["png"]) as image:
        assert image.format == "PNG"


def test_cli_rerank_on_the_tiny_models(bench: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assets = Path(__file__).parents[1] / "umarvel_st" / "assets"
    args = ["eval", "mbeir", "--model", str(assets / "umarvel-demo"), "--data", str(bench), "--tasks", "cirr_task7"]
    args += ["--output", str(tmp_path / "out"), "--device", "cpu", "--batch-size", "8", "--no-progress-bar"]
    args += ["--rerank", str(assets / "tiny-rerank-qwen2vl"), "--rerank-top", "4", "--rerank-weight", "0.5"]
    assert main(args) == 0
    assert "re-ranked" in capsys.readouterr().out
    results = json.loads((tmp_path / "out/results.json").read_text())
    assert results["rerank"]["top"] == 4 and 0.0 <= results["tasks"]["cirr_task7"]["rerank"]["score"] <= 1.0
    assert "--rerank-top 4 --rerank-weight 0.5" in results["command"]
    assert "| **ours + re-rank** |" in (tmp_path / "out/report.md").read_text()
    with pytest.raises(ValueError, match="not a U-MARVEL re-ranker"):
        main([*args[:-6], "--rerank", str(assets / "umarvel-demo")])


def test_a_models_fingerprint_does_not_change_when_it_encodes():
    """Encoding sets the tokenizer's padding state; a cache keyed on it would be thrown away after any encode."""
    import umarvel_st
    from umarvel_st.evaluation.fingerprint import model_fingerprint

    model = umarvel_st.load(Path(umarvel_st.__file__).parent / "assets" / "umarvel-demo")
    model[0].tokenizer.backend_tokenizer.no_padding()  # as a fresh tokenizer that has not padded yet
    before = model_fingerprint(model)
    model.encode_document(["a short text", "a somewhat longer text to pad the other one"])
    assert model_fingerprint(model) == before
