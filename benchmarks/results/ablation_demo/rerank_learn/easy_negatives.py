"""Re-write a re-ranker rows file with easy negatives: each query's negative is another query's positive of the same
dataset and instruction (a random scene of the right modality) instead of one from its mined top 50.

Usage: ``python easy_negatives.py runs/ablation/02-reranker-data/rerank.json runs/rerank-learn/easy.json``
"""

from __future__ import annotations

import argparse
import json
import random


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("rows", help="a `rerank-data` step's rerank.json")
    parser.add_argument("output", help="the file to write")
    args = parser.parse_args()

    with open(args.rows, encoding="utf-8") as handle:
        data = json.load(handle)
    rng = random.Random(0)
    groups: dict[tuple[str, str], list[str]] = {}
    for qid, query in data["queries"].items():
        groups.setdefault((qid.split(":")[0], query["instruction"]), []).append(qid)
    for qids in groups.values():
        pool = [did for qid in qids for did in data["positives"][qid]]
        for qid in qids:
            data["ranked"][qid] = [rng.choice([did for did in pool if did not in data["positives"][qid]])]
    with open(args.output, "w", encoding="utf-8") as handle:
        json.dump(data, handle)


if __name__ == "__main__":
    main()
