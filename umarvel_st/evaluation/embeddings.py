"""Embeddings on disk, written shard by shard so that encoding a large pool survives an interruption.

An :class:`EmbeddingStore` is a folder of ``shard-00000.npy``, ``shard-00001.npy``, ... (float32, L2-normalised,
``shard_size`` rows each except the last) and a ``meta.json`` holding a fingerprint of what was encoded (the data
and the model, see :mod:`umarvel_st.evaluation.fingerprint`). Each shard is written under a temporary name and
renamed, so a crash never leaves half a shard; reopening the store with the same fingerprint resumes with the
missing shards, and a different fingerprint (other data, other model weights or options, other shard size) starts
over, with a warning that says what differs.

Cache files are checked before they are used: a shard file that cannot be read, is empty or truncated, has another
dimension or is not float32 is deleted and encoded again, and so is a missing shard (also one in the middle) or one
with the wrong number of rows; ``ids.npy`` is checked against the checksum kept in ``meta.json``. Shard values are
checked when they are read (NaN or infinite values raise, naming the file). Shards are read back as memory maps
one at a time, so searching a pool of millions of rows needs the memory of one shard.
"""

from __future__ import annotations

import hashlib
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


def _differences(stored: Any, current: Any, prefix: str = "") -> list[str]:
    """Dotted keys where two fingerprints differ (the whole value when either is not a dict)."""
    if not isinstance(stored, dict) or not isinstance(current, dict):
        return [] if stored == current else [prefix or "fingerprint"]
    return [
        difference
        for key in sorted(set(stored) | set(current))
        for difference in _differences(stored.get(key), current.get(key), f"{prefix}.{key}" if prefix else key)
    ]


def _array_digest(array: np.ndarray) -> str:
    return hashlib.sha256(
        f"{array.dtype.str}{array.shape}".encode() + np.ascontiguousarray(array).tobytes()
    ).hexdigest()


