"""``umarvel train RECIPE [--set key=value ...]``: run a staged U-MARVEL recipe on sentence-transformers' trainer.

Layout of ``output_dir``::

    00-base/model/                 the base model with the U-MARVEL tokens (every stage starts from a saved folder)
    00-base/settings.json          what the base was built from
    01-<stage>/settings.json       the stage's effective settings and their fingerprint, written before it trains
    01-<stage>/checkpoints/        trainer checkpoints (with temperature.json): the resume points
    01-<stage>/model/              the stage's merged model, ready for inference, with its temperature.json
    01-<stage>/eval.json           M-BEIR scores after the stage, when the recipe asks for them
    01-<stage>/run_config.json     the resolved stage config and results; written last, it marks the stage done
    02-<step>/lists/ ...           a step's output (``kind: mine`` lists, ``rerank-data`` rerank.json,
                                   ``distill-data`` distillation rows): see :data:`STEP_OUTPUTS`

Steps. Besides training stages (``kind: train``, the default) a recipe holds steps that make a later stage's input
from an earlier stage's model: ``mine`` (``umarvel mine`` with the ``init_from`` model), ``rerank-data`` (the
re-ranker's training file from a ``mine`` step's lists), ``distill-data`` (``umarvel distill-data`` with the
``init_from`` model and a re-ranker stage). A later stage names the step in ``data.from`` and reads its output,
and ``init_from`` may name any earlier stage. Steps are recorded, skipped, refused on change and resumed (their own
output resumes) like training stages; a stage's settings include the fingerprints of the stages it reads.

Rerunning the same command after an interruption (even ``kill -9``) skips finished stages and resumes the current
one from its last checkpoint. A stage is only skipped or resumed when its effective settings (every field that
changes the trained model, the seed, and the fingerprint of its input model, so a change propagates to later
stages) equal the recorded ones; otherwise the run stops before training anything and names the changed keys. Train
into a new ``output_dir``, or pass ``--restart-from STAGE`` to discard that stage and every later one and train them
again.

Before anything trains the whole run is checked: the recipe's fields (at load), the stages' data (every pending
stage's dataset is built), the ``init_from`` folders, the DeepSpeed config and the ``evaluate`` block (its data
root and task names). ``--dry-run`` runs the same checks, writes nothing and prints what would be done.

Saved folders (the base, stage models, checkpoints) are loaded with this package's installed classes
(:func:`umarvel_st.load`), never with code found in the folder.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments

from ..model import check_model_source, from_mllm, load, open_model
from .losses import TEMPERATURE_FILE
from .recipe import INPUT_OPTION, Recipe, StageConfig, load_recipe

logger = logging.getLogger(__name__)

RUN_CONFIG = "run_config.json"
SETTINGS = "settings.json"
# Stage fields that change how a run is logged or checkpointed, not the model it trains.
BOOKKEEPING_FIELDS = ("logging_steps", "save_steps")
# Stage fields added after runs were recorded, with their defaults: a field at its default is left out of the
# settings, so records written before it existed stay valid (and a change from the default is still refused).
LATER_FIELDS = {"kind": "train", "gradient_accumulation_steps": 1}


def _stage_dir(recipe: Recipe, index: int, stage: StageConfig) -> Path:
    return Path(recipe.output_dir) / f"{index + 1:02d}-{stage.name}"


def _base_dir(recipe: Recipe) -> Path:
    return Path(recipe.output_dir) / "00-base"


def _fingerprint(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def _folder_digest(folder: Path) -> str:
    """SHA-256 over the relative paths and contents of every file under ``folder``."""
    digest = hashlib.sha256()
    for path in sorted(item for item in folder.rglob("*") if item.is_file()):
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0")
        with path.open("rb") as handle:
            digest.update(hashlib.file_digest(handle, "sha256").digest())
    return digest.hexdigest()


def base_settings(recipe: Recipe) -> dict[str, Any]:
    """What the base model folder is built from: the base model (its files' digest when it is a local folder)."""
    settings: dict[str, Any] = {"base_model": recipe.base_model}
    if recipe.base_model.startswith("tiny:"):
        settings["seed"] = recipe.seed  # the tiny backbone's random weights
    elif Path(recipe.base_model).is_dir():
        settings["files"] = _folder_digest(Path(recipe.base_model))
    return settings


def stage_settings(
    stage: StageConfig, seed: int, input_fingerprint: str, reads: dict[str, str] | None = None
) -> dict[str, Any]:
    """A stage's effective settings: the fields that change its model, the seed, and its input model's fingerprint.

    The input fingerprint is the ``init_from`` stage's settings fingerprint (so a change to a stage also changes every
    later stage), the base's for ``base``, and a digest of the files of an ``init_from`` folder. ``reads`` maps the
    earlier stages whose outputs the stage reads (``data.from``, ``data.reranker``) to their fingerprints.
    """
    fields = {
        key: value
        for key, value in dataclasses.asdict(stage).items()
        if key not in BOOKKEEPING_FIELDS and not (key in LATER_FIELDS and value == LATER_FIELDS[key])
    }
    settings = {"stage": fields, "seed": seed, "input": input_fingerprint}
    if reads:
        settings["reads"] = reads
    return settings


def _changes(recorded: dict[str, Any], current: dict[str, Any], stage_path: str) -> list[str]:
    """``key: old -> new`` for every setting that differs; a stage's fields are named by their recipe path."""

    def differ(old: dict[str, Any], new: dict[str, Any], prefix: str) -> list[str]:
        keys = sorted(set(old) | set(new))
        pairs = [(key, old.get(key, "<unset>"), new.get(key, "<unset>")) for key in keys]
        return [f"{prefix}{key}: {before!r} -> {after!r}" for key, before, after in pairs if before != after]

    changes = differ(
        {**LATER_FIELDS, **recorded.get("stage", {})}, {**LATER_FIELDS, **current.get("stage", {})}, stage_path
    )
    for change in differ({**recorded, "stage": None}, {**current, "stage": None}, ""):
        if change.startswith("input:"):
            change = "input model (an earlier stage's settings, the base model or the init_from folder)"
        elif change.startswith("reads:"):
            change = "the settings of an earlier stage it reads (data.from, data.reranker)"
        changes.append(change)
    return changes


def _check_record(folder: Path, settings: dict[str, Any], what: str, stage_path: str, fix: str) -> None:
    """Refuse to reuse ``folder`` when its recorded settings differ from ``settings``."""
    record = folder / SETTINGS
    recorded = json.loads(record.read_text(encoding="utf-8"))["settings"] if record.is_file() else {}
    current = json.loads(json.dumps(settings))  # as JSON stores it (tuples become lists)
    if recorded == current:
        return
    changes = _changes(recorded, current, stage_path) if recorded else [f"{record} is missing"]
    raise ValueError(
        f"{what} in {folder} was made with other settings than the recipe now gives, so it cannot be reused "
        f"(changed: {'; '.join(changes)}). Train into a new output_dir (--set output_dir=...), or {fix}."
    )


def _write_record(folder: Path, settings: dict[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    record = {"fingerprint": _fingerprint(settings), "settings": settings}
    (folder / SETTINGS).write_text(json.dumps(record, indent=2), encoding="utf-8")


@dataclasses.dataclass
class StagePlan:
    """What a run does with one stage: ``status`` is ``"done"`` (skip), ``"resume"`` or ``"train"``."""

    index: int
    stage: StageConfig
    folder: Path
    settings: dict[str, Any]
    status: str


def plan(recipe: Recipe, restart_from: str | None = None) -> list[StagePlan]:
    """Decide, without writing anything, which stages are done, which resume and which train.

    Args:
        recipe: The recipe.
        restart_from: A stage name: that stage and every later one are trained from scratch (their folders are
            discarded when the run starts), and, for the first stage, the base model is rebuilt.

    Raises:
        ValueError: When a finished or checkpointed stage (or the base model folder) was made with settings other
            than the recipe's, naming the changed keys; or for an unknown ``restart_from``.
    """
    names = [stage.name for stage in recipe.stages]
    if restart_from is not None and restart_from not in names:
        raise ValueError(
            f"--restart-from {restart_from!r} is not a stage of recipe {recipe.name!r}: use one of {names}."
        )
    first_restarted = names.index(restart_from) if restart_from is not None else len(names)
    base = base_settings(recipe)
    if first_restarted > 0 and (_base_dir(recipe) / "model" / "modules.json").is_file():
        _check_record(
            _base_dir(recipe),
            base,
            "The base model",
            "",
            f"--restart-from {names[0]} to rebuild it and retrain everything",
        )
    plans, previous, fingerprints = [], _fingerprint(base), {}
    for index, stage in enumerate(recipe.stages):
        folder = _stage_dir(recipe, index, stage)
        if stage.init_from == "base":
            source = _fingerprint(base)
        elif stage.init_from == "previous":
            source = previous
        elif stage.init_from in fingerprints:
            source = fingerprints[stage.init_from]
        elif Path(stage.init_from).is_dir():
            source = _folder_digest(Path(stage.init_from))
        else:
            raise ValueError(
                f"stages.{index}.init_from: {stage.init_from!r} is not a folder; use 'previous', 'base' or the folder "
                "of a saved model."
            )
        reads = {name: fingerprints[name] for name in _references(stage) if name in fingerprints}
        settings = stage_settings(stage, recipe.seed, source, reads)
        previous = fingerprints[stage.name] = _fingerprint(settings)
        done = (folder / RUN_CONFIG).is_file()
        started = stage.kind != "train" and (folder / SETTINGS).is_file()  # a step resumes its own output
        checkpointed = started or any((folder / "checkpoints").glob("checkpoint-*"))
        if index >= first_restarted or not (done or checkpointed):
            status = "train"
        else:
            _check_record(
                folder,
                settings,
                f"Stage {stage.name!r}",
                f"stages.{index}.",
                f"--restart-from {stage.name} to discard it and every later stage and train them again",
            )
            status = "done" if done else "resume"
        plans.append(StagePlan(index, stage, folder, settings, status))
    return plans


def prepare_base(recipe: Recipe) -> Path:
    """Save the base model once (a saved model as saved, a Qwen-VL checkpoint with the U-MARVEL tokens added), so
    every stage and checkpoint starts from a folder."""
    folder = _base_dir(recipe) / "model"
    if (folder / "modules.json").is_file():
        return folder
    source = recipe.base_model
    if source.startswith("tiny:"):
        from ..testing import build_tiny_backbone

        source = str(build_tiny_backbone(source.removeprefix("tiny:"), folder.parent / "backbone", seed=recipe.seed))
    open_model(source).save(str(folder))  # a saved model keeps its options; a Qwen-VL checkpoint gets the tokens
    _write_record(folder.parent, base_settings(recipe))
    return folder


# What each step kind writes in its stage folder (a later stage's ``data.from`` reads it).
STEP_OUTPUTS = {"mine": "lists", "rerank-data": "rerank.json", "distill-data": "distill"}


def _references(stage: StageConfig) -> list[str]:
    """Names an item of ``stage.data`` gives of earlier stages whose outputs it reads."""
    names = [stage.data["from"]] if "from" in stage.data else []
    if stage.kind == "distill-data":
        names.append(stage.data["reranker"])
    return names


def stage_output(recipe: Recipe, name: str) -> Path:
    """The output of stage ``name``: a training stage's model folder or a step's :data:`STEP_OUTPUTS` path."""
    index = [stage.name for stage in recipe.stages].index(name)
    stage = recipe.stages[index]
    return _stage_dir(recipe, index, stage) / STEP_OUTPUTS.get(stage.kind, "model")


def raw_base(recipe: Recipe) -> Path:
    """The raw base MLLM (with its LM head) a re-ranker starts from: the tiny backbone's folder or ``base_model``."""
    if recipe.base_model.startswith("tiny:"):
        return _base_dir(recipe) / "backbone"
    return Path(recipe.base_model)


def init_folder(recipe: Recipe, index: int) -> Path:
    """The folder of the model stage ``index`` starts from (a step: the model it uses), per its ``init_from``."""
    stage = recipe.stages[index]
    if stage.init_from == "base":
        return (
            raw_base(recipe)
            if stage.kind == "train" and stage.data["kind"] == "rerank"
            else _base_dir(recipe) / "model"
        )
    if stage.init_from == "previous":
        return stage_output(recipe, recipe.stages[index - 1].name) if index > 0 else _base_dir(recipe) / "model"
    if stage.init_from in [item.name for item in recipe.stages]:
        return stage_output(recipe, stage.init_from)
    return Path(stage.init_from)


def resolved_data(recipe: Recipe, stage: StageConfig) -> dict[str, Any]:
    """``stage.data`` with ``from: STAGE`` replaced by that step's output (and stage 4's ``model`` by the model the
    lists were mined with), and a ``reranker`` stage name by its model folder."""
    options = dict(stage.data)
    names = [item.name for item in recipe.stages]
    source = options.pop("from", None)
    if source is not None:
        kind = stage.data["kind"] if stage.kind == "train" else stage.kind
        options[INPUT_OPTION.get(kind, "lists")] = str(stage_output(recipe, source))
        if kind == "mbeir_negatives":
            options.setdefault("model", str(init_folder(recipe, names.index(source))))
    if stage.kind == "distill-data" and options["reranker"] in names:
        options["reranker"] = str(stage_output(recipe, options["reranker"]))
    return options


def build_dataset(stage: StageConfig, seed: int, options: dict[str, Any] | None = None):
    """The stage's training data (see :mod:`umarvel_st.data.training`); ``options``: the resolved data block
    (:func:`resolved_data`), default ``stage.data``."""
    from ..data import training

    options = {key: value for key, value in (options or stage.data).items() if key != "kind"}
    kind = stage.data["kind"]
    if kind == "nli":
        return training.nli_pairs(**options)
    if kind == "captions":
        return training.image_captions(**options)
    if kind == "pairs":
        return training.custom_pairs(options.pop("path"), **options)
    if kind == "rerank":
        from .reranker import rerank_stage_dataset

        return rerank_stage_dataset(options["path"], loss=stage.loss, seed=seed)
    if kind == "distill":  # stage 5: the rows of `umarvel distill-data` (see umarvel_st.train.distill)
        from .distill import distill_dataset

        return distill_dataset(options["path"])
    if kind == "mbeir_negatives":  # stage 4: reads the lists of `umarvel mine` (see umarvel_st.train.mining)
        from .mining import mbeir_hard_negatives

        return mbeir_hard_negatives(**options, instructions=stage.instructions, epochs=stage.epochs, seed=seed)
    return training.mbeir_train(**options, instructions=stage.instructions, epochs=stage.epochs, seed=seed)


def last_complete_checkpoint(checkpoints: Path) -> str | None:
    """The newest checkpoint that was fully written, or ``None``; newer, partly written ones are removed.

    A ``kill -9`` can land while a checkpoint is being written. ``temperature.json`` is written last (by the
    temperature callback, after the trainer's own files), so a folder holding it is complete.
    """
    found = sorted(checkpoints.glob("checkpoint-*"), key=lambda path: int(path.name.rpartition("-")[2]), reverse=True)
    for folder in found:
        if (folder / TEMPERATURE_FILE).is_file() and (folder / "trainer_state.json").is_file():
            return str(folder)
        logger.warning("Removing the incomplete checkpoint %s", folder)
        shutil.rmtree(folder)
    return None


class _Trainer(SentenceTransformerTrainer):
    """sentence-transformers' trainer, resuming from checkpoints with this package's installed classes.

    The stock resume rebuilds the model from the checkpoint's ``modules.json`` types. This package saves them flat
    (``encoder.UMarvelTransformer``, so that folders load without umarvel_st installed), and such a type is imported
    from the code files in the checkpoint folder, which means running code from disk with ``trust_remote_code``.
    :func:`umarvel_st.load` maps those types to the installed classes instead; the weights are then copied into the
    model being trained, as the stock resume does.
    """

    def _load_from_checkpoint(self, checkpoint_path: str) -> None:
        model = getattr(self.model, "_orig_mod", self.model)
        model.load_state_dict(load(checkpoint_path, device="cpu").state_dict())


def _stage_model(init: Path, stage: StageConfig) -> SentenceTransformer:
    """The model a stage starts from, rendering as training does (no generation prompt).

    A saved sentence-transformers folder (the base, a previous stage) is loaded with its saved options and the
    installed classes; a plain Qwen-VL checkpoint is built with :func:`umarvel_st.from_mllm`.
    """
    options = {"summarize_suffix": stage.summarize_suffix, "generation_prompt": False, "max_pixels": stage.max_pixels}
    if not (init / "modules.json").is_file():
        return from_mllm(str(init), **options)
    model = load(init)
    if model[0].min_pixels > stage.max_pixels:
        raise ValueError(
            f"Stage {stage.name!r}: max_pixels={stage.max_pixels} is below the model's min_pixels={model[0].min_pixels}."
        )
    for key, value in options.items():
        setattr(model[0], key, value)
    return model


def training_arguments(args_class: type, recipe: Recipe, stage: StageConfig, output_dir: Path, epochs: int) -> Any:
    """A stage's trainer arguments, the same for embedder and re-ranker stages.

    Args:
        args_class: ``SentenceTransformerTrainingArguments`` or ``CrossEncoderTrainingArguments``.
        recipe: The recipe (seed, DeepSpeed config).
        stage: The stage.
        output_dir: The stage's checkpoint folder.
        epochs: Epochs to run (1 where the data stacks the epochs' draws).
    """
    import torch

    return args_class(
        output_dir=str(output_dir),
        per_device_train_batch_size=stage.batch_size,
        gradient_accumulation_steps=stage.gradient_accumulation_steps,
        num_train_epochs=epochs,
        max_steps=stage.max_steps,
        learning_rate=stage.lr,
        weight_decay=stage.weight_decay,
        lr_scheduler_type="cosine",
        warmup_steps=stage.warmup_ratio,  # a float below 1 is a ratio of the total steps (transformers 5)
        max_grad_norm=stage.max_grad_norm,
        optim="adamw_torch",
        bf16=torch.cuda.is_available(),
        dataloader_pin_memory=torch.cuda.is_available(),  # pinning needs an accelerator (a warning per epoch without)
        activation_checkpointing=stage.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False},
        save_strategy="steps",
        save_steps=stage.save_steps,
        save_total_limit=2,
        logging_steps=stage.logging_steps,
        seed=recipe.seed,
        report_to=[],
        dataloader_drop_last=False,
        deepspeed=recipe.deepspeed,
        # The only buffers are fixed rotary tables; broadcasting them hung a 2-process gloo run (tests/test_distributed).
        ddp_broadcast_buffers=False,
    )


def run_stage(
    recipe: Recipe,
    index: int,
    init: Path,
    temperature_from: Path | None,
    *,
    dataset: Any,
    settings: dict[str, Any],
    evaluator: Any = None,
) -> Path:
    """Train one stage (resuming from its last checkpoint), merge, save, evaluate. Returns the model folder.

    Args:
        recipe: The recipe.
        index: The stage's index in ``recipe.stages``.
        init: The folder of the model the stage starts from.
        temperature_from: A model folder whose ``temperature.json`` the stage starts from (``carry_temperature``).
        dataset: The stage's training data (:func:`build_dataset`).
        settings: The stage's effective settings (:func:`stage_settings`), recorded before training starts.
        evaluator: An :class:`~umarvel_st.evaluation.mbeir_evaluator.MBEIREvaluator` to score the stage's model.
    """
    from transformers import set_seed

    from .lora import apply_lora, freeze_vision, merge_lora
    from .losses import CachedInfoNCELoss, InfoNCELoss, RerankerDistillationLoss, Temperature, TemperatureCallback

    stage = recipe.stages[index]
    folder = _stage_dir(recipe, index, stage)
    _write_record(folder, settings)
    if stage.kind != "train":
        return run_step(recipe, index, init, settings)
    if stage.data["kind"] == "rerank":  # the re-ranker stage kind (issue 9)
        from .reranker import run_rerank_stage

        return run_rerank_stage(recipe, stage, init, folder, dataset)
    set_seed(recipe.seed)  # the fresh LoRA's random init must be the same in a rerun
    model = _stage_model(init, stage)
    if stage.adapter == "lora":
        apply_lora(model, r=stage.lora_r, alpha=stage.lora_alpha, dropout=stage.lora_dropout)
    elif not stage.train_vision:
        freeze_vision(model)

    tau = Temperature(stage.temperature, learnable=stage.learnable_temperature)
    if stage.carry_temperature and temperature_from is not None:
        tau.load(temperature_from)
    # M-BEIR draws fresh positives and instructions per epoch by stacking the epochs' draws into the dataset.
    epochs = 1 if stage.data["kind"] in ("mbeir", "mbeir_negatives") else stage.epochs
    checkpoints = folder / "checkpoints"
    args = training_arguments(SentenceTransformerTrainingArguments, recipe, stage, checkpoints, epochs)
    # Under torchrun / accelerate every query is scored against the candidates of all processes (global batch).
    if stage.loss == "distill":  # stage 5: KL to the re-ranker teacher over each query's own candidates
        loss = RerankerDistillationLoss(model, temperature=tau)
    else:
        loss_class = CachedInfoNCELoss if stage.cached else InfoNCELoss
        extra = {"mini_batch_size": stage.mini_batch_size} if stage.cached else {}
        symmetric = stage.loss == "symmetric"
        gather = args.world_size > 1
        loss = loss_class(model, temperature=tau, symmetric=symmetric, gather_across_devices=gather, **extra)
    trainer = _Trainer(model=model, args=args, train_dataset=dataset, loss=loss, callbacks=[TemperatureCallback(tau)])
    last = last_complete_checkpoint(checkpoints)
    if last:
        logger.info("Stage %s: resuming from %s", stage.name, last)
    result = trainer.train(resume_from_checkpoint=last)

    if stage.adapter == "lora":
        merge_lora(model)
    model[0].generation_prompt = True  # the saved model is for inference, as the reference evaluates
    target = folder / "model"
    model.save(str(target))
    tau.save(target)

    evaluation = None
    if evaluator is not None:
        evaluation = evaluator.evaluate(model)
        (folder / "eval.json").write_text(json.dumps(evaluation, indent=2))
    run_config = {
        "recipe": recipe.name,
        "stage": dataclasses.asdict(stage),
        "index": index,
        "init_from": str(init),
        "seed": recipe.seed,
        "fingerprint": _fingerprint(settings),
        "temperature": tau.value.item(),
        "train": result.metrics,
        "evaluation": evaluation,
    }
    (folder / RUN_CONFIG).write_text(json.dumps(run_config, indent=2, default=str))
    return target


def _mine_step(recipe: Recipe, stage: StageConfig, init: Path, output: Path, options: dict[str, Any]) -> None:
    from .mining import mine

    mine(
        init,
        options["root"],
        output,
        tasks=options.get("tasks"),
        top_k=options.get("top_k", 100),
        batch_size=options.get("batch_size", 32),
    )


def _rerank_data_step(recipe: Recipe, stage: StageConfig, init: Path, output: Path, options: dict[str, Any]) -> None:
    from .reranker import rerank_data_from_lists

    rerank_data_from_lists(
        options["root"],
        options["lists"],
        output,
        tasks=options.get("tasks"),
        seed=recipe.seed,
        max_queries_per_task=options.get("max_queries_per_task"),
    )


def _distill_data_step(recipe: Recipe, stage: StageConfig, init: Path, output: Path, options: dict[str, Any]) -> None:
    from .distill import DEFAULT_FRACTION, DEFAULT_TOP_K, distillation_data

    distillation_data(
        init,
        options["reranker"],
        options["root"],
        output,
        tasks=options.get("tasks"),
        fraction=options.get("fraction", DEFAULT_FRACTION),
        top_k=options.get("top_k", DEFAULT_TOP_K),
        task_weights=options.get("task_weights"),
        seed=recipe.seed,
        batch_size=options.get("batch_size", 32),
    )


#: Step kind -> the function that writes its output: ``(recipe, stage, init model, output path, resolved options)``.
STEPS = {"mine": _mine_step, "rerank-data": _rerank_data_step, "distill-data": _distill_data_step}


def run_step(recipe: Recipe, index: int, init: Path, settings: dict[str, Any]) -> Path:
    """Run a step stage (resuming its output), then write its ``run_config.json``. Returns its output path."""
    stage = recipe.stages[index]
    folder = _stage_dir(recipe, index, stage)
    output = folder / STEP_OUTPUTS[stage.kind]
    options = resolved_data(recipe, stage)
    STEPS[stage.kind](recipe, stage, init, output, options)
    run_config = {
        "recipe": recipe.name,
        "stage": dataclasses.asdict(stage),
        "index": index,
        "init_from": str(init),
        "inputs": options,
        "seed": recipe.seed,
        "fingerprint": _fingerprint(settings),
        "output": str(output),
    }
    (folder / RUN_CONFIG).write_text(json.dumps(run_config, indent=2, default=str))
    return output


def build_evaluator(options: dict[str, Any]) -> Any:
    """The M-BEIR evaluator of a recipe's ``evaluate`` block; checks its data root and task names.

    Raises:
        ValueError: For a missing data root, an unknown task or one without a query file for the split.
    """
    from ..evaluation.mbeir_evaluator import MBEIREvaluator

    return MBEIREvaluator(
        options["data"],
        options.get("tasks"),
        split=options.get("split", "test"),
        pool=options.get("pool", "local"),
        batch_size=options.get("batch_size", 32),
        show_progress_bar=False,
    )


# Data kinds whose input is made from an earlier stage's model (stage 4 reads lists mined with the stage-3 model).
MADE_BY_EARLIER_STAGES = ("mbeir_negatives",)


def _stage_dataset(recipe: Recipe, item: StagePlan) -> Any:
    """:func:`build_dataset` for a planned stage, its errors naming the stage."""
    try:
        return build_dataset(item.stage, recipe.seed, resolved_data(recipe, item.stage))
    except (ValueError, TypeError) as error:
        kind = TypeError if isinstance(error, TypeError) else ValueError
        raise kind(f"Stage {item.stage.name!r} (stages.{item.index}.data): {error}") from None


def check_inputs(recipe: Recipe, plans: list[StagePlan]) -> tuple[dict[int, Any], Any]:
    """Check, before anything trains, what the pending stages will read; build their data and the evaluator.

    Returns:
        The training datasets by stage index (pending stages, except those whose input an earlier pending stage
        makes: see :data:`MADE_BY_EARLIER_STAGES`) and the evaluator (``None`` without an ``evaluate`` block or with
        nothing to train).

    Raises:
        ValueError: For an ``output_dir`` that is a file, a ``base_model`` that is neither a folder nor a Hub id, a
            missing DeepSpeed config, bad training data (naming the stage, file and row) or a bad
            ``evaluate`` block.
    """
    if recipe.deepspeed is not None and not Path(recipe.deepspeed).is_file():
        raise ValueError(f"deepspeed: no file {recipe.deepspeed!r}; point it at a DeepSpeed JSON config.")
    if Path(recipe.output_dir).exists() and not Path(recipe.output_dir).is_dir():
        raise ValueError(f"output_dir {recipe.output_dir!r} is a file; point it at a new or existing folder.")
    pending = [item for item in plans if item.status != "done"]
    base_saved = (_base_dir(recipe) / "model" / "modules.json").is_file()
    if pending and not base_saved and not recipe.base_model.startswith("tiny:"):
        try:
            check_model_source(recipe.base_model)
        except ValueError as error:
            raise ValueError(f"base_model: {error}") from None
    pending_names = {item.stage.name for item in pending}
    datasets = {}
    for position, item in enumerate(pending):
        if item.stage.kind != "train":
            _check_step(recipe, item)
            continue
        if position > 0 and item.stage.data["kind"] in MADE_BY_EARLIER_STAGES and "from" not in item.stage.data:
            continue  # its input is made from an earlier stage's model: built when the stage starts
        if pending_names & set(_references(item.stage)):
            continue  # it reads an earlier pending step's output: built when the stage starts
        datasets[item.index] = _stage_dataset(recipe, item)
    evaluator = None
    if recipe.evaluate is not None and pending:
        try:
            evaluator = build_evaluator(recipe.evaluate)
        except ValueError as error:
            raise ValueError(f"evaluate: {error}") from None
    return datasets, evaluator


def _check_step(recipe: Recipe, item: StagePlan) -> None:
    """Check a pending step's data root, tasks and re-ranker folder before anything runs."""
    from ..data.mbeir import MBEIRData

    options = resolved_data(recipe, item.stage)
    try:
        MBEIRData(options["root"]).resolve_tasks(options.get("tasks"), "train")
        names = [stage.name for stage in recipe.stages]
        reranker = item.stage.data.get("reranker")
        if reranker is not None and reranker not in names and not Path(reranker).is_dir():
            raise ValueError(f"reranker: {reranker!r} is neither a stage of the recipe nor a folder.")
    except ValueError as error:
        raise ValueError(f"Stage {item.stage.name!r} (stages.{item.index}.data): {error}") from None


def train(recipe: Recipe, restart_from: str | None = None) -> Path:
    """Run every stage of ``recipe`` that has not finished yet; return the last stage's model folder.

    Args:
        recipe: The recipe.
        restart_from: Discard this stage's outputs and every later stage's (and the base model's, for the first
            stage) and train them again, e.g. after changing their settings.

    Raises:
        ValueError: Before anything trains, when a finished or checkpointed stage was made with other settings
            (see :func:`plan`) or an input is bad (see :func:`check_inputs`).
    """
    plans = plan(recipe, restart_from)
    datasets, evaluator = check_inputs(recipe, plans)
    if restart_from is not None:
        discard = [item.folder for item in plans if item.status == "train"]
        if restart_from == recipe.stages[0].name:
            discard.insert(0, _base_dir(recipe))
        discard = [folder for folder in discard if folder.exists()]
        if discard and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise ValueError(
                f"--restart-from deletes folders, and under torchrun/accelerate every process would do it at once. "
                f"Delete {[str(folder) for folder in discard]} yourself and rerun without --restart-from."
            )
        for folder in discard:
            logger.warning("--restart-from %s: discarding %s", restart_from, folder)
            shutil.rmtree(folder)
    Path(recipe.output_dir).mkdir(parents=True, exist_ok=True)
    (Path(recipe.output_dir) / "recipe.json").write_text(json.dumps(recipe.to_dict(), indent=2))
    prepare_base(recipe)
    for item in plans:
        # A re-ranker with init_from base starts from the raw MLLM with its LM head, not the embedder.
        init = init_folder(recipe, item.index)
        temperature_from = init if (init / TEMPERATURE_FILE).is_file() else None
        if item.status == "done":
            logger.info("Stage %s is done with the same settings (%s); skipping", item.stage.name, item.folder)
        else:
            logger.info("Stage %d/%d: %s (%s)", item.index + 1, len(plans), item.stage.name, item.status)
            dataset = None
            if item.stage.kind == "train":
                dataset = datasets[item.index] if item.index in datasets else _stage_dataset(recipe, item)
            run_stage(
                recipe,
                item.index,
                init,
                temperature_from,
                dataset=dataset,
                settings=item.settings,
                evaluator=evaluator,
            )
    return stage_output(recipe, recipe.stages[-1].name)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", help="a recipe YAML file, or the name of a shipped recipe")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a field by dotted path (stages.0.lr=1e-4, output_dir=runs/x, all_stages.max_steps=10)",
    )
    parser.add_argument(
        "--restart-from",
        metavar="STAGE",
        help="discard this stage's outputs and every later stage's and train them again (e.g. after changing "
        "their settings; a changed recipe is otherwise refused)",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="check the recipe, the data and the run folder, print the plan; train nothing",
    )


def run(args: argparse.Namespace) -> int:
    recipe = load_recipe(args.recipe, args.overrides)
    if args.dry_run:
        plans = plan(recipe, args.restart_from)
        check_inputs(recipe, plans)
        print(json.dumps(recipe.to_dict(), indent=2))
        for item in plans:
            print(f"{item.folder}: {item.status}")
        return 0
    final = train(recipe, args.restart_from)
    print(f"done: {os.fspath(final)}")
    return 0
