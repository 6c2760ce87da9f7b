"""Write re-ranker rows with K fresh negatives per training query: the query repeated K times, each copy drawing its
own negative from the query's whole LOCAL list minus its positives (K epochs of fresh draws, trained as one pass).

``umarvel`` 's ``rerank-data`` step draws one negative per query (spec 2.1: one epoch, one negative), and a re-ranker
stage with ``epochs: K`` reuses it K times. This script keeps the step's queries, instructions and positives and
hands :func:`umarvel_st.train.reranker.build_rerank_dataset` each query's full list instead, under K ids
(``qid#0`` ... ``qid#K-1``), so its seeded draw picks a new negative for each copy.

Usage (from the repository root, ``PYTHONPATH=$PWD``)::

    python benchmarks/results/ablation_demo/rerank_learn/fresh_negatives.py runs/demo-data \\
        runs/rerank-learn/data/01-mine-stage3/lists runs/rerank-learn/data/02-reranker-data/rerank.json \\
        runs/rerank-learn/fresh10.json --copies 10
"""

from __future__ import annotations

import argparse
import json

from umarvel_st.data.mbeir import DID_BOUND, MBEIRData, hash_id
from umarvel_st.train.mining import MinedLists


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("data", help="the synthetic M-BEIR data root")
    parser.add_argument("lists", help="the mine step's lists (the stage-3 model's, training split)")
    parser.add_argument("rows", help="the rerank-data step's rerank.json (its queries, instructions, positives)")
    parser.add_argument("output", help="the rerank.json to write")
    parser.add_argument("--copies", type=int, default=10, help="negatives drawn per query (default: 10)")
    args = parser.parse_args()

    rows = json.loads(open(args.rows, encoding="utf-8").read())
    data, mined = MBEIRData(args.data), MinedLists(args.lists)
    split = mined.fingerprint["data"]["split"]
    tasks = data.resolve_tasks(list(mined.ranges), split)
    mined.check(data, tasks)
    candidates = {
        candidate.did: candidate for candidate in data.iter_candidates(data.pool_path(tasks[0], "global", split))
    }
    did_of = {hash_id(did, DID_BOUND): did for did in candidates}
    local = mined.dids("local")
    output = {"queries": {}, "candidates": {}, "positives": {}, "ranked": {}}
    for task in tasks:
        task_rows = mined.rows(task.name)
        for number, query in enumerate(data.iter_queries(task, split)):
            if query.qid not in rows["queries"]:  # the step gave it no row (no positive or no negative)
                continue
            excluded = {hash_id(did, DID_BOUND, query.source) for did in query.pos_cand_list}
            negatives = [did_of[int(did)] for did in local[task_rows[number]] if did >= 0 and int(did) not in excluded]
            for did in [*negatives, *rows["positives"][query.qid]]:
                output["candidates"][did] = data.candidate_item(candidates[did])
            for copy in range(args.copies):
                key = f"{query.qid}#{copy}"
                output["queries"][key] = rows["queries"][query.qid]
                output["positives"][key] = rows["positives"][query.qid]
                output["ranked"][key] = negatives
    with open(args.output, "w", encoding="utf-8") as handle:
        json.dump(output, handle)
    print(f"{len(output['queries'])} rows ({args.copies} per query), {len(output['candidates'])} candidates")


if __name__ == "__main__":
    main()
