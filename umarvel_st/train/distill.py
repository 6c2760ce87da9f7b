"""Distillation data (``umarvel distill-data``): the stage-5 rows, teacher scores from the stage-4 model and the
re-ranker (spec section 2.1).

1. A seeded ``fraction`` (10%) of the distinct training qids is drawn (``random.Random(seed)`` over the sorted qids).
2. Fresh lists are mined with the stage-4 model (:func:`~umarvel_st.train.mining.mine`, ``top_k`` = 50, under
   ``lists/``); each drawn query keeps its LOCAL top ``top_k`` with their cosines. (Mining embeds every training
   query, not only the drawn ones: the pool's encoding dominates the cost, and the lists stay reusable.)
3. The re-ranker scores every (query, candidate) pair, one query per ``predict`` batch so the query prefix is
   computed once (``share_prefix``).
4. The teacher score is ``t = (cos + w_task * P(Yes)) / 2`` with ``w_task`` from :data:`DEFAULT_TASK_WEIGHTS`
   (1.0 for other tasks; override per task with ``task_weights``).

Rows are ``query, candidate_1 .. candidate_<top_k>, label`` (``label``: the ``top_k`` teacher scores, NaN where a
pool is shorter than ``top_k``; the missing candidate columns hold an empty text), as
:class:`~umarvel_st.train.losses.RerankerDistillationLoss` consumes them. Queries carry the instruction they were
mined with.

Resume. Rows are written in chunks of ``chunk_size`` queries (``chunks/rows-NNNNN.jsonl``, each written atomically);
after an interruption a rerun scores only the missing chunks, and a finished folder with the same fingerprint
(lists, re-ranker, options) is reused. Another fingerprint starts over (the chunks are removed).

Scale-out. Under ``torchrun`` the mining is split as :func:`~umarvel_st.train.mining.mine` splits it, and rank r
scores chunks r, r+W, r+2W, ... of the drawn queries (a chunk holds the same queries whichever rank scores it, one
``predict`` call per query), so the chunks are those of one process; rank 0 writes ``distill.json`` once every chunk
is there. A run resumes under any number of processes.

Bad input: a drawn query with no positive in the pool, or whose top ``top_k`` holds only positives, gets no row (a
KL over positives alone teaches nothing; both counts are logged and stored in ``distill.json``); a task weight for a
task that is not mined raises; no row at all raises.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import random
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ..data.mbeir import DID_BOUND, QID_BOUND, MBEIRData, MBEIRTask, hash_id
from .mining import MinedLists, _candidate, _World, mine, mining_instruction, model_folder_fingerprint

logger = logging.getLogger(__name__)

INDEX_FILE = "distill.json"
DEFAULT_FRACTION = 0.1
DEFAULT_TOP_K = 50
#: The paper's re-ranker weights in the teacher score; every other task has 1.0.
DEFAULT_TASK_WEIGHTS: dict[str, float] = {"mscoco_task0": 0.5, "mscoco_task3": 0.1}
MISSING = {"text": "", "image": None}  # a candidate column of a row whose pool is shorter than top_k


def teacher_score(cosine: float, p_yes: float, weight: float) -> float:
    """The teacher score ``(cos + w * P(Yes)) / 2``."""
    return (cosine + weight * p_yes) / 2


def draw_queries(qids: Sequence[str], fraction: float, seed: int) -> set[str]:
    """A seeded ``fraction`` of the distinct ``qids`` (at least one)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction!r}.")
    distinct = sorted(set(qids))
    return set(random.Random(seed).sample(distinct, max(1, round(fraction * len(distinct)))))


