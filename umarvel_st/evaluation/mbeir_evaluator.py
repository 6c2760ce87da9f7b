"""M-BEIR evaluation of a U-MARVEL (or any) sentence-transformers embedder, following UniIR's evaluation code.

For each task: embed its queries with ``encode_query`` (each query carries its instruction, chosen as
:mod:`umarvel_st.data.mbeir` documents), embed the candidate pool with ``encode_document`` (the task's local pool,
or the global union pool shared by all tasks), L2-normalise, retrieve the top ``search_depth`` candidates by exact
inner product in faiss's order (10, or 50 for the fashion tasks, as UniIR does), and score with the positives of
the qrels file (relevance > 0):

- score = M-BEIR "Recall@k" = hit@k (1 if a positive is among the first k), k = 10 for Fashion200K and FashionIQ,
  5 otherwise; recall@k and mAP@k are reported beside it (see :mod:`umarvel_st.evaluation.ranking`);
- average = mean of the task scores (the 16-task average when all 16 tasks are evaluated).

Embeddings go to an on-disk cache of shard files (:class:`~umarvel_st.evaluation.embeddings.EmbeddingStore`), so
an interrupted evaluation resumes where it stopped, and the pool is searched one shard at a time in bounded
memory (:func:`~umarvel_st.evaluation.search.search_shards`). A cache is used only for the data and the model that
made it: it is keyed by the content of the query, pool and instruction files and by the model's weights, options
and prompts (:mod:`umarvel_st.evaluation.fingerprint`); anything else is encoded again. Image files are not
hashed: an image replaced under the same path needs a fresh cache folder.

U-MARVEL+ (``reranker=...``): each query's top ``rerank_top`` (50) of the same exact search are scored by the
re-ranker, P(Yes) of (query with its instruction, candidate), and re-sorted by ``cos + rerank_weight * P(Yes)`` with
each candidate's own cosine (:func:`umarvel_st.retrieve.fuse`; the official global-pool code pairs them with a
reversed list, which is not copied). Candidates searched below the top N (the fashion tasks search 50) follow in
retrieval order. The retrieval scores are computed as without re-ranking (a search of the task's own depth) and
reported beside the re-ranked ones. P(Yes) goes to a cache like the embeddings (resumable, one row of N scores per
query, keyed by the query and pool files, the instructions, the embedder, the re-ranker and N; the weight is not
part of it, so trying another weight rescores nothing).

Bad input: a query without any positive in the qrels raises (UniIR fails on it too); qrels positives that are not
in the searched pool are counted (``missing_positives``) and logged, and can never be hit; a pool with a repeated
did raises; an empty query or pool file, a missing instruction file or phrasing, malformed lines, unknown task
names and missing images raise with the file, line or value named, before anything is encoded.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sentence_transformers.sentence_transformer.evaluation import SentenceEvaluator
from tqdm.auto import tqdm

from ..data.mbeir import (
    DEFAULT_INSTRUCTION_SEED,
    DID_BOUND,
    MBEIR_TASKS,
    POOLS,
    MBEIRData,
    MBEIRTask,
    describe_file,
    hash_id,
    unhash_id,
)
from ..data.synthetic import MARKER_FILE
from ..retrieve import (
    DEFAULT_RERANK_TOP,
    DEFAULT_RERANK_WEIGHT,
    check_rerank_settings,
    fuse,
    open_reranker,
    score_pairs,
)
from .embeddings import DEFAULT_SHARD_SIZE, EmbeddingStore, encode_to_store
from .fingerprint import model_fingerprint
from .ranking import mean_metric
from .search import search_shards

logger = logging.getLogger(__name__)

#: Queries per file of the re-ranker score cache (the resume granularity of re-ranking).
RERANK_SHARD_QUERIES = 64


def chance_hit_at_k(pool_size: int, positives: int, k: int) -> float:
    """Expected hit@k of a uniformly random ranking: ``1 - C(n - p, k) / C(n, k)``."""
    miss = 1.0
    for i in range(min(k, pool_size)):
        miss *= max(pool_size - positives - i, 0) / (pool_size - i)
    return 1.0 - miss


class MBEIREvaluator(SentenceEvaluator):
    """Evaluate an embedder on M-BEIR tasks (usable as a sentence-transformers evaluator during training).

    Args:
        data_root: M-BEIR data root (the real one or :mod:`umarvel_st.data.synthetic` output).
        tasks: Task names (``"mscoco_task0"``...), at least one; ``None`` (default) for every task with a query
            file for ``split``.
        split: ``"test"`` (default), ``"val"`` or ``"train"``.
        pool: ``"local"`` (each task's own pool) or ``"global"`` (the union pool of the split).
        batch_size: Encoding batch size.
        show_progress_bar: Progress bars for encoding and search.
        instruction_seed: Seed of the per-query instruction choice.
        cache_dir: Embedding cache, reused across calls while the data and the model are the same (an interrupted
            run resumes); the default ``None`` encodes into a temporary folder each call, as during training.
        shard_size: Rows per embedding shard (memory of one search step and resume granularity).
        devices: Encode with a sentence-transformers multi-process pool on these devices (``["cuda:0",
            "cuda:1"]`` or ``["cpu", "cpu"]``); ``None`` encodes in this process.
        name: Prefix of the metric names returned to the trainer.
        write_csv: Append the scores to a CSV in ``output_path`` when called by a trainer.
        reranker: U-MARVEL+: a re-ranker (model, folder or Hub id, see :func:`umarvel_st.retrieve.open_reranker`)
            that re-ranks each query's top ``rerank_top``; ``None`` (default) reports retrieval only.
        rerank_top: Retrieved candidates re-ranked per query (50 in the paper).
        rerank_weight: Weight of P(Yes) in the final score ``cos + weight * P(Yes)`` (0.1 in the paper).
        reranker_tag: Name of the re-ranker in the results (default: its path, or its class name).

    Example:
        >>> evaluator = MBEIREvaluator("mbeir_data", tasks=["mscoco_task0", "cirr_task7"])  # doctest: +SKIP
        >>> evaluator(model)["mbeir_average"]  # doctest: +SKIP
    """

    def __init__(
        self,
        data_root: str | Path,
        tasks: Sequence[str] | None = None,
        *,
        split: str = "test",
        pool: str = "local",
        batch_size: int = 32,
        show_progress_bar: bool = True,
        instruction_seed: int = DEFAULT_INSTRUCTION_SEED,
        cache_dir: str | Path | None = None,
        shard_size: int = DEFAULT_SHARD_SIZE,
        devices: Sequence[str] | None = None,
        name: str = "mbeir",
        write_csv: bool = True,
        reranker: Any = None,
        rerank_top: int = DEFAULT_RERANK_TOP,
        rerank_weight: float = DEFAULT_RERANK_WEIGHT,
        reranker_tag: str | None = None,
    ) -> None:
        super().__init__()
        if pool not in POOLS:
            raise ValueError(f"Unknown pool {pool!r}; use one of {list(POOLS)}.")
        check_rerank_settings(rerank_top, rerank_weight)
        for device in devices or ():
            try:  # a bad name would otherwise fail in every worker process, after the pool started
                torch.device(device)
            except (RuntimeError, TypeError):
                raise ValueError(
                    f"devices: {device!r} is not a torch device; use names such as 'cpu', 'cuda:0' or 'cuda:1'."
                ) from None
        self.data = MBEIRData(data_root)
        self.tasks = self.data.resolve_tasks(tasks, split)
        self.split = split
        self.pool = pool
        self.batch_size = batch_size
        self.show_progress_bar = show_progress_bar
        self.instruction_seed = instruction_seed
        self.cache_dir = None if cache_dir is None else Path(cache_dir)
        self.shard_size = shard_size
        self.devices = list(devices) if devices else None
        self.name = name
        self.write_csv = write_csv
        if reranker_tag is None and reranker is not None:
            reranker_tag = str(reranker) if isinstance(reranker, (str, os.PathLike)) else type(reranker).__name__
        self.reranker_name = reranker_tag
        self.reranker = None if reranker is None else open_reranker(reranker)
        self.rerank_top = int(rerank_top)
        self.rerank_weight = float(rerank_weight)
        self.primary_metric = "average"
        self.csv_file = f"mbeir_evaluation_{name}_{split}_{pool}_results.csv"

    def __call__(
        self, model: Any, output_path: str | None = None, epoch: int = -1, steps: int = -1, *args: Any, **kwargs: Any
    ) -> dict[str, float]:
        """Evaluate and return ``{"<name>_<task>_hit@<k>": score, ..., "<name>_average": mean}`` (fractions)."""
        results = self.evaluate(model)
        metrics = {f"{task}_hit@{row['k']}": row["score"] for task, row in results["tasks"].items()}
        metrics["average"] = results["average"]
        if "rerank" in results:
            for task, row in results["tasks"].items():
                metrics[f"{task}_rerank_hit@{row['k']}"] = row["rerank"]["score"]
            metrics["rerank_average"] = results["rerank"]["average"]
        if output_path is not None and self.write_csv:
            os.makedirs(output_path, exist_ok=True)
            csv_path = Path(output_path) / self.csv_file
            is_new = not csv_path.is_file()
            with csv_path.open("a", encoding="utf-8") as handle:
                if is_new:
                    handle.write(",".join(["epoch", "steps", *metrics]) + "\n")
                handle.write(",".join(str(value) for value in [epoch, steps, *metrics.values()]) + "\n")
        metrics = self.prefix_name_to_metrics(metrics, self.name)
        self.store_metrics_in_model_card_data(model, metrics, epoch, steps)
        return metrics

    def get_config_dict(self) -> dict[str, Any]:
        """Settings recorded in the model card."""
        config = {"split": self.split, "pool": self.pool, "tasks": [task.name for task in self.tasks]}
        if self.reranker is not None:
            config.update(reranker=self.reranker_name, rerank_top=self.rerank_top, rerank_weight=self.rerank_weight)
        return config

    # The evaluation --------------------------------------------------------------------------------------------

    def evaluate(self, model: Any, model_tag: str | None = None) -> dict[str, Any]:
        """Run the evaluation and return the full results (JSON-serialisable).

        Args:
            model: Anything with sentence-transformers' ``encode_query`` / ``encode_document``.
            model_tag: Name of the model, kept in the results.

        Returns:
            ``{"tasks": {task: {...scores, sizes...}}, "average": ..., ...settings}``; scores are fractions. With a
            re-ranker each task also holds ``"rerank": {"score", "hit@k", "recall@k", "map@k"}`` and the results
            ``"rerank": {"reranker", "top", "weight", "average"}``.
        """
        if self.cache_dir is None:
            with tempfile.TemporaryDirectory(prefix="mbeir-embeddings-") as folder:
                return self._evaluate(model, Path(folder), model_tag, None)
        return self._evaluate(model, self.cache_dir, model_tag, model_fingerprint(model))

    def _encode_kwargs(self, pool: dict[str, Any] | None) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "batch_size": self.batch_size,
            "show_progress_bar": False,
            "convert_to_numpy": True,
            "normalize_embeddings": True,
        }
        if pool is not None:
            kwargs["pool"] = pool
        return kwargs

    def _evaluate(
        self, model: Any, cache: Path, model_tag: str | None, fingerprint: dict[str, Any] | None
    ) -> dict[str, Any]:
        started = time.perf_counter()
        # Queries, qrels, instructions, query images and pool files are checked before anything is encoded.
        positives = {task.name: self.data.load_qrels(task, self.split) for task in self.tasks}
        qids = {task.name: self._query_ids(task, positives[task.name]) for task in self.tasks}
        pool_paths = list(dict.fromkeys(self.data.pool_path(task, self.pool, self.split) for task in self.tasks))
        pool_files = {path: self._pool_file(path) for path in pool_paths}
        process_pool = model.start_multi_process_pool(self.devices) if self.devices else None
        try:
            encode_kwargs = self._encode_kwargs(process_pool)
            query_stores = {
                task.name: self._encode_queries(model, task, len(qids[task.name]), cache, fingerprint, encode_kwargs)
                for task in self.tasks
            }
            encoded = time.perf_counter()
            pools = {
                path: self._encode_pool(model, path, pool_files[path], cache, fingerprint, encode_kwargs)
                for path in pool_paths
            }
        finally:
            if process_pool is not None:
                model.stop_multi_process_pool(process_pool)
        pools_encoded = time.perf_counter()

        rankings: dict[str, np.ndarray] = {}
        recalled: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # task -> (cosines, rows) to re-rank
        for path, (store, ids) in pools.items():
            tasks = [task for task in self.tasks if self.data.pool_path(task, self.pool, self.split) == path]
            query_sets = [(query_stores[task.name].load(), task.search_depth) for task in tasks]
            if self.reranker is not None:
                query_sets += [(queries, max(depth, self.rerank_top)) for queries, depth in query_sets]
            found = search_shards(
                store.iter_shards(),
                query_sets,
                total_rows=len(ids),
                show_progress_bar=self.show_progress_bar,
            )
            for task, (_, rows) in zip(tasks, found[: len(tasks)], strict=True):
                rankings[task.name] = ids[rows]
            for task, result in zip(tasks, found[len(tasks) :], strict=False):  # the re-rank depth, if any
                recalled[task.name] = result
        searched = time.perf_counter()
        reranked = self._rerank(recalled, pools, cache, fingerprint) if self.reranker is not None else {}
        reranked_at = time.perf_counter()

        task_results = {}
        for task in self.tasks:
            _, ids = pools[self.data.pool_path(task, self.pool, self.split)]
            task_results[task.name] = self._score(
                task, qids[task.name], positives[task.name], rankings[task.name], ids
            )
        for task in self.tasks:
            if task.name not in reranked:
                continue
            name = task.name
            _, ids = pools[self.data.pool_path(task, self.pool, self.split)]
            row = self._score(task, qids[name], positives[name], reranked[name], ids, warn=False)
            k = row["k"]
            task_results[name]["rerank"] = {key: row[key] for key in ("score", f"hit@{k}", f"recall@{k}", f"map@{k}")}
        scores = [row["score"] for row in task_results.values()]
        results = {
            "benchmark": "M-BEIR",
            "data_root": str(self.data.root),
            "synthetic": (self.data.root / MARKER_FILE).is_file(),
            "split": self.split,
            "pool": self.pool,
            "model": model_tag,
            "instruction_seed": self.instruction_seed,
            "metric": "hit@k (UniIR 'Recall@k'); k=10 for Fashion200K and FashionIQ, else 5",
            "tasks": task_results,
            "average": float(np.mean(scores)),
            "num_tasks": len(scores),
            "all_16_tasks": sorted(task_results) == sorted(MBEIR_TASKS),
            "seconds": {
                "encode_queries": round(encoded - started, 3),
                "encode_pools": round(pools_encoded - encoded, 3),
                "search": round(searched - pools_encoded, 3),
                "score": round(time.perf_counter() - reranked_at, 3),
            },
        }
        if self.reranker is not None:
            results["seconds"]["rerank"] = round(reranked_at - searched, 3)
            results["rerank"] = {
                "reranker": self.reranker_name,
                "top": self.rerank_top,
                "weight": self.rerank_weight,
                "average": float(np.mean([row["rerank"]["score"] for row in task_results.values()])),
            }
        return results

    def _rerank(
        self,
        recalled: dict[str, tuple[np.ndarray, np.ndarray]],
        pools: dict[Path, tuple[EmbeddingStore, np.ndarray]],
        cache: Path,
        model_description: dict[str, Any] | None,
    ) -> dict[str, np.ndarray]:
        """Per task, the re-ranked candidate ids ``(queries, depth)``: the fused top N, then the rest of the
        retrieved list."""
        reranker_description = None if model_description is None else model_fingerprint(self.reranker)
        key = hashlib.sha1(json.dumps(reranker_description, sort_keys=True).encode()).hexdigest()[:12]
        by_name = {task.name: task for task in self.tasks}
        rankings = {}
        for path, (_, ids) in pools.items():
            tasks = [name for name in recalled if self.data.pool_path(by_name[name], self.pool, self.split) == path]
            if not tasks:
                continue
            width = {name: min(self.rerank_top, recalled[name][1].shape[1]) for name in tasks}
            needed = set(
                itertools.chain.from_iterable(recalled[name][1][:, : width[name]].ravel().tolist() for name in tasks)
            )
            # Only the candidates some query re-ranks are kept in memory (at most queries x N).
            items = {
                row: self.data.candidate_item(candidate)
                for row, candidate in enumerate(self.data.iter_candidates(path))
                if row in needed
            }
            for name in tasks:
                task = by_name[name]
                cosines, rows = recalled[name]
                n = width[name]
                fingerprint = {
                    "kind": "rerank",
                    "queries": describe_file(self.data.query_path(task, self.split)),
                    "pool": {"file": str(path.relative_to(self.data.root)), "data": describe_file(path)},
                    "instructions": describe_file(self.data.instructions_path),
                    "instruction_seed": self.instruction_seed,
                    "embedder": model_description,
                    "reranker": reranker_description,
                    "rerank_top": n,
                }
                store = EmbeddingStore(
                    cache / f"rerank-{self.split}-{self.pool}-{name}-{key}", fingerprint, RERANK_SHARD_QUERIES
                )
                queries = [
                    self.data.query_item(query, self.data.eval_instruction(query, task, self.instruction_seed))
                    for query in self.data.iter_queries(task, self.split)
                ]
                missing = store.check_rows(len(queries))
                if not store.complete:
                    with tqdm(
                        total=len(queries),
                        initial=store.num_rows,
                        desc=f"Re-ranking {name}",
                        unit="query",
                        disable=not self.show_progress_bar,
                    ) as bar:
                        for index in missing:
                            start = index * RERANK_SHARD_QUERIES
                            block = range(start, min(start + RERANK_SHARD_QUERIES, len(queries)))
                            scores = []
                            for i in block:
                                scores.append(
                                    score_pairs(
                                        self.reranker,
                                        queries[i],
                                        [items[int(r)] for r in rows[i, :n]],
                                        self.batch_size,
                                    )
                                )
                                bar.update(1)
                            store.write(index, np.stack(scores))
                    store.mark_complete()
                p_yes = store.load()
                ranked = np.empty_like(rows)
                for i in range(len(queries)):
                    order, _ = fuse(cosines[i, :n], p_yes[i], self.rerank_weight)
                    ranked[i] = np.concatenate([rows[i, :n][order], rows[i, n:]])
                rankings[name] = ids[ranked]
        return rankings

    def _query_ids(self, task: MBEIRTask, positives: dict[str, list[str]]) -> list[str]:
        """The task's qids, checked to be unique, to have positives, an instruction and their images (before
        anything is encoded)."""
        path = self.data.query_path(task, self.split)
        qids = []
        for query in self.data.iter_queries(task, self.split):
            self.data.query_item(query, self.data.eval_instruction(query, task, self.instruction_seed))
            qids.append(query.qid)
        if not qids:
            raise ValueError(
                f"{path} holds no queries. Restore the file, or leave {task.name} out of the evaluated tasks."
            )
        if len(set(qids)) != len(qids):
            duplicate = next(qid for qid, n in Counter(qids).items() if n > 1)
            raise ValueError(f"{path}: qid {duplicate!r} appears more than once; qids must be unique.")
        without = [qid for qid in qids if qid not in positives]
        if without:
            raise ValueError(
                f"{len(without)} {task.name} queries have no positive (relevance > 0) in "
                f"{self.data.qrels_path(task, self.split)}, e.g. {without[:3]}. UniIR cannot score them either: add "
                "their qrels lines or remove the queries."
            )
        return qids

    def _encode_queries(
        self,
        model: Any,
        task: MBEIRTask,
        count: int,
        cache: Path,
        model_description: dict[str, Any] | None,
        encode_kwargs: dict[str, Any],
    ) -> EmbeddingStore:
        path = self.data.query_path(task, self.split)
        fingerprint = {
            "kind": "queries",
            "file": str(path.relative_to(self.data.root)),
            "data": describe_file(path),
            "instructions": describe_file(self.data.instructions_path),
            "instruction_seed": self.instruction_seed,
            "model": model_description,
        }
        store = EmbeddingStore(cache / f"queries-{self.split}-{task.name}", fingerprint, self.shard_size)

        def items_from(start: int) -> Iterator[dict[str, Any]]:
            for query in itertools.islice(self.data.iter_queries(task, self.split), start, None):
                yield self.data.query_item(query, self.data.eval_instruction(query, task, self.instruction_seed))

        encode_to_store(
            store,
            items_from,
            count,
            lambda items: model.encode_query(items, **encode_kwargs),
            desc=f"Encoding {task.name} queries",
            show_progress_bar=self.show_progress_bar,
        )
        return store

    def _pool_file(self, path: Path) -> dict[str, Any]:
        """The description of a pool file (content hash, records), checked to exist and hold candidates."""
        if not path.is_file():
            raise ValueError(
                f"Candidate pool {path} does not exist. Local pools are cand_pool/local/mbeir_<task>_cand_pool.jsonl, "
                "the global pool cand_pool/global/mbeir_union_<split>_cand_pool.jsonl."
            )
        description = describe_file(path)
        if description["records"] == 0:
            raise ValueError(f"Candidate pool {path} holds no candidates. Restore the file.")
        return description

    def _encode_pool(
        self,
        model: Any,
        path: Path,
        description: dict[str, Any],
        cache: Path,
        model_description: dict[str, Any] | None,
        encode_kwargs: dict[str, Any],
    ) -> tuple[EmbeddingStore, np.ndarray]:
        fingerprint = {
            "kind": "pool",
            "file": str(path.relative_to(self.data.root)),
            "data": description,
            "model": model_description,
        }
        store = EmbeddingStore(cache / f"pool-{path.stem}", fingerprint, self.shard_size)
        ids = store.load_ids()
        if ids is None:
            ids = np.fromiter(
                (hash_id(c.did, DID_BOUND, c.source) for c in self.data.iter_candidates(path)),
                dtype=np.int64,
                count=description["records"],
            )
            unique, counts = np.unique(ids, return_counts=True)
            if len(unique) != len(ids):
                duplicate = unhash_id(int(unique[counts > 1][0]), DID_BOUND)
                raise ValueError(f"{path}: did {duplicate!r} appears more than once; dids must be unique in a pool.")
            store.save_ids(ids)

        def items_from(start: int) -> Iterator[Any]:
            for candidate in itertools.islice(self.data.iter_candidates(path), start, None):
                yield self.data.candidate_item(candidate)

        encode_to_store(
            store,
            items_from,
            len(ids),
            lambda items: model.encode_document(items, **encode_kwargs),
            desc=f"Encoding {path.stem}",
            show_progress_bar=self.show_progress_bar,
        )
        return store, ids

    def _score(
        self,
        task: MBEIRTask,
        qids: list[str],
        positives: dict[str, list[str]],
        rankings: np.ndarray,
        pool_ids: np.ndarray,
        warn: bool = True,
    ) -> dict[str, Any]:
        relevant = [[hash_id(did, DID_BOUND) for did in positives[qid]] for qid in qids]
        in_pool = [np.isin(np.asarray(r, dtype=np.int64), pool_ids) for r in relevant]
        missing = int(sum(int((~mask).sum()) for mask in in_pool))
        unreachable = sum(1 for mask in in_pool if not mask.any())
        if missing and warn:  # once per task, not again for the re-ranked list
            logger.warning(
                "%s: %d qrels positives are not in the searched pool (%d queries have none in it); they count as misses.",
                task.name,
                missing,
                unreachable,
            )
        k = task.k
        ranked = [row.tolist() for row in rankings]
        pool_size = len(pool_ids)
        chance = float(np.mean([chance_hit_at_k(pool_size, int(mask.sum()), k) for mask in in_pool]))
        hit = mean_metric("hit", ranked, relevant, k)
        return {
            "dataset_id": task.dataset_id,
            "task_id": task.task_id,
            "modalities": f"{task.query_modality} -> {task.candidate_modality}",
            "k": k,
            "search_depth": task.search_depth,
            "score": hit,
            f"hit@{k}": hit,
            f"recall@{k}": mean_metric("recall", ranked, relevant, k),
            f"map@{k}": mean_metric("map", ranked, relevant, k),
            f"chance_hit@{k}": chance,
            "num_queries": len(qids),
            "pool_size": pool_size,
            "missing_positives": missing,
            "queries_without_positive_in_pool": unreachable,
        }
