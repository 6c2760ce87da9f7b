"""Hard-negative mining (``umarvel mine``) and the stage-4 rows built from its lists (spec section 2.1).

Mining embeds every training query exactly as the evaluation does (summarize suffix on, instruction span on,
generation prompt on, the first phrasing of the task's instruction) and every candidate of the split's union pool,
then keeps, per query, the top ``k`` (100) of two exact searches: the query's *local* training pool and the
*global* union pool. The lists are one reusable artefact: stage 4 reads them here, and the re-ranker's negatives and
the distillation data can read them through :class:`MinedLists`.

A task's local training pool is the union pool's candidates of its dataset with the task's candidate modality, in
union-pool order (OVEN and InfoSeek share theirs, as in M-BEIR). The real training split has no local pool files.

Layout of the output folder::

    lists.json                    index: fingerprint (model, data, settings), tasks and their row ranges; written last
    qids.npy                      (queries,) int64 hashed qids; rows are the tasks' query files, task after task
    {local,global}_dids.npy       (queries, k) int64 hashed dids, best first; -1 pads a pool smaller than k
    {local,global}_scores.npy     (queries, k) float32 cosines; -inf on padding
    embeddings/                   the query and pool embedding stores (resume points)
    blocks/                       search results per query block while mining runs (removed at the end)

Exactness. Both searches are :func:`~umarvel_st.evaluation.search.search_shards`, the evaluation's exact sharded
search: ties come out in faiss's order (score descending, then pool row descending). With a CUDA device the
per-shard matrix product runs there (same candidate rule; scores may differ from the CPU's in the last bit).

Resume and memory. Embeddings go to :class:`~umarvel_st.evaluation.embeddings.EmbeddingStore` shards; each query
block's search result is written atomically, so after ``kill -9`` a rerun encodes and searches only what is
missing, and a rerun of a finished folder returns at once. A different model, data or setting (the fingerprint)
starts over. Memory holds one pool shard and one query block at a time, plus the pool's id arrays.

Scale-out. Under ``torchrun`` rank r encodes shards r, r+W, r+2W, ... of the query stream and of the pool (a shard
is one encode call on the same items whichever rank runs it, so the embeddings do not depend on the world size) and
searches query blocks r, r+W, ...; rank 0 writes the lists. They are identical to those of one process.

Negatives (stage 4). Walk the global list in rank order, skip every did of the query's ``pos_cand_list``, keep the
first K = 5 distinct dids; with fewer than K left the first is repeated; with none, K are drawn at random from the
query's local pool minus its positives (seeded per query and epoch). The ``"mixed"`` preset draws random negatives
that way for the tasks in :data:`MIXED_RANDOM_TASKS` (the Qwen3-VL recipe).

Bad input: a repeated did in the pool, a repeated qid in a task file, or a task with no training candidates of its
modality raise before any encoding; a query with no positive in the pool is mined but gets no stage-4 row (logged,
as :func:`~umarvel_st.data.training.mbeir_train` does); a local pool with fewer than K non-positives repeats the
first draw, and one with none raises naming the query; lists made from another model, other data or another pool
raise when read (:meth:`MinedLists.check`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import random
import shutil
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from ..data.mbeir import DID_BOUND, MODALITIES, QID_BOUND, MBEIRData, MBEIRQuery, MBEIRTask, hash_id, unhash_id
from ..evaluation.embeddings import DEFAULT_SHARD_SIZE, EmbeddingStore, encode_to_store
from ..evaluation.search import search_shards

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
LISTS_FILE = "lists.json"
BLOCKS_FILE = "blocks.json"
LIST_NAMES = ("local", "global")
DEFAULT_TOP_K = 100
NUM_NEGATIVES = 5
# Queries per CPU matrix product: bounds the (queries, shard rows) score and tie-bookkeeping memory (~1 GB).
QUERY_BATCH_SIZE = 4096
NO_DID = -1
# Datasets whose training candidates form one local pool: OVEN (5) and InfoSeek (6).
SHARED_POOLS: dict[int, tuple[int, ...]] = {5: (5, 6), 6: (5, 6)}
# Spec 2.1, the Qwen3-VL recipe: random negatives for these tasks, mined ones for the rest.
MIXED_RANDOM_TASKS = frozenset(
    {
        "mscoco_task0",
        "mscoco_task3",
        "fashion200k_task0",
        "fashion200k_task3",
        "edis_task2",
        "nights_task4",
        "infoseek_task6",
        "infoseek_task8",
        "cirr_task7",
    }
)
# Preset name -> tasks that get random negatives instead of mined ones.
NEGATIVE_PRESETS: dict[str, frozenset[str]] = {"mined": frozenset(), "mixed": MIXED_RANDOM_TASKS}


# Negative selection -----------------------------------------------------------------------------------------------


def select_negatives(
    ranked: Sequence[int] | np.ndarray, positives: Collection[int], k: int = NUM_NEGATIVES
) -> list[int]:
    """The spec's mined negatives: walk ``ranked`` in order, skip positives, keep the first ``k`` distinct dids.

    Args:
        ranked: A global list row (hashed dids, best first; ``-1`` padding is skipped).
        positives: Hashed dids of the query's ``pos_cand_list``.
        k: Number of negatives.

    Returns:
        ``k`` dids; with fewer than ``k`` non-positives in the list the first is repeated; ``[]`` if there is none
        (draw random ones then, see :func:`random_negatives`).
    """
    chosen: list[int] = []
    for did in (int(value) for value in ranked):
        if did != NO_DID and did not in positives and did not in chosen:
            chosen.append(did)
            if len(chosen) == k:
                break
    return chosen + chosen[:1] * (k - len(chosen)) if chosen else []


def random_negatives(
    pool: Sequence[int] | np.ndarray, positives: Collection[int], k: int, rng: random.Random, *, where: str = ""
) -> list[int]:
    """``k`` distinct random dids of ``pool`` that are not positives; fewer available: the first is repeated.

    Raises:
        ValueError: If every did of the pool is a positive (``where`` names the query).
    """
    draws = rng.sample(range(len(pool)), min(len(pool), k + len(positives)))  # >= k non-positives if any
    chosen = [int(pool[index]) for index in draws if int(pool[index]) not in positives][:k]
    if not chosen:
        raise ValueError(
            f"{where}: every candidate of the query's local pool ({len(pool)}) is a positive, so there is no negative "
            "to draw. Add candidates to the pool or leave the query out."
        )
    return chosen + chosen[:1] * (k - len(chosen))


# Exact search of the two lists ------------------------------------------------------------------------------------


def _padded(scores: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    pad = k - scores.shape[1]
    return (
        np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf).astype(np.float32),
        np.pad(rows, ((0, 0), (0, pad)), constant_values=NO_DID).astype(np.int64),
    )


def _subset(shards: Sequence[np.ndarray], members: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
    """The rows ``members`` (sorted pool rows) of the pool, shard by shard, numbered 0.. in the subset."""
    offset = 0
    for shard in shards:
        low, high = np.searchsorted(members, [offset, offset + shard.shape[0]])
        if high > low:
            yield int(low), np.asarray(shard[members[low:high] - offset])
        offset += shard.shape[0]


def rank_pools(
    queries: np.ndarray,
    local_pool: np.ndarray,
    pool_shards: Sequence[np.ndarray],
    pool_members: Sequence[np.ndarray],
    k: int,
    *,
    device: str | None = None,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Top-``k`` pool rows of each query in the whole pool (``"global"``) and in its local pool (``"local"``).

    Args:
        queries: ``(n, dim)`` unit vectors.
        local_pool: ``(n,)`` index into ``pool_members`` of each query's local pool.
        pool_shards: The pool's embeddings, shard by shard in row order (memory maps are fine).
        pool_members: Sorted pool rows of each local pool.
        k: List length.
        device: Torch device for the matrix products (``"cuda"``), or ``None`` for faiss on the CPU.

    Returns:
        ``{"global": (scores, rows), "local": (scores, rows)}``, each ``(n, k)``, best first in faiss's tie order,
        padded with ``-inf`` / ``-1`` where a pool has fewer than ``k`` rows.
    """
    # On a GPU the whole block at once: each pool shard crosses to the device once per search.
    batch = queries.shape[0] if device and device.startswith("cuda") else QUERY_BATCH_SIZE
    offsets = np.cumsum([0] + [shard.shape[0] for shard in pool_shards[:-1]]).tolist()
    found = search_shards(
        zip(offsets, pool_shards, strict=True),
        [(queries, k)],
        query_batch_size=batch,
        show_progress_bar=False,
        device=device,
    )
    results = {"global": _padded(*found[0], k)}
    scores = np.full((queries.shape[0], k), -np.inf, dtype=np.float32)
    rows = np.full((queries.shape[0], k), NO_DID, dtype=np.int64)
    for pool in np.unique(local_pool):
        members = pool_members[pool]
        selected = np.flatnonzero(local_pool == pool)
        found_scores, found_rows = search_shards(
            _subset(pool_shards, members),
            [(queries[selected], k)],
            query_batch_size=batch,
            show_progress_bar=False,
            device=device,
        )[0]
        found_scores, found_rows = _padded(found_scores, found_rows, k)
        scores[selected] = found_scores
        rows[selected] = np.where(found_rows >= 0, members[np.maximum(found_rows, 0)], NO_DID)
    results["local"] = (scores, rows)
    return results


