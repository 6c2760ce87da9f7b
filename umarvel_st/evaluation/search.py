"""Exact inner-product top-k over embeddings stored in shards, with faiss's result order, in bounded memory.

Each shard is searched with ``faiss.knn`` (exact, inner product) and the per-shard results are merged, so memory
holds one shard plus ``O(num_queries * k)`` results, whatever the pool size. The merged top-k, tie order
included, is what one ``faiss.IndexFlatIP`` over the whole pool returns (for k <= 100, where faiss keeps a heap):

faiss scans the database in index order and keeps a size-k heap whose top is the worst kept entry (lowest score,
lowest index among equal scores); a new entry replaces the top only if its score is strictly higher. So among
candidates tied with the k-th score, which ones survive depends on the scan: the first k of the ">= k-th score"
entries in index order are inserted, then every higher-scoring entry arriving later evicts the lowest-index tied
one. The output is sorted by score, and by index *descending* among equal scores. :func:`search_shards`
reproduces this exactly: per shard it keeps every entry above that shard's k-th score and the k lowest-index
entries equal to it (enough to replay the scan, and closed under merging), then replays the heap on what is left.
Rows where faiss's own top-(k+1) shows a tie across the k-th place are re-scored exactly for that shard.

Scores are float32 inner products as BLAS computes them; across different code paths the last bit can differ,
which can only swap candidates whose scores differ in the last bit.

With ``device`` (e.g. ``"cuda"``), each shard's scores are one float32 torch matrix product on that device instead of
a faiss call, and the per-shard candidates follow the same rule, so the merge and the tie order are unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
from tqdm.auto import tqdm

_NO_ID = -1


def _sort_by_id(values: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sort each row by id, padding (id -1) last."""
    order = np.argsort(np.where(ids >= 0, ids, np.iinfo(np.int64).max), axis=1, kind="stable")
    return np.take_along_axis(values, order, axis=1), np.take_along_axis(ids, order, axis=1)


def _kth_largest(values: np.ndarray, valid: np.ndarray, k: int) -> np.ndarray:
    """Per row, the k-th largest valid value, or -inf when a row has fewer than k valid values."""
    masked = np.where(valid, values, -np.inf)
    if masked.shape[1] < k:
        return np.full(masked.shape[0], -np.inf, dtype=values.dtype)
    return -np.partition(-masked, k - 1, axis=1)[:, k - 1]


