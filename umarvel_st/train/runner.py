"""``umarvel train RECIPE [--set key=value ...]``: run a staged U-MARVEL recipe on sentence-transformers' trainer.

Layout of ``output_dir``::

    00-base/model/                 the base model with the U-MARVEL tokens (every stage starts from a saved folder)
    01-<stage>/checkpoints/        trainer checkpoints (with temperature.json): the resume points
    01-<stage>/model/              the stage's merged model, ready for inference, with its temperature.json
    01-<stage>/eval.json           M-BEIR scores after the stage, when the recipe asks for them
    01-<stage>/run_config.json     the resolved stage config and results; written last, it marks the stage done

Rerunning the same command after an interruption (even ``kill -9``) skips finished stages and resumes the current
one from its last checkpoint.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from .recipe import Recipe, StageConfig, load_recipe

logger = logging.getLogger(__name__)

RUN_CONFIG = "run_config.json"


def _stage_dir(recipe: Recipe, index: int, stage: StageConfig) -> Path:
    return Path(recipe.output_dir) / f"{index + 1:02d}-{stage.name}"


def prepare_base(recipe: Recipe) -> Path:
    """Save the base model (U-MARVEL tokens added) once, so every stage and checkpoint starts from a folder."""
    folder = Path(recipe.output_dir) / "00-base" / "model"
    if (folder / "modules.json").is_file():
        return folder
    source = recipe.base_model
    if source.startswith("tiny:"):
        from ..testing import build_tiny_backbone

        source = str(build_tiny_backbone(source.removeprefix("tiny:"), folder.parent / "backbone", seed=recipe.seed))
    from ..model import from_mllm

    from_mllm(source).save(str(folder))
    return folder


def build_dataset(stage: StageConfig, seed: int):
    """The stage's training data (see :mod:`umarvel_st.data.training`)."""
    from ..data import training

    options = {key: value for key, value in stage.data.items() if key != "kind"}
    kind = stage.data["kind"]
    if kind == "nli":
        return training.nli_pairs(**options)
    if kind == "captions":
        return training.image_captions(**options)
    if kind == "pairs":
        return training.custom_pairs(options.pop("path"), **options)
    if kind == "mbeir_negatives":  # stage 4: reads the lists of `umarvel mine` (see umarvel_st.train.mining)
        from .mining import mbeir_hard_negatives

        return mbeir_hard_negatives(**options, instructions=stage.instructions, epochs=stage.epochs, seed=seed)
    return training.mbeir_train(**options, instructions=stage.instructions, epochs=stage.epochs, seed=seed)


def last_complete_checkpoint(checkpoints: Path) -> str | None:
    """The newest checkpoint that was fully written, or ``None``; newer, partly written ones are removed.

    A ``kill -9`` can land while a checkpoint is being written. ``temperature.json`` is written last (by the
    temperature callback, after the trainer's own files), so a folder holding it is complete.
    """
    from .losses import TEMPERATURE_FILE

    found = sorted(checkpoints.glob("checkpoint-*"), key=lambda path: int(path.name.rpartition("-")[2]), reverse=True)
    for folder in found:
        if (folder / TEMPERATURE_FILE).is_file() and (folder / "trainer_state.json").is_file():
            return str(folder)
        logger.warning("Removing the incomplete checkpoint %s", folder)
        shutil.rmtree(folder)
    return None


