"""Training the U-MARVEL re-ranker with the sentence-transformers ``CrossEncoderTrainer``.

Two losses:

* :class:`PointwiseLMLoss`, the official objective: causal-LM cross-entropy on the assistant turn
  ``<|im_start|>assistant\\nYes<|im_end|>\\n`` (``No`` for the negative), so the model learns to *generate* the answer.
* sentence-transformers' ``BinaryCrossEntropyLoss`` on the model's score ``logit(Yes) - logit(No)`` with
  (query, candidate, label) rows: the native cross-encoder alternative, which trains exactly the quantity ``predict``
  returns.

And the data: :func:`build_rerank_dataset` pairs every (query, positive) with one negative drawn from a ranked list
minus the positives, as the reference draws it from the stage-3 model's local top 100.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from sentence_transformers import CrossEncoder
from sentence_transformers.cross_encoder import CrossEncoderTrainer
from torch import Tensor, nn

from ..modeling.reranker import NO, YES, PositionMode, normalize_pair

logger = logging.getLogger(__name__)

#: The reference truncates query and candidate texts to this many tokens in training (never at scoring).
TRAIN_MAX_TEXT_TOKENS = 256


class PointwiseLMLoss(nn.Module):
    """The official U-MARVEL re-ranker objective as a cross-encoder loss.

    Each (query, positive) pair gets the assistant answer ``Yes`` and each (query, negative) pair ``No``; the loss is
    the mean token cross-entropy, over the *full* vocabulary, of the 6 assistant-turn tokens
    (``<|im_start|>``, ``assistant``, ``\\n``, ``Yes``/``No``, ``<|im_end|>``, ``\\n``) of every sequence; the system
    and user turns carry no loss. As in the reference: texts are truncated to 256 tokens (decode round trip), rows
    are right-padded, and positions are plain 0..L-1 on all three M-RoPE axes (the reference's transformers 4.45
    forward computes M-RoPE only inside ``generate``). The LM head runs only on the loss positions.

    How it differs from ``BinaryCrossEntropyLoss`` on the score: this loss spends most of its signal on the template
    tokens and on the whole-vocabulary softmax at the answer position (it also pushes down every other token there),
    while the score the model is used with is ``sigmoid(logit Yes - logit No)`` at scoring (left padding, M-RoPE).
    ``BinaryCrossEntropyLoss`` trains exactly that two-way score, under the scoring layout, with one logit pair per
    row; it does not reproduce the official weights' training.

    Args:
        model: A re-ranker from :func:`umarvel_st.reranker_from_mllm`.
        max_text_tokens: Text truncation (256 in the reference).
        position_mode: ``"sequential"`` (the reference) or ``"mrope"`` (what transformers >= 4.47 computes).

    Inputs:
        +---------------------------------------------+--------+
        | Texts                                       | Labels |
        +=============================================+========+
        | (query, positive, negative_1, ...) columns  | none   |
        +---------------------------------------------+--------+

    Example:
        ::

            from sentence_transformers.cross_encoder import CrossEncoderTrainer
            from umarvel_st import reranker_from_mllm
            from umarvel_st.train.reranker import PointwiseLMLoss, build_rerank_dataset

            model = reranker_from_mllm("Qwen/Qwen2-VL-7B-Instruct")
            dataset = build_rerank_dataset(queries, candidates, ranked)
            CrossEncoderTrainer(model=model, train_dataset=dataset, loss=PointwiseLMLoss(model)).train()
    """

    def __init__(
        self,
        model: CrossEncoder,
        max_text_tokens: int | None = TRAIN_MAX_TEXT_TOKENS,
        position_mode: PositionMode = "sequential",
    ) -> None:
        super().__init__()
        if not hasattr(model[0], "render"):
            raise ValueError(
                f"{type(self).__name__} needs a U-MARVEL re-ranker (umarvel_st.reranker_from_mllm), got a model whose "
                f"first module is {type(model[0]).__name__}."
            )
        self.model = model
        self.max_text_tokens = max_text_tokens
        self.position_mode = position_mode

    def forward(
        self, inputs: list[list[Any]], labels: Tensor | None = None, prompt: str | None = None, task: str | None = None
    ) -> Tensor:
        if len(inputs) < 3:
            raise ValueError(
                f"{type(self).__name__} expects (query, positive, negative, ...) columns, got {len(inputs)} columns. "
                "Build the rows with build_rerank_dataset(...)."
            )
        queries, *candidate_columns = inputs
        # Category-major, as the reference collator: every positive first, then each negative column.
        raw = [
            (query, candidate)
            for column in candidate_columns
            for query, candidate in zip(queries, column, strict=True)
        ]
        pairs = [normalize_pair(pair, index) for index, pair in enumerate(raw)]
        answers = [YES] * len(queries) + [NO] * (len(pairs) - len(queries))
        return self.loss_from_pairs(pairs, answers, prompt)

    def loss_from_pairs(self, pairs: Sequence[Any], answers: Sequence[str], prompt: str | None = None) -> Tensor:
        """Mean token cross-entropy of the assistant turns of normalised ``pairs`` answered with ``answers``."""
        module = self.model[0]
        features = module.render(
            pairs, answers=answers, prompt=prompt, padding_side="right", max_text_tokens=self.max_text_tokens
        )
        features = {key: value.to(self.model.device) for key, value in features.items()}
        labels = assistant_labels(features["input_ids"], features["attention_mask"], module.tokenizer)
        hidden = module.mllm.model(
            input_ids=features["input_ids"],
            attention_mask=features["attention_mask"],
            position_ids=module.position_ids(features, self.position_mode),
            pixel_values=features.get("pixel_values"),
            image_grid_thw=features.get("image_grid_thw"),
            use_cache=False,
        ).last_hidden_state  # (batch, seq, hidden)
        targets = labels[:, 1:]  # (batch, seq - 1): token t predicts token t + 1
        selected = targets != -100
        logits = module.mllm.lm_head(hidden[:, :-1][selected]).float()  # (n_loss_tokens, vocab)
        return nn.functional.cross_entropy(logits, targets[selected])

    def get_config_dict(self) -> dict[str, Any]:
        return {"max_text_tokens": self.max_text_tokens, "position_mode": self.position_mode}


def assistant_labels(input_ids: Tensor, attention_mask: Tensor, tokenizer: Any) -> Tensor:
    """Loss labels: the tokens from each row's last ``<|im_start|>`` (the assistant turn) to its last real token;
    -100 elsewhere (system and user turns, padding)."""
    start_id = tokenizer.convert_tokens_to_ids("<|im_start|>")
    positions = torch.arange(input_ids.shape[1], device=input_ids.device)  # (seq,)
    is_start = (input_ids == start_id) & attention_mask.bool()  # (batch, seq)
    last_start = torch.where(is_start, positions, -1).max(-1, keepdim=True).values  # (batch, 1)
    keep = (positions >= last_start) & attention_mask.bool()  # (batch, seq)
    return input_ids.masked_fill(~keep, -100)


def build_rerank_dataset(
    queries: Mapping[str, Any],
    candidates: Mapping[str, Any],
    positives: Mapping[str, Sequence[str]],
    ranked: Mapping[str, Sequence[str]],
    *,
    seed: int = 0,
    output_format: Literal["triplet", "labeled-pair"] = "triplet",
) -> Any:
    """Re-ranker training rows: every (query, positive) with one negative drawn at random from the query's ranked list
    minus its positives (the reference draws from the stage-3 model's local top 100).

    Args:
        queries: Query id -> query item (a dict with ``text`` / ``image`` path / ``instruction``).
        candidates: Candidate id -> candidate item (a dict with ``text`` / ``image`` path).
        positives: Query id -> its positive candidate ids.
        ranked: Query id -> candidate ids in rank order (e.g. an embedder's top 100).
        seed: Seed of the negative draw.
        output_format: ``"triplet"`` (query, positive, negative) columns for :class:`PointwiseLMLoss`, or
            ``"labeled-pair"`` (query, candidate, label) rows for ``BinaryCrossEntropyLoss``.

    Returns:
        A ``datasets.Dataset``.

    Raises:
        ValueError: For an unknown id, a query with no positive, or a ranked list with no negative.
    """
    from datasets import Dataset

    if output_format not in ("triplet", "labeled-pair"):
        raise ValueError(f"output_format must be 'triplet' or 'labeled-pair', got {output_format!r}.")
    rng = random.Random(seed)
    rows: dict[str, list[Any]] = {"query": [], "positive": [], "negative": []}
    for query_id, query in queries.items():
        positive_ids = list(positives.get(query_id) or [])
        if not positive_ids:
            raise ValueError(f"Query {query_id!r} has no positive; give positives[{query_id!r}] a candidate id.")
        negative_ids = [cid for cid in ranked.get(query_id, []) if cid not in set(positive_ids)]
        if not negative_ids:
            raise ValueError(
                f"Query {query_id!r}: its ranked list {list(ranked.get(query_id, []))[:5]} has no candidate besides "
                "the positives; give a longer ranked list."
            )
        for candidate_id in [*positive_ids, *negative_ids]:
            if candidate_id not in candidates:
                raise ValueError(f"Query {query_id!r}: unknown candidate id {candidate_id!r}.")
        for positive_id in positive_ids:
            rows["query"].append(_item(query))
            rows["positive"].append(_item(candidates[positive_id]))
            rows["negative"].append(_item(candidates[rng.choice(negative_ids)]))
    if output_format == "triplet":
        return Dataset.from_dict(rows)
    count = len(rows["query"])
    return Dataset.from_dict(
        {
            "query": rows["query"] * 2,
            "candidate": rows["positive"] + rows["negative"],
            "label": [1.0] * count + [0.0] * count,
        }
    )


def _item(value: Any) -> dict[str, Any]:
    """One item as a dict with all three keys, so that a ``datasets`` column has one schema."""
    value = {"text": value} if isinstance(value, str) else dict(value)
    return {"text": value.get("text") or "", "image": value.get("image"), "instruction": value.get("instruction")}


def rerank_stage_dataset(path: str | Path, *, loss: str, seed: int) -> Any:
    """The training data of a ``rerank`` recipe stage: ``path`` is a JSON object with ``queries``, ``candidates``,
    ``positives`` and ``ranked`` (the arguments of :func:`build_rerank_dataset`); triplets for the ``"pointwise"``
    loss, labeled pairs for ``"bce"``.

    Raises:
        ValueError: Naming the file, for a missing or malformed file or missing keys.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"Re-ranker data file {str(path)!r} does not exist; write the JSON object it names first.")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: not valid UTF-8 JSON ({error}).") from error
    keys = {"queries", "candidates", "positives", "ranked"}
    if not isinstance(data, dict) or not keys <= set(data) or set(data) - keys:
        found = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"{path}: expected a JSON object with exactly the keys {sorted(keys)}, got {found}.")
    output_format = "triplet" if loss == "pointwise" else "labeled-pair"
    return build_rerank_dataset(**data, seed=seed, output_format=output_format)


