"""Training recipes: a YAML list of stages, validated into dataclasses.

A recipe names a base model, an output folder and the stages to run in order; each stage is one
sentence-transformers training run (data, loss, LoRA or full fine-tuning, optimisation, encoder options), or a step
(``kind``: ``mine``, ``rerank-data``, ``distill-data``) that makes a later stage's input. Stages are wired by name:
``init_from: STAGE`` starts from an earlier stage's model, ``data.from: STAGE`` reads an earlier step's output
(checked at load: the named stage must come earlier and make what is read).
``--set key=value`` overrides any field by its dotted path (``stages.0.lr=1e-4``), or every stage at once with
``all_stages.KEY=VALUE`` (``all_stages.data.OPTION`` sets it in every stage whose data has that option). Recipes shipped with the package live in ``umarvel_st/train/recipes/``.

Every field is checked when the recipe loads, before anything trains: its type (``true``, not ``"true"``, for a
boolean; a whole number for an integer), its range, the data and evaluation options of its kind, and the stage
names (they become folder names, so only letters, digits, ``.``, ``_`` and ``-``). Errors name the field by its
dotted path, as ``--set`` writes it. Numbers are read as YAML 1.2 reads them: ``lr: 1e-4`` is a float (YAML 1.1,
which PyYAML follows, would read a string), while a quoted ``"1e-4"`` stays a string and is refused for a number.
"""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from types import UnionType
from typing import Any

import yaml

from ..data.mbeir import POOLS, SPLITS
from ..modeling.inputs import MIN_PIXELS

DATA_KINDS = ("nli", "captions", "mbeir", "pairs", "rerank", "mbeir_negatives", "distill")
LOSSES = ("infonce", "symmetric")
RERANK_LOSSES = ("pointwise", "bce")  # the `rerank` stage kind (issue 9): see umarvel_st.train.reranker
# Allowed losses per data kind (default: LOSSES).
KIND_LOSSES: dict[str, tuple[str, ...]] = {"rerank": RERANK_LOSSES, "distill": ("distill",)}
# What a stage does: train a model (the default), or a step that makes the next stages' input (see
# umarvel_st.train.runner.STEPS): ranked lists, the re-ranker's training file, the distillation dataset.
STAGE_KINDS = ("train", "mine", "rerank-data", "distill-data")
ADAPTERS = ("lora", "full")
# Options of each data kind (besides "kind"): name -> (type, required). See umarvel_st.data.training.
DATA_OPTIONS: dict[str, dict[str, tuple[Any, bool]]] = {
    "nli": {"path": (str, True)},
    "captions": {"path": (str, True), "image_root": (str, False)},
    "pairs": {"path": (str, True), "image_root": (str, False)},
    "mbeir": {"root": (str, True), "tasks": (list[str], False), "max_queries_per_task": (int, False)},
    "rerank": {"path": (str, False), "from": (str, False)},  # path: a JSON object of build_rerank_dataset's arguments
    "distill": {"path": (str, False), "from": (str, False)},  # path: a `umarvel distill-data` folder
    "mbeir_negatives": {  # stage 4 (umarvel_st.train.mining.mbeir_hard_negatives)
        "root": (str, True),
        "lists": (str, False),
        "from": (str, False),
        "model": (str, False),
        "negatives": (str, False),
        "tasks": (list[str], False),
        "max_queries_per_task": (int, False),
        "num_negatives": (int, False),
    },
}
# The option a data kind reads an earlier step's output from; ``from: STAGE`` fills it with that step's output.
INPUT_OPTION = {"rerank": "path", "distill": "path", "mbeir_negatives": "lists"}
# Options of the step kinds (their ``data`` block, no ``kind`` key); the model is the stage's ``init_from``.
STEP_OPTIONS: dict[str, dict[str, tuple[Any, bool]]] = {
    "mine": {"root": (str, True), "tasks": (list[str], False), "top_k": (int, False), "batch_size": (int, False)},
    "rerank-data": {
        "root": (str, True),
        "from": (str, True),
        "tasks": (list[str], False),
        "max_queries_per_task": (int, False),
    },
    "distill-data": {
        "root": (str, True),
        "reranker": (str, True),
        "tasks": (list[str], False),
        "fraction": (float, False),
        "top_k": (int, False),
        "task_weights": (dict, False),
        "batch_size": (int, False),
    },
}
# The stage kind (or, for training stages, data kind) a ``from`` must name, by the referring kind.
FROM_KINDS = {"rerank": "rerank-data", "distill": "distill-data", "mbeir_negatives": "mine", "rerank-data": "mine"}
# Options of the evaluate block (MBEIREvaluator arguments): name -> (type, required).
EVALUATE_OPTIONS: dict[str, tuple[Any, bool]] = {
    "data": (str, True),
    "tasks": (list[str], False),
    "split": (str, False),
    "pool": (str, False),
    "batch_size": (int, False),
}
STAGE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")

