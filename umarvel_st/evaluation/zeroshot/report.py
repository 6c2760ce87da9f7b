"""Zero-shot reports: ``results.json``, ``report.md`` (ours beside the paper's U-MARVEL Qwen2-VL-7B numbers) and
``report.png``, in the layout of the M-BEIR reports."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .tasks import LEGACY_FLAGS


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def rows(results: dict[str, Any]) -> list[tuple[str, str, float, float | None]]:
    """``(task, key, ours %, paper %)`` per reported number, then one row per subset group."""
    table = [
        (name, key, 100 * value, row["paper"].get(key))
        for name, row in results["tasks"].items()
        for key, value in row["reported"].items()
    ]
    table += [
        (f"{name} (mean of {g['subsets']})", "mean", 100 * g["score"], g["paper"])
        for name, g in results["groups"].items()
    ]
    return table


def markdown_report(results: dict[str, Any], command: str | None = None) -> str:
    """The Markdown report of :func:`umarvel_st.evaluation.zeroshot.cli.evaluate` results."""
    legacy = results["legacy"]
    lines = [
        f"# Zero-shot evaluation: {results.get('model') or 'model'}",
        "",
        f"- data: `{results['data_root']}`"
        + (" (**synthetic copy**: paper numbers are for orientation only)" if results.get("synthetic") else ""),
        "- metrics in %: hit-rate R@k (1 if any positive is in the top k), CIRCO mAP@5 (denominator min(|gt|, 5)), "
        "GeneCIS R@1 over each query's own gallery, ITM accuracy (positive strictly above negative); subset groups "
        "are the plain mean of their subsets",
        "- legacy flags on: "
        + (", ".join(f"`{flag}` ({LEGACY_FLAGS[flag]})" for flag in legacy) if legacy else "none"),
        "- paper: U-MARVEL (Qwen2-VL-7B), Tables 9-10",
        "- not reproduced (spec section 7) unless a legacy flag says so: the reference's causal attention on "
        "unpadded batches (every video, equal-length batches; `--legacy causal_unpadded`) and its "
        "launcher-dependent candidate-side instruction masking; by default attention is always bidirectional, and "
        "the instruction span is always masked",
    ]
    if command:
        lines.append(f"- command: `{command}`")
    lines += ["", "| task | metric | ours | paper |", "|---|---|---:|---:|"]
    lines += [f"| {task} | {key} | {ours:.1f} | {_cell(paper)} |" for task, key, ours, paper in rows(results)]
    lines += ["", "## Protocol per task", ""]
    for name, row in results["tasks"].items():
        lines.append(f"- **{name}** ({row['queries']} queries, {row['candidates']} candidates)")
        lines.append(f"  - query as tokenized: `{row['example']['query']!r}`")
        lines.append(f"  - candidate as tokenized: `{row['example']['candidate']!r}`")
        if row["notes"]:
            lines.append(f"  - {row['notes']}")
    return "\n".join(lines) + "\n"


def plot_report(results: dict[str, Any], path: str | Path) -> None:
    """A bar chart of ours against the paper per reported number."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = rows(results)
    labels = [f"{task}\n{key}" for task, key, _, _ in table]
    positions = range(len(table))
    figure, axis = plt.subplots(figsize=(max(6, 0.6 * len(table)), 4))
    axis.bar([p - 0.2 for p in positions], [ours for _, _, ours, _ in table], width=0.4, label="ours")
    axis.bar([p + 0.2 for p in positions], [paper or 0 for *_, paper in table], width=0.4, label="paper")
    axis.set_xticks(list(positions), labels, rotation=90, fontsize=6)
    axis.set_ylabel("%")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def write_report(results: dict[str, Any], output_dir: str | Path, command: str | None = None) -> dict[str, Path]:
    """Write ``results.json``, ``report.md`` and ``report.png`` into ``output_dir``; returns their paths."""
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    paths = {"json": output / "results.json", "markdown": output / "report.md", "png": output / "report.png"}
    paths["json"].write_text(json.dumps({**results, "command": command}, indent=2) + "\n", encoding="utf-8")
    paths["markdown"].write_text(markdown_report(results, command), encoding="utf-8")
    plot_report(results, paths["png"])
    return paths
