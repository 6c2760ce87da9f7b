"""Peak memory of exact top-k search as the candidate pool grows: sharded memory-mapped search vs one flat index.

M-BEIR's global pool has 5.6M candidates (80 GB of float32 embeddings at the 7B model's 3584 dimensions), so the
evaluator searches embeddings stored as shard files one shard at a time
(:func:`umarvel_st.evaluation.search.search_shards` over an :class:`~umarvel_st.evaluation.embeddings.EmbeddingStore`)
instead of loading one ``faiss.IndexFlatIP``. This benchmark writes pools of random unit vectors of growing size,
then, each in a fresh process, searches them both ways and records the growth of the process's peak resident set
(``VmHWM``, reset through ``/proc/self/clear_refs`` after setup) during the search. Target: the sharded search's
peak stays flat (bounded by one shard plus the results) while the flat index grows with the pool. Both must return
the same top-k ids.

Example:
    python benchmarks/search_memory.py                       # as committed (CPU, 1 thread)
    python benchmarks/search_memory.py --sizes 100000 400000 --dim 256 --shard-size 8192
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).parent / "results"


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")


def child(method: str, store_dir: str, queries_path: str, k: int, threads: int, ids_path: str) -> dict[str, Any]:
    """Search once in this process and measure the peak RSS growth of the search alone."""
    import faiss

    from umarvel_st.evaluation.embeddings import EmbeddingStore
    from umarvel_st.evaluation.search import search_shards

    faiss.omp_set_num_threads(threads)
    queries = np.load(queries_path)
    meta = json.loads((Path(store_dir) / "meta.json").read_text())
    store = EmbeddingStore(store_dir, meta["fingerprint"], meta["shard_size"])
    _reset_peak()
    before = _status_kib("VmRSS")
    started = time.perf_counter()
    if method == "sharded":
        _, ids = search_shards(
            store.iter_shards(), [(queries, k)], total_rows=store.num_rows, show_progress_bar=False
        )[0]
    else:
        index = faiss.IndexFlatIP(queries.shape[1])
        index.add(store.load())
        _, ids = index.search(queries, k)
    seconds = time.perf_counter() - started
    peak = _status_kib("VmHWM")
    np.save(ids_path, ids)
    return {"peak_growth_mib": (peak - before) / 1024, "seconds": seconds}


def write_pool(folder: Path, size: int, dim: int, shard_size: int, seed: int) -> None:
    """Random unit vectors, written shard by shard (never the whole pool in memory)."""
    from umarvel_st.evaluation.embeddings import EmbeddingStore

    rng = np.random.default_rng(seed)
    store = EmbeddingStore(folder, {"benchmark": "search_memory", "size": size, "dim": dim}, shard_size)
    for start in range(0, size, shard_size):
        block = rng.standard_normal((min(shard_size, size - start), dim)).astype(np.float32)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        store.append(block)
    store.mark_complete()


def run_child(args: argparse.Namespace, method: str, store_dir: Path, queries: Path, ids: Path) -> dict[str, Any]:
    command = [sys.executable, __file__, "--child", method, str(store_dir), str(queries), str(ids)]
    command += ["--k", str(args.k), "--threads", str(args.threads)]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def report(results: dict[str, Any], output: Path) -> None:
    rows = results["rows"]
    lines = [
        "# Exact search memory: sharded memory-mapped search vs one flat faiss index",
        "",
        f"Random unit vectors, dimension {results['dim']}, {results['num_queries']} queries, top-{results['k']}, "
        f"shard size {results['shard_size']} rows ({results['shard_mib']:.1f} MiB per shard), "
        f"{results['threads']} faiss thread(s); peak RSS growth during the search (`VmHWM`), each run in a fresh process.",
        "",
        "Command:",
        "",
        "```",
        results["command"],
        "```",
        "",
        "| pool size | pool MiB | sharded peak MiB | flat peak MiB | sharded s | flat s | same top-k |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['size']:,} | {row['pool_mib']:.0f} | {row['sharded']['peak_growth_mib']:.1f} | "
            f"{row['flat']['peak_growth_mib']:.1f} | {row['sharded']['seconds']:.2f} | {row['flat']['seconds']:.2f} | "
            f"{'yes' if row['same_top_k'] else 'NO'} |"
        )
    sharded = [row["sharded"]["peak_growth_mib"] for row in rows]
    growth = rows[-1]["size"] / rows[0]["size"]
    lines += [
        "",
        f"Over a {growth:.0f}x larger pool the sharded search's peak went from {sharded[0]:.1f} to {sharded[-1]:.1f} MiB "
        f"(target: flat, about one shard); the flat index's from {rows[0]['flat']['peak_growth_mib']:.1f} to "
        f"{rows[-1]['flat']['peak_growth_mib']:.1f} MiB (the whole pool).",
        "",
        f"Machine: {results['machine']}.",
    ]
    output.with_suffix(".md").write_text("\n".join(lines) + "\n", encoding="utf-8")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 4), dpi=120)
    sizes = [row["size"] for row in rows]
    axes.plot(sizes, [row["flat"]["peak_growth_mib"] for row in rows], "o-", label="one flat faiss index")
    axes.plot(sizes, sharded, "s-", label=f"sharded ({results['shard_size']} rows per shard)")
    axes.plot(sizes, [row["pool_mib"] for row in rows], ":", color="grey", label="pool size on disk")
    axes.set_xscale("log")
    axes.set_xlabel("candidates in the pool")
    axes.set_ylabel("peak RSS growth during search (MiB)")
    axes.set_title(f"Exact top-{results['k']} search memory, dim {results['dim']}", fontsize=9)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(output.with_suffix(".png"))
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[62_500, 125_000, 250_000, 500_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--shard-size", type=int, default=16384)
    parser.add_argument("--num-queries", type=int, default=256)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1, help="faiss OpenMP threads (1 on a shared CPU)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=RESULTS / "mbeir_search_memory")
    parser.add_argument("--child", nargs=4, metavar=("METHOD", "STORE", "QUERIES", "IDS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        method, store_dir, queries_path, ids_path = args.child
        print(json.dumps(child(method, store_dir, queries_path, args.k, args.threads, ids_path)))
        return 0

    rng = np.random.default_rng(args.seed)
    rows = []
    with tempfile.TemporaryDirectory(prefix="search-memory-") as folder:
        root = Path(folder)
        queries = rng.standard_normal((args.num_queries, args.dim)).astype(np.float32)
        queries /= np.linalg.norm(queries, axis=1, keepdims=True)
        np.save(root / "queries.npy", queries)
        for size in sorted(args.sizes):
            store_dir = root / f"pool-{size}"
            write_pool(store_dir, size, args.dim, args.shard_size, args.seed + size)
            row: dict[str, Any] = {"size": size, "pool_mib": size * args.dim * 4 / 2**20}
            for method in ("sharded", "flat"):
                row[method] = run_child(args, method, store_dir, root / "queries.npy", root / f"{method}.npy")
            row["same_top_k"] = bool(np.array_equal(np.load(root / "sharded.npy"), np.load(root / "flat.npy")))
            rows.append(row)
            print(
                f"{size:>10,} candidates: sharded {row['sharded']['peak_growth_mib']:7.1f} MiB, "
                f"flat {row['flat']['peak_growth_mib']:7.1f} MiB, same top-k: {row['same_top_k']}"
            )
            for path in store_dir.iterdir():
                path.unlink()
    results = {
        "command": shlex.join(["python", "benchmarks/search_memory.py", *(sys.argv[1:] if argv is None else argv)]),
        "dim": args.dim,
        "shard_size": args.shard_size,
        "shard_mib": args.shard_size * args.dim * 4 / 2**20,
        "num_queries": args.num_queries,
        "k": args.k,
        "threads": args.threads,
        "machine": f"{platform.processor() or platform.machine()}, {platform.system()} {platform.release()}",
        "rows": rows,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    report(results, args.output)
    print(f"Wrote {args.output.with_suffix('.json')}, .md and .png")
    return 0 if all(row["same_top_k"] for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
