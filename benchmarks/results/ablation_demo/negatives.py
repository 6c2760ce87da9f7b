"""What stage 4's mined negatives look like on the synthetic benchmark (the ablation's "why").

Usage (from the repository root): ``python benchmarks/results/ablation_demo/negatives.py runs/demo-data LISTS``
where LISTS is a ``kind: mine`` step's ``lists`` folder. For each training query it takes the negatives stage 4
takes (the global list minus the positives, first 5) and prints, per task: where the first positive sits in the
global list, and the share of mined negatives that are near misses of a scene, share the positive's modality, or
come from the positive's dataset, and how far each negative's scene is from the positive's (0: the same scene,
1: one object recoloured, reshaped, moved, added or removed).
"""

from __future__ import annotations

import itertools
import json
import sys

from umarvel_st.data.mbeir import DID_BOUND, QID_BOUND, MBEIRData, hash_id
from umarvel_st.train.mining import MinedLists, select_negatives


def scene(item) -> list[tuple[str, str, str]]:
    """The (cell, colour, shape) objects a synthetic candidate shows."""
    return [tuple(obj) for obj in json.loads(item.src_content)["scene"]]


def edits(first: list[tuple[str, str, str]], second: list[tuple[str, str, str]]) -> int:
    """Fewest single changes (one attribute of one object, or adding/removing an object) from one scene to another."""
    small, large = sorted((first, second), key=len)
    best = None
    for chosen in itertools.permutations(large, len(small)):
        cost = (
            sum(a != b for pair in zip(small, chosen, strict=True) for a, b in zip(*pair, strict=True))
            + len(large)
            - len(small)
        )
        best = cost if best is None else min(best, cost)
    return best


def main(root: str, lists: str) -> None:
    """Print the per-task table in Markdown."""
    data, mined = MBEIRData(root), MinedLists(lists)
    tasks = data.resolve_tasks(None, "train")
    pool = data.pool_path(tasks[0], "global", "train")
    candidates = {hash_id(item.did, DID_BOUND): item for item in data.iter_candidates(pool)}
    global_dids = mined.dids("global")
    print(
        "| task | queries | positive at rank 1 | positive in top 5 | same scene | one edit away | same modality | same dataset |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for task in tasks:
        rows = mined.rows(task.name)
        counts = {
            "queries": 0,
            "top1": 0,
            "top5": 0,
            "negatives": 0,
            "same": 0,
            "near": 0,
            "modality": 0,
            "dataset": 0,
        }
        for number, query in enumerate(data.iter_queries(task, "train")):
            row = global_dids[rows[number]]
            assert int(mined.qids[rows[number]]) == hash_id(query.qid, QID_BOUND)
            positives = {hash_id(did, DID_BOUND) for did in query.pos_cand_list}
            ranks = [rank for rank, did in enumerate(row) if int(did) in positives]
            first = candidates[hash_id(query.pos_cand_list[0], DID_BOUND)]
            counts["queries"] += 1
            counts["top1"] += bool(ranks) and ranks[0] == 0
            counts["top5"] += bool(ranks) and ranks[0] < 5
            for did in select_negatives(row, positives):
                negative = candidates[did]
                counts["negatives"] += 1
                distance = edits(scene(first), scene(negative))
                counts["same"] += distance == 0
                counts["near"] += distance == 1
                counts["modality"] += negative.modality == first.modality
                counts["dataset"] += negative.did.split(":")[0] == first.did.split(":")[0]
        share = {key: 100 * value / max(counts["negatives"], 1) for key, value in counts.items()}
        print(
            f"| {task.name} | {counts['queries']} | {100 * counts['top1'] / counts['queries']:.1f} | "
            f"{100 * counts['top5'] / counts['queries']:.1f} | {share['same']:.1f} | {share['near']:.1f} | {share['modality']:.1f} | "
            f"{share['dataset']:.1f} |"
        )


if __name__ == "__main__":
    main(*sys.argv[1:3])
