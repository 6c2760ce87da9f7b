"""``umarvel eval zeroshot``: the paper's zero-shot suite on datasets in their published layouts.

Example::

    umarvel make-synthetic --zeroshot data/zeroshot-synthetic
    umarvel eval zeroshot --suite paper --data data/zeroshot-synthetic --model path/to/model --output out

``--data`` holds one folder per dataset (``sharegpt4v/``, ``urban1k/``, ``flickr30k/``, ``circo/``, ``genecis/``,
``visdial/``, ``fashioniq_multiturn/``, ``ccneg/``, ``sugar_crepe/``, ``msrvtt/``, ``msvd/``) or is itself the
folder of the one dataset asked for. Embeddings are cached under ``--cache-dir`` (default ``<output>/embeddings``)
and resumed.
"""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path
from typing import Any

from .tasks import LEGACY_FLAGS, SUITES, TASKS, get_task


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The zero-shot options of ``umarvel eval`` (the shared ones come from ``umarvel eval``)."""
    parser.add_argument("--task", action="append", choices=list(TASKS), help="zero-shot task (repeatable)")
    parser.add_argument("--suite", choices=list(SUITES), help="zero-shot task preset: paper = all tasks")
    parser.add_argument(
        "--legacy", action="append", choices=list(LEGACY_FLAGS), default=None, help="reproduce an official quirk"
    )


def evaluate(
    model: Any,
    task_names: list[str],
    data_root: str | Path,
    cache_dir: str | Path,
    *,
    legacy: tuple[str, ...] = (),
    batch_size: int = 4,
    show_progress_bar: bool = True,
    model_tag: str | None = None,
) -> dict[str, Any]:
    """Evaluate ``model`` on the named tasks; returns the results that :func:`.report.write_report` writes."""
    from ..fingerprint import model_fingerprint
    from .runner import evaluate_task, group_scores

    tasks = [get_task(name, legacy) for name in task_names]  # every name checked before any encoding
    if not Path(data_root).is_dir():
        raise ValueError(f"--data {data_root} is not a folder; give the folder holding the datasets.")
    description = model_fingerprint(model)  # once for every task
    rows = {
        task.name: evaluate_task(
            model,
            task,
            data_root,
            cache_dir,
            batch_size=batch_size,
            show_progress_bar=show_progress_bar,
            model_description=description,
        )
        for task in tasks
    }
    return {
        "model": model_tag,
        "data_root": str(data_root),
        "synthetic": (Path(data_root) / "SYNTHETIC").is_file(),
        "legacy": list(legacy),
        "tasks": rows,
        "groups": group_scores(rows),
    }


def run(args: argparse.Namespace) -> int:
    """Run ``umarvel eval zeroshot``."""
    from ..cli import check_model_name, check_output_dir, load_model
    from .report import rows, write_report

    names = list(args.task or []) + (SUITES[args.suite] if args.suite else [])
    if not names:
        raise ValueError(f"Name what to run: --task NAME (one of {list(TASKS)}) or --suite paper.")
    names = list(dict.fromkeys(names))
    check_model_name(args.model)
    model_name = Path(args.model.rstrip("/")).name or "model"
    output = Path(args.output) if args.output else Path("zeroshot_results") / model_name
    cache_dir = Path(args.cache_dir) if args.cache_dir else output / "embeddings"
    check_output_dir(output)
    for name in names:
        get_task(name, tuple(args.legacy or ()))
    model = load_model(args.model, args.device)
    results = evaluate(
        model,
        names,
        args.data,
        cache_dir,
        legacy=tuple(args.legacy or ()),
        batch_size=args.batch_size,
        show_progress_bar=not args.no_progress_bar,
        model_tag=args.model,
    )
    words = ["umarvel", "eval", "zeroshot", "--data", args.data, "--model", args.model, "--output", str(output)]
    for name in args.task or []:
        words += ["--task", name]
    words += ["--suite", args.suite] if args.suite else []
    for flag in args.legacy or ():
        words += ["--legacy", flag]
    words += ["--batch-size", str(args.batch_size)]
    paths = write_report(results, output, command=shlex.join(words))
    print(f"Zero-shot results ({len(names)} tasks), %:")
    for task, key, ours, paper in rows(results):
        print(f"  {task:<32} {key:<10} {ours:6.1f}   paper {'-' if paper is None else f'{paper:.1f}'}")
    print("Reports: " + ", ".join(str(path) for path in paths.values()))
    return 0
