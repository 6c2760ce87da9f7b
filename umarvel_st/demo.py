"""``umarvel demo``: retrieval with the embedded default model on held-out queries of the synthetic benchmark.

The embedded default is a tiny Qwen2-VL (hidden 64, 2 layers) trained by the ``demo`` recipe on the training split
of the synthetic M-BEIR-format benchmark (``umarvel make-synthetic``) on 2 CPU cores. The demo writes that benchmark
(deterministic, seed 0) to a cache folder on first use, scores the model on the test split (queries it never saw),
and shows a few queries with their top hits. Everything runs offline. Each step prints a line as it starts and
the long ones (writing the benchmark, encoding) show progress bars, so the first minute is never silent.

U-MARVEL+ (the embedded :data:`DEFAULT_RERANKER`, another one with ``--rerank RERANKER``, none with ``--no-rerank``):
the evaluator re-ranks each query's top ``--rerank-top`` with the re-ranker, final score = cos +
``--rerank-weight`` * P(Yes) (as ``umarvel eval mbeir --rerank``), and the demo shows retrieval and re-ranked Recall
side by side and the re-ranked example hits (:func:`umarvel_st.retrieve.retrieve_and_rerank`).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from .retrieve import add_rerank_arguments

ASSETS = Path(__file__).parent / "assets"
DEFAULT_MODEL = ASSETS / "umarvel-demo"
#: The re-ranker the demo uses without ``--rerank`` (a folder or Hub id); ``None``: retrieval only. The embedded one
#: barely ranks (see its README); it is there to show U-MARVEL+ end to end.
DEFAULT_RERANKER: str | Path | None = ASSETS / "umarvel-demo-reranker"
EXAMPLE_TASKS = ("mscoco_task0", "mscoco_task3", "cirr_task7")


def default_data_dir() -> Path:
    """Where the demo keeps the synthetic benchmark: ``$XDG_CACHE_HOME/umarvel-st/synthetic-mbeir``."""
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return cache / "umarvel-st" / "synthetic-mbeir"


def _describe(item: dict[str, Any], root: Path) -> str:
    parts = []
    if item.get("image"):
        parts.append(f"[{os.path.relpath(item['image'], root)}]")
    if text := item.get("text"):
        parts.append(repr(text if len(text) <= 60 else text[:57] + "..."))
    return " ".join(parts)


def _examples(
    model: Any,
    data: Any,
    task_name: str,
    reranker: Any = None,
    rerank_top: int = 50,
    weight: float = 0.1,
    count: int = 2,
    top: int = 3,
) -> list[str]:
    """Lines showing ``count`` held-out queries of a task with their ``top`` hits (positives marked), retrieved and,
    with a ``reranker``, re-ranked (:func:`umarvel_st.retrieve.retrieve_and_rerank`)."""
    import numpy as np

    from .data.mbeir import MBEIRTask
    from .evaluation.search import exact_search
    from .retrieve import retrieve_and_rerank

    task = MBEIRTask.from_name(task_name)
    candidates = list(data.iter_candidates(data.pool_path(task, "local", "test")))
    qrels = data.load_qrels(task, "test")
    queries = [query for _, query in zip(range(count), data.iter_queries(task, "test"), strict=False)]
    items = [data.query_item(query, data.eval_instruction(query, task)) for query in queries]
    docs = [data.candidate_item(candidate) for candidate in candidates]
    encode = {"show_progress_bar": False, "convert_to_numpy": True, "normalize_embeddings": True}
    cosines, rows = exact_search(
        np.asarray(model.encode_query(items, **encode), dtype=np.float32),
        np.asarray(model.encode_document(docs, **encode), dtype=np.float32),
        min(top, len(docs)),
    )
    reranked = None
    if reranker is not None:
        reranked = retrieve_and_rerank(model, reranker, items, docs, top_k=top, rerank_top=rerank_top, weight=weight)

    def hit(rank: int, query: Any, index: int, score: str) -> str:
        mark = "*" if candidates[index].did in qrels.get(query.qid, []) else " "
        return f"    {rank}.{mark} {score} {_describe(docs[index], data.root)}"

    lines = [f"{task.name} ({task.query_modality} -> {task.candidate_modality}), pool of {len(candidates)}:"]
    for number, (query, item) in enumerate(zip(queries, items, strict=True)):
        lines.append(f"  query {_describe(item, data.root)}  instruction: {item['instruction']!r}")
        if reranked is not None:
            lines.append("   retrieved (cos):")
        for rank, (cosine, index) in enumerate(zip(cosines[number], rows[number], strict=True), start=1):
            lines.append(hit(rank, query, int(index), f"{cosine:+.3f}"))
        if reranked is not None:
            lines.append(f"   re-ranked (cos + {weight:g} * P(Yes)):")
            for rank, result in enumerate(reranked[number], start=1):
                p_yes = "not re-ranked" if result.p_yes is None else f"P(Yes) {result.p_yes:.3f}"
                score = f"{result.score:+.3f} (cos {result.cosine:+.3f}, {p_yes})"
                lines.append(hit(rank, query, result.corpus_id, score))
    return lines


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``umarvel demo``."""
    parser.add_argument("--model", default=str(DEFAULT_MODEL), help="model folder (default: the embedded model)")
    parser.add_argument("--data", default=None, help="synthetic benchmark folder (default: written to the cache)")
    choice = parser.add_mutually_exclusive_group()
    choice.add_argument(
        "--rerank",
        default=None,
        help="U-MARVEL+: also re-rank with this re-ranker (saved re-ranker folder, Hub id, or Qwen-VL checkpoint; "
        + ("default: retrieval only)" if DEFAULT_RERANKER is None else f"default: {DEFAULT_RERANKER})"),
    )
    choice.add_argument("--no-rerank", action="store_true", help="retrieval only, without the default re-ranker")
    add_rerank_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """Run ``umarvel demo``: a line per step on stdout, progress bars on stderr, then the scores and examples."""
    from .evaluation.cli import check_model_name
    from .model import check_model_source
    from .retrieve import check_rerank_settings

    check_model_source(args.model)  # a mistyped --model fails now, not after the benchmark is written
    rerank = None if args.no_rerank else args.rerank if args.rerank is not None else DEFAULT_RERANKER
    if rerank is not None:
        check_rerank_settings(args.rerank_top, args.rerank_weight)
        try:
            check_model_name(os.fspath(rerank))
        except ValueError:
            raise ValueError(
                f"--rerank {os.fspath(rerank)!r} is not an existing folder and not a Hub id ('org/name'). Check the "
                "path."
            ) from None
    data_dir = Path(args.data) if args.data else default_data_dir()
    print(f"[1/4] synthetic benchmark: {data_dir}", flush=True)
    from .data.mbeir import MBEIRData
    from .data.synthetic import MARKER_FILE, make_synthetic_mbeir

    if not (data_dir / MARKER_FILE).is_file():
        print("      writing it (once) ...", flush=True)
        make_synthetic_mbeir(data_dir)
    print(f"[2/4] loading the model: {args.model}" + (f" and the re-ranker: {rerank}" if rerank else ""), flush=True)
    from . import load
    from .evaluation.mbeir_evaluator import MBEIREvaluator
    from .retrieve import open_reranker

    model = load(args.model)
    reranker = None if rerank is None else open_reranker(rerank)
    evaluator = MBEIREvaluator(
        data_dir,
        split="test",
        pool="local",
        reranker=reranker,
        rerank_top=args.rerank_top,
        rerank_weight=args.rerank_weight,
        reranker_tag=None if rerank is None else os.fspath(rerank),
    )
    step = "encoding, searching" + (" and re-ranking" if reranker is not None else " ")
    print(f"[3/4] {step.strip()} the held-out test queries of {len(evaluator.tasks)} tasks", flush=True)
    results = evaluator.evaluate(model)
    print(f"[4/4] example queries of {', '.join(EXAMPLE_TASKS)}\n", flush=True)
    data = MBEIRData(data_dir)
    examples = [_examples(model, data, task, reranker, args.rerank_top, args.rerank_weight) for task in EXAMPLE_TASKS]

    print(f"model: {args.model}" + (f"\nre-ranker: {rerank}" if reranker is not None else ""))
    print(f"held-out test queries of the synthetic benchmark at {data_dir}, local pools:\n")
    scores = f"{'retrieval':>9} {'re-ranked':>9}" if reranker is not None else f"{'score':>7}"
    print(f"{'task':<14} {'query -> candidate':<20} {'queries':>7} {'metric':>9} {scores} {'chance':>7}")
    for name, row in results["tasks"].items():
        k = row["k"]
        score = f"{100 * row['score']:>6.1f}%"
        if reranker is not None:
            score = f"{100 * row['score']:>8.1f}% {100 * row['rerank']['score']:>8.1f}%"
        print(
            f"{name:<14} {row['modalities']:<20} {row['num_queries']:>7} {f'Recall@{k}':>9} "
            f"{score} {100 * row[f'chance_hit@{k}']:>6.1f}%"
        )
    if reranker is not None:
        print(f"{'average':<53} {100 * results['average']:>8.1f}% {100 * results['rerank']['average']:>8.1f}%")
    else:
        print(f"{'average':<53} {100 * results['average']:>6.1f}%")
    print("Recall@k: share of queries with a correct candidate among the top k; chance: the same, ranking at random")
    if reranker is not None:
        print(
            f"re-ranked: each query's top {args.rerank_top} re-sorted by cos + {args.rerank_weight:g} * P(Yes) of the "
            "re-ranker (U-MARVEL+)"
        )
    print()
    for lines in examples:
        print("\n".join(lines) + "\n")
    print("(* marks a correct hit)")
    return 0
