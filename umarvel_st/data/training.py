"""Training data as ``datasets.Dataset`` objects with the columns sentence-transformers losses read.

Every builder returns columns ``anchor``, ``positive`` and optionally ``negative_1`` .. ``negative_k``; each cell
is an encoder item (a text string, or ``{"text", "image", "instruction"}`` with the image as a file path, opened
only when the batch is encoded). A query's instruction travels inside the anchor item, never as its own column:
the collator would embed a separate column as one more input.

Random draws (one positive and one instruction per query, as the reference does per sample and epoch) are seeded
by ``(seed, epoch, row)``, so a resumed run sees exactly the same data. A recipe with several epochs over M-BEIR
gets one fresh draw per epoch by stacking the epochs' draws into one dataset (see :func:`mbeir_train`).
"""

from __future__ import annotations

import csv
import json
import logging
import os
import random
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from .mbeir import resolve_under

logger = logging.getLogger(__name__)


def _rows(path: str | Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """Rows of a csv, json (a list of objects) or jsonl file, each with a ``file:line`` (or ``file[index]``) location.

    Raises:
        ValueError: For a missing file, an unsupported suffix, text that is not UTF-8, malformed JSON (with the
            file, and the line for jsonl) or a row that is not an object.
    """
    path = Path(path)
    if path.suffix not in (".csv", ".json", ".jsonl"):
        raise ValueError(f"Unsupported data file {str(path)!r}: use .csv, .json or .jsonl.")
    if not path.is_file():
        raise ValueError(
            f"Data file {path} does not exist. Check the path (relative paths start in the working folder)."
        )
    try:
        if path.suffix == ".csv":
            with path.open(newline="", encoding="utf-8") as handle:
                for line, row in enumerate(csv.DictReader(handle), start=2):
                    yield f"{path}:{line}", row
        elif path.suffix == ".json":
            try:
                rows = json.loads(path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{error.lineno}: malformed JSON ({error.msg}).") from None
            if not isinstance(rows, list):
                raise ValueError(f"{path}: a .json data file holds a list of row objects, got {type(rows).__name__}.")
            for index, row in enumerate(rows):
                yield f"{path}[{index}]", _object(row, f"{path}[{index}]")
        else:
            with path.open(encoding="utf-8") as handle:
                for line, text in enumerate(handle, start=1):
                    if text.strip():
                        try:
                            row = json.loads(text)
                        except json.JSONDecodeError as error:
                            raise ValueError(f"{path}:{line}: malformed JSON ({error.msg}).") from None
                        yield f"{path}:{line}", _object(row, f"{path}:{line}")
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start}); save it as UTF-8.") from None


def _object(row: Any, where: str) -> dict[str, Any]:
    if not isinstance(row, dict):
        raise ValueError(
            f"{where}: a row must be a JSON object with named fields, got {type(row).__name__} {row!r:.80}."
        )
    return row


def _column(row: dict[str, Any], key: str, where: str) -> str:
    value = row.get(key)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{where}: column {key!r} is missing or empty (got {value!r}).")
    return value


def _dataset(records: Iterable[dict[str, Any]]):
    from datasets import Dataset

    records = list(records)
    if not records:
        raise ValueError("The training data is empty.")
    return Dataset.from_list(records)


def nli_pairs(path: str | Path):
    """SimCSE ``nli_for_simcse`` pairs: ``sent0`` -> ``sent1`` (recipe stage 1).

    Args:
        path: A csv/json/jsonl file with ``sent0`` and ``sent1`` (``hard_neg`` is ignored, as in the recipe).

    Returns:
        A ``datasets.Dataset`` with text columns ``anchor`` and ``positive``.
    """
    return _dataset(
        {"anchor": _column(row, "sent0", where), "positive": _column(row, "sent1", where)}
        for where, row in _rows(path)
    )


