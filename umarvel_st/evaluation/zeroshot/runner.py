"""The shared zero-shot runner: read a task's data, embed both sides into resumable stores, score, report numbers.

Both sides go through the package encoder (:func:`umarvel_st.evaluation.embeddings.encode_to_store`, one store per
side, keyed by the data files, the template, the vision settings and the model), so an interrupted run resumes and
a changed model or file is encoded again. Scores are exact dot products of the unit vectors.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np

from ...data.zeroshot.readers import Raw, ZeroShotData
from ..embeddings import DEFAULT_SHARD_SIZE, EmbeddingStore, encode_to_store
from ..fingerprint import model_fingerprint
from . import metrics
from .items import Template, content_item, encoded_user_text
from .tasks import GROUP_PAPER, ZeroShotTask

logger = logging.getLogger(__name__)

#: Query rows scored at once against all candidates (bounds the score block's memory).
QUERY_BLOCK = 1024


def describe_file(path: Path) -> dict[str, Any]:
    """Size and SHA-256 of a data file (image and video files are not hashed)."""
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return {"bytes": path.stat().st_size, "sha256": digest.hexdigest()}


def no_truncation_length(encoder: Any) -> int:
    """The backbone's position limit: the zero-shot protocol feeds whole items (no ``max_length`` cut)."""
    config = encoder.model.config
    text_config = getattr(config, "text_config", config)
    return int(getattr(text_config, "max_position_embeddings", None) or config.max_position_embeddings)


def _encode_side(
    model: Any,
    task: ZeroShotTask,
    side: str,
    template: Template,
    records: list[Raw],
    store_dir: Path,
    fingerprint: dict[str, Any],
    batch_size: int,
    shard_size: int,
    show_progress_bar: bool,
) -> np.ndarray:
    store = EmbeddingStore(
        store_dir,
        {
            **fingerprint,
            "side": side,
            "template": asdict(template),
            "items": "verbatim",  # rendered as given by the encoder (earlier caches held M-BEIR-style items)
            "max_seq_length": no_truncation_length(model[0]),
        },
        shard_size,
    )

    def items_from(start: int) -> Iterator[dict[str, Any]]:
        for raw in records[start:]:
            yield content_item(template.apply(raw), task.nframes)

    encoder = model[0]
    saved = encoder.max_pixels, encoder.max_seq_length, encoder.legacy_causal_unpadded
    encoder.max_seq_length = no_truncation_length(encoder)  # the zero-shot reference never truncates
    encoder.max_pixels = task.image_max_pixels  # video files keep the video rule's frame size
    encoder.legacy_causal_unpadded = task.causal_unpadded
    if task.causal_unpadded and any(raw.video for raw in records):
        batch_size = 1  # the reference encodes videos one at a time, so each one runs causal
    try:
        encode_to_store(
            store,
            items_from,
            len(records),
            lambda items: model.encode_document(items, batch_size=batch_size, show_progress_bar=False),
            desc=f"Encoding {task.name} {side}",
            show_progress_bar=show_progress_bar,
        )
    finally:
        encoder.max_pixels, encoder.max_seq_length, encoder.legacy_causal_unpadded = saved
    return store.load()


def _scores(task: ZeroShotTask, scores: np.ndarray, data: Any) -> tuple[dict[str, float], dict[str, float]]:
    """All computed numbers and the reported ones (keys as in ``task.paper``), as fractions."""
    if task.metric == "accuracy":
        value = metrics.pairwise_accuracy(scores, data.galleries)
        return {"accuracy": value}, {"accuracy": value}
    if task.metric == "gallery_hit":
        numbers = {f"r@{k}": metrics.gallery_hit_at_k(scores, data.galleries, k) for k in task.ks}
        return numbers, {f"r@{k}": numbers[f"r@{k}"] for k in task.report_k}
    if task.metric == "map":
        numbers = {f"map@{k}": metrics.map_at_k(scores, data.positives, k) for k in task.ks}
        return numbers, {f"map@{k}": numbers[f"map@{k}"] for k in task.report_k}
    ks = [k for k in task.ks if k <= scores.shape[1]]
    numbers = {f"r@{k}": metrics.hit_rate_at_k(scores, data.positives, k) for k in ks}
    return numbers, {f"r@{k}": numbers[f"r@{k}"] for k in task.report_k if f"r@{k}" in numbers}


def _gallery_scores(queries: np.ndarray, candidates: np.ndarray, galleries: list[list[int]]) -> np.ndarray:
    """Each query's scores against its own list only, padded with -inf.  # (queries, longest list)"""
    width = max(map(len, galleries))
    scores = np.full((len(galleries), width), -np.inf, dtype=np.float32)
    for row, gallery in enumerate(galleries):
        scores[row, : len(gallery)] = candidates[gallery] @ queries[row]
    return scores


