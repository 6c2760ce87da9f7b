"""Embeddings on disk, written shard by shard so that encoding a large pool survives an interruption.

An :class:`EmbeddingStore` is a folder of ``shard-00000.npy``, ``shard-00001.npy``, ... (float32, L2-normalised,
``shard_size`` rows each except the last) and a ``meta.json`` holding a fingerprint of what was encoded. Each
shard is written under a temporary name and renamed, so a crash never leaves half a shard; reopening the store
with the same fingerprint resumes after the last complete shard, and a different fingerprint (other data, other
model tag, other shard size) starts over. Shards are read back as memory maps one at a time, so searching a pool
of millions of rows needs the memory of one shard.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

DEFAULT_SHARD_SIZE = 16384
_SHARD = re.compile(r"^shard-(\d{5})\.npy$")


class EmbeddingStore:
    """A folder of embedding shards for one item stream (see the module docstring).

    Args:
        directory: The folder (created if needed).
        fingerprint: JSON-serialisable description of the items and the encoder; a stored different one makes the
            store start over.
        shard_size: Rows per shard file (also the resume granularity).
    """

    def __init__(self, directory: str | Path, fingerprint: dict[str, Any], shard_size: int = DEFAULT_SHARD_SIZE):
        if shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, got {shard_size}.")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.shard_size = shard_size
        self.fingerprint = json.loads(json.dumps(fingerprint))  # normalised, as it will read back
        meta = self._read_meta()
        if meta is not None and (meta.get("fingerprint") != self.fingerprint or meta.get("shard_size") != shard_size):
            logger.warning("Embeddings in %s were made for other data or settings; encoding again.", self.directory)
            self._clear()
            meta = None
        self.complete = bool(meta and meta.get("complete"))
        self.dim: int | None = meta.get("dim") if meta else None
        self._shards = self._complete_shards()
        if meta is None:
            self._write_meta()

    # Bookkeeping -----------------------------------------------------------------------------------------------

    @property
    def _meta_path(self) -> Path:
        return self.directory / "meta.json"

    def _read_meta(self) -> dict[str, Any] | None:
        if not self._meta_path.is_file():
            return None
        try:
            return json.loads(self._meta_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            return {}

    def _write_meta(self) -> None:
        meta = {
            "fingerprint": self.fingerprint,
            "shard_size": self.shard_size,
            "dim": self.dim,
            "rows": self.num_rows,
            "complete": self.complete,
        }
        temporary = self._meta_path.with_suffix(".tmp")
        temporary.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        os.replace(temporary, self._meta_path)

    def _clear(self) -> None:
        for path in self.directory.iterdir():
            if _SHARD.match(path.name) or path.name in {"meta.json", "ids.npy"} or path.name.endswith(".tmp"):
                path.unlink()

    def _complete_shards(self) -> list[tuple[Path, int]]:
        """Shard files 0, 1, 2, ... that exist in sequence and are full (the last may be short if complete)."""
        shards: list[tuple[Path, int]] = []
        for index in itertools.count():
            path = self.directory / f"shard-{index:05d}.npy"
            if not path.is_file():
                break
            rows = int(np.load(path, mmap_mode="r").shape[0])
            shards.append((path, rows))
            if rows != self.shard_size:
                break
        if shards and shards[-1][1] != self.shard_size and not self.complete:
            shards.pop()  # a short shard is only valid as the last shard of a complete store
        return shards

    @property
    def num_rows(self) -> int:
        """Rows in complete shards (where encoding resumes)."""
        return sum(rows for _, rows in self._shards)

    # Writing ---------------------------------------------------------------------------------------------------

    def append(self, embeddings: np.ndarray) -> None:
        """Write one shard (``shard_size`` rows, fewer only for the last one)."""
        embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
        if self.complete:
            raise ValueError(f"Store {self.directory} is complete; open a new one to write more.")
        if self._shards and self._shards[-1][1] != self.shard_size:
            raise ValueError(f"Store {self.directory} already ends with a short shard; only the last may be short.")
        if embeddings.ndim != 2 or embeddings.shape[0] == 0 or embeddings.shape[0] > self.shard_size:
            raise ValueError(
                f"A shard must have 1..{self.shard_size} rows of one dimension, got shape {embeddings.shape}."
            )
        if self.dim is not None and embeddings.shape[1] != self.dim:
            raise ValueError(f"Embedding dimension changed from {self.dim} to {embeddings.shape[1]}.")
        path = self.directory / f"shard-{len(self._shards):05d}.npy"
        temporary = path.with_name(path.name + ".tmp")
        with temporary.open("wb") as handle:
            np.save(handle, embeddings)
        os.replace(temporary, path)
        self._shards.append((path, embeddings.shape[0]))
        if self.dim is None:
            self.dim = int(embeddings.shape[1])
        self._write_meta()

    def mark_complete(self) -> None:
        """Record that every item is encoded."""
        self.complete = True
        self._write_meta()

    def save_ids(self, ids: np.ndarray) -> None:
        """Keep the row ids (e.g. hashed candidate ids) with the embeddings; cleared with them."""
        temporary = self.directory / "ids.npy.tmp"
        with temporary.open("wb") as handle:
            np.save(handle, np.asarray(ids))
        os.replace(temporary, self.directory / "ids.npy")

    def load_ids(self) -> np.ndarray | None:
        """The ids saved with :meth:`save_ids`, or ``None``."""
        path = self.directory / "ids.npy"
        return np.load(path) if path.is_file() else None

    # Reading ---------------------------------------------------------------------------------------------------

    def iter_shards(self) -> Iterator[tuple[int, np.ndarray]]:
        """``(first row, memory-mapped shard)`` for each shard, in order; drop each before taking the next."""
        offset = 0
        for path, rows in self._shards:
            yield offset, np.load(path, mmap_mode="r")
            offset += rows

    def load(self) -> np.ndarray:
        """All rows in memory, ``(num_rows, dim)`` (for query sets; pools are searched shard by shard)."""
        if not self._shards:
            return np.zeros((0, self.dim or 0), dtype=np.float32)
        return np.concatenate([np.load(path) for path, _ in self._shards])


def encode_to_store(
    store: EmbeddingStore,
    items_from: Callable[[int], Iterator[Any]],
    total: int,
    encode: Callable[[list[Any]], np.ndarray],
    *,
    desc: str = "Encoding",
    show_progress_bar: bool = True,
) -> None:
    """Encode a stream of items into ``store``, resuming where an earlier run stopped.

    Args:
        store: Target store; nothing happens if it is complete.
        items_from: ``items_from(start)`` yields the items from position ``start`` on (so skipped items are never
            built, and images of skipped candidates never touched).
        total: Number of items in the stream.
        encode: Maps a list of items to a ``(len(items), dim)`` array (e.g. ``model.encode_document``).
        desc: Progress bar label.
        show_progress_bar: Show a progress bar over all ``total`` items.

    Raises:
        ValueError: If the encoder returns the wrong shape or non-finite values, or the stream does not hold
            ``total`` items.
    """
    import faiss

    if store.complete:
        return
    start = store.num_rows
    items = items_from(start)
    with tqdm(total=total, initial=start, desc=desc, unit="item", disable=not show_progress_bar) as bar:
        while batch := list(itertools.islice(items, store.shard_size)):
            embeddings = np.array(encode(batch), dtype=np.float32, copy=True)
            if embeddings.ndim != 2 or embeddings.shape[0] != len(batch):
                raise ValueError(
                    f"The encoder returned shape {embeddings.shape} for {len(batch)} items; expected (n, dim)."
                )
            if not np.isfinite(embeddings).all():
                raise ValueError(f"The encoder returned NaN or infinite values while {desc.lower()}.")
            faiss.normalize_L2(embeddings)  # UniIR L2-normalises again before indexing; a no-op on unit rows
            store.append(embeddings)
            bar.update(len(batch))
    if store.num_rows != total:
        raise ValueError(
            f"Expected {total} items but the stream held {store.num_rows}; did the source file change meanwhile?"
        )
    store.mark_complete()