# Range checks of numeric fields: (test, what it allows).
Check = tuple[Callable[[Any], bool], str]
POSITIVE: Check = (lambda value: value > 0, "> 0")
NON_NEGATIVE: Check = (lambda value: value >= 0, ">= 0")
FRACTION: Check = (lambda value: 0 <= value < 1, "in [0, 1)")
STEPS: Check = (lambda value: value == -1 or value > 0, "-1 (all epochs) or > 0")
AT_LEAST_MIN_PIXELS: Check = (lambda value: value >= MIN_PIXELS, f">= {MIN_PIXELS} (the minimum pixel budget)")
SEED: Check = (lambda value: 0 <= value < 2**32, "in [0, 2**32)")


class RecipeError(ValueError):
    """An invalid recipe field. ``path`` is its dotted path, as ``--set`` writes it (``stages.0.lr``)."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path, self.message = path, message

    def under(self, prefix: str) -> RecipeError:
        """The same error for the field seen from an enclosing object (``prefix`` = its path there)."""
        return RecipeError(f"{prefix}.{self.path}" if self.path else prefix, self.message)


def _describe(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def _check_type(path: str, value: Any, hint: Any) -> None:
    """Raise a :class:`RecipeError` unless ``value`` has type ``hint`` (bool, int, float, str, dict, list[X], X | None).

    Booleans are not integers here, integers are accepted for floats, and floats must be finite.
    """
    if isinstance(hint, UnionType) or typing.get_origin(hint) is typing.Union:
        if value is None:
            return
        (hint,) = [arg for arg in typing.get_args(hint) if arg is not type(None)]
    origin = typing.get_origin(hint) or hint
    if origin is float:
        valid = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        expected = "a finite number (write 1.0e-4 or 1e-4, without quotes)"
    elif origin is int:
        valid = isinstance(value, int) and not isinstance(value, bool)
        expected = "a whole number"
    elif origin is bool:
        valid = isinstance(value, bool)
        expected = "true or false (without quotes)"
    elif origin is str:
        valid = isinstance(value, str) and bool(value.strip())
        expected = "a non-empty string"
    elif origin is list:
        (item,) = typing.get_args(hint) or (Any,)
        if not isinstance(value, list):
            raise RecipeError(path, f"expected a list, got {_describe(value)}.")
        if item is not Any:
            for index, element in enumerate(value):
                _check_type(f"{path}.{index}", element, item)
        return
    elif origin is dict:
        valid, expected = isinstance(value, dict), "a mapping (key: value)"
    else:
        raise AssertionError(f"no check for type {hint!r}")
    if not valid:
        raise RecipeError(path, f"expected {expected}, got {_describe(value)}.")


def _check_fields(obj: Any) -> None:
    """Check every field of a recipe dataclass against its type hint and its ``check`` metadata."""
    hints = typing.get_type_hints(type(obj))
    for item in dataclasses.fields(obj):
        value = getattr(obj, item.name)
        if item.name == "stages":  # built and checked one by one in Recipe.__post_init__
            continue
        _check_type(item.name, value, hints[item.name])
        if "check" in item.metadata and value is not None:
            test, allowed = item.metadata["check"]
            if not test(value):
                raise RecipeError(item.name, f"must be {allowed}, got {_describe(value)}.")


def _check_options(values: Any, schema: dict[str, tuple[Any, bool]], what: str, ignore: tuple[str, ...] = ()) -> None:
    """Check a block of options (``data``, ``evaluate``) against ``schema``: known names, required ones, types."""
    unknown = sorted(set(values) - set(schema) - set(ignore))
    if unknown:
        raise RecipeError(unknown[0], f"unknown {what} option; the known ones are {sorted(schema)}.")
    for name, (hint, required) in schema.items():
        if name not in values:
            if required:
                raise RecipeError(name, f"{what} needs this option.")
            continue
        _check_type(name, values[name], hint)
        if hint in (int, float) and values[name] <= 0:
            raise RecipeError(name, f"must be > 0, got {_describe(values[name])}.")
        if typing.get_origin(hint) is list and not values[name]:
            raise RecipeError(name, "an empty list selects nothing; leave the option out to select everything.")


@dataclass
class StageConfig:
    """One training stage (spec section 2). Defaults follow the paper's common settings."""

    name: str = field(metadata={"help": "Stage name; also its folder name under the output folder."})
    data: dict[str, Any] = field(
        metadata={
            "help": f"Training data: {{'kind': one of {DATA_KINDS}, ...}} (see umarvel_st.data.training); for a step "
            "kind, the step's options (STEP_OPTIONS)."
        }
    )
    kind: str = field(
        default="train",
        metadata={"help": f"One of {STAGE_KINDS}: train a model, or a step making a later stage's input."},
    )
    loss: str = field(
        default="infonce",
        metadata={
            "help": f"One of {LOSSES}; symmetric = sum of both directions. "
            f"For data kind 'rerank': one of {RERANK_LOSSES} (official LM loss or BCE on the score); for 'distill': "
            "'distill' (RerankerDistillationLoss)."
        },
    )
    temperature: float = field(default=0.05, metadata={"help": "Initial (or fixed) temperature.", "check": POSITIVE})
    learnable_temperature: bool = field(default=False, metadata={"help": "Learn the temperature (stage 3 on)."})
    carry_temperature: bool = field(default=False, metadata={"help": "Start from the previous stage's temperature."})
    cached: bool = field(default=False, metadata={"help": "GradCache loss: large batches in bounded memory."})
    mini_batch_size: int = field(
        default=8, metadata={"help": "Mini-batch size of the cached loss.", "check": POSITIVE}
    )
    adapter: str = field(default="lora", metadata={"help": f"One of {ADAPTERS}."})
    lora_r: int = field(default=128, metadata={"help": "LoRA rank.", "check": POSITIVE})
    lora_alpha: int = field(default=256, metadata={"help": "LoRA alpha.", "check": POSITIVE})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout.", "check": FRACTION})
    train_vision: bool = field(
        default=False,
        metadata={"help": "Also train the vision tower and merger (full fine-tuning of a random backbone)."},
    )
    lr: float = field(
        default=1e-4, metadata={"help": "Peak learning rate (AdamW, cosine schedule).", "check": POSITIVE}
    )
    batch_size: int = field(default=60, metadata={"help": "Per-device batch size.", "check": POSITIVE})
    gradient_accumulation_steps: int = field(
        default=1,
        metadata={
            "help": "Micro-batches of batch_size accumulated into one optimizer step (the spec's re-ranker: 4). "
            "In-batch losses (InfoNCE) still contrast within each micro-batch.",
            "check": POSITIVE,
        },
    )
    epochs: int = field(default=1, metadata={"help": "Epochs over the data.", "check": POSITIVE})
    max_steps: int = field(
        default=-1, metadata={"help": "Stop after this many steps (-1: run all epochs).", "check": STEPS}
    )
    warmup_ratio: float = field(
        default=0.03, metadata={"help": "Linear warm-up share of the steps.", "check": FRACTION}
    )
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay.", "check": NON_NEGATIVE})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping (0: none).", "check": NON_NEGATIVE})
    gradient_checkpointing: bool = field(default=True, metadata={"help": "Recompute activations in backward."})
    summarize_suffix: bool = field(default=True, metadata={"help": "Append the 'Summarize above' suffix."})
    instructions: bool = field(default=False, metadata={"help": "Task instructions on M-BEIR queries (stage 3 on)."})
    max_pixels: int = field(
        default=300 * 28 * 28,
        metadata={"help": "Image pixel budget (224*224 in stage 5).", "check": AT_LEAST_MIN_PIXELS},
    )
    init_from: str = field(
        default="previous",
        metadata={
            "help": "The model to start from (or a step's model): 'previous', 'base', an earlier stage's name, "
            "or a model folder."
        },
    )
    save_steps: int = field(
        default=200, metadata={"help": "Checkpoint every N steps (resume point).", "check": POSITIVE}
    )
    logging_steps: int = field(default=10, metadata={"help": "Log every N steps.", "check": POSITIVE})

    def __post_init__(self) -> None:
        _check_fields(self)
        if not STAGE_NAME.fullmatch(self.name):
            raise RecipeError(
                "name",
                f"{self.name!r} is not a valid stage name: it names the stage's folder, so use only letters, digits, "
                "'.', '_' and '-', starting with a letter or digit (no path separators or '..').",
            )
        if self.kind not in STAGE_KINDS:
            raise RecipeError("kind", f"{self.kind!r} is not one of {list(STAGE_KINDS)}.")
        if self.kind != "train":
            try:
                _check_options(self.data, STEP_OPTIONS[self.kind], f"{self.kind!r} step")
                if not 0 < self.data.get("fraction", 1.0) <= 1:
                    raise RecipeError("fraction", f"must be in (0, 1], got {self.data['fraction']!r}.")
            except RecipeError as error:
                raise error.under("data") from None
            return
        kind = self.data.get("kind")
        if kind not in DATA_KINDS:
            raise RecipeError("data.kind", f"{kind!r} is not one of {list(DATA_KINDS)}.")
        losses = KIND_LOSSES.get(kind, LOSSES)
        for key, allowed in (("loss", losses), ("adapter", ADAPTERS)):
            if getattr(self, key) not in allowed:
                raise RecipeError(key, f"{getattr(self, key)!r} is not one of {list(allowed)}.")
        try:
            _check_options(self.data, DATA_OPTIONS[kind], f"{kind!r} data", ignore=("kind",))
        except RecipeError as error:
            raise error.under("data") from None
        if kind in INPUT_OPTION and (INPUT_OPTION[kind] in self.data) == ("from" in self.data):
            raise RecipeError(
                "data",
                f"{kind!r} data needs exactly one of {INPUT_OPTION[kind]} (a file or folder) and from (the "
                "name of the earlier step that writes it).",
            )
        if self.train_vision and self.adapter != "full":
            raise RecipeError("train_vision", "needs adapter: full.")
        if self.carry_temperature and not self.learnable_temperature:
            raise RecipeError("carry_temperature", "needs learnable_temperature: true.")