def _chunked(
    task: ZeroShotTask, queries: np.ndarray, candidates: np.ndarray, data: Any
) -> tuple[dict[str, float], dict[str, float]]:
    """:func:`_scores` over blocks of query rows (weighted means), so the score matrix never sits whole in memory."""
    totals: dict[str, float] = {}
    reported: dict[str, float] = {}
    for start in range(0, len(queries), QUERY_BLOCK):
        block = queries[start : start + QUERY_BLOCK] @ candidates.T  # (block, candidates)
        part = ZeroShotData([], [], positives=data.positives[start : start + QUERY_BLOCK])
        numbers, reported_part = _scores(task, block, part)
        for key, value in numbers.items():
            totals[key] = totals.get(key, 0.0) + value * len(block) / len(queries)
        for key, value in reported_part.items():
            reported[key] = reported.get(key, 0.0) + value * len(block) / len(queries)
    return totals, reported


def score_task(
    task: ZeroShotTask, queries: np.ndarray, candidates: np.ndarray, data: Any
) -> tuple[dict[str, float], dict[str, float]]:
    """All numbers and the reported ones from the two embedding matrices (unit rows), in bounded memory.

    Per-query lists (GeneCIS, ITM) score only their own candidates; corpus tasks score blocks of
    :data:`QUERY_BLOCK` query rows; the reverse direction (i->t) scores blocks of candidate rows.
    """
    if task.metric in ("accuracy", "gallery_hit"):
        galleries = [list(range(len(gallery))) for gallery in data.galleries]
        return _scores(
            task, _gallery_scores(queries, candidates, data.galleries), ZeroShotData([], [], galleries=galleries)
        )
    if not task.both_directions:
        return _chunked(task, queries, candidates, data)
    forward = replace(task, both_directions=False)
    reverse = [[] for _ in range(len(candidates))]
    for query, positives in enumerate(data.positives):
        for candidate in positives:
            reverse[candidate].append(query)
    t2i, _ = _chunked(forward, queries, candidates, data)
    i2t, _ = _chunked(forward, candidates, queries, ZeroShotData([], [], positives=reverse))
    numbers = {f"t2i_{key}": value for key, value in t2i.items()} | {f"i2t_{key}": value for key, value in i2t.items()}
    return numbers, {"t2i": numbers["t2i_r@1"], "i2t": numbers["i2t_r@1"]}


def evaluate_task(
    model: Any,
    task: ZeroShotTask,
    data_root: str | Path,
    cache_dir: str | Path,
    *,
    batch_size: int = 4,
    shard_size: int = DEFAULT_SHARD_SIZE,
    show_progress_bar: bool = True,
    model_description: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Evaluate ``model`` on one zero-shot task; numbers are fractions in [0, 1].

    ``model_description`` keys the embedding cache (default: :func:`model_fingerprint` of ``model``). Take it before
    the model encodes anything: encoding leaves padding state on its tokenizer, which the fingerprint includes.

    Returns:
        ``{"scores", "reported", "paper", "group", "queries", "candidates", "example", "notes"}``; ``example`` holds
        the user text the encoder tokenizes for the first query and candidate (decoded from its ids).
    """
    data = task.read(Path(data_root))
    if not data.queries or not data.candidates:
        raise ValueError(f"Task {task.name}: {data_root} holds no queries or no candidates.")
    fingerprint = {
        "task": task.name,
        "files": {str(path): describe_file(path) for path in data.files},
        "image_max_pixels": task.image_max_pixels,
        "nframes": task.nframes,
        "causal_unpadded": task.causal_unpadded,
        "model": model_description or model_fingerprint(model),
    }
    sides = {}
    for side, template, records in (
        ("queries", task.query, data.queries),
        ("candidates", task.candidate, data.candidates),
    ):
        sides[side] = _encode_side(
            model,
            task,
            side,
            template,
            records,
            Path(cache_dir) / task.name / side,
            fingerprint,
            batch_size,
            shard_size,
            show_progress_bar,
        )
    numbers, reported = score_task(task, sides["queries"], sides["candidates"], data)
    examples = {}
    encoder = model[0]
    saved = encoder.max_pixels
    encoder.max_pixels = task.image_max_pixels
    try:
        for side, template, records in (
            ("query", task.query, data.queries),
            ("candidate", task.candidate, data.candidates),
        ):
            examples[side] = encoded_user_text(encoder, content_item(template.apply(records[0]), task.nframes))
    finally:
        encoder.max_pixels = saved
    return {
        "scores": numbers,
        "reported": reported,
        "paper": task.paper,
        "group": task.group,
        "queries": len(data.queries),
        "candidates": len(data.candidates),
        "example": examples,
        "notes": task.notes,
    }


def group_scores(tasks: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Mean of the first reported number over each group's subsets (GeneCIS, Sugar-Crepe)."""
    groups: dict[str, list[float]] = {}
    for row in tasks.values():
        if row["group"]:
            groups.setdefault(row["group"], []).append(next(iter(row["reported"].values())))
    return {
        name: {"score": float(np.mean(values)), "subsets": len(values), "paper": GROUP_PAPER.get(name)}
        for name, values in groups.items()
    }
