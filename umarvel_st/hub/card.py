"""The model card (``README.md``) of a published U-MARVEL model, in sentence-transformers style.

The card is rendered from ``model_card.md.jinja``: YAML metadata (base model, datasets, license, tags, pipeline tag,
``model-index`` from benchmark reports), what the model is, usage snippets that run as written, the named
instructions, memory guidance, the recipe from run configs and evaluation tables when given, and the citation.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from jinja2 import Environment, FileSystemLoader, StrictUndefined
from sentence_transformers import SentenceTransformer

from ..modeling import MBEIR_INSTRUCTIONS

logger = logging.getLogger(__name__)

TEMPLATE = "model_card.md.jinja"
TAGS = ["sentence-transformers", "feature-extraction", "sentence-similarity", "multimodal", "retrieval", "u-marvel"]
BACKBONE_NAMES = {"qwen2_vl": "Qwen2-VL", "qwen2_5_vl": "Qwen2.5-VL", "qwen3_vl": "Qwen3-VL"}
EXAMPLE_PROMPT = "mscoco_task0"


@dataclass
class CardData:
    """What the card says beyond what the model itself tells.

    Attributes:
        base_model: Hub id of the model this one was built from (metadata ``base_model``).
        datasets: Hub ids of the training datasets.
        license: License identifier for the metadata (check the base model's license).
        run_configs: Training run configs (YAML or JSON files) whose settings the card lists.
        eval_reports: ``results.json`` files written by ``umarvel eval``; tables and ``model-index`` come from them.
        exact_repo_id: For a portable card, the repo of the exact model.
        drift: For a portable card, ``{"mean": ..., "min": ..., "items": ...}`` cosine drift against the exact model.
    """

    base_model: str | None = None
    datasets: Sequence[str] = ()
    license: str = "apache-2.0"
    run_configs: Sequence[str | Path] = ()
    eval_reports: Sequence[str | Path] = ()
    exact_repo_id: str | None = None
    drift: dict[str, float] | None = None


def _flatten(value: Any, prefix: str = "") -> list[tuple[str, str]]:
    if isinstance(value, dict):
        return [row for key, item in value.items() for row in _flatten(item, f"{prefix}{key}.")]
    if isinstance(value, list) and value and all(isinstance(item, dict) for item in value):
        return [row for index, item in enumerate(value) for row in _flatten(item, f"{prefix}{index}.")]
    return [(prefix.rstrip("."), json.dumps(value) if not isinstance(value, str) else value)]


def _load_config(path: Path) -> dict[str, Any]:
    text = path.read_text(encoding="utf-8")
    data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    if not isinstance(data, dict):
        raise ValueError(f"Run config {str(path)!r} must hold a mapping of settings, got {type(data).__name__}.")
    return data


def _evaluation(path: Path) -> dict[str, Any]:
    results = json.loads(path.read_text(encoding="utf-8"))
    if "tasks" not in results or "average" not in results:
        raise ValueError(
            f"{str(path)!r} is not an `umarvel eval` results.json (it needs 'tasks' and 'average'); pass that file."
        )
    pool = results.get("pool", "local")
    return {
        "title": f"M-BEIR, {pool} pool, split `{results.get('split', 'test')}` (hit rate at k, in %)",
        "pool": pool,
        "split": results.get("split", "test"),
        "synthetic": bool(results.get("synthetic")),
        "rows": [(task, row["k"], 100 * row["score"]) for task, row in results["tasks"].items()],
        "average": 100 * results["average"],
    }


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
        ValueError: If a run config or report cannot be read, or a portable card has no drift numbers.
    """
    if portable and data.drift is None:
        raise ValueError("A portable card needs the measured drift (CardData.drift); export_portable computes it.")
    backbone = model[0].model
    model_type = backbone.config.model_type
    parameters = sum(parameter.numel() for parameter in backbone.parameters())
    max_pixels = int(getattr(model[0], "max_pixels", 300 * 28 * 28))
    evaluations = [_evaluation(Path(path)) for path in data.eval_reports]
    recipe = [{"name": Path(path).name, "rows": _flatten(_load_config(Path(path)))} for path in data.run_configs]
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
        bf16_gb=parameters * 2 / 1e9,
        max_pixels=max_pixels,
        max_image_tokens=max_pixels // (28 * 28),
        image=image,
        instruction=MBEIR_INSTRUCTIONS[EXAMPLE_PROMPT],
        prompt_name=EXAMPLE_PROMPT if EXAMPLE_PROMPT in prompts else next(iter(prompts)),
        prompts=prompts,
        recipe=recipe,
        evaluations=evaluations,
    )
