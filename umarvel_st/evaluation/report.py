"""Readable M-BEIR reports: ``results.json``, ``report.md`` (paper column order, published numbers beside ours) and
``report.png``, written next to each other.

Published numbers are those of the U-MARVEL paper's tables as the project spec lists them: the M-BEIR averages
(local and global pools). Per-task published numbers are not transcribed (the paper's tables are images); their
cells show "-" until they are added to :data:`PUBLISHED`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from ..data.mbeir import MBEIR_TASKS

logger = logging.getLogger(__name__)

# model -> pool -> {"average": %, optionally "<task>": %}; source: the U-MARVEL paper (arXiv 2507.14902).
PUBLISHED: dict[str, dict[str, dict[str, float]]] = {
    "UniIR CLIP_SF": {"local": {"average": 50.6}, "global": {"average": 48.9}},
    "LamRA-Ret (Qwen2-VL-7B)": {"local": {"average": 56.6}, "global": {"average": 54.9}},
    "U-MARVEL (Qwen2-VL-7B)": {"local": {"average": 63.2}, "global": {"average": 60.7}},
    "U-MARVEL+ (Qwen2-VL-7B)": {"local": {"average": 64.8}, "global": {"average": 61.8}},
}

POOL_WORDS = {"local": "local (each task's own candidate pool)", "global": "global (the union of all pools)"}


def _percent(value: float) -> str:
    return f"{100 * value:.1f}"


def _ordered_tasks(results: dict[str, Any]) -> list[str]:
    order = {name: index for index, name in enumerate(MBEIR_TASKS)}
    return sorted(results["tasks"], key=lambda name: (order.get(name, len(order)), name))


def markdown_report(results: dict[str, Any], command: str | None = None) -> str:
    """The Markdown report of :meth:`MBEIREvaluator.evaluate` results."""
    tasks = _ordered_tasks(results)
    pool = results["pool"]
    lines = [
        f"# M-BEIR evaluation: {results.get('model') or 'model'}",
        "",
        f"- data: `{results['data_root']}`, split `{results['split']}`, pool {POOL_WORDS[pool]}",
        "- metric: Recall@k as UniIR computes it (hit rate: 1 if any qrels positive is among the top k of an exact "
        "inner-product search over L2-normalised embeddings), k = 10 for Fashion200K and FashionIQ, 5 otherwise; "
        "in %; average = mean over tasks",
        f"- query instructions drawn with seed {results['instruction_seed']}",
    ]
    if results["synthetic"]:
        lines.append(
            "- **synthetic benchmark** (`umarvel make-synthetic`): task names are borrowed from M-BEIR, the data is "
            "not; published numbers are on the real M-BEIR and are shown for orientation only, not comparison"
        )
    if not results["all_16_tasks"]:
        lines.append(
            f"- our average is over the {results['num_tasks']} tasks evaluated; published averages are over all 16"
        )
    rerank = results.get("rerank")
    if rerank:
        lines.append(
            f"- U-MARVEL+: re-ranker `{rerank['reranker']}` re-ranks each query's top {rerank['top']}, final score = "
            f"cos + {rerank['weight']:g} * P(Yes) with each candidate's own cosine; the rest follow in retrieval order"
        )
    if command:
        lines += ["", "Command:", "", "```", command, "```"]
    header = ["model", *tasks, "average"]
    lines += ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, pools in PUBLISHED.items():
        numbers = pools.get(pool, {})
        cells = [f"{numbers[t]:.1f}" if t in numbers else "-" for t in [*tasks, "average"]]
        lines.append(f"| {name} (published) | " + " | ".join(cells) + " |")
    ours = [_percent(results["tasks"][t]["score"]) for t in tasks]
    lines.append("| **ours** | " + " | ".join(ours) + f" | **{_percent(results['average'])}** |")
    if rerank:
        fused = [_percent(results["tasks"][t]["rerank"]["score"]) for t in tasks]
        lines.append("| **ours + re-rank** | " + " | ".join(fused) + f" | **{_percent(rerank['average'])}** |")

    lines += [
        "",
        "| task | modalities | k | queries | pool | hit@k | chance hit@k | recall@k | mAP@k | missing positives |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in tasks:
        row = results["tasks"][name]
        k = row["k"]
        lines.append(
            f"| {name} | {row['modalities']} | {k} | {row['num_queries']} | {row['pool_size']} | "
            f"{_percent(row[f'hit@{k}'])} | {_percent(row[f'chance_hit@{k}'])} | {_percent(row[f'recall@{k}'])} | "
            f"{_percent(row[f'map@{k}'])} | {row['missing_positives']} |"
        )
    if rerank:
        lines += [
            "",
            "Retrieval and re-ranked side by side (%):",
            "",
            "| task | k | hit@k | re-ranked hit@k | recall@k | re-ranked recall@k | mAP@k | re-ranked mAP@k |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for name in tasks:
            row = results["tasks"][name]
            k = row["k"]
            cells = [
                f"{_percent(row[key])} | {_percent(row['rerank'][key])}"
                for key in (f"hit@{k}", f"recall@{k}", f"map@{k}")
            ]
            lines.append(f"| {name} | {k} | " + " | ".join(cells) + " |")
    seconds = results.get("seconds")
    if seconds:
        lines += [
            "",
            "Time (s): " + ", ".join(f"{key.replace('_', ' ')} {value:.1f}" for key, value in seconds.items()),
        ]
    return "\n".join(lines) + "\n"


def plot_report(results: dict[str, Any], path: str | Path) -> None:
    """Bar chart of our per-task scores (retrieval and, with a re-ranker, re-ranked side by side) with chance levels and our average (plus the published averages on the
    real benchmark)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = _ordered_tasks(results)
    scores = [100 * results["tasks"][t]["score"] for t in tasks]
    chance = [100 * results["tasks"][t][f"chance_hit@{results['tasks'][t]['k']}"] for t in tasks]
    figure, axes = plt.subplots(figsize=(max(6.0, 0.7 * len(tasks) + 3), 4.2), dpi=120)
    positions = range(len(tasks))
    rerank = results.get("rerank")
    width = 0.4 if rerank else 0.8
    shift = -width / 2 if rerank else 0.0
    axes.bar(
        [p + shift for p in positions],
        scores,
        width=width,
        color="#1f77b4",
        label=f"ours, retrieval (average {100 * results['average']:.1f})",
    )
    if rerank:
        fused = [100 * results["tasks"][t]["rerank"]["score"] for t in tasks]
        axes.bar(
            [p + width / 2 for p in positions],
            fused,
            width=width,
            color="#ff7f0e",
            label=f"ours + re-rank top {rerank['top']} (average {100 * rerank['average']:.1f})",
        )
    axes.scatter(positions, chance, marker="_", s=400, color="black", zorder=3, label="chance")
    if not results["synthetic"]:
        for (name, pools), style in zip(PUBLISHED.items(), [":", "-.", "--", "-"], strict=True):
            average = pools.get(results["pool"], {}).get("average")
            if average is not None:
                axes.axhline(average, linestyle=style, color="grey", linewidth=1, label=f"{name} average {average}")
    axes.set_xticks(list(positions), tasks, rotation=45, ha="right", fontsize=8)
    axes.set_ylabel("Recall@k (hit rate, %)")
    axes.set_ylim(0, 100)
    title = f"M-BEIR {results['split']}, {results['pool']} pool: {results.get('model') or 'model'}"
    if results["synthetic"]:
        title += " (synthetic data)"
    axes.set_title(title, fontsize=9)
    axes.legend(fontsize=7, loc="upper right")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def write_report(results: dict[str, Any], output_dir: str | Path, command: str | None = None) -> dict[str, Path]:
    """Write ``results.json``, ``report.md`` and ``report.png`` into ``output_dir``; returns their paths."""
    folder = Path(output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"json": folder / "results.json", "markdown": folder / "report.md", "png": folder / "report.png"}
    paths["json"].write_text(json.dumps({**results, "command": command}, indent=2) + "\n", encoding="utf-8")
    paths["markdown"].write_text(markdown_report(results, command), encoding="utf-8")
    plot_report(results, paths["png"])
    logger.info("Wrote %s", ", ".join(str(path) for path in paths.values()))
    return paths