class _Trainer(CrossEncoderTrainer):
    """The cross-encoder trainer, resuming from checkpoints with the installed classes (no code from the folder;
    see ``umarvel_st.train.runner._Trainer``)."""

    def _load_from_checkpoint(self, checkpoint_path: str) -> None:
        from ..reranker import load_reranker

        model = getattr(self.model, "_orig_mod", self.model)
        model.load_state_dict(load_reranker(checkpoint_path, device="cpu").state_dict())


def run_rerank_stage(recipe: Any, stage: Any, init: Path, folder: Path, dataset: Any) -> Path:
    """Train a re-ranker stage of a recipe (``data: {kind: rerank, path: FILE}``), resuming from its last
    checkpoint; merge, save ``folder/model`` and write ``folder/run_config.json`` (which marks the stage done).

    ``dataset`` is :func:`rerank_stage_dataset`'s; ``stage.loss`` is ``"pointwise"`` (:class:`PointwiseLMLoss`) or
    ``"bce"``.

    Returns:
        The saved model folder.
    """
    from sentence_transformers.cross_encoder import CrossEncoderTrainingArguments
    from sentence_transformers.cross_encoder.losses import BinaryCrossEntropyLoss
    from transformers import set_seed

    from ..reranker import reranker_from_mllm
    from .lora import apply_lora, freeze_vision, merge_lora
    from .runner import training_arguments

    set_seed(recipe.seed)
    model = reranker_from_mllm(str(init), max_pixels=stage.max_pixels)
    if stage.adapter == "lora":
        apply_lora(model, r=stage.lora_r, alpha=stage.lora_alpha, dropout=stage.lora_dropout)
    elif not stage.train_vision:
        freeze_vision(model)
    pointwise = stage.loss == "pointwise"
    checkpoints = folder / "checkpoints"
    args = training_arguments(CrossEncoderTrainingArguments, recipe, stage, checkpoints, stage.epochs)
    loss = PointwiseLMLoss(model) if pointwise else BinaryCrossEntropyLoss(model)
    trainer = _Trainer(model=model, args=args, train_dataset=dataset, loss=loss)
    done = [path for path in checkpoints.glob("checkpoint-*") if (path / "trainer_state.json").is_file()]
    last = str(max(done, key=lambda path: int(path.name.rpartition("-")[2]))) if done else None
    if last:
        logger.info("Stage %s: resuming from %s", stage.name, last)
    result = trainer.train(resume_from_checkpoint=last)
    if stage.adapter == "lora":
        merge_lora(model)
    target = folder / "model"
    model.save(str(target))
    run_config = {
        "recipe": recipe.name,
        "stage": dataclasses.asdict(stage),
        "init_from": str(init),
        "seed": recipe.seed,
        "resumed_from": last,
        "train": result.metrics,
    }
    (folder / "run_config.json").write_text(json.dumps(run_config, indent=2, default=str), encoding="utf-8")
    return target


