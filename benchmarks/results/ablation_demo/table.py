"""Print the ablation table (Markdown) from the committed ``results.json`` reports of each row and pool.

Usage (from the repository root): ``python benchmarks/results/ablation_demo/table.py [SUBFOLDER]``; with
``demo_full`` it prints the rows of the end-to-end ``umarvel train demo`` run kept in that subfolder.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).parent
ROWS = {
    "stage3": "stage 3 (`01-instruction`, shipped default)",
    "stage4": "stage 4 (`hard-negatives`)",
    "stage4_suffix": "stage 4, `summarize_suffix` kept on",
    "stage5": "stage 5 (`distillation`)",
    "umarvel_plus": "U-MARVEL+ (stage 5 + `reranker-plus`, top 50, w 0.1)",
    "stage3_rerank": "U-MARVEL+ on stage 3 (shipped default + `umarvel-demo-reranker`, top 50, w 0.1)",
}


def main() -> None:
    """Print one line per row and pool: the per-task score (hit@k, %) and the average (re-ranked where re-ranked)."""
    folder = HERE / sys.argv[1] if len(sys.argv) > 1 else HERE
    header = None
    for pool in ("local", "global"):
        for name, label in ROWS.items():
            path = folder / name / pool / "results.json"
            if not path.is_file():
                continue
            report = json.loads(path.read_text())
            tasks = report["tasks"]
            if header is None:
                header = list(tasks)
                print("| pool | row | " + " | ".join(header) + " | average |")
                print("|---|---|" + "---|" * (len(header) + 1))
            if folder != HERE:  # that run's stage 3 is retrained, not the shipped file
                label = label.replace(", shipped default", " of that run")
            scores = {task: tasks[task].get("rerank", tasks[task])["score"] for task in header}
            average = report.get("rerank", report)["average"]
            cells = " | ".join(f"{100 * scores[task]:.1f}" for task in header)
            print(f"| {pool} | {label} | {cells} | **{100 * average:.1f}** |")


if __name__ == "__main__":
    main()