@dataclass
class Recipe:
    """A staged training run."""

    name: str = field(metadata={"help": "Recipe name."})
    base_model: str = field(
        metadata={"help": "Base model folder or Hub id, or 'tiny:<model_type>' for an offline tiny random backbone."}
    )
    output_dir: str = field(metadata={"help": "Where stages write checkpoints, models and run configs."})
    stages: list[StageConfig] = field(metadata={"help": "The stages, run in order."})
    seed: int = field(default=0, metadata={"help": "Seed of training and data draws.", "check": SEED})
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
        _check_fields(self)
        if not isinstance(self.stages, list) or not self.stages:
            raise RecipeError(
                "stages",
                f"expected a non-empty list of stages (each item starts with '- name: ...'), got "
                f"{_describe(self.stages)}.",
            )
        stages = []
        for index, stage in enumerate(self.stages):
            try:
                stages.append(stage if isinstance(stage, StageConfig) else _build(StageConfig, stage))
            except RecipeError as error:
                raise error.under(f"stages.{index}") from None
        self.stages = stages
        names = [stage.name for stage in self.stages]
        if len(set(names)) != len(names):
            raise RecipeError("stages", f"stage names must be unique, got {names}.")
        for index, stage in enumerate(self.stages):
            _check_references(self.stages, index, stage)
        if self.evaluate is not None:
            try:
                _check_options(self.evaluate, EVALUATE_OPTIONS, "evaluate")
                if self.evaluate.get("split", "test") not in SPLITS:
                    raise RecipeError("split", f"{self.evaluate['split']!r} is not one of {list(SPLITS)}.")
                if self.evaluate.get("pool", "local") not in POOLS:
                    raise RecipeError("pool", f"{self.evaluate['pool']!r} is not one of {list(POOLS)}.")
            except RecipeError as error:
                raise error.under("evaluate") from None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _stage_kind(stage: StageConfig) -> str:
    """A step's kind, or a training stage's data kind."""
    return stage.kind if stage.kind != "train" else stage.data["kind"]