def distillation_data(
    model: str | Path,
    reranker: str | Path,
    data_root: str | Path,
    output_dir: str | Path,
    *,
    tasks: Sequence[str] | None = None,
    fraction: float = DEFAULT_FRACTION,
    top_k: int = DEFAULT_TOP_K,
    task_weights: Mapping[str, float] | None = None,
    seed: int = 0,
    batch_size: int = 32,
    chunk_size: int = 256,
    show_progress_bar: bool = True,
) -> Path:
    """Write the distillation rows (see the module docstring); rerunning resumes.

    Args:
        model: The stage-4 model folder (mines the fresh lists).
        reranker: The re-ranker folder (P(Yes) of every pair).
        data_root: The M-BEIR data root (real or synthetic).
        output_dir: Where the lists, chunks and ``distill.json`` go.
        tasks: Task names; default every training task.
        fraction: Share of the distinct training queries to draw.
        top_k: Candidates per query (the local top ``top_k``).
        task_weights: Task name -> weight of P(Yes), over :data:`DEFAULT_TASK_WEIGHTS`.
        seed: Seed of the query draw.
        batch_size: Encoding batch size of the mining.
        chunk_size: Queries per chunk file (the resume granularity).
        show_progress_bar: Progress bars.

    Returns:
        The output folder (read it with :func:`distill_dataset`).

    Raises:
        ValueError: For bad options, a weight of an unknown task, a bad re-ranker folder, or no row at all.
    """
    if top_k < 1 or chunk_size < 1:
        raise ValueError(f"top_k and chunk_size must be >= 1, got {top_k} and {chunk_size}.")
    output = Path(output_dir)
    if not (Path(reranker) / "modules.json").is_file():
        raise ValueError(
            f"reranker: {reranker} is not a saved re-ranker folder (no modules.json). Pass the model folder of a "
            "re-ranker stage, or save one first: umarvel_st.reranker_from_mllm(CHECKPOINT).save(FOLDER)."
        )
    reranker_tag = model_folder_fingerprint(reranker)
    data = MBEIRData(data_root)
    selected = data.resolve_tasks(tasks, "train")
    weights = {**DEFAULT_TASK_WEIGHTS, **(task_weights or {})}
    unknown = sorted(set(task_weights or {}) - {task.name for task in selected})
    if unknown:
        raise ValueError(
            f"task_weights names {unknown}, which are not mined; the tasks are {[t.name for t in selected]}."
        )
    for name, weight in weights.items():
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
            raise ValueError(f"task_weights[{name!r}] must be a finite number, got {weight!r}.")
    world = _World.join()  # joined here, so that the mining inside keeps the process group up for the scoring
    try:
        return _distillation_data(
            model,
            reranker,
            reranker_tag,
            data,
            selected,
            weights,
            output,
            world,
            fraction=fraction,
            top_k=top_k,
            seed=seed,
            batch_size=batch_size,
            chunk_size=chunk_size,
            show_progress_bar=show_progress_bar,
        )
    finally:
        world.leave()


def _distillation_data(
    model: str | Path,
    reranker: str | Path,
    reranker_tag: dict[str, Any],
    data: MBEIRData,
    selected: list[MBEIRTask],
    weights: dict[str, float],
    output: Path,
    world: _World,
    *,
    fraction: float,
    top_k: int,
    seed: int,
    batch_size: int,
    chunk_size: int,
    show_progress_bar: bool,
) -> Path:
    """:func:`distillation_data` in this process (rank ``world.rank`` of ``world.size``), after its checks."""
    mine(
        model,
        data.root,
        output / "lists",
        tasks=[task.name for task in selected],
        top_k=top_k,
        batch_size=batch_size,
        show_progress_bar=show_progress_bar,
    )
    mined = MinedLists(output / "lists")
    fingerprint = json.loads(
        json.dumps(
            {
                "lists": mined.fingerprint,
                "reranker": reranker_tag,
                "fraction": fraction,
                "top_k": top_k,
                "weights": {task.name: weights.get(task.name, 1.0) for task in selected},
                "seed": seed,
                "chunk_size": chunk_size,
            }
        )
    )
    index_path, chunks = output / INDEX_FILE, output / "chunks"
    index = json.loads(index_path.read_text(encoding="utf-8")) if index_path.is_file() else None
    if index is not None and index["fingerprint"] == fingerprint and index.get("complete"):
        return output
    if world.rank == 0:
        if index is None or index["fingerprint"] != fingerprint:
            if chunks.exists():
                logger.warning("%s was made with other settings; starting over.", output)
                shutil.rmtree(chunks)
            _write_json(index_path, {"fingerprint": fingerprint, "complete": False})
        chunks.mkdir(parents=True, exist_ok=True)
    world.barrier()

    split = mined.fingerprint["data"]["split"]
    queries = [
        (task, query, mined.rows(task.name)[number])
        for task in selected
        for number, query in enumerate(data.iter_queries(task, split))
    ]  # (task, query, its row in the lists)
    drawn = draw_queries([query.qid for _, query, _ in queries], fraction, seed)
    jobs = [job for job in queries if job[1].qid in drawn]
    pool = data.pool_path(selected[0], "global", split)
    candidates = {candidate.did: candidate for candidate in data.iter_candidates(pool)}
    did_of = {hash_id(did, DID_BOUND): did for did in candidates}
    dids, scores = mined.dids("local"), mined.scores("local")
    num_chunks = -(-len(jobs) // chunk_size)
    scorer = None
    show = show_progress_bar and world.rank == 0
    for chunk in tqdm(range(world.rank, num_chunks, world.size), desc="Distillation chunks", disable=not show):
        path, start = chunks / f"rows-{chunk:05d}.jsonl", chunk * chunk_size
        if path.is_file():
            continue
        if scorer is None:
            import torch

            from ..reranker import load_reranker

            device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}" if torch.cuda.is_available() else None
            scorer = load_reranker(reranker, device=device)
        lines, chunk_counts = [], {"rows": 0, "no_positive": 0, "only_positives": 0}
        for task, query, row in jobs[start : start + chunk_size]:
            if int(mined.qids[row]) != hash_id(query.qid, QID_BOUND):
                raise ValueError(f"{query.source}: the lists' row {row} is another query; mine again.")
            positives = {hash_id(did, DID_BOUND, query.source) for did in query.pos_cand_list if did in candidates}
            kept = [(int(did), float(score)) for did, score in zip(dids[row], scores[row], strict=True) if did >= 0]
            if not positives:
                chunk_counts["no_positive"] += 1
                continue
            if all(did in positives for did, _ in kept):
                chunk_counts["only_positives"] += 1
                continue
            item = data.query_item(query, mining_instruction(data, query, task))
            items = [_candidate(data, candidates[did_of[did]]) for did, _ in kept]
            p_yes = scorer.predict(
                [(item, candidate) for candidate in items], batch_size=len(items), show_progress_bar=False
            )
            weight = weights.get(task.name, 1.0)
            labels = [teacher_score(cos, float(p), weight) for (_, cos), p in zip(kept, p_yes, strict=True)]
            record: dict[str, Any] = {"query": item}
            for column in range(top_k):
                record[f"candidate_{column + 1}"] = items[column] if column < len(items) else MISSING
            record["label"] = labels + [None] * (top_k - len(labels))
            lines.append(json.dumps(record))
            chunk_counts["rows"] += 1
        path.with_suffix(".json").write_text(json.dumps(chunk_counts), encoding="utf-8")
        temporary = path.with_name(path.name + ".tmp")
        temporary.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        os.replace(temporary, path)  # the chunk's rows mark it done
    world.barrier()
    counts = {"rows": 0, "no_positive": 0, "only_positives": 0}
    for chunk in range(num_chunks):
        for key, value in json.loads((chunks / f"rows-{chunk:05d}.json").read_text(encoding="utf-8")).items():
            counts[key] += value
    if counts["no_positive"] or counts["only_positives"]:
        logger.warning(
            "Distillation data: %d drawn queries have no positive in %s and %d only positives in their top %d; "
            "they get no row.",
            counts["no_positive"],
            pool,
            counts["only_positives"],
            top_k,
        )
    if not counts["rows"]:
        raise ValueError(
            f"No distillation rows: none of the {len(jobs)} drawn queries has a positive and a "
            f"non-positive among its top {top_k}."
        )
    if world.rank == 0:
        _write_json(index_path, {"fingerprint": fingerprint, "complete": True, "chunks": num_chunks, **counts})
    world.barrier()
    return output