# Data: the pool, the query stream, fingerprints -------------------------------------------------------------------


@dataclass
class _Pool:
    path: Path
    dids: np.ndarray  # (rows,) int64 hashed dids
    datasets: np.ndarray  # (rows,) int64 dataset id
    modalities: np.ndarray  # (rows,) int8 index into MODALITIES

    def members(self, task: MBEIRTask) -> np.ndarray:
        """Sorted rows of the task's local training pool."""
        datasets, modality = _pool_key(task)
        return np.flatnonzero(np.isin(self.datasets, datasets) & (self.modalities == MODALITIES.index(modality)))


def _pool_key(task: MBEIRTask) -> tuple[tuple[int, ...], str]:
    """A local pool: (dataset ids, candidate modality)."""
    return SHARED_POOLS.get(task.dataset_id, (task.dataset_id,)), task.candidate_modality


def _read_pool(data: MBEIRData, path: Path) -> _Pool:
    """The union pool's ids, dataset ids and modalities; a repeated did raises."""
    dids, datasets, modalities = [], [], []
    for candidate in data.iter_candidates(path):
        dids.append(hash_id(candidate.did, DID_BOUND, candidate.source))
        datasets.append(dids[-1] // DID_BOUND)
        modalities.append(MODALITIES.index(candidate.modality))
    pool = _Pool(path, np.asarray(dids, np.int64), np.asarray(datasets, np.int64), np.asarray(modalities, np.int8))
    unique, counts = np.unique(pool.dids, return_counts=True)
    if len(unique) != len(pool.dids):
        duplicate = unhash_id(int(unique[counts > 1][0]), DID_BOUND)
        raise ValueError(f"{path}: did {duplicate!r} appears more than once; dids must be unique in a pool.")
    if not len(pool.dids):
        raise ValueError(f"{path} holds no candidates; mining needs the split's union pool.")
    return pool


def _query_rows(data: MBEIRData, tasks: Sequence[MBEIRTask], split: str) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Hashed qids of the query stream (task after task) and each task's row range; a repeated qid raises."""
    qids: list[int] = []
    ranges = []
    for task in tasks:
        start, seen = len(qids), set()
        for query in data.iter_queries(task, split):
            if query.qid in seen:
                raise ValueError(f"{query.source}: qid {query.qid!r} appears more than once in the task's file.")
            seen.add(query.qid)
            qids.append(hash_id(query.qid, QID_BOUND, query.source))
        ranges.append({"name": task.name, "start": start, "stop": len(qids)})
    return np.asarray(qids, dtype=np.int64), ranges


def _file_key(data: MBEIRData, path: Path) -> list[str]:
    """Relative path and SHA-256 of the content: a moved or copied file keeps its key, an edited one changes it."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return [str(path.relative_to(data.root)), digest.hexdigest()]


def data_fingerprint(data: MBEIRData, tasks: Sequence[MBEIRTask], split: str) -> dict[str, Any]:
    """What the lists depend on in the data: the union pool and each task's query file."""
    pool = data.pool_path(tasks[0], "global", split)
    if not pool.is_file():
        raise ValueError(f"Union pool {pool} does not exist; mining searches the split's union candidate pool.")
    return {
        "split": split,
        "pool": _file_key(data, pool),
        "queries": {task.name: _file_key(data, data.query_path(task, split)) for task in tasks},
        "instructions": _file_key(data, data.instructions_path)[1],
    }


def model_folder_fingerprint(path: str | Path) -> dict[str, Any]:
    """A saved model folder: its resolved path and the size and modification time of its weight files."""
    folder = Path(path).resolve()
    if not (folder / "modules.json").is_file():
        raise ValueError(
            f"{path} is not a saved model folder (no modules.json). Pass the folder a stage wrote, e.g. "
            "runs/<recipe>/03-instruction/model."
        )
    weights = sorted(item for item in folder.iterdir() if item.suffix in {".safetensors", ".bin"})
    return {
        "path": str(folder),
        "weights": [[item.name, item.stat().st_size, item.stat().st_mtime_ns] for item in weights],
    }


# The lists on disk ------------------------------------------------------------------------------------------------


class MinedLists:
    """A finished ``umarvel mine`` folder (see the module docstring).

    Args:
        directory: The folder ``umarvel mine --output`` wrote.

    Raises:
        ValueError: If the folder holds no finished lists.
    """

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        index = _read_index(self.directory)
        if index is None or not index.get("complete"):
            raise ValueError(
                f"{self.directory} holds no finished mined lists ({LISTS_FILE} is missing or incomplete). Run "
                f"`umarvel mine --model MODEL --data DATA --output {self.directory}` first (it resumes if "
                "interrupted)."
            )
        self.index = index
        self.fingerprint: dict[str, Any] = index["fingerprint"]
        self.top_k: int = index["top_k"]
        self.qids = np.load(self.directory / "qids.npy", mmap_mode="r")
        self.ranges = {entry["name"]: (entry["start"], entry["stop"]) for entry in index["tasks"]}

    def dids(self, name: str) -> np.ndarray:
        """``(queries, k)`` hashed dids of the ``"local"`` or ``"global"`` lists (a memory map)."""
        return np.load(self.directory / f"{_list_name(name)}_dids.npy", mmap_mode="r")

    def scores(self, name: str) -> np.ndarray:
        """``(queries, k)`` cosines of the ``"local"`` or ``"global"`` lists (a memory map)."""
        return np.load(self.directory / f"{_list_name(name)}_scores.npy", mmap_mode="r")

    def rows(self, task: str) -> range:
        """Rows of a task's queries (in its query file's order)."""
        if task not in self.ranges:
            raise ValueError(f"The lists in {self.directory} have no task {task!r}; they hold {list(self.ranges)}.")
        return range(*self.ranges[task])

    def check(self, data: MBEIRData, tasks: Sequence[MBEIRTask], model: str | Path | None = None) -> None:
        """Refuse lists mined from other data, another pool or (when ``model`` is given) another model.

        Raises:
            ValueError: Naming what differs and the command that makes matching lists.
        """
        fix = f"Mine again: umarvel mine --model MODEL --data {data.root} --output {self.directory}"
        expected = json.loads(json.dumps(data_fingerprint(data, tasks, self.fingerprint["data"]["split"])))
        stored = self.fingerprint["data"]
        if expected["pool"] != stored["pool"]:
            raise ValueError(
                f"The lists in {self.directory} were mined over pool {stored['pool']}, but the data has "
                f"{expected['pool']} (path, SHA-256). {fix}."
            )
        for task in tasks:
            if stored["queries"].get(task.name) != expected["queries"][task.name]:
                raise ValueError(
                    f"The lists in {self.directory} were mined for {task.name} queries "
                    f"{stored['queries'].get(task.name)}, but the data has {expected['queries'][task.name]}. {fix}."
                )
        stored_model = self.fingerprint["model"]
        if model is not None and stored_model != json.loads(json.dumps(model_folder_fingerprint(model))):
            name = stored_model.get("path") if isinstance(stored_model, dict) else stored_model
            raise ValueError(
                f"The lists in {self.directory} were mined with model {name}, not {Path(model).resolve()} (or its "
                f"weights changed since). {fix.replace('MODEL', str(model))}."
            )


def _list_name(name: str) -> str:
    if name not in LIST_NAMES:
        raise ValueError(f"Unknown list {name!r}; use one of {list(LIST_NAMES)}.")
    return name


def _read_index(directory: Path, name: str = LISTS_FILE) -> dict[str, Any] | None:
    path = directory / name
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return None


def _write_json(path: Path, value: dict[str, Any]) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(value, indent=2) + "\n", encoding="utf-8")
    os.replace(temporary, path)


