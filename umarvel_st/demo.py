"""``umarvel demo``: embed the bundled example items with the embedded default model and print similarities.

The embedded default is the tiny random Qwen2-VL checkpoint on which the official U-MARVEL code produced the
reference embeddings the tests check against; it runs offline in a second on a CPU. Its similarities are those of
an untrained network: the point is the pipeline (instructions, images, image+text), not the ranking.
"""

from __future__ import annotations

import argparse
from pathlib import Path

ASSETS = Path(__file__).parent / "assets"
DEFAULT_MODEL = ASSETS / "tiny-umarvel-qwen2vl"

CANDIDATES: list[dict[str, str | None]] = [
    {"text": "a red square on a blue background", "image": None},
    {"text": "Two cats sleeping on a sofa.", "image": None},
    {"text": "a bowl of fresh fruit on a wooden table", "image": None},
    {"text": None, "image": "img_gradient_84x56.png"},
    {"text": None, "image": "img_checker_56x56.png"},
    {"text": "a red square and a yellow circle on blue", "image": "img_shapes_112x56.png"},
    {"text": "diagonal stripes in orange and green", "image": "img_stripes_70x50.png"},
]
QUERIES: list[dict[str, str | None]] = [
    {
        "text": "a colourful gradient from left to right",
        "image": None,
        "instruction": "Identify the image showcasing the described everyday scene.",
    },
    {
        "text": None,
        "image": "img_radial_56x84.png",
        "instruction": "Find an image caption describing the following everyday image.",
    },
    {
        "text": "make the background green",
        "image": "img_blocks_84x84.png",
        "instruction": "Retrieve a day-to-day image that aligns with the modification instructions of the provided "
        "image.",
    },
]


def _resolve(item: dict[str, str | None]) -> dict[str, str | None]:
    image = item.get("image")
    return {**item, "image": str(ASSETS / "images" / image) if image else None}


def _label(item: dict[str, str | None]) -> str:
    parts = [f"[{item['image']}]"] if item.get("image") else []
    if item.get("text"):
        parts.append(str(item["text"]))
    label = " ".join(parts)
    return label if len(label) <= 44 else label[:41] + "..."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=str(DEFAULT_MODEL), help="model folder or Hub id (default: embedded)")


def run(args: argparse.Namespace) -> int:
    from .model import from_mllm

    model = from_mllm(args.model)
    queries = model.encode_query([_resolve(item) for item in QUERIES], show_progress_bar=False)
    candidates = model.encode_document([_resolve(item) for item in CANDIDATES], show_progress_bar=False)
    scores = model.similarity(queries, candidates)
    print(f"model: {args.model}  (dimension {candidates.shape[1]})")
    print("query x candidate similarity (dot product of unit vectors):\n")
    print(" " * 48 + " ".join(f"c{index:<5}" for index in range(len(CANDIDATES))))
    for index, item in enumerate(QUERIES):
        row = " ".join(f"{float(score):+.3f}" for score in scores[index])
        print(f"q{index} {_label(item):<44} {row}")
    print("\ncandidates:")
    for index, item in enumerate(CANDIDATES):
        print(f"  c{index}  {_label(item)}")
    return 0
