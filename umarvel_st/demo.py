"""``umarvel demo``: retrieval with the embedded default model on held-out queries of the synthetic benchmark.

The embedded default is a tiny Qwen2-VL (hidden 64, 2 layers) trained by the ``demo`` recipe on the training split
of the synthetic M-BEIR-format benchmark (``umarvel make-synthetic``) on 2 CPU cores. The demo writes that benchmark
(deterministic, seed 0) to a cache folder on first use, scores the model on the test split (queries it never saw),
and shows a few queries with their top hits. Everything runs offline. Each step prints a line as it starts and
the long ones (writing the benchmark, encoding) show progress bars, so the first minute is never silent.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

ASSETS = Path(__file__).parent / "assets"
DEFAULT_MODEL = ASSETS / "umarvel-demo"
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


def _examples(model: Any, data: Any, task_name: str, count: int = 2, top: int = 3) -> list[str]:
    """Lines showing ``count`` held-out queries of a task with their ``top`` hits (positives marked)."""
    import numpy as np

    from .data.mbeir import MBEIRTask

    task = MBEIRTask.from_name(task_name)
    candidates = list(data.iter_candidates(data.pool_path(task, "local", "test")))
    qrels = data.load_qrels(task, "test")
    queries = [query for _, query in zip(range(count), data.iter_queries(task, "test"), strict=False)]
    items = [data.query_item(query, data.eval_instruction(query, task)) for query in queries]
    docs = [data.candidate_item(candidate) for candidate in candidates]
    scores = (
        model.encode_query(items, show_progress_bar=False) @ model.encode_document(docs, show_progress_bar=False).T
    )
    lines = [f"{task.name} ({task.query_modality} -> {task.candidate_modality}), pool of {len(candidates)}:"]
    for query, item, row in zip(queries, items, scores, strict=True):
        lines.append(f"  query {_describe(item, data.root)}  instruction: {item['instruction']!r}")
        for rank, index in enumerate(np.argsort(-row)[:top], start=1):
            mark = "*" if candidates[index].did in qrels.get(query.qid, []) else " "
            lines.append(f"    {rank}.{mark} {row[index]:+.3f} {_describe(docs[index], data.root)}")
    return lines


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``umarvel demo``."""
    parser.add_argument("--model", default=str(DEFAULT_MODEL), help="model folder (default: the embedded model)")
    parser.add_argument("--data", default=None, help="synthetic benchmark folder (default: written to the cache)")


def run(args: argparse.Namespace) -> int:
    """Run ``umarvel demo``: a line per step on stdout, progress bars on stderr, then the scores and examples."""
    from .model import check_model_source

    check_model_source(args.model)  # a mistyped --model fails now, not after the benchmark is written
    data_dir = Path(args.data) if args.data else default_data_dir()
    print(f"[1/4] synthetic benchmark: {data_dir}", flush=True)
    from .data.mbeir import MBEIRData
    from .data.synthetic import MARKER_FILE, make_synthetic_mbeir

    if not (data_dir / MARKER_FILE).is_file():
        print("      writing it (once) ...", flush=True)
        make_synthetic_mbeir(data_dir)
    print(f"[2/4] loading the model: {args.model}", flush=True)
    from . import load
    from .evaluation.mbeir_evaluator import MBEIREvaluator

    model = load(args.model)
    evaluator = MBEIREvaluator(data_dir, split="test", pool="local")
    print(f"[3/4] encoding and searching the held-out test queries of {len(evaluator.tasks)} tasks", flush=True)
    results = evaluator.evaluate(model)
    print(f"[4/4] example queries of {', '.join(EXAMPLE_TASKS)}\n", flush=True)
    data = MBEIRData(data_dir)
    examples = [_examples(model, data, task) for task in EXAMPLE_TASKS]

    print(f"model: {args.model}\nheld-out test queries of the synthetic benchmark at {data_dir}, local pools:\n")
    print(f"{'task':<14} {'query -> candidate':<20} {'queries':>7} {'metric':>9} {'score':>7} {'chance':>7}")
    for name, row in results["tasks"].items():
        k = row["k"]
        print(
            f"{name:<14} {row['modalities']:<20} {row['num_queries']:>7} {f'Recall@{k}':>9} "
            f"{100 * row['score']:>6.1f}% {100 * row[f'chance_hit@{k}']:>6.1f}%"
        )
    print(f"{'average':<53} {100 * results['average']:>6.1f}%")
    print("Recall@k: share of queries with a correct candidate among the top k; chance: the same, ranking at random\n")
    for lines in examples:
        print("\n".join(lines) + "\n")
    print("(* marks a correct hit)")
    return 0