class EmbeddingStore:
    """A folder of embedding shards for one item stream (see the module docstring).

    Args:
        directory: The folder (created if needed).
        fingerprint: JSON-serialisable description of the items and the encoder; a stored different one makes the
            store start over.
        shard_size: Rows per shard file (also the resume granularity).
    """

    def __init__(self, directory: str | Path, fingerprint: dict[str, Any], shard_size: int = DEFAULT_SHARD_SIZE):
        if isinstance(shard_size, bool) or not isinstance(shard_size, int) or shard_size < 1:
            raise ValueError(f"shard_size must be an integer >= 1, got {shard_size!r}.")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.shard_size = shard_size
        self.fingerprint = json.loads(json.dumps(fingerprint))  # normalised, as it will read back
        meta = self._read_meta()
        if meta is not None:
            changed = _differences(meta.get("fingerprint"), self.fingerprint)
            if meta.get("shard_size") != shard_size:
                changed.append("shard_size")
            if changed:
                logger.warning(
                    "Embeddings in %s were made with a different %s; deleting them and encoding again.",
                    self.directory,
                    ", ".join(changed),
                )
                self._clear()
                meta = None
        self.complete = bool(meta and meta.get("complete"))
        self.dim: int | None = meta.get("dim") if meta else None
        self._ids_sha256: str | None = meta.get("ids_sha256") if meta else None
        self._shards: dict[int, int] = {}  # index -> rows
        self._scan_shards()
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
            meta = json.loads(self._meta_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            meta = None
        if not isinstance(meta, dict):
            logger.warning("%s is unreadable; the embeddings next to it are encoded again.", self._meta_path)
            return {}
        return meta

    def _write_meta(self) -> None:
        meta = {
            "fingerprint": self.fingerprint,
            "shard_size": self.shard_size,
            "dim": self.dim,
            "rows": self.num_rows,
            "complete": self.complete,
            "ids_sha256": self._ids_sha256,
        }
        temporary = self._meta_path.with_suffix(".tmp")
        temporary.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        os.replace(temporary, self._meta_path)

    def _clear(self) -> None:
        for path in self.directory.iterdir():
            if _SHARD.match(path.name) or path.name in {"meta.json", "ids.npy"} or path.name.endswith(".tmp"):
                path.unlink()

    def _shard_path(self, index: int) -> Path:
        return self.directory / f"shard-{index:05d}.npy"

    def _discard(self, index: int, reason: str) -> None:
        path = self._shard_path(index)
        logger.warning("%s %s; it is deleted and encoded again.", path, reason)
        path.unlink(missing_ok=True)
        self._shards.pop(index, None)
        self.complete = False

    def _scan_shards(self) -> None:
        """Keep the shard files whose header reads as a 2-D float32 array of 1..shard_size rows of the store's
        dimension; delete the others (they are encoded again)."""
        for path in sorted(self.directory.iterdir()):
            match = _SHARD.match(path.name)
            if match is None:
                continue
            index = int(match.group(1))
            try:
                array = np.load(path, mmap_mode="r")
            except (OSError, ValueError, EOFError) as error:
                self._discard(index, f"cannot be read ({type(error).__name__}: {error})")
                continue
            if array.dtype != np.float32 or array.ndim != 2 or not 1 <= array.shape[0] <= self.shard_size:
                self._discard(
                    index, f"holds a {array.dtype} array of shape {array.shape}, not 1..{self.shard_size} rows"
                )
            elif self.dim is not None and array.shape[1] != self.dim:
                self._discard(index, f"has dimension {array.shape[1]}, the store {self.dim}")
            else:
                self.dim = int(array.shape[1])
                self._shards[index] = int(array.shape[0])

    def check_rows(self, total: int) -> list[int]:
        """Check the shards against a stream of ``total`` items and return the indices still to encode.

        Shards with the wrong number of rows or beyond the stream are deleted (and so encoded again).
        """
        expected = [min(self.shard_size, total - start) for start in range(0, total, self.shard_size)]
        for index, rows in list(self._shards.items()):
            if index >= len(expected):
                self._discard(index, f"lies beyond the {total} items of the stream")
            elif rows != expected[index]:
                self._discard(index, f"has {rows} rows where {expected[index]} belong")
        missing = [index for index in range(len(expected)) if index not in self._shards]
        if missing and self.complete:
            logger.warning("%s lacks %s; they are encoded again.", self.directory, self._shard_path(missing[0]).name)
            self.complete = False
        return missing

    @property
    def num_rows(self) -> int:
        """Rows in the shards present (where encoding resumes when none is missing in between)."""
        return sum(self._shards.values())

    # Writing ---------------------------------------------------------------------------------------------------

    def write(self, index: int, embeddings: np.ndarray) -> None:
        """Write shard ``index`` (``shard_size`` rows, fewer only for the last one)."""
        embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
        if embeddings.ndim != 2 or embeddings.shape[0] == 0 or embeddings.shape[0] > self.shard_size:
            raise ValueError(
                f"A shard must have 1..{self.shard_size} rows of one dimension, got shape {embeddings.shape}."
            )
        if self.dim is not None and embeddings.shape[1] != self.dim:
            raise ValueError(f"Embedding dimension changed from {self.dim} to {embeddings.shape[1]}.")
        path = self._shard_path(index)
        temporary = path.with_name(path.name + ".tmp")
        with temporary.open("wb") as handle:
            np.save(handle, embeddings)
        os.replace(temporary, path)
        self._shards[index] = embeddings.shape[0]
        if self.dim is None:
            self.dim = int(embeddings.shape[1])
        self._write_meta()

    def append(self, embeddings: np.ndarray) -> None:
        """Write the next shard after the last one present (``shard_size`` rows, fewer only for the last one)."""
        if self.complete:
            raise ValueError(f"Store {self.directory} is complete; open a new one to write more.")
        if self._shards and self._shards[max(self._shards)] != self.shard_size:
            raise ValueError(f"Store {self.directory} already ends with a short shard; only the last may be short.")
        self.write(max(self._shards, default=-1) + 1, embeddings)

    def mark_complete(self) -> None:
        """Record that every item is encoded.

        Raises:
            ValueError: If a shard before the last one is missing.
        """
        self._check_no_gap()
        self.complete = True
        self._write_meta()

    def save_ids(self, ids: np.ndarray) -> None:
        """Keep the row ids (e.g. hashed candidate ids) with the embeddings; cleared with them."""
        ids = np.asarray(ids)
        temporary = self.directory / "ids.npy.tmp"
        with temporary.open("wb") as handle:
            np.save(handle, ids)
        os.replace(temporary, self.directory / "ids.npy")
        self._ids_sha256 = _array_digest(ids)
        self._write_meta()

    def load_ids(self) -> np.ndarray | None:
        """The ids saved with :meth:`save_ids`, or ``None`` when there are none or they do not match the checksum
        recorded when they were saved (then they must be computed again)."""
        path = self.directory / "ids.npy"
        if not path.is_file():
            return None
        try:
            ids = np.load(path)
        except (OSError, ValueError, EOFError) as error:
            logger.warning("%s cannot be read (%s); the ids are computed again.", path, error)
            return None
        if _array_digest(ids) != self._ids_sha256:
            logger.warning("%s does not match the checksum in meta.json; the ids are computed again.", path)
            return None
        return ids

    # Reading ---------------------------------------------------------------------------------------------------

    def _check_no_gap(self) -> None:
        missing = [index for index in range(max(self._shards, default=-1) + 1) if index not in self._shards]
        if missing:
            raise ValueError(
                f"{self._shard_path(missing[0])} is missing. Run the encoding again (it encodes the missing shards) "
                f"or delete {self.directory} to start over."
            )

    def _read(self, index: int, mmap_mode: str | None) -> np.ndarray:
        path = self._shard_path(index)
        shard = np.load(path, mmap_mode=mmap_mode)
        if shard.shape != (self._shards[index], self.dim):
            raise ValueError(f"{path} changed while in use (shape {shard.shape}); run the evaluation again.")
        if not np.isfinite(shard).all():
            raise ValueError(
                f"{path} holds NaN or infinite values (the file is damaged). Delete it and run again: the shard is "
                "encoded again."
            )
        return shard

    def iter_shards(self) -> Iterator[tuple[int, np.ndarray]]:
        """``(first row, memory-mapped shard)`` for each shard, in order; drop each before taking the next.

        Raises:
            ValueError: If a shard is missing in between or holds NaN or infinite values (naming the file).
        """
        self._check_no_gap()
        offset = 0
        for index in sorted(self._shards):
            yield offset, self._read(index, "r")
            offset += self._shards[index]

    def load(self) -> np.ndarray:
        """All rows in memory, ``(num_rows, dim)`` (for query sets; pools are searched shard by shard).

        Raises:
            ValueError: As :meth:`iter_shards`.
        """
        self._check_no_gap()
        if not self._shards:
            return np.zeros((0, self.dim or 0), dtype=np.float32)
        return np.concatenate([self._read(index, None) for index in sorted(self._shards)])


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

    Only the shards that are missing (or were damaged, see the module docstring) are encoded, so rerunning after an
    interruption gives the same shards as an uninterrupted run.

    Args:
        store: Target store; nothing is encoded if it is complete and intact.
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

    missing = store.check_rows(total)
    if store.complete:
        return
    with tqdm(total=total, initial=store.num_rows, desc=desc, unit="item", disable=not show_progress_bar) as bar:
        # Consecutive missing shards share one pass over the stream (normally one run: the end of the stream).
        for _, run in itertools.groupby(enumerate(missing), key=lambda pair: pair[1] - pair[0]):
            indices = [index for _, index in run]
            items = items_from(indices[0] * store.shard_size)
            for index in indices:
                start = index * store.shard_size
                rows = min(store.shard_size, total - start)
                batch = list(itertools.islice(items, rows))
                if len(batch) != rows:
                    raise ValueError(
                        f"Expected {total} items but the stream held {start + len(batch)}; did the source file "
                        "change meanwhile?"
                    )
                embeddings = np.array(encode(batch), dtype=np.float32, copy=True)
                if embeddings.ndim != 2 or embeddings.shape[0] != len(batch):
                    raise ValueError(
                        f"The encoder returned shape {embeddings.shape} for {len(batch)} items; expected (n, dim)."
                    )
                if not np.isfinite(embeddings).all():
                    raise ValueError(f"The encoder returned NaN or infinite values while {desc.lower()}.")
                faiss.normalize_L2(embeddings)  # UniIR L2-normalises again before indexing; a no-op on unit rows
                store.write(index, embeddings)
                bar.update(len(batch))
    store.mark_complete()