def _check_references(stages: list[StageConfig], index: int, stage: StageConfig) -> None:
    """Check that ``init_from``, ``data.from`` and ``data.reranker`` name earlier stages that make what they need."""
    earlier = {item.name: item for item in stages[:index]}
    path = f"stages.{index}"
    if stage.kind != "rerank-data":
        source = stage.init_from
        if source == "previous" and index > 0:
            source = stages[index - 1].name
        if source in earlier and (earlier[source].kind != "train" or earlier[source].data["kind"] == "rerank"):
            what = "a re-ranker" if earlier[source].kind == "train" else f"the {earlier[source].kind!r} step's output"
            raise RecipeError(
                f"{path}.init_from",
                f"{stage.init_from!r} gives {what}, not an embedder; name the stage whose model to start from.",
            )
    kind = _stage_kind(stage)
    if "from" in stage.data:
        wanted, source = FROM_KINDS[kind], stage.data["from"]
        if source not in earlier or _stage_kind(earlier[source]) != wanted:
            found = [name for name, item in earlier.items() if _stage_kind(item) == wanted]
            raise RecipeError(
                f"{path}.data.from", f"{source!r} is not an earlier {wanted!r} step; the earlier ones are {found}."
            )
    reranker = stage.data.get("reranker") if stage.kind == "distill-data" else None
    if (
        reranker is not None
        and reranker in {item.name for item in stages}
        and _stage_kind(earlier.get(reranker, stage)) != "rerank"
    ):
        raise RecipeError(
            f"{path}.data.reranker", f"{reranker!r} is not an earlier re-ranker (data kind 'rerank') stage."
        )