def _compact(values: np.ndarray, ids: np.ndarray, keep: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Move the kept entries of each row to the front (order preserved) and cut to ``width`` columns."""
    order = np.argsort(~keep, axis=1, kind="stable")[:, :width]
    kept = np.take_along_axis(keep, order, axis=1)
    values = np.where(kept, np.take_along_axis(values, order, axis=1), -np.inf)
    ids = np.where(kept, np.take_along_axis(ids, order, axis=1), _NO_ID)
    if values.shape[1] < width:
        pad = width - values.shape[1]
        values = np.pad(values, ((0, 0), (0, pad)), constant_values=-np.inf)
        ids = np.pad(ids, ((0, 0), (0, pad)), constant_values=_NO_ID)
    return values, ids


def _reduce(values: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Keep what can still reach faiss's final top-k: every entry above the k-th largest value and the k
    lowest-id entries equal to it. Returns ``(n, 2k)`` arrays sorted by id, padded with id -1."""
    values, ids = _sort_by_id(values, ids)
    valid = ids >= 0
    kth = _kth_largest(values, valid, k)[:, None]
    above = valid & (values > kth)
    equal = valid & (values == kth)
    keep = above | (equal & (np.cumsum(equal, axis=1) <= k))
    return _compact(values, ids, keep, 2 * k)


def _heap_order(values: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Replay faiss's heap on reduced candidates: the final top-k, by score then id descending."""
    values, ids = _sort_by_id(values, ids)
    valid = ids >= 0
    kth = _kth_largest(values, valid, k)[:, None]
    above = valid & (values > kth)
    equal = valid & (values == kth)
    scan_head = (above | equal) & (np.cumsum(above | equal, axis=1) <= k)  # first k entries >= kth, by id
    inserted_ties = equal & scan_head
    # Each higher entry scanned after the heap filled evicts the lowest-id tie still kept.
    evicted = inserted_ties.sum(axis=1) - (k - above.sum(axis=1))
    final = above | (inserted_ties & (np.cumsum(inserted_ties, axis=1) > evicted[:, None]))
    values = np.where(final, values, -np.inf)
    ids = np.where(final, ids, _NO_ID)
    order = np.lexsort((-ids, -values), axis=1)[:, :k]
    return np.take_along_axis(values, order, axis=1), np.take_along_axis(ids, order, axis=1)


def _shard_candidates(queries: np.ndarray, shard: np.ndarray, offset: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """faiss top-k of one shard, as ``(n, 2k)`` candidates satisfying the :func:`_reduce` rule; global ids."""
    import faiss

    depth = min(k + 1, shard.shape[0])
    values, ids = faiss.knn(queries, shard, depth, metric=faiss.METRIC_INNER_PRODUCT)
    if depth > k:
        # A tie across the k-th place: faiss's top-k set is then one of several; re-score those rows exactly.
        tied = np.nonzero(values[:, k - 1] == values[:, k])[0]
        values, ids = values[:, :k], ids[:, :k]
        values = np.pad(values, ((0, 0), (0, k)), constant_values=-np.inf)
        ids = np.pad(ids, ((0, 0), (0, k)), constant_values=_NO_ID)
        if tied.size:
            scores = queries[tied] @ np.asarray(shard).T  # (tied, shard rows)
            all_ids = np.broadcast_to(np.arange(shard.shape[0], dtype=np.int64), scores.shape)
            values[tied], ids[tied] = _reduce(scores, all_ids, k)
    else:
        values, ids = _compact(values, ids, ids >= 0, 2 * k)
    return values, np.where(ids >= 0, ids + offset, _NO_ID)


def _torch_shard_candidates(
    queries: np.ndarray, shard: np.ndarray, offset: int, k: int, device: str
) -> tuple[np.ndarray, np.ndarray]:
    """The :func:`_shard_candidates` rule on float32 torch scores computed on ``device`` (TF32 off, the default)."""
    import torch

    scores = torch.tensor(queries, device=device) @ torch.tensor(shard, device=device).T  # (n, shard rows)
    kth = torch.topk(scores, min(k, shard.shape[0]), dim=1).values[:, -1:]  # (n, 1)
    equal = scores == kth
    keep = (scores > kth) | (equal & (torch.cumsum(equal, dim=1) <= k))  # at most 2k - 1 entries per row
    row, column = torch.nonzero(keep, as_tuple=True)
    slot = (torch.cumsum(keep, dim=1) - 1)[row, column]
    values = torch.full((queries.shape[0], 2 * k), -torch.inf, device=device)
    ids = torch.full((queries.shape[0], 2 * k), _NO_ID, dtype=torch.int64, device=device)
    values[row, slot] = scores[row, column]
    ids[row, slot] = column + offset
    return values.cpu().numpy(), ids.cpu().numpy()


def search_shards(
    shards: Iterable[tuple[int, np.ndarray]],
    query_sets: Sequence[tuple[np.ndarray, int]],
    *,
    query_batch_size: int = 1024,
    total_rows: int | None = None,
    show_progress_bar: bool = True,
    device: str | None = None,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Exact inner-product top-k of several query sets over one sharded database, in faiss's order.

    The database is read once, shard by shard; each query set has its own k.

    Args:
        shards: ``(first row, array)`` per shard, in row order (e.g. ``EmbeddingStore.iter_shards()``); arrays may
            be memory maps, float32 ``(rows, dim)``.
        query_sets: ``(queries (n, dim) float32, k)`` per set.
        query_batch_size: Queries per faiss call (bounds the temporary score memory).
        total_rows: Database size, for the progress bar.
        show_progress_bar: Show progress over database rows.
        device: Compute the scores with torch on this device (``"cuda"``); ``None`` uses faiss on the CPU.

    Returns:
        Per query set, ``(scores (n, k'), row ids (n, k'))`` best first, with ``k' = min(k, database rows)``;
        identical to ``faiss.IndexFlatIP`` over the concatenated shards for k <= 100 (see the module docstring).

    Raises:
        ValueError: For k < 1, an empty database, or mismatched dimensions.
    """
    states: list[tuple[np.ndarray, np.ndarray] | None] = [None] * len(query_sets)
    prepared = []
    for queries, k in query_sets:
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}.")
        prepared.append((np.ascontiguousarray(queries, dtype=np.float32), k))
    rows_seen = 0
    with tqdm(total=total_rows, desc="Searching", unit="row", disable=not show_progress_bar) as bar:
        for offset, shard in shards:
            shard = np.ascontiguousarray(shard, dtype=np.float32)  # one shard in memory at a time
            for index, (queries, k) in enumerate(prepared):
                if queries.shape[1] != shard.shape[1]:
                    raise ValueError(
                        f"Query dimension {queries.shape[1]} does not match the database dimension {shard.shape[1]}."
                    )
                merged = []
                for start in range(0, queries.shape[0], query_batch_size):
                    block = queries[start : start + query_batch_size]
                    if device is None:
                        values, ids = _shard_candidates(block, shard, offset, k)
                    else:
                        values, ids = _torch_shard_candidates(block, shard, offset, k, device)
                    if states[index] is not None:
                        previous_values, previous_ids = states[index]
                        stop = start + block.shape[0]
                        values = np.concatenate([previous_values[start:stop], values], axis=1)
                        ids = np.concatenate([previous_ids[start:stop], ids], axis=1)
                    merged.append(_reduce(values, ids, k))
                if merged:
                    states[index] = (np.concatenate([m[0] for m in merged]), np.concatenate([m[1] for m in merged]))
            rows_seen += shard.shape[0]
            bar.update(shard.shape[0])
            del shard
    if rows_seen == 0:
        raise ValueError("The database is empty; nothing to search.")
    results = []
    for state, (_, k) in zip(states, prepared, strict=True):
        if state is None:  # no queries in this set
            empty = min(k, rows_seen)
            results.append((np.zeros((0, empty), np.float32), np.zeros((0, empty), np.int64)))
            continue
        values, ids = _heap_order(*state, min(k, rows_seen))
        results.append((values.astype(np.float32), ids))
    return results


def exact_search(
    queries: np.ndarray, database: np.ndarray, k: int, *, shard_size: int = 65536, show_progress_bar: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`search_shards` for one in-memory (or memory-mapped) database split into ``shard_size`` rows."""
    shards = ((start, database[start : start + shard_size]) for start in range(0, database.shape[0], shard_size))
    return search_shards(shards, [(queries, k)], total_rows=database.shape[0], show_progress_bar=show_progress_bar)[0]