def distill_dataset(path: str | Path) -> Any:
    """The rows of a finished ``umarvel distill-data`` folder as a ``datasets.Dataset`` (NaN for missing labels).

    Raises:
        ValueError: If the folder holds no finished distillation data, naming the command that makes it.
    """
    from datasets import Dataset

    folder = Path(path)
    index_path = folder / INDEX_FILE
    index = json.loads(index_path.read_text(encoding="utf-8")) if index_path.is_file() else {}
    if not index.get("complete"):
        raise ValueError(
            f"{folder} holds no finished distillation data ({INDEX_FILE} is missing or incomplete). Run `umarvel "
            f"distill-data --model STAGE4_MODEL --reranker RERANKER --data DATA --output {folder}` (it resumes)."
        )
    records = []
    for chunk in range(index["chunks"]):
        with (folder / "chunks" / f"rows-{chunk:05d}.jsonl").open(encoding="utf-8") as handle:
            for line in handle:
                record = json.loads(line)
                record["label"] = [math.nan if value is None else value for value in record["label"]]
                records.append(record)
    return Dataset.from_list(records)


def _write_json(path: Path, value: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(value, indent=2) + "\n", encoding="utf-8")
    os.replace(temporary, path)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``umarvel distill-data``."""
    parser.add_argument("--model", required=True, help="the stage-4 model folder (mines the fresh lists)")
    parser.add_argument("--reranker", required=True, help="the re-ranker folder (P(Yes) of every pair)")
    parser.add_argument("--data", required=True, help="M-BEIR data root")
    parser.add_argument("--output", required=True, help="output folder (rerun the command to resume)")
    parser.add_argument("--tasks", nargs="+", help="tasks (default: every training task)")
    parser.add_argument("--fraction", type=float, default=DEFAULT_FRACTION, help="share of the queries (0.1)")
    parser.add_argument("--top-k", type=int, default=DEFAULT_TOP_K, help="candidates per query (50)")
    parser.add_argument(
        "--weight", action="append", default=[], metavar="TASK=W", help="weight of P(Yes) for a task (repeatable)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the query draw")
    parser.add_argument("--batch-size", type=int, default=32, help="encoding batch size (default: 32)")
    parser.add_argument("--no-progress-bar", action="store_true", help="hide progress bars")


def run(args: argparse.Namespace) -> int:
    """Run ``umarvel distill-data``."""
    weights = {}
    for item in args.weight:
        name, sep, value = item.partition("=")
        try:
            weights[name] = float(value) if sep else None
        except ValueError:
            weights[name] = None
        if weights[name] is None:
            raise ValueError(f"--weight {item!r} is not TASK=NUMBER (e.g. mscoco_task0=0.5).")
    output = distillation_data(
        args.model,
        args.reranker,
        args.data,
        args.output,
        tasks=args.tasks,
        fraction=args.fraction,
        top_k=args.top_k,
        task_weights=weights,
        seed=args.seed,
        batch_size=args.batch_size,
        show_progress_bar=not args.no_progress_bar,
    )
    print(f"distillation data: {output}")
    return 0
