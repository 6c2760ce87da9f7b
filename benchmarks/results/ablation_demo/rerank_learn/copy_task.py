"""The copy task: does the re-ranker training path teach a tiny cross-encoder a comparison it can make?

Query = a webqa_task1 caption of the synthetic benchmark (with the task's first instruction), positive = the same
caption verbatim, negative = another caption. ``copy_task.py ROWS`` writes re-ranker rows from the training
captions (8 negative draws per query, the ``rerank`` data kind's JSON object); ``copy_task.py --check MODEL`` scores
the first 40 test captions against themselves and 9 other test captions each and prints the pair AUC (50 = chance).

Usage (from the repository root, ``PYTHONPATH=$PWD``, after ``umarvel make-synthetic runs/demo-data``)::

    python benchmarks/results/ablation_demo/rerank_learn/copy_task.py runs/rerank-learn/copy.json
    umarvel train benchmarks/results/ablation_demo/rerank_learn/recipe.yaml --set output_dir=runs/rerank-learn/copy \\
        --set stages.0.lr=1e-3 --set stages.0.data.path=runs/rerank-learn/copy.json
    python benchmarks/results/ablation_demo/rerank_learn/copy_task.py --check runs/rerank-learn/copy/01-reranker/model
"""

from __future__ import annotations

import argparse
import json
import random

import numpy as np

INSTRUCTION = "Find the caption that describes the same scene as this text."


def captions(data: str, split: str) -> list[str]:
    """The webqa_task1 query captions of a split, in file order."""
    with open(f"{data}/query/{split}/mbeir_webqa_task1_{split}.jsonl", encoding="utf-8") as handle:
        return [json.loads(line)["query_txt"] for line in handle]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("target", help="the rows JSON to write, or with --check the re-ranker to score")
    parser.add_argument("--check", action="store_true", help="score TARGET on held-out test captions")
    parser.add_argument("--data", default="runs/demo-data", help="the synthetic benchmark (default: runs/demo-data)")
    args = parser.parse_args()

    if not args.check:
        train = captions(args.data, "train")
        rows = {"queries": {}, "candidates": {}, "positives": {}, "ranked": {}}
        for number, text in enumerate(train):
            rows["candidates"][f"c{number}"] = {"text": text, "image": None}
        for draw in range(8):
            for number, text in enumerate(train):
                key = f"q{number}#{draw}"
                rows["queries"][key] = {"text": text, "image": None, "instruction": INSTRUCTION}
                rows["positives"][key] = [f"c{number}"]
                rows["ranked"][key] = [f"c{other}" for other in range(len(train)) if other != number]
        with open(args.target, "w", encoding="utf-8") as handle:
            json.dump(rows, handle)
        print(f"{len(rows['queries'])} rows in {args.target}")
        return
    import umarvel_st

    model = umarvel_st.load_reranker(args.target, device="cpu")
    test, rng, aucs = captions(args.data, "test"), random.Random(1), []
    for text in test[:40]:
        others = rng.sample([other for other in test if other != text], 9)
        pairs = [({"text": text, "instruction": INSTRUCTION}, {"text": candidate}) for candidate in [text, *others]]
        scores = model.predict(pairs, show_progress_bar=False)
        aucs.append(float((scores[0] > np.asarray(scores[1:])).mean()))
    print(f"copy task, held-out pair AUC: {100 * np.mean(aucs):.1f}")


if __name__ == "__main__":
    main()
