"""U-MARVEL+: recall with the embedder, then re-rank the top N with the re-ranker (spec 2.1).

The embedder retrieves each query's top ``rerank_top`` candidates (50 in the paper) by cosine; the re-ranker scores
every (query, candidate) pair, P(Yes); each candidate's final score is ``cos + weight * P(Yes)`` (weight 0.1 in the
paper) with the candidate's *own* cosine, and the re-ranked candidates are sorted by it. The official global-pool
fusion code pairs the re-ranker scores with a reversed list of distances, so each candidate gets another
candidate's cosine; that is a bug and is not reproduced here.

Order: final score descending; equal final scores keep their retrieval order (higher cosine first, then the search's
tie order). Candidates retrieved below the top ``rerank_top`` (only when more are asked for than are re-ranked) are
kept after the re-ranked ones, in retrieval order, without a P(Yes).
"""

from __future__ import annotations

import json
import math
import numbers
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from tqdm.auto import tqdm

#: The paper's settings: re-rank the top 50 with final = cos + 0.1 * P(Yes).
DEFAULT_RERANK_TOP = 50
DEFAULT_RERANK_WEIGHT = 0.1


def add_rerank_arguments(parser: Any) -> None:
    """The ``--rerank-top`` / ``--rerank-weight`` options of the commands that re-rank (``eval mbeir``, ``demo``)."""
    parser.add_argument(
        "--rerank-top", type=int, default=DEFAULT_RERANK_TOP, help="candidates re-ranked per query (default: 50)"
    )
    parser.add_argument(
        "--rerank-weight",
        type=float,
        default=DEFAULT_RERANK_WEIGHT,
        help="final score = cos + weight * P(Yes) (default: 0.1)",
    )


class RankedCandidate(NamedTuple):
    """One result of :func:`retrieve_and_rerank`.

    Attributes:
        corpus_id: Index of the candidate in the corpus.
        score: ``cosine + weight * p_yes`` for a re-ranked candidate; its cosine for one below the re-ranked top N.
        cosine: The embedder's cosine similarity of the query and this candidate.
        p_yes: The re-ranker's P(Yes) for the pair; ``None`` for a candidate below the re-ranked top N.
    """

    corpus_id: int
    score: float
    cosine: float
    p_yes: float | None


def check_rerank_settings(rerank_top: Any, weight: Any) -> None:
    """Refuse a ``rerank_top`` that is not an integer >= 1 or a ``weight`` that is not a finite number.

    Raises:
        ValueError: Naming the value received and what is allowed.
    """
    if isinstance(rerank_top, bool) or not isinstance(rerank_top, numbers.Integral) or rerank_top < 1:
        raise ValueError(f"rerank_top must be an integer >= 1 (the paper uses 50), got {rerank_top!r}.")
    if isinstance(weight, bool) or not isinstance(weight, numbers.Real) or not math.isfinite(weight):
        raise ValueError(f"The re-rank weight must be a finite number (the paper uses 0.1), got {weight!r}.")


def fuse(cosines: Any, p_yes: Any, weight: float) -> tuple[np.ndarray, np.ndarray]:
    """Fuse one query's retrieved list with its re-ranker scores: final = cos + weight * P(Yes), then re-sort.

    Args:
        cosines: ``(n,)`` cosines of the retrieved candidates, in retrieval order.
        p_yes: ``(n,)`` P(Yes) of the same candidates, in the same order (each candidate's own score).
        weight: Weight of P(Yes).

    Returns:
        ``(order, final)``: ``order`` indexes the retrieved list, best first (equal final scores keep retrieval
        order); ``final[i]`` is the fused score of retrieved candidate ``i`` (float64, not reordered).

    Raises:
        ValueError: For lists of different lengths or non-finite scores.
    """
    cosines = np.asarray(cosines, dtype=np.float64)
    p_yes = np.asarray(p_yes, dtype=np.float64)
    if cosines.ndim != 1 or cosines.shape != p_yes.shape:
        raise ValueError(
            f"Got cosines of shape {cosines.shape} and P(Yes) of shape {p_yes.shape}; give one of each per candidate."
        )
    if not (np.isfinite(cosines).all() and np.isfinite(p_yes).all()):
        raise ValueError("Cosines and P(Yes) must be finite numbers.")
    final = cosines + weight * p_yes
    return np.argsort(-final, kind="stable"), final


