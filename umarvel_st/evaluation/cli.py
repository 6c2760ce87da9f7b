"""``umarvel eval mbeir``: evaluate a model on M-BEIR (or the synthetic benchmark) and write the reports.

Example::

    umarvel make-synthetic data/mbeir-synthetic
    umarvel eval mbeir --model path/to/model --data data/mbeir-synthetic --pool local --split test

The model is a saved sentence-transformers folder (it has ``modules.json``) or a Qwen-VL checkpoint, converted
with :func:`umarvel_st.from_mllm`. Embeddings are cached under ``--cache-dir`` (default ``<output>/embeddings``):
rerunning the same command after an interruption resumes the encoding.
"""

from __future__ import annotations

import argparse
import hashlib
import shlex
from pathlib import Path
from typing import Any

from ..data.mbeir import DEFAULT_INSTRUCTION_SEED, POOLS, SPLITS
from .embeddings import DEFAULT_SHARD_SIZE


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``umarvel eval``."""
    parser.add_argument("benchmark", choices=["mbeir"], help="benchmark to run")
    parser.add_argument(
        "--model", required=True, help="sentence-transformers folder, or a Qwen-VL checkpoint (via from_mllm)"
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
    parser.add_argument("--no-progress-bar", action="store_true", help="hide progress bars")


def load_model(model: str, device: str | None = None) -> Any:
    """A saved sentence-transformers folder as is, anything else through :func:`umarvel_st.from_mllm`.

    A saved U-MARVEL model carries its modeling code, which sentence-transformers runs only with
    ``trust_remote_code=True``: the user chose the folder, as with any ``umarvel`` command.
    """
    if (Path(model) / "modules.json").is_file():
        from sentence_transformers import SentenceTransformer

        return SentenceTransformer(model, device=device, trust_remote_code=True)
    from .. import from_mllm

    return from_mllm(model, device=device)


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
    """Run ``umarvel eval mbeir``."""
    from .mbeir_evaluator import MBEIREvaluator
    from .report import write_report

    model_name = Path(args.model.rstrip("/")).name or "model"
    output = Path(args.output) if args.output else Path("mbeir_results") / f"{model_name}_{args.pool}_{args.split}"
    cache_dir = Path(args.cache_dir) if args.cache_dir else output / "embeddings"
    # The cache belongs to one model: keep each model's embeddings apart even if --cache-dir is shared.
    model_key = hashlib.sha1(str(Path(args.model).resolve()).encode()).hexdigest()[:12]
    cache_dir = cache_dir / f"{model_name}-{model_key}"
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
    )
    model = load_model(args.model, args.device)
    results = evaluator.evaluate(model, model_tag=args.model)
    paths = write_report(results, output, command=command_line(args))
    print(f"M-BEIR {args.split}, {args.pool} pool ({len(results['tasks'])} tasks): Recall@k = hit rate, %")
    for name, row in results["tasks"].items():
        print(f"  {name:<18} {row['modalities']:<22} R@{row['k']:<2} {100 * row['score']:6.1f}")
    print(f"  {'average':<18} {'':<22} {'':<4} {100 * results['average']:6.1f}")
    print("Reports: " + ", ".join(str(path) for path in paths.values()))
    return 0