def image_captions(path: str | Path, image_root: str | Path | None = None):
    """Caption <-> image pairs such as CC3M (recipe stage 2, trained with the symmetric loss).

    Args:
        path: A json/jsonl/csv file with ``caption`` and ``image`` (a path relative to ``image_root``).
        image_root: Folder the image paths are relative to; defaults to the file's folder.

    Returns:
        A ``datasets.Dataset``: ``anchor`` = caption text, ``positive`` = ``{"text": None, "image": path}``.
    """
    root = Path(image_root) if image_root is not None else Path(path).parent
    return _dataset(
        {
            "anchor": _column(row, "caption", where),
            "positive": {"text": None, "image": resolve_under(root, _column(row, "image", where), where)},
        }
        for where, row in _rows(path)
    )


def _item(value: Any, root: Path, where: str, instruction: str | None = None) -> dict[str, Any]:
    """A custom-pairs side: a string (text) or ``{"text", "image"}``; images resolve under ``root``."""
    if isinstance(value, str):
        text, image = value, None
    elif isinstance(value, dict):
        unknown = set(value) - {"text", "image"}
        if unknown:
            raise ValueError(f"{where}: unknown keys {sorted(unknown)}; a side may have 'text' and 'image'.")
        text, image = value.get("text"), value.get("image")
        for key, part in (("text", text), ("image", image)):
            if part is not None and not isinstance(part, str):
                raise TypeError(f"{where}: {key!r} must be a string, got {type(part).__name__} {part!r:.80}.")
    else:
        raise TypeError(
            f"{where}: a side must be a string or a dict with 'text'/'image', got {type(value).__name__} {value!r:.80}."
        )
    if not (text or image):
        raise ValueError(f"{where}: a side needs text or an image, got {value!r}.")
    return {"text": text, "image": resolve_under(root, image, where) if image else None, "instruction": instruction}


def custom_pairs(source: Any, image_root: str | Path | None = None):
    """Your own (query, positive, negatives) data for fine-tuning.

    Args:
        source: A ``datasets.Dataset``, a list of dicts, or a csv/json/jsonl file. Each row has ``query`` and
            ``positive`` (a string = text, or ``{"text": ..., "image": ...}``), optionally ``negatives`` (a list
            of such sides; csv: ``negative_1``, ``negative_2``, ...) and ``instruction`` (for the query). In csv
            files an image-only or image+text side uses the columns ``query_image`` / ``positive_image`` /
            ``negative_1_image``.
        image_root: Folder image paths are relative to; defaults to the file's folder (or the working directory).

    Returns:
        A ``datasets.Dataset`` with ``anchor``, ``positive`` and ``negative_1`` .. ``negative_k``.

    Raises:
        ValueError: For missing columns, rows with different negative counts, or images outside the root.
        TypeError: For a row, side, ``negatives`` or ``instruction`` of the wrong type (naming the row and field).
    """
    if isinstance(source, (str, os.PathLike)):
        root = Path(image_root) if image_root is not None else Path(source).parent
        rows = list(_rows(source))
    else:
        root = Path(image_root) if image_root is not None else Path.cwd()
        rows = []
        for index, row in enumerate(source):
            if not isinstance(row, Mapping):
                raise TypeError(f"row {index}: a row must be a dict with named fields, got {type(row).__name__}.")
            rows.append((f"row {index}", dict(row)))
    records, width = [], None
    for where, row in rows:
        sides = {}
        for name in ("query", "positive"):
            value = row.get(name)
            if row.get(f"{name}_image"):  # the csv form
                value = {"text": value or None, "image": row[f"{name}_image"]}
            if value is None:
                raise ValueError(f"{where}: {name!r} is missing; every row needs 'query' and 'positive'.")
            sides[name] = value
        negatives = row.get("negatives") or []
        if not isinstance(negatives, list):
            raise TypeError(
                f"{where}: 'negatives' must be a list of sides, got {type(negatives).__name__} {negatives!r:.80}. "
                f"Write one negative as a list too: [{negatives!r:.40}]."
            )
        negatives = list(negatives)
        instruction = row.get("instruction") or None
        if instruction is not None and not isinstance(instruction, str):
            raise TypeError(f"{where}: 'instruction' must be a string, got {type(instruction).__name__}.")
        index = 1
        while f"negative_{index}" in row and (row[f"negative_{index}"] or row.get(f"negative_{index}_image")):
            text, image = row[f"negative_{index}"] or None, row.get(f"negative_{index}_image") or None
            negatives.append({"text": text, "image": image} if image else text)
            index += 1
        if width is None:
            width = len(negatives)
        elif len(negatives) != width:
            raise ValueError(f"{where}: {len(negatives)} negatives, but earlier rows have {width}; use equal counts.")
        record = {
            "anchor": _item(sides["query"], root, f"{where} query", instruction),
            "positive": _item(sides["positive"], root, f"{where} positive"),
        }
        for number, negative in enumerate(negatives, start=1):
            record[f"negative_{number}"] = _item(negative, root, f"{where} negative {number}")
        records.append(record)
    return _dataset(records)


