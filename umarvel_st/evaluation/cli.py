"""``umarvel eval mbeir``: evaluate a model on M-BEIR (or the synthetic benchmark) and write the reports.

Example::

    umarvel make-synthetic data/mbeir-synthetic
    umarvel eval mbeir --model path/to/model --data data/mbeir-synthetic --pool local --split test

The model is a saved model (a folder or Hub repository with ``modules.json``), loaded with its saved options by
:func:`umarvel_st.load` (which runs no code from the folder), or a Qwen-VL checkpoint, converted with
:func:`umarvel_st.from_mllm`. Embeddings are cached under ``--cache-dir`` (default ``<output>/embeddings``):
rerunning the same command after an interruption resumes the encoding, and a changed model or data file is
encoded again.

U-MARVEL+: ``--rerank RERANKER`` re-ranks each query's top ``--rerank-top`` (50) with the re-ranker, final score =
cos + ``--rerank-weight`` (0.1) * P(Yes), and the report shows retrieval and re-ranked scores side by side::

    umarvel eval mbeir --model path/to/model --data data/mbeir-synthetic --rerank path/to/reranker
"""

from __future__ import annotations

import argparse
import hashlib
import re
import shlex
from pathlib import Path
from typing import Any

from ..data.mbeir import DEFAULT_INSTRUCTION_SEED, POOLS, SPLITS
from ..retrieve import add_rerank_arguments
from .embeddings import DEFAULT_SHARD_SIZE


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``umarvel eval``."""
    parser.add_argument("benchmark", choices=["mbeir", "zeroshot"], help="benchmark to run")
    parser.add_argument(
        "--model",
        required=True,
        help="saved model (folder or Hub id with modules.json), or a Qwen-VL checkpoint (converted by from_mllm)",
    )
    parser.add_argument("--data", required=True, help="M-BEIR data root (holds query/, cand_pool/, qrels/ ...)")
    parser.add_argument("--tasks", nargs="+", help="tasks to evaluate, e.g. mscoco_task0 cirr_task7 (default: all)")
    parser.add_argument("--pool", choices=POOLS, default="local", help="candidate pool (default: local)")
    parser.add_argument("--split", choices=SPLITS, default="test", help="query split (default: test)")
    parser.add_argument("--output", help="report folder (default: mbeir_results/<model>_<pool>_<split>)")
    parser.add_argument("--cache-dir", help="embedding cache, reused to resume (default: <output>/embeddings)")
    parser.add_argument("--batch-size", type=int, default=32, help="encoding batch size (default: 32)")
    parser.add_argument("--device", help="torch device for the model (default: CUDA if available)")
    parser.add_argument(
        "--devices", nargs="+", help="encode with one process per device, e.g. cuda:0 cuda:1, or cpu cpu"
    )
    parser.add_argument(
        "--shard-size", type=int, default=DEFAULT_SHARD_SIZE, help="embedding rows per shard file and search step"
    )
    parser.add_argument(
        "--instruction-seed", type=int, default=DEFAULT_INSTRUCTION_SEED, help="seed of the instruction choice"
    )
    parser.add_argument(
        "--rerank",
        help="U-MARVEL+: re-rank the retrieved candidates with this re-ranker (saved re-ranker folder, Hub id, or "
        "Qwen-VL checkpoint)",
    )
    add_rerank_arguments(parser)
    parser.add_argument("--no-progress-bar", action="store_true", help="hide progress bars")
    from .zeroshot.cli import add_arguments as add_zeroshot_arguments  # zero-shot suite options (issue 11)

    add_zeroshot_arguments(parser.add_argument_group("zeroshot"))


_HUB_ID = re.compile(r"^[\w.-]+(/[\w.-]+)?$")


def check_model_name(model: str) -> None:
    """Refuse a model that is neither an existing path nor shaped like a Hub id (``name`` or ``org/name``).

    Raises:
        ValueError: Naming the value and the fix.
    """
    if not Path(model).exists() and not _HUB_ID.match(model):
        raise ValueError(f"--model {model!r} is not an existing folder and not a Hub id ('org/name'). Check the path.")


def check_output_dir(output: Path) -> None:
    """Refuse a report folder that exists as a file, before any encoding.

    Raises:
        ValueError: Naming the path and the fix.
    """
    for path in (output, *output.parents):
        if path.exists() and not path.is_dir():
            raise ValueError(f"--output {str(output)!r}: {str(path)!r} is a file, not a folder. Name a report folder.")


def load_model(model: str, device: str | None = None) -> Any:
    """Load the model to evaluate.

    A saved model (a folder or Hub repository with ``modules.json``) is loaded with :func:`umarvel_st.load`, which
    restores every saved option and runs no code from the folder; anything else (a Qwen-VL checkpoint) is converted
    with :func:`umarvel_st.from_mllm`.
    """
    from ..model import open_model

    check_model_name(model)
    return open_model(model, device=device)


def command_line(args: argparse.Namespace) -> str:
    """The ``umarvel eval`` command that reproduces ``args`` (every option spelled out)."""
    words = ["umarvel", "eval", args.benchmark]
    for key, value in vars(args).items():
        if key in {"benchmark", "command", "verbose"} or key.startswith("_") or value is None or value is False:
            continue
        words.append("--" + key.replace("_", "-"))
        if value is not True:
            words.extend(str(item) for item in (value if isinstance(value, list) else [value]))
    return shlex.join(words)


def run(args: argparse.Namespace) -> int:
    """Run ``umarvel eval mbeir`` (``umarvel eval zeroshot`` runs :mod:`.zeroshot.cli`)."""
    if args.benchmark == "zeroshot":
        from .zeroshot.cli import run as run_zeroshot

        return run_zeroshot(args)
    from ..retrieve import check_rerank_settings, open_reranker
    from .mbeir_evaluator import MBEIREvaluator
    from .report import write_report

    model_name = Path(args.model.rstrip("/")).name or "model"
    output = Path(args.output) if args.output else Path("mbeir_results") / f"{model_name}_{args.pool}_{args.split}"
    cache_dir = Path(args.cache_dir) if args.cache_dir else output / "embeddings"
    check_model_name(args.model)
    check_output_dir(output)
    # Keep each model's embeddings apart even if --cache-dir is shared (the cache also checks the model's content).
    location = str(Path(args.model).resolve()) if Path(args.model).exists() else args.model
    model_key = hashlib.sha1(location.encode()).hexdigest()[:12]
    cache_dir = cache_dir / f"{model_name}-{model_key}"
    reranker = None
    if args.rerank:
        check_rerank_settings(args.rerank_top, args.rerank_weight)
        reranker = open_reranker(args.rerank, args.device)
    evaluator = MBEIREvaluator(
        args.data,
        args.tasks,
        split=args.split,
        pool=args.pool,
        batch_size=args.batch_size,
        show_progress_bar=not args.no_progress_bar,
        instruction_seed=args.instruction_seed,
        cache_dir=cache_dir,
        shard_size=args.shard_size,
        devices=args.devices,
        reranker=reranker,
        rerank_top=args.rerank_top,
        rerank_weight=args.rerank_weight,
        reranker_tag=args.rerank,
    )
    model = load_model(args.model, args.device)
    results = evaluator.evaluate(model, model_tag=args.model)
    paths = write_report(results, output, command=command_line(args))
    rerank = results.get("rerank")
    print(f"M-BEIR {args.split}, {args.pool} pool ({len(results['tasks'])} tasks): Recall@k = hit rate, %")
    if rerank:
        print(f"  {'':<18} {'':<22} {'':<4} {'retrieval':>9} {'re-ranked':>9}")
    for name, row in results["tasks"].items():
        fused = f" {100 * row['rerank']['score']:9.1f}" if rerank else ""
        print(f"  {name:<18} {row['modalities']:<22} R@{row['k']:<2} {100 * row['score']:9.1f}{fused}")
    fused = f" {100 * rerank['average']:9.1f}" if rerank else ""
    print(f"  {'average':<18} {'':<22} {'':<4} {100 * results['average']:9.1f}{fused}")
    print("Reports: " + ", ".join(str(path) for path in paths.values()))
    return 0
