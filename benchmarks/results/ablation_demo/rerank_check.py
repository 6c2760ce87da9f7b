"""Held-out check of a demo re-ranker: does its P(Yes) rank the test queries' positives above their negatives?

For the first ``--queries`` test queries of each task, the re-ranker scores the query against the top ``--top``
candidates of its LOCAL list from ``umarvel mine --split test`` (the stage-3 model's cosines). Printed per task
and on average (all in %):

* ``auc``: over queries with a positive in the list, the fraction of (positive, negative) pairs of the list that
  P(Yes) orders correctly (ties count half); 50 is chance.
* ``R@5 cos``: the retrieval's own hit rate at 5 (the positive among the first 5 by cosine).
* ``R@5 P``: the hit rate at 5 when the list is sorted by P(Yes) alone.
* ``R@5 cos+wP``: sorted by cos + w * P(Yes), for each ``--weights`` w (U-MARVEL+'s fusion).

Usage (from the repository root, ``PYTHONPATH=$PWD``)::

    python -m umarvel_st.cli mine --model umarvel_st/assets/umarvel-demo --data runs/demo-data \\
        --output runs/mine-stage3-test --split test --top-k 50
    python benchmarks/results/ablation_demo/rerank_check.py RERANKER runs/demo-data runs/mine-stage3-test
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

import umarvel_st
from umarvel_st.data.mbeir import DID_BOUND, MBEIRData, hash_id
from umarvel_st.train.mining import MinedLists, mining_instruction


def hit_at_5(order: np.ndarray, positive: np.ndarray) -> float:
    """1.0 when a positive is among the first 5 of ``order``."""
    return float(positive[order[:5]].any())


def pair_auc(p_yes: np.ndarray, positive: np.ndarray) -> float:
    """The fraction of (positive, negative) pairs with the positive scored higher (ties: half)."""
    pos, neg = p_yes[positive][:, None], p_yes[~positive][None, :]
    return float(((pos > neg) + 0.5 * (pos == neg)).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("reranker", help="a saved re-ranker folder (umarvel_st.load_reranker)")
    parser.add_argument("data", help="the synthetic M-BEIR data root")
    parser.add_argument("lists", help="umarvel mine --split test output (the stage-3 model's lists)")
    parser.add_argument("--top", type=int, default=20, help="list length re-ranked per query (default: 20)")
    parser.add_argument("--queries", type=int, default=30, help="test queries per task (default: 30)")
    parser.add_argument("--weights", type=float, nargs="+", default=[0.1, 1.0], help="fusion weights w")
    parser.add_argument("--output", help="also write the numbers to this JSON file")
    args = parser.parse_args()

    model = umarvel_st.load_reranker(args.reranker, device="cpu")
    data, mined = MBEIRData(args.data), MinedLists(args.lists)
    split = mined.fingerprint["data"]["split"]
    tasks = data.resolve_tasks(list(mined.ranges), split)
    mined.check(data, tasks)
    pool = data.pool_path(tasks[0], "global", split)
    candidates = {hash_id(c.did, DID_BOUND): c for c in data.iter_candidates(pool)}
    local_dids, local_scores = mined.dids("local"), mined.scores("local")
    columns = ["auc", "R@5 cos", "R@5 P"] + [f"R@5 cos+{w:g}P" for w in args.weights]
    results: dict[str, dict[str, float]] = {}
    start = time.perf_counter()
    for task in tasks:
        rows = mined.rows(task.name)
        values: dict[str, list[float]] = {column: [] for column in columns}
        for number, query in enumerate(data.iter_queries(task, split)):
            if number >= args.queries:
                break
            dids = np.asarray(local_dids[rows[number], : args.top])
            cosines = np.asarray(local_scores[rows[number], : args.top], dtype=np.float64)
            keep = dids >= 0
            dids, cosines = dids[keep], cosines[keep]
            excluded = {hash_id(did, DID_BOUND, query.source) for did in query.pos_cand_list}
            positive = np.array([int(did) in excluded for did in dids])
            item = data.query_item(query, mining_instruction(data, query, task))
            pairs = [(item, data.candidate_item(candidates[int(did)])) for did in dids]
            p_yes = np.asarray(model.predict(pairs, batch_size=len(pairs), show_progress_bar=False), np.float64)
            values["R@5 cos"].append(hit_at_5(np.argsort(-cosines, kind="stable"), positive))
            values["R@5 P"].append(hit_at_5(np.argsort(-p_yes, kind="stable"), positive))
            for w in args.weights:
                fused = np.argsort(-(cosines + w * p_yes), kind="stable")
                values[f"R@5 cos+{w:g}P"].append(hit_at_5(fused, positive))
            if positive.any() and not positive.all():
                values["auc"].append(pair_auc(p_yes, positive))
        results[task.name] = {column: 100 * float(np.mean(v)) if v else float("nan") for column, v in values.items()}
    results["average"] = {column: float(np.mean([r[column] for r in results.values()])) for column in columns}
    seconds = time.perf_counter() - start
    print(f"{'task':14s} " + " ".join(f"{column:>12s}" for column in columns))
    for name, row in results.items():
        print(f"{name:14s} " + " ".join(f"{row[column]:12.1f}" for column in columns))
    print(f"({args.queries} queries per task, top {args.top} of the local list; {seconds:.0f} s)")
    if args.output:
        report = {"reranker": args.reranker, "queries": args.queries, "top": args.top, "seconds": seconds}
        with open(args.output, "w", encoding="utf-8") as handle:
            json.dump({**report, "results": results}, handle, indent=2)


if __name__ == "__main__":
    main()