def mbeir_train(
    root: str | Path,
    *,
    tasks: list[str] | None = None,
    instructions: bool = True,
    epochs: int = 1,
    seed: int = 0,
    max_queries_per_task: int | None = None,
):
    """M-BEIR training queries with one random positive and one random instruction per sample and epoch.

    Candidates come from the union training pool (``cand_pool/global/mbeir_union_train_cand_pool.jsonl``) when it
    exists, else from each task's local pool. The draw for row ``i`` of epoch ``e`` uses
    ``random.Random(f"{seed}:{e}:{qid}")``; with ``epochs > 1`` the epochs' draws are stacked (train them as one
    pass), so every epoch sees fresh draws and a resumed run sees the same ones.

    Args:
        root: The M-BEIR data root (real or synthetic).
        tasks: Task names (``<dataset>_task<id>``); default: every task with a training split.
        instructions: Put a task instruction on each query (recipe stage 3 on; off for stages 1-2 style runs).
        epochs: Number of epochs to draw.
        seed: Seed of the draws.
        max_queries_per_task: Keep only the first N queries of each task (for quick runs).

    Returns:
        A ``datasets.Dataset`` with ``anchor`` (query item) and ``positive`` (candidate item).
    """
    from .mbeir import MBEIRData

    data = MBEIRData(root)
    selected = data.resolve_tasks(tasks, split="train")
    union = Path(root) / "cand_pool" / "global" / "mbeir_union_train_cand_pool.jsonl"
    pool_paths = [union] if union.is_file() else [data.pool_path(task, "local", "train") for task in selected]
    pool = {candidate.did: candidate for path in pool_paths for candidate in data.iter_candidates(path)}
    records = []
    for epoch in range(epochs):
        for task in selected:
            for number, query in enumerate(data.iter_queries(task, "train")):
                if max_queries_per_task is not None and number >= max_queries_per_task:
                    break
                positives = [did for did in query.pos_cand_list if did in pool]
                if not positives:
                    logger.warning("%s: query %s has no positive in the pool; skipped", query.source, query.qid)
                    continue
                rng = random.Random(f"{seed}:{epoch}:{query.qid}")
                positive = pool[rng.choice(positives)]
                instruction = None
                if instructions:
                    dataset_id = int(query.qid.split(":")[0])
                    instruction = rng.choice(
                        data.instructions_for(dataset_id, query.modality, task.candidate_modality)
                    )
                records.append(
                    {
                        "anchor": data.query_item(query, instruction),
                        "positive": _as_dict(data.candidate_item(positive)),
                    }
                )
    return _dataset(records)


def _as_dict(item: dict[str, Any]) -> dict[str, Any]:
    """One column type for every row: text candidates become ``{"text": ..., "image": None}``."""
    return {"text": None, "image": None, **item}