def run_stage(recipe: Recipe, index: int, init: Path, temperature_from: Path | None) -> Path:
    """Train one stage (resuming from its last checkpoint), merge, save, evaluate. Returns the model folder."""
    import torch
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from transformers import set_seed

    from ..model import from_mllm
    from .lora import apply_lora, freeze_vision, merge_lora
    from .losses import CachedInfoNCELoss, InfoNCELoss, Temperature, TemperatureCallback

    stage = recipe.stages[index]
    folder = _stage_dir(recipe, index, stage)
    set_seed(recipe.seed)  # the fresh LoRA's random init must be the same in a rerun
    model = from_mllm(
        str(init), summarize_suffix=stage.summarize_suffix, generation_prompt=False, max_pixels=stage.max_pixels
    )
    model.trust_remote_code = True  # its checkpoints carry this package's modeling code; resuming reloads them
    if stage.adapter == "lora":
        apply_lora(model, r=stage.lora_r, alpha=stage.lora_alpha, dropout=stage.lora_dropout)
    elif not stage.train_vision:
        freeze_vision(model)

    tau = Temperature(stage.temperature, learnable=stage.learnable_temperature)
    if stage.carry_temperature and temperature_from is not None:
        tau.load(temperature_from)
    dataset = build_dataset(stage, recipe.seed)
    # M-BEIR draws fresh positives and instructions per epoch by stacking the epochs' draws into the dataset.
    epochs = 1 if stage.data["kind"] in ("mbeir", "mbeir_negatives") else stage.epochs
    checkpoints = folder / "checkpoints"
    args = SentenceTransformerTrainingArguments(
        output_dir=str(checkpoints),
        per_device_train_batch_size=stage.batch_size,
        num_train_epochs=epochs,
        max_steps=stage.max_steps,
        learning_rate=stage.lr,
        weight_decay=stage.weight_decay,
        lr_scheduler_type="cosine",
        warmup_steps=stage.warmup_ratio,  # a float below 1 is a ratio of the total steps (transformers 5)
        max_grad_norm=stage.max_grad_norm,
        optim="adamw_torch",
        bf16=torch.cuda.is_available(),
        gradient_checkpointing=stage.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False},
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
    # Under torchrun / accelerate every query is scored against the candidates of all processes (global batch).
    loss_class = CachedInfoNCELoss if stage.cached else InfoNCELoss
    extra = {"mini_batch_size": stage.mini_batch_size} if stage.cached else {}
    symmetric = stage.loss == "symmetric"
    loss = loss_class(model, temperature=tau, symmetric=symmetric, gather_across_devices=args.world_size > 1, **extra)
    trainer = SentenceTransformerTrainer(
        model=model, args=args, train_dataset=dataset, loss=loss, callbacks=[TemperatureCallback(tau)]
    )
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
    if recipe.evaluate:
        evaluation = evaluate_model(model, recipe.evaluate)
        (folder / "eval.json").write_text(json.dumps(evaluation, indent=2))
    run_config = {
        "recipe": recipe.name,
        "stage": dataclasses.asdict(stage),
        "index": index,
        "init_from": str(init),
        "seed": recipe.seed,
        "temperature": tau.value.item(),
        "train": result.metrics,
        "evaluation": evaluation,
    }
    (folder / RUN_CONFIG).write_text(json.dumps(run_config, indent=2, default=str))
    return target


def evaluate_model(model: Any, options: dict[str, Any]) -> dict[str, Any]:
    """M-BEIR scores of ``model`` (see :class:`~umarvel_st.evaluation.mbeir_evaluator.MBEIREvaluator`)."""
    from ..evaluation.mbeir_evaluator import MBEIREvaluator

    evaluator = MBEIREvaluator(
        options["data"],
        options.get("tasks"),
        split=options.get("split", "test"),
        pool=options.get("pool", "local"),
        batch_size=options.get("batch_size", 32),
        show_progress_bar=False,
    )
    return evaluator.evaluate(model)


def train(recipe: Recipe) -> Path:
    """Run every stage of ``recipe`` that has not finished yet; return the last stage's model folder."""
    Path(recipe.output_dir).mkdir(parents=True, exist_ok=True)
    (Path(recipe.output_dir) / "recipe.json").write_text(json.dumps(recipe.to_dict(), indent=2))
    base = prepare_base(recipe)
    previous, temperature_from = base, None
    for index, stage in enumerate(recipe.stages):
        folder = _stage_dir(recipe, index, stage)
        if stage.init_from == "previous":
            init = previous
        elif stage.init_from == "base":
            init = base
        else:
            init = Path(stage.init_from)
        if (folder / RUN_CONFIG).is_file():
            logger.info("Stage %s is done (%s); skipping", stage.name, folder / RUN_CONFIG)
        else:
            logger.info("Stage %d/%d: %s", index + 1, len(recipe.stages), stage.name)
            run_stage(recipe, index, init, temperature_from)
        previous = temperature_from = folder / "model"
    return previous


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
    parser.add_argument("--dry-run", action="store_true", help="validate the recipe and print it; train nothing")


def run(args: argparse.Namespace) -> int:
    recipe = load_recipe(args.recipe, args.overrides)
    if args.dry_run:
        print(json.dumps(recipe.to_dict(), indent=2))
        return 0
    final = train(recipe)
    print(f"done: {os.fspath(final)}")
    return 0
