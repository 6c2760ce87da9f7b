"""Model cards (``README.md``) of U-MARVEL models.

``umarvel publish`` renders its card from ``model_card.md.jinja``: YAML metadata (base model, datasets, license,
tags, pipeline tag, ``model-index`` from benchmark reports), what the model is, usage snippets that run as written,
the named instructions, memory guidance, the recipe from run configs and evaluation tables when given, and the
citation. The card sentence-transformers itself writes on ``save`` and after training uses
:class:`UMarvelModelCardData`, whose usage snippet loads the model as it must be loaded.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from jinja2 import Environment, FileSystemLoader, StrictUndefined
from PIL import Image
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.model_card import SentenceTransformerModelCardData

from ..modeling import MBEIR_INSTRUCTIONS

logger = logging.getLogger(__name__)

TEMPLATE = "model_card.md.jinja"
TAGS = ["sentence-transformers", "feature-extraction", "sentence-similarity", "multimodal", "retrieval", "u-marvel"]
BACKBONE_NAMES = {"qwen2_vl": "Qwen2-VL", "qwen2_5_vl": "Qwen2.5-VL", "qwen3_vl": "Qwen3-VL"}
EXAMPLE_PROMPT = "mscoco_task0"


@dataclass
class CardData:
    """What the card says beyond what the model itself tells.

    The run configs and reports are read and checked when the object is made, before any work starts.

    Attributes:
        base_model: Hub id of the model this one was built from (metadata ``base_model``).
        datasets: Hub ids of the training datasets.
        license: License identifier for the metadata (check the base model's license).
        run_configs: Training run configs (YAML or JSON files) whose settings the card lists.
        eval_reports: ``results.json`` files written by ``umarvel eval``; tables and ``model-index`` come from them.
        exact_repo_id: For a portable card, the repo of the exact model.
        drift: For a portable card, ``{"mean": ..., "min": ..., "items": ...}`` cosine drift against the exact model.

    Raises:
        TypeError: If a list field is given a single string or path.
        ValueError: If a run config or report is missing or malformed (the message names the file).
    """

    base_model: str | None = None
    datasets: Sequence[str] = ()
    license: str = "apache-2.0"
    run_configs: Sequence[str | Path] = ()
    eval_reports: Sequence[str | Path] = ()
    exact_repo_id: str | None = None
    drift: dict[str, float] | None = None
    evaluations: list[dict[str, Any]] = field(init=False, repr=False)
    recipe: list[dict[str, Any]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        for name in ("datasets", "run_configs", "eval_reports"):
            if isinstance(getattr(self, name), (str, Path)):
                raise TypeError(
                    f"CardData.{name} must be a list, got the single value {getattr(self, name)!r}; wrap it in [...]."
                )
        self.evaluations = [_evaluation(Path(path)) for path in self.eval_reports]
        self.recipe = [
            {"name": Path(path).name, "rows": _flatten(_load_config(Path(path)))} for path in self.run_configs
        ]


def _flatten(value: Any, prefix: str = "") -> list[tuple[str, str]]:
    if isinstance(value, dict):
        return [row for key, item in value.items() for row in _flatten(item, f"{prefix}{key}.")]
    if isinstance(value, list) and value and all(isinstance(item, dict) for item in value):
        return [row for index, item in enumerate(value) for row in _flatten(item, f"{prefix}{index}.")]
    return [(prefix.rstrip("."), json.dumps(value) if not isinstance(value, str) else value)]


def _read(path: Path, kind: str) -> Any:
    """Parse a JSON (or, for run configs, YAML) file, naming the file and the line in every error."""
    if not path.is_file():
        raise ValueError(f"The {kind} {str(path)!r} does not exist (or is not a file); check the path.")
    try:
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".json" or kind == "evaluation report":
            return json.loads(text)
        return yaml.safe_load(text)
    except UnicodeDecodeError as error:
        raise ValueError(f"The {kind} {str(path)!r} is not UTF-8 text ({error}).") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}:{error.lineno}: the {kind} is not valid JSON ({error.msg}).") from None
    except yaml.YAMLError as error:
        raise ValueError(f"The {kind} {str(path)!r} is not valid YAML ({error}).") from None


def _load_config(path: Path) -> dict[str, Any]:
    data = _read(path, "run config")
    if not isinstance(data, dict):
        raise ValueError(f"Run config {str(path)!r} must hold a mapping of settings, got {type(data).__name__}.")
    return data


def _evaluation(path: Path) -> dict[str, Any]:
    results = _read(path, "evaluation report")
    expected = (
        "pass the results.json written by `umarvel eval mbeir` "
        '({"tasks": {task: {"k": int, "score": fraction}}, "average": fraction, ...})'
    )
    if not isinstance(results, dict) or not isinstance(results.get("tasks"), dict) or "average" not in results:
        raise ValueError(f"{str(path)!r} is not an `umarvel eval` report: it needs 'tasks' and 'average'; {expected}.")
    for task, row in results["tasks"].items():
        if not (
            isinstance(row, dict)
            and isinstance(row.get("k"), int)
            and isinstance(row.get("score"), (int, float))
            and not isinstance(row.get("score"), bool)
        ):
            raise ValueError(
                f"{str(path)!r}: task {task!r} needs an integer 'k' and a numeric 'score', got {row!r:.200}; {expected}."
            )
    if not isinstance(results["average"], (int, float)) or isinstance(results["average"], bool):
        raise ValueError(f"{str(path)!r}: 'average' must be a number, got {results['average']!r:.100}; {expected}.")
    pool = results.get("pool", "local")
    return {
        "title": f"M-BEIR, {pool} pool, split `{results.get('split', 'test')}` (hit rate at k, in %)",
        "pool": pool,
        "split": results.get("split", "test"),
        "synthetic": bool(results.get("synthetic")),
        "rows": [(task, row["k"], 100 * row["score"]) for task, row in results["tasks"].items()],
        "average": 100 * results["average"],
    }


def format_size(num_bytes: int) -> str:
    """A byte count for people: ``"15.2 GB"``, ``"310.4 KB"``... (decimal units)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if num_bytes >= scale:
            return f"{num_bytes / scale:.1f} {unit}"
    return f"{num_bytes} bytes"


def _model_index(name: str, evaluations: list[dict[str, Any]]) -> list[dict[str, Any]]:
    results = []
    for evaluation in evaluations:
        dataset = "synthetic M-BEIR-format benchmark" if evaluation["synthetic"] else "M-BEIR"
        metrics = [
            {"type": f"hit_at_{k}", "name": f"{task} hit@{k}", "value": round(score, 2)}
            for task, k, score in evaluation["rows"]
        ]
        metrics.append({"type": "average_hit", "name": "average", "value": round(evaluation["average"], 2)})
        results.append(
            {
                "task": {"type": "retrieval", "name": "Universal multimodal retrieval"},
                "dataset": {
                    "name": f"{dataset} ({evaluation['pool']} pool)",
                    "type": dataset,
                    "split": evaluation["split"],
                },
                "metrics": metrics,
            }
        )
    return [{"name": name, "results": results}]


def render_model_card(
    model: SentenceTransformer, repo_id: str, data: CardData, *, image: str, portable: bool = False
) -> str:
    """Render the card of ``model`` as it will be published under ``repo_id``.

    Args:
        model: The model being published (a U-MARVEL model, or its portable variant).
        repo_id: The Hub id the snippets load.
        data: What the card says beyond the model (base model, datasets, reports...).
        image: File name under the repo's ``assets/`` that the snippets use.
        portable: Render the portable variant's card (``data.drift`` required).

    Returns:
        The Markdown of ``README.md``, with its YAML metadata.

    Raises:
        ValueError: If a portable card has no drift numbers.
    """
    if portable and data.drift is None:
        raise ValueError("A portable card needs the measured drift (CardData.drift); export_portable computes it.")
    backbone = model[0].model
    model_type = backbone.config.model_type
    parameters = sum(parameter.numel() for parameter in backbone.parameters())
    max_pixels = int(getattr(model[0], "max_pixels", 300 * 28 * 28))
    evaluations = data.evaluations
    name = repo_id.split("/")[-1]
    metadata: dict[str, Any] = {
        "library_name": "sentence-transformers",
        "pipeline_tag": "sentence-similarity",
        "license": data.license,
        "tags": TAGS + (["portable"] if portable else []),
    }
    if data.base_model:
        metadata["base_model"] = data.base_model
    if data.datasets:
        metadata["datasets"] = list(data.datasets)
    if evaluations:
        metadata["model-index"] = _model_index(name, evaluations)
    prompts = {name: text for name, text in model.prompts.items() if text} or dict(MBEIR_INSTRUCTIONS)
    environment = Environment(
        loader=FileSystemLoader(Path(__file__).parent), undefined=StrictUndefined, keep_trailing_newline=True
    )
    return environment.get_template(TEMPLATE).render(
        metadata=yaml.safe_dump(metadata, sort_keys=False, allow_unicode=True),
        title=f"{name} ({'portable' if portable else 'U-MARVEL'})",
        portable=portable,
        exact_repo_id=data.exact_repo_id,
        drift=data.drift,
        repo_id=repo_id,
        backbone=BACKBONE_NAMES.get(model_type, model_type),
        base_model=data.base_model,
        dimension=model.get_embedding_dimension(),
        parameters=f"{parameters:,}",
        bf16_size=format_size(parameters * 2),
        fp32_size=format_size(parameters * 4),
        max_pixels=max_pixels,
        max_image_tokens=max_pixels // (28 * 28),
        image=image,
        instruction=MBEIR_INSTRUCTIONS[EXAMPLE_PROMPT],
        prompt_name=EXAMPLE_PROMPT if EXAMPLE_PROMPT in prompts else next(iter(prompts)),
        prompts=prompts,
        recipe=data.recipe,
        evaluations=evaluations,
    )


def _snippet_value(shown: Any, original: Any, images: dict[str, str]) -> str:
    """Python source for one usage example; an image saved under ``assets/`` becomes a variable in ``images``."""
    if isinstance(original, Image.Image) and isinstance(shown, str):
        return images.setdefault(shown, f"image_{len(images)}")
    if isinstance(shown, dict) and isinstance(original, dict):
        parts = ", ".join(
            f"{key!r}: {_snippet_value(value, original.get(key), images)}" for key, value in shown.items()
        )
        return f"{{{parts}}}"
    return repr(shown)


def _card_item(value: Any) -> Any:
    """A training row's item as the card's usage examples use it: unused (``None``) keys dropped, an image path
    opened (it is saved under ``assets/`` with the card), a lone text or image unwrapped."""
    if not isinstance(value, dict):
        return value
    item = {key: part for key, part in value.items() if part is not None}
    if isinstance(item.get("image"), str) and Path(item["image"]).is_file():
        item["image"] = Image.open(item["image"])
    return item[next(iter(item))] if len(item) == 1 and set(item) <= {"text", "image"} else item


class UMarvelModelCardData(SentenceTransformerModelCardData):
    """Card data whose usage snippet loads a U-MARVEL model as it must be loaded.

    sentence-transformers writes this card on ``save`` and after training (``generate_usage_snippet`` is its
    documented extension point). The snippet passes ``trust_remote_code=True`` (the modeling code ships with the
    model) and opens the example images saved under ``assets/`` as PIL images from the repository. The examples come
    from the training rows as the model reads them (:meth:`set_widget_examples`).
    """

    def set_widget_examples(self, dataset: Any) -> None:
        """Take the card's usage examples from the training rows.

        The package's rows hold items as dicts (``text``, ``image`` path, ``instruction``; unused keys ``None``).
        sentence-transformers would keep only each dict's first value, ``None`` for an image-only item, and its
        usage snippet would then fail. For such rows the examples are the first row's query (the first item column)
        and the first three rows' candidates (the second item column), with images opened from their paths. There
        is no inference widget, which takes texts only. Other datasets (text or image columns) keep
        sentence-transformers' own examples.
        """
        from datasets import Dataset, DatasetDict

        rows = next(iter(dataset.values()), None) if isinstance(dataset, DatasetDict) else dataset
        columns = [c for c, f in rows.features.items() if isinstance(f, dict)] if isinstance(rows, Dataset) else []
        if len(columns) < 2 or len(rows) == 0:
            super().set_widget_examples(dataset)
            return
        sample = rows.select(range(min(3, len(rows))))
        self.widget = []
        self.usage_examples = [_card_item(sample[0][columns[0]]), *(_card_item(row[columns[1]]) for row in sample)]

    def generate_usage_snippet(self) -> str:
        """The card's Python usage block (with its fences), runnable once the model is on the Hub."""
        model_id = self.model_id or "sentence_transformers_model_id"
        originals = self.usage_examples or ["The weather is lovely today.", "It's so sunny outside!"]
        display = self.usage_examples_display  # kept from an earlier save when the examples are all text now
        shown = display if display and len(display) == len(originals) else originals
        images: dict[str, str] = {}
        values = [_snippet_value(item, original, images) for item, original in zip(shown, originals, strict=True)]
        dimension = self.model.get_embedding_dimension() if self.model is not None else "?"
        lines = [
            *(["from huggingface_hub import hf_hub_download", "from PIL import Image"] if images else []),
            "from sentence_transformers import SentenceTransformer",
            "",
            "# Download from the Hub; the model's code comes with it, hence trust_remote_code=True",
            f'model = SentenceTransformer("{model_id}", trust_remote_code=True)',
            *(f'{name} = Image.open(hf_hub_download("{model_id}", "{path}"))' for path, name in images.items()),
            "# Run inference",
        ]
        if self.ir_model and len(values) > 1:
            lines += ["queries = [", f"    {values[0]},", "]", "documents = ["]
            lines += [f"    {value}," for value in values[1:]]
            lines += [
                "]",
                "query_embeddings = model.encode_query(queries)",
                "document_embeddings = model.encode_document(documents)",
                "print(query_embeddings.shape, document_embeddings.shape)",
                f"# [1, {dimension}] [{len(values) - 1}, {dimension}]",
                "",
                "similarities = model.similarity(query_embeddings, document_embeddings)",
            ]
        else:
            lines += ["inputs = [", *(f"    {value}," for value in values), "]"]
            lines += [
                "embeddings = model.encode(inputs)",
                "print(embeddings.shape)",
                f"# [{len(values)}, {dimension}]",
                "",
                "similarities = model.similarity(embeddings, embeddings)",
            ]
        lines += ["print(similarities)", self.similarities] if self.similarities else ["print(similarities.shape)"]
        return "```python\n" + "\n".join(lines) + "\n```"
