"""Speed of the mining search (:func:`umarvel_st.train.mining.rank_pools`): faiss on the CPU vs torch on a device.

One query block against a random unit-vector pool held in shards, global list plus four local pools (every 4th
row), top 100, as ``umarvel mine`` runs it per block. Reports seconds, throughput in GFLOP/s of the matrix products
(2 * queries * pool rows * dim, global plus local), the time that throughput implies for the paper's scale
(1.15M queries of dimension 3584; ``--paper-pool`` candidates; the global search plus local ones over the pool
once more), and how
far each device's lists differ from faiss's (equal ids; max score difference).

Example:
    python benchmarks/mining_search.py --devices faiss cpu                       # a CPU
    python benchmarks/mining_search.py --devices faiss cuda --queries 16384 --pool 1000000 --dim 3584
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np

from umarvel_st.train.mining import rank_pools

RESULTS = Path(__file__).parent / "results"
PAPER_QUERIES = 1_150_000
PAPER_DIM = 3584  # Qwen2-VL-7B


def unit_rows(rng: np.random.Generator, rows: int, dim: int) -> np.ndarray:
    values = rng.standard_normal((rows, dim), dtype=np.float32)
    return values / np.linalg.norm(values, axis=1, keepdims=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", nargs="+", default=["faiss", "cpu"], help="faiss, cpu, cuda, cuda:1 ...")
    parser.add_argument("--queries", type=int, default=4096)
    parser.add_argument("--pool", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--shard-size", type=int, default=16384)
    parser.add_argument("--paper-pool", type=int, default=1_000_000, help="pool size for the paper-scale estimate")
    parser.add_argument("--output", default=str(RESULTS / "mining_search.json"))
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    pool = unit_rows(rng, args.pool, args.dim)
    shards = [pool[start : start + args.shard_size] for start in range(0, args.pool, args.shard_size)]
    queries = unit_rows(rng, args.queries, args.dim)
    members = [np.arange(offset, args.pool, 4) for offset in range(4)]
    local_pool = rng.integers(0, 4, size=args.queries)
    flops = 2 * args.queries * args.pool * args.dim * 2  # global + local (the local pools hold the pool once)
    runs, lists = [], {}
    for device in args.devices:
        rank_pools(queries[:8], local_pool[:8], shards, members, 100, device=None if device == "faiss" else device)
        started = time.perf_counter()
        lists[device] = rank_pools(
            queries, local_pool, shards, members, 100, device=None if device == "faiss" else device
        )
        seconds = time.perf_counter() - started
        rate = flops / seconds
        paper = 2 * PAPER_QUERIES * args.paper_pool * PAPER_DIM * 2 / rate  # pessimistic for a small --dim
        runs.append(
            {
                "device": device,
                "seconds": round(seconds, 3),
                "gflops": round(rate / 1e9, 1),
                "paper_scale_hours": round(paper / 3600, 2),
            }
        )
    reference = lists[args.devices[0]]
    for run in runs:
        found = lists[run["device"]]
        run["ids_equal_to_" + args.devices[0]] = {
            name: float((found[name][1] == reference[name][1]).mean()) for name in found
        }
        run["max_score_difference"] = max(float(np.abs(found[name][0] - reference[name][0]).max()) for name in found)
    report = {"settings": vars(args), "machine": platform.processor() or platform.machine(), "runs": runs}
    Path(args.output).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(runs, indent=2))


if __name__ == "__main__":
    main()