def _build(cls: type, values: Any) -> Any:
    """``cls(**values)`` for a mapping read from YAML, refusing unknown and missing keys with the known ones."""
    what = "recipe" if cls is Recipe else "stage"
    if not isinstance(values, dict):
        raise RecipeError("", f"a {what} must be a mapping of its fields (key: value), got {_describe(values)}.")
    fields = {item.name: item for item in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        hint = ""
        if cls is Recipe and unknown[0] in {item.name for item in dataclasses.fields(StageConfig)}:
            hint = f" {unknown[0]} is a stage field: set it as stages.N.{unknown[0]} or all_stages.{unknown[0]}."
        raise RecipeError(unknown[0], f"unknown {what} key; the known keys are {sorted(fields)}.{hint}")
    required = [
        name
        for name, item in fields.items()
        if item.default is dataclasses.MISSING and item.default_factory is dataclasses.MISSING
    ]
    missing = [name for name in required if name not in values]
    if missing:
        raise RecipeError(missing[0], f"the {what} needs this key (required: {required}).")
    return cls(**values)


def _set(raw: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``raw[dotted path] = value``; the path must lead through existing mappings and list items."""
    if dotted.startswith("all_stages."):
        stages = raw.get("stages")
        if not isinstance(stages, list):
            raise RecipeError(dotted, "the recipe has no list of stages to apply it to.")
        key = dotted.removeprefix("all_stages.")
        for index, stage in enumerate(stages):
            data = stage.get("data") if isinstance(stage, dict) else None
            if key.startswith("data.") and isinstance(data, dict) and key.removeprefix("data.") not in data:
                continue  # a data option is set where the stage's data has it (all_stages.data.root=...)
            _set(raw, f"stages.{index}.{key}", value)
        return
    parts = dotted.split(".")
    node: Any = raw
    for depth, part in enumerate(parts):
        here, last = ".".join(parts[: depth + 1]), depth == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise RecipeError(here, f"{part!r} is not an item of this list; use 0 to {len(node) - 1}.")
            key: int | str = int(part)
        elif isinstance(node, dict):
            key = part  # an unknown key is refused, with the known ones, when the recipe is built
            if not last and node.get(key) is None:
                node[key] = {}
        else:
            raise RecipeError(here, f"{'.'.join(parts[:depth])} is {_describe(node)}, which has no fields.")
        if last:
            node[key] = value
        else:
            node = node[key]


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2 floats: ``1e-4`` and ``2.0e4`` are numbers (YAML 1.1 reads strings)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _parse(text: str) -> Any:
    """A ``--set`` value, read as a YAML scalar (``1e-4`` a float, ``true`` a boolean, ``runs/x`` a string)."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader subclass)


def shipped_recipes() -> list[str]:
    """Names of the recipes shipped with the package."""
    folder = resources.files("umarvel_st.train") / "recipes"
    return sorted(item.name.removesuffix(".yaml") for item in folder.iterdir() if item.name.endswith(".yaml"))


def load_recipe(source: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Load a recipe from a YAML file or by the name of a shipped recipe, applying ``key=value`` overrides.

    Raises:
        ValueError: For an unknown recipe, an empty or malformed file, a malformed override, or an invalid field
            (named by its dotted path, with what is allowed).
    """
    path = Path(source)
    if not path.is_file():
        if str(source) not in shipped_recipes():
            raise ValueError(f"No recipe file {str(source)!r}; shipped recipes are {shipped_recipes()}.")
        path = Path(str(resources.files("umarvel_st.train") / "recipes" / f"{source}.yaml"))
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader)  # noqa: S506 (a SafeLoader subclass)
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise ValueError(f"Recipe {path} is not valid YAML: {error}") from None
    if not isinstance(raw, dict):
        raise ValueError(
            f"Recipe {path} must be a mapping with name, base_model, output_dir and stages; got {_describe(raw)}"
            + (" (the file is empty)." if raw is None else ".")
        )
    try:
        for override in overrides or []:
            key, sep, value = override.partition("=")
            if not sep or not key.strip():
                raise ValueError(f"Override {override!r} is not key=value (e.g. stages.0.lr=1e-4).")
            _set(raw, key.strip(), _parse(value))
        return _build(Recipe, raw)
    except RecipeError as error:
        raise RecipeError(error.path, f"{error.message} (recipe {path})") from None