def rerank_data_from_lists(
    root: str | Path,
    lists: str | Path,
    output: str | Path,
    *,
    tasks: Sequence[str] | None = None,
    seed: int = 0,
    max_queries_per_task: int | None = None,
) -> Path:
    """Write the re-ranker's training file (the ``rerank`` data kind's JSON object) from ``umarvel mine`` lists.

    Each training query with a positive in the pool gets one negative, drawn (seeded per query) from its LOCAL top-k
    list minus its positives (spec 2.1); queries carry the instruction they were mined with; the file's ``ranked`` entry holds that one negative, so
    :func:`build_rerank_dataset` pairs it with every positive of the query. A query with no positive in the pool, or whose local list holds only positives, gets no row (the
    counts are logged).

    Args:
        root: The M-BEIR data root the lists were mined from.
        lists: A finished ``umarvel mine`` folder.
        output: The JSON file to write (atomically).
        tasks: Task names; default every task of the lists.
        seed: Seed of the negative draws.
        max_queries_per_task: Keep only the first N queries of each task (for quick runs).

    Returns:
        ``output``.

    Raises:
        ValueError: For lists from other data, or when no query gets a row.
    """
    from ..data.mbeir import DID_BOUND, QID_BOUND, MBEIRData, hash_id
    from .mining import MinedLists, mining_instruction

    data, mined = MBEIRData(root), MinedLists(lists)
    selected = data.resolve_tasks(tasks or list(mined.ranges), mined.fingerprint["data"]["split"])
    mined.check(data, selected)
    pool = data.pool_path(selected[0], "global", mined.fingerprint["data"]["split"])
    candidates = {candidate.did: candidate for candidate in data.iter_candidates(pool)}
    did_of = {hash_id(did, DID_BOUND): did for did in candidates}
    local = mined.dids("local")
    content: dict[str, dict[str, Any]] = {"queries": {}, "candidates": {}, "positives": {}, "ranked": {}}
    no_positive = no_negative = 0
    for task in selected:
        rows = mined.rows(task.name)
        for number, query in enumerate(data.iter_queries(task, mined.fingerprint["data"]["split"])):
            if max_queries_per_task is not None and number >= max_queries_per_task:
                break
            if int(mined.qids[rows[number]]) != hash_id(query.qid, QID_BOUND):
                raise ValueError(f"{query.source}: the lists' row {rows[number]} is another query; mine again.")
            positives = [did for did in query.pos_cand_list if did in candidates]
            excluded = {hash_id(did, DID_BOUND, query.source) for did in query.pos_cand_list}
            negatives = [int(did) for did in local[rows[number]] if did >= 0 and int(did) not in excluded]
            no_positive += not positives
            no_negative += bool(positives) and not negatives
            if not positives or not negatives:
                continue
            negative = did_of[random.Random(f"{seed}:{query.qid}").choice(negatives)]
            content["queries"][query.qid] = data.query_item(query, mining_instruction(data, query, task))
            for did in (*positives, negative):
                content["candidates"][did] = data.candidate_item(candidates[did])
            content["positives"][query.qid] = positives
            content["ranked"][query.qid] = [negative]
    if no_positive or no_negative:
        logger.warning(
            "Re-ranker data: %d queries have no positive in %s and %d have only positives in their local list; "
            "they get no row.",
            no_positive,
            pool,
            no_negative,
        )
    if not content["queries"]:
        raise ValueError(
            f"No re-ranker rows: no query of {[task.name for task in selected]} has a positive and a "
            f"negative in its local list ({lists})."
        )
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    temporary = output.with_name(output.name + ".tmp")
    temporary.write_text(json.dumps(content), encoding="utf-8")
    temporary.replace(output)
    return output