def score_pairs(reranker: Any, query: Any, candidates: Sequence[Any], batch_size: int) -> np.ndarray:
    """P(Yes) of ``(query, candidate)`` for each candidate (one query per call, so the re-ranker shares its prefix).

    Raises:
        ValueError: If the re-ranker returns the wrong number of scores or scores outside [0, 1].
    """
    scores = np.asarray(
        reranker.predict(
            [(query, candidate) for candidate in candidates],
            batch_size=batch_size,
            show_progress_bar=False,
            convert_to_numpy=True,
        ),
        dtype=np.float32,
    ).reshape(-1)
    if scores.shape[0] != len(candidates):
        raise ValueError(f"The re-ranker returned {scores.shape[0]} scores for {len(candidates)} pairs.")
    if not (np.isfinite(scores).all() and (scores >= 0).all() and (scores <= 1).all()):
        raise ValueError("The re-ranker returned scores outside [0, 1]; it must return P(Yes) (a sigmoid activation).")
    return scores


def open_reranker(name_or_model: Any, device: str | None = None) -> Any:
    """The re-ranker to use: a model is returned as is; a folder or Hub id is opened without running its code.

    A folder with ``modules.json`` must be a saved U-MARVEL re-ranker (:func:`umarvel_st.load_reranker`); a folder
    without one is a Qwen-VL ``...ForConditionalGeneration`` checkpoint (:func:`umarvel_st.reranker_from_mllm`).

    Raises:
        ValueError: For a path that does not exist and is not a Hub id, or a saved model that is not a re-ranker
            (an embedder, say), before any weights are loaded when the folder is local.
    """
    if not isinstance(name_or_model, (str, os.PathLike)):
        if not callable(getattr(name_or_model, "predict", None)):
            raise TypeError(
                f"The re-ranker must be a path, a Hub id or a model with predict(pairs); got "
                f"{type(name_or_model).__name__}."
            )
        return name_or_model
    from .evaluation.cli import check_model_name
    from .modeling.reranker import UMarvelRerankerTransformer
    from .reranker import load_reranker, reranker_from_mllm

    name = os.fspath(name_or_model)
    check_model_name(name)
    folder = Path(name)
    if folder.is_dir() and not (folder / "modules.json").is_file():
        return reranker_from_mllm(name, device=device)
    if folder.is_dir():
        types = [entry.get("type", "") for entry in json.loads((folder / "modules.json").read_text(encoding="utf-8"))]
        if not types or not types[0].endswith(f"reranker.{UMarvelRerankerTransformer.__name__}"):
            raise ValueError(
                f"{name} is a saved model with modules {types}, not a U-MARVEL re-ranker (its first module must be "
                f"{UMarvelRerankerTransformer.__name__}). Pass a re-ranker folder (saved by a re-ranker's save) or a "
                "Qwen-VL checkpoint."
            )
    model = load_reranker(name, device=device)
    if not isinstance(model[0], UMarvelRerankerTransformer):
        raise ValueError(f"{name} is not a U-MARVEL re-ranker: its first module is {type(model[0]).__name__}.")
    return model


def _check_items(items: Any, what: str) -> list[Any]:
    if isinstance(items, (str, bytes, dict)) or not isinstance(items, Sequence):
        raise TypeError(f"{what} must be a list of items, got {type(items).__name__}. Wrap a single item in a list.")
    if not items:
        raise ValueError(f"{what} is empty; give at least one item.")
    return list(items)