# Processes --------------------------------------------------------------------------------------------------------


@dataclass
class _World:
    """This process's rank among ``size`` mining processes (torchrun sets ``WORLD_SIZE``)."""

    rank: int = 0
    size: int = 1
    created: bool = False

    @classmethod
    def join(cls) -> _World:
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return cls()
        import torch.distributed as dist

        created = not dist.is_initialized()
        if created:  # gloo only synchronises the steps; encoding a large pool can keep a rank busy for hours
            dist.init_process_group("gloo", timeout=timedelta(hours=48))
        return cls(dist.get_rank(), dist.get_world_size(), created)

    def barrier(self) -> None:
        if self.size > 1:
            import torch.distributed as dist

            dist.barrier()

    def leave(self) -> None:
        if self.created:
            import torch.distributed as dist

            dist.destroy_process_group()


def _part(folder: Path, rank: int, world: int) -> Path:
    return folder / f"part-{rank:03d}-of-{world:03d}"


def _open_part(folder: Path, fingerprint: dict[str, Any], rank: int, world: int, shard_size: int) -> EmbeddingStore:
    return EmbeddingStore(_part(folder, rank, world), {**fingerprint, "part": [rank, world]}, shard_size)


def _encode_stripes(
    folder: Path,
    fingerprint: dict[str, Any],
    items: Callable[[], Iterator[Callable[[], Any]]],
    total: int,
    encode: Callable[[list[Any]], np.ndarray],
    world: _World,
    shard_size: int,
    desc: str,
    show_progress_bar: bool,
) -> None:
    """Encode this rank's shards (r, r+W, ...) of a stream of ``total`` item builders into its part store."""
    my_shards = range(world.rank, math.ceil(total / shard_size), world.size)
    rows = sum(min(shard_size, total - shard * shard_size) for shard in my_shards)
    store = _open_part(folder, fingerprint, world.rank, world.size, shard_size)

    def items_from(start: int) -> Iterator[Any]:
        wanted = set(my_shards[start // shard_size :])  # the store resumes after whole shards
        for position, build in enumerate(items()):
            if position // shard_size in wanted:
                yield build()

    encode_to_store(store, items_from, rows, encode, desc=desc, show_progress_bar=show_progress_bar)


def _read_stripes(
    folder: Path, fingerprint: dict[str, Any], total: int, world: int, shard_size: int
) -> list[np.ndarray]:
    """Every shard of a striped stream, in stream order (memory maps)."""
    parts = []
    for rank in range(world):
        store = _open_part(folder, fingerprint, rank, world, shard_size)
        if not store.complete:
            raise RuntimeError(f"Embedding part {store.directory} is not complete; did another rank fail?")
        parts.append([shard for _, shard in store.iter_shards()])
    return [parts[shard % world][shard // world] for shard in range(math.ceil(total / shard_size))]


# Mining -----------------------------------------------------------------------------------------------------------


def mine(
    model: Any,
    data_root: str | Path,
    output_dir: str | Path,
    *,
    model_tag: dict[str, Any] | str | None = None,
    tasks: Sequence[str] | None = None,
    split: str = "train",
    top_k: int = DEFAULT_TOP_K,
    batch_size: int = 32,
    shard_size: int = DEFAULT_SHARD_SIZE,
    device: str | None = "auto",
    show_progress_bar: bool = True,
) -> Path:
    """Write the local and global top-``k`` lists of every query of ``split`` (see the module docstring).

    Args:
        model: A saved model folder (loaded with :func:`umarvel_st.load`), or an object with ``encode_query`` /
            ``encode_document`` (then pass ``model_tag``).
        data_root: The M-BEIR data root (real or synthetic).
        output_dir: Where the lists go; rerunning resumes, a finished folder with the same fingerprint is reused.
        model_tag: What identifies the model in the fingerprint (computed from the folder when ``model`` is one).
        tasks: Task names; default every task with a query file for ``split``.
        split: Query split and union pool (``"train"``).
        top_k: List length (100).
        batch_size: Encoding batch size.
        shard_size: Rows per embedding shard and per query block (resume granularity, memory of one search step).
        device: Torch device of the model and of the search's matrix products; ``"auto"``: this rank's CUDA device
            when there is one, else the CPU with faiss; ``None``: CPU and faiss.
        show_progress_bar: Progress bars (on rank 0).

    Returns:
        The output folder.

    Raises:
        ValueError: For bad input (see the module docstring) or a model object without ``model_tag``.
    """
    if top_k < 1 or shard_size < 1 or batch_size < 1:
        raise ValueError(f"top_k, shard_size and batch_size must be >= 1, got {top_k}, {shard_size}, {batch_size}.")
    if device == "auto":
        import torch

        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}" if torch.cuda.is_available() else None
    if isinstance(model, (str, os.PathLike)):
        from ..model import load

        model_tag = model_folder_fingerprint(model)
        model = load(os.fspath(model), device=device)
    elif model_tag is None:
        raise ValueError(
            "Pass model_tag (a name or dict identifying the model) when model is an object, not a folder."
        )
    world = _World.join()
    try:
        return _mine(
            model,
            model_tag,
            MBEIRData(data_root),
            Path(output_dir),
            world,
            tasks=tasks,
            split=split,
            top_k=top_k,
            batch_size=batch_size,
            shard_size=shard_size,
            device=device,
            show_progress_bar=show_progress_bar,
        )
    finally:
        world.leave()


def _mine(
    model: Any,
    model_tag: dict[str, Any] | str,
    data: MBEIRData,
    output: Path,
    world: _World,
    *,
    tasks: Sequence[str] | None,
    split: str,
    top_k: int,
    batch_size: int,
    shard_size: int,
    device: str | None,
    show_progress_bar: bool,
) -> Path:
    """:func:`mine` in this process (rank ``world.rank`` of ``world.size``)."""
    tasks = data.resolve_tasks(tasks, split)
    fingerprint = json.loads(
        json.dumps(
            {
                "format": FORMAT_VERSION,
                "model": model_tag,
                "data": data_fingerprint(data, tasks, split),
                "settings": {
                    "top_k": top_k,
                    "shard_size": shard_size,
                    "summarize_suffix": True,
                    "generation_prompt": True,
                    "instruction": "first phrasing",
                },
            }
        )
    )
    existing = _read_index(output)
    blocks = output / "blocks"
    if existing is not None and existing.get("complete") and existing.get("fingerprint") == fingerprint:
        logger.info("The lists in %s are up to date.", output)
        if world.rank == 0:
            shutil.rmtree(blocks, ignore_errors=True)  # left behind if a run was killed right after the lists
        return output
    pool = _read_pool(data, data.pool_path(tasks[0], "global", split))
    qids, ranges = _query_rows(data, tasks, split)
    keys = list(dict.fromkeys(_pool_key(task) for task in tasks))
    members = []
    for key in keys:
        task = next(task for task in tasks if _pool_key(task) == key)
        members.append(pool.members(task))
        if not len(members[-1]):
            raise ValueError(
                f"{pool.path} has no candidates of dataset id(s) {list(key[0])} with modality {key[1]!r}, so "
                f"{task.name} has an empty local training pool. Add its training candidates to the union pool."
            )
    local_pool = np.concatenate(
        [
            np.full(entry["stop"] - entry["start"], keys.index(_pool_key(task)))
            for entry, task in zip(ranges, tasks, strict=True)
        ]
    )
    show = show_progress_bar and world.rank == 0

    if world.rank == 0:
        output.mkdir(parents=True, exist_ok=True)
        stale = _read_index(blocks, BLOCKS_FILE) if blocks.is_dir() else None
        if stale is not None and stale.get("fingerprint") != fingerprint:
            logger.warning(
                "Search results in %s were made for another model, data or settings; searching again.", blocks
            )
            shutil.rmtree(blocks)
        (output / LISTS_FILE).unlink(missing_ok=True)
        blocks.mkdir(exist_ok=True)
        _write_json(blocks / BLOCKS_FILE, {"fingerprint": fingerprint})
    world.barrier()

    encoder = _force_mining_settings(model)
    try:
        kwargs = {
            "batch_size": batch_size,
            "show_progress_bar": False,
            "convert_to_numpy": True,
            "normalize_embeddings": True,
        }
        store_key = {"model": fingerprint["model"], "data": fingerprint["data"]}
        _encode_stripes(
            output / "embeddings" / "queries",
            {**store_key, "kind": "queries"},
            lambda: _query_items(data, tasks, split),
            len(qids),
            lambda items: model.encode_query(items, **kwargs),
            world,
            shard_size,
            "Encoding training queries",
            show,
        )
        _encode_stripes(
            output / "embeddings" / "pool",
            {**store_key, "kind": "pool"},
            lambda: _pool_items(data, pool.path),
            len(pool.dids),
            lambda items: model.encode_document(items, **kwargs),
            world,
            shard_size,
            "Encoding the training pool",
            show,
        )
    finally:
        encoder()
    world.barrier()

    query_shards = _read_stripes(
        output / "embeddings" / "queries", {**store_key, "kind": "queries"}, len(qids), world.size, shard_size
    )
    pool_shards = _read_stripes(
        output / "embeddings" / "pool", {**store_key, "kind": "pool"}, len(pool.dids), world.size, shard_size
    )
    my_blocks = range(world.rank, len(query_shards), world.size)
    for block in tqdm(my_blocks, desc="Searching query blocks", unit="block", disable=not show):
        path = blocks / f"block-{block:05d}.npz"
        if path.is_file():
            continue
        start = block * shard_size
        queries = np.asarray(query_shards[block], dtype=np.float32)
        found = rank_pools(
            queries, local_pool[start : start + len(queries)], pool_shards, members, top_k, device=device
        )
        arrays = {}
        for name, (scores, rows) in found.items():
            arrays[f"{name}_scores"] = scores
            arrays[f"{name}_dids"] = np.where(rows >= 0, pool.dids[np.maximum(rows, 0)], NO_DID)
        temporary = path.with_name(path.name + ".tmp")
        with temporary.open("wb") as handle:
            np.savez(handle, **arrays)
        os.replace(temporary, path)
    world.barrier()

    if world.rank == 0:
        _merge(output, blocks, len(query_shards), len(qids), top_k)
        np.save(output / "qids.npy", qids)
        index = {
            "format": FORMAT_VERSION,
            "fingerprint": fingerprint,
            "top_k": top_k,
            "num_queries": len(qids),
            "pool_size": len(pool.dids),
            "tasks": [
                {**entry, "local_pool_size": int(len(members[keys.index(_pool_key(task))]))}
                for entry, task in zip(ranges, tasks, strict=True)
            ],
            "complete": True,
        }
        _write_json(output / LISTS_FILE, index)
        shutil.rmtree(blocks)
        logger.info("Wrote the mined lists of %d queries to %s", len(qids), output)
    world.barrier()
    return output


def _merge(output: Path, blocks: Path, num_blocks: int, num_queries: int, top_k: int) -> None:
    """Concatenate the query blocks into the four list arrays (memory-mapped, written under temporary names)."""
    targets = {}
    for name in LIST_NAMES:
        for kind, dtype in (("dids", np.int64), ("scores", np.float32)):
            path = output / f"{name}_{kind}.npy.tmp"
            targets[f"{name}_{kind}"] = (path, np.lib.format.open_memmap(path, "w+", dtype, (num_queries, top_k)))
    start = 0
    for block in range(num_blocks):
        with np.load(blocks / f"block-{block:05d}.npz") as arrays:
            stop = start + arrays["global_dids"].shape[0]
            for key, (_, array) in targets.items():
                array[start:stop] = arrays[key]
        start = stop
    assert start == num_queries, (start, num_queries)
    for key, (path, array) in targets.items():
        array.flush()
        del array
        os.replace(path, output / f"{key}.npy")


def _query_items(data: MBEIRData, tasks: Sequence[MBEIRTask], split: str) -> Iterator[Callable[[], Any]]:
    """Item builders of the query stream: each query with the first phrasing of its task's instruction."""
    for task in tasks:
        for query in data.iter_queries(task, split):
            yield lambda query=query, task=task: data.query_item(query, mining_instruction(data, query, task))


def mining_instruction(data: MBEIRData, query: MBEIRQuery, task: MBEIRTask) -> str:
    """The instruction a query is mined with (the first phrasing of its task's), so later steps can use the same."""
    return data.instructions_for(int(query.qid.split(":")[0]), query.modality, task.candidate_modality)[0]


def _pool_items(data: MBEIRData, path: Path) -> Iterator[Callable[[], Any]]:
    for candidate in data.iter_candidates(path):
        yield lambda candidate=candidate: data.candidate_item(candidate)


def _force_mining_settings(model: Any) -> Callable[[], None]:
    """Embed with the suffix and the generation prompt on (spec 2.1, as at evaluation); returns the undo."""
    encoder = model[0] if hasattr(model, "__getitem__") and hasattr(model, "encode_query") else None
    if encoder is None or not hasattr(encoder, "summarize_suffix"):
        return lambda: None
    saved = (encoder.summarize_suffix, encoder.generation_prompt)
    encoder.summarize_suffix, encoder.generation_prompt = True, True

    def undo() -> None:
        encoder.summarize_suffix, encoder.generation_prompt = saved

    return undo


# Stage 4 rows -----------------------------------------------------------------------------------------------------


def mbeir_hard_negatives(
    root: str | Path,
    lists: str | Path,
    *,
    tasks: Sequence[str] | None = None,
    instructions: bool = True,
    epochs: int = 1,
    seed: int = 0,
    num_negatives: int = NUM_NEGATIVES,
    negatives: str = "mined",
    model: str | Path | None = None,
    max_queries_per_task: int | None = None,
):
    """Stage-4 rows: M-BEIR training queries, one positive, and ``num_negatives`` negatives from mined lists.

    The query, its instruction and its positive are drawn exactly as :func:`~umarvel_st.data.training.mbeir_train`
    draws them for the same ``seed`` (``random.Random(f"{seed}:{epoch}:{qid}")``, per sample and epoch, epochs
    stacked); the negatives follow :func:`select_negatives`, or :func:`random_negatives` over the query's local pool
    for the preset's random tasks and for queries whose global list holds only positives. Candidates and negatives
    are candidate items (no instruction).

    Args:
        root: The M-BEIR data root the lists were mined from.
        lists: A finished ``umarvel mine`` folder.
        tasks: Task names; default every task of the lists' split.
        instructions: Put a task instruction on each query.
        epochs: Number of epochs to draw.
        seed: Seed of the draws.
        num_negatives: Negatives per row (K = 5).
        negatives: A preset of :data:`NEGATIVE_PRESETS`: ``"mined"``, or ``"mixed"`` (random for
            :data:`MIXED_RANDOM_TASKS`).
        model: The model the lists must come from (its folder); checked against the lists' fingerprint.
        max_queries_per_task: Keep only the first N queries of each task (for quick runs).

    Returns:
        A ``datasets.Dataset`` with ``anchor``, ``positive`` and ``negative_1`` .. ``negative_<K>``.

    Raises:
        ValueError: For an unknown preset, lists from other data or another model, or a query whose local pool
            holds only positives when it needs random negatives.
    """
    from datasets import Dataset

    if negatives not in NEGATIVE_PRESETS:
        raise ValueError(f"Unknown negatives preset {negatives!r}; use one of {sorted(NEGATIVE_PRESETS)}.")
    if num_negatives < 1 or epochs < 1:
        raise ValueError(f"num_negatives and epochs must be >= 1, got {num_negatives} and {epochs}.")
    data = MBEIRData(root)
    try:
        mined = MinedLists(lists)
    except ValueError as error:
        command = f"umarvel mine --model {model or 'MODEL'} --data {root} --output {lists}"
        raise ValueError(
            f"Stage 4 reads hard negatives mined with the previous stage's model, and {lists} holds none yet. Run "
            f"`{command}` (it resumes if interrupted), then run the training again."
        ) from error
    split = mined.fingerprint["data"]["split"]
    selected = data.resolve_tasks(tasks, split)
    mined.check(data, selected, model)
    pool = _read_pool(data, data.pool_path(selected[0], "global", split))
    candidates = {candidate.did: candidate for candidate in data.iter_candidates(pool.path)}
    did_of = {hash_id(did, DID_BOUND): did for did in candidates}
    global_dids = mined.dids("global")
    random_tasks = NEGATIVE_PRESETS[negatives]
    records, skipped = [], 0
    for epoch in range(epochs):
        for task in selected:
            local = pool.dids[pool.members(task)]
            rows = mined.rows(task.name)
            for number, query in enumerate(data.iter_queries(task, split)):
                if max_queries_per_task is not None and number >= max_queries_per_task:
                    break
                if int(mined.qids[rows[number]]) != hash_id(query.qid, QID_BOUND):
                    raise ValueError(f"{query.source}: the lists' row {rows[number]} is another query; mine again.")
                positives = [did for did in query.pos_cand_list if did in candidates]
                if not positives:
                    skipped += epoch == 0
                    continue
                rng = random.Random(f"{seed}:{epoch}:{query.qid}")
                positive = candidates[rng.choice(positives)]
                instruction = None
                if instructions:
                    dataset_id = int(query.qid.split(":")[0])
                    instruction = rng.choice(
                        data.instructions_for(dataset_id, query.modality, task.candidate_modality)
                    )
                excluded = {hash_id(did, DID_BOUND, query.source) for did in query.pos_cand_list}
                chosen = (
                    []
                    if task.name in random_tasks
                    else select_negatives(global_dids[rows[number]], excluded, num_negatives)
                )
                if not chosen:
                    chosen = random_negatives(local, excluded, num_negatives, rng, where=query.source)
                record = {"anchor": data.query_item(query, instruction), "positive": _candidate(data, positive)}
                for index, did in enumerate(chosen, start=1):
                    record[f"negative_{index}"] = _candidate(data, candidates[did_of[did]])
                records.append(record)
    if skipped:
        logger.warning("%d queries have no positive in %s and get no stage-4 row.", skipped, pool.path)
    if not records:
        raise ValueError(
            f"No stage-4 rows: none of the queries of {[task.name for task in selected]} has a positive in "
            f"{pool.path}."
        )
    return Dataset.from_list(records)


def _candidate(data: MBEIRData, candidate: Any) -> dict[str, Any]:
    """A candidate item with one column type for every row: text-only candidates become ``{"text", "image": None}``."""
    item = data.candidate_item(candidate)
    return {"text": item, "image": None} if isinstance(item, str) else {"text": None, "image": None, **item}


# Command line -----------------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``umarvel mine``."""
    from ..data.mbeir import SPLITS

    parser.add_argument("--model", required=True, help="a saved U-MARVEL model folder (the stage-3 model)")
    parser.add_argument("--data", required=True, help="M-BEIR data root (holds query/, cand_pool/, ...)")
    parser.add_argument("--output", required=True, help="folder of the lists (rerun the command to resume)")
    parser.add_argument("--top-k", type=int, default=DEFAULT_TOP_K, help="list length (default: 100)")
    parser.add_argument("--split", choices=SPLITS, default="train", help="query split and union pool (default: train)")
    parser.add_argument("--tasks", nargs="+", help="tasks to mine (default: every task of the split)")
    parser.add_argument("--batch-size", type=int, default=32, help="encoding batch size (default: 32)")
    parser.add_argument(
        "--shard-size", type=int, default=DEFAULT_SHARD_SIZE, help="rows per embedding shard and query block"
    )
    parser.add_argument(
        "--device",
        default="auto",
        help="torch device of the model and the search (cuda, cuda:1, cpu); auto: CUDA if available, else faiss",
    )
    parser.add_argument("--no-progress-bar", action="store_true", help="hide progress bars")


def run(args: argparse.Namespace) -> int:
    """Run ``umarvel mine`` (under ``torchrun`` too: each process takes a slice)."""
    output = mine(
        args.model,
        args.data,
        args.output,
        tasks=args.tasks,
        split=args.split,
        top_k=args.top_k,
        batch_size=args.batch_size,
        shard_size=args.shard_size,
        device=args.device,
        show_progress_bar=not args.no_progress_bar,
    )
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"lists: {output}")
    return 0
