"""Training recipes: a YAML list of stages, validated into dataclasses.

A recipe names a base model, an output folder and the stages to run in order; each stage is one
sentence-transformers training run (data, loss, LoRA or full fine-tuning, optimisation, encoder options).
``--set key=value`` overrides any field by its dotted path (``stages.0.lr=1e-4``), or every stage at once with
``all_stages.KEY=VALUE``. Recipes shipped with the package live in ``umarvel_st/train/recipes/``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

DATA_KINDS = ("nli", "captions", "mbeir", "pairs", "mbeir_negatives")
LOSSES = ("infonce", "symmetric")
ADAPTERS = ("lora", "full")


@dataclass
class StageConfig:
    """One training stage (spec section 2). Defaults follow the paper's common settings."""

    name: str = field(metadata={"help": "Stage name; also its folder name under the output folder."})
    data: dict[str, Any] = field(
        metadata={"help": f"Data: {{'kind': one of {DATA_KINDS}, ...}} (see umarvel_st.data.training)."}
    )
    loss: str = field(default="infonce", metadata={"help": f"One of {LOSSES}; symmetric = sum of both directions."})
    temperature: float = field(default=0.05, metadata={"help": "Initial (or fixed) temperature."})
    learnable_temperature: bool = field(default=False, metadata={"help": "Learn the temperature (stage 3 on)."})
    carry_temperature: bool = field(default=False, metadata={"help": "Start from the previous stage's temperature."})
    cached: bool = field(default=False, metadata={"help": "GradCache loss: large batches in bounded memory."})
    mini_batch_size: int = field(default=8, metadata={"help": "Mini-batch size of the cached loss."})
    adapter: str = field(default="lora", metadata={"help": f"One of {ADAPTERS}."})
    lora_r: int = field(default=128, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=256, metadata={"help": "LoRA alpha."})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout."})
    train_vision: bool = field(
        default=False,
        metadata={"help": "Also train the vision tower and merger (full fine-tuning of a random backbone)."},
    )
    lr: float = field(default=1e-4, metadata={"help": "Peak learning rate (AdamW, cosine schedule)."})
    batch_size: int = field(default=60, metadata={"help": "Per-device batch size."})
    epochs: int = field(default=1, metadata={"help": "Epochs over the data."})
    max_steps: int = field(default=-1, metadata={"help": "Stop after this many steps (-1: run all epochs)."})
    warmup_ratio: float = field(default=0.03, metadata={"help": "Linear warm-up share of the steps."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping."})
    gradient_checkpointing: bool = field(default=True, metadata={"help": "Recompute activations in backward."})
    summarize_suffix: bool = field(default=True, metadata={"help": "Append the 'Summarize above' suffix."})
    instructions: bool = field(default=False, metadata={"help": "Task instructions on M-BEIR queries (stage 3 on)."})
    max_pixels: int = field(default=300 * 28 * 28, metadata={"help": "Image pixel budget (224*224 in stage 5)."})
    init_from: str = field(default="previous", metadata={"help": "'previous' stage, 'base', or a model folder."})
    save_steps: int = field(default=200, metadata={"help": "Checkpoint every N steps (resume point)."})
    logging_steps: int = field(default=10, metadata={"help": "Log every N steps."})

    def __post_init__(self) -> None:
        checks = {
            "loss": (self.loss, LOSSES),
            "adapter": (self.adapter, ADAPTERS),
            "data.kind": (self.data.get("kind") if isinstance(self.data, dict) else None, DATA_KINDS),
        }
        for key, (value, allowed) in checks.items():
            if value not in allowed:
                raise ValueError(f"Stage {self.name!r}: {key}={value!r} is not one of {list(allowed)}.")
        for key in ("temperature", "lr", "batch_size", "epochs", "lora_r", "lora_alpha", "save_steps", "max_pixels"):
            if getattr(self, key) <= 0:
                raise ValueError(f"Stage {self.name!r}: {key} must be > 0, got {getattr(self, key)!r}.")
        if self.train_vision and self.adapter != "full":
            raise ValueError(f"Stage {self.name!r}: train_vision needs adapter: full.")
        if self.carry_temperature and not self.learnable_temperature:
            raise ValueError(f"Stage {self.name!r}: carry_temperature needs learnable_temperature: true.")


@dataclass
class Recipe:
    """A staged training run."""

    name: str = field(metadata={"help": "Recipe name."})
    base_model: str = field(
        metadata={"help": "Base model folder or Hub id, or 'tiny:<model_type>' for an offline tiny random backbone."}
    )
    output_dir: str = field(metadata={"help": "Where stages write checkpoints, models and run configs."})
    stages: list[StageConfig] = field(metadata={"help": "The stages, run in order."})
    seed: int = field(default=0, metadata={"help": "Seed of training and data draws."})
    evaluate: dict[str, Any] | None = field(
        default=None,
        metadata={"help": "Optional M-BEIR evaluation after each stage: {data, tasks, pool, split, batch_size}."},
    )
    deepspeed: str | None = field(
        default=None,
        metadata={
            "help": "DeepSpeed config passed to the training arguments, e.g. the shipped "
            "umarvel_st/train/configs/deepspeed_zero2.json (multi-GPU runs under torchrun or accelerate)."
        },
    )

    def __post_init__(self) -> None:
        if not self.stages:
            raise ValueError(f"Recipe {self.name!r} has no stages.")
        self.stages = [
            stage if isinstance(stage, StageConfig) else _build(StageConfig, stage) for stage in self.stages
        ]
        names = [stage.name for stage in self.stages]
        if len(set(names)) != len(names):
            raise ValueError(f"Recipe {self.name!r}: stage names must be unique, got {names}.")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _build(cls: type, values: dict[str, Any]) -> Any:
    known = {item.name for item in dataclasses.fields(cls)}
    unknown = set(values) - known
    if unknown:
        raise ValueError(f"Unknown {cls.__name__} keys {sorted(unknown)}; known keys: {sorted(known)}.")
    return cls(**values)


def _set(raw: dict[str, Any], dotted: str, value: Any) -> None:
    if dotted.startswith("all_stages."):
        for stage in raw.get("stages", []):
            _set(stage, dotted.removeprefix("all_stages."), value)
        return
    *parents, last = dotted.split(".")
    node: Any = raw
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value


def _parse(text: str) -> Any:
    """A YAML scalar, with numbers YAML 1.1 reads as strings (``1e-3``) read as numbers."""
    import yaml

    value = yaml.safe_load(text)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def shipped_recipes() -> list[str]:
    """Names of the recipes shipped with the package."""
    folder = resources.files("umarvel_st.train") / "recipes"
    return sorted(item.name.removesuffix(".yaml") for item in folder.iterdir() if item.name.endswith(".yaml"))


def load_recipe(source: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Load a recipe from a YAML file or by the name of a shipped recipe, applying ``key=value`` overrides.

    Raises:
        ValueError: For an unknown recipe, a malformed override, or invalid fields (naming them).
    """
    import yaml

    path = Path(source)
    if not path.is_file():
        if str(source) not in shipped_recipes():
            raise ValueError(f"No recipe file {str(source)!r}; shipped recipes are {shipped_recipes()}.")
        path = Path(str(resources.files("umarvel_st.train") / "recipes" / f"{source}.yaml"))
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    for override in overrides or []:
        key, sep, value = override.partition("=")
        if not sep or not key:
            raise ValueError(f"Override {override!r} is not key=value (e.g. stages.0.lr=1e-4).")
        _set(raw, key.strip(), _parse(value))
    return _build(Recipe, raw)