def retrieve_and_rerank(
    embedder: Any,
    reranker: Any,
    queries: Sequence[Any],
    corpus: Sequence[Any],
    *,
    top_k: int = 10,
    rerank_top: int = DEFAULT_RERANK_TOP,
    weight: float = DEFAULT_RERANK_WEIGHT,
    batch_size: int = 32,
    show_progress_bar: bool = False,
) -> list[list[RankedCandidate]]:
    """U-MARVEL+ on your own corpus: retrieve with the embedder, re-rank the top ``rerank_top`` with the re-ranker.

    The corpus is embedded in memory and searched exactly (use :class:`~umarvel_st.evaluation.MBEIREvaluator`'s
    sharded store for corpora that do not fit). See the module docstring for the fusion and the order.

    Args:
        embedder: A U-MARVEL embedder (``encode_query`` / ``encode_document``), e.g. :func:`umarvel_st.load`.
        reranker: A U-MARVEL re-ranker (e.g. :func:`umarvel_st.reranker_from_mllm`), or its folder or Hub id.
        queries: Query items: text, an image or ``{"text", "image", "instruction"}``; the instruction reaches both
            models (the re-ranker reads ``instruction + " " + text``).
        corpus: Candidate items: text, an image or ``{"text", "image"}``.
        top_k: Results returned per query.
        rerank_top: Retrieved candidates re-ranked per query (50 in the paper).
        weight: Weight of P(Yes) in the final score (0.1 in the paper).
        batch_size: Batch size of the embedder and of the re-ranker.
        show_progress_bar: Progress bars for encoding and re-ranking.

    Returns:
        Per query, up to ``top_k`` :class:`RankedCandidate` ``(corpus_id, score, cosine, p_yes)``, best first.

    Raises:
        ValueError: For empty queries or corpus, ``top_k`` or ``rerank_top`` < 1, a non-finite ``weight`` or a
            re-ranker folder that is not a re-ranker, before anything is encoded.
        TypeError: For queries or corpus that are not lists.

    Example:
        >>> hits = retrieve_and_rerank(embedder, reranker, ["a red car"], corpus, top_k=3)  # doctest: +SKIP
        >>> hits[0][0].corpus_id, hits[0][0].score  # doctest: +SKIP
    """
    from .evaluation.search import exact_search

    queries = _check_items(queries, "queries")
    corpus = _check_items(corpus, "corpus")
    if isinstance(top_k, bool) or not isinstance(top_k, numbers.Integral) or top_k < 1:
        raise ValueError(f"top_k must be an integer >= 1, got {top_k!r}.")
    check_rerank_settings(rerank_top, weight)
    reranker = open_reranker(reranker)
    encode = {
        "batch_size": batch_size,
        "convert_to_numpy": True,
        "normalize_embeddings": True,
        "show_progress_bar": show_progress_bar,
    }
    query_embeddings = np.asarray(embedder.encode_query(queries, **encode), dtype=np.float32)
    corpus_embeddings = np.asarray(embedder.encode_document(corpus, **encode), dtype=np.float32)
    depth = min(max(top_k, rerank_top), len(corpus))
    cosines, rows = exact_search(query_embeddings, corpus_embeddings, depth)
    reranked = min(rerank_top, depth)
    results = []
    for query, query_cosines, query_rows in tqdm(
        zip(queries, cosines, rows, strict=True), total=len(queries), desc="Re-ranking", disable=not show_progress_bar
    ):
        p_yes = score_pairs(reranker, query, [corpus[row] for row in query_rows[:reranked]], batch_size)
        order, final = fuse(query_cosines[:reranked], p_yes, weight)
        ranked = [
            RankedCandidate(int(query_rows[i]), float(final[i]), float(query_cosines[i]), float(p_yes[i]))
            for i in order
        ]
        ranked += [
            RankedCandidate(int(row), float(cosine), float(cosine), None)
            for row, cosine in zip(query_rows[reranked:], query_cosines[reranked:], strict=True)
        ]
        results.append(ranked[:top_k])
    return results
